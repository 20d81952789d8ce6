"""Executors run a list of independent tasks (one training run each) and collect their results.

The runner (:mod:`ageest.engine.grids`) only talks to the :class:`Executor` interface, so a cluster
backend is one more class: ``ageest.engine.ray_executor.RayExecutor`` is registered in :data:`EXECUTORS`
the same way as the local process pool here.

Contract
--------
- ``tasks`` are JSON-able run specifications (dicts).
- ``fn`` is a top-level importable function (``ageest.engine.run.execute_run``) that performs one task
  and returns a JSON-able dict ``{"run_dir", "status": "done"|"skipped"|"failed", "error",
  "wall_time_s"}``. It catches its own exceptions, so a failed run never stops the others.
- An executor turns a worker process that dies (segfault, out-of-memory kill, SIGKILL) into a
  ``"failed"`` result for the task it was running (after ``retries`` further attempts).
- ``on_event`` receives progress dicts: counts ``done``, ``skipped``, ``failed``, ``running``,
  ``pending``, ``total`` and the ``last`` result (``None`` for a "started" event).
- ``run`` returns one result per task, in task order.

This module imports no torch at import time: worker processes set their thread and GPU
environment before torch is first imported in them.
"""

from __future__ import annotations

import abc
import importlib
import os
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

EXECUTORS: dict[str, str] = {
    "local": "ageest.engine.executors:LocalExecutor",
    "ray": "ageest.engine.ray_executor:RayExecutor",
}


class Executor(abc.ABC):
    """Runs tasks with a function and reports progress; see the module docstring for the contract."""

    @abc.abstractmethod
    def run(self, tasks: list[dict], fn: Callable[[dict], dict], *,
            on_event: Callable[[dict], None] | None = None) -> list[dict]: ...


def list_executors() -> list[str]:
    """Names accepted by :func:`get_executor`, sorted."""
    return sorted(EXECUTORS)


