"""The aggregate table of a results folder: test metrics over folds per method, one block of
rows per grid run into the folder (``tables/aggregate``), which ``ageest run`` writes after a
grid. Above the runner: it reads the runs' stored predictions
(:func:`ageest.analysis.comparisons.aggregate`) and saves through the artefact writer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ageest.engine import store
from ageest.files import read_json, write_json


def aggregate(results_dir: str | os.PathLike, *, runs: Sequence[str | os.PathLike] | None = None,
              **options: Any) -> pd.DataFrame:
    """:func:`ageest.analysis.comparisons.aggregate` of the stored predictions of
    ``results_dir`` (or of the run folders ``runs``); ``options`` are its bootstrap and CS
    options."""
    from ageest.analysis.comparisons import aggregate as aggregate_predictions

    preds = (pd.concat([store.load_predictions(r) for r in runs], ignore_index=True)
             if runs is not None else store.load_predictions(results_dir))
    return aggregate_predictions(preds, **options)


def write_aggregate(results_dir: Path, runs: Sequence[str | os.PathLike]) -> Path:
    """Record this grid's runs (``tables/.grids/<id>.json``) and rewrite ``tables/aggregate``
    from every grid recorded in the folder, one block of rows per grid (column ``grid``), so
    grids run into one folder at once all appear, and runs of different settings never pool.
    A file lock makes the rewrites take turns: the last one includes every grid. Returns the
    Markdown table's path."""
    import fcntl
    import hashlib

    from ageest.pipeline.artefacts import save_table

    tables = results_dir / "tables"
    recorded = tables / ".grids"
    recorded.mkdir(parents=True, exist_ok=True)
    runs = sorted(str(r) for r in runs)
    grid_id = hashlib.sha256("\n".join(runs).encode("utf-8")).hexdigest()[:8]
    write_json(recorded / f"{grid_id}.json", {"runs": runs})
    with open(tables / ".aggregate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        frames = []
        for record in sorted(recorded.glob("*.json")):
            finished = [r for r in read_json(record)["runs"] if store.is_finished(r)]
            if finished:
                frames.append(aggregate(results_dir, runs=finished).assign(grid=record.stem))
        table = pd.concat(frames, ignore_index=True)
        table = table[["grid", *[c for c in table.columns if c != "grid"]]]
        save_table(table, results_dir, "aggregate",
                   f"Test metrics aggregated over folds, one block of rows per grid run into "
                   f"this folder ({len(frames)} grid(s); column grid). Rows with "
                   "test_selected=True chose their epoch on the test set (official protocol) "
                   "and are optimistic.")
    return tables / "aggregate.md"
