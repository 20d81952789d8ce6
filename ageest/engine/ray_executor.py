"""Run the grid on a Ray cluster: one Ray task per training run.

:class:`RayExecutor` implements the :class:`ageest.engine.executors.Executor` interface, so the runner
(``ageest run ... --executor ray --address auto``) and the training notebook use it exactly like
the local process pool: same run specs, same ``fn`` (``ageest.engine.run.execute_run``), same results.

- **Resources.** Each run is one Ray task that asks for ``num_gpus_per_task`` GPUs (default 1 when
  the run's device is CUDA) and ``num_cpus_per_task`` CPUs; Ray's scheduler packs the runs onto the
  cluster. Inside the task torch uses as many threads as the task holds CPUs.
- **Storage.** Every run writes its run directory itself, so the results directory must be on a
  filesystem that the driver and every worker node see at the same path (NFS, Lustre, a mounted
  bucket). Before any run starts, one probe task per node writes there and the driver reads it
  back; a node that cannot raises :class:`SharedStorageError` naming the node and the path.
- **Failures.** A run that fails inside ``fn`` is a ``"failed"`` result carrying its traceback. A
  run whose worker process or node is lost (SIGKILL, out-of-memory kill, node pre-emption) is
  submitted again, up to ``retries`` times; since ``fn`` skips runs whose ``metrics.json`` exists
  and redoes unfinished ones, a redone run ends exactly as it would have.
- **Progress.** ``on_event`` receives the same counts as the local executor (``done``,
  ``skipped``, ``failed``, ``running``, ``pending``, ``total``, ``last``) plus ``event`` and, for
  running runs, which node and process run them. "Running" means the task has started on a worker
  (reported by a small tracker actor); "pending" ones wait for resources.

Ray is an optional dependency (``pip install 'ageest[ray]'``); this module imports it lazily so the
rest of the package never needs it. See ``docs/cluster.md`` for starting clusters.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ageest.engine.executors import Executor, available_cpus, failed_result

log = logging.getLogger(__name__)

# Default CPUs per GPU run: data loading and augmentation of one GPU training.
DEFAULT_CPUS_PER_GPU_TASK = 4


class SharedStorageError(RuntimeError):
    """A Ray worker cannot write the results directory, or writes somewhere the driver cannot see."""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "the Ray executor needs Ray: pip install 'ageest[ray]' (or pip install 'ray>=2.40')"
        ) from exc
    return ray


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean the process or node running a task went away (the run may be redone),
    as opposed to an exception raised by the task's code."""
    import ray.exceptions as rex

    return (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
            rex.ObjectLostError, rex.OwnerDiedError, rex.OutOfMemoryError)


def _release_lock_of(run_dir: str | None, host: str | None, pid: int | None) -> bool:
    """Remove ``run_dir``'s lock when it names exactly the lost worker (the lock's format is
    :class:`ageest.engine.run._RunLock`'s), so the redone run, possibly on another node, is not refused
    as "being trained by another process". True when removed."""
    if not run_dir or host is None or pid is None:
        return False
    from ageest.engine.run import _RunLock

    return _RunLock.release_if_held_by(run_dir, host, pid)


class _Tracker:
    """Ray actor that records which tasks have started and where (host, pid, attempt)."""

    def __init__(self) -> None:
        self.started: dict[int, dict] = {}

    def start(self, index: int, attempt: int, host: str, node_ip: str, pid: int) -> None:
        self.started[index] = {"attempt": attempt, "host": host, "node_ip": node_ip, "pid": pid}

    def snapshot(self) -> dict[int, dict]:
        return dict(self.started)


def _run_task(fn: Callable[[dict], dict], task: dict, threads: int, tracker: Any,
              index: int, attempt: int) -> dict:
    """Body of one Ray task: limit torch threads to the task's CPUs, report the start, run ``fn``."""
    import ray
    import torch

    # Ray sets OMP_NUM_THREADS from num_cpus; torch's intra-op pool must follow it too, because a
    # worker process is reused by later tasks (whose CPU share may differ).
    torch.set_num_threads(max(1, threads))
    if tracker is not None:
        tracker.start.remote(index, attempt, socket.gethostname(),
                             ray.util.get_node_ip_address(), os.getpid())
    t0 = time.perf_counter()
    try:
        return fn(task)
    except Exception:  # fn catches its own errors; this keeps an escaped one a result, not a crash
        return failed_result(task, traceback.format_exc(), time.perf_counter() - t0)


