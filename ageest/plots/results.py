"""Figures of the results, each drawn from a table (never from a model), returning a matplotlib
``Figure`` for :func:`ageest.pipeline.artefacts.save_figure`.

Every function takes the long-format tables of :mod:`ageest.analysis.comparisons` or the dataset tables of
:mod:`ageest.data`, so a figure can be redrawn from the CSVs under ``results/<profile>/tables``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ageest.official import OFFICIAL_SELECTION

SYNTHETIC_TAG = " (synthetic data)"


def _title(text: str, synthetic: bool) -> str:
    return text + (SYNTHETIC_TAG if synthetic else "")


def _finish(fig, ax, title: str, synthetic: bool, *, xlabel: str | None = None,
            ylabel: str | None = None, legend: int | None = None):
    """Label a one-panel figure (axis labels, legend font size, title marked synthetic when the
    data are) and lay it out."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if legend is not None:
        ax.legend(fontsize=legend)
    ax.set_title(_title(title, synthetic), fontsize=10)
    fig.tight_layout()
    return fig


def _official_style(method: str) -> dict:
    """Dashed lines for official-protocol (test-selected) methods, so they never pass unmarked."""
    return {"linestyle": "--"} if "official" in method else {}


def age_histograms(datasets: Mapping[str, pd.DataFrame], *, synthetic: bool = False,
                   bin_width: int = 5) -> plt.Figure:
    """One panel per dataset: histogram of the training label ``age``, split by ``split``
    when the dataset has one."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.4), squeeze=False)
    for ax, (name, df) in zip(axes[0], datasets.items(), strict=True):
        ages = df["age"].to_numpy(int)
        edges = np.arange(ages.min() - ages.min() % bin_width, ages.max() + bin_width + 1,
                          bin_width)
        splits = df["split"].dropna().unique() if "split" in df else []
        if len(splits):
            data = [df.loc[df["split"] == s, "age"].to_numpy(int) for s in sorted(splits)]
            ax.hist(data, bins=edges, stacked=True, label=sorted(splits))
            ax.legend(fontsize=8)
        else:
            ax.hist(ages, bins=edges, color="tab:blue")
        ax.set_title(f"{name}: {len(df)} images", fontsize=10)
        ax.set_xlabel("age (years)")
        ax.set_ylabel("images")
    fig.suptitle(_title("Age distributions", synthetic), fontsize=11)
    fig.tight_layout()
    return fig


def _epoch_ticks(ax, epochs: pd.Series) -> None:
    """Integer epoch ticks: every epoch when there are few, else matplotlib's integer choice."""
    unique = sorted(pd.unique(epochs))
    if len(unique) <= 12:
        ax.set_xticks(unique)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _method_column(history: pd.DataFrame) -> pd.Series:
    """``loss``, `` K=<k>`` for fixed K, `` [official]`` for test-selected runs."""
    method = history["loss"].astype(str) + np.where(
        history["k"].astype(str) == "adaptive", "", " K=" + history["k"].astype(str))
    if "selection" in history:
        official = history["selection"] == OFFICIAL_SELECTION
        method = method.where(~official, method + " [official]")
    return method


def learning_curves(history: pd.DataFrame, *, components: tuple[str, ...] | None = None,
                    synthetic: bool = False) -> plt.Figure:
    """One panel per loss component (``train_<component>`` columns of ``history.csv``) plus
    validation MAE, and test MAE where logged (official-protocol runs); one line per dataset and
    method (colour: method; marker: dataset; dashed: official protocol), averaged over folds and
    seeds."""
    history = history.assign(method=_method_column(history))
    if components is None:
        found = [c for c in history.columns if c.startswith("train_")
                 and pd.api.types.is_numeric_dtype(history[c]) and history[c].notna().any()
                 and not c.endswith(("k_mean", "images_per_s", "time_s"))]
        from ageest.losses import component_order

        # panel order: the total, each loss term in registry order, then the training MAE
        order = {f"train_{c}": i for i, c in enumerate(("total", *component_order(), "mae"))}
        components = tuple(sorted(found, key=lambda c: (order.get(c, len(order)), c)))
    panels = list(components) + [c for c in ("val_mae", "test_mae") if c in history
                                 and history[c].notna().any()]
    if not panels:
        raise ValueError(f"history has no train_* or val_mae columns: {list(history.columns)}")
    methods = list(dict.fromkeys(history["method"]))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    markers = {d: "os^dv"[i % 5] for i, d in enumerate(dict.fromkeys(history["dataset"]))}
    ncols = min(3, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.1 * nrows), squeeze=False)
    for ax, col in zip(axes.ravel(), panels, strict=False):
        curves = history.groupby(["dataset", "method", "epoch"])[col].mean()
        for (dataset, method), curve in curves.groupby(level=[0, 1], sort=False):
            if curve.isna().all():
                continue
            epochs = curve.index.get_level_values("epoch")
            ax.plot(epochs, curve.to_numpy(), marker=markers[dataset], ms=3,
                    color=colours[method], label=f"{dataset}: {method}",
                    **_official_style(method))
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("epoch")
        _epoch_ticks(ax, history["epoch"])
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center",
               ncol=min(4, max(1, len(labels))), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(_title("Learning curves (mean over folds and seeds)", synthetic), fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * int(np.ceil(len(labels) / 4)), 1, 1))
    return fig


