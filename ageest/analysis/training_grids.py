"""The training grids of the pipeline's notebooks, built from their flat parameters and run
through :func:`ageest.engine.grids.run_grid` (the same grids ``ageest run`` takes).

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

from ageest.analysis.data_summary import dataset_choice
from ageest.parameters import as_list, int_list


class RunsFailed(RuntimeError):
    """Some runs of a grid failed; the message lists them with the last line of each error."""


#: grid keys whose values notebooks 02/04 set from parameters of their own meaning (a notebook's
#: `losses`, `k` ...), so `train_options` may not set them
NOTEBOOK_AXES = ("dataset", "protocol", "losses", "k", "folds")
#: grid keys the notebooks' grid builders set themselves (the data, the split, the selection,
#: the CLAP2016 loader's rules, where the runs go): never forwarded from a notebook variable
GRID_BUILT = (*NOTEBOOK_AXES, "selection", "n_folds", "data_dir", "csv", "json", "image_root",
              "split_csv", "results_dir", "ignore_list", "ignore_splits", "min_pixels",
              "label_rounding", "age_range", "allow_outside_root")


def training_keys() -> tuple[str, ...]:
    """The grid settings a notebook forwards to its runs when it declares a parameter of that
    name: every grid key (:data:`ageest.engine.grids.SCHEMA`, whose training keys are
    :class:`~ageest.engine.train.TrainConfig`'s fields) but those the grid builders set
    (:data:`GRID_BUILT`). Derived, never listed: a new ``TrainConfig`` field is forwarded as
    soon as a notebook declares it, and reaches the runs through ``train_options`` (from a
    profile or ``-p``) when none does."""
    from ageest.engine.grids import SCHEMA

    return tuple(name for name in SCHEMA if name not in GRID_BUILT)


def training_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Runner grid keys shared by every grid of a notebook, from its parameters (a notebook
    passes ``globals()``): every :func:`training_keys` name it holds (an undeclared one keeps
    the grid's default); ``train_options`` (a dict) adds any other grid setting by its name
    (``{weight_decay: 0.05}``); the loss weights
    (``lambda_mean`` ...) are passed when the notebook declares them (each loss's runs take the
    ones it uses; an undeclared one keeps its one default). Values are not converted here: the
    grid schema checks each one (:func:`ageest.engine.grids.normalize_grid`)."""
    from ageest.losses import WEIGHT_SETTINGS

    p = {name: params[name] for name in training_keys() if name in params}
    p.update({w: params[w] for w in WEIGHT_SETTINGS if w in params})
    # train_options: any other grid setting by its name, so a new TrainConfig field is set from a
    # profile without a notebook parameter of its own (the grid schema checks the names)
    options = dict(params.get("train_options") or {})
    both = sorted(set(options) & (set(p) | set(NOTEBOOK_AXES)))
    if both:
        raise ValueError(f"train_options: {both[0]} is a notebook parameter of its own; set "
                         f"{both[0]} instead")
    p.update(options)
    # several workers: one line per finished run (the runner silences their epoch bars);
    # one worker would print a progress bar per epoch into the executed notebook
    p["quiet"] = None if int(p.get("workers", 1)) > 1 else True
    return p


def comparison_grids(settings: Mapping[str, Any], *, fgnet_dir: str, clap_dir: str,
                     protocol: str, n_folds: int, folds: list[int] | str,
                     losses: list[str] | str, official: bool, clap_losses: list[str] | str,
                     clap_settings: Mapping[str, Any] | None = None,
                     official_losses: list[str] | str = ("amr",), utkface_dir: str = "",
                     utkface_split: str | os.PathLike | None = None
                     ) -> dict[str, dict[str, Any]]:
    """Notebook 02's grids, by name: ``fgnet`` (every loss, validation-selected), ``clap`` (the
    CLAP2016-format losses on its official split; none when ``clap_losses`` is empty) and, when
    ``official``, their official-protocol twins ``fgnet_official`` and ``clap_official``
    (``official_losses`` with the official code's training set, data filters and test-selected
    epoch on its own metric: :func:`ageest.official.official_grid`). ``folds`` are fold
    positions (empty = all); list arguments also take comma strings. ``clap_settings`` overrides runner keys for the CLAP grids
    only (the official CLAP2016 script uses SGD, gradient clipping and its own augmentation,
    see :func:`clap_overrides`). With ``utkface_dir``: one grid ``utkface`` instead, every loss on
    UTKFace's train/valid/test split (``utkface_split``, the CSV of
    :func:`ageest.analysis.data_summary.utkface_split_csv`; the official code has no UTKFace protocol, so no
    official twins and no CLAP2016 runs)."""
    from ageest.official import official_grid

    if utkface_dir:
        grid = _utkface_grid(settings, utkface_dir, utkface_split)
        if not as_list(losses):
            raise ValueError("losses is empty: name at least one loss, e.g. 'amr,ce'")
        return {"utkface": {**grid, "losses": as_list(losses)}}

    fgnet_name, fgnet_path = dataset_choice("fgnet", fgnet_dir)
    fgnet = {**settings, "dataset": [fgnet_name], "data_dir": fgnet_path,
             "protocol": [protocol], "n_folds": n_folds,
             "folds": as_list(folds) or None, "selection": ["val_best"]}
    grids = {"fgnet": {**fgnet, "losses": as_list(losses)}}
    if not grids["fgnet"]["losses"]:
        raise ValueError("losses is empty: name at least one loss, e.g. 'amr,mean_variance,ce'")
    if official and not as_list(official_losses):
        raise ValueError("official_losses is empty: name the losses of the official-protocol "
                         "runs, e.g. 'amr'")
    if official:
        grids["fgnet_official"] = official_grid(fgnet, "fgnet", as_list(official_losses))
    if as_list(clap_losses):
        clap_name, clap_path = dataset_choice("clap", clap_dir)
        grids["clap"] = {**settings, "dataset": [clap_name], "data_dir": clap_path,
                         "protocol": ["holdout"], "losses": as_list(clap_losses),
                         "selection": ["val_best"], **(clap_settings or {})}
        if official:
            grids["clap_official"] = official_grid(grids["clap"], "clap",
                                                   as_list(official_losses))
    return grids


def clap_overrides(*, optimizer: str, epochs: int, grad_clip: float | None, transforms: str,
                   normalize: bool, seeds: list[int] | str = (), label_rounding: str = "half_up"
                   ) -> dict[str, Any]:
    """Runner keys in which the CLAP2016-format runs differ from the FG-NET-format ones
    (``grad_clip`` None = none; ``seeds`` empty = the FG-NET-format seeds). Values pass as
    given: the grid schema checks each (:func:`ageest.engine.grids.normalize_grid`)."""
    out = {"optimizer": optimizer, "epochs": epochs, "grad_clip": grad_clip,
           "transforms": transforms, "normalize": normalize, "label_rounding": label_rounding}
    if as_list(seeds):
        out["seeds"] = seeds
    return out


def _utkface_grid(settings: Mapping[str, Any], utkface_dir: str,
                  utkface_split: str | os.PathLike | None) -> dict[str, Any]:
    name, path = dataset_choice("utkface", utkface_dir)
    if not utkface_split:
        raise ValueError("utkface_split is empty: the UTKFace runs need their split CSV "
                         "(ageest.analysis.data_summary.utkface_split_csv)")
    return {**settings, "dataset": [name], "data_dir": path, "split_csv": str(utkface_split),
            "protocol": ["holdout"], "selection": ["val_best"]}


def k_ablation_grid(settings: Mapping[str, Any], *, fgnet_dir: str, protocol: str,
                    n_folds: int, folds: list[int] | str, ks: list[int] | str,
                    utkface_dir: str = "", utkface_split: str | os.PathLike | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Notebook 04's grid: ``mean_residue`` for every fixed K in ``ks`` plus the adaptive AMR
    (``k: adaptive``), on the same folds and seeds (UTKFace: its split)."""
    k_values = int_list(ks, "ks")
    if not k_values:
        raise ValueError("ks is empty: give fixed K values, e.g. '1,2,3,4,5,6,8,10'")
    runs = {"losses": ["mean_residue"], "k": [*k_values, "adaptive"]}
    if utkface_dir:
        return {"k_ablation": {**_utkface_grid(settings, utkface_dir, utkface_split), **runs}}
    fgnet_name, fgnet_path = dataset_choice("fgnet", fgnet_dir)
    return {"k_ablation": {**settings, "dataset": [fgnet_name], "data_dir": fgnet_path,
                           "protocol": [protocol], "n_folds": n_folds,
                           "folds": as_list(folds) or None,
                           "selection": ["val_best"], **runs}}


#: where a results folder keeps its age-pretraining run (beside runs/, so the tables of
#: notebook 03, read from runs/, never mix the pretraining's UTKFace predictions in)
PRETRAINING = "pretraining"


def pretraining(settings: Mapping[str, Any], *, pretrain_dir: str, out: str | os.PathLike,
                loss: str = "ce", epochs: int, fractions: list[float] | str,
                split_seed: int = 0) -> dict[str, Any]:
    """The age-pretraining stage of the FG-NET-format runs (the fgnet profile with
    ``--pretrain DIR``): one run of ``loss`` on the UTKFace faces of ``pretrain_dir``
    (a seeded age-stratified split with ``fractions``: train, valid (selects its epoch),
    test (its UTKFace MAE)), with the notebook's training settings but whole faces (UTKFace's
    crops have no landmarks), the first seed, and its best checkpoint kept. Finished, it is
    skipped (notebooks 02 and 04 both call this). Returns ``settings`` with ``init_from``
    set to that run, and what the run did (folder, epoch, UTKFace MAE) for the notebook's
    metrics. Without ``pretrain_dir``: ``settings`` unchanged and ``{}``."""
    from ageest.analysis.data_summary import utkface_split_csv
    from ageest.engine import store

    if not pretrain_dir:
        return {"settings": dict(settings), "run": {}}
    where = Path(out) / PRETRAINING
    split = utkface_split_csv(pretrain_dir, where, seed=split_seed,
                              fractions=[float(f) for f in as_list(fractions)])
    grid = {**_utkface_grid(settings, pretrain_dir, split), "losses": [loss],
            "epochs": epochs, "seeds": as_list(settings["seeds"])[:1], "face_crop": "none",
            "init_from": "", "keep_checkpoints": "best"}
    summary = run_grids({"pretraining": grid}, where)
    run_dir = str(summary["run_dir"].iloc[0])
    metrics = store.read_metrics(run_dir)
    record = {"run_dir": run_dir, "loss": loss, "epochs": int(epochs),
              "best_epoch": metrics.get("best_epoch"), "utkface_test_mae": metrics.get("mae"),
              "n_train": metrics.get("n_train"), "n_val": metrics.get("n_val"),
              "n_test": metrics.get("n_test"), "wall_time_s": metrics.get("wall_time_s")}
    return {"settings": {**settings, "init_from": run_dir}, "run": record}


def run_grids(grids: Mapping[str, Mapping[str, Any]], results_dir: str | os.PathLike
              ) -> pd.DataFrame:
    """Run every grid (finished runs are skipped) and return one summary row per run with a
    ``grid`` column. Raises :class:`RunsFailed` listing the failed runs and their errors (each
    run's full traceback is in its ``error.txt``); the other runs are finished first."""
    from ageest.engine import grids as engine

    # every grid's own checks before the first run trains (an official CLAP2016 grid without
    # its ignore list, say); the grids then run as one (one pool of workers for all)
    checked = {name: engine.check_grid(grid) for name, grid in grids.items()}
    summary = engine.run_grids(checked, results_dir=results_dir)
    failed = summary[summary["status"] == "failed"]
    if len(failed):
        lines = [f"  {r.run_dir}: {r.error}" for r in failed.itertuples()]
        raise RunsFailed(f"{len(failed)} of {len(summary)} runs failed (see error.txt in each "
                         "run folder; rerun to retry only those):\n" + "\n".join(lines))
    return summary


def runs_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``summary``: what it trained, its status this time (done or skipped:
    already finished), its selected epoch, test MAE and wall time, from the run folders."""
    from ageest.engine import store

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
    :mod:`ageest.analysis.comparisons`)."""
    from ageest.engine import store

    return pd.concat([store.load_predictions(d) for d in summary["run_dir"]], ignore_index=True)


def histories(summary: pd.DataFrame) -> pd.DataFrame:
    """``history.csv`` of every run in ``summary`` (one row per run and epoch), with the run's
    parameters as columns (see :func:`ageest.engine.store.load_histories`)."""
    from ageest.engine import store

    return pd.concat([store.load_histories(d) for d in summary["run_dir"]], ignore_index=True)
