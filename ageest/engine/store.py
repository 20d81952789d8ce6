"""The prediction store: the files of one run directory, and reading a whole grid back.

A run directory (``<results>/runs/<dataset>-<protocol>-<loss>-k<k|adaptive>-seed<seed>/fold-<id>/``)
holds

==================== ==========================================================================
``params.yaml``      every parameter of the run (flat) and ``params_hash``; written first
``checkpoints/``     ``best.pt`` (selected weights) and, while training, ``last.pt``
``history.csv``      one row per epoch: lr, every loss component, mean adaptive K, train/val MAE,
                     epoch time, images/s, ``selected``
``predictions.parquet`` one row per test image: ``image_id``, ``subject``, ``fold``, ``seed``,
                     ``age``, ``age_mean``, ``std``, ``expected_age``, ``test_selected`` and
                     ``probs`` (the full distribution, fixed-size list of float16)
``manifest.json``    versions, git commit, device, parameters, seed, wall time
``metrics.json``     the run's test metrics and status; written **last**: it marks the run done
``error.txt``        traceback of a failed attempt (removed when the run is retried)
==================== ==========================================================================

Every file is written atomically (temporary name, then rename), so a run killed at any point never
leaves a file that looks complete, and a run without ``metrics.json`` is unfinished.

:func:`load_predictions` gathers every finished run under a folder into one DataFrame with the
columns :mod:`ageest.analysis.comparisons` expects;
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ageest.files import atomic_write_bytes, atomic_write_text, plain, read_json, write_json
from ageest.metrics import epsilon_per_image

PARAMS = "params.yaml"
HISTORY = "history.csv"
PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
ERROR = "error.txt"
CHECKPOINTS = "checkpoints"

#: run parameters copied onto every row by :func:`load_predictions`
RUN_COLUMNS = ("dataset", "protocol", "loss", "k", "selection", "start_age", "end_age", "model")
#: run parameters added to the predictions frame too: what a table states when it sets a row
#: beside a published number (``None`` in runs that predate a setting)
SETUP_COLUMNS = ("image_size", "epochs", "n_folds", "face_crop", "init_from", "tta_flip")


# ---------------------------------------------------------------------------------------------
# params.yaml


def write_params(run_dir: str | os.PathLike, params: dict[str, Any]) -> Path:
    """Write ``params.yaml`` (atomically, keys in the given order)."""
    import yaml

    text = yaml.safe_dump(plain(params), sort_keys=False, default_flow_style=None)
    return atomic_write_text(Path(run_dir) / PARAMS, text)


def read_params(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``params.yaml`` of a run directory, naming the file when it is missing or broken."""
    import yaml

    path = Path(run_dir) / PARAMS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a run directory")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc}); delete the run folder to redo it") \
            from exc
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(params).__name__}")
    return params


# ---------------------------------------------------------------------------------------------
# predictions.parquet


def write_predictions(run_dir: str | os.PathLike, predictions: pd.DataFrame, *, fold: str,
                      seed: int, test_selected: bool) -> Path:
    """Write ``predictions.parquet``: the trainer's predictions plus ``fold``, ``seed`` and
    ``test_selected``, with ``probs`` as a fixed-size list of float16 (C values per row).

    float16 keeps about 3 significant digits (relative error < 5e-4), plenty for MAE, CS and
    calibration; readers renormalise rows (see :func:`read_predictions`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    probs = np.stack([np.asarray(p, dtype=np.float32) for p in predictions["probs"]]) \
        if len(predictions) else np.zeros((0, 1), dtype=np.float32)  # (N, C)
    n, c = probs.shape
    cols: dict[str, Any] = {
        "image_id": pa.array(predictions["image_id"].astype(str).tolist(), type=pa.string()),
        "subject": pa.array(predictions["subject"].astype("string")
                            .to_numpy(dtype=object, na_value=None), type=pa.string()),
        "fold": pa.array([str(fold)] * n, type=pa.string()),
        "seed": pa.array([int(seed)] * n, type=pa.int64()),
        "age": pa.array(predictions["age"].to_numpy(dtype=np.int64)),
        "age_mean": pa.array(predictions["age_mean"].to_numpy(dtype=np.float64)),
        "std": pa.array(predictions["std"].to_numpy(dtype=np.float64), from_pandas=True),
        "expected_age": pa.array(predictions["expected_age"].to_numpy(dtype=np.float64)),
        # per-image ε-error of the expected age (σ = 0 at its limit; NaN without a σ)
        "epsilon": pa.array(epsilon_per_image(
            predictions["expected_age"].to_numpy(dtype=np.float64),
            predictions["age_mean"].to_numpy(dtype=np.float64),
            predictions["std"].to_numpy(dtype=np.float64)) if n else np.zeros(0),
            from_pandas=True),
        "test_selected": pa.array([bool(test_selected)] * n, type=pa.bool_()),
        "probs": pa.FixedSizeListArray.from_arrays(
            pa.array(probs.astype(np.float16).ravel(), type=pa.float16()), c),
    }
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return atomic_write_bytes(Path(run_dir) / PREDICTIONS, buf.getvalue())


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read one ``predictions.parquet`` (or the run directory holding it).

    ``probs`` comes back as one float32 numpy vector per row, renormalised to sum to 1.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run is incomplete; run its grid again "
                                "(ageest run / reproduce redo incomplete runs)")
    table = pq.read_table(path)
    df = table.drop(["probs"]).to_pandas()
    df["probs"] = list(_arrow_probs(table))
    return df


def _arrow_probs(table) -> np.ndarray:
    """(N, C) float32 probabilities from a predictions arrow table (rows renormalised)."""
    col = table.column("probs").combine_chunks()
    c = col.type.list_size
    p = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, c)
    s = p.sum(axis=1, keepdims=True)
    return p / np.where(s > 0, s, 1.0)


# ---------------------------------------------------------------------------------------------
# metrics.json, status


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json``; call it last, it marks the run finished."""
    return write_json(Path(run_dir) / METRICS, metrics)


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(run_dir) / METRICS)