def adaptive_k_per_epoch(history: pd.DataFrame, *, column: str = "train_k_mean",
                         synthetic: bool = False) -> plt.Figure:
    """Mean adaptive K per epoch, one panel per dataset and one line per method (band = range
    over folds and seeds)."""
    if column not in history or history[column].notna().sum() == 0:
        raise ValueError(f"history has no {column!r} values")
    history = history[history[column].notna()].assign(method=_method_column(history))
    datasets = list(dict.fromkeys(history["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 3.5),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = history[history["dataset"] == dataset]
        for method, runs in part.groupby("method", sort=False):
            stats = runs.groupby("epoch")[column].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], marker=".", label=method,
                    **_official_style(method))
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean adaptive K")
        _epoch_ticks(ax, part["epoch"])
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(_title("Adaptive K during training", synthetic), fontsize=11)
    fig.tight_layout()
    return fig


def cs_curves(table: pd.DataFrame, *, synthetic: bool = False) -> plt.Figure:
    """CS(θ) against θ (long table of :func:`ageest.analysis.comparisons.cs_curves`): one panel per
    readout (the clean rows' own readout, and argmax, the integer readout a published CS curve
    uses, where the official rows sit), one line per method with the same colour in every
    panel; official-protocol methods dashed."""
    readouts = list(dict.fromkeys(table["readout"])) if "readout" in table.columns else [None]
    fig, axes = plt.subplots(1, len(readouts), figsize=(5.0 * len(readouts), 3.8),
                             sharey=True, squeeze=False)
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(table["method"]))}
    for ax, readout in zip(axes[0], readouts, strict=True):
        part = table if readout is None else table[table["readout"] == readout]
        for method, rows in part.groupby("method", sort=False):
            ax.plot(rows["theta"], 100 * rows["cs"], marker="o", ms=3, label=method,
                    color=colours[method], **_official_style(method))
        ax.set_xlabel("error level θ (years)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if readout is not None:
            ax.set_title(f"{readout} readout", fontsize=9)
    axes[0][0].set_ylabel("cumulative score (%)")
    fig.suptitle(_title("Cumulative score", synthetic), fontsize=10)
    fig.tight_layout()
    return fig


def _grouped_bars(ax, series: list[tuple[str, Any]]) -> np.ndarray:
    """One bar per (label, values) series side by side in each group, official series hatched.
    Returns the group centres (for the tick labels)."""
    x = np.arange(len(series[0][1]))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label,
               hatch="//" if "official" in str(label) else None)
    return x


def age_group_mae(table: pd.DataFrame, *, synthetic: bool = False) -> plt.Figure:
    """Grouped bars of MAE per true-age group, one bar per method."""
    wide = table.pivot_table(index="group", columns="method", values="mae", sort=False)
    order = table.drop_duplicates("group")["group"].tolist()
    wide = wide.reindex(order)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(order) + 2), 3.6))
    x = _grouped_bars(ax, [(method, wide[method]) for method in wide.columns])
    ax.set_xticks(x, wide.index, rotation=0)
    return _finish(fig, ax, "MAE by age group", synthetic, xlabel="true age group", ylabel="MAE (years)",
                   legend=7)