def _probe_storage(directory: str, token: str) -> dict:
    """Probe task on one node: read the driver's token file and write one of our own."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    where = {"host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
             "node_id": node, "error": None, "file": None}
    folder = Path(directory)
    try:
        seen = (folder / f".ageest-probe-{token}").read_text()
        if seen != token:
            raise OSError(f"the driver's probe file in {folder} holds {seen!r}, not {token!r}")
        mine = folder / f".ageest-probe-{token}-{node[:12]}"
        mine.write_text(node)
        where["file"] = str(mine)
    except OSError as exc:
        where["error"] = f"{type(exc).__name__}: {exc}"
    return where


def check_shared_storage(directory: str | os.PathLike, *, node_ids: list[str] | None = None,
                         timeout_s: float = 120.0, visibility_s: float = 10.0) -> list[dict]:
    """Check that every alive Ray node sees ``directory`` (at the same path) and can write it.

    The driver writes a token file; one zero-CPU task pinned to each alive node reads the token and
    writes a file of its own, which the driver must then see (a node-local directory of the same
    name would pass a write test but hide the results from everyone else). Probe files are removed.

    Parameters
    ----------
    directory : path
        The results directory (created by the driver when missing).
    node_ids : list of str, optional
        Probe these Ray nodes only (default: every alive node).
    timeout_s : float
        How long to wait for the probe tasks.
    visibility_s : float
        How long the driver waits for a worker's file to appear (NFS attribute caching).

    Returns
    -------
    list of dict
        One entry per node: ``host``, ``node_ip``, ``node_id``.

    Raises
    ------
    SharedStorageError
        Naming the node and the path, when a node cannot read or write there.
    """
    ray = _import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(directory).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        mine = folder / f".ageest-probe-{token}"
        mine.write_text(token)
    except OSError as exc:
        raise SharedStorageError(
            f"the driver cannot write the results directory {folder}: {exc}. Choose a writable "
            f"results directory on storage shared with every Ray node (see docs/cluster.md)."
        ) from exc
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_storage)
    nodes = [n for n in ray.nodes() if n.get("Alive")
             and (node_ids is None or n["NodeID"] in node_ids)]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(folder), token) for n in nodes]
    problems, seen_nodes, leftovers = [], [], []
    try:
        try:
            answers = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            raise SharedStorageError(
                f"the storage probe tasks did not finish within {timeout_s:.0f} s; cannot check "
                f"that every Ray node can write {folder}"
            ) from exc
        for ans in answers:
            name = f"{ans['host']} ({ans['node_ip']})"
            if ans["error"]:
                problems.append(f"node {name}: {ans['error']}")
                continue
            leftovers.append(Path(ans["file"]))
            deadline = time.monotonic() + visibility_s
            while not leftovers[-1].is_file() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not leftovers[-1].is_file():
                problems.append(
                    f"node {name} wrote {ans['file']} but the driver does not see that file: "
                    f"the node has a local directory of the same name, not the shared one"
                )
                continue
            seen_nodes.append({k: ans[k] for k in ("host", "node_ip", "node_id")})
    finally:
        for path in [mine, *leftovers]:
            path.unlink(missing_ok=True)
    if problems:
        raise SharedStorageError(
            f"the results directory {folder} must be on a filesystem shared by the driver and "
            f"every Ray worker, at the same path, writable by them (NFS, Lustre, a mounted "
            f"bucket); see docs/cluster.md. Problems: " + "; ".join(problems)
        )
    return seen_nodes


class RayExecutor(Executor):
    """Each task is one Ray task on a Ray cluster; results go to the shared run directories.

    Parameters
    ----------
    address : str, optional
        ``None``: connect to ``$RAY_ADDRESS`` when set, else start a private Ray instance on this
        machine (bound to 127.0.0.1, stopped at the end of :meth:`run`). ``"auto"``: the cluster
        started with ``ray start`` on this machine. ``"host:port"``: that cluster's GCS (driver
        on a cluster node). ``"ray://host:10001"``: Ray Client from outside the cluster. When Ray
        is already initialised in this process (a notebook), that connection is used as is.
    num_cpus_per_task : float, optional
        CPUs each run reserves, and torch threads inside it. Default 1 for CPU runs and
        ``DEFAULT_CPUS_PER_GPU_TASK`` (4) for GPU runs.
    num_gpus_per_task : float, optional
        GPUs each run reserves. Default: 1 when the run's device is CUDA (``task["device"]`` or
        ``task["params"]["device"]`` starts with ``"cuda"``), else 0.
    retries : int
        Further attempts of a run whose worker process or node was lost.
    check_storage : bool
        Probe the shared results directory from every node before starting (recommended).
    storage_dir : path, optional
        Directory to probe; default: the common parent of the tasks' ``run_dir``.
    runtime_env : dict, optional
        Ray runtime environment for the tasks (e.g. ``{"py_modules": [...]}`` when the workers
        lack ``ageest``); see Ray's documentation.
    log_to_driver : bool
        Forward the workers' stdout/stderr to this process (noisy with many runs; Ray keeps them
        in ``/tmp/ray/session_latest/logs`` on each node either way).
    poll_s : float
        Seconds between progress updates while no run finishes.
    wait_for_nodes_s : float or None
        When no alive node can hold a run (workers still joining), wait this long for one, then
        raise naming the request and the nodes. ``None``: submit anyway (autoscaling clusters,
        whose nodes start when runs are pending). Only nodes that can hold a run are probed
        for the shared storage.
    progress_every_s : float or None
        Also print the counts (done / running / pending / failed) to stderr at most this often
        while they change, for long cluster jobs whose runs take hours; ``None``: only
        ``on_event``.
    init_kwargs : dict, optional
        Further keyword arguments for ``ray.init``.
    """

    def __init__(self, address: str | None = None, *, num_cpus_per_task: float | None = None,
                 num_gpus_per_task: float | None = None, retries: int = 3,
                 check_storage: bool = True, storage_dir: str | os.PathLike | None = None,
                 runtime_env: dict | None = None, log_to_driver: bool = False,
                 poll_s: float = 1.0, wait_for_nodes_s: float | None = 300.0,
                 progress_every_s: float | None = 60.0, init_kwargs: dict | None = None) -> None:
        for name, value in (("num_cpus_per_task", num_cpus_per_task),
                            ("num_gpus_per_task", num_gpus_per_task)):
            if value is not None and float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if int(retries) < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.address = address or None
        self.num_cpus_per_task = num_cpus_per_task
        self.num_gpus_per_task = num_gpus_per_task
        self.retries = int(retries)
        self.check_storage = bool(check_storage)
        self.storage_dir = storage_dir
        self.runtime_env = runtime_env
        self.log_to_driver = bool(log_to_driver)
        self.poll_s = float(poll_s)
        self.wait_for_nodes_s = None if wait_for_nodes_s is None else float(wait_for_nodes_s)
        self.progress_every_s = progress_every_s
        self.init_kwargs = dict(init_kwargs or {})

    # ----------------------------------------------------------------------------- connection
    def connect(self) -> bool:
        """Initialise Ray per ``address`` unless it already is; True when this call initialised it
        (so :meth:`run` disconnects, and stops a private instance, at the end)."""
        ray = _import_ray()
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"log_to_driver": self.log_to_driver, **self.init_kwargs}
        if self.runtime_env is not None:
            kwargs.setdefault("runtime_env", self.runtime_env)
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            # A private single-machine cluster: loopback only, no dashboard, all local cores.
            kwargs.setdefault("num_cpus", available_cpus())
            kwargs.setdefault("include_dashboard", False)
            kwargs.setdefault("_node_ip_address", "127.0.0.1")
            address = "local"
        ray.init(address=address, **kwargs)
        return True

    # ----------------------------------------------------------------------------- resources
    @staticmethod
    def _device(task: dict) -> str:
        params = task.get("params") if isinstance(task.get("params"), dict) else {}
        return str(task.get("device") or params.get("device") or "cpu")

    def resources(self, task: dict) -> tuple[float, float]:
        """(num_cpus, num_gpus) the Ray task of ``task`` asks for."""
        device = self._device(task)
        cuda = device.startswith("cuda")
        if cuda and device not in ("cuda", "cuda:0"):
            raise ValueError(
                f"run {task.get('run_dir')}: device {device!r}; with the Ray executor use "
                f"device 'cuda': Ray gives each run its own GPU(s) through CUDA_VISIBLE_DEVICES, "
                f"where they are numbered from 0"
            )
        gpus = self.num_gpus_per_task if self.num_gpus_per_task is not None else (1 if cuda else 0)
        default_cpus = DEFAULT_CPUS_PER_GPU_TASK if gpus else 1
        cpus = self.num_cpus_per_task if self.num_cpus_per_task is not None else default_cpus
        return float(cpus), float(gpus)

    def _fitting_nodes(self, demands: set[tuple[float, float]]) -> list[str]:
        """IDs of the alive nodes that can hold one run of at least one of ``demands``; waits up
        to ``wait_for_nodes_s`` for every demand to fit some node (workers still joining)."""
        import ray

        deadline = time.monotonic() + (self.wait_for_nodes_s or 0.0)
        warned = False
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]

            def fits(n: dict, cpus: float, gpus: float) -> bool:
                r = n.get("Resources", {})
                return r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus

            missing = [d for d in demands if not any(fits(n, *d) for n in nodes)]
            if not missing:
                return [n["NodeID"] for n in nodes if any(fits(n, *d) for d in demands)]
            have = [(n.get("Resources", {}).get("CPU", 0), n.get("Resources", {}).get("GPU", 0))
                    for n in nodes]
            if self.wait_for_nodes_s is None:  # autoscaling: submit, nodes start on demand
                return [n["NodeID"] for n in nodes]
            if time.monotonic() >= deadline:
                cpus, gpus = missing[0]
                raise RuntimeError(
                    f"no Ray node can hold one run needing {cpus:g} CPU and {gpus:g} GPU; the "
                    f"alive nodes have (CPU, GPU) = {have} after waiting "
                    f"{self.wait_for_nodes_s:g} s. Lower num_cpus_per_task / num_gpus_per_task, "
                    f"run on CPU, add suitable worker nodes, or on an autoscaling cluster pass "
                    f"wait_for_nodes_s=None."
                )
            if not warned:
                log.warning("waiting up to %g s for a Ray node with %g CPU and %g GPU to join "
                            "(alive nodes (CPU, GPU): %s)", self.wait_for_nodes_s, *missing[0],
                            have)
                warned = True
            time.sleep(2.0)

    # ----------------------------------------------------------------------------- run
    def run(self, tasks: list[dict], fn: Callable[[dict], dict], *,
            on_event: Callable[[dict], None] | None = None) -> list[dict]:
        """Run every task as a Ray task; one result per task, in task order."""
        if not tasks:
            return []
        ray = _import_ray()
        started_here = self.connect()
        try:
            return self._run(ray, tasks, fn, on_event)
        finally:
            if started_here:
                ray.shutdown()

    def _storage_dir(self, tasks: list[dict]) -> Path | None:
        if self.storage_dir is not None:
            return Path(self.storage_dir)
        dirs = [str(Path(t["run_dir"]).expanduser().resolve()) for t in tasks if t.get("run_dir")]
        if not dirs:
            return None
        common = Path(os.path.commonpath(dirs))
        # One task: its run dir may not exist yet; probe its parent, which holds all runs.
        return common.parent if len(dirs) == 1 else common

    def _run(self, ray, tasks: list[dict], fn: Callable[[dict], dict],
             on_event: Callable[[dict], None] | None) -> list[dict]:
        demands = [self.resources(t) for t in tasks]
        nodes = self._fitting_nodes(set(demands))
        storage = self._storage_dir(tasks)
        if self.check_storage and storage is not None:
            check_shared_storage(storage, node_ids=nodes)
        return _Scheduler(self, ray, tasks, demands, fn, on_event).run()


class _Scheduler:
    """One :meth:`RayExecutor.run`: submits every task, collects results as they finish,
    resubmits runs whose worker was lost (up to ``retries``), and reports progress."""

    def __init__(self, ex: RayExecutor, ray, tasks: list[dict], demands: list[tuple],
                 fn: Callable[[dict], dict], on_event: Callable[[dict], None] | None) -> None:
        self.ex, self.ray, self.tasks, self.demands = ex, ray, tasks, demands
        self.fn, self.on_event = fn, on_event
        self.lost = _lost_worker_errors()
        self.remote = ray.remote(max_retries=0)(_run_task)  # lost workers are resubmitted here
        self.tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        self.total = len(tasks)
        self.results: list[dict | None] = [None] * self.total
        self.attempts = [0] * self.total
        self.submit_time = [0.0] * self.total
        self.in_flight: dict[Any, int] = {}  # ObjectRef -> task index
        self.running: dict[int, dict] = {}
        self.last_counts: dict | None = None
        self.printed_at = time.monotonic()

    def submit(self, i: int) -> None:
        cpus, gpus = self.demands[i]
        self.attempts[i] += 1
        self.submit_time[i] = time.perf_counter()
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
        if self.ex.runtime_env is not None:
            options["runtime_env"] = self.ex.runtime_env
        ref = self.remote.options(**options).remote(
            self.fn, self.tasks[i], max(1, int(cpus)), self.tracker, i, self.attempts[i])
        self.in_flight[ref] = i

    def emit(self, event: str, last: dict | None = None, force: bool = False, **extra) -> None:
        finished = [r for r in self.results if r is not None]
        failed = sum(r.get("status") == "failed" for r in finished)
        skipped = sum(r.get("status") == "skipped" for r in finished)
        running = {i: w for i, w in self.running.items() if self.results[i] is None}
        counts = {"done": len(finished) - failed, "skipped": skipped, "failed": failed,
                  "running": len(running),
                  "pending": self.total - len(finished) - len(running), "total": self.total}
        every = self.ex.progress_every_s
        if counts != self.last_counts and every is not None and (
                time.monotonic() - self.printed_at >= every):
            self.printed_at = time.monotonic()
            print(f"ray: {counts['done']} done, {counts['failed']} failed, "
                  f"{counts['running']} running, {counts['pending']} pending of {self.total}",
                  file=sys.stderr, flush=True)
        unchanged = counts == self.last_counts
        self.last_counts = counts
        if self.on_event is None or (not force and unchanged):
            return
        workers = [{"run_dir": self.tasks[i].get("run_dir"), **w}
                   for i, w in sorted(running.items())]
        self.on_event({**counts, "last": last, "event": event, "workers": workers, **extra})

    def refresh_running(self) -> None:
        try:
            snap = self.ray.get(self.tracker.snapshot.remote(), timeout=30)
        except self.ray.exceptions.RayError:
            return  # tracker lost with its node: keep the last known picture
        self.running = {i: w for i, w in snap.items()
                        if w["attempt"] == self.attempts[i] and self.results[i] is None}

    def collect(self, ref) -> None:
        """The result of one finished task, or its resubmission when its worker was lost."""
        i = self.in_flight.pop(ref)
        task = self.tasks[i]
        try:
            result = self.ray.get(ref)
        except self.lost as exc:
            where = self.running.pop(i, {})
            message = (f"worker {where.get('host', '?')} pid {where.get('pid', '?')} lost "
                       f"during attempt {self.attempts[i]}: {type(exc).__name__}: {exc}")
            if self.attempts[i] <= self.ex.retries:
                _release_lock_of(task.get("run_dir"), where.get("host"), where.get("pid"))
                self.submit(i)
                log.warning("%s; run %s submitted again (attempt %d of %d)", message,
                            task.get("run_dir"), self.attempts[i], self.ex.retries + 1)
                self.emit("retry", force=True, run_dir=task.get("run_dir"),
                          attempt=self.attempts[i], error=message)
                return
            result = failed_result(task, f"{message}; gave up after {self.attempts[i]} "
                                   "attempts", time.perf_counter() - self.submit_time[i])
        except self.ray.exceptions.RayError as exc:
            # The task could not run fn (e.g. ageest does not import on the worker);
            # str(RayTaskError) carries the remote traceback.
            result = failed_result(task, f"{type(exc).__name__}: {exc}",
                                   time.perf_counter() - self.submit_time[i])
        self.results[i] = result
        self.running.pop(i, None)
        self.emit("finished", last=result, force=True)

    def run(self) -> list[dict]:
        for i in range(self.total):
            self.submit(i)
        self.emit("submitted", force=True)
        try:
            while self.in_flight:
                ready, _ = self.ray.wait(list(self.in_flight), num_returns=1,
                                         timeout=self.ex.poll_s)
                self.refresh_running()
                for ref in ready:
                    self.collect(ref)
                self.emit("progress")
        except BaseException:
            for ref in self.in_flight:
                self.ray.cancel(ref, force=True)
            raise
        finally:
            self.ray.kill(self.tracker)
        return [r for r in self.results if r is not None]
