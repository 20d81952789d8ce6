"""Grids of training runs: the grid schema, expansion into runs, resume and parallel execution
(one run into one folder is :mod:`ageest.engine.run`; the ``ageest run`` command on top is
:mod:`ageest.commands.run`, the aggregate table it prints :mod:`ageest.pipeline.aggregate`).

:func:`run_grid` (behind ``ageest run`` and the notebooks) expands a grid

    dataset x protocol x loss x k x seed x fold

into run specifications, skips those already finished, runs the rest through an executor
(:mod:`ageest.engine.executors`: ``local`` process pool or ``ray``) and returns a summary of
done / skipped / failed / pending runs.

Run directories
---------------
``<results>/runs/<dataset>-<protocol>-<loss>-k<k|adaptive>-seed<seed>[-<selection>]/fold-<id>/``
(:mod:`ageest.engine.store` lists the files). ``k`` is the fixed top-K of ``mean_residue``; the adaptive
loss ``amr`` and losses without a K are written ``kadaptive`` (and ``k: null`` in params.yaml).
The ``-<selection>`` suffix appears only for a selection other than the default ``val_best``
(e.g. ``-test_best_epoch_official``), so clean and official runs never share a folder.
Fold ids come from :func:`ageest.data.make_folds`: the subject under ``lopo``, ``0..n-1`` under
``group-kfold``, ``holdout`` for the table's own train/valid/test split. ``--folds 0,3`` selects folds by their
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

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ageest import __version__
from ageest.data.integrity import (
    IDENTICAL_CHOICES,
    ON_BAD_CHOICES,
    identical_line,
    is_identical_record,
)
from ageest.data.loaders import LABEL_ROUNDINGS, check_class_count
from ageest.data.splits import PROTOCOLS
from ageest.engine import store
from ageest.engine.run import (
    KEEP_CHECKPOINTS,
    StaleRunError,
    build_folds,
    execute_run,
    fold_digest,
    load_data,
    loader_keys,
    params_hash,
    run_dir_for,
    stale_reason,
)
from ageest.engine.train import TrainConfig, precision_label, resolve_amp
from ageest.files import plain
from ageest.losses import WEIGHT_SETTINGS, loss_weights
from ageest.official import OFFICIAL_SELECTION, SELECTIONS
from ageest.parameters import Setting, check_value, settings_of

# ---------------------------------------------------------------------------------------------
# the grid: one schema (keys, defaults, types, ranges, help), its validation and its CLI flags


def _k(name, default, kind, help, **kw) -> Setting:
    """One grid key (and one ``ageest run`` flag, ``n_folds`` -> ``--n-folds``); one whose
    default is None may be given as ``none``."""
    return Setting(name, default, kind, help, optional=default is None, **kw)


def _train_keys() -> list[Setting]:
    """The training keys: every :class:`~ageest.engine.train.TrainConfig` field a grid sets (not the
    per-run ``loss``/``seed``/``selection``, nor ``augment``), declared by the field itself."""
    grid_fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("grid", True)]
    return settings_of(grid_fields)


SCHEMA: dict[str, Setting] = {key.name: key for key in [
    # axes: lists, one run per combination
    _k("dataset", ["synthetic-fgnet"], "list", "dataset name(s): a registry name of "
       "ageest.data (fgnet, clap2016, utkface, csv, benchmark-json, synthetic-fgnet ...)"),
    _k("protocol", [], "list", "lopo, group-kfold, holdout (the train/valid/test split column: "
       "CLAP2016's own, a split CSV's; empty: each dataset's default)", choices=PROTOCOLS),
    _k("losses", ["amr"], "list", "loss names of ageest.losses"),
    _k("k", [], "list", "fixed top-K values of mean_residue; 'adaptive' adds amr"),
    _k("seeds", [0], "list", "training seeds", item="int"),
    _k("selection", ["val_best"], "list", ", ".join(SELECTIONS), choices=SELECTIONS),
    # folds
    _k("folds", None, "list", "fold positions in make_folds order, e.g. 0,3 (empty: all)",
       item="int", minimum=0),
    _k("n_folds", 5, "int", "folds of group-kfold", minimum=2),
    _k("val_fraction", 0.15, "float", "share of training subjects held out for validation",
       minimum=0.0, maximum=1.0),
    _k("split_seed", 0, "int", "seed of the validation carve", minimum=0),
    # data
    _k("data_dir", None, "str", "dataset folder (fgnet, clap2016, utkface)"),
    _k("csv", None, "str", "label CSV (dataset csv)"),
    _k("json", None, "str", "database JSON (dataset benchmark-json)"),
    _k("image_root", None, "str", "image folder (csv, benchmark-json)"),
    _k("synthetic_size", 64, "int", "image side of generated synthetic data", minimum=8),
    _k("ignore_list", None, "str", "CLAP2016: file of names to drop (default: "
       "DATA_DIR/ignore_list.txt when present)"),
    _k("ignore_splits", ["train"], "list", "CLAP2016: splits the ignore list filters (the "
       "official code: train,valid,test)"),
    _k("min_pixels", None, "int", "CLAP2016: drop images with fewer pixels (official: 1024)",
       minimum=0),
    _k("label_rounding", "half_up", "str", "CLAP2016: apparent mean -> label (official: "
       "half_even, np.around)", choices=LABEL_ROUNDINGS),
    _k("age_range", None, "list", "csv/benchmark-json: declared label range LO,HI (csv "
       "default 0,100)", item="int", minimum=0),
    _k("allow_outside_root", False, "bool", "csv/benchmark-json: accept image paths that "
       "resolve outside --image-root"),
    _k("split_csv", None, "str", "UTKFace: train/valid/test split CSV (image_id,split) for "
       "the holdout protocol"),
    _k("on_bad", "raise", "str", "bad image files: stop naming them, or skip them and record "
       "the list (printed, and skipped.json in each run folder)", choices=ON_BAD_CHOICES),
    _k("identical_images", None, "str", "identical images (same decoded pixels): refuse, or "
       "dedupe (one copy of a group whose labels agree, none of a group whose labels disagree); "
       "default: the dataset's (dedupe for utkface, refuse for the others)",
       choices=IDENTICAL_CHOICES),
    # training: TrainConfig's fields (one source of defaults)
    *_train_keys(),
    _k("keep_checkpoints", "best", "str", "checkpoints kept after a run",
       choices=KEEP_CHECKPOINTS),
    # execution (not part of a run's parameters)
    _k("results_dir", None, "str", "root of runs/ and tables/ (default results)"),
    _k("executor", "local", "str", "local process pool or ray", choices=("local", "ray")),
    _k("workers", 1, "int", "runs at once (local executor)", minimum=1),
    _k("threads", None, "int", "torch threads per run (default: cores / workers); with ray, "
       "CPUs per run", minimum=1),
    _k("retries", None, "int", "resubmissions of a run whose worker process died (default: "
       "local 0, ray 3: a lost node is common there)", minimum=0),
    _k("address", None, "str", "Ray cluster address (executor ray)"),
    _k("quiet", None, "bool", "no progress bars (default: quiet with several workers)"),
]}
#: every key a grid YAML may hold, with its default
GRID_DEFAULTS: dict[str, Any] = {name: key.default for name, key in SCHEMA.items()}


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


class CheckedGrid(dict):
    """A grid :func:`normalize_grid` returned: every key present, every value checked. The
    functions of this module take it as it is (values are parsed once, where they enter); a
    copy with other keys (``{**grid, "epochs": 2}``) is a plain dict again and is checked."""


def normalize_grid(grid: Mapping[str, Any]) -> CheckedGrid:
    """Fill defaults, turn comma strings into lists and check every value's type, range and
    choice against :data:`SCHEMA` before any run starts (an error names the key); unknown keys
    are errors. A :class:`CheckedGrid` is returned as it is."""
    if isinstance(grid, CheckedGrid):
        return grid
    unknown = sorted(set(grid) - set(SCHEMA))
    if unknown:
        raise ValueError(f"unknown grid key(s) {unknown}; valid keys: {sorted(SCHEMA)}")
    g = {**GRID_DEFAULTS, **{k: v for k, v in grid.items() if v is not None}}
    for name, key in SCHEMA.items():
        if g[name] is not None:
            g[name] = check_value(key, g[name])
    # an axis without values expands to no runs: say which, before anything is loaded
    for name in ("dataset", "seeds", "selection"):
        if not g[name]:
            raise ValueError(f"grid key {name}: no values (an empty list gives no runs); give "
                             f"at least one, e.g. --{name.replace('_', '-')} "
                             f"{GRID_DEFAULTS[name][0]}")
    if not g["losses"] and not g["k"]:
        raise ValueError("grid key losses: no values and no k (an empty list gives no runs); "
                         "give at least one loss, e.g. --losses amr")
    ar = g["age_range"]
    if ar is not None and (len(ar) != 2 or ar[0] >= ar[1]):
        raise ValueError(f"grid key age_range: {ar!r} is not [lo, hi] with lo < hi")
    if ar is not None:
        check_class_count(ar[0], ar[1], "grid key age_range")
    _check_parts(g)
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
    g["folds"] = g["folds"] or None  # empty: every fold
    g["ignore_splits"] = [str(x) for x in g["ignore_splits"]]
    return CheckedGrid(g)


def check_setting(name: str, value: Any) -> Any:
    """One grid key's value checked as :func:`normalize_grid` checks it (kind, range, choices;
    loss and model names against their registries), for
    callers that hold single settings (``ageest reproduce`` checks every notebook parameter
    that is a grid key before the first notebook starts). A ``ValueError`` names the key."""
    value = check_value(SCHEMA[name], value)
    if name in ("losses", "model"):
        _check_registered(**{name: value}, prefix="")
    return value


def _check_registered(losses: Sequence[str] = (), model: str | None = None, *,
                      prefix: str) -> None:
    """Loss and model names against their registries (the message starts with ``prefix``)."""
    from ageest.engine.models import list_models
    from ageest.losses import list_losses

    for loss in losses:
        if loss not in list_losses():
            raise ValueError(f"{prefix}losses: unknown loss {loss!r}; choose from "
                             f"{list_losses()}")
    if model is not None and model not in list_models():
        raise ValueError(f"{prefix}model: unknown model {model!r}; choose from {list_models()}")


def _check_parts(g: dict[str, Any]) -> None:
    """The names a grid chooses parts by, checked against their registries before any data is
    loaded: losses, the model and each loss's extra arguments."""
    from ageest.losses import list_losses, loss_parameters

    _check_registered(g["losses"], g["model"], prefix="grid key ")
    for loss, kwargs in (g["loss_kwargs"] or {}).items():
        if loss not in list_losses():
            raise ValueError(f"grid key loss_kwargs: {loss!r} is not a loss; its keys are loss "
                             f"names ({list_losses()}), e.g. {{amr: {{eps: 0.001}}}}")
        weights = sorted(set(kwargs or {}) & set(WEIGHT_SETTINGS))
        if weights:
            raise ValueError(f"grid key loss_kwargs: {weights[0]} is a setting of its own; set "
                             f"{weights[0]} (--{weights[0].replace('_', '-')}), not "
                             "loss_kwargs")
        unknown = sorted(set(kwargs or {}) - set(loss_parameters(loss)))
        if unknown:
            raise ValueError(f"grid key loss_kwargs: {loss} takes no {unknown}; it takes "
                             f"{loss_parameters(loss)}")


