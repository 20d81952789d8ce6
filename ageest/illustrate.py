"""The loss illustration of notebook 01: example predicted age distributions, how each loss
responds to them, the gradient of each term with respect to the logits, how the adaptive top-K
size moves as a distribution sharpens, and an ipywidgets explorer of all of it.

Everything here works on hand-made logits, never on a trained model, so it runs in a second on a
CPU and the figures are exact pictures of the loss definitions in :mod:`ageest.losses`.

Example distributions (:func:`example_logits`) are discretised Gaussians over the integer ages
``start_age .. start_age + num_classes - 1`` with standard deviation ``base_sigma / sharpness``:

- ``unimodal``: one mode ``offset`` years above the true age (a nearly right prediction);
- ``shifted``: one mode ``shift`` years away from the true age (a confidently wrong prediction);
- ``bimodal``: two modes ``separation`` years apart with the true age in the valley between them
  (weights 0.6 / 0.4). Its expected age is close to the truth, so the mean loss barely sees it;
  the adaptive top-K has to stretch over both modes (large K, small residue), whereas a small
  fixed K leaves one mode outside top-K and penalises it.

Optional fixed "logit noise" (a seeded Gaussian pattern, the same for every sharpness) mimics the
ragged output of a real network; it is what makes the adaptive K depend on sharpness: for a clean
Gaussian, K only counts the ages at least as close to the mode as the true age.

References
----------
Zhao, Qian, Hou, Zeng. Adaptive Mean-Residue Loss for Robust Facial Age Estimation. ICME 2022.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ageest import losses

SHAPES = ("unimodal", "bimodal", "shifted")
#: terms whose gradient with respect to the logits is shown (unweighted)
TERMS = ("ce", "mean", "variance", "residue", "kl")
TERM_LABELS = {
    "ce": "cross-entropy $L_s$",
    "mean": "mean $L_m$",
    "variance": "variance $L_v$",
    "residue": "residue $L_r$",
    "kl": "DLDL KL",
}
TOPK_COLOR = "tab:blue"
RESIDUE_COLOR = "tab:orange"


# ---------------------------------------------------------------------------------------------
# example distributions


def _check_age(true_age: int, num_classes: int, start_age: int) -> None:
    end_age = start_age + num_classes - 1
    if isinstance(true_age, bool) or not isinstance(true_age, (int, np.integer)):
        raise ValueError(f"true_age must be an integer age, got {true_age!r}")
    if not start_age <= true_age <= end_age:
        raise ValueError(
            f"true_age={true_age} is outside the age range {start_age}..{end_age} "
            f"(start_age={start_age}, num_classes={num_classes}); pick an age inside it"
        )


def example_logits(
    true_age: int,
    shape: str = "unimodal",
    sharpness: float = 1.0,
    *,
    num_classes: int = 70,
    start_age: int = 0,
    base_sigma: float = 4.0,
    offset: float = 1.0,
    shift: float = 8.0,
    separation: float = 12.0,
    noise: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    r"""Logits of one example predicted age distribution, shape ``(num_classes,)``.

    The logits are the log of a (mixture of) discretised Gaussian(s) with standard deviation
    :math:`\sigma = \text{base\_sigma} / \text{sharpness}`, plus ``noise`` times a fixed standard
    normal pattern drawn from a local generator seeded with ``seed`` (global RNG untouched).

    Parameters
    ----------
    true_age : int
        The true age; the modes are placed relative to it.
    shape : {"unimodal", "bimodal", "shifted"}
        ``unimodal``: mode at ``true_age + offset``; ``shifted``: mode at ``true_age + shift``
        (``true_age - shift`` when that would leave the age range); ``bimodal``: modes at
        ``true_age - separation/2`` (weight 0.6) and ``true_age + separation/2`` (weight 0.4).
    sharpness : float
        ``> 0``; larger is more confident.
    num_classes, start_age : int
        Age classes ``start_age .. start_age + num_classes - 1``.
    base_sigma, offset, shift, separation : float
        Geometry of the shapes, in years.
    noise : float
        Standard deviation of the fixed logit noise (0 = smooth).
    seed : int
        Seed of the noise pattern.

    Returns
    -------
    torch.Tensor
        Float64 logits, shape ``(num_classes,)``. Float64 on purpose: for a confident wrong
        prediction p(true age) underflows to 0 in float32, every class then ties with it, the
        adaptive K jumps to C and the residue vanishes (a real effect in float32 training, but
        not the picture of the definition).

    Examples
    --------
    >>> z = example_logits(30, "unimodal", 2.0)
    >>> int(z.argmax()), z.shape
    (31, torch.Size([70]))
    >>> int(example_logits(30, "shifted").argmax())
    38
    """
    _check_age(true_age, num_classes, start_age)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if not (math.isfinite(sharpness) and sharpness > 0):
        raise ValueError(f"sharpness must be finite and > 0, got {sharpness!r}")
    if not (math.isfinite(base_sigma) and base_sigma > 0):
        raise ValueError(f"base_sigma must be finite and > 0, got {base_sigma!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    end_age = start_age + num_classes - 1
    a = torch.arange(num_classes, dtype=torch.float64) + start_age  # (C,)
    sigma = base_sigma / sharpness
    if shape == "unimodal":
        centres, weights = [true_age + offset], [1.0]
    elif shape == "shifted":
        centre = true_age + shift if true_age + shift <= end_age else true_age - shift
        centres, weights = [centre], [1.0]
    else:
        centres = [true_age - separation / 2, true_age + separation / 2]
        weights = [0.6, 0.4]
    c = torch.tensor(centres, dtype=torch.float64).unsqueeze(1)  # (M, 1)
    w = torch.tensor(weights, dtype=torch.float64).unsqueeze(1)  # (M, 1)
    # log of the mixture density, through logsumexp so a tiny sigma stays finite
    logits = torch.logsumexp(torch.log(w) - (a - c) ** 2 / (2 * sigma**2), dim=0)  # (C,)
    logits = logits - logits.max()
    if noise > 0:
        gen = torch.Generator().manual_seed(int(seed))
        logits = logits + noise * torch.randn(num_classes, generator=gen, dtype=torch.float64)
    return logits


def example_distributions(
    true_age: int = 30,
    *,
    num_classes: int = 70,
    start_age: int = 0,
    base_sigma: float = 4.0,
    noise: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The four example predictions of notebook 01, name -> logits ``(num_classes,)``.

    ``unimodal, broad`` (sharpness 0.5), ``unimodal, sharp`` (2), ``shifted`` (1) and
    ``bimodal`` (1.5); see :func:`example_logits`.

    Examples
    --------
    >>> list(example_distributions())
    ['unimodal, broad', 'unimodal, sharp', 'shifted', 'bimodal']
    """
    specs = {
        "unimodal, broad": ("unimodal", 0.5),
        "unimodal, sharp": ("unimodal", 2.0),
        "shifted": ("shifted", 1.0),
        "bimodal": ("bimodal", 1.5),
    }
    return {
        name: example_logits(
            true_age, shape, sharpness, num_classes=num_classes, start_age=start_age,
            base_sigma=base_sigma, noise=noise, seed=seed,
        )
        for name, (shape, sharpness) in specs.items()
    }


