"""Figures of notebook 01: the loss on hand-made example distributions, and the explorer's
picture. The numbers come from :mod:`ageest.analysis.loss_illustration`; only the drawing is here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ageest.analysis.loss_illustration import (
    RESIDUE_COLOR,
    TERM_LABELS,
    TERMS,
    TOPK_COLOR,
    Examples,
    term_gradients,
    terms_table,
    topk_mask,
)


def _age_window(p: np.ndarray, true_age: int, start_age: int, floor: float = 1e-3,
                margin: int = 3) -> tuple[float, float]:
    """x-limits covering every age with probability above ``floor`` in any row of ``p`` (N, C)
    and the true age."""
    idx = np.flatnonzero((p > floor).any(axis=0))
    lo = min(int(idx.min()) if idx.size else 0, true_age - start_age) - margin
    hi = max(int(idx.max()) if idx.size else p.shape[1] - 1, true_age - start_age) + margin
    lo, hi = max(lo, 0), min(hi, p.shape[1] - 1)
    return start_age + lo - 0.5, start_age + hi + 0.5


def _draw_distribution(ax, p: np.ndarray, mask: np.ndarray, true_age: int, start_age: int,
                       expected: float, legend: bool = True) -> None:
    """Bars of p (C,) coloured by top-K membership, the true age and the expected age."""
    a = np.arange(p.shape[0]) + start_age
    ax.bar(a[mask], p[mask], width=0.9, color=TOPK_COLOR, label="top-K")
    ax.bar(a[~mask], p[~mask], width=0.9, color=RESIDUE_COLOR, label="residue (outside top-K)")
    ax.axvline(true_age, color="black", lw=1.5, label=f"true age {true_age}")
    ax.axvline(expected, color="tab:red", lw=1.5, ls="--", label=f"expected age {expected:.1f}")
    ax.set_ylabel("p(age)")
    if legend:
        ax.legend(fontsize=7, loc="upper right")


def distributions_figure(examples: Examples, *, k: int | None = None) -> Figure:
    """One panel per example: the predicted distribution with the top-K set shaded, the
    residue probabilities, the true and expected age, and K, p(y), L_m and L_r in the corner."""
    names, logits, true_age = examples.names, examples.stacked, examples.true_age
    start_age = examples.setup.start_age
    t = terms_table(examples, k=k)
    p = torch.softmax(logits, dim=1).numpy()
    ncols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    xlim = _age_window(p, true_age, start_age)
    for i, name in enumerate(names):
        ax, row = axes[i], t.iloc[i]
        mask = topk_mask(logits[i], true_age, start_age=start_age, k=k).numpy()
        _draw_distribution(ax, p[i], mask, true_age, start_age, row.expected_age, legend=i == 0)
        ax.set_title(name)
        ax.text(0.02, 0.97,
                f"K = {row.k}   p(y) = {row.p_true:.3f}\n$L_m$ = {row['mean']:.2f}   "
                f"$L_r$ = {row.residue:.3f}\nresidue mass {row.residue_mass:.2f}",
                transform=ax.transAxes, va="top", fontsize=8,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
        ax.set_xlim(*xlim)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[-ncols:]:
        ax.set_xlabel("age (years)")
    kind = "adaptive top-K ($p_j \\geq p_y$)" if k is None else f"fixed top-K, K = {k}"
    fig.suptitle(f"Example predictions for true age {true_age}: {kind}")
    return fig


def loss_response_figure(table: pd.DataFrame) -> Figure:
    """Left: each loss's value on each example (grouped bars). Right: the AMR loss split into its
    weighted terms (stacked), which shows which term reacts to which failure."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_tot, ax_amr = fig.subplots(1, 2, width_ratios=[3, 2])
    examples = list(dict.fromkeys(table.example))
    loss_names = list(dict.fromkeys(table.loss))
    x = np.arange(len(examples))
    width = 0.8 / len(loss_names)
    pivot = table.pivot(index="example", columns="loss", values="total").loc[examples]
    for i, name in enumerate(loss_names):
        ax_tot.bar(x + (i - (len(loss_names) - 1) / 2) * width, pivot[name].to_numpy(), width,
                   label=name)
    ax_tot.set_xticks(x, examples, fontsize=8)
    ax_tot.set_ylabel("loss value")
    ax_tot.set_title("Same distributions, five losses")
    ax_tot.legend(fontsize=7)
    amr = table[table.loss == "AMR"].set_index("example").loc[examples]
    parts = [("ce", "$L_s$", "tab:gray"), ("weighted_mean", r"$\lambda_1 L_m$", "tab:red"),
             ("weighted_residue", r"$\lambda_2 L_r$", RESIDUE_COLOR)]
    bottom = np.zeros(len(examples))
    for col, label, color in parts:
        vals = amr[col].to_numpy()
        ax_amr.bar(x, vals, 0.6, bottom=bottom, label=label, color=color)
        bottom += vals
    ax_amr.set_xticks(x, examples, fontsize=8)
    ax_amr.set_title("AMR = $L_s + \\lambda_1 L_m + \\lambda_2 L_r$")
    ax_amr.legend(fontsize=7)
    return fig