def check_device(device: str) -> None:
    """A ``ValueError`` naming ``--device`` when it is not a device torch can use here."""
    import torch

    try:
        kind = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: not a device (cpu, cuda, cuda:1)") from None
    if kind.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")


def check_grid(grid: Mapping[str, Any]) -> CheckedGrid:
    """The checks of a grid that need no data loaded and no run started (the schema, the
    registries, real CLAP2016's ignore list for official runs), so a pipeline can check all of
    its grids before the first one trains; returns the normalised grid."""
    g = normalize_grid(grid)
    for dataset in g["dataset"]:
        _check_ignore_list(dataset, g)
    return g


def _check_ignore_list(dataset: str, g: dict[str, Any]) -> None:
    """Real CLAP2016 without its ignore list: the official code reads
    ``<CLAP folder>/ignore_list.txt`` and fails without it, so official-protocol runs are
    refused; clean runs go on (the list only cleans their training set) with a warning."""
    if dataset != "clap2016" or g["ignore_list"] is not None or not g["data_dir"] \
            or (Path(g["data_dir"]) / "ignore_list.txt").is_file():
        return
    where = Path(g["data_dir"]) / "ignore_list.txt"
    if OFFICIAL_SELECTION in g["selection"]:
        raise FileNotFoundError(
            f"{where}: missing; official-protocol CLAP2016 runs need it (the official code reads "
            "it and fails without it): place yu4u/age-gender-estimation's appa-real/"
            "ignore_list.txt (118 names) there, or pass --ignore-list FILE")
    import warnings

    warnings.warn(f"{where}: missing; the clean runs train on all images, the 118 that the "
                  "official ignore list drops included (place the list there to drop them)",
                  stacklevel=3)


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
    shared = _shared_run_params(g)
    tasks: list[dict[str, Any]] = []
    for dataset in g["dataset"]:
        base, df, info = _grid_dataset(g, dataset)
        for protocol in g["protocol"] or [info.default_protocol]:
            split = {"protocol": protocol, "n_folds": int(g["n_folds"]),
                     "val_fraction": float(g["val_fraction"]), "split_seed": int(g["split_seed"])}
            folds = _protocol_folds(g, df, info, dataset, split)
            chosen = range(len(folds)) if g["folds"] is None else g["folds"]
            for loss, k in _loss_runs(g["losses"], g["k"]):
                loss_kwargs = dict(g["loss_kwargs"].get(loss, {}) or {})
                if k is not None:
                    loss_kwargs["k"] = k
                for seed in g["seeds"]:
                    for selection in g["selection"]:
                        for i in chosen:
                            params: dict[str, Any] = plain({
                                **base, **split, "loss": loss, "k": k, "seed": seed,
                                "selection": selection,
                                "test_selected": selection == OFFICIAL_SELECTION,
                                "fold": folds[i].fold_id, "fold_index": int(i),
                                "data_digest": df.attrs.get("content_digest"),
                                "split_digest": fold_digest(df, folds[i]),
                                "start_age": int(info.start_age), "end_age": int(info.end_age),
                                **shared, **loss_weights(loss, g), "loss_kwargs": loss_kwargs})
                            params["params_hash"] = params_hash(params)
                            tasks.append({"run_dir": str(run_dir_for(results_dir, params)),
                                          "params": params, "device": params["device"]})
    return tasks


