"""The training grids of the pipeline's notebooks, built from their flat parameters and run
through :func:`ageest.runner.run_grid` (the same grids ``ageest run`` takes).

- notebook 02: the FG-NET-format comparison (every loss, clean protocol), the CLAP2016-format
  comparison, and for each the official-protocol runs (:mod:`ageest.official`: the official
  training set, data filters and test-selected epoch, for the dual-protocol tables);
- notebook 04: the fixed-K ablation (``mean_residue`` with K in a list) plus the adaptive AMR on
  the same folds and seeds (reused from notebook 02 when the settings match: the runner skips
  finished runs with the same parameter hash).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ageest.dataprep import dataset_choice

#: losses whose second term is weighted by λ2, and the name of that weight
SECOND_TERM = {"amr": "lambda_residue", "mean_residue": "lambda_residue",
               "mean_variance": "lambda_variance"}


class RunsFailed(RuntimeError):
    """Some runs of a grid failed; the message lists them with the last line of each error."""


def loss_kwargs(lambda_mean: float, lambda_second: float) -> dict[str, dict[str, float]]:
    """Per-loss keyword arguments for the paper's weights: λ1 on the mean term of AMR,
    mean-residue and mean-variance, λ2 on their residue / variance term.

    >>> loss_kwargs(0.2, 0.05)["mean_variance"]
    {'lambda_mean': 0.2, 'lambda_variance': 0.05}
    """
    return {loss: {"lambda_mean": float(lambda_mean), second: float(lambda_second)}
            for loss, second in SECOND_TERM.items()}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def training_settings(*, model: str, pretrained: bool, optimizer: str, lr: float,
                      milestones: str, epochs: int, batch_size: int, image_size: int,
                      transforms: str, normalize: bool, grad_clip: float, lambda_mean: float,
                      lambda_second: float, seeds: str, device: str, workers: int,
                      executor: str, synthetic_size: int, val_fraction: float,
                      split_seed: int, address: str = "", lr_schedule: str = "multistep"
                      ) -> dict[str, Any]:
    """Runner grid keys shared by every grid of a notebook (``grad_clip`` 0 = none)."""
    return {
        "model": model, "pretrained": bool(pretrained), "optimizer": optimizer,
        "lr": float(lr), "milestones": [int(m) for m in _csv(milestones)],
        "lr_schedule": lr_schedule,
        "epochs": int(epochs), "batch_size": int(batch_size), "image_size": int(image_size),
        "transforms": transforms, "normalize": bool(normalize),
        "grad_clip": float(grad_clip) if grad_clip else None,
        "loss_kwargs": loss_kwargs(lambda_mean, lambda_second),
        "seeds": [int(s) for s in _csv(seeds)], "device": device, "workers": int(workers),
        "executor": executor, "address": address or None,
        "synthetic_size": int(synthetic_size),
        "val_fraction": float(val_fraction), "split_seed": int(split_seed),
        # several workers: one line per finished run (the runner silences their epoch bars);
        # one worker would print a progress bar per epoch into the executed notebook
        "quiet": None if int(workers) > 1 else True,
    }


def comparison_grids(settings: Mapping[str, Any], *, fgnet_dir: str, clap_dir: str,
                     protocol: str, n_folds: int, folds: str, losses: str, official: bool,
                     clap_losses: str, clap_settings: Mapping[str, Any] | None = None,
                     official_losses: str = "amr") -> dict[str, dict[str, Any]]:
    """Notebook 02's grids, by name: ``fgnet`` (every loss, validation-selected), ``clap`` (the
    CLAP2016-format losses on its official split; none when ``clap_losses`` is empty) and, when
    ``official``, their official-protocol twins ``fgnet_official`` and ``clap_official``
    (``official_losses`` with the official code's training set, data filters and test-selected
    epoch on its own metric: :func:`ageest.official.official_grid`). ``folds`` is a comma list
    of fold positions ("" = all). ``clap_settings`` overrides runner keys for the CLAP grids
    only (the official CLAP2016 script uses SGD, gradient clipping and its own augmentation,
    see :func:`clap_overrides`)."""
    from ageest.official import official_grid

    fgnet_name, fgnet_path = dataset_choice("fgnet", fgnet_dir)
    fgnet = {**settings, "dataset": [fgnet_name], "data_dir": fgnet_path,
             "protocol": [protocol], "n_folds": int(n_folds),
             "folds": [int(f) for f in _csv(folds)] or None, "selection": ["val_best"]}
    grids = {"fgnet": {**fgnet, "losses": _csv(losses)}}
    if not grids["fgnet"]["losses"]:
        raise ValueError("losses is empty: name at least one loss, e.g. 'amr,mean_variance,ce'")
    if official and not _csv(official_losses):
        raise ValueError("official_losses is empty: name the losses of the official-protocol "
                         "runs, e.g. 'amr'")
    if official:
        grids["fgnet_official"] = official_grid(fgnet, "fgnet", _csv(official_losses))
    if _csv(clap_losses):
        clap_name, clap_path = dataset_choice("clap", clap_dir)
        grids["clap"] = {**settings, "dataset": [clap_name], "data_dir": clap_path,
                         "protocol": ["official"], "losses": _csv(clap_losses),
                         "selection": ["val_best"], **(clap_settings or {})}
        if official:
            grids["clap_official"] = official_grid(grids["clap"], "clap",
                                                   _csv(official_losses))
    return grids


def clap_overrides(*, optimizer: str, epochs: int, grad_clip: float, transforms: str,
                   normalize: bool, seeds: str = "", label_rounding: str = "half_up"
                   ) -> dict[str, Any]:
    """Runner keys in which the CLAP2016-format runs differ from the FG-NET-format ones
    (``grad_clip`` 0 = none; ``seeds`` "" = the FG-NET-format seeds)."""
    out = {"optimizer": optimizer, "epochs": int(epochs),
           "grad_clip": float(grad_clip) if grad_clip else None, "transforms": transforms,
           "normalize": bool(normalize), "label_rounding": label_rounding}
    if _csv(seeds):
        out["seeds"] = [int(x) for x in _csv(seeds)]
    return out


def k_ablation_grid(settings: Mapping[str, Any], *, fgnet_dir: str, protocol: str,
                    n_folds: int, folds: str, ks: str) -> dict[str, dict[str, Any]]:
    """Notebook 04's grid: ``mean_residue`` for every fixed K in ``ks`` plus the adaptive AMR
    (``k: adaptive``), on the same folds and seeds."""
    fgnet_name, fgnet_path = dataset_choice("fgnet", fgnet_dir)
    k_values = [int(k) for k in _csv(ks)]
    if not k_values:
        raise ValueError("ks is empty: give fixed K values, e.g. '1,2,3,4,5,6,8,10'")
    return {"k_ablation": {**settings, "dataset": [fgnet_name], "data_dir": fgnet_path,
                           "protocol": [protocol], "n_folds": int(n_folds),
                           "folds": [int(f) for f in _csv(folds)] or None,
                           "selection": ["val_best"], "losses": ["mean_residue"],
                           "k": [*k_values, "adaptive"]}}


def run_grids(grids: Mapping[str, Mapping[str, Any]], results_dir: str | os.PathLike
              ) -> pd.DataFrame:
    """Run every grid (finished runs are skipped) and return one summary row per run with a
    ``grid`` column. Raises :class:`RunsFailed` listing the failed runs and their errors (each
    run's full traceback is in its ``error.txt``); the other runs are finished first."""
    from ageest.runner import run_grid

    frames = []
    for name, grid in grids.items():
        summary = run_grid(dict(grid), results_dir=results_dir, aggregate_results=False)
        frames.append(summary.assign(grid=name))
    summary = pd.concat(frames, ignore_index=True)
    failed = summary[summary["status"] == "failed"]
    if len(failed):
        lines = [f"  {r.run_dir}: {r.error}" for r in failed.itertuples()]
        raise RunsFailed(f"{len(failed)} of {len(summary)} runs failed (see error.txt in each "
                         "run folder; rerun to retry only those):\n" + "\n".join(lines))
    return summary


def runs_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``summary``: what it trained, its status this time (done or skipped:
    already finished), its selected epoch, test MAE and wall time, from the run folders."""
    from ageest import store

    rows = []
    for item in summary.itertuples():
        params = store.read_params(item.run_dir)
        metrics = store.read_metrics(item.run_dir) if store.is_finished(item.run_dir) else {}
        rows.append({
            "grid": item.grid, "dataset": params["dataset"], "protocol": params["protocol"],
            "loss": params["loss"], "k": "adaptive" if params.get("k") is None else params["k"],
            "seed": params["seed"], "fold": params["fold"], "selection": params["selection"],
            "model": params["model"], "epochs": params["epochs"], "status": item.status,
            "best_epoch": metrics.get("best_epoch"), "test_mae": metrics.get("mae"),
            "wall_time_s": metrics.get("wall_time_s"), "run": Path(item.run_dir).parent.name,
        })
    return pd.DataFrame(rows)


def predictions(summary: pd.DataFrame) -> pd.DataFrame:
    """The stored test predictions of every run in ``summary`` (the predictions frame of
    :mod:`ageest.evaluation`)."""
    from ageest import store

    return pd.concat([store.load_predictions(d) for d in summary["run_dir"]], ignore_index=True)


def histories(summary: pd.DataFrame) -> pd.DataFrame:
    """``history.csv`` of every run in ``summary`` (one row per run and epoch), with the run's
    parameters as columns (see :func:`ageest.store.load_histories`)."""
    from ageest import store

    return pd.concat([store.load_histories(d) for d in summary["run_dir"]], ignore_index=True)
