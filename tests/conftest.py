"""Test tiers and the closing report of what did not run.

Every test belongs to one tier, given by its module (a module missing from :data:`TIERS` is a
collection error, so a new test file must choose one):

- ``unit``: losses, metrics, data, store, models, the trainer on tiny data: seconds each
  (``make test-fast`` runs this tier, doctests included);
- ``pipeline``: notebooks through papermill, the runner (resume, kill, parallel workers), the
  CLI end to end;
- ``integration``: a Ray cluster on loopback, ``torchrun`` DDP, JupyterLab in a real browser.

``make test`` runs all three.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = {
    "test_artifacts": "unit", "test_data_dataset": "unit", "test_data_integrity": "unit",
    "test_data_loaders": "unit", "test_data_splits": "unit", "test_data_synthetic": "unit",
    "test_illustrate": "unit", "test_losses": "unit", "test_losses_composite": "unit",
    "test_metrics": "unit", "test_models": "unit", "test_params": "unit", "test_report": "unit",
    "test_report_evaluation": "unit", "test_report_grids": "unit", "test_train": "unit",
    "test_official": "unit", "test_data_trust": "unit", "test_architecture": "unit",
    "test_finetune": "unit", "test_fetch": "pipeline", "test_parameters": "unit",
    "test_init_from": "unit", "test_fgnet_profile": "pipeline",
    "test_identical_images": "unit", "test_precision": "unit", "test_library_use": "unit", "test_trust_round3": "pipeline",
    "test_data_prepare": "pipeline", "test_cli": "pipeline",
    "test_runner": "pipeline", "test_notebooks": "pipeline", "test_paper_path": "pipeline",
    "test_predict": "pipeline", "test_utkface": "pipeline",
    "test_tiers": "pipeline",
    "test_ray_executor": "integration", "test_ddp": "integration",
    "test_jupyterlab_browser": "integration",
}
#: single tests whose module is unit but which train a model or generate a whole dataset
TIER_OVERRIDES = {
    "test_init_from.py::test_a_grid_records_the_file_and_a_new_pretraining_is_a_new_identity":
        "pipeline",
    "test_init_from.py::test_the_pipeline_pretraining_stage_feeds_the_fgnet_grids": "pipeline",
    "test_data_synthetic.py::test_learnable_on_held_out_subjects": "pipeline",
    "test_data_synthetic.py::test_every_registered_dataset_loads": "pipeline",
    "test_illustrate.py::test_figures_build_and_save": "pipeline",
}
#: skip reasons that mean a whole tier's tool is missing (the browser test's fixtures say so)
MISSING_TOOL = "apt-get install chromium chromium-driver"


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if "tests" not in path.parts:
            item.add_marker(pytest.mark.unit)  # doctests of the package
            continue
        key = f"{path.name}::{item.originalname if hasattr(item, 'originalname') else item.name}"
        tier = TIER_OVERRIDES.get(key) or TIERS.get(path.stem)
        if tier is None:
            raise pytest.UsageError(f"{path}: no tier for this test module; add it to TIERS "
                                    "in tests/conftest.py (unit, pipeline or integration)")
        item.add_marker(getattr(pytest.mark, tier))


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
    subject-disjoint folds: the trainer's tiny data (tests/test_train.py, test_finetune.py)."""
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
    """torch on two threads for the test, restored after (the trainer's tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
