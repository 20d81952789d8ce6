"""User mistakes met as a new user would meet them: one line (exit 2) naming the path or the
setting and the fix, never a traceback; Ctrl-C is one line and exit 130; checkpoints know their
run; settings are checked before any data loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ageest.cli import main as cli_main
from ageest.data.synthetic import write_fgnet_like
from ageest.engine import grids, store

pytestmark = [pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two finished tiny runs (seeds 0 and 1) of one grid."""
    root = tmp_path_factory.mktemp("trust")
    data = write_fgnet_like(root / "fg", seed=0, size=32, n_subjects=12, n_images=96)
    grid = {"dataset": "fgnet", "data_dir": str(data), "protocol": "group-kfold", "n_folds": 3,
            "folds": [0], "losses": ["ce"], "seeds": [0, 1], "epochs": 1, "batch_size": 16,
            "image_size": 32, "results_dir": str(root / "res"), "quiet": True, "threads": 1}
    summary = grids.run_grid(grid)
    assert (summary["status"] == "done").all()
    return [Path(d) for d in summary["run_dir"]]


def _one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_paths_the_user_gave_are_one_line_errors(runs, tmp_path, capsys):
    run = runs[0]
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 90, 80)).save(photo)
    existing_dir = tmp_path / "a_folder"
    existing_dir.mkdir()
    _one_line_error(capsys, cli_main(["predict", str(photo), "--run", str(run), "--out",
                                      str(existing_dir)]), str(existing_dir), "folder")
    existing_file = tmp_path / "plots_here"
    existing_file.write_text("a file")
    _one_line_error(capsys, cli_main(["predict", str(photo), "--run", str(run), "--out",
                                      str(tmp_path / "p.csv"), "--plot", str(existing_file)]),
                    str(existing_file), "give a folder")
    assert not (tmp_path / "p.csv").exists()  # refused before any work
    _one_line_error(capsys, cli_main(["data", "--dataset", "synthetic-fgnet", "--size", "32",
                                      "--manifest", str(existing_dir)]), str(existing_dir))
    pytest.importorskip("onnxruntime")
    _one_line_error(capsys, cli_main(["export", "--run", str(run), "--onnx",
                                      str(existing_dir)]), str(existing_dir), "is a folder")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": 3}))
    _one_line_error(capsys, cli_main(["data", "--dataset", "synthetic-fgnet", "--size", "32",
                                      "--manifest", str(manifest)]), "not a dataset manifest")


def test_ageest_data_pointing_at_a_file(tmp_path):
    target = tmp_path / "not_a_folder"
    target.write_text("x")
    done = subprocess.run([sys.executable, "-m", "ageest", "data", "--dataset",
                           "synthetic-fgnet"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AGEEST_DATA": str(target)})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert str(target) in done.stderr


def test_checkpoint_of_another_run_is_refused(runs, tmp_path, capsys):
    seed0, seed1 = runs
    copy = tmp_path / "seed0"
    shutil.copytree(seed0, copy)
    shutil.copy(seed1 / store.CHECKPOINTS / "best.pt", copy / store.CHECKPOINTS / "best.pt")
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (32, 32)).save(photo)
    _one_line_error(capsys, cli_main(["predict", str(photo), "--run", str(copy)]),
                    "written by run", "not by this run")
    assert torch.load(seed0 / store.CHECKPOINTS / "best.pt", weights_only=True)["run_id"] == \
        store.read_params(seed0)["params_hash"]


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    from ageest.data import get_dataset, make_folds
    from ageest.engine.train import CheckpointMismatchError, TrainConfig, train

    data = write_fgnet_like(tmp_path / "fg", seed=0, size=32, n_subjects=8, n_images=48)
    df, info = get_dataset("fgnet", data_dir=data, hash_cache=tmp_path / "c.json")
    fold = make_folds(df, "group-kfold", n_folds=2, val_fraction=0.2, seed=0)[0]
    cfg = TrainConfig(loss="ce", epochs=2, batch_size=16, image_size=32, quiet=True, threads=1)
    kw = {"start_age": info.start_age, "end_age": info.end_age, "ckpt_dir": tmp_path / "ck"}
    first = train(cfg, df, fold, run_id="aaaa", **kw)
    with pytest.raises(CheckpointMismatchError, match="written by run aaaa"):
        train(cfg, df, fold, run_id="bbbb", **kw)
    again = train(cfg, df, fold, run_id="aaaa", **kw)  # its own: resumes after the last epoch
    assert again.resumed_from_epoch == 3
    assert again.history["epoch"].tolist() == [1, 2]  # integers, not 1.0, 2.0
    assert again.history["epoch"].dtype.kind == "i" and first.history["epoch"].dtype.kind == "i"


def test_predict_names_missing_cuda_and_code_in_a_pickle(runs, tmp_path, capsys):
    run = runs[0]
    if not torch.cuda.is_available():
        _one_line_error(capsys, cli_main(["predict", str(run), "--run", str(run), "--device",
                                          "cuda"]), "CUDA is not available")
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)

    class Payload:  # any object whose loading would run code
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"model": Payload()}, bad / store.CHECKPOINTS / "best.pt")
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (32, 32)).save(photo)
    err = _one_line_error(capsys, cli_main(["predict", str(photo), "--run", str(bad)]),
                          "not a checkpoint this kit wrote", "does not execute it")
    assert "weights_only=False" not in err


