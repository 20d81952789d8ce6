"""Bad input that used to pass silently: paths outside the image root, unbounded CSV ages, 16-bit
and other PIL modes, byte-identical images across subjects, truncated JPEGs, a diverged run's
checkpoints, profile names that are paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ageest.data import DataError, get_dataset, load_csv
from ageest.data.dataset import decode_image


def _img(path, value=100, size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _csv(tmp_path, rows):
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_paths_outside_the_image_root_are_refused(tmp_path):
    root = tmp_path / "imgs"
    _img(root / "a.png", 1)
    outside = _img(tmp_path / "outside.png", 2)
    (root / "link.png").symlink_to(outside)
    for entry, line in (("../outside.png", 3), (str(outside), 3), ("link.png", 3)):
        csv = _csv(root, [{"path": "a.png", "age": 20}, {"path": entry, "age": 30}])
        with pytest.raises(DataError, match=rf"labels.csv:{line} .*outside the image root"):
            load_csv(csv, root)
        df = load_csv(csv, root, allow_outside_root=True)
        assert len(df) == 2


def test_csv_ages_have_a_declared_range_and_missing_is_named(tmp_path):
    _img(tmp_path / "a.png", 1)
    _img(tmp_path / "b.png", 2)
    for age, message in ((150, "age 150 is outside the declared range 0-100"),
                         (1e6, "age 1e\\+06 is outside the declared range 0-100"),
                         (None, "age is missing")):
        csv = _csv(tmp_path, [{"path": "a.png", "age": 20}, {"path": "b.png", "age": age}])
        with pytest.raises(DataError, match=rf"labels.csv:3 \(b.png\): {message}"):
            load_csv(csv)
    csv = _csv(tmp_path, [{"path": "a.png", "age": 20}, {"path": "b.png", "age": 110}])
    assert load_csv(csv, age_range=(0, 120))["age"].tolist() == [20, 110]


@pytest.mark.parametrize("mode,make,expected", [
    ("I;16", lambda: np.array([[0, 32896, 65535]], dtype=np.uint16), [0, 128, 255]),
    ("L", lambda: np.array([[0, 128, 255]], dtype=np.uint8), [0, 128, 255]),
])
def test_grey_and_16_bit_images_decode_by_value(tmp_path, mode, make, expected):
    path = tmp_path / f"{mode.replace(';', '')}.png"
    Image.fromarray(make()).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith(mode[0])
    img = decode_image(str(path))
    assert img.dtype == torch.uint8 and img.shape == (3, 1, 3)
    assert img[0, 0].tolist() == expected and torch.equal(img[0], img[2])


def test_rgba_palette_cmyk_decode_by_value(tmp_path):
    rgba = Image.new("RGBA", (2, 2), (10, 200, 30, 128))
    rgba.save(tmp_path / "rgba.png")
    assert decode_image(str(tmp_path / "rgba.png"))[:, 0, 0].tolist() == [10, 200, 30]
    pal = Image.new("RGB", (2, 2), (255, 0, 0)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert decode_image(str(tmp_path / "pal.png"))[:, 0, 0].tolist() == [255, 0, 0]
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = decode_image(str(tmp_path / "cmyk.jpg"))[:, 0, 0].tolist()
    assert red[0] > 240 and red[1] < 15 and red[2] < 15


def test_identical_images_under_two_subjects_are_an_error(tmp_path):
    a = _img(tmp_path / "a.png", 1)
    (tmp_path / "b.png").write_bytes(a.read_bytes())
    _img(tmp_path / "c.png", 3)
    csv = _csv(tmp_path, [{"path": "a.png", "age": 20, "subject": "s1"},
                          {"path": "b.png", "age": 21, "subject": "s2"},
                          {"path": "c.png", "age": 22, "subject": "s1"}])
    with pytest.raises(DataError, match=r"a.png, b.png \(subjects \['s1', 's2'\]\)"):
        get_dataset("csv", csv=csv, hash_cache=tmp_path / "cache.json")
    same = _csv(tmp_path, [{"path": "a.png", "age": 20, "subject": "s1"},
                           {"path": "b.png", "age": 21, "subject": "s1"},
                           {"path": "c.png", "age": 22, "subject": "s2"}])
    with pytest.warns(UserWarning, match="identical images within one subject and split"):
        df, _ = get_dataset("csv", csv=same, hash_cache=tmp_path / "cache.json")
    assert len(df) == 3


def test_truncated_jpeg_fails_at_load_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        good, quality=95)
    data = good.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: len(data) // 2])  # the header is intact: a header check passes
    _img(tmp_path / "c.png", 3)
    csv = _csv(tmp_path, [{"path": "good.jpg", "age": 20}, {"path": "bad.jpg", "age": 30},
                          {"path": "c.png", "age": 40}])
    assert len(load_csv(csv)) == 3  # the loader's header check alone lets it through
    with pytest.raises(DataError, match=r"bad.jpg: cannot be decoded"):
        get_dataset("csv", csv=csv, hash_cache=tmp_path / "cache.json")
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        df, _ = get_dataset("csv", csv=csv, on_bad="skip", hash_cache=tmp_path / "cache.json")
    assert len(df) == 2 and df.attrs["skipped"][-1]["path"].endswith("bad.jpg")


def test_diverged_run_never_checkpoints_or_selects_a_non_finite_state(tmp_path):
    from ageest.data import make_folds
    from ageest.data.synthetic import write_fgnet_like
    from ageest.engine.train import NonFiniteLossError, TrainConfig, load_checkpoint, train

    data = write_fgnet_like(tmp_path / "fg", seed=0, size=32, n_subjects=12, n_images=72)
    df, info = get_dataset("fgnet", data_dir=data, hash_cache=tmp_path / "cache.json")
    fold = make_folds(df, "group-kfold", n_folds=3, val_fraction=0.2, seed=0)[0]
    # lr 1e3: the loss stays finite for two epochs while BatchNorm's running variances blow
    # up in the third (measured: inf buffers at epoch 3 with a finite-looking loss)
    cfg = TrainConfig(model="small_cnn", loss="ce", lr=1e3, epochs=3, batch_size=16,
                      image_size=32, quiet=True, threads=1)
    with pytest.raises(NonFiniteLossError, match="non-finite parameters or buffers at epoch 3"):
        train(cfg, df, fold, start_age=info.start_age, end_age=info.end_age,
              ckpt_dir=tmp_path / "ck")
    last = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert last["epoch"] == 2  # the last *good* epoch, not the diverged one
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "ck" / name)["model"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_profile_is_a_name_not_a_path(tmp_path):
    from ageest.pipeline.reproduce import ReproduceError, reproduce

    with pytest.raises(ReproduceError, match="a profile is a name"):
        reproduce("../params/smoke", results_dir=tmp_path, log=lambda s: None)
    with pytest.raises(ReproduceError, match="unknown profile 'mine'"):
        reproduce("mine", results_dir=tmp_path, params_dir=tmp_path, log=lambda s: None)


# --- hostile files and tables (round four) ---------------------------------------------------


def _utkface(tmp_path, n=4):
    root = tmp_path / "utk"
    for i in range(n):
        _img(root / f"{20 + i}_0_0_2017010{i}000000000.jpg.chip.jpg", i)
    return root


def _bomb(path, side=15000):
    """A PNG that declares 15000 x 15000 pixels (a one-bit image: 28 MB to write, 225 M pixels,
    675 MB as RGB once decoded)."""
    Image.new("1", (side, side)).save(path, format="PNG")
    return path


def test_a_decompression_bomb_is_a_bad_record_naming_its_size(tmp_path, monkeypatch):
    from ageest.data.integrity import check_image_file

    root = _utkface(tmp_path)
    bomb = _bomb(root / "30_1_0_20170109000000000.jpg.chip.jpg")
    with pytest.raises(DataError, match=r"20170109000000000.*image is 225,000,000 pixels, above "
                                        r"the limit of 67,108,864 \(AGEEST_MAX_IMAGE_PIXELS\)"):
        get_dataset("utkface", data_dir=root)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        df, _ = get_dataset("utkface", data_dir=root, on_bad="skip")
    assert len(df) == 4 and bomb.name not in set(df["image_id"])
    with pytest.raises(DataError, match=r"20170109000000000.*225,000,000 pixels"):
        decode_image(str(bomb), size=64)
    # the limit is a setting: below a face, the face is refused with its sides
    face = sorted(root.glob("2*"))[0]
    assert check_image_file(face) is None
    monkeypatch.setenv("AGEEST_MAX_IMAGE_PIXELS", "100")
    assert check_image_file(face) == ("image is 12 x 12 = 144 pixels, above the limit of 100 "
                                      "(AGEEST_MAX_IMAGE_PIXELS)")
    with pytest.raises(DataError, match=r"12 x 12 = 144 pixels"):
        decode_image(str(face), size=8)
    monkeypatch.setenv("AGEEST_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="AGEEST_MAX_IMAGE_PIXELS='lots'"):
        check_image_file(face)


def test_a_file_name_that_is_not_utf8_is_a_bad_record_shown_escaped(tmp_path):
    import os

    root = _utkface(tmp_path)
    odd = os.fsencode(str(root)) + b"/41_0_0_2017\xff\xfe.jpg.chip.jpg"
    os.rename(_img(tmp_path / "x.jpg", 9), odd)
    with pytest.raises(DataError, match=r"2017\\xff\\xfe\.jpg\.chip\.jpg: file name is not valid "
                                        r"UTF-8"):
        get_dataset("utkface", data_dir=root)
    with pytest.warns(UserWarning):
        df, _ = get_dataset("utkface", data_dir=root, on_bad="skip")
    assert len(df) == 4
    assert df.attrs["skipped"][0]["path"].endswith("2017\\xff\\xfe.jpg.chip.jpg")


def test_an_fgnet_image_linked_from_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "fg" / "images"
    for i, name in enumerate(["001A02.JPG", "001A05.JPG", "002A10.JPG", "002A12.JPG"]):
        _img(folder / name, i)
    outside = _img(tmp_path / "elsewhere" / "x.JPG", 7)
    (folder / "003A20.JPG").symlink_to(outside)
    with pytest.raises(DataError, match=r"003A20.JPG: symbolic link to .*outside the folder"):
        get_dataset("fgnet", data_dir=folder)


def test_a_label_csv_with_a_column_twice_or_not_utf8_says_so(tmp_path):
    root = tmp_path / "imgs"
    _img(root / "a.png", 1)
    twice = tmp_path / "twice.csv"
    twice.write_text("path,age,age,subject\na.png,30,40,s1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"twice.csv: column 'age' appears 2 times"):
        load_csv(twice, root)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,age\nJosé.png,30\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not UTF-8 text .*save the file as UTF-8"):
        load_csv(latin, root)
