"""The Ray executor against a real Ray cluster on loopback.

One grid of four short runs (tiny synthetic FG-NET-like data, 32 px, 3 epochs, one torch thread
per run) goes through the local executor and through Ray, where one run's worker process is
SIGKILLed mid-run; the Ray grid must complete with predictions identical to the local ones.

A module fixture starts a Ray head with ``ray start`` bound to 127.0.0.1 (its own temp dir, no
dashboard, no usage stats) and stops it at the end even when a test fails: it ends exactly the
processes of that head (found by their temp dir and their descendants), never other Ray instances
on the machine, which ``ray stop`` would also kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ageest.data.synthetic import write_fgnet_like
from ageest.engine import grids, store
from ageest.engine.executors import LocalExecutor
from ageest.engine.run import execute_run

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
for _key, _value in RAY_ENV.items():  # read by Ray at import time
    os.environ.setdefault(_key, _value)

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker``, plus all their descendants (Ray renames its
    workers ``ray::IDLE``, so they are found as children of the raylet)."""
    parent: dict[int, int] = {}
    roots: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        pid = int(entry.name)
        parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker in cmd:
            roots.append(pid)
    mine, pid = set(), os.getpid()  # never this process or its ancestors
    while pid > 1 and pid not in mine:
        mine.add(pid)
        pid = parent.get(pid, 1)
    found = set(roots) - mine
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def _stop(pids: list[int]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists()
                     and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]
            time.sleep(0.1)
        pids = alive


@pytest.fixture(scope="module")
def ray_head():
    """Address ``127.0.0.1:<port>`` of a 2-CPU Ray head started for these tests."""
    ray_bin = Path(sys.executable).with_name("ray")
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp = tempfile.mkdtemp(prefix="ageest-ray-")
    port = _free_port()
    # Token authentication with a token of our own (not ~/.ray/auth_token): head and driver
    # share it through the environment; Ray's cached config is refreshed to see it.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    saved_env = {k: os.environ.get(k) for k in auth}
    from ray._private import ray_constants
    from ray._raylet import Config

    loopback_before = ray_constants.ENABLE_RAY_CLUSTER
    cmd = [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
           "--object-store-memory", str(100 * 1024**2), "--temp-dir", temp,
           "--disable-usage-stats"]
    try:
        os.environ.update(auth)
        Config.initialize("")
        # Keep this driver on loopback even when Ray was imported before the environment was
        # set: otherwise Ray rewrites 127.0.0.1 to this machine's outward address.
        ray_constants.ENABLE_RAY_CLUSTER = False
        env = {**os.environ, **RAY_ENV}
        # Output to a file, not a pipe: the daemons it starts inherit the pipe and keep it open.
        with open(Path(temp) / "ray-start.log", "w") as log:
            code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=120).returncode
        if code:
            pytest.fail(f"ray start failed ({code}):\n{(Path(temp) / 'ray-start.log').read_text()}")
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(_processes_of(temp))
        shutil.rmtree(temp, ignore_errors=True)
        ray_constants.ENABLE_RAY_CLUSTER = loopback_before
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Config.initialize("")


pytestmark = pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fgnet_like(tmp_path_factory.mktemp("data") / "fg", seed=0, size=32,
                            n_subjects=12, n_images=120)


def _grid(data_dir: Path, results: Path, **kw) -> dict:
    # 2 losses x 2 folds; one thread per run so both executors compute bit for bit the same.
    g = {"dataset": "fgnet", "data_dir": str(data_dir), "protocol": "group-kfold",
         "n_folds": 3, "folds": [0, 1], "losses": ["amr", "ce"], "epochs": 3, "batch_size": 16,
         "image_size": 32, "results_dir": str(results), "quiet": True, "threads": 1}
    return {**g, **kw}


