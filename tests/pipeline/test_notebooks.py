"""Execute every notebook with papermill on the smoke profile (once, through ``ageest reproduce``)
and check what it leaves: each table and figure with finite numbers, the executed notebooks and
their HTML, the manifest, the metrics files and REPORT.md. Also: a failing notebook is reported
with its cell and error."""

from __future__ import annotations

import math
import shutil

import nbformat
import numpy as np
import pandas as pd
import pytest

from ageest.files import read_json
from ageest.pipeline import catalogue
from ageest.pipeline.report import NOT_AVAILABLE, SYNTHETIC_NOTE
from ageest.pipeline.reproduce import NotebookFailed, list_notebooks, reproduce

# (kind, name) every smoke run must produce, by notebook: the catalogue's declarations
EXPECTED = {nb.stem: [(a.kind, a.name) for a in catalogue.of_notebook(nb.stem)]
            for nb in list_notebooks()}
# numeric columns that must be finite in every row (NaN allowed elsewhere, e.g. paper values)
FINITE = {a.name: list(a.finite) for s in catalogue.SECTIONS for a in s.artefacts
          if a.kind == "table"}


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    lines: list[str] = []
    result = reproduce("smoke", results_dir=out, log=lines.append)
    return out, result, lines


def test_every_notebook_executed_with_progress_lines(smoke):
    out, result, lines = smoke
    names = [nb.name for nb in list_notebooks()]
    assert [r.name for r in result.notebooks] == names
    for name in names:
        executed = out / "executed" / name
        assert executed.is_file() and executed.with_suffix(".html").is_file()
        nb = nbformat.read(str(executed), as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors
        assert any(name in line and line.rstrip().endswith(" s") for line in lines)
    html = (out / "executed" / "03_evaluation.html").read_text()
    assert "data:image/png;base64" in html  # figures viewable without a kernel


def test_tables_and_figures_exist_with_finite_numbers(smoke):
    out, _, _ = smoke
    for notebook, artefacts in EXPECTED.items():
        for kind, name in artefacts:
            if kind == "figure":
                for ext in ("png", "pdf"):
                    path = out / "figures" / f"{name}.{ext}"
                    assert path.is_file() and path.stat().st_size > 1000, f"{notebook}: {path}"
                continue
            for ext in ("csv", "md", "tex"):
                assert (out / "tables" / f"{name}.{ext}").is_file(), f"{notebook}: {name}.{ext}"
            table = pd.read_csv(out / "tables" / f"{name}.csv")
            assert len(table) > 0, f"{name} is empty"
            for col in FINITE.get(name, []):
                values = pd.to_numeric(table[col], errors="coerce").to_numpy()
                assert np.isfinite(values).all(), f"{name}.{col} has non-finite values"
            numeric = table.select_dtypes("number")
            assert not np.isinf(numeric.to_numpy(dtype=float)).any()


def test_tables_mark_synthetic_data_and_official_rows(smoke):
    out, _, _ = smoke
    for notebook, artefacts in EXPECTED.items():
        data = next(s.data for s in catalogue.SECTIONS if s.notebook == notebook)
        for kind, name in artefacts:
            if kind == "table" and data:
                assert (out / "tables" / f"{name}.md").read_text().startswith(SYNTHETIC_NOTE)
    mae = pd.read_csv(out / "tables" / "mae_comparison.csv")
    official = mae[mae["method"].str.contains("official")]
    assert len(official) >= 1 and (official["protocol"] == "official (test-selected epoch)").all()
    # synthetic data: no published number sits beside any row, and each row says why
    assert mae["published_mae"].isna().all()
    assert mae["published_source"].str.startswith("not comparable: data synthetic").all()
    eps = pd.read_csv(out / "tables" / "clap_epsilon_comparison.csv")
    assert eps[["epsilon", "epsilon_low", "epsilon_high"]].notna().all().all()
    assert eps["method"].str.contains("official").any()  # the CLAP2016 official-protocol run


def test_metrics_files(smoke):
    out, _, _ = smoke
    for nb in list_notebooks():
        metrics = read_json(out / "metrics" / f"{nb.stem}.json")
        assert isinstance(metrics, dict) and metrics
    data = read_json(out / "metrics" / "00_data_prep.json")
    assert data["synthetic"] is True and data["all_folds_disjoint"] is True
    evaluation = read_json(out / "metrics" / "03_evaluation.json")
    assert math.isfinite(evaluation["fgnet_mae"]["amr"])


def test_manifest_and_report(smoke):
    out, result, _ = smoke
    manifest = read_json(out / "manifest.json")
    assert manifest["profile"] == "smoke" and manifest["git_commit"]
    assert manifest["versions"]["torch"]
    statuses = {e["notebook"]: e for e in manifest["notebooks"]}
    assert all(e["status"] == "done" and e["wall_time_s"] > 0 for e in statuses.values())
    for notebook, artefacts in EXPECTED.items():  # what each notebook wrote, as declared
        entry = statuses[f"{notebook}.ipynb"]
        assert sorted(entry["tables"] + entry["figures"]) == sorted(n for _, n in artefacts)
    assert manifest["parameters"]["02_training"]["profile"] == "smoke"
    assert manifest["seeds"]
    text = (out / "REPORT.md").read_text()
    assert text.startswith("# ageest reproduction report — profile `smoke`")
    assert SYNTHETIC_NOTE in text.split("## ", 1)[0]
    assert NOT_AVAILABLE in text and "unverified" not in text
    assert "## Published numbers" in text and "as quoted by B. Kwon" in text
    assert "*Not produced in this run*" not in text, "a smoke run must produce every artefact"
    assert "![CS(θ) curves](figures/cs_curves.png)" in text


def test_failing_notebook_names_cell_and_error(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "ageest", "display_name": "Python (ageest)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('profile: str = "smoke"  # p\nresults_dir: str = ""  # r')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t\n\nx"), params,
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("raise ValueError('bad input in cell')")]
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, str(folder / "00_fail.ipynb"))
    (tmp_path / "params" / "smoke").mkdir(parents=True)
    with pytest.raises(NotebookFailed) as err:
        reproduce("smoke", notebooks_dir=folder, params_dir=tmp_path / "params",
                  results_dir=tmp_path / "out", html=False, report=False, log=lambda s: None)
    message = str(err.value)
    assert "00_fail.ipynb failed in cell 4" in message  # after the injected-parameters cell
    assert "ValueError: bad input in cell" in message
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["failed"] == "00_fail.ipynb"


