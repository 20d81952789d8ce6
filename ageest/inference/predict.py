"""A finished run on new photos: ``ageest predict`` and :func:`predict` for notebooks.

:func:`load_run` rebuilds a run's network from its folder: the architecture, image size,
transforms and normalisation from its ``params.yaml`` (:class:`~ageest.engine.train.TrainConfig`), the
weights from ``checkpoints/best.pt`` (or ``last.pt``) loaded with ``weights_only=True``. A folder
that is not a finished run, a checkpoint that is a git-lfs pointer, truncated, or of another
architecture, and parameters written by an ageest version that no longer loads them are each a
:class:`RunError` naming the file and the fix.

:func:`predict` decodes each image exactly as the run's evaluation did (the same uint8 cache
geometry and evaluation transform, :func:`ageest.data.cache_spec` with ``train=False``), so on the
run's own test images it reproduces the expected ages in its ``predictions.parquet``. Per image it
reports the expected age (the paper's prediction), its rounding, the argmax age and its
probability, and how many of the most probable ages hold half the mass (a spread measure).
``detect_faces=True`` crops the largest face first (:mod:`ageest.inference.face_crop`, OpenCV's bundled Haar
cascade, extra ``faces``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ageest.errors import UserError

#: file endings taken from a folder (a file named explicitly is checked whatever its ending)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class RunError(UserError):
    """A run folder or checkpoint that cannot be used for prediction (the message says why)."""


@dataclass
class LoadedRun:
    """A run's network in eval mode and what decides its input."""

    run_dir: Path
    model: Any  # torch.nn.Module
    config: Any  # ageest.engine.train.TrainConfig
    params: dict[str, Any]
    start_age: int
    end_age: int
    checkpoint: Path
    device: str

    @property
    def ages(self) -> np.ndarray:
        return np.arange(self.start_age, self.end_age + 1)


def _read_params(run_dir: Path) -> dict[str, Any]:
    from ageest.engine import store

    if not run_dir.is_dir():
        raise RunError(f"--run {run_dir}: no such folder; pass a run folder "
                       "(results/<profile>/runs/<run>/fold-<id>)")
    if not (run_dir / store.PARAMS).is_file():
        raise RunError(f"--run {run_dir}: not a run folder (no {store.PARAMS}); pass "
                       "results/<profile>/runs/<run>/fold-<id>")
    if not store.is_finished(run_dir):
        raise RunError(f"--run {run_dir}: the run did not finish (no {store.METRICS}); finish "
                       "it with `ageest run` (it resumes) before predicting with it")
    return store.read_params(run_dir)


def _config(params: dict[str, Any], run_dir: Path):
    import dataclasses

    from ageest import __version__
    from ageest.engine.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig.from_dict({k: v for k, v in params.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise RunError(f"{run_dir / 'params.yaml'}: written by ageest "
                       f"{params.get('ageest_version', '?')}, does not load in {__version__} "
                       f"({exc}); predict with that version, or retrain the run") from None


def check_device(device: str) -> None:
    """A :class:`RunError` for a CUDA device this machine does not have (rather than the
    confusing failure of loading weights onto it)."""
    import torch

    kind = torch.device(device).type if device else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device}: CUDA is not available on this machine (torch "
                       f"{torch.__version__}); use --device cpu")
    if kind == "cuda" and torch.device(device).index is not None \
            and torch.device(device).index >= torch.cuda.device_count():
        raise RunError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                       "device(s); use cuda:0 .. or cpu")


