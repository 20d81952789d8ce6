"""Backbones by name: torchvision ResNet-18/50 and VGG-16 with their classifier replaced by one logit
per integer age, and a small CNN sized for CPU profiles (64 px images).

Registry after timm's ``create_model``: ``MODELS`` maps a name to a constructor
``fn(num_classes, pretrained=False, **kwargs) -> nn.Module``; :func:`get_model` builds one by name.

Pretrained weights are read only from the local torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``); nothing is downloaded, so runs behave the same with
and without network access. When the file is missing the error names the file and the folder.

>>> model = get_model("small_cnn", num_classes=70)
>>> import torch
>>> model(torch.zeros(2, 3, 64, 64)).shape
torch.Size([2, 70])
>>> "resnet50" in list_models()
True
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# torchvision ImageNet weights: the file name inside the hub cache and the URL it comes from.
# (These are the IMAGENET1K_V1 weights the paper's era used: torchvision's `pretrained=True`.)
PRETRAINED_FILES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


#: which ImageNet weights those files are: torchvision's first release of each (what
#: ``pretrained=True`` gave in the paper's era), IMAGENET1K_V1 in torchvision's own naming
PRETRAINED_WEIGHTS = "IMAGENET1K_V1"


def pretrained_path(name: str) -> Path:
    """Where the ImageNet weights of backbone ``name`` must lie: ``<hub dir>/checkpoints/<file>``.

    The hub dir is ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``).
    """
    if name not in PRETRAINED_FILES:
        raise ValueError(
            f"model {name!r} has no ImageNet weights; pretrained=True is available for "
            f"{sorted(PRETRAINED_FILES)}"
        )
    return Path(torch.hub.get_dir()) / "checkpoints" / PRETRAINED_FILES[name][0]


def load_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """Load the cached ImageNet state dict of ``name`` (CPU tensors); never downloads.

    Raises
    ------
    FileNotFoundError
        When the file is absent, naming the file, the folder, and the URL to fetch it from.
    """
    path = pretrained_path(name)
    if not path.is_file():
        file_name, url = PRETRAINED_FILES[name]
        raise FileNotFoundError(
            f"ImageNet weights for {name!r} not found: expected the file {file_name} in the folder "
            f"{path.parent} (torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it). "
            f"ageest never downloads; on a machine with network access fetch {url} and place it "
            f"there, or use pretrained=False."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _resnet(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, **kwargs)
        if pretrained:
            model.load_state_dict(load_pretrained_state(arch))
        # Replace the 1000-way ImageNet head by one logit per age: (N, 2048|512) -> (N, C).
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    build.__doc__ = f"torchvision {arch} with a ``num_classes``-way linear head."
    return build


def _vgg16(num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """torchvision VGG-16 (no batch norm) with its last classifier layer -> ``num_classes``."""
    import torchvision

    model = torchvision.models.vgg16(weights=None, **kwargs)
    if pretrained:
        model.load_state_dict(load_pretrained_state("vgg16"))
    last = model.classifier[-1]
    model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


class SmallCNN(nn.Module):
    """Four stride-2 conv-BN-ReLU blocks, global average pooling, dropout, linear head.

    Sized for CPU profiles: at 64x64 px the feature maps are 32, 16, 8, 4 px wide (about 15 M
    multiply-adds per image), and any input size works thanks to the global pooling.

    Parameters
    ----------
    num_classes : int
        Number of age logits C.
    width : int
        Channels of the first block; each block doubles it (``width * 8`` features at the end).
    dropout : float
        Dropout before the linear head.
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(4):
            c_out = width * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 8*width, H/16, W/16)
        x = self.pool(x).flatten(1)  # (N, 8*width)
        return self.fc(self.dropout(x))  # (N, C)


def _small_cnn(num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """:class:`SmallCNN`; it has no pretrained weights."""
    if pretrained:
        raise ValueError(
            "small_cnn has no pretrained weights; use pretrained=False or one of "
            f"{sorted(PRETRAINED_FILES)}"
        )
    return SmallCNN(num_classes, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "vgg16": _vgg16,
    "small_cnn": _small_cnn,
}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(MODELS)


def get_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build backbone ``name`` ending in ``num_classes`` logits.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    num_classes : int
        C = end_age - start_age + 1.
    pretrained : bool
        Load torchvision's ImageNet weights from the local hub cache (see
        :func:`pretrained_path`); raises ``FileNotFoundError`` naming the file when absent.
    **kwargs
        Passed to the constructor (e.g. ``width=`` for ``small_cnn``).

    Returns
    -------
    torch.nn.Module
        Maps images (N, 3, H, W) to logits (N, C).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return MODELS[name](int(num_classes), pretrained=pretrained, **kwargs)
