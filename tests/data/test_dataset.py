"""AgeDataset (uint8 cache, items, errors) and the transforms (shapes, ranges, equivalence of the
fused light augmentation with torchvision's pad-crop-flip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from ageest.data import AgeDataset, DataError, build_transforms, cache_size, cache_spec
from ageest.data import dataset as dataset_mod
from ageest.data.dataset import IMAGENET_MEAN, TRANSFORMS, RandomShiftFlip


def make_table(tmp_path: Path, n: int = 6, size: int = 40, ages=None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size + 4 * i, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    ages = list(range(10, 10 + n)) if ages is None else ages
    return pd.DataFrame({"path": paths, "age": ages})


def test_items_are_float_image_age_and_index(tmp_path):
    df = make_table(tmp_path)
    ds = AgeDataset(df, start_age=10, size=32)
    img, age, idx = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert age.dtype == torch.int64 and age.ndim == 0 and int(age) == 13  # the age itself
    assert idx == 3 and len(ds) == 6
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 32, 32) and batch[1].tolist() == [10, 11, 12, 13]
    assert batch[2].tolist() == [0, 1, 2, 3]


def test_images_are_decoded_once(tmp_path, monkeypatch):
    df = make_table(tmp_path)
    calls = []
    real = dataset_mod.decode_image
    monkeypatch.setattr(dataset_mod, "decode_image",
                        lambda p, s=None, fit="square", box=None: calls.append(p) or real(p, s, fit, box))
    ds = AgeDataset(df, start_age=0, size=24,
                    transform=build_transforms("light", size=24, train=True))
    for _ in range(3):  # three epochs
        for i in range(len(ds)):
            ds[i]
    assert len(calls) == len(df)
    assert ds.image_uint8(0).dtype == torch.uint8
    assert ds.cache_bytes() == len(df) * 3 * 24 * 24
    nocache = AgeDataset(df, start_age=0, size=24, cache=False)
    nocache[0]
    nocache[0]
    assert len(calls) == len(df) + 2 and nocache.cache_bytes() == 0


def test_preload_fills_the_cache(tmp_path):
    df = make_table(tmp_path)
    ds = AgeDataset(df, start_age=0, size=16).preload(num_threads=2)
    assert all(im is not None for im in ds._images)
    assert torch.equal(ds.image_uint8(2), dataset_mod.decode_image(df["path"][2], 16))


def test_native_size_kept_without_size(tmp_path):
    df = make_table(tmp_path, n=2)
    ds = AgeDataset(df, start_age=0)
    assert ds[1][0].shape == (3, 40, 44)


def test_undecodable_image_names_the_file(tmp_path):
    df = make_table(tmp_path, n=2)
    Path(df["path"][1]).write_bytes(b"garbage")
    ds = AgeDataset(df, start_age=0)
    with pytest.raises(DataError, match=r"1.png: cannot decode image.*on_bad='skip'"):
        ds[1]


def test_age_below_start_age(tmp_path):
    df = make_table(tmp_path, n=2, ages=[3, 20])
    with pytest.raises(ValueError, match="ages below start_age=5"):
        AgeDataset(df, start_age=5)


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("train", [True, False])
def test_transforms_shapes_and_range(name, train):
    torch.manual_seed(0)
    size = 32
    side = cache_size(name, size=size)
    x = torch.randint(0, 256, (3, side + 5, side), dtype=torch.uint8)  # not yet resized
    out = build_transforms(name, size=size, train=train)(x)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    norm = build_transforms(name, size=size, train=train, normalize=True)(x)
    assert norm.min() < 0  # ImageNet normalisation applied


def test_eval_transforms_are_deterministic():
    x = torch.randint(0, 256, (3, 72, 72), dtype=torch.uint8)
    for name in TRANSFORMS:
        t = build_transforms(name, size=64, train=False)
        assert torch.equal(t(x), t(x))


def test_paper_transform_crop_sizes():
    x = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)
    for crop in (224, 227):
        assert build_transforms("paper", size=crop, train=True)(x).shape == (3, crop, crop)
    assert cache_size("paper", size=227) == 256


@pytest.mark.parametrize("name", ["paper", "clap"])
def test_official_evaluation_resizes_the_whole_image_without_crop(name):
    # main_FGNET.py / main_CLAP.py test: Resize((227, 227)) of the whole image, no centre crop
    x = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)
    out = build_transforms(name, size=227, train=False)(x)
    expected = F.resize(x, [227, 227], antialias=True)
    assert torch.allclose(out, expected.float() / 255)
    assert cache_spec(name, size=227, train=False) == (227, "square")


def test_official_training_geometry():
    from torchvision.transforms import v2

    # FG-NET: Resize((256, 256)) -> RandomCrop(227) (+ flip)
    paper = build_transforms("paper", size=227, train=True).transforms
    assert [type(t).__name__ for t in paper[:3]] == ["ResizeIfNeeded", "RandomCrop",
                                                     "RandomHorizontalFlip"]
    assert paper[0].size == 256 and paper[2].p == 0.5
    # CLAP2016: flip, affine and jitter at the image's own geometry, then the resize and crop
    clap = build_transforms("clap", size=227, train=True).transforms
    assert [type(t).__name__ for t in clap[:5]] == [
        "RandomHorizontalFlip", "RandomAffine", "ColorJitter", "ResizeIfNeeded", "RandomCrop"]
    assert isinstance(clap[1], v2.RandomAffine) and clap[1].degrees == [-10.0, 10.0]
    assert cache_spec("clap", size=227, train=True) == (256, "short_side")


def test_short_side_cache_keeps_the_aspect_ratio(tmp_path):
    from PIL import Image

    from ageest.data.dataset import decode_image

    path = tmp_path / "wide.png"
    Image.new("RGB", (400, 300), (10, 20, 30)).save(path)
    assert tuple(decode_image(str(path), 256, "short_side").shape) == (3, 256, 341)
    assert tuple(decode_image(str(path), 256, "square").shape) == (3, 256, 256)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 80), (10, 20, 30)).save(small)
    assert tuple(decode_image(str(small), 256, "short_side").shape) == (3, 80, 100)  # kept


def test_normalize_uses_imagenet_statistics():
    x = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    out = build_transforms("light", size=8, train=False, normalize=True)(x)
    assert torch.allclose(out[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN))
                          / torch.tensor([0.229, 0.224, 0.225]))


def test_random_shift_flip_equals_torchvision_pad_crop_flip():
    x = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    t = RandomShiftFlip(3, flip_p=0.5)
    seen_flip = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = t(x)
        torch.manual_seed(seed)
        r = torch.rand(3).tolist()
        dy, dx = (min(int(v * 7), 6) for v in r[:2])
        ref = F.crop(F.pad(x, [3, 3, 3, 3], padding_mode="edge"), dy, dx, 20, 20)
        flipped = r[2] < 0.5
        if flipped:
            ref = F.horizontal_flip(ref)
        seen_flip.add(flipped)
        assert torch.equal(out, ref)
    assert seen_flip == {True, False}


def test_transform_errors():
    with pytest.raises(ValueError, match="transform 'heavy'"):
        build_transforms("heavy", train=True)
    with pytest.raises(ValueError, match="smaller than the crop"):
        build_transforms("paper", size=64, resize=32, train=True)


def test_clap_augmentation_matches_the_official_script():
    from torchvision.transforms import v2

    from ageest.data import build_transforms

    steps = build_transforms("clap", size=224, train=True).transforms
    affine = next(t for t in steps if isinstance(t, v2.RandomAffine))
    jitter = next(t for t in steps if isinstance(t, v2.ColorJitter))
    assert affine.degrees == [-10.0, 10.0]
    assert jitter.brightness == (0.9, 1.1) and jitter.hue == (-0.1, 0.1)