def dual_protocol(table: pd.DataFrame, *, synthetic: bool = False) -> plt.Figure:
    """Bars of MAE (pooled, per-subject mean) under the official and the clean protocol."""
    rows = table[~table["protocol"].str.startswith(("optimism", "difference"))]
    metrics_ = [c for c in ("mae_pooled", "mae_subject_mean") if c in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    x = _grouped_bars(ax, [(row["protocol"], [row[m] for m in metrics_])
                           for _, row in rows.iterrows()])
    ax.set_xticks(x, [m.replace("_", " ") for m in metrics_])
    return _finish(fig, ax, "Official against clean protocol", synthetic, ylabel="MAE (years)", legend=8)


def ambiguity_calibration(table: pd.DataFrame, *, synthetic: bool = False) -> plt.Figure:
    """Reliability-style diagram: mean predicted std against mean annotators' σ per σ bin, one
    line per method, with the identity line (perfect agreement of spreads)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for method, part in table.groupby("method", sort=False):
        rho = part["spearman_std_sigma"].iloc[0]
        ax.plot(part["sigma_mean"], part["pred_std_mean"], marker="o",
                label=f"{method} (ρ={rho:.2f})")
    lim = float(np.nanmax([table["sigma_mean"].max(), table["pred_std_mean"].max()])) * 1.1
    ax.plot([0, lim], [0, lim], color="grey", linestyle=":", label="identity")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    return _finish(fig, ax, "Ambiguity calibration", synthetic, xlabel="annotators' σ (bin mean, years)", ylabel="predicted std (bin mean, years)",
                   legend=7)


def error_bars(value, low, high) -> np.ndarray:
    """``errorbar``'s (2, n) distances from each value down to ``low`` and up to ``high``. A
    bound that passes its value by rounding only (an interval collapsed onto it: one test
    subject, or a bootstrap of identical errors) is drawn as 0; one that passes it by more is an
    error, not a bar pointing the wrong way.

    >>> error_bars([11.584255535445646], [11.584255535445644], [11.584255535445644]).tolist()
    [[1.7763568394002505e-15], [0.0]]
    """
    value, low, high = (np.asarray(a, dtype=np.float64) for a in (value, low, high))
    bars = np.vstack([value - low, high - value])
    rounding = 1e-9 * np.maximum(1.0, np.abs(value))  # far above float64's spacing here
    if (bars < -rounding).any():
        raise ValueError(f"an interval does not contain its value (value {value.tolist()}, low "
                         f"{low.tolist()}, high {high.tolist()})")
    return np.clip(bars, 0.0, None)


def k_ablation(table: pd.DataFrame, *, synthetic: bool = False) -> plt.Figure:
    """MAE against fixed K with its CI, and the adaptive K as a horizontal band."""
    fixed = table[table["k"] != "adaptive"].sort_values("k_value")
    adaptive = table[table["k"] == "adaptive"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if len(fixed):
        yerr = error_bars(fixed["mae_pooled"], fixed["mae_pooled_low"], fixed["mae_pooled_high"])
        ax.errorbar(fixed["k_value"], fixed["mae_pooled"], yerr=yerr, marker="o", capsize=3,
                    label="fixed K (mean_residue)")
    if len(adaptive):
        row = adaptive.iloc[0]
        ax.axhline(row["mae_pooled"], color="tab:red", label="adaptive K (AMR)")
        ax.axhspan(row["mae_pooled_low"], row["mae_pooled_high"], color="tab:red", alpha=0.15)
    ax.set_xlabel("K")
    ax.set_ylabel("MAE, pooled (years)")
    if len(fixed):
        ax.set_xticks(fixed["k_value"].astype(int))
    return _finish(fig, ax, "MAE versus K", synthetic, legend=8)


def adaptive_k_distribution(history: pd.DataFrame, *, column: str = "train_k_mean",
                            synthetic: bool = False) -> plt.Figure:
    """Distribution over runs (folds × seeds) of the mean adaptive K, per epoch (box plots)."""
    part = history[history[column].notna()] if column in history else history.iloc[0:0]
    if part.empty:
        raise ValueError(f"history has no {column!r} values for the adaptive runs")
    epochs = sorted(part["epoch"].unique())
    data = [part.loc[part["epoch"] == e, column].to_numpy() for e in epochs]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(epochs) + 2), 3.4))
    ax.boxplot(data, positions=range(len(epochs)), widths=0.6)
    ax.set_xticks(range(len(epochs)), [str(e) for e in epochs])
    return _finish(fig, ax, "Adaptive K over training", synthetic, xlabel="epoch", ylabel="mean adaptive K of a run")


def subject_trajectories(table: pd.DataFrame, *, synthetic: bool = False) -> plt.Figure:
    """One panel per subject of :func:`ageest.analysis.comparisons.subject_trajectories`: each
    method's predicted age against the true age across that person's photos, with the
    identity line (a perfect prediction)."""
    subjects = list(dict.fromkeys(table["subject"]))
    n = max(len(subjects), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    methods = list(dict.fromkeys(table["method"]))
    for ax, subject in zip(axes.flat, subjects, strict=False):
        mine = table[table["subject"] == subject]
        top = float(max(mine["age"].max(), mine["predicted"].max())) + 2
        ax.plot([0, top], [0, top], color="0.7", lw=1, ls="--", label="true age")
        for method in methods:
            m = mine[mine["method"] == method]
            ax.plot(m["age"], m["predicted"], marker="o", ms=3, lw=1.2, label=method)
        ax.set_title(f"subject {subject} ({mine['image_id'].nunique()} photos)", fontsize=9)
        ax.set_xlabel("true age")
        ax.set_ylabel("predicted age")
    for ax in list(axes.flat)[len(subjects):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(_title("Ageing trajectories of single subjects (test folds, mean over seeds)",
                        synthetic), fontsize=11)
    fig.tight_layout()
    return fig
