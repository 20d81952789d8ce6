"""Grids of training runs: expansion, run directories, resume, parallel execution, aggregation.

``ageest run`` (and :func:`run_grid` from notebooks) expands a grid

    dataset x protocol x loss x k x seed x fold

into run specifications, skips those already finished, runs the rest through an executor
(:mod:`ageest.executors`: ``local`` process pool or ``ray``), prints a summary of done / skipped /
failed / pending runs, and aggregates every finished fold into one table per
(dataset, protocol, loss, k, selection).

Run directories
---------------
``<results>/runs/<dataset>-<protocol>-<loss>-k<k|adaptive>-seed<seed>[-<selection>]/fold-<id>/``
(:mod:`ageest.store` lists the files). ``k`` is the fixed top-K of ``mean_residue``; the adaptive
loss ``amr`` and losses without a K are written ``kadaptive`` (and ``k: null`` in params.yaml).
The ``-<selection>`` suffix appears only for a selection other than the default ``val_best``
(e.g. ``-test_best_epoch_official``), so clean and official runs never share a folder.
Fold ids come from :func:`ageest.data.make_folds`: the subject under ``lopo``, ``0..n-1`` under
``group-kfold``, ``official`` for the official split. ``--folds 0,3`` selects folds by their
*position* in make_folds' order (for ``lopo``: the 1st and 4th subject in sorted order).

Parameters and resume
---------------------
Every run's parameters are written to ``params.yaml`` together with ``params_hash``, a short hash
of everything that changes its numbers (not: ``quiet``, ``threads``, ``keep_checkpoints``, and the
data *location* keys ``data_dir``/``csv``/``json``/``image_root``, so a moved dataset does not
invalidate finished work).

- A finished run (``metrics.json`` present) with the same hash is skipped.
- A finished run with a *different* hash is never reused and never overwritten: the grid stops
  before training anything with :class:`StaleRunError`, naming the folders; choose another
  ``--results-dir`` or delete them.
- An unfinished run (killed, even by SIGKILL, or failed) continues from its last completed epoch
  (``checkpoints/last.pt``, same hash) or starts from scratch (different hash: its partial files
  are deleted first). Every file is written atomically, and ``metrics.json`` last, so partial
  output never looks finished.
- A failed run writes ``error.txt`` (the traceback) and the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ageest import __version__, store
from ageest.data.dataset import TRANSFORMS
from ageest.data.integrity import ON_BAD_CHOICES
from ageest.data.loaders import LABEL_ROUNDINGS
from ageest.parameters import as_list
from ageest.run import (  # noqa: F401  (re-exported: a run's identity, used with grids)
    KEEP_CHECKPOINTS,
    UNHASHED,
    StaleRunError,
    build_folds,
    describe_change,
    execute_run,
    fold_digest,
    load_data,
    loader_keys,
    params_hash,
    run_dir_for,
    run_name,
    train_run,
)
from ageest.train import (
    DTYPES,
    LR_SCHEDULES,
    OFFICIAL_SELECTION,
    OPTIMIZERS,
    SELECT_METRICS,
    SELECTIONS,
    TrainConfig,
)

# ---------------------------------------------------------------------------------------------
# the grid: keys, defaults, validation

#: grid keys that are lists (axes of the grid)
AXES = ("dataset", "protocol", "losses", "k", "seeds", "selection")
#: every key a grid YAML may hold, with its default (CLI flags mirror them: ``n_folds`` ->
#: ``--n-folds``)
GRID_DEFAULTS: dict[str, Any] = {
    # axes
    "dataset": ["synthetic-fgnet"],
    "protocol": [],  # empty: each dataset's default protocol
    "losses": ["amr"],
    "k": [],  # fixed top-K values of mean_residue; "adaptive" adds the amr loss
    "seeds": [0],
    "selection": ["val_best"],
    # folds
    "folds": None,  # None: every fold; else positions in make_folds order
    "n_folds": 5,
    "val_fraction": 0.15,
    "split_seed": 0,
    # data
    "data_dir": None,
    "csv": None,
    "json": None,
    "image_root": None,
    "synthetic_size": 64,
    # CLAP2016-format loader filters (ignored for other datasets; see load_clap2016)
    "ignore_list": None,  # None: <data_dir>/ignore_list.txt when present
    "ignore_splits": ["train"],
    "min_pixels": None,
    "label_rounding": "half_up",
    # csv / benchmark-json loader options; bad files: raise, or skip and record them
    "age_range": None,  # [lo, hi]; None: the loader's default (csv: 0-100)
    "allow_outside_root": False,
    "on_bad": "raise",
    # training: every TrainConfig field but the per-run ones (one source of defaults)
    **{f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                else f.default) for f in dataclasses.fields(TrainConfig)
       if f.name not in ("loss", "seed", "selection", "threads", "quiet", "augment")},
    "keep_checkpoints": "best",
    # execution (not part of a run's parameters)
    "results_dir": None,
    "executor": "local",
    "workers": 1,
    "threads": None,
    "retries": None,  # None: the executor's default (local 0, ray 3: a lost node is common there)
    "address": None,
    "quiet": None,
}
def load_grid_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a grid YAML (keys of :data:`GRID_DEFAULTS`); an unknown key is an error naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of grid keys to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(GRID_DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(GRID_DEFAULTS)}")
    return values


#: grid keys with a numeric type and the smallest value each may take
INT_KEYS = {"n_folds": 2, "split_seed": 0, "synthetic_size": 8, "epochs": 1, "batch_size": 1,
            "image_size": 8, "num_workers": 0, "eval_batch_size": 1, "workers": 1, "threads": 1,
            "retries": 0, "min_pixels": 0}
FLOAT_KEYS = {"val_fraction": (0.0, 1.0), "lr": (0.0, None), "momentum": (0.0, 1.0),
              "weight_decay": (0.0, None), "gamma": (0.0, None), "grad_clip": (0.0, None)}
BOOL_KEYS = ("pretrained", "channels_last", "normalize", "quiet", "allow_outside_root")
CHOICE_KEYS = {"optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES,
               "select_metric": SELECT_METRICS, "dtype": DTYPES, "amp": ("bf16", "fp16"),
               "transforms": TRANSFORMS, "on_bad": ON_BAD_CHOICES,
               "label_rounding": LABEL_ROUNDINGS, "executor": ("local", "ray")}


def _integer(key: str, value: Any, minimum: int | None = None) -> int:
    """An integer grid value (``2``, ``"2"``), never a truncated float (``2.7``) or a bool."""
    ok = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit()) or (
        isinstance(value, float) and value.is_integer())
    if not ok:
        raise ValueError(f"grid key {key}: {value!r} is not an integer")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ValueError(f"grid key {key}: {out} is below the minimum {minimum}")
    return out


def _number(key: str, value: Any, bounds: tuple[float | None, float | None]) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"grid key {key}: {value!r} is not a number") from None
    lo, hi = bounds
    if not np.isfinite(out) or (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ValueError(f"grid key {key}: {value!r} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    return out


def _check_types(g: dict[str, Any]) -> None:
    """Validate every scalar grid key before any run starts, naming the key."""
    for key, minimum in INT_KEYS.items():
        if g.get(key) is not None:
            g[key] = _integer(key, g[key], minimum)
    for key, bounds in FLOAT_KEYS.items():
        if g.get(key) is not None:
            g[key] = _number(key, g[key], bounds)
    if g["lr"] <= 0:
        raise ValueError(f"grid key lr: {g['lr']!r} must be positive")
    for key in BOOL_KEYS:
        if g.get(key) is not None and not isinstance(g[key], bool):
            raise ValueError(f"grid key {key}: {g[key]!r} is not true or false")
    for key, choices in CHOICE_KEYS.items():
        if g.get(key) is not None and g[key] not in choices:
            raise ValueError(f"grid key {key}: {g[key]!r} is not one of {list(choices)}")
    if g.get("age_range") is not None:
        ar = as_list(g["age_range"])
        if len(ar) != 2:
            raise ValueError(f"grid key age_range: {g['age_range']!r} is not [lo, hi]")
        lo, hi = (_integer("age_range", v, 0) for v in ar)
        if lo >= hi:
            raise ValueError(f"grid key age_range: {lo} >= {hi}")
        g["age_range"] = [lo, hi]


def normalize_grid(grid: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults, turn comma strings into lists and check every value's type, range and
    choice (an error names the key); unknown keys are errors."""
    unknown = sorted(set(grid) - set(GRID_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown grid key(s) {unknown}; valid keys: {sorted(GRID_DEFAULTS)}")
    g = {**GRID_DEFAULTS, **{k: v for k, v in grid.items() if v is not None}}
    for axis in AXES:
        g[axis] = as_list(g[axis])
    g["seeds"] = [_integer("seeds", s) for s in g["seeds"]]
    _check_types(g)
    ks: list[int | str] = []
    for k in g["k"]:
        if str(k).lower() == "adaptive":
            ks.append("adaptive")
        else:
            try:
                ks.append(int(k))
            except ValueError as exc:
                raise ValueError(f"k={k!r}: expected an integer or 'adaptive'") from exc
    g["k"] = ks
    g["folds"] = None if g["folds"] in (None, "", []) else [
        _integer("folds", f, 0) for f in as_list(g["folds"])]
    g["milestones"] = [_integer("milestones", m, 0) for m in as_list(g["milestones"])]
    g["ignore_splits"] = [str(x) for x in as_list(g["ignore_splits"])]
    for sel in g["selection"]:
        if sel not in SELECTIONS:
            raise ValueError(f"selection={sel!r}: expected one of {SELECTIONS}")
    if g["keep_checkpoints"] not in KEEP_CHECKPOINTS:
        raise ValueError(f"keep_checkpoints={g['keep_checkpoints']!r}: expected one of "
                         f"{KEEP_CHECKPOINTS}")
    if not isinstance(g["loss_kwargs"], dict):
        raise ValueError("loss_kwargs must map a loss name to its arguments, e.g. "
                         "{amr: {lambda_mean: 0.2}}")
    return g


def _loss_runs(losses: Sequence[str], ks: Sequence[int | str]) -> list[tuple[str, int | None]]:
    """(loss, k) pairs: ``mean_residue`` once per integer K; ``amr`` and K-less losses with
    ``k=None``; ``"adaptive"`` in ``ks`` adds ``amr``."""
    from ageest.losses import list_losses

    int_ks = [k for k in ks if k != "adaptive"]
    names = list(dict.fromkeys(list(losses) + (["amr"] if "adaptive" in ks else [])))
    out: list[tuple[str, int | None]] = []
    for loss in names:
        if loss not in list_losses():
            raise ValueError(f"unknown loss {loss!r}; choose from {list_losses()}")
        if loss == "mean_residue":
            if not int_ks:
                raise ValueError("loss mean_residue (fixed top-K) needs integer K values: "
                                 "--k 1,2,4 (or use amr for the adaptive K)")
            out += [(loss, int(k)) for k in int_ks]
        else:
            out.append((loss, None))
    return out


def expand_grid(grid: dict[str, Any], results_dir: str | os.PathLike | None = None
                ) -> list[dict[str, Any]]:
    """Expand a grid into run tasks ``{"run_dir", "params", "device"}`` (JSON-able).

    Loads each dataset once (generating synthetic data on first use) to enumerate its folds.
    ``results_dir`` overrides ``grid["results_dir"]``. Order: dataset, protocol, loss/k, seed,
    selection, fold.
    """
    g = normalize_grid(grid)
    results_dir = Path(results_dir or g["results_dir"] or "results")
    # augment: a run's params.yaml may set it (python -m ageest.run); not a grid key, so the
    # parameter hashes of existing runs stay valid
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {
        "seed", "loss", "loss_kwargs", "selection", "threads", "quiet", "augment"}
    tasks: list[dict[str, Any]] = []
    for dataset in g["dataset"]:
        base = {"dataset": dataset, "on_bad": g["on_bad"],
                **{k: g[k] for k in ("data_dir", "csv", "json", "image_root", "synthetic_size")}}
        # only the dataset's own loader options change its data (and the run's identity)
        base.update({k: g[k] for k in loader_keys(dataset)})
        df, info = load_data(base)
        for record in df.attrs.get("skipped", []):  # --on-bad skip: never silent
            print(f"{dataset}: skipped {record['path']}: {record['reason']}", file=sys.stderr)
        data_digest = df.attrs.get("content_digest")
        protocols = g["protocol"] or [info.default_protocol]
        for protocol in protocols:
            has_split = info.has_official_split or (
                "split" in df.columns and bool(df["split"].notna().any()))  # e.g. csv's column
            if protocol == "official" and not has_split:
                raise ValueError(f"dataset {dataset!r} has no official split (no split column); "
                                 "use protocol lopo or group-kfold")
            split = {"protocol": protocol, "n_folds": int(g["n_folds"]),
                     "val_fraction": float(g["val_fraction"]), "split_seed": int(g["split_seed"])}
            folds = build_folds(df, split)
            chosen = range(len(folds)) if g["folds"] is None else g["folds"]
            for i in chosen:
                if not 0 <= i < len(folds):
                    raise ValueError(f"--folds {i}: {dataset}/{protocol} has {len(folds)} "
                                     f"folds (positions 0..{len(folds) - 1})")
            for loss, k in _loss_runs(g["losses"], g["k"]):
                loss_kwargs = dict(g["loss_kwargs"].get(loss, {}) or {})
                if k is not None:
                    loss_kwargs["k"] = k
                for seed in g["seeds"]:
                    for selection in g["selection"]:
                        for i in chosen:
                            params: dict[str, Any] = {
                                **base, **split, "loss": loss, "k": k, "seed": seed,
                                "selection": selection,
                                "test_selected": selection == OFFICIAL_SELECTION,
                                "fold": folds[i].fold_id, "fold_index": int(i),
                                "data_digest": data_digest,
                                "split_digest": fold_digest(df, folds[i]),
                                "start_age": int(info.start_age), "end_age": int(info.end_age),
                                **{f: g[f] for f in sorted(train_fields)},
                                "loss_kwargs": loss_kwargs,
                                "keep_checkpoints": g["keep_checkpoints"],
                                "quiet": bool(g["quiet"]) if g["quiet"] is not None
                                else int(g["workers"]) > 1,
                                "threads": g["threads"],
                                "ageest_version": __version__,
                            }
                            params = store._plain(params)
                            params["params_hash"] = params_hash(params)
                            tasks.append({"run_dir": str(run_dir_for(results_dir, params)),
                                          "params": params, "device": params["device"]})
    return tasks


def check_stale(tasks: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`StaleRunError` when a finished run folder holds other parameters."""
    stale = []
    for task in tasks:
        run_dir = Path(task["run_dir"])
        if store.is_finished(run_dir):
            old_params = store.read_params(run_dir)
            old = old_params.get("params_hash")
            if old != task["params"]["params_hash"]:
                stale.append(f"{run_dir}: {describe_change(old_params, task['params'])} "
                             f"(params_hash {old} -> {task['params']['params_hash']})")
    if stale:
        raise StaleRunError(
            "finished runs were trained with other parameters and are never overwritten:\n  "
            + "\n  ".join(stale[:20]) + ("\n  ..." if len(stale) > 20 else "")
            + "\nUse another --results-dir, or delete these folders to retrain them. "
            "Compare their params.yaml with the grid to see what changed."
        )


# ---------------------------------------------------------------------------------------------
# one run


# ---------------------------------------------------------------------------------------------
# a whole grid


def _progress_printer() -> Callable[[dict], None]:
    def on_event(ev: dict) -> None:
        last = ev.get("last")
        if last is None:  # one line per finished run, quiet or not (quiet: no progress bars)
            return
        name = os.sep.join(Path(last["run_dir"]).parts[-2:])
        err = ""
        if last.get("status") == "failed" and last.get("error"):
            err = ": " + last["error"].strip().splitlines()[-1][:200]
        mae = f" MAE {last['mae']:.3f}" if isinstance(last.get("mae"), (int, float)) else ""
        print(f"[{ev['done'] + ev['failed']}/{ev['total']}] {last['status']:7s} {name}{mae} "
              f"({last.get('wall_time_s', 0):.1f} s){err}", flush=True)

    return on_event


def preflight(g: dict[str, Any], results_dir: Path) -> None:
    """Checks made once, before any data is loaded or any run starts: the results folder can
    be written (a read-only path, ``/proc``, a full disk would otherwise fail every run
    separately), and pretrained weights are where ``--pretrained`` will look."""
    import errno
    import tempfile

    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        why = "no space left on device" if exc.errno == errno.ENOSPC else (
            exc.strerror or str(exc))
        raise PermissionError(f"--results-dir {results_dir}: cannot be written ({why}); "
                              "choose a writable folder") from None
    if g.get("pretrained"):
        from ageest.models import pretrained_path

        path = pretrained_path(g["model"])
        if not path.is_file():
            raise FileNotFoundError(
                f"--pretrained: {path} is missing; place torchvision's ImageNet weights for "
                f"{g['model']} there (nothing is downloaded), or use --no-pretrained")


def make_executor(g: dict[str, Any]):
    """The executor named by the grid's ``executor`` key, with its execution options."""
    from ageest.executors import get_executor

    retries = {} if g["retries"] is None else {"retries": int(g["retries"])}
    if g["executor"] == "local":
        return get_executor("local", workers=int(g["workers"]), threads=g["threads"], **retries)
    if g["executor"] == "ray":
        # --threads is each run's CPU share on the cluster (Ray schedules by it)
        cpus = {} if g["threads"] is None else {"num_cpus_per_task": float(g["threads"])}
        return get_executor("ray", address=g["address"], **retries, **cpus)
    return get_executor(g["executor"])


def run_grid(grid: dict[str, Any] | None = None, *, results_dir: str | os.PathLike | None = None,
             executor=None, on_event: Callable[[dict], None] | None = None,
             aggregate_results: bool = True, **overrides: Any) -> pd.DataFrame:
    """Expand ``grid`` (plus keyword ``overrides``), run what is not finished, return a summary.

    Parameters
    ----------
    grid : dict, optional
        Grid keys (see :data:`GRID_DEFAULTS`); ``overrides`` are merged on top.
    results_dir : path-like, optional
        Root of ``runs/`` (default: ``grid["results_dir"]``, else ``results``).
    executor : Executor, optional
        Default: built from the grid's ``executor``/``workers``/``threads``/``retries``.
    on_event : callable, optional
        Progress callback (default: one printed line per finished run unless ``quiet``).
    aggregate_results : bool
        Write ``tables/aggregate.*`` from all finished runs at the end.

    Returns
    -------
    pandas.DataFrame
        One row per run: ``run_dir``, ``status`` (done / skipped / failed / pending),
        ``wall_time_s``, ``mae``, ``error`` (last line of the traceback).
    """
    g = normalize_grid({**(grid or {}), **overrides})
    results_dir = Path(results_dir or g["results_dir"] or "results")
    preflight(g, results_dir)
    tasks = expand_grid(g, results_dir)
    check_stale(tasks)
    todo = [t for t in tasks if not store.is_finished(t["run_dir"])]
    quiet = bool(g["quiet"]) if g["quiet"] is not None else False
    if not quiet:
        print(f"{len(tasks)} runs in the grid, {len(tasks) - len(todo)} already finished, "
              f"{len(todo)} to run with executor {g['executor']!r} "
              f"(workers={g['workers']}) -> {results_dir / 'runs'}", flush=True)
    results: dict[str, dict] = {}
    if todo:
        ex = executor or make_executor(g)
        for r in ex.run(todo, execute_run, on_event=on_event or _progress_printer()):
            results[str(r["run_dir"])] = r
    rows = []
    for t in tasks:
        r = results.get(t["run_dir"])
        if r is None:
            status = "skipped" if store.is_finished(t["run_dir"]) else "pending"
            r = {"status": status, "wall_time_s": None, "error": None}
        mae = r.get("mae")
        if mae is None and store.is_finished(t["run_dir"]):
            mae = store.read_metrics(t["run_dir"]).get("mae")
        err = r.get("error")
        rows.append({"run_dir": t["run_dir"], "status": r["status"],
                     "wall_time_s": r.get("wall_time_s"), "mae": mae,
                     "error": err.strip().splitlines()[-1] if err else None})
    summary = pd.DataFrame(rows)
    if aggregate_results and (summary["status"].isin(["done", "skipped"])).any():
        table = aggregate(results_dir, runs=[r["run_dir"] for r in rows
                                             if r["status"] in ("done", "skipped")])
        from ageest.artifacts import save_table

        save_table(table, results_dir, "aggregate",
                   "Test metrics aggregated over folds (runs written by ageest run). "
                           "Rows with test_selected=True chose their epoch on the test set "
                           "(official protocol) and are optimistic.")
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """A table of run groups (rows) by status (done / skipped / failed / pending counts), the
    totals line, then each failed run with the last line of its error.

    >>> s = pd.DataFrame({"run_dir": ["r/runs/a/fold-0", "r/runs/a/fold-1"],
    ...                   "status": ["done", "failed"], "error": [None, "ValueError: bad"]})
    >>> print(format_summary(s).splitlines()[-2])
    runs: done 1, skipped 0, failed 1, pending 0 (total 2)
    """
    statuses = ["done", "skipped", "failed", "pending"]
    group = summary["run_dir"].map(lambda d: Path(d).parent.name)
    table = (pd.crosstab(group.rename("run"), summary["status"])
             .reindex(columns=statuses, fill_value=0))
    counts = summary["status"].value_counts()
    lines = [table.to_markdown(), "",
             "runs: " + ", ".join(f"{s} {int(counts.get(s, 0))}" for s in statuses)
             + f" (total {len(summary)})"]
    for _, row in summary[summary["status"] == "failed"].iterrows():
        lines.append(f"  FAILED {row['run_dir']}: {row['error']} (see error.txt)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# aggregation


AGGREGATE_KEYS = ("dataset", "protocol", "loss", "k", "selection")


def aggregate(results_dir: str | os.PathLike, *, runs: Sequence[str | os.PathLike] | None = None,
              n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
              thetas: Sequence[int] = (1, 3, 5, 10)) -> pd.DataFrame:
    """One row per (dataset, protocol, loss, k, selection) over all finished folds and seeds.

    Columns: the keys, ``test_selected``, ``seeds``, ``n_runs``, ``n_folds``, ``n_images``,
    ``n_subjects``; ``mae_pooled`` (over images) and ``mae_subject_mean`` (mean of per-subject
    MAEs) each with a subject-level bootstrap CI (``_low``/``_high``; images without a subject
    are their own cluster); ``mae_seed_sd`` (sd of per-seed pooled MAE, NaN for one seed);
    ``cs<θ>`` (cumulative score, fraction); ``epsilon`` with a subject-level bootstrap CI when
    every image has an apparent-age std (NaN otherwise). Predictions use the expected age.

    Parameters
    ----------
    results_dir : path-like
        A results folder (or its ``runs/``).
    runs : sequence of path-like, optional
        Restrict to these run directories.
    n_boot, ci, seed : bootstrap replicates, coverage and seed (:func:`ageest.metrics.bootstrap_mae_ci`).
    thetas : sequence of int
        CS(θ) columns.
    """
    from ageest import metrics as M

    if runs is not None:
        frames = [store.load_predictions(r) for r in runs]
        preds = pd.concat(frames, ignore_index=True)
    else:
        preds = store.load_predictions(results_dir)
    rows = []
    for key, grp in preds.groupby(list(AGGREGATE_KEYS), sort=True, dropna=False):
        pred = grp["expected_age"].to_numpy(dtype=np.float64)
        true = grp["age_mean"].to_numpy(dtype=np.float64)
        subject = grp["subject"].astype("string").fillna("image:" + grp["image_id"].astype(str))
        lopo = M.aggregate_lopo(pred=pred, true=true, subject=subject.to_numpy(dtype=object))
        row: dict[str, Any] = dict(zip(AGGREGATE_KEYS, key, strict=True))
        row["test_selected"] = bool(grp["test_selected"].any())
        row["seeds"] = ",".join(str(s) for s in sorted(grp["seed"].unique()))
        row["n_runs"] = int(grp["run"].nunique())
        row["n_folds"] = int(grp["fold"].nunique())
        row["n_images"] = lopo["n_images"]
        row["n_subjects"] = lopo["n_subjects"]
        subj = subject.to_numpy(dtype=object)
        for stat, name in (("pooled", "mae_pooled"), ("subject_mean", "mae_subject_mean")):
            b = M.bootstrap_mae_ci(pred, true, subj, n_boot=n_boot, ci=ci, statistic=stat,
                                   seed=seed)
            row[name], row[f"{name}_low"], row[f"{name}_high"] = (
                lopo[name], b["low"], b["high"])
        per_seed = grp.assign(err=np.abs(pred - true)).groupby("seed")["err"].mean()
        row["mae_seed_sd"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
        cs = M.cumulative_score(pred, true, thetas=thetas)
        for t, v in cs.items():
            row[f"cs{int(t)}"] = float(v)
        std = pd.to_numeric(grp["std"], errors="coerce").to_numpy(dtype=np.float64)
        row["epsilon"] = row["epsilon_low"] = row["epsilon_high"] = float("nan")
        row["n_sigma_zero"] = row["n_sigma_missing"] = 0
        if np.isfinite(std).any():
            # ε = mean_i e_i (σ = 0 at its limit); the subject bootstrap of mean |e_i - 0| is its
            # CI; images without a σ are left out and counted
            e = M.epsilon_per_image(pred, true, std)
            known = np.isfinite(e)
            b = M.bootstrap_mae_ci(e[known], np.zeros(int(known.sum())), subj[known],
                                   n_boot=n_boot, ci=ci, seed=seed)
            summary = M.epsilon_summary(pred, true, std)
            row["epsilon"], row["epsilon_low"], row["epsilon_high"] = (
                summary["epsilon"], b["low"], b["high"])
            row["n_sigma_zero"] = summary["n_sigma_zero"]
            row["n_sigma_missing"] = summary["n_sigma_missing"]
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# CLI: ageest run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ageest run``; every grid key (:data:`GRID_DEFAULTS`) has one."""
    a = parser.add_argument
    a("--config", help="grid YAML (keys as these flags with underscores); flags override it")
    a("--dataset", help="dataset name(s), comma-separated (default synthetic-fgnet)")
    a("--protocol", help="lopo, group-kfold, official (comma list; default: the dataset's)")
    a("--losses", help="loss names, comma-separated (default amr)")
    a("--k", help="fixed top-K values for mean_residue, comma-separated; 'adaptive' adds amr")
    a("--seeds", help="training seeds, comma-separated (default 0)")
    a("--selection", help="val_best, last, test_best_epoch_official (comma list)")
    a("--folds", help="fold positions in make_folds order, e.g. 0,3 (default: all)")
    a("--n-folds", type=int, help="folds of group-kfold (default 5)")
    a("--val-fraction", type=float, help="share of training subjects held out for validation")
    a("--split-seed", type=int, help="seed of the validation carve (default 0)")
    a("--data-dir", help="dataset folder (fgnet, clap2016, utkface)")
    a("--csv", help="label CSV (dataset csv)")
    a("--json", help="database JSON (dataset benchmark-json)")
    a("--image-root", help="image folder (csv, benchmark-json)")
    a("--synthetic-size", type=int, help="image side of generated synthetic data (default 64)")
    a("--on-bad", choices=list(ON_BAD_CHOICES),
      help="bad image files: stop naming them (default), or skip them and record the list "
           "(printed, and skipped.json in each run folder)")
    a("--age-range", help="csv/benchmark-json: declared label range LO,HI (csv default 0,100)")
    a("--allow-outside-root", action=argparse.BooleanOptionalAction, default=None,
      help="csv/benchmark-json: accept image paths that resolve outside --image-root")
    a("--ignore-list", help="CLAP2016: file of names to drop (default: DATA_DIR/ignore_list.txt "
      "when present)")
    a("--ignore-splits", help="CLAP2016: splits the ignore list filters (default train; the "
      "official code: train,valid,test)")
    a("--min-pixels", type=int, help="CLAP2016: drop images with fewer pixels (official: 1024)")
    a("--label-rounding", choices=list(LABEL_ROUNDINGS),
      help="CLAP2016: apparent mean -> label (official: half_even, np.around)")
    a("--model", help="backbone (small_cnn, resnet18, resnet50, vgg16)")
    a("--pretrained", action=argparse.BooleanOptionalAction, default=None,
      help="ImageNet weights from the local torch hub cache")
    a("--loss-kwargs", help='JSON: {"loss": {"argument": value}}, e.g. {"amr": {"eps": 0}}')
    a("--optimizer", choices=["adamw", "sgd"])
    a("--lr", type=float)
    a("--momentum", type=float)
    a("--weight-decay", type=float)
    a("--milestones", help="MultiStepLR epochs, comma-separated")
    a("--gamma", type=float)
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--grad-clip", type=float)
    a("--device", help="cpu, cuda, cuda:1")
    a("--amp", choices=["bf16", "fp16"])
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    a("--num-workers", type=int, help="DataLoader workers per run")
    a("--transforms", choices=list(TRANSFORMS))
    a("--image-size", type=int)
    a("--normalize", action=argparse.BooleanOptionalAction, default=None)
    a("--eval-batch-size", type=int)
    a("--select-metric", choices=list(SELECT_METRICS),
      help="score that picks the epoch (default auto: epsilon with raters' std, else mae; "
           "official selection: the official code's rounded MAE / epsilon)")
    a("--lr-schedule", choices=list(LR_SCHEDULES),
      help="multistep: torch's stages; official: scheduler.step(epoch) as the official scripts")
    a("--dtype", choices=list(DTYPES), help="float32 (default) or float64")
    a("--keep-checkpoints", choices=list(KEEP_CHECKPOINTS))
    a("--results-dir", help="root of runs/ and tables/ (default results)")
    a("--executor", help="local or ray")
    a("--workers", type=int, help="runs at once (local executor)")
    a("--threads", type=int,
      help="torch threads per run (default: cores / workers); with ray, CPUs per run")
    a("--retries", type=int,
      help="resubmissions of a run whose worker process died (default: local 0, ray 3)")
    a("--address", help="Ray cluster address (executor ray)")
    a("--quiet", action=argparse.BooleanOptionalAction, default=None)
    a("--dry-run", action="store_true", help="print the runs and their status; train nothing")
    a("--no-aggregate", action="store_true", help="skip the aggregate table")


def grid_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The grid of ``ageest run``: the ``--config`` YAML, then the flags given on top."""
    grid = load_grid_config(args.config) if args.config else {}
    for key in GRID_DEFAULTS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key == "loss_kwargs":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--loss-kwargs: not valid JSON ({exc})") from exc
        grid[key] = value
    return grid


def run(args: argparse.Namespace) -> int:
    grid = grid_from_args(args)
    if args.dry_run:
        tasks = expand_grid(grid, args.results_dir)
        check_stale(tasks)
        for t in tasks:
            print(f"{store.run_status(t['run_dir']):8s} {t['run_dir']}  "
                  f"(params_hash {t['params']['params_hash']})")
        print(f"{len(tasks)} runs")
        return 0
    summary = run_grid(grid, aggregate_results=not args.no_aggregate)
    print(format_summary(summary))
    results_dir = Path(grid.get("results_dir") or "results")
    table_path = results_dir / "tables" / "aggregate.md"
    if not args.no_aggregate and table_path.is_file():
        print(table_path.read_text(encoding="utf-8"))
    return 1 if (summary["status"] == "failed").any() else 0

