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
    assert list_models() == sorted(["resnet18", "resnet50", "vgg16", "small_cnn"])
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
