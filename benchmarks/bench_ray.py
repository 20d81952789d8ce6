"""Speed-up of the Ray executor on this machine, and Ray's per-task overhead.

1. The same grid of short runs, each into a fresh results folder, timed around
   :func:`ageest.runner.run_grid`:

   - ``local``, ``--workers 1``: one run after the other in this process, with every core's
     torch threads (the default local set-up);
   - ``ray``, two workers: a private Ray instance with 2 CPUs on 127.0.0.1, one Ray task per run
     asking for 1 CPU (so two runs at once, one torch thread each). The instance is started
     before timing (its start-up is printed separately); each Ray worker's first task includes
     importing torch and ageest, as it would on a cluster.

2. Ray's overhead per task: the executor running tasks whose function returns at once (so the
   time is scheduling, argument and result transfer, and progress tracking), and a bare
   ``ray.remote`` no-op for reference.

Usage::

    python benchmarks/bench_ray.py                      # 8 runs: amr, ce x 4 folds, 64 px
    python benchmarks/bench_ray.py --epochs 2 --size 32 --empty-tasks 500

Target: speed-up >= 1.6x with two workers on 2 cores. A third timing, the local executor with one
worker and one thread (in a spawned process, like Ray's workers), separates the gain from running
two runs at once (at most 2x) from how torch scales over two threads for a small CNN. Other
processes on the machine change all of these; the printed load average says how busy it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ageest import runner
from ageest.data.synthetic import write_fgnet_like
from ageest.executors import LocalExecutor, available_cpus

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback


def empty_task(task: dict) -> dict:
    """A run that does nothing (defined in ``__main__``, so Ray ships it by value)."""
    return {"run_dir": None, "status": "done", "error": None, "wall_time_s": 0.0}


def timed_grid(grid: dict, results: Path, executor) -> float:
    t0 = time.perf_counter()
    summary = runner.run_grid({**grid, "results_dir": str(results)}, executor=executor,
                              aggregate_results=False, on_event=lambda event: None)
    wall = time.perf_counter() - t0
    if not (summary["status"] == "done").all():
        raise RuntimeError("not every run finished:\n" + runner.format_summary(summary))
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=4, help="folds per loss (2 losses)")
    parser.add_argument("--empty-tasks", type=int, default=300)
    parser.add_argument("--no-one-thread-baseline", dest="one_thread_baseline",
                        action="store_false",
                        help="skip timing the local executor with 1 worker and 1 thread (which "
                             "separates running two at once from how torch scales over threads)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    os.environ["PYTHONWARNINGS"] = "ignore"  # spawned workers: no synthetic-data manifest notes
    import ray

    from ageest.ray_executor import RayExecutor

    with tempfile.TemporaryDirectory(prefix="ageest-bench-ray-") as tmp:
        tmp = Path(tmp)
        data = write_fgnet_like(tmp / "fg", seed=0, size=args.size, n_subjects=20,
                                n_images=200)
        grid = {"dataset": "fgnet", "data_dir": str(data), "protocol": "group-kfold",
                "n_folds": max(2, args.folds), "folds": list(range(args.folds)),
                "losses": ["amr", "ce"], "epochs": args.epochs, "batch_size": 32,
                "image_size": args.size, "synthetic_size": args.size, "quiet": True}
        n_runs = 2 * args.folds
        print(f"grid: {n_runs} runs (amr, ce x {args.folds} folds), {args.epochs} epochs, "
              f"{args.size} px, small_cnn; {available_cpus()} CPUs; load average before: "
              f"{os.getloadavg()[0]:.2f}", flush=True)

        t_local = timed_grid(grid, tmp / "local", LocalExecutor(workers=1))
        print(f"local --workers 1 ({LocalExecutor(workers=1).threads} threads): "
              f"{t_local:.1f} s", flush=True)

        t_one_thread = None
        if args.one_thread_baseline:
            t_one_thread = timed_grid(grid, tmp / "local1", LocalExecutor(workers=1, threads=1,
                                                                          in_process=False))
            print(f"local --workers 1 --threads 1: {t_one_thread:.1f} s", flush=True)

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        t_start = time.perf_counter() - t0
        try:
            ex = RayExecutor(num_cpus_per_task=1)
            t_ray = timed_grid(grid, tmp / "ray", ex)
            print(f"ray, 2 workers x 1 CPU: {t_ray:.1f} s (Ray start-up, not included: "
                  f"{t_start:.1f} s)", flush=True)
            print(f"speed-up ray (2 workers) vs local (1 worker): {t_local / t_ray:.2f}x "
                  f"(target >= 1.6x)", flush=True)
            if t_one_thread is not None:
                print(f"speed-up ray (2 workers x 1 thread) vs local (1 worker x 1 thread): "
                      f"{t_one_thread / t_ray:.2f}x (at most 2x: the gain from running two at "
                      f"once alone)", flush=True)

            # per-task overhead of the executor: fixed part (1 task) and marginal part
            ex_fast = RayExecutor(num_cpus_per_task=1, poll_s=0.05)
            t0 = time.perf_counter()
            ex_fast.run([{}], empty_task)
            t_one = time.perf_counter() - t0
            t0 = time.perf_counter()
            ex_fast.run([{} for _ in range(args.empty_tasks)], empty_task)
            t_many = time.perf_counter() - t0
            per_task = (t_many - t_one) / max(1, args.empty_tasks - 1)
            print(f"RayExecutor.run overhead: {t_one * 1e3:.0f} ms per call (tracker actor, "
                  f"first task), then {per_task * 1e3:.2f} ms per task "
                  f"({args.empty_tasks} empty tasks in {t_many:.2f} s)", flush=True)

            noop = ray.remote(num_cpus=1)(lambda: None)
            ray.get([noop.remote() for _ in range(20)])  # warm workers
            t0 = time.perf_counter()
            ray.get([noop.remote() for _ in range(args.empty_tasks)])
            bare = (time.perf_counter() - t0) / args.empty_tasks
            print(f"bare ray.remote no-op: {bare * 1e3:.2f} ms per task", flush=True)
        finally:
            ray.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