def _bars(ax, x, heights, colors, width: float = 0.9) -> None:
    """A bar per age as one collection of rectangles: what ``ax.bar`` draws, without a patch
    per bar (a 16-panel figure of 70 bars each took ~4 s to save as PNG and PDF)."""
    from matplotlib.collections import PolyCollection

    x, h = np.asarray(x, dtype=float), np.asarray(heights, dtype=float)
    left, right, zero = x - width / 2, x + width / 2, np.zeros_like(h)
    verts = np.stack([np.stack([left, zero], 1), np.stack([left, h], 1),
                      np.stack([right, h], 1), np.stack([right, zero], 1)], 1)  # (N, 4, 2)
    ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors="none"))
    ax.autoscale_view()


def gradients_figure(examples: Examples, *, k: int | None = None,
                     terms: Sequence[str] = ("ce", "mean", "variance", "residue")) -> Figure:
    """Rows: examples; columns: loss terms; each panel the gradient of the (unweighted) term with
    respect to every logit. Negative bars are logits gradient descent raises."""
    names, logits, true_age, setup = (examples.names, examples.stacked, examples.true_age,
                                      examples.setup)
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
        raise ValueError(f"unknown terms {unknown}; choose from {TERMS}")
    p = torch.softmax(logits, dim=1).numpy()
    start_age = setup.start_age
    xlim = _age_window(p, true_age, start_age)
    a = np.arange(logits.shape[1]) + start_age
    fig = Figure(figsize=(3.1 * len(terms), 1.9 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), len(terms), sharex=True, squeeze=False)
    for i, name in enumerate(names):
        grads = term_gradients(logits[i], true_age, setup, k=k)
        mask = topk_mask(logits[i], true_age, start_age=start_age, k=k).numpy()
        for j, term in enumerate(terms):
            ax = axes[i, j]
            g = grads[term]
            colors = np.where(mask, TOPK_COLOR, RESIDUE_COLOR)
            _bars(ax, a, g, colors)
            ax.axhline(0, color="black", lw=0.5)
            ax.axvline(true_age, color="black", lw=1)
            ax.set_xlim(*xlim)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(TERM_LABELS[term], fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name}\n∂L/∂z", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("age (years)", fontsize=8)
    fig.suptitle("Gradient of each term w.r.t. the logits (blue: top-K, orange: residue)")
    return fig


def k_sweep_figure(table: pd.DataFrame) -> Figure:
    """K, the residue loss and p(y) against sharpness, one line per shape (from
    :func:`k_sweep`)."""
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for shape, grp in table.groupby("shape", sort=False):
        axes[0].plot(grp.sharpness, grp.k, marker="o", ms=3, label=shape)
        axes[1].plot(grp.sharpness, grp.residue, marker="o", ms=3, label=shape)
        axes[2].plot(grp.sharpness, grp.p_true, marker="o", ms=3, label=shape)
    for ax, title in zip(axes, ("adaptive K", "residue loss $L_r$", "p(true age)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("sharpness (σ = base σ / sharpness)")
        ax.set_title(title)
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    axes[1].set_ylim(bottom=0)
    fig.suptitle("How the adaptive top-K set and the residue move as a prediction sharpens")
    return fig


def explorer_figure(state: Mapping[str, object]) -> Figure:
    """The explorer's picture: the distribution with top-K shaded (top), the gradient of each
    weighted term and of the total with respect to the logits (middle), and the unweighted
    residue gradient alone (bottom; it is small once multiplied by λ2)."""
    fig = Figure(figsize=(9, 6.2), layout="constrained")
    ax_p, ax_g, ax_r = fig.subplots(3, 1, sharex=True, height_ratios=[2, 1.5, 1.1])
    probs, mask, ages = state["probs"], state["in_topk"], state["ages"]
    start_age = int(ages[0])
    _draw_distribution(ax_p, probs, mask, state["true_age"], start_age, state["expected_age"])
    kind = "adaptive" if state["k_mode"] == "adaptive" else "fixed"
    ax_p.set_title(f"{state['shape']}, sharpness {state['sharpness']:.2f}: "
                   f"{kind} K = {state['k']}, p(y) = {state['p_true']:.3f}")
    g = state["gradients"]
    lam1, lam2 = state["lambda_mean"], state["lambda_residue"]
    ax_g.plot(ages, g["ce"], color="tab:gray", lw=1.2, label="$L_s$")
    ax_g.plot(ages, lam1 * g["mean"], color="tab:red", lw=1.2, label=r"$\lambda_1 L_m$")
    ax_g.plot(ages, lam2 * g["residue"], color=RESIDUE_COLOR, lw=1.2, label=r"$\lambda_2 L_r$")
    ax_g.plot(ages, g["total"], color="black", lw=1.8, label="total")
    ax_g.axhline(0, color="black", lw=0.5)
    ax_g.axvline(state["true_age"], color="black", lw=1)
    ax_g.set_ylabel("∂L/∂logit")
    ax_g.legend(fontsize=7, ncols=4, loc="lower right")
    _bars(ax_r, ages, g["residue"], np.where(mask, TOPK_COLOR, RESIDUE_COLOR))
    ax_r.axhline(0, color="black", lw=0.5)
    ax_r.axvline(state["true_age"], color="black", lw=1)
    ax_r.set_ylabel("∂$L_r$/∂logit", fontsize=8)
    ax_r.set_xlabel("age (years)")
    xlim = _age_window(probs[None, :], state["true_age"], start_age, floor=1e-4, margin=4)
    ax_p.set_xlim(*xlim)
    return fig
