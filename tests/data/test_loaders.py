"""Real-format loaders on small fixtures built on the fly: parsing, the table contract, and
every kind of bad input (error naming the file and the fix; ``on_bad="skip"`` records it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ageest.data import (
    DataError,
    MissingDataError,
    load_benchmark_json,
    load_clap2016,
    load_csv,
    load_fgnet,
    load_utkface,
)
from ageest.data.loaders import COLUMNS, parse_fgnet_name

# ---------------------------------------------------------------------------------------------
# fixture builders


def write_image(path: Path, value: int = 128, size: int | tuple[int, int] = 16) -> Path:
    """A tiny valid image whose format follows the extension (``size``: side, or (w, h))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size) if isinstance(size, int) else size, (value % 256, (3 * value) % 256, (7 * value) % 256))
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, format=fmt)
    return path


def assert_contract(df: pd.DataFrame) -> None:
    """The columns and dtypes every loader promises (docs/architecture.md)."""
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert df["age"].dtype == np.int64
    assert df["age_mean"].dtype == np.float64
    assert df["std"].dtype == np.float64
    assert isinstance(df["subject"].dtype, pd.StringDtype)
    assert isinstance(df["split"].dtype, pd.StringDtype)
    assert df["image_id"].is_unique
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert set(df["split"].dropna()) <= {"train", "valid", "test"}
    assert df.index.equals(pd.RangeIndex(len(df)))


FGNET_NAMES = ["001A02.JPG", "001a05.jpg", "001A10.JPG", "002A00.JPG", "002A10a.JPG",
               "002A10b.jpeg", "003A69.JPG"]


@pytest.fixture
def fgnet_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fgnet"
    for i, name in enumerate(FGNET_NAMES):
        write_image(root / name, i)
    (root / ".DS_Store").write_bytes(b"\x00\x01")  # file-system noise, ignored and listed
    return root