def read_checkpoint(path: Path, device: str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents (``weights_only=True``), or a :class:`RunError` for a git-lfs
    pointer (the weights were never fetched), an empty or truncated file, or not a checkpoint."""
    from ageest.engine.train import CheckpointError, load_checkpoint

    if not path.is_file():
        raise RunError(f"{path}: no such checkpoint; the run keeps only what its "
                       "keep_checkpoints allowed (best by default; 'none' keeps none)")
    try:
        state = load_checkpoint(path, device, fix="copy the run's checkpoint again")
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"{path}: not an ageest checkpoint (no 'model' weights)")
    return state


def load_run(run_dir: str | os.PathLike, *, checkpoint: str = "best",
             device: str = "cpu") -> LoadedRun:
    """A finished run's network in eval mode (see the module docstring)."""
    from ageest.engine import store
    from ageest.engine.models import get_model
    from ageest.engine.train import CheckpointMismatchError, check_run_id

    if checkpoint not in ("best", "last"):
        raise RunError(f"--checkpoint {checkpoint!r}: expected best or last")
    check_device(device)
    run_dir = Path(run_dir)
    params = _read_params(run_dir)
    config = _config(params, run_dir)
    start, end = int(params["start_age"]), int(params["end_age"])
    path = run_dir / store.CHECKPOINTS / f"{checkpoint}.pt"
    state = read_checkpoint(path, device)
    try:
        check_run_id(path, state, params.get("params_hash"))
    except CheckpointMismatchError as exc:
        raise RunError(str(exc)) from None
    if state.get("run_id") is None:
        warnings.warn(f"{path}: the checkpoint carries no run identity (ageest writes the run's "
                      "params_hash into every checkpoint), so it cannot be checked against "
                      f"{run_dir / store.PARAMS}; use it only if you know it belongs to this run",
                      stacklevel=2)
    model = get_model(config.model, end - start + 1, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RunError(f"{path}: its weights do not fit a {config.model} with {end - start + 1} "
                       f"age classes ({str(exc).splitlines()[0][:200]}); the checkpoint comes "
                       "from another run or an incompatible ageest version") from None
    import torch

    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    model = model.to(device, dtype).eval()
    return LoadedRun(run_dir, model, config, params, start, end, path, device)


def preprocessing(run: LoadedRun) -> dict[str, Any]:
    """What the network expects as input (also written beside an ONNX export)."""
    from ageest.data.dataset import IMAGENET_MEAN, IMAGENET_STD, cache_spec
    from ageest.engine.models import weights_record

    cfg = run.config
    side, fit = cache_spec(cfg.transforms, size=cfg.image_size, train=False)
    return {
        "input": "float32 (N, 3, H, W), RGB, values in [0, 1] before normalisation",
        "input_size": int(cfg.image_size),
        "decode": f"the whole image resized to {side} x {side} ({fit}), bilinear, no crop",
        "transforms": cfg.transforms,
        "normalize": bool(cfg.normalize),
        "mean": list(IMAGENET_MEAN) if cfg.normalize else None,
        "std": list(IMAGENET_STD) if cfg.normalize else None,
        # a backbone that normalises its inputs itself (inside the network and its export)
        "model_normalization": weights_record(cfg.model, False).get("input_normalization"),
        # test-time flip averaging: the run's predictions average the image and its mirror
        # image; the exported network sees one image, so a caller averages the two itself
        "tta_flip": bool(cfg.tta_flip),
        "ages": [run.start_age, run.end_age],
        "outputs": {"probs": "(N, C) softmax over the ages", "expected_age": "(N,) sum_j a_j p_j"},
    }


def image_paths(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (a folder: its image files, recursively, sorted); a
    missing path or an empty folder is an error naming it."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return out


def _check_images(paths: list[Path]) -> None:
    from ageest.data.integrity import check_image_file

    for path in paths:
        problem = check_image_file(path, "decode")
        if problem is not None:
            raise ValueError(f"{path}: {problem}; pass image files (JPEG, PNG ...)")


def distribution_summary(probs: np.ndarray, ages: np.ndarray) -> pd.DataFrame:
    """Per row of ``probs`` (N, C): ``expected_age``, ``rounded_age``, ``argmax_age``,
    ``argmax_prob`` and ``half_mass_classes`` (the fewest most-probable ages holding half the
    mass).

    >>> distribution_summary(np.array([[0.1, 0.6, 0.3]]), np.array([20, 21, 22]))
       expected_age  rounded_age  argmax_age  argmax_prob  half_mass_classes
    0          21.2           21          21          0.6                  1
    """
    from ageest import metrics

    probs = np.asarray(probs, dtype=np.float64)
    start = int(ages[0])
    top = np.argmax(probs, axis=1)
    cum = np.cumsum(np.sort(probs, axis=1)[:, ::-1], axis=1)  # (N, C)
    return pd.DataFrame({
        "expected_age": metrics.predict_age(probs, "expectation", start_age=start),
        # the official readout: numpy's half-to-even rounding of the expectation
        "rounded_age": metrics.predict_age(probs, "rounded", start_age=start).astype(np.int64),
        "argmax_age": metrics.predict_age(probs, "argmax", start_age=start).astype(np.int64),
        "argmax_prob": probs[np.arange(len(probs)), top],
        "half_mass_classes": (cum < 0.5 - 1e-12).sum(axis=1) + 1,
    })


def predict(inputs: list[str | os.PathLike], run_dir: str | os.PathLike | None = None, *,
            run: LoadedRun | None = None, checkpoint: str = "best", device: str = "cpu",
            detect_faces: bool = False, batch_size: int = 64) -> pd.DataFrame:
    """Predict the age of every image in ``inputs`` (files or folders) with a finished run.

    Returns one row per image: ``path``, ``face`` (what was fed to the network: ``whole image``,
    ``detected face``, or why no crop was made), the columns of :func:`distribution_summary`,
    and ``probs`` ((C,) arrays).
    """
    run = run or load_run(run_dir, checkpoint=checkpoint, device=device)
    paths = image_paths(list(inputs))
    _check_images(paths)
    with tempfile.TemporaryDirectory(prefix="ageest-faces-") as tmp:
        fed, face = list(paths), ["whole image"] * len(paths)
        if detect_faces:
            from ageest.inference.face_crop import crop_faces

            fed, face = crop_faces(paths, Path(tmp))
        probs = _probs(run, fed, batch_size)
    out = pd.DataFrame({"path": [str(p) for p in paths], "face": face})
    out = pd.concat([out, distribution_summary(probs, run.ages)], axis=1)
    out["probs"] = list(probs.astype(np.float32))
    return out


def evaluation_dataset(run: LoadedRun, paths: list[str] | list[Path]):
    """An :class:`~ageest.data.AgeDataset` of ``paths`` decoded and transformed exactly as the
    run's evaluation passes were (uint8 cache geometry and evaluation transform)."""
    from ageest.data import AgeDataset, build_transforms, cache_spec

    cfg = run.config
    side, fit = cache_spec(cfg.transforms, size=cfg.image_size, train=False)
    tf = build_transforms(cfg.transforms, train=False, size=cfg.image_size,
                          normalize=cfg.normalize)
    table = pd.DataFrame({"path": [str(p) for p in paths], "age": run.start_age})
    return AgeDataset(table, start_age=run.start_age, transform=tf, size=side, fit=fit)


def _probs(run: LoadedRun, paths: list[Path], batch_size: int) -> np.ndarray:
    """Softmax over the ages of each image, decoded and transformed as the run's evaluation."""
    import torch
    from torch.utils.data import DataLoader

    from ageest.engine.train import eval_amp, predict_probs

    cfg = run.config
    ds = evaluation_dataset(run, paths)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    probs, index = predict_probs(run.model, DataLoader(ds, batch_size=batch_size), run.device,
                                 amp=eval_amp(cfg.amp, run.device), channels_last=cfg.channels_last, dtype=dtype,
                                 flip=cfg.tta_flip)
    return probs[np.argsort(index)]


def plot_predictions(table: pd.DataFrame, run: LoadedRun, folder: str | os.PathLike) -> list[Path]:
    """One figure per image under ``folder``: the image beside its age distribution."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ageest.pipeline.artefacts import save_figure
    from ageest.plots import prediction_figure

    written = []
    for i, row in enumerate(table.itertuples()):
        with Image.open(row.path) as im:
            image = np.asarray(im.convert("RGB"))
        fig = prediction_figure(image, np.asarray(row.probs), run.ages, title=(
            f"{Path(row.path).name}: {row.expected_age:.1f} y ({row.face})"))
        stem = f"{i:04d}-{Path(row.path).stem}"
        written.append(save_figure(fig, None, "prediction", folder=folder, stem=stem)["png"])
        plt.close(fig)
    return written
