"""The loss illustration of notebook 01: example predicted age distributions, how each loss
responds to them, the gradient of each term with respect to the logits, how the adaptive top-K
size moves as a distribution sharpens, and the state of the interactive explorer: the numbers.
The figures are drawn by :mod:`ageest.plots` (``distributions_figure`` ...), the explorer widget
is :mod:`ageest.plots.loss_explorer`.

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

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

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


@dataclass(frozen=True)
class Illustration:
    """What every number of notebook 01 shares, written once: the age classes, the example
    distributions' width, noise and noise seed, the residue's ``eps``, DLDL's label ``sigma``, the
    fixed K of mean-residue and the loss weights (their one default: :mod:`ageest.losses`').

    >>> Illustration(num_classes=101).end_age
    100
    """

    num_classes: int = 70
    start_age: int = 0
    base_sigma: float = 4.0
    noise: float = 0.0
    seed: int = 0
    eps: float = 1e-3
    sigma: float = 2.0
    fixed_k: int = 4
    lambda_mean: float | None = None  # None: the losses' one default (losses.weight_default)
    lambda_residue: float | None = None
    lambda_variance: float | None = None

    def __post_init__(self) -> None:
        for name in losses.WEIGHT_SETTINGS:
            if getattr(self, name) is None:
                object.__setattr__(self, name, losses.weight_default(name))
        if not (math.isfinite(self.base_sigma) and self.base_sigma > 0):
            raise ValueError(f"base_sigma must be finite and > 0, got {self.base_sigma!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {self.noise!r}")
        if isinstance(self.num_classes, bool) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")

    @property
    def end_age(self) -> int:
        return self.start_age + self.num_classes - 1

    def weights(self) -> dict[str, float]:
        """The loss weights by name (``lambda_mean`` ...)."""
        return {w: getattr(self, w) for w in losses.WEIGHT_SETTINGS}

    def replace(self, **changes) -> Illustration:
        """A copy with ``changes`` (the explorer's sliders)."""
        return dataclasses.replace(self, **changes)


#: the defaults of every function here
DEFAULT = Illustration()


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
    setup: Illustration = DEFAULT,
    *,
    offset: float = 1.0,
    shift: float = 8.0,
    separation: float = 12.0,
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
    setup : Illustration
        The age classes (``num_classes``, ``start_age``), ``base_sigma``, ``noise`` (standard
        deviation of the fixed logit noise; 0 = smooth) and ``seed`` (of the noise pattern).
    offset, shift, separation : float
        Geometry of the shapes, in years.

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
    num_classes, start_age, end_age = setup.num_classes, setup.start_age, setup.end_age
    _check_age(true_age, num_classes, start_age)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if not (math.isfinite(sharpness) and sharpness > 0):
        raise ValueError(f"sharpness must be finite and > 0, got {sharpness!r}")
    noise, seed = setup.noise, setup.seed
    a = torch.arange(num_classes, dtype=torch.float64) + start_age  # (C,)
    sigma = setup.base_sigma / sharpness
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


@dataclass(frozen=True, eq=False)
class Examples:
    """Example predicted distributions together with what they are examples of: ``logits``
    (name -> ``(C,)``, kept as float64), the ``true_age`` they are judged against and the
    ``setup`` every number about them uses (the class count is the logits'). The tables and
    figures take one of these, so an example is never read against another true age or setup
    than its own.

    >>> Examples({"flat": torch.zeros(3)}, 1).names
    ['flat']
    """

    logits: Mapping[str, torch.Tensor]
    true_age: int
    setup: Illustration = DEFAULT

    def __post_init__(self) -> None:
        names, stacked = _stack(self.logits)
        _check_age(self.true_age, stacked.shape[1], self.setup.start_age)
        object.__setattr__(self, "logits", dict(zip(names, stacked, strict=True)))

    @property
    def names(self) -> list[str]:
        return list(self.logits)

    @property
    def stacked(self) -> torch.Tensor:
        """``(N, C)`` float64 logits in the order of :attr:`names`."""
        return torch.stack(list(self.logits.values()))

    def replace(self, **changes) -> Examples:
        """A copy with ``changes`` (another ``setup`` for the same distributions, ...)."""
        return dataclasses.replace(self, **changes)


def example_distributions(true_age: int = 30, setup: Illustration = DEFAULT) -> Examples:
    """The four example predictions of notebook 01 (:class:`Examples`, logits
    ``(num_classes,)`` each).

    ``unimodal, broad`` (sharpness 0.5), ``unimodal, sharp`` (2), ``shifted`` (1) and
    ``bimodal`` (1.5); see :func:`example_logits`.

    Examples
    --------
    >>> example_distributions().names
    ['unimodal, broad', 'unimodal, sharp', 'shifted', 'bimodal']
    """
    specs = {
        "unimodal, broad": ("unimodal", 0.5),
        "unimodal, sharp": ("unimodal", 2.0),
        "shifted": ("shifted", 1.0),
        "bimodal": ("bimodal", 1.5),
    }
    return Examples({name: example_logits(true_age, shape, sharpness, setup)
                     for name, (shape, sharpness) in specs.items()}, true_age, setup)


def _stack(examples: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    if not examples:
        raise ValueError("examples is empty; give at least one name -> logits")
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


def terms_table(examples: Examples, *, k: int | None = None) -> pd.DataFrame:
    """One row per example: the quantities the AMR loss is built from.

    Columns: ``example``, ``expected_age``, ``p_true`` (probability of the true age), ``k``
    (size of top-K: the adaptive K, or ``k`` when fixed), ``topk_mass`` and ``residue_mass``
    (probability inside / outside top-K), ``residue_entropy`` (the exact entropy
    ``sum_{j not in top-K} -p_j log p_j``, ε = 0), and the unweighted loss terms ``ce``, ``mean``,
    ``variance``, ``residue`` (with ``setup.eps``) and ``kl`` (DLDL, label σ = ``setup.sigma``).
    The number of classes is the logits'; ``setup.start_age`` is the age of class 0 (the
    examples' ``true_age`` and ``setup``).

    Examples
    --------
    >>> t = terms_table(example_distributions(30))
    >>> t.loc[t.example == "unimodal, sharp", "k"].item()
    3
    """
    names, logits, true_age = examples.names, examples.stacked, examples.true_age
    n, c = logits.shape
    start_age, eps, sigma = examples.setup.start_age, examples.setup.eps, examples.setup.sigma
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


def compared_losses(setup: Illustration = DEFAULT) -> dict[str, torch.nn.Module]:
    """The five losses notebook 01 compares, display label (the registry's) -> composite loss.

    ``CE``, ``mean-variance`` (λ1, λ2 = ``lambda_variance``), ``AMR`` (adaptive K; λ1, λ2 =
    ``lambda_residue``), ``mean-residue K=<fixed_k>`` (λ1, λ2) and ``DLDL`` (label σ =
    ``sigma``), all from ``setup``.

    Examples
    --------
    >>> list(compared_losses(Illustration(fixed_k=4)))
    ['CE', 'mean-variance', 'AMR', 'mean-residue K=4', 'DLDL']
    """
    rng = {"start_age": setup.start_age, "end_age": setup.end_age}
    eps, sigma, fixed_k = setup.eps, setup.sigma, setup.fixed_k
    weights = {name: losses.loss_weights(name, setup.weights()) for name in losses.LOSSES}
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


def loss_response_table(examples: Examples) -> pd.DataFrame:
    """How each loss of :func:`compared_losses` responds to the same distributions.

    Long format, one row per (example, loss): ``example``, ``loss``, ``total`` and the loss's
    unweighted components (``ce``, ``mean``, ``variance``, ``residue``, ``kl``; NaN where the loss
    has no such term) and ``weighted_*`` = λ × component for the regularisers, so that
    ``total = ce + weighted_mean + weighted_variance/residue`` for the composite losses.

    Examples
    --------
    >>> t = loss_response_table(example_distributions(30))
    >>> sorted(t.loss.unique())[:2]
    ['AMR', 'CE']
    """
    names, logits, true_age = examples.names, examples.stacked, examples.true_age
    table = compared_losses(examples.setup.replace(num_classes=logits.shape[1]))
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
    setup: Illustration = DEFAULT,
    *,
    k: int | None = None,
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
    start_age, eps, sigma = setup.start_age, setup.eps, setup.sigma
    lambda_mean, lambda_residue = setup.lambda_mean, setup.lambda_residue
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


def gradient_table(examples: Examples, *, k: int | None = None) -> pd.DataFrame:
    """Per example and term: the gradient's L2 norm, its largest magnitude and the age where that
    occurs, and the gradient at the true age (negative: the term pushes ``p_y`` up).

    Examples
    --------
    >>> t = gradient_table(example_distributions(30))
    >>> bool((t.loc[t.term == "ce", "grad_true_age"] < 0).all())
    True
    """
    true_age, setup = examples.true_age, examples.setup
    rows = []
    for name, z in examples.logits.items():
        grads = term_gradients(z, true_age, setup, k=k)
        for term, g in grads.items():
            j = int(np.abs(g).argmax())
            rows.append({
                "example": name, "term": term, "l2_norm": float(np.linalg.norm(g)),
                "max_abs": float(abs(g[j])), "age_of_max": setup.start_age + j,
                "grad_true_age": float(g[true_age - setup.start_age]),
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
    setup: Illustration = DEFAULT,
    *,
    shapes: Sequence[str] = SHAPES,
) -> pd.DataFrame:
    """How the adaptive K and the residue move as each shape sharpens.

    One row per (shape, sharpness): ``shape``, ``sharpness``, ``sigma`` (years), ``k`` (adaptive),
    ``p_true``, ``residue_mass``, ``residue`` (the loss, with ``setup.eps``), ``mean`` and ``ce``.
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
        t = terms_table(Examples({f"{shape}@{s:g}": example_logits(true_age, shape, float(s),
                                                                   setup)
                                  for s in grid}, true_age, setup))
        frames.append(pd.DataFrame({
            "shape": shape, "sharpness": grid.astype(float), "sigma": setup.base_sigma / grid,
            "k": t.k.to_numpy(), "p_true": t.p_true.to_numpy(),
            "residue_mass": t.residue_mass.to_numpy(), "residue": t.residue.to_numpy(),
            "mean": t["mean"].to_numpy(), "ce": t.ce.to_numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


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
# the explorer's numbers (its widget: ageest.plots.loss_explorer; its figure: ageest.plots)


def explorer_state(
    true_age: int,
    sharpness: float,
    shape: str,
    setup: Illustration = DEFAULT,
    *,
    k: int | None = None,
) -> dict[str, object]:
    """Everything the explorer shows for one setting of its controls.

    Returns a dict with ``ages`` and ``probs`` ``(C,)``, ``in_topk`` ``(C,)`` bool, ``k``,
    ``p_true``, ``expected_age``, ``terms`` (unweighted ``ce``, ``mean``, ``variance``,
    ``residue``, ``kl``), ``weighted`` (``ce``, ``λ1·mean``, ``λ2·residue``), ``total`` (the
    mean-residue loss with this K: AMR when adaptive), ``losses`` (each loss of
    :func:`compared_losses` on this distribution) and ``gradients`` (term -> ``(C,)``).
    """
    logits = example_logits(true_age, shape, sharpness, setup)
    one = Examples({"x": logits}, true_age, setup)
    row = terms_table(one, k=k).iloc[0]
    grads = term_gradients(logits, true_age, setup, k=k)
    response = loss_response_table(one)
    lambda_mean, lambda_residue = setup.lambda_mean, setup.lambda_residue
    terms = {t: float(row[t]) for t in TERMS}
    weighted = {"ce": terms["ce"], "mean": lambda_mean * terms["mean"],
                "residue": lambda_residue * terms["residue"]}
    return {
        "true_age": true_age, "sharpness": sharpness, "shape": shape, "k_mode": (
            "adaptive" if k is None else "fixed"), "lambda_mean": lambda_mean,
        "lambda_residue": lambda_residue,
        "ages": np.arange(setup.num_classes) + setup.start_age,
        "probs": torch.softmax(logits, dim=0).numpy().astype(np.float64),
        "in_topk": topk_mask(logits, true_age, start_age=setup.start_age, k=k).numpy(),
        "k": int(row.k), "p_true": float(row.p_true), "expected_age": float(row.expected_age),
        "residue_mass": float(row.residue_mass), "terms": terms, "weighted": weighted,
        "total": float(sum(weighted.values())),
        "losses": dict(zip(response.loss, response.total.astype(float), strict=True)),
        "gradients": grads,
    }