def load_fgnet_quiet(root, **kw):
    """load_fgnet on a fixture that (deliberately) differs from the 1,002-image release."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*differs from the release manifest")
        return load_fgnet(root, **kw)


# ---------------------------------------------------------------------------------------------
# FG-NET


def test_fgnet_parses_names_and_follows_the_contract(fgnet_dir):
    with pytest.warns(UserWarning, match="n_images: expected 1002, found 7"):
        df = load_fgnet(fgnet_dir)
    assert_contract(df)
    assert df["image_id"].tolist() == ["001A02", "001A05", "001A10", "002A00", "002A10a",
                                       "002A10b", "003A69"]
    assert df["subject"].tolist() == ["001"] * 3 + ["002"] * 3 + ["003"]
    assert df["age"].tolist() == [2, 5, 10, 0, 10, 10, 69]
    assert (df["age_mean"] == df["age"]).all()
    assert df["std"].isna().all() and df["split"].isna().all()
    assert df.attrs["ignored_files"] == [str(fgnet_dir / ".DS_Store")]
    assert df.attrs["skipped"] == []
    assert any("n_subjects: expected 82, found 3" in d for d in df.attrs["expected_differences"])


def test_fgnet_expected_manifest_can_be_declared(fgnet_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching manifest warns about nothing
        df = load_fgnet(fgnet_dir, expected={"n_images": 7, "n_subjects": 3, "age_min": 0,
                                             "age_max": 69})
    assert df.attrs["expected_differences"] == []


def test_fgnet_images_subfolder_is_found(tmp_path):
    write_image(tmp_path / "FGNET" / "images" / "001A02.JPG")
    df = load_fgnet_quiet(tmp_path / "FGNET")
    assert df["path"].iloc[0].endswith("images/001A02.JPG")


@pytest.mark.parametrize("name, parsed", [
    ("001A02.JPG", ("001", 2, "")), ("082a69B.JPEG", ("082", 69, "b")),
    ("010A07a.jpg", ("010", 7, "a")), ("01A02.JPG", None), ("001A2.JPG", None),
    ("001B02.JPG", None), ("001A02.png", None), ("001A02c.JPG", None),
])
def test_parse_fgnet_name(name, parsed):
    assert parse_fgnet_name(name) == parsed


def test_fgnet_missing_and_empty_folder(tmp_path):
    with pytest.raises(MissingDataError, match=r"does not exist.*pass the folder"):
        load_fgnet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=r"empty.*holds no files"):
        load_fgnet(tmp_path / "empty")


BAD_FGNET = {
    "zero-byte": ("004A01.JPG", b"", "zero-byte file"),
    "corrupt": ("004A02.JPG", b"this is not a jpeg at all", "not a readable image"),
    "non-image": ("notes.txt", b"hello", "not an image file"),
    "bad-name": ("IMG_0001.JPG", None, "does not follow FG-NET"),
    "age-out-of-range": ("004A75.JPG", None, "outside the declared range 0-69"),
    "duplicate": ("001a02.jpeg", None, "duplicate of 001A02.JPG"),
}


@pytest.mark.parametrize("case", sorted(BAD_FGNET))
def test_fgnet_bad_input_raises_naming_file_and_fix(fgnet_dir, case):
    name, data, reason = BAD_FGNET[case]
    if data is None:
        write_image(fgnet_dir / name, 99)
    else:
        (fgnet_dir / name).write_bytes(data)
    with pytest.raises(DataError) as err:
        load_fgnet_quiet(fgnet_dir)
    msg = str(err.value)
    assert name in msg and reason in msg
    assert "on_bad='skip'" in msg  # the way out is named
    # skip: the bad file is dropped, recorded with its reason, and a warning says so
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        df = load_fgnet_quiet(fgnet_dir, on_bad="skip")
    assert len(df) == len(FGNET_NAMES)
    (rec,) = df.attrs["skipped"]
    assert rec["path"].endswith(name) and reason in rec["reason"] and rec["fix"]


def test_fgnet_all_problems_reported_together(fgnet_dir):
    (fgnet_dir / "004A01.JPG").write_bytes(b"")
    (fgnet_dir / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"2 bad record\(s\)") as err:
        load_fgnet_quiet(fgnet_dir)
    assert "004A01.JPG" in str(err.value) and "notes.txt" in str(err.value)


def test_truncated_image_passes_header_check_but_not_decode(fgnet_dir):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(fgnet_dir / "001A02.JPG", format="JPEG")
    good = (fgnet_dir / "001A02.JPG").read_bytes()
    (fgnet_dir / "001A02.JPG").write_bytes(good[: len(good) // 2])
    assert len(load_fgnet_quiet(fgnet_dir)) == len(FGNET_NAMES)
    with pytest.raises(DataError, match=r"001A02.JPG: corrupt image"):
        load_fgnet_quiet(fgnet_dir, check_images="decode")


def test_on_bad_is_validated(fgnet_dir):
    with pytest.raises(ValueError, match="on_bad='ignore'"):
        load_fgnet(fgnet_dir, on_bad="ignore")


# ---------------------------------------------------------------------------------------------
# CLAP2016 / APPA-REAL


def build_clap(root: Path, *, crops: bool = True) -> Path:
    """Three labelled images per split; crops for all but train/000001.jpg."""
    spec = {"train": [("000000.jpg", 24.5, 3.0), ("000001.jpg", 30.2, 4.0),
                      ("000002.jpg", 1.4, 0.5)],
            "valid": [("000003.jpg", 40.0, 5.0), ("000004.jpg", 55.6, 6.1),
                      ("000005.jpg", 8.0, 1.0)],
            "test": [("000006.jpg", 70.0, 8.0), ("000007.jpg", 99.7, 9.0),
                     ("000008.jpg", 12.0, 2.0)]}
    for split, rows in spec.items():
        for i, (name, _, _) in enumerate(rows):
            write_image(root / split / name, 10 * i)
            if crops and name != "000001.jpg":
                write_image(root / split / f"{name}_face.jpg", 10 * i + 1)
        pd.DataFrame([{"file_name": n, "num_ratings": 30, "apparent_age_avg": m,
                       "apparent_age_std": s} for n, m, s in rows]).to_csv(
            root / f"gt_avg_{split}.csv", index=False)
    return root


def test_clap_loads_release_layout(tmp_path):
    df = load_clap2016(build_clap(tmp_path / "appa"))
    assert_contract(df)
    assert df["split"].tolist() == ["train"] * 3 + ["valid"] * 3 + ["test"] * 3
    assert df["age"].tolist() == [25, 30, 1, 40, 56, 8, 70, 100, 12]  # rounded apparent mean
    assert df["age_mean"].iloc[0] == 24.5 and df["std"].iloc[0] == 3.0
    assert df["subject"].isna().all()
    assert df["image_id"].iloc[3] == "valid/000003.jpg"
    assert df["path"].iloc[0].endswith("train/000000.jpg")
    assert (df["num_ratings"] == 30).all()


def test_clap_face_crops_used_when_present(tmp_path):
    with pytest.warns(UserWarning, match="1 image.*no _face.jpg crop"):
        df = load_clap2016(build_clap(tmp_path / "appa"), use_face_crops=True)
    assert df["path"].iloc[0].endswith("000000.jpg_face.jpg")
    assert df["path"].iloc[1].endswith("train/000001.jpg")  # no crop: the full image
    assert df.attrs["face_crop_missing"] == [str(tmp_path / "appa" / "train" / "000001.jpg")]


def test_clap_stem_face_crop_name_also_accepted(tmp_path):
    root = build_clap(tmp_path / "appa", crops=False)
    for split, name in (("train", "000000"), ("train", "000001"), ("train", "000002"),
                        ("valid", "000003"), ("valid", "000004"), ("valid", "000005"),
                        ("test", "000006"), ("test", "000007"), ("test", "000008")):
        write_image(root / split / f"{name}_face.jpg")
    df = load_clap2016(root, use_face_crops=True)
    assert df["path"].str.endswith("_face.jpg").all()


def test_clap_ignore_list_drops_training_only(tmp_path):
    root = build_clap(tmp_path / "appa")
    with pytest.warns(UserWarning) as rec:
        df = load_clap2016(root, ignore_list=["000001.jpg", "000006.jpg", "999999.jpg"])
    msgs = " ".join(str(w.message) for w in rec)
    assert "splits it does not filter" in msgs and "test/000006.jpg" in msgs  # kept, warned
    assert "match no labelled file" in msgs and "999999.jpg" in msgs
    assert "train/000001.jpg" not in set(df["image_id"])
    assert "test/000006.jpg" in set(df["image_id"])  # the test set is never filtered
    assert df.attrs["ignored_train"] == [str(root / "train" / "000001.jpg")]
    assert df.attrs["dropped"]["ignore_list"] == {"train": 1, "valid": 0, "test": 0}


def test_clap_official_filters_every_split_by_ignore_list_and_pixel_count(tmp_path):
    """The official CLAP_data.py drops ignore-listed names from whichever split it loads and
    every image whose RGB array has fewer than 3,072 values (H x W < 1,024 pixels)."""
    root = build_clap(tmp_path / "appa", crops=False)
    for image in root.glob("*/*.jpg"):
        write_image(image, size=40)  # 1,600 pixels: kept
    write_image(root / "valid" / "000004.jpg", size=(31, 33))  # 1,023 pixels: dropped
    write_image(root / "test" / "000007.jpg", size=(20, 60))  # 1,200 pixels: an area rule, kept
    write_image(root / "test" / "000008.jpg", size=(16, 16))  # dropped, test included
    df = load_clap2016(root, ignore_list=["000001.jpg", "000006.jpg"],
                       ignore_splits=("train", "valid", "test"), min_pixels=1024)
    ids = set(df["image_id"])
    assert {"train/000001.jpg", "test/000006.jpg", "valid/000004.jpg",
            "test/000008.jpg"}.isdisjoint(ids)
    assert "test/000007.jpg" in ids
    assert df.attrs["dropped"] == {"ignore_list": {"train": 1, "valid": 0, "test": 1},
                                   "min_pixels": {"train": 0, "valid": 1, "test": 1}}
    assert sorted(df.attrs["too_small"]) == ["test/000008.jpg", "valid/000004.jpg"]


def test_clap_label_rounding_half_even_like_numpy_around(tmp_path):
    root = build_clap(tmp_path / "appa")
    half = load_clap2016(root)
    even = load_clap2016(root, label_rounding="half_even")
    means = half["age_mean"].to_numpy()
    assert (even["age"].to_numpy() == np.around(means).astype(int)).all()
    assert (half["age"].to_numpy() == np.floor(means + 0.5).astype(int)).all()
    with pytest.raises(ValueError, match="label_rounding"):
        load_clap2016(root, label_rounding="up")


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_clap_ignore_list_from_file(tmp_path, suffix):
    root = build_clap(tmp_path / "appa")
    lst = tmp_path / f"ignore{suffix}"
    if suffix == ".csv":
        pd.DataFrame({"file_name": ["000002.jpg"]}).to_csv(lst, index=False)
    else:
        lst.write_text("# bad training images\ntrain/000002.jpg\n")
    df = load_clap2016(root, ignore_list=lst)
    assert "train/000002.jpg" not in set(df["image_id"]) and len(df) == 8


def test_clap_missing_column(tmp_path):
    root = build_clap(tmp_path / "appa")
    csv = root / "gt_avg_valid.csv"
    pd.read_csv(csv).drop(columns=["apparent_age_std"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"gt_avg_valid.csv: missing column\(s\) "
                                        r"\['apparent_age_std'\]"):
        load_clap2016(root)


def test_clap_label_without_image_duplicate_and_range(tmp_path):
    root = build_clap(tmp_path / "appa")
    (root / "test" / "000008.jpg").unlink()
    csv = root / "gt_avg_train.csv"
    table = pd.read_csv(csv)
    table = pd.concat([table, table.iloc[[0]]])  # duplicated row
    table.loc[table["file_name"] == "000002.jpg", "apparent_age_avg"] = 130.0
    table.to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        load_clap2016(root)
    msg = str(err.value)
    assert "label without image" in msg and "000008.jpg" in msg
    assert "duplicate file name" in msg and "gt_avg_train.csv:5 (000000.jpg)" in msg
    assert "age 130 is outside the declared range 0-100" in msg
    with pytest.warns(UserWarning, match="skipped 3 bad record"):
        df = load_clap2016(root, on_bad="skip")
    assert len(df) == 7 and len(df.attrs["skipped"]) == 3


def test_clap_unlabelled_image_warns(tmp_path):
    root = build_clap(tmp_path / "appa")
    write_image(root / "train" / "000100.jpg")
    with pytest.warns(UserWarning, match="1 file.*no label"):
        df = load_clap2016(root)
    assert df.attrs["unlabelled"] == [str(root / "train" / "000100.jpg")]


def test_clap_missing_split_folder(tmp_path):
    root = build_clap(tmp_path / "appa")
    for p in (root / "test").iterdir():
        p.unlink()
    (root / "test").rmdir()
    with pytest.raises(MissingDataError, match=r"test folder .* does not exist"):
        load_clap2016(root)


# ---------------------------------------------------------------------------------------------
# UTKFace


def test_utkface_names(tmp_path):
    root = tmp_path / "utk"
    write_image(root / "part1" / "25_0_1_20170116174525125.jpg")
    write_image(root / "part1" / "3_1_2_20161219140623097.jpg.chip.jpg")
    write_image(root / "part2" / "39_1_20170116174525125.jpg.chip.jpg")  # race missing
    with pytest.warns(UserWarning, match="1 name.*carry an age and are kept"):
        df = load_utkface(root)
    assert_contract(df)
    assert sorted(df["age"].tolist()) == [3, 25, 39]
    assert df["subject"].isna().all()
    row = df.set_index("image_id").loc["part1/25_0_1_20170116174525125.jpg"]
    assert row["gender"] == 0 and row["race"] == 1
    assert pd.isna(df.set_index("age").loc[39, "race"])


def test_utkface_names_without_age_are_listed(tmp_path):
    root = tmp_path / "utk"
    write_image(root / "25_0_1_20170116174525125.jpg")
    write_image(root / "_0_1_2017.jpg")
    write_image(root / "face.jpg")
    write_image(root / "130_0_1_2017.jpg")
    with pytest.raises(DataError) as err:
        load_utkface(root)
    msg = str(err.value)
    assert "3 bad record" in msg and "_0_1_2017.jpg" in msg and "face.jpg" in msg
    assert "130 is outside the declared range 0-116" in msg
    with pytest.warns(UserWarning):
        df = load_utkface(root, on_bad="skip")
    assert df["age"].tolist() == [25]


# ---------------------------------------------------------------------------------------------
# generic CSV


def build_csv(tmp_path: Path, rows: list[dict], *, images=True) -> Path:
    img_dir = tmp_path / "imgs"
    for r in rows:
        if images:
            write_image(img_dir / r["path"])
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


ROWS = [{"path": "a/1.png", "age": 20, "subject": "s1", "split": "train", "std": 2.0},
        {"path": "a/2.png", "age": 21.6, "subject": "s1", "split": "train", "std": None},
        {"path": "b/3.png", "age": 40, "subject": "s2", "split": "val", "std": 1.5},
        {"path": "b/4.png", "age": 5, "subject": None, "split": "TEST", "std": None}]


def test_csv_loader(tmp_path):
    csv = build_csv(tmp_path, ROWS)
    df = load_csv(csv, tmp_path / "imgs")
    assert_contract(df)
    assert df["age"].tolist() == [20, 22, 40, 5]
    assert df["age_mean"].tolist() == [20.0, 21.6, 40.0, 5.0]
    assert df["split"].tolist() == ["train", "train", "valid", "test"]
    assert df["subject"].isna().tolist() == [False, False, False, True]
    assert df["image_id"].tolist() == ["a/1.png", "a/2.png", "b/3.png", "b/4.png"]
    assert np.isnan(df["std"].iloc[1]) and df["std"].iloc[2] == 1.5


def test_csv_subject_ids_stay_text(tmp_path):
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "l.csv").write_text("path,age,subject\nx.jpg,3,007\ny.jpg,4,\nz.jpg,5,12\n")
    df = load_csv(tmp_path / "l.csv")
    assert df["subject"].tolist()[0] == "007" and df["subject"].tolist()[2] == "12"
    assert df["subject"].isna().tolist() == [False, True, False]


def test_csv_non_image_and_zero_byte_files(tmp_path):
    write_image(tmp_path / "ok.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "l.csv").write_text("path,age\nok.jpg,3\nnotes.txt,4\nempty.jpg,5\n")
    with pytest.raises(DataError) as err:
        load_csv(tmp_path / "l.csv")
    assert "notes.txt: not an image file" in str(err.value)
    assert "empty.jpg: zero-byte file" in str(err.value)


def test_csv_paths_default_to_the_csv_folder(tmp_path):
    write_image(tmp_path / "x.jpg")
    (tmp_path / "l.csv").write_text("path,age\nx.jpg,33\n")
    assert load_csv(tmp_path / "l.csv")["age"].tolist() == [33]


def test_csv_missing_column(tmp_path):
    csv = build_csv(tmp_path, [{"path": "1.png", "years": 3}])
    with pytest.raises(DataError, match=r"labels.csv: missing column\(s\) \['age'\]"):
        load_csv(csv, tmp_path / "imgs")


def test_csv_bad_rows(tmp_path):
    rows = ROWS + [{"path": "a/1.png", "age": 20},  # duplicate
                   {"path": "c/missing.png", "age": 20},  # label without image
                   {"path": "b/5.png", "age": -3},  # negative age
                   {"path": "b/6.png", "age": 30, "split": "holdout"}]  # unknown split
    csv = build_csv(tmp_path, [r for r in rows if r["path"] != "c/missing.png"])
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        load_csv(csv, tmp_path / "imgs")
    msg = str(err.value)
    assert "labels.csv:6 (a/1.png): duplicate file name (also on line 2)" in msg
    assert "c/missing.png" in msg and "label without image" in msg
    assert "age -3 is negative" in msg and "'holdout'" in msg
    with pytest.warns(UserWarning, match="skipped 4 bad"):
        df = load_csv(csv, tmp_path / "imgs", on_bad="skip")
    assert len(df) == 4


def test_csv_declared_age_range(tmp_path):
    csv = build_csv(tmp_path, ROWS)
    with pytest.raises(DataError, match="age 40 is outside the declared range 0-30"):
        load_csv(csv, tmp_path / "imgs", age_range=(0, 30))


def test_csv_missing_file(tmp_path):
    with pytest.raises(MissingDataError, match="--csv"):
        load_csv(tmp_path / "none.csv")


# ---------------------------------------------------------------------------------------------
# benchmark database JSON


def build_benchmark(tmp_path: Path, folders=range(10)) -> tuple[Path, Path]:
    root = tmp_path / "faces"
    entries = []
    for k, f in enumerate(folders):
        for j in range(2):
            rel = f"DB/{f}/{k}_{j}.jpg"
            write_image(root / rel, k)
            entries.append({"img_path": rel, "id_num": 100 + k, "age": 10 + k + j,
                            "gender": "M", "database": "DB", "folder": f,
                            "aligned_bbox": [0, 0, 1, 0, 1, 1, 0, 1]})
    entries[0]["std_age"] = 2.5
    path = tmp_path / "DB.json"
    path.write_text(json.dumps(entries))
    return path, root


def test_benchmark_json_ten_folders(tmp_path):
    path, root = build_benchmark(tmp_path)
    df = load_benchmark_json(path, root, benchmark_split=1)
    assert_contract(df)
    split_of = dict(zip(df["folder"], df["split"], strict=False))
    assert [split_of[f] for f in range(10)] == (["test"] * 2 + ["train"] * 6 + ["valid"] * 2)
    assert df["subject"].iloc[0] == "100" and df["std"].iloc[0] == 2.5
    assert np.isnan(df["std"].iloc[1])
    none = load_benchmark_json(path, root, benchmark_split=-1)
    assert none["split"].isna().all()


def test_benchmark_json_three_folders_is_train_valid_test(tmp_path):
    path, root = build_benchmark(tmp_path, folders=[0, 1, 2])
    df = load_benchmark_json(path, root)
    assert df.groupby("folder")["split"].first().tolist() == ["train", "valid", "test"]


def test_benchmark_json_bad_entries(tmp_path):
    path, root = build_benchmark(tmp_path, folders=[0, 1, 2])
    entries = json.loads(path.read_text())
    entries[1]["age"] = -1
    entries[2]["img_path"] = "DB/none.jpg"
    entries.append(dict(entries[0]))
    entries.append({"age": 3})
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError) as err:
        load_benchmark_json(path, root)
    msg = str(err.value)
    assert "age is -1 (unknown)" in msg and "DB/none.jpg" in msg
    assert "duplicate img_path" in msg and "lacks ['img_path']" in msg
