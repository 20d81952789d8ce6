"""The ``fgnet`` profile end to end on a release-format folder the test builds (synthetic faces
under FG-NET's names, a landmark file per photo; never real photos), shrunk to seconds with
``-p``: FG-NET alone, landmark crops for the clean runs, the age-pretraining stage from a
UTKFace-format folder, the official twin on whole photos from ImageNet, and a report that names
the data, the evaluation and the pretraining, with the published numbers beside the rows and
what each row does otherwise."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ageest.data.synthetic import write_fgnet_like
from ageest.engine import store
from ageest.pipeline.reproduce import reproduce
from tests.helpers import write_utkface_fixture

pytestmark = [pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest"),
              pytest.mark.filterwarnings("ignore:UTKFace .* do not follow")]


def _release(root: Path) -> Path:
    """``images/`` of 120 synthetic 32-px faces of 12 subjects and ``points/``: one 68-point
    file per photo, lower-case names as in the real release."""
    images = write_fgnet_like(root / "images", seed=0, size=32, n_subjects=12, n_images=120)
    points = root / "points"
    points.mkdir()
    coords = [f"{6 + (i % 10) * 2.0} {5 + (i // 10) * 3.0}" for i in range(68)]
    for photo in images.glob("*.JPG"):
        (points / f"{photo.stem.lower()}.pts").write_text(
            "version: 1\nn_points: 68\n{\n" + "\n".join(coords) + "\n}\n")
    return root


def test_fgnet_profile_runs_to_a_report_of_the_real_format(tmp_path):
    release = _release(tmp_path / "FGNET")
    utk = write_utkface_fixture(tmp_path / "utk", n_images=60)
    out = tmp_path / "res"
    reproduce("fgnet", fgnet=str(release), pretrain=str(utk), results_dir=out,
              log=lambda s: None, html=False, only="00,02,03",
              parameters={"model": "small_cnn", "pretrained": "false", "image_size": "32",
                          "batch_size": "16", "epochs": "1", "pretrain_epochs": "1",
                          "n_folds": "3", "folds": "0", "losses": "amr,ce", "n_boot": "50",
                          "n_resamples": "99"})
    # FG-NET alone: no CLAP2016-format data, runs or tables; grey photos counted
    summary = pd.read_csv(out / "tables" / "data_summary.csv")
    assert summary["name"].tolist() == ["fgnet"] and "grey_images" in summary
    assert not (out / "tables" / "clap_epsilon_comparison.csv").exists()
    # the pretraining run lives beside runs/, and the clean runs start from it
    pre = store.find_run_dirs(out / "pretraining")
    assert len(pre) == 1 and store.read_params(pre[0])["dataset"] == "utkface"
    runs = {d.parent.name: store.read_params(d) for d in store.find_run_dirs(out / "runs")}
    assert len(runs) == 3 and not any(p["dataset"] == "utkface" for p in runs.values())
    for name, params in runs.items():
        official = name.endswith("test_best_epoch_official")
        assert params["face_crop"] == ("none" if official else "landmarks"), name
        assert params["tta_flip"] is (not official), name
        assert bool(params.get("init_sha256")) is (not official), name
    # the published numbers sit beside the rows, each saying what it does otherwise
    mae = pd.read_csv(out / "tables" / "mae_comparison.csv").set_index("method")
    clean, official = mae.loc["amr"], mae.loc["amr [official (test-selected epoch)]"]
    assert clean["published_mae"] == official["published_mae"] == 3.61
    for part in ("backbone small_cnn", "32 px", "landmark face crops", "age-pretrained",
                 "subject-grouped 3-fold", "epoch chosen on validation"):
        assert part in clean["published_differs"], part
    assert "landmark" not in official["published_differs"]
    assert "age-pretrained" not in official["published_differs"]
    caption = (out / "tables" / "mae_comparison.md").read_text().split("\n", 1)[0]
    assert "subject-grouped 3-fold, 1 of 3 folds (each subject in one test fold)" in caption
    # the dual table says the two protocols differ in their inputs too
    dual = pd.read_csv(out / "tables" / "dual_protocol.csv")
    assert "face crop none (clean: landmarks)" in dual["setup"].iloc[0]
    assert dual["protocol"].iloc[-1].startswith("difference (official − clean)")
    # single subjects: a row per tested subject, the trajectories figure
    subjects = pd.read_csv(out / "tables" / "subject_mae.csv")
    assert subjects["n_images"].sum() == mae.loc["amr", "n_images"]
    assert (out / "figures" / "subject_trajectories.png").is_file()
    head = (out / "REPORT.md").read_text().split("## ", 1)[0]
    assert "Real data: the FG-NET release" in head and "age-pretraining run on UTKFace" in head
    assert "subject-grouped 3-fold" in head and "FG-NET chose nothing" in head
