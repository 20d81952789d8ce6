"""The pipeline's training grids (ageest.analysis.training_grids) and dataset choice (ageest.analysis.data_summary): what
notebooks 02 and 04 ask the runner for, checked without training anything."""

from __future__ import annotations

import pandas as pd
import pytest

from ageest.analysis import data_summary, training_grids
from ageest.engine.grids import expand_grid, normalize_grid
from tests.helpers import notebook_grids

SETTINGS = dict(model="small_cnn", pretrained=False, optimizer="adamw", lr=1e-3,
                milestones="6", epochs=2, batch_size=32, image_size=64, transforms="light",
                normalize=False, grad_clip=None, lambda_mean=0.2, lambda_residue=0.05,
                lambda_variance=0.05, seeds="0,1", device="cpu", workers=2, executor="local",
                address=None, synthetic_size=64, val_fraction=0.15, split_seed=0,
                lr_schedule="multistep", amp="fp32", identical_images="refuse")


def test_dataset_choice(tmp_path):
    assert data_summary.dataset_choice("fgnet", "") == ("synthetic-fgnet", None)
    assert data_summary.dataset_choice("clap", str(tmp_path)) == ("clap2016", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fgnet_dir='/no/such'"):
        data_summary.dataset_choice("fgnet", "/no/such")
    with pytest.raises(ValueError, match="kind must be one of"):
        data_summary.dataset_choice("utk", "")


def test_training_settings_are_runner_grid_keys():
    s = training_grids.training_settings(SETTINGS)
    g = normalize_grid(s)  # raises on an unknown key
    assert g["milestones"] == [6] and g["seeds"] == [0, 1] and g["grad_clip"] is None
    # the loss weights are plain settings, passed through by name
    assert (g["lambda_mean"], g["lambda_residue"], g["lambda_variance"]) == (0.2, 0.05, 0.05)
    assert "loss_kwargs" not in s


def test_comparison_grids_official_and_clap_switches():
    s = training_grids.training_settings(SETTINGS)
    clap = training_grids.clap_overrides(optimizer="sgd", epochs=3, grad_clip=5.0,
                                      transforms="clap", normalize=True)
    grids = training_grids.comparison_grids(s, fgnet_dir="", clap_dir="", protocol="group-kfold",
                                         n_folds=5, folds="0,2", losses="amr,ce",
                                         official=True, clap_losses="amr",
                                         clap_settings=clap)
    assert list(grids) == ["fgnet", "fgnet_official", "clap", "clap_official"]
    # values pass as given; the grid schema is the one check (and conversion) of each
    assert normalize_grid(grids["fgnet"])["folds"] == [0, 2]
    assert grids["fgnet"]["selection"] == ["val_best"]
    assert grids["fgnet_official"]["losses"] == ["amr"]
    assert grids["fgnet_official"]["selection"] == ["test_best_epoch_official"]
    # the official code's training set (no validation carve) and its logged metric
    assert grids["fgnet_official"]["val_fraction"] == 0.0
    assert grids["fgnet_official"]["select_metric"] == "mae_rounded"
    assert grids["fgnet"]["val_fraction"] == 0.15
    co = grids["clap_official"]
    assert (co["selection"], co["select_metric"], co["ignore_splits"], co["min_pixels"]) == (
        ["test_best_epoch_official"], "epsilon_official", ["train", "valid", "test"], 1024)
    assert co["optimizer"] == "sgd" and co["grad_clip"] == 5.0  # its training settings kept
    assert grids["clap"]["dataset"] == ["synthetic-clap"]
    assert grids["clap"]["protocol"] == ["holdout"]
    assert (grids["clap"]["optimizer"], grids["clap"]["epochs"], grids["clap"]["grad_clip"]) \
        == ("sgd", 3, 5.0)
    assert grids["fgnet"]["optimizer"] == "adamw" and grids["fgnet"]["epochs"] == 2
    for grid in grids.values():
        normalize_grid(grid)
    only = training_grids.comparison_grids(s, fgnet_dir="", clap_dir="", protocol="lopo",
                                        n_folds=5, folds="", losses="ce", official=False,
                                        clap_losses="")
    assert list(only) == ["fgnet"] and only["fgnet"]["folds"] is None
    with pytest.raises(ValueError, match="losses is empty"):
        training_grids.comparison_grids(s, fgnet_dir="", clap_dir="", protocol="lopo", n_folds=5,
                                     folds="", losses="", official=False, clap_losses="")


def test_k_ablation_reuses_the_adaptive_runs_of_the_comparison(tmp_path):
    """The AMR runs of notebook 04's grid are exactly notebook 02's (same run folder, same
    parameter hash), so the runner skips them instead of retraining."""
    s = training_grids.training_settings(SETTINGS)
    comparison = training_grids.comparison_grids(s, fgnet_dir="", clap_dir="",
                                              protocol="group-kfold", n_folds=5, folds="0",
                                              losses="amr,ce", official=False, clap_losses="")
    ablation = training_grids.k_ablation_grid(s, fgnet_dir="", protocol="group-kfold", n_folds=5,
                                           folds="0", ks="1,3")
    a = {t["run_dir"]: t["params"]["params_hash"]
         for t in expand_grid(comparison["fgnet"], tmp_path)}
    b = {t["run_dir"]: t["params"]["params_hash"]
         for t in expand_grid(ablation["k_ablation"], tmp_path)}
    shared = set(a) & set(b)
    assert len(shared) == 2  # amr, seeds 0 and 1
    assert all(a[d] == b[d] for d in shared)
    assert {t["params"]["k"] for t in expand_grid(ablation["k_ablation"], tmp_path)} \
        == {1, 3, None}
    with pytest.raises(ValueError, match="ks is empty"):
        training_grids.k_ablation_grid(s, fgnet_dir="", protocol="lopo", n_folds=5, folds="",
                                    ks="")


def test_failed_runs_are_listed(monkeypatch, tmp_path):
    def fake_run_grids(grids, results_dir):
        return pd.DataFrame([
            {"grid": "g", "run_dir": "runs/a/fold-0", "status": "done", "wall_time_s": 1.0,
             "mae": 3.0, "error": None},
            {"grid": "g", "run_dir": "runs/b/fold-0", "status": "failed", "wall_time_s": 1.0,
             "mae": None, "error": "ValueError: boom"}])

    monkeypatch.setattr("ageest.engine.grids.run_grids", fake_run_grids)
    with pytest.raises(training_grids.RunsFailed, match=r"1 of 2 runs failed[\s\S]*runs/b/fold-0: "
                                                     "ValueError: boom"):
        training_grids.run_grids({"g": {}}, tmp_path)


def _grids_of(profile, stem, tmp_path):
    return notebook_grids(profile, stem, tmp_path)


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_profiles_build_valid_runner_grids(profile, tmp_path):
    grids = {**_grids_of(profile, "02_training", tmp_path),
             **_grids_of(profile, "04_ablation_k", tmp_path)}
    assert set(grids) == {"fgnet", "fgnet_official", "clap", "clap_official", "k_ablation"}
    normalized = {name: normalize_grid(grid) for name, grid in grids.items()}
    fg, clap, ablation = normalized["fgnet"], normalized["clap"], normalized["k_ablation"]
    # notebook 04 trains with notebook 02's settings, so its AMR runs are reused
    for key in ("model", "epochs", "lr", "milestones", "optimizer", "batch_size", "image_size",
                "lambda_mean", "lambda_residue", "seeds", "protocol", "n_folds", "val_fraction", "split_seed"):
        assert ablation[key] == fg[key], f"{profile}: 02 and 04 differ in {key}"
    assert set(ablation["folds"] or []) <= set(fg["folds"] or range(10_000))
    if profile == "paper":
        assert fg["dataset"] == ["fgnet"] and clap["dataset"] == ["clap2016"]
        assert fg["protocol"] == ["lopo"] and fg["folds"] is None
        assert (fg["model"], fg["pretrained"], fg["epochs"], fg["batch_size"]) == \
            ("resnet50", True, 100, 64)
        assert fg["milestones"] == [15, 30, 45, 60, 75, 90] and fg["lr"] == 1e-3
        assert fg["optimizer"] == "adamw" and not fg["normalize"]
        assert (clap["optimizer"], clap["grad_clip"], clap["normalize"], clap["transforms"]) \
            == ("sgd", 5.0, True, "clap")
        assert (fg["lambda_mean"], fg["lambda_residue"]) == (0.2, 0.05)
        assert fg["seeds"] == [42] and fg["device"] == "cuda"
        assert ablation["k"] == [1, 2, 3, 4, 5, 6, 8, 10, "adaptive"]
    else:
        assert fg["dataset"] == ["synthetic-fgnet"] and clap["dataset"] == ["synthetic-clap"]
        assert fg["device"] == "cpu" and fg["model"] == "small_cnn"
    if profile == "default":
        assert ablation["k"] == [1, 2, 3, 4, 5, 6, 8, 10, "adaptive"]
        assert set(fg["losses"]) == {"amr", "mean_variance", "ce", "dldl", "dldl_v2", "l1"}


def test_loss_weights_are_plain_settings_each_run_holds_its_own(tmp_path):
    """lambda_mean / lambda_residue / lambda_variance are grid keys with one default each; a
    run's parameters (and identity) hold only the weights its loss takes, and a weight given
    through loss_kwargs is refused with the setting's name."""
    import inspect

    from ageest import losses
    from ageest.engine import train

    for name in losses.WEIGHT_SETTINGS:  # the defaults agree across the losses that take one
        defaults = {inspect.signature(spec.cls.__init__).parameters[name].default
                    for spec in losses.LOSSES.values() if name in spec.weights}
        assert defaults == {losses.weight_default(name)}
        assert getattr(train.TrainConfig(), name) == losses.weight_default(name)
    grid = {"dataset": ["synthetic-fgnet"], "synthetic_size": 16, "protocol": ["group-kfold"],
            "n_folds": 2, "folds": [0], "losses": ["amr", "mean_variance", "ce"],
            "lambda_residue": 0.1, "results_dir": str(tmp_path)}
    tasks = {t["params"]["loss"]: t["params"] for t in expand_grid(grid)}
    assert (tasks["amr"]["lambda_mean"], tasks["amr"]["lambda_residue"]) == (0.2, 0.1)
    assert "lambda_variance" not in tasks["amr"]
    assert (tasks["mean_variance"]["lambda_variance"], "lambda_residue" in
            tasks["mean_variance"]) == (0.05, False)
    assert not any(k.startswith("lambda_") for k in tasks["ce"])
    # changing a weight CE does not take leaves CE's identity alone
    other = {t["params"]["loss"]: t["params"]["params_hash"]
             for t in expand_grid({**grid, "lambda_residue": 0.3})}
    assert other["ce"] == tasks["ce"]["params_hash"]
    assert other["amr"] != tasks["amr"]["params_hash"]
    with pytest.raises(ValueError, match="lambda_mean is a setting of its own; set lambda_mean"):
        normalize_grid({**grid, "loss_kwargs": {"amr": {"lambda_mean": 0.3}}})


def test_an_official_clap_grid_without_its_ignore_list_stops_before_any_run_trains(
        monkeypatch, tmp_path):
    """Notebook 02 runs its clean grids first: the official CLAP2016 grid's missing ignore list
    used to be found only after the clean runs had trained."""
    from tests.helpers import write_clap_fixture

    clap = write_clap_fixture(tmp_path / "CLAP")
    (clap / "ignore_list.txt").unlink()
    started = []
    monkeypatch.setattr("ageest.engine.grids.run_grid",
                        lambda grid, **kw: started.append(grid) or pd.DataFrame())
    grids = {"clean_clap": {"dataset": ["clap2016"], "data_dir": str(clap),
                            "selection": ["val_best"]},
             "official_clap": {"dataset": ["clap2016"], "data_dir": str(clap),
                               "selection": ["test_best_epoch_official"]}}
    with pytest.raises(FileNotFoundError, match=r"ignore_list.txt: missing; official-protocol"):
        training_grids.run_grids(grids, tmp_path / "results")
    assert started == []