def _shared_run_params(g: Mapping[str, Any]) -> dict[str, Any]:
    """What every run of the grid holds alike: its training settings (``TrainConfig``'s fields
    the grid sets; a run holds only the weights its loss takes, added per loss), the precision
    ``amp: auto`` resolved to on this machine (part of a run's identity, so a bf16 run is never
    reused as fp32), an ``init_from`` checkpoint's record, and the execution keys."""
    # augment: a run's params.yaml may set it (python -m ageest.engine.run); not a grid key, so
    # the parameter hashes of existing runs stay valid
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {
        "seed", "loss", "loss_kwargs", "selection", "threads", "quiet", "augment",
        *WEIGHT_SETTINGS}
    amp, channels_last = resolve_amp(g["amp"], g["device"], g["channels_last"], g["model"])
    return {**{f: g[f] for f in sorted(train_fields)}, "amp": amp,
            "channels_last": channels_last, "keep_checkpoints": g["keep_checkpoints"],
            "quiet": bool(g["quiet"]) if g["quiet"] is not None else int(g["workers"]) > 1,
            "threads": g["threads"], "ageest_version": __version__, **_init_record(g)}


def _grid_dataset(g: Mapping[str, Any], dataset: str) -> tuple[dict[str, Any], Any, Any]:
    """``(base, table, info)`` of one dataset of the grid: the run keys that name it and its
    loader options (only the dataset's own options change its data, and a run's identity),
    and the loaded table, whose skipped and dropped files are said once."""
    base = {"dataset": dataset, "on_bad": g["on_bad"], "identical_images": g["identical_images"],
            **{k: g[k] for k in ("data_dir", "csv", "json", "image_root", "synthetic_size")}}
    base.update({k: g[k] for k in loader_keys(dataset)})
    _check_ignore_list(dataset, g)
    df, info = load_data(base)
    # --on-bad skip: never silent; the loader's warning listed each file once already
    bad = [r for r in df.attrs.get("skipped", []) if not is_identical_record(r)]
    if bad:
        print(f"{dataset}: {len(bad)} bad file(s) skipped (listed above; every run's "
              "skipped.json records them)", file=sys.stderr)
    if df.attrs.get("identical", {}).get("dropped"):  # each copy is in skipped.json
        print(f"{dataset}: {identical_line(df.attrs['identical'])}", file=sys.stderr)
    return base, df, info


