"""``REPORT.md``: every table and figure of a pipeline run, in the paper's order, with a published
number beside the rows it can be compared with.

Published numbers live in one data file, ``ageest/resources/paper_results.csv``, with a
``source`` column. The paper's own tables are not available; the only located source is B. Kwon,
"Data Augmentation Using a Convolutional Autoencoder for Age Estimation from Facial Images",
*Journal of Multimedia Information System* 12(3):95 (2025), Table 3 (FG-NET
leave-one-person-out MAE, values extracted from existing studies): AMR 3.61, mean-variance 4.1,
DEX 4.63, cited "as quoted by" that table. They are shown beside the rows on real FG-NET, each
with what its runs did otherwise than the published setting
(:func:`ageest.analysis.comparisons.add_published`); every other published value
reads "not available", never filled in. When the data are synthetic, the report says so at the
top and in every table caption.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ageest.files import atomic_write_text, read_json
from ageest.official import OFFICIAL_LABEL
from ageest.pipeline.catalogue import SECTIONS, SYNTHETIC_NOTE, caption  # noqa: F401  (re-exported)
from ageest.published import NOT_AVAILABLE, paper_results, paper_value  # noqa: F401  (re-exported)

# ---------------------------------------------------------------------------------------------
# captions and saving


def data_is_synthetic(out: str | Path) -> bool | None:
    """Whether the run at ``out`` used synthetic data, from ``metrics/00_data_prep.json``
    (``None`` when that notebook has not written its metrics)."""
    path = Path(out) / "metrics" / "00_data_prep.json"
    if not path.is_file():
        return None
    return bool(read_json(path).get("synthetic", False))


# ---------------------------------------------------------------------------------------------
# the report


T, F = "table", "figure"


def _artefact_files(out: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    tables = {p.stem: p for p in sorted((out / "tables").glob("*.md"))}
    figures = {p.stem: p for p in sorted((out / "figures").glob("*.png"))}
    return tables, figures


def _block(out: Path, kind: str, path: Path, title: str, synthetic: bool) -> str:
    if kind == T:
        return _table_block(path, synthetic)
    return _figure_block(out, path, title, synthetic)


def _table_block(path: Path, synthetic: bool) -> str:
    text = path.read_text(encoding="utf-8").strip()
    if synthetic and not text.startswith(SYNTHETIC_NOTE):
        text = f"{SYNTHETIC_NOTE}.\n\n{text}"
    return text


def _figure_block(out: Path, path: Path, title: str, synthetic: bool) -> str:
    rel = path.relative_to(out).as_posix()
    pdf = path.with_suffix(".pdf")
    note = f" — {SYNTHETIC_NOTE.lower()}" if synthetic else ""
    link = f" ([PDF]({pdf.relative_to(out).as_posix()}))" if pdf.is_file() else ""
    return f"![{title}]({rel})\n\n*Figure: {title}{note}.*{link}"


def _metrics_summary(out: Path, notebook: str) -> str:
    """The headline numbers of one notebook's metrics JSON, as a short bullet list."""
    path = out / "metrics" / f"{notebook}.json"
    if not path.is_file():
        return ""
    data = read_json(path)
    lines = []
    for key, value in data.items():
        if isinstance(value, float):
            lines.append(f"- `{key}`: {value:.4g}")
        elif isinstance(value, (int, str, bool)) and len(str(value)) < 80:
            lines.append(f"- `{key}`: {value}")
    return "\n".join(lines[:12])


def _notebook_table(out: Path) -> str:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return "No pipeline manifest (`manifest.json`) was found: the notebooks were run by hand."
    data = read_json(manifest)
    rows = ["| notebook | status | wall time (s) | rendering |", "|---|---|---:|---|"]
    for entry in data.get("notebooks", []):
        name = entry.get("notebook", "?")
        html = out / "executed" / Path(name).with_suffix(".html").name
        link = f"[HTML](executed/{html.name})" if html.is_file() else ""
        seconds = entry.get("wall_time_s")
        rows.append(f"| {name} | {entry.get('status', '?')} | "
                    f"{'' if seconds is None else f'{seconds:.1f}'} | {link} |")
    total = data.get("wall_time_s")
    rows.append("")
    rows.append(f"Total wall time: {total:.1f} s. Git commit: `{data.get('git_commit')}`."
                if isinstance(total, (int, float)) else f"Git commit: `{data.get('git_commit')}`.")
    return "\n".join(rows)


