"""The suite's own promises: a missing browser is never silent, and make test-browser fails
without one; under pytest-xdist each worker has its own cores and the slow tiers start first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ageest import paths
from tests import conftest


def _pytest_browser(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "AGEEST_REQUIRE_BROWSER")}
    env.update({"AGEEST_CHROMIUM": "/nonexistent/chromium", **extra_env})
    return subprocess.run([sys.executable, "-m", "pytest", "tests/browser", "-q",
                           "-p", "no:cacheprovider"], cwd=paths.ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_missing_browser_prints_a_not_run_line_with_the_install_command():
    done = _pytest_browser({})
    assert done.returncode == 0, done.stdout[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("NOT RUN: ")]
    assert lines and "apt-get install chromium chromium-driver" in lines[0], done.stdout


def test_browser_test_fails_when_it_is_required_and_missing():
    for env in ({"AGEEST_REQUIRE_BROWSER": "1"}, {"CI": "true"}):
        done = _pytest_browser(env)
        assert done.returncode != 0, done.stdout[-2000:]
        assert "Chromium not found" in done.stdout


PROBE = """
import json, os
from pathlib import Path

def test_probe(worker_id):
    import torch
    from ageest.engine.executors import available_cpus
    Path(os.environ["PROBE_OUT"], worker_id + ".json").write_text(json.dumps({
        "cores": sorted(os.sched_getaffinity(0)), "available": available_cpus(),
        "torch_threads": torch.get_num_threads()}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs two cores and CPU affinity (Linux)")
def test_xdist_workers_each_get_their_own_cores(tmp_path):
    """make test's two workers on two cores: one core each, seen by the executors' core count and
    by torch's thread pool (was: both workers on both cores, two two-thread torch pools)."""
    for name in ("a", "b"):  # --dist loadfile: one module per worker
        (tmp_path / f"test_probe_{name}.py").write_text(PROBE)
    everything = set(range(os.cpu_count()))

    def widen():  # this test may itself run in a pinned worker: give the child every core
        os.sched_setaffinity(0, everything)

    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-n", "2",
                           "--dist", "loadfile", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          cwd=paths.ROOT, env={**os.environ, "PROBE_OUT": str(tmp_path)},
                          preexec_fn=widen, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen = [json.loads((tmp_path / f"gw{i}.json").read_text()) for i in (0, 1)]
    cores = [set(s["cores"]) for s in seen]
    assert not cores[0] & cores[1] and cores[0] | cores[1] == everything, seen
    for s in seen:
        assert s["available"] == len(s["cores"]) == s["torch_threads"], seen


def test_auto_starts_one_worker_per_core_this_process_may_use():
    assert conftest.pytest_xdist_auto_num_workers(None) == len(os.sched_getaffinity(0))


def test_the_slow_tiers_are_collected_first_a_module_kept_together():
    def item(module, name):
        path = Path(conftest.__file__).parent / f"{module}.py"
        marks = []
        return SimpleNamespace(fspath=path, nodeid=f"tests/{module}.py::{name}", name=name,
                               originalname=name, marks=marks, add_marker=marks.append)

    items = [item("test_losses", "test_a"), item("test_losses", "test_d"),
             item("engine/test_distributed", "test_b"),
             item("data/test_synthetic", "test_learnable_on_held_out_subjects"),
             item("data/test_synthetic", "test_e"), item("pipeline/test_notebooks", "test_c")]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid.split("/", 1)[1] for i in items] == [
        "pipeline/test_notebooks.py::test_c", "engine/test_distributed.py::test_b",
        "test_losses.py::test_a", "test_losses.py::test_d",
        "data/test_synthetic.py::test_learnable_on_held_out_subjects",
        "data/test_synthetic.py::test_e"]
    # each test keeps its own tier marker (an override moves the test's marker, not its module)
    assert items[4].marks[0].name == "pipeline" and items[5].marks[0].name == "unit"