@pytest.mark.parametrize("loss", ["amr", "ce"])
def test_evaluation_alone_reruns_on_stored_runs_with_a_single_loss(loss, smoke, tmp_path):
    """Notebook 03 rerun alone (`--only 03`) on a copy of the smoke results: it reads the
    stored predictions (no run trains again) and the manifest keeps the other notebooks' entries.
    With one loss, the reference alone (amr: nothing to pair with) or without it (ce: no
    reference runs, no dual-protocol table); 03 used to stop with KeyError 'baseline'."""
    out = tmp_path / "one"
    shutil.copytree(smoke[0], out)
    before = sorted(str(p.relative_to(out)) for p in (out / "runs").rglob("metrics.json"))
    result = reproduce("smoke", results_dir=out, log=lambda s: None, html=False, report=False,
                       only="03", parameters={"losses": loss})
    assert [r.name for r in result.notebooks] == ["03_evaluation.ipynb"]
    assert sorted(str(p.relative_to(out)) for p in (out / "runs").rglob("metrics.json")) \
        == before
    manifest = read_json(out / "manifest.json")
    assert len(manifest["notebooks"]) == len(list_notebooks())  # others kept from the first run
    metrics = read_json(out / "metrics" / "03_evaluation.json")
    assert metrics["paired_p_values"] == {}
    # one loss: its clean row, and its official row when the official runs trained it (amr)
    official = [f"{loss} [official (test-selected epoch)]"] if loss == "amr" else []
    assert sorted(metrics["fgnet_mae"]) == sorted([loss, *official])
    assert all(math.isfinite(v) for v in metrics["fgnet_mae"].values())
    assert (out / "tables" / "dual_protocol.csv").exists() == (loss == "amr")
    assert list(metrics["clap_epsilon"]) == [loss, *official]