def build_report(out: str | Path, *, profile: str | None = None) -> str:
    """The Markdown text of ``REPORT.md`` for the results folder ``out``: the data note, the
    summary, the official runs' departures, the published numbers, the notebooks, then every
    section of the catalogue and any artefact it does not declare."""
    out = Path(out)
    profile = profile or out.name
    synthetic = data_is_synthetic(out)
    tables, figures = _artefact_files(out)
    placed: set[tuple[str, str]] = set()

    lines: list[str] = [f"# ageest reproduction report — profile `{profile}`", ""]
    if synthetic:
        lines += [
            f"> **{SYNTHETIC_NOTE}.** Every number below was computed on synthetic images "
            "generated by `ageest.data.synthetic`, so it measures the pipeline and the relative "
            "behaviour of the losses, not the paper's results on FG-NET or CLAP2016. Run "
            "`ageest reproduce --profile paper --fgnet DIR --clap DIR` for the real datasets.",
            "",
        ]
    elif synthetic is None:
        lines += ["> The data-preparation notebook did not record which data were used.", ""]
    lines += _utkface_note(out)
    lines += _fgnet_note(out)
    answer = summary_lines(out)
    if answer:
        lines += ["## Summary", "", *answer]
    lines += departure_lines(out)
    lines += _published_lines()
    lines += ["## Notebooks", "", _notebook_table(out), ""]
    for section in SECTIONS:
        lines += _section_lines(out, section, tables, figures, bool(synthetic), placed)
    lines += _leftover_lines(out, tables, figures, bool(synthetic), placed)
    return "\n".join(lines).rstrip() + "\n"


def _published_lines() -> list[str]:
    """The paper, and the only located published numbers with their source and how the
    tables place them."""
    paper = paper_results()
    sourced = paper[paper.value.notna()]
    return [
        "Adaptive Mean-Residue Loss for Robust Facial Age Estimation (Zhao, Qian, Hou, Zeng; "
        "ICME 2022, arXiv 2203.17156). The paper reports FG-NET and CLAP2016 results; the "
        "sections below produce the corresponding tables and figures, then what ageest adds.",
        "",
        "## Published numbers", "",
        "The paper's own tables are not available here. These are the only located numbers, "
        "with their source; which readout, fold aggregation and epoch selection produced them "
        "is unknown. They appear in the tables' `published_*` columns beside the rows on "
        "real FG-NET, each with `published_differs`: what that row's runs did otherwise than "
        "the published setting (the official code's ResNet-50 at 227 px for 100 epochs on "
        "whole photos, leave-one-person-out, epoch chosen on the test subject: backbone, "
        "image size, epochs, face crop, age pretraining, protocol, selection), so no row "
        f"reads as equal to it; official-protocol rows are labelled *{OFFICIAL_LABEL}*. Rows "
        "on other data say why they are not comparable.", "",
        "| dataset | protocol | method | metric | published | source |",
        "|---|---|---|---|---:|---|",
        *[f"| {r.dataset} | {r.protocol} | {r.method} | {r.metric} | {r.value:g} | {r.source} |"
          for r in sourced.itertuples()],
        "", f"Every other published value is *{NOT_AVAILABLE}*.", "",
    ]


def _section_lines(out: Path, section, tables: dict, figures: dict, synthetic: bool,
                   placed: set[tuple[str, str]]) -> list[str]:
    """One catalogue section: its text, each artefact (or that it was not produced), and the
    notebook's recorded numbers after its last section; adds what it placed to ``placed``."""
    marked = synthetic and section.data
    where = f"*Notebook `{section.notebook}`.* " if section.notebook else ""
    present = [a for a in section.artefacts if a.name in (tables if a.kind == T else figures)]
    if section.notebook is None and not present:
        return []  # a command's artefacts: shown only when that command wrote them
    lines = [f"## {section.title}", "", f"{where}{section.text}", ""]
    for art in section.artefacts:
        files = tables if art.kind == T else figures
        lines += [f"### {art.title}", "", f"Corresponds to: {art.paper}.", ""]
        if art.name not in files:
            lines += [f"*Not produced in this run* (`{art.kind}s/{art.name}` is missing).", ""]
            continue
        placed.add((art.kind, art.name))
        lines += [_block(out, art.kind, files[art.name], art.title, marked), ""]
    summary = _metrics_summary(out, section.notebook) if section.notebook else ""
    if summary and section is _last_section_of(section.notebook):
        lines += [f"Numbers recorded in `metrics/{section.notebook}.json`:", "", summary, ""]
    return lines