def _stack(examples: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    if not examples:
        raise ValueError("examples is empty; pass e.g. example_distributions(true_age)")
    names = list(examples)
    logits = torch.stack([torch.as_tensor(examples[n], dtype=torch.float64) for n in names])
    if logits.ndim != 2:
        raise ValueError(
            f"each example must be a 1-D tensor of logits (num_classes,), got stacked shape "
            f"{tuple(logits.shape)}"
        )
    return names, logits  # (N, C)


# ---------------------------------------------------------------------------------------------
# numbers: terms, losses, gradients, K


def topk_mask(logits: torch.Tensor, true_age: int, *, start_age: int = 0,
              k: int | None = None) -> torch.Tensor:
    """Boolean ``(C,)`` mask of the top-K set of one distribution (logits ``(C,)``): the set the
    residue loss leaves out, by its own rule (:func:`ageest.losses.topk_mask`, ranked on the
    logits; fixed ``k`` breaks ties to the younger age).

    Examples
    --------
    >>> import torch
    >>> topk_mask(torch.tensor([3.0, 2.0, 1.0]), 1).tolist()
    [True, True, False]
    >>> topk_mask(torch.tensor([3.0, 2.0, 1.0]), 1, k=1).tolist()
    [True, False, False]
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    _check_age(true_age, logits.shape[-1], start_age)
    return losses.topk_mask(logits.detach().unsqueeze(0), torch.tensor([true_age]),
                            start_age=start_age, k=k)[0]


def terms_table(
    examples: Mapping[str, torch.Tensor],
    true_age: int,
    *,
    start_age: int = 0,
    k: int | None = None,
    eps: float = 1e-3,
    sigma: float = 2.0,
) -> pd.DataFrame:
    """One row per example: the quantities the AMR loss is built from.

    Columns: ``example``, ``expected_age``, ``p_true`` (probability of the true age), ``k``
    (size of top-K: the adaptive K, or ``k`` when fixed), ``topk_mass`` and ``residue_mass``
    (probability inside / outside top-K), ``residue_entropy`` (the exact entropy
    ``sum_{j not in top-K} -p_j log p_j``, ε = 0), and the unweighted loss terms ``ce``, ``mean``,
    ``variance``, ``residue`` (with the loss's ``eps``) and ``kl`` (DLDL, label σ = ``sigma``).

    Examples
    --------
    >>> t = terms_table(example_distributions(30), 30)
    >>> t.loc[t.example == "unimodal, sharp", "k"].item()
    3
    """
    names, logits = _stack(examples)
    n, c = logits.shape
    _check_age(true_age, c, start_age)
    ages = torch.full((n,), true_age)
    with torch.no_grad():
        p = torch.softmax(logits, dim=1)  # (N, C)
        a = torch.arange(c, dtype=p.dtype) + start_age
        masks = torch.stack([topk_mask(z, true_age, start_age=start_age, k=k) for z in logits])
        residue_mass = torch.where(masks, 0.0, p).sum(dim=1)
        table = pd.DataFrame({
            "example": names,
            "expected_age": (p @ a).numpy(),
            "p_true": p[:, true_age - start_age].numpy(),
            "k": masks.sum(dim=1).numpy().astype(int),
            "topk_mass": (1 - residue_mass).numpy(),
            "residue_mass": residue_mass.numpy(),
            "residue_entropy": losses.residue_loss(
                logits, ages, start_age=start_age, k=k, eps=0.0, reduction="none").numpy(),
            "ce": F.cross_entropy(logits, ages - start_age, reduction="none").numpy(),
            "mean": losses.mean_loss(logits, ages, start_age=start_age, reduction="none").numpy(),
            "variance": losses.variance_loss(logits, start_age=start_age,
                                             reduction="none").numpy(),
            "residue": losses.residue_loss(
                logits, ages, start_age=start_age, k=k, eps=eps, reduction="none").numpy(),
            "kl": losses.label_distribution_kl(
                logits, ages, sigma, start_age=start_age, reduction="none").numpy(),
        })
    return table


def compared_losses(
    *,
    num_classes: int = 70,
    start_age: int = 0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    lambda_variance: float = 0.05,
    fixed_k: int = 4,
    eps: float = 1e-3,
    sigma: float = 2.0,
) -> dict[str, torch.nn.Module]:
    """The five losses notebook 01 compares, display label (the registry's) -> composite loss.

    ``CE``, ``mean-variance`` (λ1, λ2 = ``lambda_variance``), ``AMR`` (adaptive K; λ1, λ2 =
    ``lambda_residue``), ``mean-residue K=<fixed_k>`` (λ1, λ2) and ``DLDL`` (label σ =
    ``sigma``).

    Examples
    --------
    >>> list(compared_losses(fixed_k=4))
    ['CE', 'mean-variance', 'AMR', 'mean-residue K=4', 'DLDL']
    """
    rng = {"start_age": start_age, "end_age": start_age + num_classes - 1}
    weights = losses.weight_kwargs({"lambda_mean": lambda_mean, "lambda_residue": lambda_residue,
                                    "lambda_variance": lambda_variance})
    label = {name: spec.label for name, spec in losses.LOSSES.items()}
    return {
        label["ce"]: losses.get_loss("ce", **rng),
        label["mean_variance"]: losses.get_loss("mean_variance", **weights["mean_variance"],
                                                **rng),
        label["amr"]: losses.get_loss("amr", **weights["amr"], eps=eps, **rng),
        f"{label['mean_residue']} K={fixed_k}": losses.get_loss(
            "mean_residue", **weights["mean_residue"], k=fixed_k, eps=eps, **rng),
        label["dldl"]: losses.get_loss("dldl", sigma=sigma, **rng),
    }


def loss_response_table(
    examples: Mapping[str, torch.Tensor],
    true_age: int,
    *,
    start_age: int = 0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    lambda_variance: float = 0.05,
    fixed_k: int = 4,
    eps: float = 1e-3,
    sigma: float = 2.0,
) -> pd.DataFrame:
    """How each loss of :func:`compared_losses` responds to the same distributions.

    Long format, one row per (example, loss): ``example``, ``loss``, ``total`` and the loss's
    unweighted components (``ce``, ``mean``, ``variance``, ``residue``, ``kl``; NaN where the loss
    has no such term) and ``weighted_*`` = λ × component for the regularisers, so that
    ``total = ce + weighted_mean + weighted_variance/residue`` for the composite losses.

    Examples
    --------
    >>> t = loss_response_table(example_distributions(30), 30)
    >>> sorted(t.loss.unique())[:2]
    ['AMR', 'CE']
    """
    names, logits = _stack(examples)
    n, c = logits.shape
    _check_age(true_age, c, start_age)
    table = compared_losses(num_classes=c, start_age=start_age, lambda_mean=lambda_mean,
                            lambda_residue=lambda_residue, lambda_variance=lambda_variance,
                            fixed_k=fixed_k, eps=eps, sigma=sigma)
    rows = []
    with torch.no_grad():
        # one call per example (not per batch element inside a loss): each row is its own batch
        for name, z in zip(names, logits, strict=True):
            for label, loss in table.items():
                total = float(loss(z.unsqueeze(0), torch.tensor([true_age])))
                comp = loss.last_components
                row = {"example": name, "loss": label, "total": total}
                in_total = set(comp) - {"total", "k_mean"}
                if "kl" in in_total:
                    in_total.discard("ce")  # DLDL logs the cross-entropy but does not train on it
                row.update({t: comp[t] if t in in_total else math.nan for t in TERMS})
                lam_mean = getattr(loss, "lambda_mean", math.nan)
                lam_other = getattr(loss, "lambda_variance", getattr(loss, "lambda_residue",
                                                                     math.nan))
                row["weighted_mean"] = lam_mean * row["mean"]
                row["weighted_variance"] = lam_other * row["variance"]
                row["weighted_residue"] = lam_other * row["residue"]
                rows.append(row)
    return pd.DataFrame(rows)


def term_gradients(
    logits: torch.Tensor,
    true_age: int,
    *,
    start_age: int = 0,
    k: int | None = None,
    eps: float = 1e-3,
    sigma: float = 2.0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
) -> dict[str, np.ndarray]:
    r"""Gradient of each loss term with respect to the logits of one distribution (autograd).

    Returns term -> ``(C,)`` array for the unweighted terms ``ce``, ``mean``, ``variance``,
    ``residue`` (top-K adaptive or fixed ``k``), ``kl``, and ``total`` for
    :math:`L_s + \lambda_1 L_m + \lambda_2 L_r` (AMR when ``k=None``). Every gradient sums to 0
    over the classes, since adding a constant to all logits changes no probability.

    Examples
    --------
    >>> import torch
    >>> z = example_logits(30, "unimodal")
    >>> g = term_gradients(z, 30)
    >>> p = torch.softmax(z, 0).numpy()
    >>> bool(abs(g["ce"][30] - (p[30] - 1)) < 1e-6)
    True
    """
    z0 = torch.as_tensor(logits, dtype=torch.float64).detach()
    if z0.ndim != 1:
        raise ValueError(f"logits must have shape (C,), got {tuple(z0.shape)}")
    _check_age(true_age, z0.shape[0], start_age)
    ages = torch.tensor([true_age])
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "ce": lambda z: F.cross_entropy(z, ages - start_age),
        "mean": lambda z: losses.mean_loss(z, ages, start_age=start_age),
        "variance": lambda z: losses.variance_loss(z, start_age=start_age),
        "residue": lambda z: losses.residue_loss(z, ages, start_age=start_age, k=k, eps=eps),
        "kl": lambda z: losses.label_distribution_kl(z, ages, sigma, start_age=start_age),
    }
    fns["total"] = lambda z: (fns["ce"](z) + lambda_mean * fns["mean"](z)
                              + lambda_residue * fns["residue"](z))
    out = {}
    for name, fn in fns.items():
        z = z0.clone().unsqueeze(0).requires_grad_(True)  # (1, C)
        (grad,) = torch.autograd.grad(fn(z), z)
        out[name] = grad[0].numpy()
    return out


def gradient_table(
    examples: Mapping[str, torch.Tensor],
    true_age: int,
    *,
    start_age: int = 0,
    k: int | None = None,
    eps: float = 1e-3,
    sigma: float = 2.0,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
) -> pd.DataFrame:
    """Per example and term: the gradient's L2 norm, its largest magnitude and the age where that
    occurs, and the gradient at the true age (negative: the term pushes ``p_y`` up).

    Examples
    --------
    >>> t = gradient_table(example_distributions(30), 30)
    >>> bool((t.loc[t.term == "ce", "grad_true_age"] < 0).all())
    True
    """
    rows = []
    for name, z in examples.items():
        grads = term_gradients(z, true_age, start_age=start_age, k=k, eps=eps, sigma=sigma,
                               lambda_mean=lambda_mean, lambda_residue=lambda_residue)
        for term, g in grads.items():
            j = int(np.abs(g).argmax())
            rows.append({
                "example": name, "term": term, "l2_norm": float(np.linalg.norm(g)),
                "max_abs": float(abs(g[j])), "age_of_max": start_age + j,
                "grad_true_age": float(g[true_age - start_age]),
            })
    return pd.DataFrame(rows)


def sharpness_grid(points: int = 25, low: float = 0.3, high: float = 10.0) -> np.ndarray:
    """``points`` log-spaced sharpness values from ``low`` to ``high`` (the K sweep's x-axis).

    Examples
    --------
    >>> sharpness_grid(3, 1.0, 100.0).tolist()
    [1.0, 10.0, 100.0]
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}")
    return np.logspace(math.log10(low), math.log10(high), points)


def k_sweep(
    true_age: int = 30,
    sharpness: Sequence[float] | np.ndarray | None = None,
    *,
    shapes: Sequence[str] = SHAPES,
    num_classes: int = 70,
    start_age: int = 0,
    base_sigma: float = 4.0,
    noise: float = 0.0,
    seed: int = 0,
    eps: float = 1e-3,
) -> pd.DataFrame:
    """How the adaptive K and the residue move as each shape sharpens.

    One row per (shape, sharpness): ``shape``, ``sharpness``, ``sigma`` (years), ``k`` (adaptive),
    ``p_true``, ``residue_mass``, ``residue`` (the loss, with ``eps``), ``mean`` and ``ce``.
    ``sharpness`` defaults to :func:`sharpness_grid` (25 log-spaced values from 0.3 to 10).

    Examples
    --------
    >>> t = k_sweep(30, [0.5, 4.0], shapes=["unimodal"])
    >>> t.k.tolist()
    [3, 3]
    """
    grid = sharpness_grid() if sharpness is None else np.asarray(sharpness, dtype=float)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"sharpness must be a non-empty 1-D sequence, got shape {grid.shape}")
    frames = []
    for shape in shapes:
        examples = {
            f"{shape}@{s:g}": example_logits(
                true_age, shape, float(s), num_classes=num_classes, start_age=start_age,
                base_sigma=base_sigma, noise=noise, seed=seed,
            )
            for s in grid
        }
        t = terms_table(examples, true_age, start_age=start_age, eps=eps)
        frames.append(pd.DataFrame({
            "shape": shape, "sharpness": grid.astype(float), "sigma": base_sigma / grid,
            "k": t.k.to_numpy(), "p_true": t.p_true.to_numpy(),
            "residue_mass": t.residue_mass.to_numpy(), "residue": t.residue.to_numpy(),
            "mean": t["mean"].to_numpy(), "ce": t.ce.to_numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# static figures (matplotlib Figure objects, no pyplot state: safe headless and in threads)


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


def distributions_figure(
    examples: Mapping[str, torch.Tensor],
    true_age: int,
    *,
    start_age: int = 0,
    k: int | None = None,
    eps: float = 1e-3,
) -> Figure:
    """One panel per example: the predicted distribution with the top-K set shaded, the
    residue probabilities, the true and expected age, and K, p(y), L_m and L_r in the corner."""
    names, logits = _stack(examples)
    t = terms_table(examples, true_age, start_age=start_age, k=k, eps=eps)
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


def gradients_figure(
    examples: Mapping[str, torch.Tensor],
    true_age: int,
    *,
    start_age: int = 0,
    k: int | None = None,
    eps: float = 1e-3,
    sigma: float = 2.0,
    terms: Sequence[str] = ("ce", "mean", "variance", "residue"),
) -> Figure:
    """Rows: examples; columns: loss terms; each panel the gradient of the (unweighted) term with
    respect to every logit. Negative bars are logits gradient descent raises."""
    names, logits = _stack(examples)
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
        raise ValueError(f"unknown terms {unknown}; choose from {TERMS}")
    p = torch.softmax(logits, dim=1).numpy()
    xlim = _age_window(p, true_age, start_age)
    a = np.arange(logits.shape[1]) + start_age
    fig = Figure(figsize=(3.1 * len(terms), 1.9 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), len(terms), sharex=True, squeeze=False)
    for i, name in enumerate(names):
        grads = term_gradients(logits[i], true_age, start_age=start_age, k=k, eps=eps,
                               sigma=sigma)
        mask = topk_mask(logits[i], true_age, start_age=start_age, k=k).numpy()
        for j, term in enumerate(terms):
            ax = axes[i, j]
            g = grads[term]
            colors = np.where(mask, TOPK_COLOR, RESIDUE_COLOR)
            ax.bar(a, g, width=0.9, color=colors)
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


def summary_metrics(terms: pd.DataFrame, response: pd.DataFrame, gradients: pd.DataFrame,
                    sweep: pd.DataFrame) -> dict[str, object]:
    """The notebook's numbers for ``metrics/01_loss_illustration.json``: per example the terms,
    each loss's total, the gradient norms, and the K sweep's range per shape."""
    out: dict[str, object] = {"examples": {}}
    for _, row in terms.iterrows():
        name = row.example
        out["examples"][name] = {
            "terms": {c: float(row[c]) if c != "k" else int(row[c])
                      for c in terms.columns if c != "example"},
            "losses": {r.loss: float(r.total) for r in response[response.example == name]
                       .itertuples()},
            "gradient_l2": {r.term: float(r.l2_norm) for r in gradients[gradients.example == name]
                            .itertuples()},
        }
    out["k_sweep"] = {
        shape: {"k_at_lowest_sharpness": int(g.k.iloc[0]), "k_at_highest_sharpness":
                int(g.k.iloc[-1]), "k_min": int(g.k.min()), "k_max": int(g.k.max())}
        for shape, g in sweep.groupby("shape", sort=False)
    }
    return out


# ---------------------------------------------------------------------------------------------
# the interactive explorer


def explorer_state(
    true_age: int,
    sharpness: float,
    shape: str,
    *,
    k: int | None = None,
    lambda_mean: float = 0.2,
    lambda_residue: float = 0.05,
    lambda_variance: float = 0.05,
    num_classes: int = 70,
    start_age: int = 0,
    base_sigma: float = 4.0,
    noise: float = 0.0,
    seed: int = 0,
    eps: float = 1e-3,
    sigma: float = 2.0,
    fixed_k: int = 4,
) -> dict[str, object]:
    """Everything the explorer shows for one setting of its controls.

    Returns a dict with ``ages`` and ``probs`` ``(C,)``, ``in_topk`` ``(C,)`` bool, ``k``,
    ``p_true``, ``expected_age``, ``terms`` (unweighted ``ce``, ``mean``, ``variance``,
    ``residue``, ``kl``), ``weighted`` (``ce``, ``λ1·mean``, ``λ2·residue``), ``total`` (the
    mean-residue loss with this K: AMR when adaptive), ``losses`` (each loss of
    :func:`compared_losses` on this distribution) and ``gradients`` (term -> ``(C,)``).
    """
    logits = example_logits(true_age, shape, sharpness, num_classes=num_classes,
                            start_age=start_age, base_sigma=base_sigma, noise=noise, seed=seed)
    row = terms_table({"x": logits}, true_age, start_age=start_age, k=k, eps=eps,
                      sigma=sigma).iloc[0]
    grads = term_gradients(logits, true_age, start_age=start_age, k=k, eps=eps, sigma=sigma,
                           lambda_mean=lambda_mean, lambda_residue=lambda_residue)
    response = loss_response_table({"x": logits}, true_age, start_age=start_age,
                                   lambda_mean=lambda_mean, lambda_residue=lambda_residue,
                                   lambda_variance=lambda_variance, fixed_k=fixed_k, eps=eps,
                                   sigma=sigma)
    terms = {t: float(row[t]) for t in TERMS}
    weighted = {"ce": terms["ce"], "mean": lambda_mean * terms["mean"],
                "residue": lambda_residue * terms["residue"]}
    return {
        "true_age": true_age, "sharpness": sharpness, "shape": shape, "k_mode": (
            "adaptive" if k is None else "fixed"), "lambda_mean": lambda_mean,
        "lambda_residue": lambda_residue,
        "ages": np.arange(num_classes) + start_age,
        "probs": torch.softmax(logits, dim=0).numpy().astype(np.float64),
        "in_topk": topk_mask(logits, true_age, start_age=start_age, k=k).numpy(),
        "k": int(row.k), "p_true": float(row.p_true), "expected_age": float(row.expected_age),
        "residue_mass": float(row.residue_mass), "terms": terms, "weighted": weighted,
        "total": float(sum(weighted.values())),
        "losses": dict(zip(response.loss, response.total.astype(float), strict=True)),
        "gradients": grads,
    }


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
    ax_r.bar(ages, g["residue"], width=0.9, color=np.where(mask, TOPK_COLOR, RESIDUE_COLOR))
    ax_r.axhline(0, color="black", lw=0.5)
    ax_r.axvline(state["true_age"], color="black", lw=1)
    ax_r.set_ylabel("∂$L_r$/∂logit", fontsize=8)
    ax_r.set_xlabel("age (years)")
    xlim = _age_window(probs[None, :], state["true_age"], start_age, floor=1e-4, margin=4)
    ax_p.set_xlim(*xlim)
    return fig


def explorer_html(state: Mapping[str, object]) -> str:
    """The explorer's numbers as an HTML table: each AMR term (unweighted, weight, weighted), the
    total, and the value of each compared loss on the same distribution."""
    t, w = state["terms"], state["weighted"]
    name = "AMR (adaptive K)" if state["k_mode"] == "adaptive" else f"mean-residue (K={state['k']})"
    rows = [
        ("cross-entropy L<sub>s</sub>", t["ce"], "1", w["ce"]),
        ("mean L<sub>m</sub>", t["mean"], f"λ1 = {state['lambda_mean']:.2f}", w["mean"]),
        ("residue L<sub>r</sub>", t["residue"], f"λ2 = {state['lambda_residue']:.2f}", w["residue"]),
    ]
    cell = 'style="padding:1px 8px;text-align:right"'
    body = "".join(
        f"<tr><td>{label}</td><td {cell}>{v:.4f}</td><td {cell}>{lam}</td>"
        f"<td {cell}>{wv:.4f}</td></tr>"
        for label, v, lam, wv in rows
    )
    body += (f"<tr><td><b>{html.escape(name)} total</b></td><td></td><td></td>"
             f"<td {cell}><b>{state['total']:.4f}</b></td></tr>")
    others = "".join(
        f"<tr><td>{html.escape(label)}</td><td {cell}>{v:.4f}</td></tr>"
        for label, v in state["losses"].items()
    )
    return (
        f"<div><b>true age {state['true_age']}</b>, expected age {state['expected_age']:.2f}, "
        f"K = {state['k']} ({state['k_mode']}), p(y) = {state['p_true']:.4f}, residue mass "
        f"{state['residue_mass']:.3f}, variance L<sub>v</sub> = {t['variance']:.3f}</div>"
        "<table><tr><th>term</th><th>value</th><th>weight</th><th>weighted</th></tr>"
        f"{body}</table>"
        "<div style='margin-top:4px'><b>Same distribution, each loss</b></div>"
        f"<table>{others}</table>"
    )


class LossExplorer(widgets.VBox):
    """The interactive loss explorer: controls on the left, numbers on the right, the figure
    below; every control change recomputes :func:`explorer_state` and redraws.

    Attributes
    ----------
    controls : dict[str, ipywidgets.Widget]
        ``true_age``, ``sharpness``, ``shape``, ``noise``, ``k_mode``, ``k``, ``lambda_mean``,
        ``lambda_residue``. Setting ``.value`` on any of them updates the explorer (also without a
        browser).
    values : dict
        The last :func:`explorer_state`.
    summary : ipywidgets.HTML
        The numbers (CSS class ``ageest-loss-values``).
    image : ipywidgets.Image
        The PNG figure (CSS class ``ageest-explorer-figure``).
    """

    def __init__(
        self,
        *,
        true_age: int = 30,
        sharpness: float = 1.0,
        shape: str = "bimodal",
        k: int | None = None,
        lambda_mean: float = 0.2,
        lambda_residue: float = 0.05,
        lambda_variance: float = 0.05,
        num_classes: int = 70,
        start_age: int = 0,
        base_sigma: float = 4.0,
        noise: float = 0.0,
        seed: int = 0,
        eps: float = 1e-3,
        sigma: float = 2.0,
        fixed_k: int = 4,
        dpi: int = 80,
    ) -> None:
        _check_age(true_age, num_classes, start_age)
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self._fixed = {"num_classes": num_classes, "start_age": start_age,
                       "base_sigma": base_sigma, "seed": seed, "eps": eps, "sigma": sigma,
                       "fixed_k": fixed_k, "lambda_variance": lambda_variance}
        self._dpi = dpi
        style = {"description_width": "100px"}
        layout = widgets.Layout(width="360px")
        end_age = start_age + num_classes - 1
        self.controls: dict[str, widgets.Widget] = {
            "true_age": widgets.IntSlider(
                value=true_age, min=start_age, max=end_age, description="true age",
                continuous_update=False, style=style, layout=layout),
            "sharpness": widgets.FloatLogSlider(
                value=sharpness, base=10, min=-0.7, max=1.2, step=0.05, description="sharpness",
                readout_format=".2f", continuous_update=False, style=style, layout=layout),
            "shape": widgets.Dropdown(options=list(SHAPES), value=shape, description="shape",
                                      style=style, layout=layout),
            "noise": widgets.FloatSlider(value=noise, min=0.0, max=1.5, step=0.05,
                                         description="logit noise", continuous_update=False,
                                         style=style, layout=layout),
            "k_mode": widgets.ToggleButtons(options=["adaptive", "fixed"],
                                            value="adaptive" if k is None else "fixed",
                                            description="top-K", layout=layout,
                                            style={**style, "button_width": "110px"}),
            "k": widgets.IntSlider(value=fixed_k if k is None else k, min=1,
                                   max=min(num_classes, 30), description="fixed K",
                                   continuous_update=False, style=style, layout=layout,
                                   disabled=k is None),
            "lambda_mean": widgets.FloatSlider(value=lambda_mean, min=0.0, max=1.0, step=0.01,
                                           description="λ1 (mean)", continuous_update=False,
                                           style=style, layout=layout),
            "lambda_residue": widgets.FloatSlider(value=lambda_residue, min=0.0, max=1.0, step=0.01,
                                           description="λ2 (residue)", continuous_update=False,
                                           style=style, layout=layout),
        }
        for name, control in self.controls.items():
            control.add_class(f"ageest-{name.replace('_', '-')}")
        self.summary = widgets.HTML(layout=widgets.Layout(flex="1 1 360px", min_width="360px"))
        self.summary.add_class("ageest-loss-values")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="900px"))
        self.image.add_class("ageest-explorer-figure")
        self.values: dict[str, object] = {}
        super().__init__([
            widgets.HTML("<b>Loss explorer</b>: move a control; the numbers and the figure "
                         "follow."),
            # controls keep their width; the numbers wrap below them in a narrow window
            widgets.HBox(
                [widgets.VBox(list(self.controls.values()),
                              layout=widgets.Layout(flex="0 0 auto", width="380px")),
                 self.summary],
                layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start")),
            self.image,
        ])
        self.add_class("ageest-explorer")
        for control in self.controls.values():
            control.observe(self.update, names="value")
        self.update()

    def update(self, change: Mapping | None = None) -> None:
        """Recompute and redraw from the controls' current values."""
        c = self.controls
        adaptive = c["k_mode"].value == "adaptive"
        c["k"].disabled = adaptive
        state = explorer_state(
            int(c["true_age"].value), float(c["sharpness"].value), c["shape"].value,
            k=None if adaptive else int(c["k"].value), lambda_mean=float(c["lambda_mean"].value),
            lambda_residue=float(c["lambda_residue"].value), noise=float(c["noise"].value), **self._fixed,
        )
        self.values = state
        self.summary.value = explorer_html(state)
        fig = explorer_figure(state)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self._dpi)
        self.image.value = buf.getvalue()


def loss_explorer(**kwargs) -> LossExplorer:
    """Build the interactive loss explorer of notebook 01 (display it as a cell's last value).

    Keyword arguments are those of :class:`LossExplorer`: the initial ``true_age``,
    ``sharpness``, ``shape``, ``k`` (None = adaptive), ``lambda_mean``, ``lambda_residue``, ``noise`` and the
    fixed ``num_classes``, ``start_age``, ``base_sigma``, ``seed``, ``eps``, ``sigma``,
    ``fixed_k``.

    Examples
    --------
    >>> ex = loss_explorer(true_age=30)
    >>> before = ex.values["total"]
    >>> ex.controls["true_age"].value = 40
    >>> ex.values["total"] != before
    True
    """
    return LossExplorer(**kwargs)