def test_settings_are_checked_before_the_data_loads(tmp_path, capsys):
    results = tmp_path / "res"
    base = ["run", "--dataset", "csv", "--csv", str(tmp_path / "absent.csv"), "--results-dir",
            str(results)]
    # each setting is wrong; the CSV does not even exist: the setting is named first
    for extra, needle in ((["--model", "bogus"], "unknown model 'bogus'"),
                          (["--losses", "amr,bogus"], "unknown loss 'bogus'"),
                          (["--loss-kwargs", '{"amr": {"lambda_bogus": 1}}'],
                           "amr takes no ['lambda_bogus']")):
        _one_line_error(capsys, cli_main(base + extra), needle)
    if not torch.cuda.is_available():
        _one_line_error(capsys, cli_main(base + ["--device", "cuda"]), "CUDA is not available")
    assert not (results / "runs").exists()  # no run folder, no error.txt


def test_age_range_is_bounded(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["data", "--dataset", "csv", "--csv", str(tmp_path / "x.csv"), "--age-range",
                  "0,2000000000"])
    assert exc.value.code == 2
    assert "2000000001 age classes; at most 1000" in capsys.readouterr().err


def test_reproduce_checks_values_before_the_first_notebook(tmp_path, capsys):
    for name, value, needle in (("epochs", "-1", "below the minimum 1"),
                                ("losses", "amr,bogus", "unknown loss 'bogus'"),
                                ("on_bad", "bogus", "not one of ['raise', 'skip']")):
        t0 = time.perf_counter()
        code = cli_main(["reproduce", "--profile", "smoke", "--results-dir", str(tmp_path),
                         "-p", name, value])
        _one_line_error(capsys, code, f"parameter '{name}' in the command line", needle)
        assert time.perf_counter() - t0 < 30  # before any notebook (each takes >= 6 s)
    assert not (tmp_path / "executed").exists()


def test_config_unknown_key_lists_yaml_keys(tmp_path, capsys):
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"bogus_key": 1}))
    err = _one_line_error(capsys, cli_main(["run", "--config", str(config)]), "bogus_key")
    assert "'age_range'" in err and "'--age-range'" not in err


def test_csv_missing_age_says_fill_or_drop(tmp_path):
    from PIL import Image

    from ageest.data import DataError, load_csv

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png"], "age": [None]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError, match="age is missing -> fill in the age, or delete the row"):
        load_csv(tmp_path / "l.csv")


def test_lfs_pointer_in_a_dataset_folder_is_named(tmp_path):
    from ageest.data import DataError, load_utkface
    from tests.helpers import write_utkface_fixture

    root = write_utkface_fixture(tmp_path / "UTKFace", n_images=12)
    (root / "30_0_0_20990101000000000.jpg.chip.jpg").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(DataError, match="a git-lfs pointer, not the image .*git lfs pull"):
        load_utkface(root)


def test_warnings_print_one_line_without_source(tmp_path):
    from tests.helpers import write_utkface_fixture

    root = write_utkface_fixture(tmp_path / "UTKFace", n_images=12)  # one three-field name
    done = subprocess.run([sys.executable, "-m", "ageest", "data", "--dataset", "utkface",
                           "--data-dir", str(root)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AGEEST_DATA": str(tmp_path / "d")})
    assert done.returncode == 0, done.stderr
    assert "ageest data: warning: UTKFace" in done.stderr
    assert "UserWarning" not in done.stderr and "loaders.load_utkface(" not in done.stderr


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    env = {**os.environ, "AGEEST_DATA": str(tmp_path / "d"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ageest", "run", "--dataset", "synthetic-fgnet", "--losses", "ce",
         "--folds", "0", "--epochs", "50", "--results-dir", str(tmp_path / "res"), "--workers",
         "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # as from a terminal: a shell's background job (`make test &`) starts with SIGINT
        # ignored, the command inherits that, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait on an event: the grid line is printed once the runs are about to start
    line = ""
    deadline = time.monotonic() + 300
    while "runs in the grid" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()
    # then on the first finished epoch: the interrupt lands inside training
    seen: list[str] = []
    while not (seen and "epoch 1/50:" in seen[-1]) and time.monotonic() < deadline:
        seen.append(proc.stderr.readline())
        assert seen[-1] or proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "resume" in err
    assert not list((tmp_path / "res").rglob("run.lock"))  # the lock is released
