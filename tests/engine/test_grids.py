"""The grid runner: expansion and naming, the run-directory store, resume (including after a
SIGKILL), changed-configuration handling, failures, parallel workers, aggregation, the CLI and the
``python -m ageest.engine.run`` entry point. Tiny data: 12 subjects, 120 images, 32 px, 1-3 epochs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ageest.cli import main as cli_main
from ageest.commands.run import add_arguments, format_summary, grid_from_args
from ageest.data.synthetic import write_fgnet_like
from ageest.engine import grids, store
from ageest.engine.executors import EXECUTORS, Executor, LocalExecutor, available_cpus, get_executor
from ageest.engine.run import StaleRunError, execute_run, fold_digest
from ageest.pipeline.aggregate import aggregate

pytestmark = pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fgnet_like(tmp_path_factory.mktemp("data") / "fg", seed=0, size=32,
                            n_subjects=12, n_images=120)


def _grid(data_dir, results, **kw):
    g = {"dataset": "fgnet", "data_dir": str(data_dir), "protocol": "group-kfold",
         "n_folds": 3, "folds": [0], "losses": ["amr"], "epochs": 1, "batch_size": 16,
         "image_size": 32, "results_dir": str(results), "quiet": True, "threads": 1}
    return {**g, **kw}


def _cli_args(data_dir, results, *extra):
    return ["run", "--dataset", "fgnet", "--data-dir", str(data_dir), "--protocol",
            "group-kfold", "--n-folds", "3", "--image-size", "32", "--batch-size", "16",
            "--results-dir", str(results), "--quiet", "--threads", "1", *extra]


# ---------------------------------------------------------------------------------------------
# grid expansion


def test_expand_grid_names_k_handling_and_fold_subset(data_dir, tmp_path):
    tasks = grids.expand_grid(_grid(data_dir, tmp_path, losses=["ce", "mean_residue"],
                                     k=[1, 3, "adaptive"], seeds=[0, 1], folds=[0, 2]))
    names = sorted({Path(t["run_dir"]).parent.name for t in tasks})
    assert names == sorted(f"fgnet-group-kfold-{n}-seed{s}" for n in
                           ("ce-kadaptive", "mean_residue-k1", "mean_residue-k3",
                            "amr-kadaptive") for s in (0, 1))
    assert len(tasks) == 4 * 2 * 2
    assert {Path(t["run_dir"]).name for t in tasks} == {"fold-0", "fold-2"}
    one = next(t for t in tasks if "mean_residue-k3-seed1" in t["run_dir"])
    p = one["params"]
    assert p["loss_kwargs"] == {"k": 3} and p["k"] == 3 and p["fold_index"] in (0, 2)
    assert p["start_age"] == 0 and p["end_age"] == 69
    assert json.loads(json.dumps(one)) == one  # JSON-able run specs (executor contract)
    assert len({t["params"]["params_hash"] for t in tasks}) == len(tasks)


def test_official_selection_gets_its_own_folder(data_dir, tmp_path):
    tasks = grids.expand_grid(_grid(data_dir, tmp_path,
                                     selection=["val_best", "test_best_epoch_official"]))
    dirs = sorted(Path(t["run_dir"]).parent.name for t in tasks)
    assert dirs == ["fgnet-group-kfold-amr-kadaptive-seed0",
                    "fgnet-group-kfold-amr-kadaptive-seed0-test_best_epoch_official"]


def test_grid_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown grid key\(s\) \['epochz'\]"):
        grids.expand_grid(_grid(data_dir, tmp_path, epochz=3))
    with pytest.raises(ValueError, match="mean_residue .* needs integer K"):
        grids.expand_grid(_grid(data_dir, tmp_path, losses=["mean_residue"]))
    with pytest.raises(ValueError, match=r"--folds 7: .* has 3 folds"):
        grids.expand_grid(_grid(data_dir, tmp_path, folds=[7]))
    with pytest.raises(ValueError, match="has no train/valid/test split"):
        grids.expand_grid(_grid(data_dir, tmp_path, protocol="holdout"))
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("losses: [amr]\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"grid.yaml: unknown key\(s\) \['learning_rate'\]"):
        grids.load_grid_config(cfg)



@pytest.mark.parametrize("key,value,message", [
    ("epochs", "two", "grid key epochs: 'two' is not an integer"),
    ("lr", "fast", "grid key lr: 'fast' is not a number"),
    ("seeds", [0, "x"], "grid key seeds: 'x' is not an integer"),
    ("n_folds", 2.7, "grid key n_folds: 2.7 is not an integer"),
    ("val_fraction", 1.5, "grid key val_fraction: 1.5 is above the maximum 1.0"),
    ("optimizer", "adam", "grid key optimizer: 'adam' is not one of"),
    ("pretrained", "yes", "grid key pretrained: 'yes' is not true or false"),
])
def test_grid_values_are_validated_before_any_run(key, value, message, data_dir, tmp_path,
                                                   capsys):
    with pytest.raises(ValueError, match=message):
        grids.normalize_grid(_grid(data_dir, tmp_path, **{key: value}))
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({key: value}))
    # the CLI: one line on stderr, exit status 2, no traceback, nothing trained
    assert cli_main(["run", "--dataset", "fgnet", "--data-dir", str(data_dir), "--results-dir",
                     str(tmp_path / "res"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ageest run: error: {message.split(' is ')[0]}") and \
        "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res" / "runs").exists()


def test_run_user_errors_are_one_line_and_debug_shows_the_traceback(data_dir, tmp_path,
                                                                    capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("losses: [amr]\nlearning_rate: 0.1\n")
    assert cli_main(_cli_args(data_dir, tmp_path, "--config", str(cfg))) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert cli_main(["run", "--dataset", "fgnet", "--data-dir", str(tmp_path / "nope"),
                     "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ageest run: error:") and "nope" in err and "Traceback" not in err
    assert cli_main(["run", "--losses", "nosuch", "--results-dir", str(tmp_path / "r")]) == 2
    assert "unknown loss 'nosuch'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="learning_rate"):
        cli_main(_cli_args(data_dir, tmp_path, "--config", str(cfg), "--debug"))


def test_results_dir_and_pretrained_are_checked_once_before_any_run(data_dir, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode bits: use a path under /proc
            ro = Path("/proc/ageest-cannot-write")
        assert cli_main(["run", "--dataset", "fgnet", "--data-dir", str(data_dir),
                         "--results-dir", str(ro / "res")]) == 2
        err = capsys.readouterr().err
        assert "cannot be written" in err and "--results-dir" in err
    finally:
        (tmp_path / "ro").chmod(0o700)
    hub = tmp_path / "hub"
    os.environ["TORCH_HOME"] = str(hub)
    try:
        import torch

        torch.hub.set_dir(str(hub / "hub"))
        assert cli_main(["run", "--dataset", "fgnet", "--data-dir", str(data_dir), "--model",
                         "resnet18", "--pretrained", "--results-dir", str(tmp_path / "r2")]) == 2
        err = capsys.readouterr().err
        assert "--pretrained:" in err and "resnet18" in err and "is missing" in err
        assert not (tmp_path / "r2" / "runs").exists()  # nothing was started
    finally:
        os.environ.pop("TORCH_HOME", None)


# ---------------------------------------------------------------------------------------------
# end to end through the CLI, resume, changed parameters


def test_cli_end_to_end_store_resume_and_stale(data_dir, tmp_path, capsys):
    res = tmp_path / "res"
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({"losses": "amr,ce", "folds": "0,1", "epochs": 1,
                                   "selection": ["val_best", "test_best_epoch_official"]}))
    assert cli_main(_cli_args(data_dir, res, "--config", str(cfg))) == 0
    out = capsys.readouterr().out
    assert "runs: done 8, skipped 0, failed 0, pending 0 (total 8)" in out
    run_dirs = store.find_run_dirs(res)
    assert len(run_dirs) == 8
    for d in run_dirs:
        for name in ("params.yaml", "history.csv", "predictions.parquet", "metrics.json",
                     "manifest.json", "checkpoints/best.pt"):
            assert (d / name).is_file(), d / name
        assert not (d / "checkpoints" / "last.pt").exists()  # keep_checkpoints=best
        m = store.read_metrics(d)
        assert np.isfinite(m["mae"]) and m["status"] == "done"
        official = d.parent.name.endswith("test_best_epoch_official")
        assert m["test_selected"] is official
        assert store.read_params(d)["test_selected"] is official
        assert store.read_predictions(d)["test_selected"].all() == official
        assert json.loads((d / "manifest.json").read_text())["test_selected"] is official

    # predictions of the whole grid, in the frame ageest.analysis.comparisons expects
    from ageest.analysis import comparisons

    preds = store.load_predictions(res)
    comparisons.check_predictions(preds)
    assert preds.groupby("run")["image_id"].count().min() > 0
    assert set(preds["k"]) == {"adaptive"} and set(preds["loss"]) == {"amr", "ce"}
    table = aggregate(res, n_boot=200)
    assert len(table) == 4  # (amr, ce) x (val_best, official)
    assert table.loc[table["selection"] == "test_best_epoch_official", "test_selected"].all()
    assert (table["mae_pooled_low"] <= table["mae_pooled"]).all()
    assert (table["mae_pooled"] <= table["mae_pooled_high"]).all()
    assert table["n_folds"].eq(2).all() and table["epsilon"].isna().all()
    assert (res / "tables" / "aggregate.csv").is_file()

    # rerun: everything is skipped, nothing retrained
    before = {d: (d / "metrics.json").stat().st_mtime_ns for d in run_dirs}
    assert cli_main(_cli_args(data_dir, res, "--config", str(cfg))) == 0
    assert "runs: done 0, skipped 8" in capsys.readouterr().out
    assert before == {d: (d / "metrics.json").stat().st_mtime_ns for d in run_dirs}

    # a changed parameter never reuses or overwrites finished runs
    assert cli_main(_cli_args(data_dir, res, "--config", str(cfg), "--epochs", "2")) == 2
    assert "fold-0: parameters changed: epochs 1 -> 2" in capsys.readouterr().err
    assert before == {d: (d / "metrics.json").stat().st_mtime_ns for d in run_dirs}
    # ... but presentation-only options (quiet, threads) keep the hash
    assert cli_main(_cli_args(data_dir, res, "--config", str(cfg), "--threads", "2")) == 0


def test_unfinished_run_with_other_parameters_restarts(data_dir, tmp_path):
    res = tmp_path / "res"
    task = grids.expand_grid(_grid(data_dir, res, epochs=2))[0]
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True)
    store.write_params(run_dir, {**task["params"], "lr": 9.0, "params_hash": "000000000000"})
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"partial garbage of the old config")
    assert store.run_status(run_dir) == "partial"
    result = execute_run(task)
    assert result["status"] == "done", result["error"]
    assert store.read_params(run_dir)["params_hash"] == task["params"]["params_hash"]
    assert store.read_metrics(run_dir)["resumed_from_epoch"] is None


def test_failed_run_is_recorded_and_others_continue(data_dir, tmp_path, monkeypatch):
    # a failure only the run itself can meet (a bad name is refused before any run starts,
    # see tests/commands/test_user_errors.py): the ce loss breaks when it is built
    import ageest.losses

    real_get_loss = ageest.losses.get_loss

    def broken_for_ce(name, **kwargs):
        if name == "ce":
            raise RuntimeError("ce does not take lambda_mean (broken on purpose)")
        return real_get_loss(name, **kwargs)

    res = tmp_path / "res"
    monkeypatch.setattr(ageest.losses, "get_loss", broken_for_ce)
    summary = grids.run_grid(_grid(data_dir, res, losses=["ce", "amr"]))
    monkeypatch.setattr(ageest.losses, "get_loss", real_get_loss)
    by_loss = {Path(r).parent.name.split("-")[3]: s
               for r, s in zip(summary["run_dir"], summary["status"], strict=True)}
    assert by_loss == {"ce": "failed", "amr": "done"}
    failed = Path(summary.loc[summary["status"] == "failed", "run_dir"].iloc[0])
    assert "does not take lambda_mean" in (failed / "error.txt").read_text()
    assert not (failed / "metrics.json").exists() and store.run_status(failed) == "failed"
    assert "FAILED" in format_summary(summary)
    # fixing the configuration reruns it (the old hash's partial folder is cleared)
    summary = grids.run_grid(_grid(data_dir, res, losses=["ce", "amr"]))
    assert sorted(summary["status"]) == ["done", "skipped"]
    assert not (failed / "error.txt").exists()


def test_changed_dataset_never_reuses_finished_runs(tmp_path):
    """The same grid on a copy of the dataset with one more subject: other images, other folds,
    so every finished run is stale, and the error says the data changed."""
    import shutil

    from ageest.data.synthetic import write_fgnet_like

    data = write_fgnet_like(tmp_path / "fg", seed=0, size=32, n_subjects=12, n_images=72)
    res = tmp_path / "res"
    summary = grids.run_grid(_grid(data, res))
    assert (summary["status"] == "done").all()
    more = tmp_path / "fg_more"
    shutil.copytree(data, more)
    extra = write_fgnet_like(tmp_path / "fg13", seed=1, size=32, n_subjects=13, n_images=78)
    for image in extra.glob("013A*"):
        shutil.copy(image, more / image.name)
    with pytest.raises(StaleRunError, match="the data changed"):
        grids.run_grid(_grid(more, res))
    # a moved but identical copy keeps the same identity: nothing is retrained
    moved = tmp_path / "fg_moved"
    shutil.copytree(data, moved)
    again = grids.run_grid(_grid(moved, res))
    assert (again["status"] == "skipped").all()


def test_fold_digest_names_the_split():
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"]})
    from ageest.data.splits import Fold

    f1 = Fold("0", train=np.array([0, 1]), val=np.array([2]), test=np.array([3]))
    f2 = Fold("0", train=np.array([0, 2]), val=np.array([1]), test=np.array([3]))
    assert fold_digest(df, f1) != fold_digest(df, f2)
    assert fold_digest(df, f1) == fold_digest(df.iloc[::-1].reset_index(drop=True),
                                                            Fold("0", np.array([3, 2]),
                                                                 np.array([1]), np.array([0])))


def _finished(res: Path) -> list[Path]:
    return [p.parent for p in res.rglob("metrics.json")]


def test_sigkill_mid_run_then_resume(data_dir, tmp_path):
    """Kill `ageest run` with SIGKILL while a run is half trained; the rerun skips the finished
    runs and completes the killed one from its last checkpoint."""
    res = tmp_path / "res"
    args = _cli_args(data_dir, res, "--losses", "amr,ce,l1", "--folds", "0",
                     "--epochs", "6", "--batch-size", "8", "--keep-checkpoints", "best")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Event-driven, no polling: the runner prints "[1/3] done ..." when the first run finished
    # and "... epoch 2/6: ..." right after the trainer wrote that epoch's last.pt, so the kill
    # lands with 4 of the second run's 6 epochs still to go, however loaded the machine is.
    proc = subprocess.Popen([sys.executable, "-m", "ageest", *args], env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    killed_dir, seen, first_done = None, b"", False
    try:
        while proc.poll() is None:
            chunk = os.read(proc.stdout.fileno(), 65536)  # blocks until the child writes
            if not chunk:
                break
            seen += chunk
            first_done = first_done or b"[1/3] done" in seen
            if first_done and b"epoch 2/6:" in seen[seen.index(b"[1/3] done"):]:
                os.kill(proc.pid, signal.SIGKILL)
                partial = [p.parent.parent for p in res.rglob("checkpoints/last.pt")
                           if not (p.parent.parent / "metrics.json").exists()]
                killed_dir = partial[0] if partial else None
                break
    finally:
        if proc.poll() is None and killed_dir is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_dir is not None, "no partial run when the second run reported epoch 2: " + \
        seen.decode(errors="replace")[-2000:]
    assert proc.returncode == -signal.SIGKILL
    finished_before = set(_finished(res))
    assert killed_dir not in finished_before and store.run_status(killed_dir) == "partial"
    assert (killed_dir / "run.lock").exists()  # left behind by the killed process
    # history.csv is appended after every epoch, so a run in progress can be watched
    assert pd.read_csv(killed_dir / store.HISTORY)["epoch"].tolist()[:2] == [1, 2]
    assert b"ETA" in seen and b"img/s" in seen

    summary = grids.run_grid(_grid(data_dir, res, losses=["amr", "ce", "l1"], epochs=6,
                                    batch_size=8))
    status = dict(zip(map(Path, summary["run_dir"]), summary["status"], strict=True))
    assert all(status[d] == "skipped" for d in finished_before)
    assert status[killed_dir] == "done"
    assert set(status.values()) <= {"done", "skipped"}
    m = store.read_metrics(killed_dir)
    assert m["resumed_from_epoch"] is not None and m["resumed_from_epoch"] >= 2
    assert len(store.read_predictions(killed_dir)) == m["n_test"]
    assert not (killed_dir / "run.lock").exists()


# ---------------------------------------------------------------------------------------------
# executors


def test_parallel_workers_two_processes(data_dir, tmp_path):
    res = tmp_path / "res"
    events = []
    summary = grids.run_grid(_grid(data_dir, res, losses=["amr", "ce"], folds=[0, 1],
                                    workers=2, threads=None), on_event=events.append)
    assert (summary["status"] == "done").all() and len(summary) == 4
    assert events[-1]["done"] == 4 and events[-1]["pending"] == 0
    assert max(e["running"] for e in events) == 2
    threads = set()
    for d in map(Path, summary["run_dir"]):
        man = json.loads((d / "manifest.json").read_text())
        threads.add(man["device"]["torch_threads"])
    assert threads == {max(1, available_cpus() // 2)}  # the cores this process may use


def _self_kill(task):
    if task.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    if task.get("raise"):
        raise RuntimeError("task raised")
    return {"run_dir": task["run_dir"], "status": "done", "error": None, "wall_time_s": 0.0,
            "pid": os.getpid()}


def test_local_executor_survives_killed_worker_and_escaped_exception():
    tasks = [{"run_dir": f"r{i}"} for i in range(5)]
    tasks[1]["die"] = True
    tasks[3]["raise"] = True
    events = []
    out = LocalExecutor(workers=2, retries=1).run(tasks, _self_kill, on_event=events.append)
    assert [r["run_dir"] for r in out] == [t["run_dir"] for t in tasks]
    assert [r["status"] for r in out] == ["done", "failed", "done", "failed", "done"]
    assert "exit code -9" in out[1]["error"]
    assert "task raised" in out[3]["error"]
    assert events[-1] | {"last": None} == {"done": 3, "skipped": 0, "failed": 2, "running": 0,
                                           "pending": 0, "total": 5, "last": None}


def test_executor_registry_and_interface():
    assert EXECUTORS == {"local": "ageest.engine.executors:LocalExecutor",
                         "ray": "ageest.engine.ray_executor:RayExecutor"}
    ex = get_executor("local", workers=1)
    assert isinstance(ex, Executor) and ex.in_process
    out = ex.run([{"run_dir": "a", "raise": True}, {"run_dir": "b"}], _self_kill)
    assert [r["status"] for r in out] == ["failed", "done"]
    with pytest.raises(ValueError, match="unknown executor 'slurm'"):
        get_executor("slurm")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        LocalExecutor(workers=0)


# ---------------------------------------------------------------------------------------------
# python -m ageest.engine.run


def test_train_module_entry_point_from_params_yaml(data_dir, tmp_path):
    task = grids.expand_grid(_grid(data_dir, tmp_path / "grid"))[0]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(task["params"]))
    out = tmp_path / "one-run"
    proc = subprocess.run([sys.executable, "-m", "ageest.engine.run", "--params", str(params),
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test MAE" in proc.stdout
    assert store.is_finished(out)
    assert store.read_params(out)["params_hash"] == task["params"]["params_hash"]


def test_local_executor_thread_share_and_gpu_round_robin():
    ex = LocalExecutor(workers=2, threads=3, gpus=[0, 1])
    envs = [ex._worker_env(slot, ex._gpu_list()) for slot in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"3"}
    assert LocalExecutor(workers=2, gpus=[])._worker_env(0, []).get("CUDA_VISIBLE_DEVICES") is None
    assert LocalExecutor(workers=4).threads >= 1


def test_live_lock_blocks_a_second_runner(data_dir, tmp_path):
    import socket

    task = grids.expand_grid(_grid(data_dir, tmp_path))[0]
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True)
    (run_dir / "run.lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # alive: us
    result = execute_run(task)
    assert result["status"] == "failed" and "being trained by another process" in result["error"]
    assert (run_dir / "run.lock").exists() and not store.is_finished(run_dir)
    # the refused runner leaves nothing in the live run's folder (no error.txt to outlive it)
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]


def test_official_split_with_std_and_unknown_subjects(data_dir, tmp_path):
    """CLAP-style data through the csv dataset: official split column, apparent-age std, no
    subjects; the ε-error is computed per run and in the aggregate, subjects stay NA."""
    import pandas as pd

    files = sorted(p.name for p in data_dir.glob("*.JPG"))
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({
        "path": files, "age": [int(f[4:6]) for f in files],
        "std": rng.uniform(1.0, 5.0, len(files)).round(2),
        "split": np.resize(["train", "train", "train", "valid", "test"], len(files)),
    })
    csv = tmp_path / "labels.csv"
    labels.to_csv(csv, index=False)
    res = tmp_path / "res"
    summary = grids.run_grid({"dataset": "csv", "csv": str(csv), "image_root": str(data_dir),
                               "protocol": "holdout", "losses": ["dldl"], "epochs": 1,
                               "batch_size": 16, "image_size": 32, "quiet": True,
                               "results_dir": str(res)})
    assert (summary["status"] == "done").all(), summary["error"].tolist()
    run_dir = Path(summary["run_dir"].iloc[0])
    assert run_dir.name == "fold-holdout"
    m = store.read_metrics(run_dir)
    assert 0.0 <= m["epsilon"] <= 1.0 and m["selected_by"] == "validation epsilon"
    preds = store.read_predictions(run_dir)
    assert preds["subject"].isna().all() and preds["std"].notna().all()
    table = aggregate(res, n_boot=100)
    row = table.iloc[0]
    assert row["epsilon_low"] <= row["epsilon"] <= row["epsilon_high"]
    assert row["n_subjects"] == row["n_images"]  # each image its own bootstrap cluster


def test_grid_schema_is_trainconfig_and_the_cli_is_the_schema():
    """One source of defaults: every TrainConfig field a grid sets is a schema key with the
    field's default and help; every schema key is an `ageest run` flag whose help shows it."""
    import argparse
    import dataclasses

    from ageest.engine.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["grid"]:
            # per-run fields: the axis "selection" and the execution keys are the grid's own
            assert f.name not in grids.SCHEMA or f.name in ("selection", "threads", "quiet")
            continue
        key = grids.SCHEMA[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        assert key.default == default and key.help == f.metadata["help"], f.name
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.dest: a for a in parser._actions}
    for name, key in grids.SCHEMA.items():
        assert name in flags, f"--{name.replace('_', '-')} is missing"
        assert key.help.replace("%", "%%") in flags[name].help
    assert "(default 10)" in flags["epochs"].help and flags["epochs"].type("3") == 3
    assert flags["optimizer"].choices == ["adamw", "sgd"]
    args = parser.parse_args(["--epochs", "3", "--losses", "amr,ce", "--no-pretrained",
                              "--loss-kwargs", '{"amr": {"eps": 0.01}}', "--lambda-mean", "0.1"])
    grid = grid_from_args(args)
    assert grid == {"epochs": 3, "losses": ["amr", "ce"], "pretrained": False,
                    "loss_kwargs": {"amr": {"eps": 0.01}}, "lambda_mean": 0.1}
    g = grids.normalize_grid(grid)
    assert g["losses"] == ["amr", "ce"] and g["epochs"] == 3 and g["lambda_mean"] == 0.1


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--seeds", "", r"grid key seeds: no values .* --seeds 0"),
    ("--losses", "", r"grid key losses: no values and no k .* --losses amr"),
    ("--dataset", "", r"grid key dataset: no values"),
])
def test_an_empty_axis_is_refused_before_anything_runs(tmp_path, capsys, flag, value, message):
    """`--seeds ""` used to print "0 runs in the grid" and then crash (KeyError: 'status')."""
    from ageest.cli import main

    assert main(["run", flag, value, "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "runs").exists()


def test_a_lock_whose_process_id_was_reused_is_taken_over(data_dir, tmp_path):
    """A lock names host, pid and the process's start time: our own live pid with another start
    time is a reused id (the locking process is gone), so the run goes ahead. A live holder is
    named with the lock file and how to clear it, and no error.txt is pointed at."""
    import socket

    task = grids.expand_grid(_grid(data_dir, tmp_path))[0]
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True)
    lock = run_dir / "run.lock"
    lock.write_text(f"{socket.gethostname()} {os.getpid()} 1")  # our id, started at tick 1: not us
    result = execute_run(task)
    assert result["status"] == "done" and not lock.exists()

    task = grids.expand_grid(_grid(data_dir, tmp_path / "second"))[0]
    run_dir = Path(task["run_dir"])
    run_dir.mkdir(parents=True)
    from ageest.engine.run import _process_start

    start = _process_start(os.getpid())
    (run_dir / "run.lock").write_text(f"{socket.gethostname()} {os.getpid()} {start}")  # alive: us
    result = execute_run(task)
    assert result["status"] == "failed"
    assert re.search(rf"{re.escape(str(run_dir / 'run.lock'))} is held by process {os.getpid()} "
                     rf".*delete {re.escape(str(run_dir / 'run.lock'))} and run again",
                     result["error"])
    summary = pd.DataFrame([{"run_dir": str(run_dir), "status": "failed", "wall_time_s": 0.0,
                             "mae": None, "error": result["error"]}])
    assert "error.txt" not in format_summary(summary)


def test_a_run_missing_one_of_its_files_is_redone_not_skipped(data_dir, tmp_path):
    """Its predictions.parquet deleted, a finished run used to be skipped (metrics.json was
    there) and every table then failed asking to "rerun it"."""
    summary = grids.run_grid(_grid(data_dir, tmp_path))
    run_dir = Path(summary["run_dir"].iloc[0])
    assert summary["status"].tolist() == ["done"]
    (run_dir / store.PREDICTIONS).unlink()
    assert not store.is_finished(run_dir) and store.missing_files(run_dir) == [store.PREDICTIONS]
    again = grids.run_grid(_grid(data_dir, tmp_path))
    assert again["status"].tolist() == ["done"] and store.is_finished(run_dir)
    assert len(store.read_predictions(run_dir)) > 0
    assert grids.run_grid(_grid(data_dir, tmp_path))[
        "status"].tolist() == ["skipped"]


def test_the_workers_of_a_grid_share_the_cores_by_default(monkeypatch):
    """threads x workers <= cores unless threads is set; setting it past the cores warns."""
    import warnings

    from ageest.engine import executors

    monkeypatch.setattr(executors, "available_cpus", lambda: 2)
    assert executors.LocalExecutor(1).threads == 2
    assert executors.LocalExecutor(2).threads == 1
    assert executors.LocalExecutor(3).threads == 1  # never below one thread
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        executors.LocalExecutor(2, threads=1)
    with pytest.warns(UserWarning, match=r"workers=2 x threads=2 exceeds the 2 CPU cores"):
        executors.LocalExecutor(2, threads=2)


def test_two_grids_in_one_results_folder_both_stay_in_the_aggregate_table(data_dir, tmp_path):
    """tables/aggregate.md used to hold only the grid that finished last. Each grid keeps its
    own block of rows, so runs of different settings (here: epochs) never pool."""
    from ageest.pipeline.aggregate import write_aggregate

    def run_and_tabulate(grid):  # what `ageest run` does after a grid
        write_aggregate(res, grids.run_grid(grid)["run_dir"])

    res = tmp_path / "res"
    run_and_tabulate(_grid(data_dir, res, losses=["amr"]))
    run_and_tabulate(_grid(data_dir, res, losses=["ce"], epochs=2))
    table = pd.read_csv(res / "tables" / "aggregate.csv")
    assert table["grid"].nunique() == 2
    assert set(table["loss"]) == {"amr", "ce"}
    assert "2 grid(s)" in (res / "tables" / "aggregate.md").read_text().splitlines()[0]
    # the same grid again replaces its own block, it does not add one
    run_and_tabulate(_grid(data_dir, res, losses=["amr"]))
    assert pd.read_csv(res / "tables" / "aggregate.csv")["grid"].nunique() == 2


def test_the_grids_of_a_notebook_run_in_one_executor_and_are_checked_once(data_dir, tmp_path,
                                                                          monkeypatch):
    """Notebook 02's grids used to start one pool of worker processes each (every worker
    importing torch again) and normalise each grid three times; now each value is checked once
    (check_grid) and every grid's unfinished runs go to one executor."""
    from collections import Counter

    from ageest.analysis import training_grids

    checked: Counter = Counter()
    real_check = grids.check_value

    def counting_check(setting, value, *args):
        checked[setting.name] += 1
        return real_check(setting, value, *args)

    class Recording(Executor):
        calls: list[list[str]] = []

        def run(self, tasks, fn, *, on_event=None):
            self.calls.append([t["run_dir"] for t in tasks])
            return [execute_run(t) for t in tasks]

    monkeypatch.setattr(grids, "check_value", counting_check)
    monkeypatch.setattr(grids, "make_executor", lambda g: Recording())
    two = {"clean": _grid(data_dir, tmp_path, losses=["ce"]),
           "other": _grid(data_dir, tmp_path, losses=["amr"], seeds=[1])}
    summary = training_grids.run_grids(two, tmp_path)
    assert len(Recording.calls) == 1 and len(Recording.calls[0]) == 2  # one executor, both
    assert summary["grid"].tolist() == ["clean", "other"]
    assert (summary["status"] == "done").all()
    assert checked["epochs"] == 2 and checked["losses"] == 2  # once per grid
    # a second call: both finished, nothing goes to an executor
    assert (training_grids.run_grids(two, tmp_path)["status"] == "skipped").all()
    assert len(Recording.calls) == 1


def test_run_grid_takes_keyword_settings_without_a_grid(tmp_path):
    """run_grid(epochs=0) with no grid dict: the value is checked (the relayout's first version
    of run_grid spread a None grid and raised TypeError instead)."""
    with pytest.raises(ValueError, match="epochs"):
        grids.run_grid(results_dir=tmp_path, epochs=0)
