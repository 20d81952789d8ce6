"""One run into one folder: load the data, rebuild the fold, build the config, train, score, write.

:func:`train_run` trains the run a ``params.yaml`` describes into its folder (rank 0 writes
``history.csv`` during training, then ``predictions.parquet``, ``manifest.json`` and
``metrics.json`` last, so partial output never looks finished). :func:`execute_run` is the
executors' entry: it skips a finished run with the same parameters, refuses to overwrite one with
other parameters (:class:`StaleRunError`), holds ``run.lock`` while training, and never raises.
A run's identity is its parameters: :func:`params_hash` (what changes the numbers),
:func:`run_name` and :func:`run_dir_for` (where it lives), :func:`fold_digest` (its split).

The torchrun entry is this module: ``python -m ageest.engine.run --params params.yaml --out DIR``
(``torchrun --nproc_per_node N -m ageest.engine.run ...`` on several processes; see
:mod:`ageest.engine.distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ageest.engine import distributed as dist
from ageest.engine import store
from ageest.engine.models import weights_record
from ageest.engine.train import TrainConfig, identity_defaults, train
from ageest.errors import UserError
from ageest.official import OFFICIAL_SELECTION, check_run

#: run parameters left out of the hash (they do not change the numbers)
UNHASHED = ("quiet", "threads", "keep_checkpoints", "data_dir", "csv", "json", "image_root",
            "split_csv",  # a location: the split digest covers the split itself
            "params_hash", "ageest_version",
            "on_bad", "identical_images")  # what they drop: the data digest covers it
KEEP_CHECKPOINTS = ("best", "all", "none")


class StaleRunError(UserError, RuntimeError):
    """A finished run folder holds results of different parameters than the grid asks for."""


def fold_digest(df: pd.DataFrame, fold) -> str:
    """16 hex digits naming a fold's split: the sorted image ids of its train, validation and
    test parts (a run's identity includes it, so other folds never reuse its results)."""
    ids = df["image_id"].astype(str).to_numpy()
    blob = "|".join(",".join(sorted(ids[np.asarray(part, dtype=np.int64)]))
                    for part in (fold.train, fold.val, fold.test))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which input differs between two runs' parameters: the data (content digest), the split
    (fold digest), or the parameter keys with their old -> new values."""
    if old.get("data_digest") != new.get("data_digest"):
        return (f"the data changed (content digest {old.get('data_digest')} -> "
                f"{new.get('data_digest')}: other images, labels or subjects)")
    if old.get("split_digest") != new.get("split_digest"):
        return (f"the split changed (fold digest {old.get('split_digest')} -> "
                f"{new.get('split_digest')}: other train/validation/test images)")
    keys = sorted(k for k in set(old) | set(new)
                  if k not in UNHASHED and old.get(k) != new.get(k))
    return "parameters changed: " + (", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}"
                                              for k in keys[:8]) or "(none named)")


def params_hash(params: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the run parameters that change its numbers. A setting
    added after identities were pinned counts only where it differs from its default
    (:func:`ageest.engine.train.identity_defaults`): a new setting leaves finished runs valid.

    >>> params_hash({"lr": 0.001, "quiet": True}) == params_hash({"lr": 0.001, "quiet": False})
    True
    """
    unset = identity_defaults()  # settings newer than the pinned identities, at their default
    kept = {k: v for k, v in params.items()
            if k not in UNHASHED and not (k in unset and v == unset[k])}
    blob = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def run_name(params: dict[str, Any]) -> str:
    """``<dataset>-<protocol>-<loss>-k<k|adaptive>-seed<seed>[-<selection>]``.

    >>> run_name({"dataset": "fgnet", "protocol": "lopo", "loss": "amr", "k": None, "seed": 0,
    ...           "selection": "val_best"})
    'fgnet-lopo-amr-kadaptive-seed0'
    """
    k = "adaptive" if params.get("k") is None else params["k"]
    name = f"{params['dataset']}-{params['protocol']}-{params['loss']}-k{k}-seed{params['seed']}"
    if params.get("selection", "val_best") != "val_best":
        name += f"-{params['selection']}"
    return name


def _safe(text: str) -> str:
    """A fold id usable as a folder name (subjects are digits/letters in every loader)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def run_dir_for(results_dir: str | os.PathLike, params: dict[str, Any]) -> Path:
    return Path(results_dir) / "runs" / run_name(params) / f"fold-{_safe(params['fold'])}"


#: grid keys that are options of the CLAP2016-format loader
CLAP_LOADER_KEYS = ("ignore_list", "ignore_splits", "min_pixels", "label_rounding")
CLAP_DATASETS = ("clap2016", "synthetic-clap")
#: grid keys that are options of the csv / benchmark-json loaders
FILE_LOADER_KEYS = ("age_range", "allow_outside_root")
FILE_DATASETS = ("csv", "benchmark-json")
#: grid keys that are options of the UTKFace loader
UTKFACE_LOADER_KEYS = ("split_csv",)


def loader_keys(dataset: str) -> tuple[str, ...]:
    """The grid keys that are options of ``dataset``'s loader (they change its data, and so the
    run's identity; other datasets ignore them)."""
    return (CLAP_LOADER_KEYS if dataset in CLAP_DATASETS else
            FILE_LOADER_KEYS if dataset in FILE_DATASETS else
            UTKFACE_LOADER_KEYS if dataset == "utkface" else ())


def load_data(params: dict[str, Any]):
    from ageest.data import get_dataset

    options = {k: params[k] for k in loader_keys(params["dataset"])
               if params.get(k) is not None}
    if options.get("age_range") is not None:
        options["age_range"] = tuple(options["age_range"])
    return get_dataset(params["dataset"], data_dir=params.get("data_dir"),
                       csv=params.get("csv"), json=params.get("json"),
                       image_root=params.get("image_root"),
                       size=int(params.get("synthetic_size", 64)),
                       on_bad=str(params.get("on_bad", "raise")), loader_options=options,
                       identical_images=params.get("identical_images"))


def build_folds(df: pd.DataFrame, params: dict[str, Any]):
    from ageest.data import make_folds

    return make_folds(df, params["protocol"], n_folds=int(params["n_folds"]),
                      val_fraction=float(params["val_fraction"]), seed=int(params["split_seed"]))


def train_run(params: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train one run described by ``params`` (a run's params.yaml) into ``run_dir``.

    Loads the dataset, rebuilds the folds and checks the fold id, trains (continuing from
    ``checkpoints/last.pt`` when present), and on rank 0 writes ``history.csv``,
    ``predictions.parquet``, ``manifest.json`` and finally ``metrics.json``. Returns the metrics.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    params = dict(params)
    params.setdefault("params_hash", params_hash(params))
    dist.init(str(params.get("device", "cpu")))  # under torchrun; a no-op in one process
    if dist.is_main_process() and not (run_dir / store.PARAMS).is_file():
        store.write_params(run_dir, params)
    if dist.is_main_process():  # rank 0 first: a synthetic dataset is generated only once
        df, info = load_data(params)
    dist.barrier()
    if not dist.is_main_process():
        df, info = load_data(params)
    fold = _checked_fold(df, params, run_dir)
    config = TrainConfig.from_dict({k: v for k, v in params.items() if k in _CONFIG_FIELDS})
    result = train(config, df, fold, start_age=int(info.start_age), end_age=int(info.end_age),
                   ckpt_dir=run_dir / store.CHECKPOINTS, resume=True,
                   on_epoch=_epoch_reporter(run_dir, config.epochs),
                   run_id=str(params["params_hash"]), init_sha256=params.get("init_sha256"))
    out = {"status": "done", "run": run_name(params), "fold": str(params["fold"]),
           "seed": int(params["seed"]), "params_hash": params["params_hash"],
           "selection": config.selection, "selected_by": result.selected_by,
           "test_selected": bool(result.test_selected), "best_epoch": result.best_epoch,
           "epochs": config.epochs, "resumed_from_epoch": result.resumed_from_epoch,
           "numerics": result.numerics,
           # the weights it started from (file, SHA-256) and the input scaling its model applies
           "weights": weights_record(config.model, config.pretrained),
           # init_from: the run whose weights this one started from (file, SHA-256, ages)
           **({"init": result.init} if result.init else {}),
           "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
           **test_metrics(result.predictions), "wall_time_s": None}
    if result.test_selected:
        out["note"] = ("official protocol: the epoch was selected on the TEST set "
                       f"({OFFICIAL_SELECTION}); optimistic, not a clean estimate")
    if config.selection == OFFICIAL_SELECTION:
        # every official-mode run against the official scripts' record: what this run does
        # differently (a shrunk CPU run: epochs, model, image size ...), listed in REPORT.md
        kind = "clap" if params["dataset"] in CLAP_DATASETS else "fgnet"
        out["official_departures"] = check_run(
            {**params, "start_age": int(info.start_age), "end_age": int(info.end_age)}, kind)
    if dist.is_main_process():
        _write_run(run_dir, params, result, df.attrs.get("skipped"), out, t0)
    dist.barrier()
    return out


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _checked_fold(df: pd.DataFrame, params: dict[str, Any], run_dir: Path):
    """The run's fold, rebuilt from the data, after checking that it is the fold (and the data)
    the grid was expanded with."""
    folds = build_folds(df, params)
    index = int(params.get("fold_index", 0))
    if not 0 <= index < len(folds) or folds[index].fold_id != str(params["fold"]):
        raise ValueError(
            f"fold {params['fold']!r} is not at position {index} of the {len(folds)} folds of "
            f"{params['dataset']}/{params['protocol']}: the dataset or split parameters changed "
            "since the grid was expanded; delete this run folder and rerun the grid"
        )
    fold = folds[index]
    for key, now in (("data_digest", df.attrs.get("content_digest")),
                     ("split_digest", fold_digest(df, fold))):
        if params.get(key) is not None and params[key] != now:
            raise StaleRunError(
                f"{run_dir}: {describe_change(params, {**params, key: now})} since the grid "
                "was expanded; rerun the grid (a new expansion names the new runs)")
    return fold


def test_metrics(pred: pd.DataFrame) -> dict[str, Any]:
    """A run's test numbers for ``metrics.json``: MAE of the expected age and of its rounding
    (the official readout), CS(0..10) and, when any image has a raters' σ, the ε-error (σ = 0 at
    the formula's limit, with the counts of σ = 0 and missing σ) and the official ε."""
    from ageest import metrics

    out = {"epsilon": None, **metrics.score_summary(
        pred["expected_age"].to_numpy(), pred["age_mean"].to_numpy(dtype=np.float64),
        pred["std"].to_numpy(dtype=np.float64), thetas=range(11))}
    return {"mae": out.pop("mae"), "mae_rounded": out.pop("mae_rounded"), **out}


def _write_run(run_dir: Path, params: dict[str, Any], result, skipped: list | None,
               out: dict[str, Any], t0: float) -> None:
    """Rank 0's files of a finished run; ``metrics.json`` last (it marks the run finished)."""
    from ageest.files import atomic_write_text, write_json, write_manifest

    if skipped:  # --on-bad skip: what was left out, beside the run
        write_json(run_dir / "skipped.json", {"skipped": list(skipped)})
        out["n_skipped_files"] = len(skipped)
    atomic_write_text(run_dir / store.HISTORY, result.history.to_csv(index=False))
    store.write_predictions(run_dir, result.predictions, fold=str(params["fold"]),
                            seed=int(params["seed"]), test_selected=result.test_selected)
    ckpts = run_dir / store.CHECKPOINTS
    keep = params.get("keep_checkpoints", "best")
    if keep != "all":
        (ckpts / "last.pt").unlink(missing_ok=True)
    if keep == "none":
        shutil.rmtree(ckpts, ignore_errors=True)
    out["wall_time_s"] = time.perf_counter() - t0
    write_manifest(run_dir, parameters=params, seeds={"seed": int(params["seed"]),
                   "split_seed": int(params["split_seed"])},
                   wall_time_s=out["wall_time_s"],
                   extra={"test_selected": bool(result.test_selected)})
    store.write_metrics(run_dir, out)


def _epoch_reporter(run_dir: Path, epochs: int) -> Callable[[pd.DataFrame], None]:
    """After every epoch: rewrite ``history.csv`` (so a run in progress can be watched or
    plotted) and print one plain line to stderr naming the run, with the training loss,
    validation MAE, throughput and the time left (from the mean epoch time so far)."""
    from ageest.files import atomic_write_text

    name = os.sep.join(run_dir.parts[-2:])

    def report(history: pd.DataFrame) -> None:
        atomic_write_text(run_dir / store.HISTORY, history.to_csv(index=False))
        row = history.iloc[-1]
        left = (epochs - int(row["epoch"])) * float(history["epoch_time_s"].mean())
        val = f", val MAE {row['val_mae']:.3f}" if "val_mae" in row and pd.notna(
            row["val_mae"]) else ""
        print(f"{name} epoch {int(row['epoch'])}/{epochs}: train loss "
              f"{row.get('train_total', float('nan')):.4f}{val}, "
              f"{row['images_per_s']:.0f} img/s, ETA {left:.0f} s", file=sys.stderr, flush=True)

    return report


class _RunLock:
    """``run.lock`` (O_EXCL) naming its host, process id and that process's start time, so two
    runners on one machine never train the same folder at once. A lock is taken over when its
    process is gone, when its id now belongs to another process (a reused id: the start time
    differs), or when it was written on another host (its process cannot be checked from here;
    the usual cause is a lost cluster node whose run the executor resubmitted)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run.lock"
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock; return ``None`` or a message naming the live holder and how to clear
        the lock if that holder is not an ageest run."""
        me = _lock_text(socket.gethostname(), os.getpid())
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, pid, *start = self.path.read_text().split()
                except (OSError, ValueError):
                    host, pid, start = "", "0", []
                if not _lock_is_live(host, int(pid) if pid.isdigit() else 0, start):
                    self.path.unlink(missing_ok=True)  # stale, reused id, or unverifiable
                    continue
                since = f", started at {start[0]} clock ticks after boot" if start else ""
                return (f"{self.path} is held by process {pid} on {host}{since}; if that process "
                        f"is not an ageest run, delete {self.path} and run again")
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return None
        return f"{self.path}: could not take the lock"

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    @staticmethod
    def release_if_held_by(run_dir: str | os.PathLike, host: str, pid: int) -> bool:
        """Remove ``run_dir``'s lock when it names exactly process ``pid`` on ``host`` (a worker
        that is gone, so its redone run is not refused); True when removed."""
        path = Path(run_dir) / "run.lock"
        try:
            if path.read_text().split()[:2] == [host, str(pid)]:
                path.unlink(missing_ok=True)
                return True
        except OSError:  # no lock, or it vanished meanwhile
            pass
        return False


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, ``/proc/<pid>/stat`` field 22), or
    None where that cannot be read (no such process, no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "pid (comm)": field 22 is [19]


def _lock_text(host: str, pid: int) -> str:
    start = _process_start(pid)
    return f"{host} {pid}" + (f" {start}" if start else "")


def _lock_is_live(host: str, pid: int, start: list[str]) -> bool:
    """Whether a lock's process may still be training: same host, the id alive, and (when the
    lock recorded it) the same start time, so an id the system has since given to another
    process does not block the run for ever."""
    if host != socket.gethostname() or not _pid_alive(pid):
        return False
    return not start or start[0] == _process_start(pid)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(run_dir: Path, params: Mapping[str, Any]) -> str | None:
    """Why the finished run in ``run_dir`` is not the run ``params`` describe (what changed and
    the two hashes), or ``None`` when it is the same run. The one check behind the runner's
    refusal before a grid starts and the executor's refusal of a single task."""
    old_params = store.read_params(run_dir)
    old = old_params.get("params_hash")
    if old == params["params_hash"]:
        return None
    return f"{describe_change(old_params, params)} (params_hash {old} -> {params['params_hash']})"


def execute_run(task: dict[str, Any]) -> dict[str, Any]:
    """Executor entry point: run one task, never raising.

    Returns ``{"run_dir", "status": "done"|"skipped"|"failed", "error", "wall_time_s"}`` plus
    ``mae`` for finished runs. Finished runs with the same hash are skipped; unfinished ones
    resume or restart (see the module docstring); failures write ``error.txt``.
    """
    t0 = time.perf_counter()
    run_dir = Path(task["run_dir"])
    params = task["params"]
    result: dict[str, Any] = {"run_dir": str(run_dir), "status": "failed", "error": None,
                              "wall_time_s": 0.0}
    lock = None
    try:
        if store.is_finished(run_dir):
            stale = stale_reason(run_dir, params)
            if stale is None:
                result.update(status="skipped", mae=store.read_metrics(run_dir).get("mae"))
                return result
            raise StaleRunError(f"{run_dir} finished with other parameters: {stale}; "
                                "it is not overwritten")
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _RunLock(run_dir)
        held_by = lock.acquire()
        if held_by:
            lock = None  # not ours: nothing to release, and nothing of ours goes into that run
            result["error"] = f"{run_dir} is being trained by another process ({held_by})"
            return result
        old_params = run_dir / store.PARAMS
        if old_params.is_file() and store.read_params(run_dir).get("params_hash") != \
                params["params_hash"]:
            # unfinished work of other parameters: start over (nothing finished is lost)
            for child in run_dir.iterdir():
                if child.name != lock.path.name:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        (run_dir / store.ERROR).unlink(missing_ok=True)
        metrics = train_run(params, run_dir)  # writes params.yaml when the folder has none
        result.update(status="done", mae=metrics.get("mae"))
    except Exception:
        result["error"] = traceback.format_exc()
        try:
            from ageest.files import atomic_write_text

            atomic_write_text(run_dir / store.ERROR, result["error"])
        except OSError:
            pass  # the traceback is still in the result
    finally:
        if lock is not None:
            lock.release()
        result["wall_time_s"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m ageest.engine.run --params params.yaml --out DIR``: one run from a params YAML (the
    keys of a run's ``params.yaml``, see :func:`train_run`). Works under ``torchrun
    --nproc_per_node N -m ageest.engine.run ...``."""
    import yaml

    parser = argparse.ArgumentParser(prog="python -m ageest.engine.run", description=main.__doc__)
    parser.add_argument("--params", required=True, help="params YAML (a run's params.yaml)")
    parser.add_argument("--out", required=True, help="run directory to write")
    args = parser.parse_args(argv)
    path = Path(args.params)
    if not path.is_file():
        raise SystemExit(f"--params {path}: no such file")
    params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(params, dict):
        raise SystemExit(f"--params {path}: expected a mapping of parameter names to values")
    try:
        metrics = train_run(params, args.out)
        is_main = dist.is_main_process()
    finally:
        dist.shutdown()
    if is_main:
        print(f"{args.out}: test MAE {metrics['mae']:.3f} (epoch {metrics['best_epoch']}, "
              f"selected by {metrics['selected_by']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
