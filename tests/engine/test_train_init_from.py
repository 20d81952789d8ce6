"""``init_from``: a run that starts from another run's weights (an age-pretraining stage). The
backbone comes over as trained, the age head row by row for the ages both runs cover, the file's
SHA-256 is part of the run's identity (a new pretraining never reuses runs started from the old
one), a changed or unfit file is refused in one line, and the official twin never inherits it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ageest.engine import grids, models, store
from ageest.engine.train import InitError, init_from_run, save_checkpoint
from ageest.files import file_sha256, write_json
from tests.helpers import tiny_config

pytestmark = [pytest.mark.usefixtures("two_threads"),
              pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest"),
              pytest.mark.filterwarnings("ignore:UTKFace .* do not follow")]


def _fake_run(root: Path, *, model: str = "small_cnn", start: int = 0, end: int = 116,
              seed: int = 0) -> tuple[Path, dict]:
    """A finished run folder whose best.pt holds a seeded ``model`` over ages start..end."""
    torch.manual_seed(seed)
    net = models.get_model(model, end - start + 1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    run = root / "runs" / "pre" / "fold-holdout"
    store.write_params(run, {"model": model, "start_age": start, "end_age": end,
                             "dataset": "utkface", "params_hash": "abc123"})
    save_checkpoint(run / store.CHECKPOINTS / "best.pt", {"model": state, "epoch": 1})
    for name in store.RESULT_FILES:
        if not (run / name).exists():
            write_json(run / name, {})
    return run, state


def test_backbone_and_the_shared_ages_head_rows_come_over(tmp_path):
    run, src = _fake_run(tmp_path, start=0, end=116)
    torch.manual_seed(1)
    model = models.get_model("small_cnn", 70)  # an FG-NET run: ages 0-69
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    record = init_from_run(model, tiny_config(init_from=str(run)), 0, 69)
    got = model.state_dict()
    prefix = next(n for n, m in model.named_modules() if m is models.head(model))
    for key, value in got.items():
        if key.startswith(prefix + "."):
            assert torch.equal(value, src[key][:70])  # ages 0-69 of the 0-116 head
        else:
            assert torch.equal(value, src[key]), key
    assert not torch.equal(fresh[prefix + ".weight"], got[prefix + ".weight"])
    assert record["head_rows_copied"] == 70 and record["ages"] == [0, 116]
    assert record["sha256"] == file_sha256(run / store.CHECKPOINTS / "best.pt")


def test_head_rows_of_ages_the_source_lacks_keep_their_fresh_start(tmp_path):
    run, src = _fake_run(tmp_path, start=10, end=40)
    torch.manual_seed(1)
    model = models.get_model("small_cnn", 70)
    prefix = next(n for n, m in model.named_modules() if m is models.head(model))
    fresh = model.state_dict()[prefix + ".weight"].clone()
    init_from_run(model, tiny_config(init_from=str(run)), 0, 69)
    w = model.state_dict()[prefix + ".weight"]
    assert torch.equal(w[10:41], src[prefix + ".weight"])  # ages 10-40
    assert torch.equal(w[:10], fresh[:10]) and torch.equal(w[41:], fresh[41:])


@pytest.mark.parametrize("case", ["missing", "other_model", "changed", "unfinished"])
def test_an_unfit_init_from_is_one_line_naming_it(tmp_path, case):
    run, _ = _fake_run(tmp_path)
    model = models.get_model("small_cnn", 70)
    sha = None
    if case == "missing":
        run = tmp_path / "nowhere"
    elif case == "other_model":
        store.write_params(run, {"model": "resnet18", "start_age": 0, "end_age": 116})
    elif case == "changed":
        sha = "0" * 64
    else:
        (run / store.METRICS).unlink()
    with pytest.raises(InitError, match="init_from") as err:
        init_from_run(model, tiny_config(init_from=str(run)), 0, 69, sha)
    assert "\n" not in str(err.value)


def _grid(data: Path, results: Path, **kw) -> dict:
    return {"dataset": "fgnet", "data_dir": str(data), "protocol": "group-kfold", "n_folds": 3,
            "folds": [0], "losses": ["ce"], "epochs": 1, "batch_size": 16, "image_size": 32,
            "results_dir": str(results), "quiet": True, "threads": 1, **kw}


def test_a_grid_records_the_file_and_a_new_pretraining_is_a_new_identity(tmp_path):
    from ageest.data.synthetic import write_fgnet_like

    data = write_fgnet_like(tmp_path / "fg", seed=0, size=32, n_subjects=12, n_images=120)
    pre = grids.run_grid(_grid(data, tmp_path / "pre"))
    pre_dir = Path(pre["run_dir"].iloc[0])
    plain = grids.expand_grid(_grid(data, tmp_path / "res"))[0]["params"]
    started = grids.expand_grid(_grid(data, tmp_path / "res", init_from=str(pre_dir)))
    params = started[0]["params"]
    ckpt = pre_dir / store.CHECKPOINTS / "best.pt"
    assert params["init_from"] == str(ckpt.resolve())
    assert params["init_sha256"] == file_sha256(ckpt)
    assert "init_sha256" not in plain and plain["params_hash"] != params["params_hash"]
    # the run trains from it and says so in metrics.json
    summary = grids.run_grid(_grid(data, tmp_path / "res", init_from=str(pre_dir)))
    metrics = store.read_metrics(summary["run_dir"].iloc[0])
    assert metrics["init"]["sha256"] == params["init_sha256"]
    # another pretraining (other weights, same path): another identity, so the finished run
    # is not reused as if it had started from the new weights
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(ckpt, state)
    again = grids.expand_grid(_grid(data, tmp_path / "res", init_from=str(pre_dir)))[0]["params"]
    assert again["params_hash"] != params["params_hash"]
    with pytest.raises(grids.StaleRunError):
        grids.check_stale(grids.expand_grid(_grid(data, tmp_path / "res",
                                                  init_from=str(pre_dir))))


def test_the_official_twin_starts_from_imagenet_not_from_the_pretraining():
    from ageest.official import official_grid

    twin = official_grid({"init_from": "/some/run", "losses": ["amr"], "selection": ["val_best"],
                          "face_crop": "landmarks", "tta_flip": True}, "fgnet", ["amr"])
    assert twin["init_from"] == "" and twin["face_crop"] == "none" and twin["tta_flip"] is False


def test_the_pipeline_pretraining_stage_feeds_the_fgnet_grids(tmp_path):
    """Notebook 02/04's stage: one UTKFace run (whole faces, first seed, best checkpoint), kept
    under pretraining/ (never runs/, whose predictions notebook 03 reads), skipped when
    finished, and the settings it returns start the FG-NET-format grids from it."""
    from ageest.analysis import training_grids
    from ageest.data.synthetic import write_fgnet_like
    from tests.helpers import write_utkface_fixture

    utk = write_utkface_fixture(tmp_path / "utk", n_images=60)
    settings = {"model": "small_cnn", "pretrained": False, "optimizer": "adamw", "lr": 1e-3,
                "milestones": [], "lr_schedule": "multistep", "epochs": 1, "batch_size": 16,
                "image_size": 32, "transforms": "light", "normalize": False,
                "grad_clip": None, "seeds": [3, 4], "device": "cpu", "workers": 1,
                "executor": "local", "address": None, "synthetic_size": 32,
                "val_fraction": 0.15, "split_seed": 0, "amp": "fp32", "identical_images": None,
                "quiet": True, "face_crop": "landmarks", "threads": 1}
    assert training_grids.pretraining(settings, pretrain_dir="", out=tmp_path / "o", epochs=1,
                                      fractions=[0.6, 0.2, 0.2]) == {"settings": settings,
                                                                    "run": {}}
    stage = training_grids.pretraining(settings, pretrain_dir=str(utk), out=tmp_path / "o",
                                       epochs=1, fractions=[0.6, 0.2, 0.2])
    run = Path(stage["run"]["run_dir"])
    assert run.is_relative_to(tmp_path / "o" / training_grids.PRETRAINING)
    assert (run / store.CHECKPOINTS / "best.pt").is_file()
    params = store.read_params(run)
    assert params["seed"] == 3 and params["face_crop"] == "none" and params["loss"] == "ce"
    assert stage["settings"]["init_from"] == str(run)
    assert stage["settings"]["face_crop"] == "landmarks"  # the FG-NET runs keep their own
    again = training_grids.pretraining(settings, pretrain_dir=str(utk), out=tmp_path / "o",
                                       epochs=1, fractions=[0.6, 0.2, 0.2])
    assert again["run"]["run_dir"] == str(run)  # finished: skipped, the same run
    fg = write_fgnet_like(tmp_path / "fg", seed=0, size=32, n_subjects=12, n_images=120)
    grids_ = training_grids.comparison_grids(
        {**stage["settings"], "face_crop": "none"}, fgnet_dir=str(fg), clap_dir="",
        protocol="group-kfold", n_folds=3, folds=[0], losses=["ce"], official=True,
        clap_losses=[])
    tasks = {name: grids.expand_grid(dict(g), tmp_path / "res")[0]["params"]
             for name, g in grids_.items()}
    assert tasks["fgnet"]["init_sha256"] == file_sha256(run / store.CHECKPOINTS / "best.pt")
    assert tasks["fgnet_official"]["init_from"] == ""  # the official twin: ImageNet start
    assert "init_sha256" not in tasks["fgnet_official"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"profile": "fgnet"}, "profile 'fgnet' trains on the real FG-NET release; pass --fgnet"),
    ({"profile": "fgnet", "fgnet": ".", "clap": "."}, "profile 'fgnet' runs FG-NET alone"),
    ({"profile": "utkface", "utkface": ".", "pretrain": "."}, "--pretrain pretrains the "),
    ({"profile": "fgnet", "fgnet": ".", "pretrain": "/no/such"}, "--pretrain /no/such: no such"),
])
def test_reproduce_refuses_a_wrong_fgnet_or_pretrain_folder_in_one_line(kwargs, message):
    from ageest.pipeline.reproduce import ReproduceError, _check_data_dirs

    args = {"fgnet": None, "clap": None, "utkface": None, "pretrain": None, **kwargs}
    with pytest.raises(ReproduceError, match=message) as err:
        _check_data_dirs(args.pop("profile"), **args)
    assert "\n" not in str(err.value)
