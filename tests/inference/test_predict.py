"""`ageest predict` and `ageest export` on a tiny finished run: the same expected ages as the run's
own predictions.parquet, files and folders, faces, plots, ONNX parity, and a clear error for each
kind of bad input (not a run, an unfinished run, not an image, a git-lfs pointer, a truncated or
foreign checkpoint, parameters this version cannot load)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ageest.cli import main as cli_main
from ageest.data.synthetic import write_fgnet_like
from ageest.engine import grids, store
from ageest.inference.predict import RunError, load_run, predict

pytestmark = pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    data = write_fgnet_like(root / "fg", seed=0, size=32, n_subjects=12, n_images=120)
    grid = {"dataset": "fgnet", "data_dir": str(data), "protocol": "group-kfold", "n_folds": 3,
            "folds": [0], "losses": ["amr"], "epochs": 2, "batch_size": 16, "image_size": 32,
            "results_dir": str(root / "res"), "quiet": True, "threads": 1}
    summary = grids.run_grid(grid)
    assert (summary["status"] == "done").all()
    return Path(summary["run_dir"].iloc[0])


def _test_paths(run_dir: Path) -> pd.DataFrame:
    """The run's stored predictions with the image path of each."""
    from ageest.engine.run import load_data

    params = store.read_params(run_dir)
    df, _ = load_data(params)
    pred = store.load_predictions(run_dir)
    paths = dict(zip(df["image_id"].astype(str), df["path"].astype(str), strict=True))
    return pred.assign(path=pred["image_id"].astype(str).map(paths))


def test_predict_reproduces_the_runs_test_predictions(run_dir):
    stored = _test_paths(run_dir)
    table = predict(stored["path"].tolist(), run_dir)
    merged = stored.merge(table, on="path", suffixes=("_run", "_predict"))
    assert len(merged) == len(stored) > 10
    diff = np.abs(merged["expected_age_run"] - merged["expected_age_predict"]).max()
    assert diff < 1e-4, diff
    assert (merged["face"] == "whole image").all()
    probs = np.stack(table["probs"].to_list())
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (table["rounded_age"] == np.round(table["expected_age"])).all()
    assert ((table["half_mass_classes"] >= 1) & (table["half_mass_classes"] <= probs.shape[1])).all()


def test_cli_on_a_folder_writes_csv_and_plots(run_dir, tmp_path):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for path in _test_paths(run_dir)["path"].tolist()[:3]:
        shutil.copy(path, folder / Path(path).name)
    (folder / "notes.txt").write_text("not an image, not picked from a folder")
    out = tmp_path / "pred.csv"
    code = cli_main(["predict", str(tmp_path / "photos"), "--run", str(run_dir), "--out",
                     str(out), "--plot", str(tmp_path / "plots")])
    assert code == 0
    table = pd.read_csv(out)
    assert len(table) == 3 and {"expected_age", "rounded_age", "argmax_age", "argmax_prob",
                                "half_mass_classes", "face"} <= set(table.columns)
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 3 and all(p.stat().st_size > 1000 for p in pngs)