def _protocol_folds(g: Mapping[str, Any], df, info, dataset: str,
                    split: Mapping[str, Any]) -> list:
    """The folds of ``dataset`` under ``split``'s protocol, after checking that the protocol
    applies (holdout needs a split) and that the grid's fold positions exist."""
    protocol = split["protocol"]
    has_split = info.has_own_split or (
        "split" in df.columns and bool(df["split"].notna().any()))  # e.g. csv's column
    if protocol == "holdout" and not has_split:
        raise ValueError(f"dataset {dataset!r} has no train/valid/test split (no split column); "
                         "use protocol lopo or group-kfold" + (
                             ", or give --split-csv (image_id,split; ageest.data.splits"
                             ".stratified_split writes one)" if dataset == "utkface" else ""))
    folds = build_folds(df, dict(split))
    for i in [] if g["folds"] is None else g["folds"]:
        if not 0 <= i < len(folds):
            raise ValueError(f"--folds {i}: {dataset}/{protocol} has {len(folds)} "
                             f"folds (positions 0..{len(folds) - 1})")
    return folds


def _init_record(g: Mapping[str, Any]) -> dict[str, Any]:
    """``init_from`` as the runs hold it: the checkpoint's absolute path and its SHA-256 (part
    of each run's identity, so runs started from another pretraining are never reused); {}
    without ``init_from``."""
    if not g.get("init_from"):
        return {}
    from ageest.engine.train import resolve_init
    from ageest.files import file_sha256

    ckpt, src = resolve_init(g["init_from"])
    if src.get("model") != g["model"]:
        raise ValueError(f"init_from {g['init_from']}: a {src.get('model')} run; the grid trains "
                         f"{g['model']}: pretrain the same model")
    return {"init_from": str(ckpt), "init_sha256": file_sha256(ckpt)}