def get_executor(name: str, **kwargs: Any) -> Executor:
    """Build executor ``name`` (``"local"`` or ``"ray"``) with ``kwargs``; imported lazily.

    >>> get_executor("local", workers=1).workers
    1
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {list_executors()}")
    module, _, attr = EXECUTORS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ImportError(
            f"executor {name!r} needs {module}, which failed to import ({exc}); for 'ray' install "
            "the optional dependency: pip install 'ageest[ray]'"
        ) from exc
    return cls(**kwargs)


def available_cpus() -> int:
    """CPU cores this process may use (affinity-aware where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def failed_result(task: dict, error: str, wall_time_s: float = 0.0) -> dict:
    """The result an executor records for a task whose worker died or could not run it."""
    return {
        "run_dir": task.get("run_dir"),
        "status": "failed",
        "error": error,
        "wall_time_s": wall_time_s,
    }


class _Progress:
    """Counts for ``on_event``; ``done`` includes ``skipped``, as both need no more work."""

    def __init__(self, total: int, on_event: Callable[[dict], None] | None) -> None:
        self.total, self.on_event = total, on_event
        self.done = self.skipped = self.failed = self.running = 0

    def started(self) -> None:
        self.running += 1
        self._emit(None)

    def finished(self, result: dict) -> None:
        self.running -= 1
        status = result.get("status")
        if status == "failed":
            self.failed += 1
        else:
            self.done += 1
            self.skipped += status == "skipped"
        self._emit(result)

    def _emit(self, last: dict | None) -> None:
        if self.on_event is None:
            return
        pending = self.total - self.done - self.failed - self.running
        self.on_event({
            "done": self.done, "skipped": self.skipped, "failed": self.failed,
            "running": self.running, "pending": pending, "total": self.total, "last": last,
        })


def _call_safely(fn: Callable[[dict], dict], task: dict) -> dict:
    """``fn(task)``, turning an exception that escaped ``fn`` into a failed result."""
    t0 = time.perf_counter()
    try:
        return fn(task)
    except Exception:  # fn should catch its own; this keeps one bad task from stopping the pool
        return failed_result(task, traceback.format_exc(), time.perf_counter() - t0)


def _worker_main(env: dict[str, str], threads: int, fn: Callable[[dict], dict], conn: Any) -> None:
    """Loop of one worker process: apply ``env`` and the thread limit, then run the tasks received
    on ``conn`` until it receives ``None``, sending each result back on the same pipe.

    One pipe per worker (not a shared queue): a worker killed mid-write cannot leave a lock held
    that would block the others.
    """
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent went away
            return
        if item is None:
            return
        index, task = item
        conn.send((index, _call_safely(fn, task)))


class LocalExecutor(Executor):
    """``workers`` processes on this machine, each limited to its share of the CPU threads (or one
    GPU each when several are visible).

    Parameters
    ----------
    workers : int
        Trainings run at once. ``1`` runs the tasks in this process (no isolation, easiest to
        debug) unless ``in_process=False``.
    threads : int, optional
        Torch/OpenMP threads per worker; default ``max(1, cpus // workers)``.
    gpus : list of int, optional
        GPU indices to hand out round-robin (``CUDA_VISIBLE_DEVICES`` of each worker). Default:
        every visible GPU when more than one is visible, else none (workers share what they see).
    retries : int
        Further attempts of a task whose worker process died (not of a task that raised: those
        are deterministic failures and are recorded once).
    start_method : str
        ``"spawn"`` (default) or ``"forkserver"``; never ``fork`` after torch started threads.
    in_process : bool, optional
        Run in the calling process; default ``workers == 1``.
    """

    def __init__(self, workers: int = 1, *, threads: int | None = None,
                 gpus: list[int] | None = None, retries: int = 0, start_method: str = "spawn",
                 in_process: bool | None = None) -> None:
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self.workers = int(workers)
        # by default the workers share the cores (threads x workers <= cores): two trainings of
        # two threads each on two cores ran 5-10x slower than one (measured)
        self.threads = int(threads) if threads else max(1, available_cpus() // self.workers)
        if threads and self.threads * self.workers > available_cpus():
            warnings.warn(f"workers={self.workers} x threads={self.threads} exceeds the "
                          f"{available_cpus()} CPU cores of this process: the runs will "
                          "slow each other down; leave threads unset to share the cores",
                          stacklevel=2)
        self.gpus = gpus
        self.retries = int(retries)
        self.start_method = start_method
        self.in_process = self.workers == 1 if in_process is None else bool(in_process)

    def _gpu_list(self) -> list[int]:
        if self.gpus is not None:
            return list(self.gpus)
        try:
            import torch

            n = torch.cuda.device_count()  # NVML query; does not initialise CUDA here
        except Exception:  # a broken CUDA install must not stop CPU runs
            n = 0
        return list(range(n)) if n > 1 else []

    def _worker_env(self, slot: int, gpus: list[int]) -> dict[str, str]:
        env = {k: str(self.threads) for k in
               ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
        return env

    def run(self, tasks: list[dict], fn: Callable[[dict], dict], *,
            on_event: Callable[[dict], None] | None = None) -> list[dict]:
        progress = _Progress(len(tasks), on_event)
        if self.in_process:
            results = []
            for task in tasks:
                progress.started()
                results.append(_call_safely(fn, task))
                progress.finished(results[-1])
            return results
        return self._run_pool(tasks, fn, progress)

    def _run_pool(self, tasks: list[dict], fn: Callable[[dict], dict],
                  progress: _Progress) -> list[dict]:
        pool = _Pool(self, tasks, fn, progress)
        try:
            for slot in range(min(self.workers, len(tasks))):
                pool.start_worker(slot)
                pool.dispatch(slot)
            while pool.busy():
                pool.collect()
        finally:
            pool.close()
        return [r for r in pool.results if r is not None]


class _Pool:
    """The worker processes of one :meth:`LocalExecutor.run`: which task each runs, the tasks
    left (a stack: ``pop()`` gives task order), the attempts per task and the results."""

    def __init__(self, executor: LocalExecutor, tasks: list[dict],
                 fn: Callable[[dict], dict], progress: _Progress) -> None:
        import multiprocessing as mp

        self.ex, self.tasks, self.fn, self.progress = executor, tasks, fn, progress
        self.ctx = mp.get_context(executor.start_method)
        self.gpus = executor._gpu_list()
        self.results: list[dict | None] = [None] * len(tasks)
        self.attempts = [0] * len(tasks)
        self.todo = list(range(len(tasks)))[::-1]
        self.workers: dict[int, _Worker] = {}

    def start_worker(self, slot: int) -> None:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(
            target=_worker_main, name=f"ageest-worker-{slot}", daemon=True,
            args=(self.ex._worker_env(slot, self.gpus), self.ex.threads, self.fn, child_conn),
        )
        proc.start()
        child_conn.close()  # the parent keeps only its end, so EOF means the worker died
        self.workers[slot] = _Worker(proc, parent_conn)

    def dispatch(self, slot: int) -> None:
        """Give the worker in ``slot`` the next task when it is idle and one is left."""
        w = self.workers[slot]
        if self.todo and w.index is None:
            w.index, w.t0 = self.todo.pop(), time.perf_counter()
            self.attempts[w.index] += 1
            w.conn.send((w.index, self.tasks[w.index]))
            self.progress.started()

    def busy(self) -> bool:
        return any(w.index is not None for w in self.workers.values())

    def collect(self) -> None:
        """Wait (up to a second) for results, record them, and hand out the next tasks."""
        from multiprocessing.connection import wait

        by_conn = {w.conn: slot for slot, w in self.workers.items() if w.index is not None}
        for conn in wait(list(by_conn), timeout=1.0):
            slot = by_conn[conn]
            try:
                index, result = conn.recv()
            except (EOFError, OSError):
                self.worker_died(slot)
                continue
            self.workers[slot].index = None
            self.results[index] = result
            self.progress.finished(result)
        for slot in list(self.workers):
            self.dispatch(slot)

    def worker_died(self, slot: int) -> None:
        """Retry the dead worker's task (within ``retries``) or record it as failed, and start
        a new worker in its slot while tasks are left."""
        w = self.workers.pop(slot)
        w.proc.join(timeout=5)
        index, w.index = w.index, None
        if self.attempts[index] <= self.ex.retries:
            self.progress.running -= 1
            self.todo.append(index)
        else:
            self.results[index] = failed_result(
                self.tasks[index],
                f"worker process {w.proc.name} (pid {w.proc.pid}) died with exit code "
                f"{w.proc.exitcode} while running this task (a negative code is the signal "
                f"number: -9 = SIGKILL, often the out-of-memory killer)",
                time.perf_counter() - w.t0,
            )
            self.progress.finished(self.results[index])
        if self.todo:
            self.start_worker(slot)

    def close(self) -> None:
        """Ask every worker to stop, then end those that do not."""
        for w in self.workers.values():
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self.workers.values():
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=5)
            w.conn.close()


class _Worker:
    """A worker process, its pipe, and the task it is running (``index``, started at ``t0``)."""

    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc, self.conn = proc, conn
        self.index: int | None = None
        self.t0 = 0.0