def test_detect_faces_crops_the_largest_face_or_says_why_not(run_dir, tmp_path, monkeypatch):
    from ageest.inference import face_crop

    path = _test_paths(run_dir)["path"].iloc[0]
    whole = predict([path], run_dir)
    # OpenCV's cascade finds no face in a synthetic cartoon face: the whole image, said so
    found = predict([path], run_dir, detect_faces=True)
    assert found["face"].iloc[0] in ("no face found: whole image", "detected face")
    # a face box: the crop (not the whole image) is what the network sees
    monkeypatch.setattr(face_crop, "largest_face", lambda image, detector=None: (4, 4, 16, 16))
    cropped = predict([path], run_dir, detect_faces=True)
    assert cropped["face"].iloc[0] == "detected face"
    assert cropped["expected_age"].iloc[0] != pytest.approx(whole["expected_age"].iloc[0],
                                                             abs=1e-9)
    # without OpenCV: the whole image, and the output says why
    monkeypatch.setattr(face_crop, "_cascade", lambda: None)
    with pytest.warns(UserWarning, match="OpenCV is not installed"):
        missing = predict([path], run_dir, detect_faces=True)
    assert missing["face"].iloc[0].startswith("whole image: OpenCV is not installed")
    assert missing["expected_age"].iloc[0] == pytest.approx(whole["expected_age"].iloc[0])


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_bad_runs_and_checkpoints_are_clear_errors(run_dir, tmp_path, capsys):
    with pytest.raises(RunError, match="no such folder"):
        load_run(tmp_path / "nope")
    with pytest.raises(RunError, match="not a run folder"):
        load_run(tmp_path)
    copy = _copy_run(run_dir, tmp_path)
    ckpt = copy / store.CHECKPOINTS / "best.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    with pytest.raises(RunError, match="git-lfs pointer.*git lfs pull"):
        load_run(copy)
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(RunError, match="truncated or not a torch checkpoint"):
        load_run(copy)
    with pytest.raises(RunError, match="no such checkpoint"):
        load_run(copy, checkpoint="last")  # kept only with keep_checkpoints all
    ckpt.write_bytes(good)
    params = yaml.safe_load((copy / store.PARAMS).read_text())
    (copy / store.PARAMS).write_text(yaml.safe_dump({**params, "end_age": 80}))
    with pytest.raises(RunError, match="do not fit a small_cnn with 81 age classes"):
        load_run(copy)
    (copy / store.PARAMS).write_text(yaml.safe_dump({**params, "optimizer": "lamb",
                                                     "ageest_version": "0.0.1"}))
    with pytest.raises(RunError, match="written by ageest 0.0.1, does not load"):
        load_run(copy)
    (copy / store.PARAMS).write_text(yaml.safe_dump(params))
    (copy / store.METRICS).unlink()
    with pytest.raises(RunError, match="did not finish"):
        load_run(copy)
    # the command line: one line naming the file, exit status 2
    not_image = tmp_path / "photo.jpg"
    not_image.write_text("hello")
    assert cli_main(["predict", str(not_image), "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ageest predict: error: ") and str(not_image) in err
    assert len(err.strip().splitlines()) == 1


def test_onnx_export_matches_pytorch_on_the_test_images(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    assert cli_main(["export", "--run", str(run_dir), "--onnx", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime against PyTorch on" in out
    info = yaml.safe_load(path.with_suffix(".json").read_text())  # JSON is YAML
    parity = info["parity"]
    assert parity["n_images"] == len(store.load_predictions(run_dir))
    assert parity["max_abs_diff_expected_age"] < 1e-3
    pre = info["preprocessing"]
    assert pre["input_size"] == 32 and pre["normalize"] is False and pre["ages"] == [0, 69]
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, age = session.run(None, {"image": np.zeros((3, 3, 32, 32), dtype=np.float32)})
    assert probs.shape == (3, 70) and age.shape == (3,)  # any batch size


def test_export_without_the_onnx_extra_says_how_to_install(run_dir, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    from ageest.inference.export import export_onnx

    with pytest.raises(RunError, match=r"pip install 'ageest\[onnx\]'"):
        export_onnx(run_dir, tmp_path / "m.onnx")


class _RunsCode:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_code_is_refused_by_predict_and_by_resume(run_dir, tmp_path):
    """Nothing runs; the file is named; torch's advice to retry with weights_only=False (which
    would run the code) is passed on nowhere, neither to the message nor to error.txt."""
    import torch

    from ageest.engine.run import execute_run

    marker = tmp_path / "code-ran"
    copy = _copy_run(run_dir, tmp_path)
    ckpt = copy / store.CHECKPOINTS / "best.pt"
    torch.save({"model": _RunsCode(marker)}, ckpt)
    with pytest.raises(RunError) as err:
        load_run(copy)
    assert str(ckpt) in str(err.value) and "not a checkpoint this kit wrote" in str(err.value)
    assert "weights_only" not in str(err.value)
    # the same file as last.pt of an unfinished run: the resume refuses it the same way
    params = yaml.safe_load((copy / store.PARAMS).read_text())
    (copy / store.METRICS).unlink()
    last = copy / store.CHECKPOINTS / "last.pt"
    torch.save({"model": _RunsCode(marker)}, last)
    result = execute_run({"run_dir": str(copy), "params": params})
    assert result["status"] == "failed"
    text = (copy / "error.txt").read_text() + str(result.get("error"))
    assert str(last) in text and "not a checkpoint this kit wrote" in text
    assert "weights_only=False" not in text and "weights_only = False" not in text
    assert not marker.exists()


def test_a_checkpoint_without_a_run_identity_is_loaded_with_a_warning(run_dir, tmp_path):
    import torch

    copy = _copy_run(run_dir, tmp_path)
    ckpt = copy / store.CHECKPOINTS / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    state.pop("run_id")
    torch.save(state, ckpt)
    with pytest.warns(UserWarning, match=r"best.pt: the checkpoint carries no run identity"):
        load_run(copy)