class _KillOneWorker:
    """``on_event`` callback that SIGKILLs the worker process of the first run seen running,
    and records every event. The worker is frozen (SIGSTOP) first and killed only if its run has
    not written ``metrics.json``: the kill then certainly lands mid-run."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.killed: dict | None = None
        self.tried: set[int] = set()

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if self.killed is not None:
            return
        for worker in event.get("workers", []):
            pid = worker["pid"]
            if pid in self.tried or worker["host"] != socket.gethostname():
                continue
            self.tried.add(pid)
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            if store.is_finished(worker["run_dir"]):
                os.kill(pid, signal.SIGCONT)  # its run is over: it may be on another by now
                continue
            os.kill(pid, signal.SIGKILL)
            self.killed = worker
            return


def _predictions(run_dir: str | Path) -> pd.DataFrame:
    return store.load_predictions(run_dir).sort_values("image_id").reset_index(drop=True)


def test_ray_grid_survives_a_killed_worker_and_matches_local(ray_head, data_dir, tmp_path):
    from ageest.engine.ray_executor import RayExecutor

    local = grids.run_grid(_grid(data_dir, tmp_path / "local"),
                            executor=LocalExecutor(workers=1, threads=1))
    assert (local["status"] == "done").all(), local

    killer = _KillOneWorker()
    ray_ex = RayExecutor(address=ray_head, poll_s=0.1, retries=2)
    summary = grids.run_grid(_grid(data_dir, tmp_path / "ray"), executor=ray_ex,
                              on_event=killer)
    assert killer.killed is not None, "no run was seen running, so no worker was killed"
    assert (summary["status"] == "done").all(), summary.to_string()
    # the kill was noticed as a lost worker and that run was submitted again
    retries = [e for e in killer.events if e["event"] == "retry"]
    assert [e["run_dir"] for e in retries] == [killer.killed["run_dir"]]
    assert f"pid {killer.killed['pid']}" in retries[0]["error"]
    # live progress: runs were reported running while others waited; the last count is final
    assert max(e["running"] for e in killer.events) >= 1
    assert any(e["pending"] > 0 and e["running"] > 0 for e in killer.events)
    last = killer.events[-1]
    assert (last["done"], last["failed"], last["running"], last["pending"]) == (4, 0, 0, 0)

    # identical results: same seeds, one thread, CPU -> the same floats, killed run included
    for local_dir in local["run_dir"]:
        ray_dir = Path(str(local_dir).replace(str(tmp_path / "local"), str(tmp_path / "ray")))
        a, b = _predictions(local_dir), _predictions(ray_dir)
        assert a["image_id"].tolist() == b["image_id"].tolist()
        np.testing.assert_array_equal(np.stack(a["probs"]), np.stack(b["probs"]),
                                      err_msg=f"{ray_dir} differs from {local_dir}")
        assert (store.read_metrics(local_dir)["mae"]
                == store.read_metrics(ray_dir)["mae"])

    # resume through Ray: finished runs are skipped by the same logic as locally; a broken run
    # comes back failed with its traceback while the others are unaffected
    tasks = grids.expand_grid(_grid(data_dir, tmp_path / "ray"))
    bad = grids.expand_grid(_grid(data_dir, tmp_path / "bad", losses=["ce"], folds=[0]))
    # a model name is refused before any run starts; this one breaks only inside the worker
    bad[0]["params"]["model"] = "no_such_model"
    results = RayExecutor(address=ray_head).run(tasks + bad, execute_run)
    assert [r["status"] for r in results] == ["skipped"] * 4 + ["failed"]
    assert "Traceback" in results[-1]["error"] and "no_such_model" in results[-1]["error"]


def test_cli_runs_through_ray_and_storage_errors_are_clear(ray_head, data_dir, tmp_path,
                                                            capsys, monkeypatch):
    from ageest.cli import main as cli_main
    from ageest.engine.ray_executor import RayExecutor, SharedStorageError, check_shared_storage

    # `--address auto` finds a cluster started by `ray start` through RAY_ADDRESS (or Ray's
    # temp dir, which this test's head does not use)
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    code = cli_main(["run", "--dataset", "fgnet", "--data-dir", str(data_dir), "--protocol",
                     "group-kfold", "--n-folds", "3", "--folds", "2", "--losses", "ce",
                     "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--threads",
                     "1", "--results-dir", str(tmp_path / "cli"), "--executor", "ray",
                     "--address", "auto", "--no-aggregate"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "executor 'ray'" in out and "runs: done 1, skipped 0, failed 0" in out
    assert store.is_finished(next((tmp_path / "cli" / "runs").glob("*/fold-*")))

    # a results directory that cannot be created: the error names the path and the requirement
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("RAY_ADDRESS")
    ray.init(address=ray_head, log_to_driver=False)
    try:
        assert [n["node_ip"] for n in check_shared_storage(tmp_path / "shared")] == ["127.0.0.1"]
        assert not list((tmp_path / "shared").iterdir())  # probe files removed
        with pytest.raises(SharedStorageError, match=r"a_file/results.*shared"):
            check_shared_storage(blocker / "results")
        with pytest.raises(ValueError, match="use device 'cuda'"):
            RayExecutor().resources({"run_dir": "r", "device": "cuda:1"})
        assert RayExecutor().resources({"device": "cuda"}) == (4.0, 1.0)
        # a run no node can hold (this head has no GPU) is an error, not an endless wait
        with pytest.raises(RuntimeError, match=r"needing 4 CPU and 1 GPU.*\(2\.0, 0\)"):
            RayExecutor(wait_for_nodes_s=0).run([{"run_dir": str(tmp_path / "g"),
                                                  "device": "cuda"}], execute_run)
        assert RayExecutor(num_cpus_per_task=2).resources({"device": "cpu"}) == (2.0, 0.0)
    finally:
        ray.shutdown()
