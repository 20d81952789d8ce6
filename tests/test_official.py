"""The official record (ageest/resources/official_settings.yaml) against what the paper profile
actually runs: every expanded run of its grids, on real-format fixture folders."""

from __future__ import annotations

import os
import re

import pytest

from ageest import official, paths
from ageest.engine.grids import expand_grid
from tests.helpers import notebook_grids, write_clap_fixture, write_fgnet_fixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def paper_tasks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    fg = write_fgnet_fixture(tmp / "FGNET")
    clap = write_clap_fixture(tmp / "CLAP")
    dirs = {"fgnet_dir": str(fg), "clap_dir": str(clap)}
    grids = {**notebook_grids("paper", "02_training", tmp, dirs),
             **notebook_grids("paper", "04_ablation_k", tmp, dirs)}
    return {name: expand_grid(grid, tmp / "res") for name, grid in grids.items()}


def test_every_paper_run_matches_the_official_record(paper_tasks):
    assert set(paper_tasks) == {"fgnet", "fgnet_official", "clap", "clap_official",
                                "k_ablation"}
    checked = 0
    for name, tasks in paper_tasks.items():
        kind = "clap" if name.startswith("clap") else "fgnet"
        assert tasks, name
        for task in tasks:
            problems = official.check_run(task["params"], kind)
            assert not problems, f"{name} {task['run_dir']}: {problems}"
            checked += 1
    assert checked >= 40  # 4 LOPO folds x (6 + 1 + 9 runs) + 6 + 1 CLAP runs


def test_official_runs_are_test_selected_on_the_official_training_set(paper_tasks):
    fg = paper_tasks["fgnet_official"][0]["params"]
    assert (fg["selection"], fg["val_fraction"], fg["select_metric"]) == (
        "test_best_epoch_official", 0.0, "mae_rounded")
    clap = paper_tasks["clap_official"][0]["params"]
    assert (clap["ignore_splits"], clap["min_pixels"], clap["label_rounding"], clap["seed"]) \
        == (["train", "valid", "test"], 1024, "half_even", 2019)
    clean = paper_tasks["clap"][0]["params"]
    assert (clean["ignore_splits"], clean["min_pixels"]) == (["train"], None)


def test_check_run_names_each_departure():
    params = {"selection": "val_best", "loss": "amr", "model": "resnet50", "pretrained": True,
              "optimizer": "adamw", "lr": 0.01, "lambda_mean": 0.2, "lambda_residue": 0.05}
    problems = official.check_run(params, "fgnet")
    assert "lr: official 0.001, run 0.01" in problems
    assert not any(p.startswith(("model:", "optimizer:", "weight_decay:", "lambda"))
                   for p in problems)
    assert any(p.startswith("val_fraction: official 0.15") for p in problems)  # the clean value


def test_record_has_a_source_for_every_setting_and_a_reason_for_every_clean_value():
    rec = official.record()
    assert re.fullmatch(r"[0-9a-f]{40}", rec["commit"])
    for entry in rec["settings"]:
        assert entry["source"].split(":")[0].strip(), entry
        if entry["scope"] == "official":
            assert entry["reason"] and "clean" in entry
    with pytest.raises(ValueError, match="kind"):
        official.official_values("utk")


def test_docs_show_the_generated_settings_table(paper_tasks, tmp_path):
    """docs/reproduce.md holds the table settings_markdown() renders for the paper and default
    profiles (AGEEST_UPDATE_DOCS=1 rewrites it)."""
    default = {**notebook_grids("default", "02_training", tmp_path)}
    default_tasks = {name: expand_grid({**g, "folds": [0]}, tmp_path / "res")
                     for name, g in default.items()}
    table = official.settings_markdown({
        "paper": {k: paper_tasks[k][0]["params"] for k in paper_tasks if k != "k_ablation"},
        "default": {k: v[0]["params"] for k, v in default_tasks.items()},
    })
    doc = paths.ROOT / "docs" / "reproduce.md"
    text = doc.read_text(encoding="utf-8")
    begin, end = "<!-- official-settings:begin -->", "<!-- official-settings:end -->"
    assert begin in text and end in text, f"{doc} lacks the {begin} ... {end} block"
    current = text.split(begin, 1)[1].split(end, 1)[0].strip()
    if current != table and os.environ.get("AGEEST_UPDATE_DOCS") == "1":
        doc.write_text(text.replace(current, table) if current else
                       text.replace(begin + end, f"{begin}\n{table}\n{end}"), encoding="utf-8")
        current = table
    assert current == table, ("docs/reproduce.md's settings table is stale; rerun with "
                              "AGEEST_UPDATE_DOCS=1 to regenerate it")


def test_code_matches_the_record_and_a_change_is_caught(monkeypatch):
    assert official.check_code() == []
    rec = official.record()
    changed = {**rec, "settings": [
        {**e, "fgnet": 0.01} if e["key"] == "residue_eps" else
        {**e, "fgnet": "mlp"} if e["key"] == "head" else e for e in rec["settings"]]}
    monkeypatch.setattr(official, "record", lambda: changed)
    problems = official.check_code()
    assert "residue_eps (fgnet): official 0.01, ageest 0.001" in problems
    assert "head (fgnet): official 'mlp', ageest 'linear'" in problems


def test_num_classes_is_checked_per_run():
    params = {"selection": "val_best", "start_age": 0, "end_age": 99}
    assert "num_classes: official 70, run 100" in official.check_run(params, "fgnet")
    assert not any(p.startswith("num_classes")
                   for p in official.check_run({**params, "end_age": 100}, "clap"))


def test_official_cuda_numerics_are_the_official_scripts():
    import torch

    from ageest.engine.train import cuda_numerics

    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = True
        clean = cuda_numerics(official=False)
        assert clean["cudnn_benchmark"] is True  # clean runs keep (and record) the defaults
        assert cuda_numerics(official=True) == {
            "cudnn_deterministic": True, "cudnn_benchmark": False, "tf32_matmul": False,
            "tf32_cudnn": False}
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved


def test_official_clap2016_needs_the_ignore_list(tmp_path):
    grid = {"dataset": ["clap2016"], "data_dir": str(tmp_path), "protocol": ["holdout"],
            "losses": ["amr"]}
    with pytest.raises(FileNotFoundError, match="ignore_list.txt: missing; official-protocol"):
        expand_grid({**grid, "selection": [official.OFFICIAL_SELECTION]}, tmp_path / "r")
