"""Speed-up of the Ray executor on this machine, and Ray's per-task overhead.

1. The same grid of short runs (8 runs: losses amr and ce x 4 folds, small CNN, 64 px), each
   into a fresh results folder, timed around :func:`ageest.engine.grids.run_grid`:

   - ``local 1 worker x 1 thread``: the local executor running one run after the other in one
     spawned worker process with one torch thread -- the same per-run resources as a Ray worker;
   - ``ray 2 workers x 1 CPU``: a private Ray instance with 2 CPUs on 127.0.0.1, one Ray task per
     run asking for 1 CPU, so two runs at once with one thread each. The instance is started
     before timing (its start-up is printed apart); each Ray worker's first task includes
     importing torch and ageest, as the local worker process's does;
   - for reference, the local executor's default with one worker (in this process, every core's
     threads: torch's own parallelism inside one run) and its process pool with two workers.

   Each is timed ``--repeat`` times, interleaved, and the minimum kept (a Ray instance and local
   worker processes are started afresh for every timing). The speed-up against the first is the
   gain from running two runs at once (target >= 1.6x on
   2 cores, at most 2x). The one against the default says how that compares with letting torch
   use both cores inside each run, which for a small CNN scales less than 2x, so a run needs
   to last long enough for both to amortise the workers' start-up.

2. Ray's overhead per task: the executor running tasks whose function returns at once (so the
   time is scheduling, argument and result transfer, and progress tracking), and a bare
   ``ray.remote`` no-op for reference.

Usage::

    python benchmarks/bench_ray.py                       # 20 epochs per run
    python benchmarks/bench_ray.py --epochs 5 --size 32 --empty-tasks 500

Other processes on the machine change every figure; the printed load average says how busy it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ageest.commands.run import format_summary
from ageest.data.synthetic import write_fgnet_like
from ageest.engine import grids
from ageest.engine.executors import LocalExecutor, available_cpus

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback


def empty_task(task: dict) -> dict:
    """A run that does nothing (defined in ``__main__``, so Ray ships it by value)."""
    return {"run_dir": None, "status": "done", "error": None, "wall_time_s": 0.0}


def timed_grid(grid: dict, results: Path, executor) -> float:
    t0 = time.perf_counter()
    summary = grids.run_grid({**grid, "results_dir": str(results)}, executor=executor,
                              on_event=lambda event: None)
    wall = time.perf_counter() - t0
    if not (summary["status"] == "done").all():
        raise RuntimeError("not every run finished:\n" + format_summary(summary))
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=4, help="folds per loss (2 losses)")
    parser.add_argument("--empty-tasks", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repeats (min kept)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    os.environ["PYTHONWARNINGS"] = "ignore"  # spawned workers: no synthetic-data manifest notes
    import ray

    from ageest.engine.ray_executor import RayExecutor

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

        threads = LocalExecutor(workers=1).threads
        configs = {  # name -> executor factory; a fresh executor (and Ray instance) per timing
            "local 1 worker x 1 thread":
                lambda: LocalExecutor(workers=1, threads=1, in_process=False),
            "ray 2 workers x 1 CPU": lambda: RayExecutor(num_cpus_per_task=1),
            f"local 1 worker x {threads} threads": lambda: LocalExecutor(workers=1),
            "local 2 workers x 1 thread": lambda: LocalExecutor(workers=2, threads=1),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        starts: list[float] = []
        # Interleaved repeats, minimum kept: other processes on a shared machine slow single
        # timings by up to several times.
        for rep in range(args.repeat):
            for name, make in configs.items():
                if name.startswith("ray"):
                    t0 = time.perf_counter()
                    ray.init(address="local", num_cpus=2, include_dashboard=False,
                             log_to_driver=False, _node_ip_address="127.0.0.1")
                    starts.append(time.perf_counter() - t0)
                try:
                    wall = timed_grid(grid, tmp / f"{name.replace(' ', '_')}-{rep}", make())
                finally:
                    if name.startswith("ray"):
                        ray.shutdown()  # fresh workers next time, as for the local process
                times[name].append(wall)
                print(f"  repeat {rep + 1}: {name:30s} {wall:6.1f} s", flush=True)
        best = {name: min(t) for name, t in times.items()}
        print(f"best of {args.repeat} (Ray start-up, not included: {min(starts):.1f} s):")
        for name, wall in best.items():
            print(f"  {name:30s} {wall:6.1f} s", flush=True)
        t_ray = best["ray 2 workers x 1 CPU"]
        print(f"speed-up ray (2 workers) vs local 1 worker x 1 thread: "
              f"{best['local 1 worker x 1 thread'] / t_ray:.2f}x (target >= 1.6x, at most 2x)")
        print(f"speed-up ray (2 workers) vs local 1 worker x {threads} threads (default): "
              f"{best[f'local 1 worker x {threads} threads'] / t_ray:.2f}x")
        print(f"ray vs the local process pool (2 workers each): "
              f"{best['local 2 workers x 1 thread'] / t_ray:.2f}x (1 = Ray costs nothing extra "
              f"on one machine)", flush=True)

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        try:
            # per-task overhead of the executor: fixed part (1 task) and marginal part
            ex_fast = RayExecutor(num_cpus_per_task=1, poll_s=0.05)
            t0 = time.perf_counter()
            ex_fast.run([{}], empty_task)
            t_single = time.perf_counter() - t0
            t0 = time.perf_counter()
            ex_fast.run([{} for _ in range(args.empty_tasks)], empty_task)
            t_many = time.perf_counter() - t0
            per_task = (t_many - t_single) / max(1, args.empty_tasks - 1)
            print(f"RayExecutor.run overhead: {t_single * 1e3:.0f} ms per call (tracker actor, "
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
