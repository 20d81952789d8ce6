"""Dataset manifests: counts, histogram, sha256 (cached), skipped files; verification reports
changed, missing and added files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from ageest.data import (
    DataError,
    MissingDataError,
    load_fgnet,
    verify_dataset_manifest,
    write_dataset_manifest,
)
from ageest.data import integrity as integrity_mod
from ageest.data.integrity import check_image_file, sha256_files
from ageest.files import read_json


def build(tmp_path: Path) -> Path:
    root = tmp_path / "fg"
    root.mkdir()
    for i, name in enumerate(["001A02.JPG", "001A05.JPG", "002A10.JPG", "003A30.JPG"]):
        Image.new("RGB", (12, 12), (40 * i, 20, 20)).save(root / name)
    return root


def load(root: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not the 1,002-image release
        return load_fgnet(root, **kw)


def test_manifest_contents(tmp_path):
    root = build(tmp_path)
    (root / "junk.txt").write_text("x")
    df = load(root, on_bad="skip")
    path = write_dataset_manifest(df, tmp_path / "out" / "dataset.json", extra={"dataset": "t"})
    m = read_json(path)
    assert m["n_images"] == 4 and m["n_subjects"] == 3
    assert m["age_min"] == 2 and m["age_max"] == 30
    assert m["age_histogram"] == {"2": 1, "5": 1, "10": 1, "30": 1}
    assert m["split_counts"] == {"none": 4}
    assert m["dataset"] == "t"
    assert m["skipped"][0]["path"].endswith("junk.txt")  # what on_bad="skip" dropped
    entry = m["files"]["001A02"]
    assert entry["age"] == 2 and len(entry["sha256"]) == 64
    assert (tmp_path / "out" / ".sha256-cache.json").is_file()


def test_verify_reports_changed_missing_added(tmp_path):
    root = build(tmp_path)
    manifest = tmp_path / "dataset.json"
    write_dataset_manifest(load(root), manifest)
    report = verify_dataset_manifest(load(root), manifest)
    assert report.ok and str(report) == "dataset matches its manifest"

    Image.new("RGB", (12, 12), (1, 2, 3)).save(root / "001A05.JPG")  # changed bytes
    (root / "002A10.JPG").unlink()  # missing
    Image.new("RGB", (12, 12)).save(root / "004A40.JPG")  # added
    with pytest.warns(UserWarning, match="differs from its manifest"):
        report = verify_dataset_manifest(load(root), manifest)
    assert report.changed == ["001A05"] and report.missing == ["002A10"]
    assert report.added == ["004A40"] and not report.ok
    with pytest.raises(DataError, match="1 changed: 001A05; 1 missing: 002A10; 1 added: 004A40"):
        verify_dataset_manifest(load(root), manifest, strict=True)


def test_file_deleted_after_loading_is_missing(tmp_path):
    root = build(tmp_path)
    df = load(root)
    write_dataset_manifest(df, tmp_path / "m.json")
    (root / "003A30.JPG").unlink()
    with pytest.warns(UserWarning):
        assert verify_dataset_manifest(df, tmp_path / "m.json").missing == ["003A30"]


def test_verify_without_manifest(tmp_path):
    with pytest.raises(MissingDataError, match="write_dataset_manifest"):
        verify_dataset_manifest(load(build(tmp_path)), tmp_path / "none.json")


def test_sha256_cache_avoids_rehashing(tmp_path, monkeypatch):
    root = build(tmp_path)
    files = sorted(str(p) for p in root.iterdir())
    cache = tmp_path / "cache.json"
    first = sha256_files(files, cache)
    calls = []
    real = integrity_mod._sha256_file
    monkeypatch.setattr(integrity_mod, "_sha256_file", lambda p: calls.append(p) or real(p))
    assert sha256_files(files, cache) == first and calls == []
    Image.new("RGB", (13, 12)).save(files[0])  # new size/mtime -> rehashed
    second = sha256_files(files, cache)
    assert len(calls) == 1 and second[files[0]] != first[files[0]]


def test_check_image_file_modes(tmp_path):
    good = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(good)
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "t.txt").write_text("x")
    assert check_image_file(good) is None
    assert check_image_file(tmp_path / "z.jpg") == "zero-byte file"
    assert check_image_file(tmp_path / "t.txt").startswith("not an image file")
    assert check_image_file(good, "none") is None
    with pytest.raises(ValueError, match="check_images='full'"):
        check_image_file(good, "full")