def check_stale(tasks: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`StaleRunError` when a finished run folder holds other parameters."""
    stale = []
    for task in tasks:
        run_dir = Path(task["run_dir"])
        reason = stale_reason(run_dir, task["params"]) if store.is_finished(run_dir) else None
        if reason is not None:
            stale.append(f"{run_dir}: {reason}")
    if stale:
        raise StaleRunError(
            "finished runs were trained with other parameters and are never overwritten:\n  "
            + "\n  ".join(stale[:20]) + ("\n  ..." if len(stale) > 20 else "")
            + "\nUse another --results-dir, or delete these folders to retrain them. "
            "Compare their params.yaml with the grid to see what changed."
        )


# ---------------------------------------------------------------------------------------------
# a whole grid (one run: ageest.engine.run)


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
    separately), a CUDA device exists here (local executor), and pretrained weights are where
    ``--pretrained`` will look."""
    import errno
    import tempfile

    if g["executor"] == "local":  # a Ray driver may plan CUDA runs for GPU workers
        check_device(str(g["device"]))  # before the folder is made: a refused grid leaves none
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
        from ageest.engine.models import check_pretrained

        check_pretrained(g["model"])


def make_executor(g: dict[str, Any]):
    """The executor named by the grid's ``executor`` key, with its execution options."""
    from ageest.engine.executors import get_executor

    retries = {} if g["retries"] is None else {"retries": int(g["retries"])}
    if g["executor"] == "local":
        return get_executor("local", workers=int(g["workers"]), threads=g["threads"], **retries)
    if g["executor"] == "ray":
        # --threads is each run's CPU share on the cluster (Ray schedules by it)
        cpus = {} if g["threads"] is None else {"num_cpus_per_task": float(g["threads"])}
        return get_executor("ray", address=g["address"], **retries, **cpus)
    return get_executor(g["executor"])


#: the grid keys that say how runs execute (not what they compute): grids that agree on them
#: share one executor in :func:`run_grids`
EXECUTION_KEYS = ("executor", "workers", "threads", "retries", "address")


def run_grid(grid: dict[str, Any] | None = None, *, results_dir: str | os.PathLike | None = None,
             executor=None, on_event: Callable[[dict], None] | None = None,
             **overrides: Any) -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
        One row per run: ``run_dir``, ``status`` (done / skipped / failed / pending),
        ``wall_time_s``, ``mae``, ``error`` (last line of the traceback).
    """
    g = {**(grid or {}), **overrides} if overrides else grid  # a CheckedGrid stays one
    summary = run_grids({"": g}, results_dir=results_dir, executor=executor, on_event=on_event)
    return summary.drop(columns="grid")  # attrs (results_dir) carry over


def run_grids(grids: Mapping[str, Mapping[str, Any]], *,
              results_dir: str | os.PathLike | None = None, executor=None,
              on_event: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Run several grids as one: every grid is checked, expanded and checked for stale runs
    before the first run starts, then the unfinished runs of all grids that execute alike
    (:data:`EXECUTION_KEYS`) go to one executor, so its worker processes start once and a
    grid's last run shares the cores with the next grid's first. Returns :func:`run_grid`'s
    summary with a ``grid`` column (the grid's name)."""
    checked = {name: normalize_grid(grid or {}) for name, grid in grids.items()}
    plans = []  # (name, grid, results folder, tasks)
    for name, g in checked.items():
        where = Path(results_dir or g["results_dir"] or "results")
        preflight(g, where)
        tasks = expand_grid(g, where)
        check_stale(tasks)
        plans.append((name, g, where, tasks))
    results: dict[str, dict] = {}
    for group in _execution_groups(plans):
        todo = []
        for name, g, where, tasks in group:
            pending = [t for t in tasks if not store.is_finished(t["run_dir"])]
            _announce(name, g, where, tasks, pending)
            todo += pending
        if todo:
            ex = executor or make_executor(group[0][1])
            for r in ex.run(todo, execute_run, on_event=on_event or _progress_printer()):
                results[str(r["run_dir"])] = r
    rows = [{"grid": name, **_summary_row(t, results.get(t["run_dir"]))}
            for name, _, _, tasks in plans for t in tasks]
    # the columns even when no row: an empty grid (a run's filter matching nothing) reads alike
    summary = pd.DataFrame(rows, columns=["grid", "run_dir", "status", "wall_time_s", "mae",
                                          "error"])
    summary.attrs["results_dir"] = str(plans[0][2]) if plans else str(results_dir or "results")
    return summary


def _execution_groups(plans: list) -> list[list]:
    """``plans`` grouped by their grids' :data:`EXECUTION_KEYS`, in first-seen order."""
    groups: dict[tuple, list] = {}
    for plan in plans:
        groups.setdefault(tuple(str(plan[1][k]) for k in EXECUTION_KEYS), []).append(plan)
    return list(groups.values())


def _announce(name: str, g: Mapping[str, Any], where: Path, tasks: list, todo: list) -> None:
    """The grid's opening line (unless ``quiet``): its runs, those finished, how the rest run."""
    if g["quiet"]:
        return
    amp, channels_last = resolve_amp(g["amp"], g["device"], g["channels_last"], g["model"])
    label = f"grid {name}: " if name else ""
    print(f"{label}{len(tasks)} runs in the grid, {len(tasks) - len(todo)} already finished, "
          f"{len(todo)} to run with executor {g['executor']!r} "
          f"(workers={g['workers']}; {precision_label(amp, channels_last, g['amp'])}) -> "
          f"{where / 'runs'}", flush=True)


def _summary_row(task: Mapping[str, Any], result: Mapping[str, Any] | None) -> dict[str, Any]:
    """One run's row of the summary: this call's result, else what its folder holds."""
    run_dir = task["run_dir"]
    if result is None:
        status = "skipped" if store.is_finished(run_dir) else "pending"
        result = {"status": status, "wall_time_s": None, "error": None}
    mae = result.get("mae")
    if mae is None and store.is_finished(run_dir):
        mae = store.read_metrics(run_dir).get("mae")
    err = result.get("error")
    return {"run_dir": run_dir, "status": result["status"],
            "wall_time_s": result.get("wall_time_s"), "mae": mae,
            "error": err.strip().splitlines()[-1] if err else None}
