"""``ageest run``: train a grid of runs (dataset x protocol x loss x k x seed x fold), resumable,
then print the summary and the aggregate table (:mod:`ageest.engine.grids` runs it,
:mod:`ageest.pipeline.aggregate` tabulates it). One flag per grid key of
:data:`ageest.engine.grids.SCHEMA`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from ageest.engine import grids, store
from ageest.engine.grids import SCHEMA, check_stale, expand_grid, load_grid_config
from ageest.parameters import Setting, parse_text
from ageest.pipeline.aggregate import write_aggregate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ageest run``: one per grid key of :data:`SCHEMA` (``n_folds`` ->
    ``--n-folds``), its help and default from the schema, plus ``--config``, ``--dry-run`` and
    ``--no-aggregate``."""
    parser.add_argument("--config", help="grid YAML (keys as these flags with underscores); "
                        "flags override it")
    for key in SCHEMA.values():
        flag = "--" + key.name.replace("_", "-")
        default = key.default if key.default not in (None, [], {}) else None
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = key.help + (f" (default {shown})" if default is not None else "")
        kw: dict[str, Any] = {"help": text.replace("%", "%%"), "default": None}
        if key.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _flag_reader(key)
        if key.kind == "list":
            kw["metavar"] = "A,B"
            kw["help"] = kw["help"] + "; comma-separated"
        if key.choices and key.kind != "list":
            kw["choices"] = list(key.choices)
        parser.add_argument(flag, **kw)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the runs and their status; train nothing")
    parser.add_argument("--no-aggregate", action="store_true", help="skip the aggregate table")


def _flag_reader(setting: Setting):
    """argparse's ``type`` for a flag: the setting's text read by its declaration
    (:func:`ageest.parameters.parse_text`, the reader of ``-p`` too)."""
    def read(text: str) -> Any:
        try:
            return parse_text(setting, text, where="")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = setting.kind
    return read


def grid_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The grid of ``ageest run``: the ``--config`` YAML, then the flags given on top (a dict
    key such as ``--loss-kwargs`` is a YAML flow mapping, JSON included)."""
    grid = load_grid_config(args.config) if args.config else {}
    for name in SCHEMA:
        value = getattr(args, name, None)
        if value is not None:
            grid[name] = value
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
    summary = grids.run_grid(grid)
    print(format_summary(summary))
    if not args.no_aggregate:
        # the table of this grid's runs (and the other grids of the folder), never an older
        # one left there
        finished = summary[summary["status"].isin(["done", "skipped"])]
        if len(finished):
            written = write_aggregate(Path(summary.attrs["results_dir"]), summary["run_dir"])
            print(Path(written).read_text(encoding="utf-8"))
        else:
            print("no aggregate table: no run of this grid finished")
    return 1 if (summary["status"] == "failed").any() else 0


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
        # a run refused before it started (a live lock) wrote no error.txt: point only at one
        # that exists
        where = Path(row["run_dir"]) / store.ERROR
        lines.append(f"  FAILED {row['run_dir']}: {row['error']}"
                     + (f" (see {where})" if where.is_file() else ""))
    return "\n".join(lines)
