"""Test tiers and the closing report of what did not run.

Every test belongs to one tier, given by its module's path under ``tests/`` (a module missing
from :data:`TIERS` is a collection error, so a new test file must choose one). The folders mirror
the package: ``tests/engine/test_train.py`` tests ``ageest/engine/train.py``.

- ``unit``: losses, metrics, data, store, models, the trainer on tiny data: seconds each
  (``make test-fast`` runs this tier, doctests included);
- ``pipeline``: notebooks through papermill, the runner (resume, kill, parallel workers), the
  CLI end to end;
- ``integration``: a Ray cluster on loopback, ``torchrun`` DDP, JupyterLab in a real browser.

``make test`` runs all three, in parallel with pytest-xdist (``-n auto --dist loadfile``): each
worker process is pinned to its own share of the cores (:func:`pytest_configure`), so the code
under test, which sizes its threads and worker processes by the cores it may use
(``ageest.engine.executors.available_cpus``), never puts two busy threads on one core.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TIERS = {
    # the package as a whole and its top-level modules
    "test_architecture": "unit", "test_library_use": "unit", "test_losses": "unit",
    "test_losses_composite": "unit", "test_metrics": "unit", "test_official": "unit",
    "test_parameters": "unit", "test_cli": "pipeline", "test_tiers": "pipeline",
    # ageest.data
    "data/test_dataset": "unit", "data/test_integrity": "unit",
    "data/test_integrity_identical": "unit", "data/test_loaders": "unit",
    "data/test_loaders_bad_input": "unit", "data/test_splits": "unit",
    "data/test_synthetic": "unit", "data/test_fetch": "pipeline",
    # ageest.engine
    "engine/test_models": "unit", "engine/test_train": "unit",
    "engine/test_train_finetune": "unit", "engine/test_train_init_from": "unit",
    "engine/test_train_precision": "unit", "engine/test_grids": "pipeline",
    "engine/test_ray_executor": "integration", "engine/test_distributed": "integration",
    # ageest.analysis
    "analysis/test_comparisons": "unit", "analysis/test_loss_illustration": "unit",
    "analysis/test_training_grids": "unit",
    # ageest.pipeline: its modules, the notebooks and the profiles end to end
    "pipeline/test_artefacts": "unit", "pipeline/test_profiles": "unit",
    "pipeline/test_report": "unit", "pipeline/test_notebooks": "pipeline",
    "pipeline/test_profile_paper": "pipeline", "pipeline/test_profile_fgnet": "pipeline",
    "pipeline/test_profile_utkface": "pipeline",
    # ageest.inference and ageest.commands
    "inference/test_predict": "pipeline", "commands/test_data": "pipeline",
    "commands/test_user_errors": "pipeline",
    "browser/test_jupyterlab_browser": "integration",
}
#: single tests whose module is unit but which train a model or generate a whole dataset
TIER_OVERRIDES = {
    "engine/test_train_init_from::test_a_grid_records_the_file_and_a_new_pretraining_is_a_new"
    "_identity": "pipeline",
    "engine/test_train_init_from::test_the_pipeline_pretraining_stage_feeds_the_fgnet_grids":
        "pipeline",
    "data/test_synthetic::test_learnable_on_held_out_subjects": "pipeline",
    "data/test_synthetic::test_every_registered_dataset_loads": "pipeline",
    "analysis/test_loss_illustration::test_figures_build_and_save": "pipeline",
}
#: skip reasons that mean a whole tier's tool is missing (the browser test's fixtures say so)
MISSING_TOOL = "apt-get install chromium chromium-driver"


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may use (its CPU affinity, as the executors
    count them), not xdist's default (psutil's physical cores of the whole machine, which on a
    machine with hyperthreads or a pinned job is not the cores the suite may use)."""
    from ageest.engine.executors import available_cpus

    return available_cpus()


def pytest_configure(config):
    """Under pytest-xdist, pin worker ``gwN`` to every ``count``-th core from the N-th (two
    workers on two cores: one core each). Subprocesses inherit the pinning, torch sizes its
    thread pool by it, and the executors size their workers by it: two workers each running
    two-thread torch on two cores slowed both 5-10x (OpenMP threads waiting on each other)."""
    worker = getattr(config, "workerinput", None)  # set in xdist's worker processes only (a
    # pytest started from a test inherits PYTEST_XDIST_WORKER but is not a worker)
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    index, count = int(worker["workerid"].removeprefix("gw")), int(worker["workercount"])
    cores = sorted(os.sched_getaffinity(0))
    share = cores[index % count::count] if count <= len(cores) else cores
    os.sched_setaffinity(0, share)


#: the order modules start in: the slow tiers first, so that under pytest-xdist the many short
#: unit modules fill the cores at the end instead of one long notebook run starting last
TIER_ORDER = ("pipeline", "integration", "unit")


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    order = {}
    for item in items:
        path = Path(str(item.fspath))
        if root not in path.parents:
            item.add_marker(pytest.mark.unit)  # doctests of the package
            order[item.nodeid] = TIER_ORDER.index("unit")
            continue
        module = path.relative_to(root).with_suffix("").as_posix()  # e.g. engine/test_train
        name = item.originalname if hasattr(item, "originalname") else item.name
        tier = TIER_OVERRIDES.get(f"{module}::{name}") or TIERS.get(module)
        if tier is None:
            raise pytest.UsageError(f"{path}: no tier for this test module; add "
                                    f"{module!r} to TIERS in tests/conftest.py (unit, "
                                    "pipeline or integration)")
        item.add_marker(getattr(pytest.mark, tier))
        order[item.nodeid] = TIER_ORDER.index(TIERS[module])  # a module's tests stay together
    items.sort(key=lambda item: order[item.nodeid])  # stable: the file order within a tier


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A closing line for every test skipped because a tool is missing (the real-browser test
    without Chromium), naming the command that installs it: a skip is never silent."""
    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if MISSING_TOOL in reason:
            reasons.add(f"{report.nodeid.split('::')[0]}: {reason.removeprefix('Skipped: ')}")
    if reasons:
        terminalreporter.section("NOT RUN", sep="=", red=True, bold=True)
        for line in sorted(reasons):
            terminalreporter.write_line(f"NOT RUN: {line}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(table, info, folds) of a 12-subject FG-NET-like set (120 images, 32 px), 3
    subject-disjoint folds: the trainer's tiny data (tests/engine/test_train.py,
    test_train_finetune.py)."""
    import warnings

    from ageest.data import get_dataset, make_folds
    from ageest.data.synthetic import write_fgnet_like

    root = write_fgnet_like(tmp_path_factory.mktemp("data") / "fg", seed=0, size=32,
                            n_subjects=12, n_images=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "differs from the release manifest": intended
        df, info = get_dataset("fgnet", data_dir=root)
    return df, info, make_folds(df, "group-kfold", n_folds=3, val_fraction=0.25, seed=0)


@pytest.fixture
def two_threads():
    """torch on two threads for the test (fewer when this process may use fewer cores: one
    per pytest-xdist worker), restored after (the trainer's tests)."""
    import torch

    from ageest.engine.executors import available_cpus

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, available_cpus()))
    yield
    torch.set_num_threads(threads)
