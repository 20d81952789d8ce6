"""Speed-up of the local executor: the same grid of 4 short runs with ``--workers 1`` and
``--workers 2``, each into a fresh results folder, wall time of :func:`ageest.engine.grids.run_grid`.

``--workers 1`` trains in this process with every core's threads; ``--workers 2`` trains two runs
at once in spawned processes with half the threads each (their start-up, about a torch import and
a dataset load, is included, so runs must last several seconds for it to pay off). Small CNNs do
not use two threads fully, so running two at once should win; on a machine that other processes
keep busy, two OpenMP threads per process also lose much time waiting for each other, which
``--single-thread`` measures separately.

Usage::

    python benchmarks/bench_runner.py                   # 4 runs: amr, ce x 2 folds, 64 px
    python benchmarks/bench_runner.py --epochs 6 --size 32

Grid: synthetic-fgnet, group-kfold (5 folds), folds 0 and 1, losses amr and ce, seed 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ageest.commands.run import format_summary
from ageest.engine import grids


def timed_grid(results: Path, workers: int, args: argparse.Namespace,
               threads: int | None = None) -> float:
    grid = {"dataset": "synthetic-fgnet", "protocol": "group-kfold", "n_folds": 5,
            "folds": [0, 1], "losses": ["amr", "ce"], "seeds": [0], "epochs": args.epochs,
            "batch_size": 32, "image_size": args.size, "synthetic_size": args.size,
            "workers": workers, "threads": threads, "quiet": True,
            "results_dir": str(results)}
    t0 = time.perf_counter()
    summary = grids.run_grid(grid)
    wall = time.perf_counter() - t0
    if not (summary["status"] == "done").all():
        raise RuntimeError(f"workers={workers}: not every run finished:\n"
                           + format_summary(summary))
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--single-thread", action="store_true",
                        help="also time --workers 1 --threads 1 (separates the gain of two "
                             "processes from the cost of two threads on a busy machine)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    # generate the synthetic data before timing anything
    from ageest.data import get_dataset

    get_dataset("synthetic-fgnet", size=args.size)
    with tempfile.TemporaryDirectory(prefix="ageest-bench-runner-") as tmp:
        t1 = timed_grid(Path(tmp) / "w1", 1, args)
        print(f"--workers 1: {t1:.1f} s for 4 runs", flush=True)
        t2 = timed_grid(Path(tmp) / "w2", 2, args)
        print(f"--workers 2: {t2:.1f} s for 4 runs", flush=True)
        t1s = timed_grid(Path(tmp) / "w1t1", 1, args, threads=1) if args.single_thread else None
    print(f"speed-up workers 2 vs 1: {t1 / t2:.2f}x")
    if t1s is not None:
        print(f"--workers 1 --threads 1: {t1s:.1f} s for 4 runs (speed-up of workers 2 over it: "
              f"{t1s / t2:.2f}x; over workers 1 with all threads: {t1 / t1s:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