def _leftover_lines(out: Path, tables: dict, figures: dict, synthetic: bool,
                    placed: set[tuple[str, str]]) -> list[str]:
    """Artefacts in the folder that no catalogue section placed, at the end."""
    leftovers = [(T, n) for n in tables if (T, n) not in placed] + \
        [(F, n) for n in figures if (F, n) not in placed]
    if not leftovers:
        return []
    lines = ["## Other artefacts", ""]
    for kind, name in leftovers:
        files = tables if kind == T else figures
        title = name.replace("_", " ")
        lines += [f"### {title}", "", _block(out, kind, files[name], title, synthetic), ""]
    return lines


def _ci(value: float, low: float, high: float, digits: int) -> str:
    if not math.isfinite(value):
        return "n/a"
    if math.isfinite(low) and math.isfinite(high):
        return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{value:.{digits}f}"


def _paired(out: Path) -> dict[str, str]:
    """baseline -> "AMR − baseline: d years, p = …" from the paired tests (clean protocol)."""
    path = out / "tables" / "paired_tests.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    return {str(r.baseline): f"{r.mean_diff:+.2f} (p = {r.p_value:.3g}, {r.test}, per {r.unit}"
            f"{_seed_verdict(r)})" for r in table.itertuples()}


def _seed_verdict(row) -> str:
    """"; beyond / within the seed spread s" for a paired-test row with two or more seeds
    (tables written before the seed columns existed have none: nothing is said)."""
    beyond = getattr(row, "beyond_seed_spread", None)
    if beyond is None or pd.isna(beyond) or int(getattr(row, "n_seeds", 0) or 0) < 2:
        return ""
    side = "beyond" if str(beyond) == "True" else "within"
    return f"; {side} the seed spread {float(row.seed_spread):.2f} of {int(row.n_seeds)} seeds"


def summary_lines(out: str | Path) -> list[str]:
    """The report's answer, first: per dataset, each method's headline metric with its CI (MAE
    pooled over test images, or the ε-error), the seed spread when there are seeds, and the
    paired test of AMR against each baseline; then which clean-protocol method scored best.
    Empty when notebook 03 has not written its tables. ``ageest reproduce`` prints the same."""
    out = Path(out)
    lines: list[str] = []
    specs = (("mae_comparison", "MAE (years)", "mae_pooled", 2, "mae_seed_sd"),
             ("clap_epsilon_comparison", "ε-error", "epsilon", 3, None))
    for name, metric, col, digits, sd_col in specs:
        path = out / "tables" / f"{name}.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        # the data's name as the table's caption gives it ("UTKFace", "FG-NET-format" ...)
        first = (out / "tables" / f"{name}.md").read_text(encoding="utf-8").split("\n", 1)[0]
        first = first.removeprefix(f"{SYNTHETIC_NOTE}. ")
        data = first.split(" MAE")[0] if name == "mae_comparison" else first.split(" ε")[0]
        paired = _paired(out) if name == "mae_comparison" else {}
        lines += [f"**{data}, {metric}, lower is better** ({len(table)} methods; "
                  f"`tables/{name}.csv`):", "",
                  f"| method | protocol | {metric} [95% CI] | seeds | seed sd | AMR − method (paired) |",
                  "|---|---|---:|---:|---:|---|"]
        for c in (f"{col}_low", f"{col}_high", sd_col or "seed_sd"):  # older tables lack some
            if c not in table.columns:
                table[c] = math.nan
        table = table.assign(protocol=table.get("protocol", "clean"), seeds=table.get("seeds", 1))
        for r in table.to_dict("records"):
            value = _ci(float(r[col]), float(r[f"{col}_low"]), float(r[f"{col}_high"]), digits)
            sd = float(r[sd_col]) if sd_col else math.nan
            sd_text = f"{sd:.{digits}f}" if math.isfinite(sd) else "—"
            clean_row = str(r["protocol"]).startswith("clean")
            test = paired.get(str(r.get("loss")), "—") if clean_row else "—"
            lines.append(f"| {r['method']} | {r['protocol']} | {value} | {r['seeds']} | "
                         f"{sd_text} | {test} |")
        clean = table[table["protocol"].astype(str).str.startswith("clean")]
        if len(clean) and clean[col].notna().any():
            best = clean.loc[clean[col].idxmin()]
            lines += ["", f"Best under the clean protocol: **{best['method']}**, {metric} "
                      f"{_ci(float(best[col]), float(best[f'{col}_low']), float(best[f'{col}_high']), digits)}"
                      ". A paired p-value above 0.05 (or overlapping CIs) means the data here do "
                      "not separate the two losses."]
        lines.append("")
    return lines


