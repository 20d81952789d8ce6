"""The identical-image policy: identity by decoded pixels (a copy with other bytes is found),
agreeing groups keep one copy, label conflicts are dropped whole, all before any split, counted
and listed; ``refuse`` for subject datasets, ``--on-bad skip`` resolving it; the file cache
keyed by what ``os.utime`` cannot restore; UTKFace links that leave the folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ageest.data import DataError, get_dataset
from ageest.data.integrity import verify_files
from ageest.data.splits import stratified_split
from tests.helpers import add_identical_copies, write_utkface_fixture

pytestmark = [
              pytest.mark.filterwarnings("ignore:UTKFace .* do not follow"),
              pytest.mark.filterwarnings("ignore:.*skipped .* bad record")]


@pytest.fixture(scope="module")
def utk(tmp_path_factory):
    root = write_utkface_fixture(tmp_path_factory.mktemp("utk") / "UTKFace", n_images=36)
    groups = add_identical_copies(root)
    return root, groups


def _load(root, tmp_path, **kw):
    return get_dataset("utkface", data_dir=root, hash_cache=tmp_path / "cache.json", **kw)


def test_pixel_identical_copy_has_other_bytes(utk):
    root, groups = utk
    a, b = (root / name for name in groups["pixels"])
    assert a.read_bytes() != b.read_bytes()  # a byte check would miss this pair
    with Image.open(a) as x, Image.open(b) as y:
        assert x.tobytes() == y.tobytes()


def test_utkface_dedupes_by_default_counts_and_lists(utk, tmp_path):
    root, groups = utk
    df, _ = _load(root, tmp_path)
    found = df.attrs["identical"]
    assert {k: found[k] for k in ("policy", "groups", "files", "label_conflicts", "kept",
                                  "dropped")} == {
        "policy": "dedupe", "groups": 3, "files": 6, "label_conflicts": 1, "kept": 2,
        "dropped": 4}
    ids = set(df["image_id"])
    assert len(df) == 36 + 3 - 4
    assert not set(groups["conflict"]) & ids  # the whole conflicting group is gone
    for kind in ("agree", "pixels"):
        assert len(set(groups[kind]) & ids) == 1, kind  # exactly one copy kept
    skipped = {os.path.basename(r["path"]): r["reason"] for r in df.attrs["skipped"]}
    assert set(skipped) == (set(groups["conflict"]) | {groups["agree"][1], groups["pixels"][1]})
    assert "labels disagree" in skipped[groups["conflict"][0]]
    actions = sorted(r["action"].split(":")[0] for r in found["records"])
    assert actions == ["dropped", "kept " + groups["agree"][0], "kept " + groups["pixels"][0]]


def test_no_identical_group_straddles_a_split(utk, tmp_path):
    root, _ = utk
    df, _ = _load(root, tmp_path)
    split = stratified_split(df, seed=0)
    path = tmp_path / "split.csv"
    split.to_csv(path, index=False)
    # the split CSV lists the images that remain; the loader applies it after the policy
    again, _ = _load(root, tmp_path, loader_options={"split_csv": path})
    digests = again["path"].map(lambda p: hashlib.sha256(Image.open(p).tobytes()).hexdigest())
    assert digests.is_unique  # one copy of every face, so no face on two sides
    assert again["split"].notna().all() and len(again) == len(df)


def test_refuse_stops_and_on_bad_skip_resolves(utk, tmp_path):
    root, groups = utk
    with pytest.raises(DataError, match=r"(?s)3 group\(s\) of identical images .*identical_images="
                                        r"'dedupe'"):
        _load(root, tmp_path, identical_images="refuse")
    df, _ = _load(root, tmp_path, identical_images="refuse", on_bad="skip")
    assert df.attrs["identical"]["dropped"] == 4 and len(df) == 35
    with pytest.raises(ValueError, match="identical_images='keep'"):
        _load(root, tmp_path, identical_images="keep")


def test_subject_copies_conflict_and_test_copy_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    (tmp_path / "copy0.png").write_bytes((tmp_path / "0.png").read_bytes())
    (tmp_path / "copy1.png").write_bytes((tmp_path / "1.png").read_bytes())
    rows = [("0.png", 20, "s1", "train"), ("copy0.png", 20, "s1", "test"),
            ("1.png", 30, "s1", "train"), ("copy1.png", 30, "s2", "train"),
            ("2.png", 40, "s2", "valid"), ("3.png", 50, "s3", "test")]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "age", "subject", "split"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"copy0.png, 0.png \(splits \['test', 'train'\]\)"):
        get_dataset("csv", csv=csv, hash_cache=tmp_path / "c.json")  # csv default: refuse
    df, _ = get_dataset("csv", csv=csv, hash_cache=tmp_path / "c.json",
                        identical_images="dedupe")
    # the test copy stays (the test set stays whole); two subjects disagree: a conflict
    assert sorted(df["image_id"]) == ["2.png", "3.png", "copy0.png"]
    assert df.attrs["identical"]["label_conflicts"] == 1


def test_cache_sees_a_change_that_utime_hides(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    ).save(path, quality=90)
    cache = tmp_path / "cache.json"
    first = verify_files([str(path)], cache).hashes[str(path)]
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # restore the modification time
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert verify_files([str(path)], cache).hashes[str(path)] != first


def test_utkface_link_out_of_the_folder_is_refused(tmp_path):
    root = write_utkface_fixture(tmp_path / "UTKFace", n_images=12)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(next(root.iterdir()).read_bytes())
    (root / "33_0_1_20990101000000009.jpg.chip.jpg").symlink_to(outside)
    with pytest.raises(DataError, match="symbolic link to .*elsewhere.jpg, outside the folder"):
        get_dataset("utkface", data_dir=root, hash_cache=tmp_path / "c.json")
    df, _ = get_dataset("utkface", data_dir=root, hash_cache=tmp_path / "c.json", on_bad="skip")
    assert len(df) == 12 and df.attrs["skipped"][0]["path"].endswith("09.jpg.chip.jpg")


def test_ageest_data_prints_the_counts(utk, tmp_path):
    root, groups = utk
    env = {**os.environ, "AGEEST_DATA": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "ageest", "data", "--dataset", "utkface",
                          "--data-dir", str(root)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert ("identical images (policy dedupe): 3 groups, 6 files; 1 label conflict (dropped "
            "whole), 2 groups kept once; 4 files dropped") in out.stdout
    assert groups["conflict"][1] in out.stdout
    refused = subprocess.run([sys.executable, "-m", "ageest", "data", "--dataset", "utkface",
                              "--data-dir", str(root), "--identical-images", "refuse"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