#: the files a finished run holds (checkpoints aside: ``keep_checkpoints`` decides those)
RESULT_FILES = (PARAMS, HISTORY, PREDICTIONS, "manifest.json", METRICS)


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when every one of :data:`RESULT_FILES` is there (``metrics.json`` is written last,
    atomically; a run missing any other file, deleted or lost in a copy, is incomplete and is
    redone by the next grid rather than skipped)."""
    run_dir = Path(run_dir)
    return all((run_dir / name).is_file() for name in RESULT_FILES)


def missing_files(run_dir: str | os.PathLike) -> list[str]:
    """Which of :data:`RESULT_FILES` a run folder lacks."""
    return [name for name in RESULT_FILES if not (Path(run_dir) / name).is_file()]


def run_status(run_dir: str | os.PathLike) -> str:
    """``"done"`` (metrics.json), ``"failed"`` (error.txt), ``"partial"`` (started, e.g. killed)
    or ``"pending"`` (nothing written)."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return "done"
    if (run_dir / ERROR).is_file():
        return "failed"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "partial"
    return "pending"


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Every run directory (a folder with ``params.yaml``) under ``root``: a results folder, its
    ``runs/`` folder, one run group, or a single run directory. Sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder (expected a results or runs folder)")
    if (root / PARAMS).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(PARAMS) if CHECKPOINTS not in p.parts)


def _with_run_columns(df: pd.DataFrame, run_dir: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """``df`` with ``run`` and the run's parameters ``columns`` inserted in front (``k`` as text:
    ``"adaptive"`` when the run has none)."""
    params = read_params(run_dir)
    df.insert(0, "run", str(run_dir))
    for i, col in enumerate(columns, start=1):
        value = params.get(col)
        if col == "k":
            value = "adaptive" if value is None else str(value)
        df.insert(i, col, value)
    return df


def load_predictions(root: str | os.PathLike, *, finished_only: bool = True) -> pd.DataFrame:
    """All test predictions of the finished runs under ``root`` in one DataFrame.

    Columns: ``run`` (the run directory), ``dataset``, ``protocol``, ``loss``, ``k`` (text:
    ``"adaptive"`` for the adaptive loss and for losses without K, else the integer), ``seed``,
    ``fold``, ``selection``, ``start_age``, ``end_age``, ``model``, ``image_size``, ``epochs``,
    ``n_folds``, ``face_crop``, ``init_from``, ``tta_flip`` (``None`` where a run predates it),
    ``image_id``,
    ``subject``,
    ``age``, ``age_mean``, ``std``, ``expected_age``, ``test_selected`` and ``probs`` (one float32
    vector per row) — the predictions frame of :mod:`ageest.analysis.comparisons`.

    Parameters
    ----------
    root : path-like
        A results folder, its ``runs/`` folder, or one run directory.
    finished_only : bool
        Skip unfinished runs (default). ``False`` raises on the first unfinished run instead.
    """
    frames = []
    for run_dir in find_run_dirs(root):
        if not is_finished(run_dir):
            if finished_only:
                continue
            raise FileNotFoundError(f"{run_dir} has no {METRICS}: the run did not finish")
        frames.append(_with_run_columns(read_predictions(run_dir), run_dir,
                                        RUN_COLUMNS + SETUP_COLUMNS))
    if not frames:
        raise ValueError(f"no finished runs under {root} (no run folder with {METRICS}); "
                         "train them first with `ageest run`")
    out = pd.concat(frames, ignore_index=True)
    out["seed"] = out["seed"].astype(np.int64)
    return out


def load_histories(root: str | os.PathLike) -> pd.DataFrame:
    """Every finished run's ``history.csv`` under ``root``, with ``run`` and the run columns."""
    frames = []
    for run_dir in find_run_dirs(root):
        if not is_finished(run_dir):
            continue
        frames.append(_with_run_columns(pd.read_csv(run_dir / HISTORY), run_dir,
                                        RUN_COLUMNS + ("seed", "fold")))
    if not frames:
        raise ValueError(f"no finished runs under {root}")
    return pd.concat(frames, ignore_index=True)