def departure_lines(out: str | Path) -> list[str]:
    """Where the official-protocol runs of ``out`` depart from the official scripts' settings
    (each run's ``official_departures``, :func:`ageest.official.check_run`), one line per
    departure with the runs that have it; empty when there are no official runs."""
    from ageest.engine import store

    runs = Path(out) / "runs"
    seen: dict[str, list[str]] = {}
    n_official = 0
    for run_dir in (store.find_run_dirs(runs) if runs.is_dir() else []):
        if not store.is_finished(run_dir):
            continue
        metrics = store.read_metrics(run_dir)
        if "official_departures" not in metrics:
            continue
        n_official += 1
        for line in metrics["official_departures"]:
            seen.setdefault(line, []).append(f"{run_dir.parent.name}/{run_dir.name}")
    if not n_official:
        return []
    lines = ["## Official-protocol runs against the official settings", "",
             f"{n_official} official-protocol run(s), each checked against the official "
             "scripts' settings (`ageest/resources/official_settings.yaml`)."]
    if not seen:
        return lines + [" Every run matches them.", ""]
    lines += [" They depart in these settings, so their numbers are the official *protocol* "
              "at another scale, not the official *recipe*:", "",
              "| setting: official value, this run's | runs |", "|---|---:|"]
    lines += [f"| {line} | {len(where)} |" for line, where in sorted(seen.items())]
    return lines + [""]


def _utkface_note(out: Path) -> list[str]:
    """The report's opening for a UTKFace run: real data, which split, not the paper's data."""
    path = out / "metrics" / "00_data_prep.json"
    utk = read_json(path).get("utkface") if path.is_file() else None
    if not utk:
        return []
    split = ", ".join(f"{k} {v}" for k, v in sorted(utk.get("split", {}).items()))
    return [
        f"> **Real data: UTKFace** ({utk['images']:,} faces; {utk.get('malformed_names', 0)} "
        "file name(s) lacking a field were kept and counted). Split: "
        f"`{utk.get('split_csv')}` ({split}; a seeded, age-stratified train/valid/test split "
        "unless a split CSV was given). UTKFace is **not one of the paper's datasets** (FG-NET, "
        "CLAP2016): no published number applies, and the tables name the data as UTKFace.", ""]


def _fgnet_note(out: Path) -> list[str]:
    """The report's opening for runs on the real FG-NET release: the photos, how the subjects
    were tested (named, since the CPU profile's is not the paper's leave-one-person-out), and
    the age-pretraining stage when there was one."""
    path = out / "metrics" / "00_data_prep.json"
    fg = read_json(path).get("fgnet") if path.is_file() else None
    if not fg or fg.get("dataset") != "fgnet":
        return []
    ev_path, tr_path = out / "metrics" / "03_evaluation.json", out / "metrics" / "02_training.json"
    evaluation = read_json(ev_path).get("evaluation") if ev_path.is_file() else None
    pre = read_json(tr_path).get("pretraining") if tr_path.is_file() else None
    text = (f"> **Real data: the FG-NET release** ({fg['images']:,} photos of {fg['subjects']} "
            f"subjects, {fg.get('grey_images', '?')} of them grey scans, turned into RGB). "
            f"Evaluation: {evaluation or fg.get('protocol', '?')}.")
    if pre:
        mae = pre.get("utkface_test_mae")
        text += (f" Every clean run started from an age-pretraining run on UTKFace faces "
                 f"(`{pre.get('loss')}`, {pre.get('epochs')} epochs, {pre.get('n_train')} "
                 f"training faces; its UTKFace test MAE "
                 f"{mae:.2f}); the official-protocol runs started from ImageNet, as the "
                 "official code does." if isinstance(mae, (int, float)) else
                 " Every clean run started from an age-pretraining run on UTKFace faces.")
    else:
        text += " Every run started from the backbone's ImageNet weights (no age pretraining)."
    text += (" FG-NET chose nothing here (recipe, epochs, crop: all chosen on UTKFace's "
             "development faces or beforehand); its numbers are the evaluation.")
    return [text, ""]


def _last_section_of(notebook: str):
    return [s for s in SECTIONS if s.notebook == notebook][-1]


def write_report(out: str | Path, *, profile: str | None = None) -> Path:
    """Write ``out/REPORT.md`` (see :func:`build_report`) and return its path."""
    out = Path(out)
    return atomic_write_text(out / "REPORT.md", build_report(out, profile=profile))


def summarise_value(value: Any) -> str:
    """Format a number for prose: three decimals, or "not available" for NaN/None.

    >>> summarise_value(3.6149), summarise_value(float("nan"))
    ('3.615', 'not available')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_AVAILABLE
    return f"{value:.3f}"
