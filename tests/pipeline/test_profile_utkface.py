"""The UTKFace path: the seeded age-stratified split and its CSV, the three-field names kept and
counted, and the utkface profile end to end on a tiny UTKFace-format folder (shrunk with -p):
every table names UTKFace and the report opens with the real-data note."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ageest.data import get_dataset
from ageest.data.integrity import DataError
from ageest.data.splits import apply_split_csv, stratified_split
from ageest.engine.models import LITE0_SHA256
from ageest.pipeline.reproduce import ReproduceError, reproduce
from tests.helpers import add_identical_copies, write_utkface_fixture

pytestmark = pytest.mark.filterwarnings("ignore:UTKFace .* do not follow")


@pytest.fixture(scope="module")
def utk(tmp_path_factory):
    return write_utkface_fixture(tmp_path_factory.mktemp("utk") / "UTKFace", n_images=60)


def test_split_is_seeded_stratified_and_round_trips(utk, tmp_path):
    df, info = get_dataset("utkface", data_dir=utk)
    assert info.start_age == 0 and info.end_age == 116 and len(df) == 60
    assert len(df.attrs["malformed_names"]) == 1  # the three-field name, kept
    split = stratified_split(df, seed=0)
    assert split["split"].value_counts().to_dict() == {"train": 36, "test": 18, "valid": 6}
    assert split.equals(stratified_split(df, seed=0))
    assert not split.equals(stratified_split(df, seed=1))
    # each part spans the ages' interquartile range (stratified on age bins; on 60 images the
    # bins merge until each holds enough images for every part)
    ages = df.set_index("image_id")["age"]
    low, high = ages.quantile([0.25, 0.75])
    for part in ("train", "test"):
        got = ages[split.loc[split["split"] == part, "image_id"]]
        assert got.min() <= low and got.max() >= high, part
    path = tmp_path / "split.csv"
    split.to_csv(path, index=False)
    again, _ = get_dataset("utkface", data_dir=utk, loader_options={"split_csv": path})
    assert (again["split"].value_counts() == split["split"].value_counts()).all()
    split.iloc[1:].to_csv(path, index=False)
    with pytest.raises(DataError, match="1 image\\(s\\) not listed"):
        apply_split_csv(df, path)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(df, fractions=(0.5, 0.1, 0.1))


def test_utkface_profile_needs_the_folder(tmp_path):
    with pytest.raises(ReproduceError, match="pass --utkface DIR"):
        reproduce("utkface", results_dir=tmp_path, log=lambda s: None)


@pytest.fixture(scope="module")
def utk_copies(tmp_path_factory):
    """The 60-face folder plus the release's kinds of identical images (3 groups: a byte copy
    under the same age, one under another age, a pixel copy with other bytes)."""
    root = write_utkface_fixture(tmp_path_factory.mktemp("utkc") / "UTKFace", n_images=60)
    add_identical_copies(root)
    return root


def test_utkface_profile_end_to_end(utk_copies, tmp_path):
    utk = utk_copies
    out = tmp_path / "res"
    reproduce("utkface", utkface=str(utk), results_dir=out, log=lambda s: None, html=False,
              only="00,02,03,04",  # 01 (loss illustration) reads no data
              parameters={"epochs": "1", "milestones": "", "image_size": "32",
                          "batch_size": "16", "workers": "1", "n_boot": "50",
                          "n_resamples": "99"})
    split = pd.read_csv(out / "splits" / "utkface_split.csv")
    # 63 files: 2 kept once, the conflicting pair dropped: 59 faces, each on one side only
    assert len(split) == 59 and set(split["split"]) == {"train", "valid", "test"}
    assert split["image_id"].is_unique
    summary = pd.read_csv(out / "tables" / "data_summary.csv")
    assert summary["name"].tolist() == ["utkface"] and summary["names_missing_a_field"][0] == 1
    assert summary.loc[0, ["identical_policy", "identical_groups", "identical_files",
                           "label_conflicts", "identical_kept", "identical_dropped"]].tolist() \
        == ["dedupe", 3, 6, 1, 2, 4]
    assert "identical_groups" in (out / "tables" / "data_summary.md").read_text()
    mae = pd.read_csv(out / "tables" / "mae_comparison.csv")
    assert set(mae["loss"]) == {"amr", "mean_variance", "ce"}
    assert (mae["n_images"] == 3 * 18).all()  # the split's test part (30 % of 59), three seeds
    # the profile's three seeds: a seed spread beside the CIs; no subject ids, no subject count
    assert (mae["seeds"] == 3).all() and mae["mae_seed_sd"].notna().all()
    assert mae["n_subjects"].isna().all()
    # the pretrained backbone: every run started from the packaged weights, flip-averaged
    runs = sorted((out / "runs").glob("*/fold-*/metrics.json"))
    assert len(runs) == 3 * 3 + 1  # the comparison, and K=4 at seed 0 (AMR's run reused)
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["weights"]["weights_sha256"] == LITE0_SHA256
        assert metrics["numerics"]["tta_flip"] is True
    # the paired tests pair faces (18), each averaged over the three seeds, and weigh the seeds
    paired = pd.read_csv(out / "tables" / "paired_tests.csv")
    assert (paired["n"] == 18).all() and (paired["n_seeds"] == 3).all()
    assert paired["beyond_seed_spread"].notna().all()
    for name in ("mae_comparison", "cs_curves", "age_group_mae", "k_ablation",
                 "paired_tests", "protocol_sensitivity"):
        text = (out / "tables" / f"{name}.md").read_text()
        assert "UTKFace" in text.split("\n", 1)[0], name
        assert not text.startswith("Synthetic data"), name
    for absent in ("clap_epsilon_comparison", "clap_filters", "dual_protocol"):
        assert not (out / "tables" / f"{absent}.csv").exists()
    report = (out / "REPORT.md").read_text()
    head = report.split("## ", 1)[0]
    assert "Real data: UTKFace" in head and "not one of the paper's datasets" in head
    assert "Synthetic data" not in head
