"""The paper profile on real-format data, shrunk to a CPU with papermill-style ``-p`` overrides:
FG-NET's real names (case quirks, a/b suffixes), a CLAP2016 release folder with yu4u-format
``ignore_list.txt``, tiny images and σ = 0 labels, through ``ageest reproduce`` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ageest.engine import store
from ageest.pipeline.reproduce import ReproduceError, convert_parameter
from tests.helpers import write_clap_fixture, write_fgnet_fixture

SHRINK = ["-p", "model", "small_cnn", "-p", "pretrained", "false", "-p", "epochs", "3",
          "-p", "milestones", "1", "-p", "clap_epochs", "3", "-p", "image_size", "32",
          "-p", "folds", "0", "-p", "device", "cpu", "-p", "workers", "1",
          "-p", "losses", "amr,ce", "-p", "clap_losses", "amr,ce",
          "-p", "n_boot", "20", "-p", "n_resamples", "99"]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper-path")
    fg, clap = write_fgnet_fixture(tmp / "FGNET"), write_clap_fixture(tmp / "CLAP")
    out = tmp / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ageest", "reproduce", "--profile", "paper", "--fgnet", str(fg),
         "--clap", str(clap), "--results-dir", str(out), "--no-html",
         "--only", "00,02,03", *SHRINK],  # 01 reads no data; 04 (K) holds nothing official
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _runs(out, suffix: str) -> list:
    return sorted(p.parent for p in (out / "runs").glob("*/fold-*/metrics.json")
                  if p.parent.parent.name.startswith(suffix))


def test_loader_rules_are_counted_per_split(paper_run):
    filters = pd.read_csv(paper_run / "tables" / "clap_filters.csv").set_index(
        ["protocol", "split"])
    # clean: the ignore list on training only (000001), every test image kept
    assert filters.loc[("clean", "train"), "dropped_ignore_list"] == 1
    assert filters.loc[("clean", "test"), ["dropped_ignore_list", "dropped_min_pixels"]].sum() == 0
    assert filters.loc[("clean", "test"), "kept"] == 5
    # official: the ignore list everywhere (000013 is a test image) and < 1,024 pixels dropped
    assert filters.loc[("official", "test"), "dropped_ignore_list"] == 1
    assert filters.loc[("official", "valid"), "dropped_min_pixels"] == 1  # 30 x 30
    assert filters.loc[("official", "test"), "dropped_min_pixels"] == 1  # 16 x 40
    assert filters.loc[("official", "test"), "kept"] == 3
    assert filters.loc[("clean", "test"), "sigma_zero"] == 1


def test_official_fgnet_run_trains_on_every_other_subject_with_the_official_schedule(paper_run):
    (official,) = _runs(paper_run, "fgnet-lopo-amr-kadaptive-seed42-test_best_epoch_official")
    m = store.read_metrics(official)
    assert m["n_val"] == 0 and m["n_train"] == 12 and m["n_test"] == 4  # subject 001 left out
    assert "mae_rounded" in m["selected_by"] and m["test_selected"]
    hist = pd.read_csv(official / store.HISTORY)
    # scheduler.step(epoch) after 0-based epoch e, milestone 1: stages of 2 epochs, then 1
    np.testing.assert_allclose(hist["lr"], [1e-3, 1e-3, 1e-4], rtol=1e-12)
    best = hist.loc[hist["test_mae_rounded"].idxmin(), "epoch"]
    assert m["best_epoch"] == best
    clean = _runs(paper_run, "fgnet-lopo-amr-kadaptive-seed42")[0]
    assert store.read_metrics(clean)["n_val"] > 0  # the clean run carves validation subjects


def test_official_clap_run_selects_on_the_official_test_epsilon(paper_run):
    (official,) = _runs(paper_run, "clap2016-holdout-amr-kadaptive-seed2019-test_best")
    m = store.read_metrics(official)
    assert m["selected_by"].endswith("epsilon_official") and m["n_test"] == 3
    hist = pd.read_csv(official / store.HISTORY)
    assert hist["test_epsilon_official"].notna().all()
    assert m["best_epoch"] == hist.loc[hist["test_epsilon_official"].idxmin(), "epoch"]
    params = store.read_params(official)
    assert params["label_rounding"] == "half_even" and params["seed"] == 2019
    # the clean CLAP2016 runs: ε is a number in every epoch and in metrics, σ = 0 counted
    for run in _runs(paper_run, "clap2016-holdout-")[:2]:
        if run == official:
            continue
        mm = store.read_metrics(run)
        assert math.isfinite(mm["epsilon"]) and mm["n_sigma_zero"] == 1
        assert pd.read_csv(run / store.HISTORY)["val_epsilon"].notna().all()
        preds = store.read_predictions(run)  # the per-image ε is stored with the predictions
        assert preds["epsilon"].notna().all() and ((preds["epsilon"] >= 0)
                                                   & (preds["epsilon"] <= 1)).all()


def test_published_numbers_sit_beside_real_fgnet_rows_with_what_differs(paper_run):
    table = pd.read_csv(paper_run / "tables" / "mae_comparison.csv").set_index("method")
    official = table.loc["amr [official (test-selected epoch)]"]
    assert official["published_mae"] == table.loc["amr", "published_mae"] == 3.61
    assert "epoch chosen on validation" in table.loc["amr", "published_differs"]
    # the shrunk paper path departs from the published setting: the rows say how
    assert "epochs (100)" in official["published_differs"]
    assert "epoch chosen on validation" not in official["published_differs"]
    eps = pd.read_csv(paper_run / "tables" / "clap_epsilon_comparison.csv")
    assert eps[["epsilon", "epsilon_low", "epsilon_high"]].notna().all().all()
    text = (paper_run / "REPORT.md").read_text()
    assert "## Published numbers" in text and "Journal of Multimedia Information System" in text
    assert json.loads((paper_run / "metrics" / "00_data_prep.json").read_text())[
        "synthetic"] is False


def test_parameter_conversion_and_errors(tmp_path):
    # a parameter no grid has: read by the notebook's annotation (its one declaration)
    assert convert_parameter("title", "0", "str", "x.ipynb") == "0"  # str keeps the text
    assert convert_parameter("names", "a,b", "str", "x.ipynb") == "a,b"
    assert convert_parameter("n_boot", "20", "int", "x.ipynb") == 20
    assert convert_parameter("fixed_k", "none", "int | None", "x.ipynb") is None
    assert convert_parameter("split_fractions", "0.7, 0.1,0.2", "list[float]", "x.ipynb") == \
        [0.7, 0.1, 0.2]
    # a training setting: read by its declaration (TrainConfig / the grid schema), whatever the
    # notebook's annotation says
    assert convert_parameter("pretrained", "TRUE", "bool", "x.ipynb") is True
    assert convert_parameter("epochs", "4", "str", "x.ipynb") == 4
    assert convert_parameter("clap_epochs", "4", "str", "x.ipynb") == 4  # epochs' declaration
    assert convert_parameter("folds", "0,3", "list[str]", "x.ipynb") == [0, 3]  # ints
    assert convert_parameter("protocol", "lopo", "str", "x.ipynb") == "lopo"  # one axis value
    assert convert_parameter("weight_decay", "none", "float", "x.ipynb") is None  # optional
    # a weight is a float setting; the notebooks' Optional[float] lets `none` mean its default
    assert convert_parameter("lambda_residue", "0.1", "Optional[float]", "x.ipynb") == 0.1
    assert convert_parameter("lambda_residue", "none", "Optional[float]", "x.ipynb") is None
    with pytest.raises(ReproduceError, match=r"-p epochs: 'four' is not an integer; notebook "
                                             r"x.ipynb declares epochs as int"):
        convert_parameter("epochs", "four", "int", "x.ipynb")
    with pytest.raises(ReproduceError, match="-p seeds: 'x' is not an integer"):
        convert_parameter("seeds", "0,x", "list[int]", "x.ipynb")
    with pytest.raises(ReproduceError, match="'maybe' is not true or false"):
        convert_parameter("pretrained", "maybe", "bool", "x.ipynb")


def test_run_flags_read_their_text_by_the_declaration(capsys):
    """`ageest run`'s flags and `-p` share one reader: a bad list item or number is refused
    by argparse with the setting's name, a mapping flag takes YAML or JSON."""
    import argparse

    from ageest.commands.run import add_arguments, grid_from_args

    parser = argparse.ArgumentParser(prog="ageest run")
    add_arguments(parser)
    args = parser.parse_args(["--seeds", "0,1", "--milestones", "8", "--epochs", "3",
                              "--loss-kwargs", "{amr: {eps: 0.01}}", "--grad-clip", "none"])
    grid = grid_from_args(args)
    assert grid["seeds"] == [0, 1] and grid["milestones"] == [8] and grid["epochs"] == 3
    assert grid["loss_kwargs"] == {"amr": {"eps": 0.01}} and "grad_clip" not in grid
    for argv, message in ((["--seeds", "0,x"], "seeds: 'x' is not an integer"),
                          (["--lr", "fast"], "lr: 'fast' is not a number"),
                          (["--loss-kwargs", "[1]"], "loss_kwargs: '[1]' is not a mapping")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err, argv


def test_reproduce_rejects_undeclared_and_repeated_parameters(tmp_path):
    from ageest.cli import main

    with pytest.raises(ReproduceError, match="-p epoch: no notebook of profile 'smoke' "
                                             "declares a parameter named 'epoch'"):
        from ageest.pipeline.reproduce import reproduce

        reproduce("smoke", results_dir=tmp_path, parameters={"epoch": "2"}, log=lambda s: None)
    assert main(["reproduce", "--profile", "smoke", "--results-dir", str(tmp_path),
                 "-p", "epochs", "1", "-p", "epochs", "2"]) == 2


def test_official_runs_record_and_report_their_departures_from_the_official_settings(paper_run):
    """Every official-mode run is checked against the official scripts' record as it finishes
    (it used to be checked only by tests): the shrunk run's departures are in its metrics.json
    and listed in REPORT.md."""
    (official,) = _runs(paper_run, "fgnet-lopo-amr-kadaptive-seed42-test_best_epoch_official")
    departures = store.read_metrics(official)["official_departures"]
    assert "epochs: official 100, run 3" in departures
    assert "model: official 'resnet50', run 'small_cnn'" in departures
    assert "image_size: official 227, run 32" in departures
    report = (paper_run / "REPORT.md").read_text()
    assert "## Official-protocol runs against the official settings" in report
    assert "| epochs: official 100, run 3 |" in report
    clean = _runs(paper_run, "fgnet-lopo-amr-kadaptive-seed42")[0]
    assert "official_departures" not in store.read_metrics(clean)
