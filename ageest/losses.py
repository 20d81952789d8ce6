"""Losses for age estimation as classification over integer ages: the paper's adaptive
mean-residue loss and its peers.

Every loss is a plain function (vectorised over the batch, device- and dtype-agnostic, with a
``reduction`` like torch) plus a thin composite :class:`torch.nn.Module` that the trainer calls as
``loss(logits, ages, std=None)``. After each call a composite loss exposes the unweighted
components of that call in ``loss.last_components`` (python floats) for logging.

Conventions
-----------
- ``logits`` has shape ``(N, C)``; class ``j`` is the integer age ``a_j = start_age + j``, so
  ``C = end_age - start_age + 1`` (FG-NET 0-69: C = 70; CLAP2016 0-100: C = 101).
- ``ages`` has shape ``(N,)``, integer-valued (any dtype), within ``[start_age, end_age]``.
- ``p = softmax(logits)``; ``m = sum_j a_j p_j`` is the expected age.

References
----------
.. [1] Z. Zhao, P. Qian, Y. Hou, Z. Zeng. Adaptive Mean-Residue Loss for Robust Facial Age
   Estimation. IEEE ICME 2022, arXiv:2203.17156.
.. [2] H. Pan, H. Han, S. Shan, X. Chen. Mean-Variance Loss for Deep Age Estimation from a Face.
   CVPR 2018.
.. [3] B.-B. Gao, C. Xing, C.-W. Xie, J. Wu, X. Geng. Deep Label Distribution Learning with
   Label Ambiguity. IEEE TIP 2017.
.. [4] B.-B. Gao, H.-Y. Zhou, J. Wu, X. Geng. Age Estimation Using Expectation of Label
   Distribution Learning. IJCAI 2018.
.. [5] R. Rothe, R. Timofte, L. Van Gool. Deep Expectation of Real and Apparent Age from a Single
   Image without Facial Landmarks. IJCV 2018.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "mean_loss",
    "variance_loss",
    "residue_loss",
    "topk_size",
    "gaussian_label_distribution",
    "label_distribution_kl",
    "MeanResidueLoss",
    "MeanVarianceLoss",
    "CrossEntropyLoss",
    "DLDLLoss",
    "DLDLv2Loss",
    "L1ExpectationLoss",
    "LOSSES",
    "LossSpec",
    "component_order",
    "get_loss",
    "list_losses",
    "loss_order",
    "loss_spec",
    "topk_mask",
    "WEIGHT_SETTINGS",
    "weight_default",
    "loss_weights",
]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# input checks (one host sync per call: all data-dependent checks are reduced to one flag)
# --------------------------------------------------------------------------------------------


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_logits_shape(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"logits must be a torch.Tensor of shape (N, C), got {type(logits).__name__}"
        )
    if logits.ndim != 2:
        raise ValueError(
            f"logits must have shape (N, C) (batch, age classes), got shape {tuple(logits.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError(f"logits is an empty batch: shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits needs at least 2 age classes, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")


def _check_k(k: int | None, logits: torch.Tensor) -> None:
    c = logits.shape[1]
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= c):
        raise ValueError(
            f"k must be None (adaptive) or an integer in [1, C] = [1, {c}] for logits of "
            f"shape {tuple(logits.shape)}, got {k!r}"
        )


def _prepare(logits: torch.Tensor, ages, start_age: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``logits`` (N, C) and ``ages`` (N,); return class indices (N,) long and the ages
    (N,) in the logits' dtype. Raises ValueError naming the shapes or the offending values."""
    _check_logits_shape(logits)
    n, c = logits.shape
    ages = torch.as_tensor(ages, device=logits.device)
    if ages.ndim != 1 or ages.shape[0] != n:
        raise ValueError(
            f"ages must have shape (N,) = ({n},) to match logits of shape {tuple(logits.shape)}, "
            f"got shape {tuple(ages.shape)}"
        )
    if ages.dtype == torch.bool or ages.is_complex():
        raise ValueError(f"ages must be integer or real numbers, got dtype {ages.dtype}")
    end_age = start_age + c - 1
    lo, hi = torch.aminmax(ages)
    # cheap screen, one host read (on a GPU every check would otherwise cost a round trip): the
    # sum of the logits is NaN/inf whenever an entry is; the exact checks run only on failure
    ok = torch.isfinite(logits.sum()) & (lo >= start_age) & (hi <= end_age)
    if ages.is_floating_point():
        ok = ok & (ages == torch.round(ages)).all()
    if not bool(ok):
        if not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).any(dim=1).sum())
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} contain non-finite values (NaN or inf) in "
                f"{bad} of {n} rows; check the model output and learning rate"
            )
        if not (float(lo) >= start_age and float(hi) <= end_age):
            raise ValueError(
                f"ages must lie in [start_age, end_age] = [{start_age}, {end_age}] for logits with "
                f"{c} classes, got values in [{float(lo):g}, {float(hi):g}]; check "
                "start_age/end_age or the labels"
            )
        if ages.is_floating_point() and not bool((ages == torch.round(ages)).all()):
            frac = ages[ages != torch.round(ages)][:3].tolist()
            raise ValueError(
                f"ages must be integer-valued (class index = age - start_age), got e.g. {frac}; "
                "round soft labels first (CLAP2016 trains on the rounded mean age)"
            )
        # otherwise only the screening sum overflowed on finite logits: nothing is wrong
    idx = (ages.round().long() if ages.is_floating_point() else ages.long()) - start_age
    return idx, ages.to(logits.dtype)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (e.g. under autocast) are computed on in float32: log-softmax,
    entropies and squared age errors lose too much in 16 bits. Autograd casts the gradient
    back."""
    if isinstance(logits, torch.Tensor) and logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


def _age_values(c: int, start_age: int, like: torch.Tensor) -> torch.Tensor:
    """(C,) ages a_j = start_age + j in ``like``'s dtype and device."""
    return torch.arange(c, device=like.device, dtype=like.dtype) + start_age


# --------------------------------------------------------------------------------------------
# per-sample kernels on (N, C) probabilities; no checks (callers validated)
# --------------------------------------------------------------------------------------------


def _mean_per_sample(p: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    m = p @ a  # (N,)
    return 0.5 * (m - y) ** 2


def _variance_per_sample(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    m = p @ a  # (N,)
    return (p * (a.unsqueeze(0) - m.unsqueeze(1)) ** 2).sum(dim=1)


def _out_of_topk_mask(logits: torch.Tensor, idx: torch.Tensor, k: int | None) -> torch.Tensor:
    """(N, C) bool, True for classes outside top-K.

    Ranks are taken on the logits, not on p: softmax is strictly increasing within a row, so
    ``z_j < z_y`` is exactly ``p_j < p_y`` in real arithmetic, while comparing rounded
    probabilities can create or break ties (exp rounding, underflow to 0 in float32). The set is
    a hard selection and carries no gradient.
    """
    z = logits.detach()
    if k is None:
        z_y = z.gather(1, idx.unsqueeze(1))  # (N, 1)
        return z < z_y  # ties with the true class stay in top-K, as in the official `p < prob_gt`
    # A stable descending sort puts, among equal logits, the lower class index first, so the
    # top-K set is reproducible across runs and devices (torch.topk leaves the order of ties
    # unspecified). The loss value does not depend on how ties are broken; its gradient does.
    order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :k]  # (N, k)
    in_top = torch.zeros_like(z, dtype=torch.bool).scatter_(1, order, True)
    return ~in_top


def _adaptive_k(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(N,) int64: number of classes with z_j >= z_y (equivalently p_j >= p_y)."""
    z = logits.detach()
    return (z >= z.gather(1, idx.unsqueeze(1))).sum(dim=1)


def _residue_terms(
    logp: torch.Tensor, p: torch.Tensor, out: torch.Tensor, eps: float, topk_constant: bool
) -> torch.Tensor:
    """(N,) residue from log-probabilities, probabilities and the out-of-top-K mask (N, C)."""
    if eps > 0:
        q = p + eps
        terms = -q * torch.log(q)
    else:
        # -p log p through log_softmax: exact, 0 at p = 0 (no 0 * -inf) and a finite gradient
        terms = -p * logp
    per_sample = torch.where(out, terms, 0.0).sum(dim=1)
    if topk_constant and eps > 0:
        # the official code sums -(q+eps)log(q+eps) with q = p*[p<p_y] over ALL classes, so each
        # top-K class adds the constant -eps*log(eps)
        n_top = out.shape[1] - out.sum(dim=1)
        per_sample = per_sample + n_top.to(per_sample.dtype) * (-eps * math.log(eps))
    return per_sample


def _residue_per_sample(
    logits: torch.Tensor,
    idx: torch.Tensor,
    k: int | None,
    eps: float,
    topk_constant: bool,
) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=1)  # (N, C)
    out = _out_of_topk_mask(logits, idx, k)
    return _residue_terms(logp, logp.exp(), out, eps, topk_constant)


# --------------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------------


def mean_loss(
    logits: torch.Tensor, ages, *, start_age: int = 0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Mean loss: half the squared error of the expected age [1]_ [2]_.

    .. math:: L_m = \tfrac12 \bigl(m - y\bigr)^2, \qquad m = \sum_j a_j\, p_j,\quad
              p = \mathrm{softmax}(\text{logits}),\quad a_j = \text{start\_age} + j

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C)
        Unnormalised scores, one per integer age.
    ages : torch.Tensor or array-like, shape (N,)
        Integer-valued true ages in ``[start_age, start_age + C - 1]``.
    start_age : int, default 0
        Age of class 0.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the (N,) per-sample losses.

    Returns
    -------
    torch.Tensor
        Scalar, or shape (N,) for ``reduction="none"``.

    Raises
    ------
    ValueError
        Bad shapes, non-finite logits, ages outside the range or not integer-valued.

    References
    ----------
    .. [1] Zhao et al., Adaptive Mean-Residue Loss for Robust Facial Age Estimation, ICME 2022.
    .. [2] Pan et al., Mean-Variance Loss for Deep Age Estimation from a Face, CVPR 2018.

    Examples
    --------
    Two classes (ages 0 and 1) with equal logits give m = 0.5:

    >>> import torch
    >>> mean_loss(torch.zeros(1, 2), torch.tensor([1]))
    tensor(0.1250)
    >>> mean_loss(torch.zeros(2, 2), torch.tensor([0, 1]), reduction="none")
    tensor([0.1250, 0.1250])
    """
    _check_reduction(reduction)
    idx, y = _prepare(logits, ages, start_age)
    p = torch.softmax(logits, dim=1)
    a = _age_values(logits.shape[1], start_age, logits)
    return _reduce(_mean_per_sample(p, y, a), reduction)


def variance_loss(
    logits: torch.Tensor, *, start_age: int = 0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Variance loss: the variance of the predicted age distribution [2]_.

    .. math:: L_v = \sum_j p_j\, (a_j - m)^2, \qquad m = \sum_j a_j\, p_j

    It does not depend on ``start_age`` (a shift of all ages leaves the variance unchanged); the
    argument is kept for a uniform signature.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C)
        Unnormalised scores, one per integer age.
    start_age : int, default 0
        Age of class 0.
    reduction : {"mean", "sum", "none"}, default "mean"

    Returns
    -------
    torch.Tensor
        Scalar, or shape (N,) for ``reduction="none"``.

    Raises
    ------
    ValueError
        Bad shape or non-finite logits.

    References
    ----------
    .. [2] Pan et al., Mean-Variance Loss for Deep Age Estimation from a Face, CVPR 2018.

    Examples
    --------
    Equal mass on ages 0 and 2 has mean 1 and variance 1:

    >>> import torch
    >>> logits = torch.tensor([[0.0, -float(1e4), 0.0]])
    >>> variance_loss(logits)
    tensor(1.)
    """
    _check_reduction(reduction)
    _check_logits_shape(logits)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} contain non-finite values (NaN or inf); "
            "check the model output and learning rate"
        )
    p = torch.softmax(logits, dim=1)
    a = _age_values(logits.shape[1], start_age, logits)
    return _reduce(_variance_per_sample(p, a), reduction)


def residue_loss(
    logits: torch.Tensor,
    ages,
    *,
    start_age: int = 0,
    k: int | None = None,
    eps: float = 1e-3,
    topk_constant: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Residue loss: the entropy of the probabilities outside the top-K classes [1]_.

    .. math:: L_r = \sum_{j \notin \mathcal{T}} -(p_j + \varepsilon)\log(p_j + \varepsilon)

    With ``k=None`` (adaptive, the paper's AMR loss) the top-K set is
    :math:`\mathcal{T} = \{j : p_j \ge p_y\}`, i.e. a class is *out* of top-K when
    :math:`p_j < p_y` (the official code's mask). It always contains the true class ``y``; classes
    tied with ``p_y`` are inside. K varies per sample and per step (see :func:`topk_size`).
    Ranks are compared on the logits (softmax is strictly increasing, so :math:`z_j < z_y` is
    :math:`p_j < p_y` exactly), so float rounding of the probabilities cannot create or break a
    tie.
    With an integer ``k`` (fixed-K variant), :math:`\mathcal{T}` is the ``k`` most probable
    classes; ties are broken by a stable sort, so among equal probabilities the lower class index
    (the younger age) enters top-K first. ``torch.topk`` is not used because its order among ties
    is unspecified (it may differ between CPU and CUDA). The loss *value* is the same however
    ties are broken; its gradient is not.

    ``eps`` is the official smoothing (1e-3). The official code evaluates
    :math:`-(q+\varepsilon)\log(q+\varepsilon)` with :math:`q = p\,[p < p_y]` over *all* classes,
    so every top-K class adds the constant :math:`-\varepsilon\log\varepsilon` (about 6.9e-3 per
    class for ε = 1e-3; it carries no gradient). This function leaves that constant out unless
    ``topk_constant=True``, which reproduces the official value exactly. ``eps=0`` gives the exact
    entropy with :math:`0 \log 0 = 0` (computed through ``log_softmax``: no NaN, finite gradient).

    The official code indexes its one-hot with the age itself, which equals the class index only
    when ``start_age = 0`` (true for both of its datasets); here the index is ``age - start_age``.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C)
        Unnormalised scores, one per integer age.
    ages : torch.Tensor or array-like, shape (N,)
        Integer-valued true ages in ``[start_age, start_age + C - 1]``.
    start_age : int, default 0
        Age of class 0.
    k : int or None, default None
        ``None`` for the adaptive top-K; otherwise the fixed size of top-K, ``1 <= k <= C``.
    eps : float, default 1e-3
        Smoothing inside the logarithm; ``>= 0``.
    topk_constant : bool, default False
        Add the official code's constant ``-eps*log(eps)`` per top-K class.
    reduction : {"mean", "sum", "none"}, default "mean"

    Returns
    -------
    torch.Tensor
        Scalar, or shape (N,) for ``reduction="none"``.

    Raises
    ------
    ValueError
        Bad shapes, non-finite logits, ages outside the range or not integer-valued, ``k`` not in
        ``[1, C]``, or negative ``eps``.

    References
    ----------
    .. [1] Zhao et al., Adaptive Mean-Residue Loss for Robust Facial Age Estimation, ICME 2022.

    Examples
    --------
    Probabilities (0.5, 0.25, 0.25) with true class 0: only class 0 is in top-K, so the residue is
    the entropy of the two 0.25 entries, 2 * 0.25 * log 4:

    >>> import math, torch
    >>> logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> round(float(residue_loss(logits, torch.tensor([0]), eps=0.0)), 6)
    0.693147
    >>> round(0.5 * math.log(4), 6)
    0.693147

    With the true class at 1 the tie with class 2 keeps both in top-K (adaptive), while ``k=2``
    keeps classes 0 and 1 (ties go to the lower index):

    >>> float(residue_loss(logits, torch.tensor([1]), eps=0.0))
    0.0
    >>> round(float(residue_loss(logits, torch.tensor([1]), k=2, eps=0.0)), 6)
    0.346574
    """
    _check_reduction(reduction)
    _check_logits_shape(logits)
    _check_k(k, logits)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    idx, _ = _prepare(logits, ages, start_age)
    return _reduce(_residue_per_sample(logits, idx, k, float(eps), topk_constant), reduction)


def topk_size(logits: torch.Tensor, ages, *, start_age: int = 0) -> torch.Tensor:
    r"""Adaptive K of each sample: the number of classes at least as probable as the true one.

    .. math:: K = \bigl|\{j : p_j \ge p_y\}\bigr|, \qquad 1 \le K \le C

    K = 1 when the true class is the unique arg-max. Computed without gradient, for logging [1]_.

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C)
    ages : torch.Tensor or array-like, shape (N,)
        Integer-valued true ages in ``[start_age, start_age + C - 1]``.
    start_age : int, default 0

    Returns
    -------
    torch.Tensor
        Shape (N,), dtype int64.

    References
    ----------
    .. [1] Zhao et al., Adaptive Mean-Residue Loss for Robust Facial Age Estimation, ICME 2022.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    >>> topk_size(logits, torch.tensor([0, 2, 1]))
    tensor([1, 3, 3])
    """
    idx, _ = _prepare(logits, ages, start_age)
    return _adaptive_k(logits, idx)


def gaussian_label_distribution(
    ages, sigma, num_classes: int, *, start_age: int = 0, log: bool = False
) -> torch.Tensor:
    r"""Discretised Gaussian label distribution over the integer ages (DLDL [3]_).

    .. math:: q_j = \frac{\exp\bigl(-(a_j - y)^2 / 2\sigma^2\bigr)}
                         {\sum_{l} \exp\bigl(-(a_l - y)^2 / 2\sigma^2\bigr)}

    normalised over the ``num_classes`` ages of the range (computed as a log-softmax, so any
    ``sigma > 0`` is stable; a tiny sigma gives a one-hot).

    Parameters
    ----------
    ages : torch.Tensor, shape (N,)
        Centres (float allowed).
    sigma : float or torch.Tensor of shape (N,)
        Standard deviation(s), all ``> 0``.
    num_classes : int
    start_age : int, default 0
    log : bool, default False
        Return ``log q`` instead of ``q``.

    Returns
    -------
    torch.Tensor
        Shape (N, num_classes), in ``ages``' floating dtype (float32 for integer ages).

    Examples
    --------
    >>> import torch
    >>> q = gaussian_label_distribution(torch.tensor([1]), 1.0, 3)
    >>> [round(v, 4) for v in q[0].tolist()]
    [0.2741, 0.4519, 0.2741]
    """
    ages = torch.as_tensor(ages)
    dtype = ages.dtype if ages.is_floating_point() else torch.get_default_dtype()
    y = ages.to(dtype)
    sigma = torch.as_tensor(sigma, dtype=dtype, device=y.device)
    if not bool((sigma > 0).all()):
        raise ValueError(f"sigma must be > 0, got min {float(sigma.min()):g}")
    if sigma.ndim == 1:
        sigma = sigma.unsqueeze(1)  # (N, 1)
    a = _age_values(num_classes, start_age, y)
    z = -((a.unsqueeze(0) - y.unsqueeze(1)) ** 2) / (2 * sigma**2)  # (N, C)
    logq = F.log_softmax(z, dim=1)
    return logq if log else logq.exp()


def label_distribution_kl(
    logits: torch.Tensor,
    ages,
    sigma=2.0,
    *,
    start_age: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""KL divergence from a Gaussian label distribution to the prediction (DLDL [3]_).

    .. math:: L_{KL} = \sum_j q_j \bigl(\log q_j - \log p_j\bigr),
              \qquad q = \text{gaussian\_label\_distribution}(y, \sigma)

    Parameters
    ----------
    logits : torch.Tensor, shape (N, C)
    ages : torch.Tensor or array-like, shape (N,)
        Integer-valued true ages in ``[start_age, start_age + C - 1]``.
    sigma : float or torch.Tensor of shape (N,), default 2.0
        Label standard deviation(s), ``> 0``.
    start_age : int, default 0
    reduction : {"mean", "sum", "none"}, default "mean"

    Returns
    -------
    torch.Tensor

    References
    ----------
    .. [3] Gao et al., Deep Label Distribution Learning with Label Ambiguity, IEEE TIP 2017.

    Examples
    --------
    The KL is zero when the prediction equals the label distribution:

    >>> import torch
    >>> logq = gaussian_label_distribution(torch.tensor([1.0]), 1.0, 3, log=True)
    >>> float(label_distribution_kl(logq, torch.tensor([1]), 1.0)) < 1e-7
    True
    """
    _check_reduction(reduction)
    _, y = _prepare(logits, ages, start_age)
    sigma = torch.as_tensor(sigma, dtype=logits.dtype, device=logits.device)
    if sigma.ndim not in (0, 1) or (sigma.ndim == 1 and sigma.shape[0] != logits.shape[0]):
        raise ValueError(
            f"sigma must be a scalar or have shape (N,) = ({logits.shape[0]},), "
            f"got shape {tuple(sigma.shape)}"
        )
    if not bool((torch.isfinite(sigma) & (sigma > 0)).all()):
        raise ValueError(f"sigma must be finite and > 0, got min {float(sigma.min()):g}")
    logq = gaussian_label_distribution(y, sigma, logits.shape[1], start_age=start_age, log=True)
    logp = F.log_softmax(logits, dim=1)
    per_sample = (logq.exp() * (logq - logp)).sum(dim=1)
    return _reduce(per_sample, reduction)


# --------------------------------------------------------------------------------------------
# composite losses
# --------------------------------------------------------------------------------------------


class _AgeLoss(nn.Module):
    """Shared checks and logging for composite losses over ages ``start_age..end_age``."""

    def __init__(self, *, start_age: int = 0, end_age: int = 100) -> None:
        super().__init__()
        for name, value in (("start_age", start_age), ("end_age", end_age)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if end_age <= start_age:
            raise ValueError(
                f"end_age must be greater than start_age, got start_age={start_age}, "
                f"end_age={end_age}"
            )
        self.start_age = start_age
        self.end_age = end_age
        self.num_classes = end_age - start_age + 1
        self.last_components: dict[str, float] = {}
        self._age_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"start_age={self.start_age}, end_age={self.end_age}"

    def __call__(self, logits: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The loss in float32 (or the logits' float64) even inside an autocast region: with
        autocast on, the expectation ``p @ a`` and the residue's products would run in bf16/fp16
        and move the loss by ~1e-3 of its value; half-precision logits are upcast
        (:func:`_upcast`), and autograd casts the gradient back."""
        if isinstance(logits, torch.Tensor):
            kind = logits.device.type
            if torch.is_autocast_enabled(kind):
                with torch.autocast(device_type=kind, enabled=False):
                    return super().__call__(_upcast(logits), *args, **kwargs)
        return super().__call__(logits, *args, **kwargs)

    def _prepare(self, logits: torch.Tensor, ages) -> tuple[torch.Tensor, torch.Tensor]:
        _check_logits_shape(logits)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} have {logits.shape[1]} classes, but "
                f"{type(self).__name__}(start_age={self.start_age}, end_age={self.end_age}) "
                f"expects {self.num_classes}; set end_age={self.start_age + logits.shape[1] - 1} "
                "or give the model that many outputs"
            )
        return _prepare(logits, ages, self.start_age)

    def _ages(self, like: torch.Tensor) -> torch.Tensor:
        """(C,) ages a_j in ``like``'s dtype and device, cached (one arange per device/dtype)."""
        key = (like.device, like.dtype)
        cached = self._age_cache.get(key)
        if cached is None:
            cached = self._age_cache[key] = _age_values(self.num_classes, self.start_age, like)
        return cached

    def _record(
        self,
        logits: torch.Tensor,
        idx: torch.Tensor,
        parts: dict[str, torch.Tensor],
        k_count: torch.Tensor | None = None,
    ) -> None:
        """Store detached components plus cross-entropy and the adaptive mean K, with one host
        transfer for all of them. ``k_count`` (N,) is the adaptive K when already known."""
        with torch.no_grad():
            logits = logits.detach()
            if "ce" not in parts:
                parts["ce"] = F.cross_entropy(logits, idx)
            if k_count is None:
                k_count = _adaptive_k(logits, idx)
            parts["k_mean"] = k_count.to(logits.dtype).mean()
            names = list(parts)
            values = torch.stack([parts[n].detach().to(logits.dtype) for n in names]).tolist()
        self.last_components = dict(zip(names, (float(v) for v in values), strict=True))

    def _std_sigma(self, std, n: int, device, dtype) -> torch.Tensor | None:
        if std is None:
            return None
        std = torch.as_tensor(std, device=device, dtype=dtype)
        if std.ndim != 1 or std.shape[0] != n:
            raise ValueError(
                f"std must have shape (N,) = ({n},) to match the batch, got shape {tuple(std.shape)}"
            )
        if bool((std < 0).any()):
            raise ValueError(
                f"std must be >= 0 (annotators' standard deviation), got min {float(std.min()):g}"
            )
        return std


class CrossEntropyLoss(_AgeLoss):
    r"""Softmax cross-entropy over integer ages, :math:`L = -\log p_y`.

    ``forward(logits, ages, std=None)`` returns the batch mean; ``std`` is accepted for a uniform
    signature and ignored. ``last_components``: ``total``, ``ce``, ``k_mean``.

    Parameters
    ----------
    start_age, end_age : int, default 0, 100
        Age range; the model must output ``end_age - start_age + 1`` logits.

    Examples
    --------
    >>> import torch
    >>> loss = CrossEntropyLoss(start_age=0, end_age=1)
    >>> round(float(loss(torch.zeros(2, 2), torch.tensor([0, 1]))), 4)
    0.6931
    >>> sorted(loss.last_components)
    ['ce', 'k_mean', 'total']
    """

    def forward(self, logits: torch.Tensor, ages, std=None) -> torch.Tensor:
        logits = _upcast(logits)
        idx, _ = self._prepare(logits, ages)
        ce = F.cross_entropy(logits, idx)
        self._record(logits, idx, {"total": ce, "ce": ce})
        return ce


class MeanVarianceLoss(_AgeLoss):
    r"""Mean-variance loss of Pan et al. [2]_:
    :math:`L = L_s + \lambda_1 L_m + \lambda_2 L_v` (cross-entropy, :func:`mean_loss`,
    :func:`variance_loss`, each averaged over the batch).

    ``last_components``: ``total``, ``ce``, ``mean``, ``variance`` (unweighted), ``k_mean``.

    Parameters
    ----------
    lambda_mean : float, default 0.2
    lambda_variance : float, default 0.05
    start_age, end_age : int, default 0, 100

    Examples
    --------
    >>> import torch
    >>> loss = MeanVarianceLoss(start_age=0, end_age=1)
    >>> total = loss(torch.zeros(1, 2), torch.tensor([1]))
    >>> {k: round(v, 4) for k, v in loss.last_components.items()}
    {'total': 0.7306, 'ce': 0.6931, 'mean': 0.125, 'variance': 0.25, 'k_mean': 2.0}
    """

    def __init__(
        self,
        lambda_mean: float = 0.2,
        lambda_variance: float = 0.05,
        *,
        start_age: int = 0,
        end_age: int = 100,
    ) -> None:
        super().__init__(start_age=start_age, end_age=end_age)
        self.lambda_mean = float(lambda_mean)
        self.lambda_variance = float(lambda_variance)

    def extra_repr(self) -> str:
        return (
            f"lambda_mean={self.lambda_mean}, lambda_variance={self.lambda_variance}, "
            + super().extra_repr()
        )

    def forward(self, logits: torch.Tensor, ages, std=None) -> torch.Tensor:
        logits = _upcast(logits)
        idx, y = self._prepare(logits, ages)
        logp = F.log_softmax(logits, dim=1)  # (N, C), shared by the three terms
        p = logp.exp()
        a = self._ages(logits)
        ce = F.nll_loss(logp, idx)
        lm = _mean_per_sample(p, y, a).mean()
        lv = _variance_per_sample(p, a).mean()
        total = ce + self.lambda_mean * lm + self.lambda_variance * lv
        self._record(logits, idx, {"total": total, "ce": ce, "mean": lm, "variance": lv})
        return total


class _FusedMeanResidue(torch.autograd.Function):
    """Cross-entropy + mean + residue with a closed-form gradient.

    Same value as composing :func:`mean_loss` and :func:`residue_loss` with autograd; the
    gradient is written out so that forward+backward costs a few (N, C) operations instead of
    two autograd graphs' worth (on a CPU the per-operation overhead dominates at N=64, C=101).
    With p = softmax(z), m = sum_j a_j p_j, o = out-of-top-K mask, f(p) = -(p+eps)log(p+eps):

        d ce_i / dz_ij  = p_ij - [j = y_i]
        d lm_i / dz_ij  = (m_i - y_i) p_ij (a_j - m_i)
        d r_i  / dz_ij  = p_ij (o_ij f'(p_ij) - sum_l o_il f'(p_il) p_il),  f'(p) = -(log(p+eps)+1)

    The top-K mask is piecewise constant in z, so it contributes no gradient (as with autograd).
    Returns the batch-mean total (differentiable) and a (3,) tensor (ce, mean, residue) that is not.
    """

    @staticmethod
    def forward(ctx, logits, idx, y, a, out, lambda_mean, lambda_residue, eps, const):
        n = logits.shape[0]
        logp = torch.log_softmax(logits, dim=1)  # (N, C)
        p = logp.exp()
        logp_y = logp.gather(1, idx.unsqueeze(1))  # (N, 1)
        m = p @ a  # (N,)
        d = m - y  # (N,)
        if eps > 0:
            log_q = torch.log(p + eps)
            terms = -(p + eps) * log_q
        else:
            log_q = logp
            terms = -p * logp  # 0 log 0 = 0 through log_softmax
        o = out.to(p.dtype)
        r = (terms * o).sum(dim=1)  # (N,)
        parts = torch.stack([-logp_y.mean(), 0.5 * (d * d).mean(), r.mean() + const])
        total = parts[0] + lambda_mean * parts[1] + lambda_residue * parts[2]
        if ctx.needs_input_grad[0]:
            w = o * (-(log_q + 1.0)) * p  # (N, C): o_j f'(p_j) p_j
            g = p * (
                1.0
                + lambda_mean * d.unsqueeze(1) * (a - m.unsqueeze(1))
                - lambda_residue * w.sum(dim=1, keepdim=True)
            )
            g = g + lambda_residue * w
            g.scatter_add_(1, idx.unsqueeze(1), torch.full_like(logp_y, -1.0))
            ctx.save_for_backward(g / n)
        ctx.mark_non_differentiable(parts)
        return total, parts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, grad_parts):
        (g,) = ctx.saved_tensors
        return g * grad_total, None, None, None, None, None, None, None, None


class MeanResidueLoss(_AgeLoss):
    r"""Mean-residue loss; the adaptive mean-residue (AMR) loss of the paper when ``k=None`` [1]_.

    .. math:: L = L_s + \lambda_1 L_m + \lambda_2 L_r

    with cross-entropy :math:`L_s`, :func:`mean_loss` :math:`L_m` and :func:`residue_loss`
    :math:`L_r`, each averaged over the batch; λ1 = 0.2, λ2 = 0.05 in the official scripts.
    ``last_components``: ``total``, ``ce``, ``mean``, ``residue`` (unweighted; ``residue``
    excludes the official constant unless ``topk_constant=True``), ``k_mean`` (mean adaptive K,
    logged for fixed ``k`` too).

    The three terms share one log-softmax and the gradient is written in closed form
    (``_FusedMeanResidue``); tests check it against autograd through :func:`mean_loss` and
    :func:`residue_loss` to 1e-10 in float64. Half-precision logits are computed on in float32.

    Parameters
    ----------
    lambda_mean : float, default 0.2
    lambda_residue : float, default 0.05
    k : int or None, default None
        ``None``: adaptive top-K (AMR). An int: fixed top-K size, ``1 <= k <= C``.
    eps : float, default 1e-3
        Official smoothing of the residue entropy; 0 for the exact entropy.
    topk_constant : bool, default False
        Include the official ``-eps*log(eps)`` per top-K class in the value (no gradient effect).
    start_age, end_age : int, default 0, 100

    Examples
    --------
    >>> import torch
    >>> loss = MeanResidueLoss(start_age=0, end_age=2, eps=0.0)
    >>> logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> total = loss(logits, torch.tensor([0]))
    >>> {k: round(v, 4) for k, v in loss.last_components.items()}
    {'total': 0.7841, 'ce': 0.6931, 'mean': 0.2812, 'residue': 0.6931, 'k_mean': 1.0}
    """

    def __init__(
        self,
        lambda_mean: float = 0.2,
        lambda_residue: float = 0.05,
        k: int | None = None,
        eps: float = 1e-3,
        *,
        topk_constant: bool = False,
        start_age: int = 0,
        end_age: int = 100,
    ) -> None:
        super().__init__(start_age=start_age, end_age=end_age)
        if k is not None and (
            isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_classes
        ):
            raise ValueError(
                f"k must be None (adaptive) or an integer in [1, {self.num_classes}] for ages "
                f"{start_age}..{end_age}, got {k!r}"
            )
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.lambda_mean = float(lambda_mean)
        self.lambda_residue = float(lambda_residue)
        self.k = k
        self.eps = float(eps)
        self.topk_constant = bool(topk_constant)

    def extra_repr(self) -> str:
        return (
            f"lambda_mean={self.lambda_mean}, lambda_residue={self.lambda_residue}, k={self.k}, "
            f"eps={self.eps}, " + super().extra_repr()
        )

    def forward(self, logits: torch.Tensor, ages, std=None) -> torch.Tensor:
        logits = _upcast(logits)
        idx, y = self._prepare(logits, ages)
        a = self._ages(logits)
        out = _out_of_topk_mask(logits, idx, self.k)  # (N, C) bool
        # adaptive K = classes not outside top-K; for a fixed k it is computed separately
        k_count = self.num_classes - out.sum(dim=1) if self.k is None else None
        if self.topk_constant and self.eps > 0:
            kk = k_count if k_count is not None else self.num_classes - out.sum(dim=1)
            const = kk.to(logits.dtype).mean() * (-self.eps * math.log(self.eps))
        else:
            const = 0.0
        total, parts = _FusedMeanResidue.apply(
            logits, idx, y, a, out, self.lambda_mean, self.lambda_residue, self.eps, const
        )
        with torch.no_grad():
            if k_count is None:
                k_count = _adaptive_k(logits, idx)
            k_mean = k_count.to(parts.dtype).mean().view(1)
            values = torch.cat([total.detach().view(1), parts, k_mean]).tolist()
        names = ("total", "ce", "mean", "residue", "k_mean")
        self.last_components = dict(zip(names, values, strict=True))
        return total


class DLDLLoss(_AgeLoss):
    r"""Deep label distribution learning [3]_: KL from a discretised Gaussian around the true age
    to the prediction (:func:`label_distribution_kl`).

    With ``std`` given (CLAP2016: the annotators' standard deviation per image) each sample uses
    :math:`\sigma_i = \max(\text{std}_i, \text{min\_sigma})`; entries that are NaN (unknown) fall
    back to ``sigma``. ``min_sigma`` (default 1.0, one age step) keeps a near-zero annotator std
    from turning the target into a one-hot. ``last_components``: ``total``, ``kl``, ``ce`` (logged
    only, not part of the total), ``k_mean``.

    Parameters
    ----------
    sigma : float, default 2.0
    min_sigma : float, default 1.0
    start_age, end_age : int, default 0, 100

    Examples
    --------
    >>> import torch
    >>> loss = DLDLLoss(sigma=1.0, start_age=0, end_age=2)
    >>> round(float(loss(torch.zeros(1, 3), torch.tensor([1]))), 4)
    0.0302
    """

    def __init__(
        self,
        sigma: float = 2.0,
        *,
        min_sigma: float = 1.0,
        start_age: int = 0,
        end_age: int = 100,
    ) -> None:
        super().__init__(start_age=start_age, end_age=end_age)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
        if not (math.isfinite(min_sigma) and min_sigma > 0):
            raise ValueError(f"min_sigma must be finite and > 0, got {min_sigma!r}")
        self.sigma = float(sigma)
        self.min_sigma = float(min_sigma)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, min_sigma={self.min_sigma}, " + super().extra_repr()

    def _sigma(self, logits: torch.Tensor, std) -> torch.Tensor | float:
        std = self._std_sigma(std, logits.shape[0], logits.device, logits.dtype)
        if std is None:
            return self.sigma
        std = torch.where(torch.isnan(std), torch.full_like(std, self.sigma), std)
        return std.clamp_min(self.min_sigma)

    def _kl(self, logits, y, std) -> torch.Tensor:
        sigma = self._sigma(logits, std)
        logq = gaussian_label_distribution(
            y, sigma, self.num_classes, start_age=self.start_age, log=True
        )
        logp = F.log_softmax(logits, dim=1)
        return (logq.exp() * (logq - logp)).sum(dim=1).mean()

    def forward(self, logits: torch.Tensor, ages, std=None) -> torch.Tensor:
        logits = _upcast(logits)
        idx, y = self._prepare(logits, ages)
        kl = self._kl(logits, y, std)
        self._record(logits, idx, {"total": kl, "kl": kl})
        return kl


class DLDLv2Loss(DLDLLoss):
    r"""DLDL-v2 [4]_: label-distribution KL plus an L1 loss on the expected age.

    .. math:: L = L_{KL} + \lambda\, |m - y|

    ``last_components``: ``total``, ``kl``, ``l1``, ``ce`` (logged only), ``k_mean``.

    Parameters: those of :class:`DLDLLoss`, and ``lambda_l1`` (default 1.0), the weight of the
    L1 term.

    Examples
    --------
    >>> import torch
    >>> loss = DLDLv2Loss(sigma=1.0, start_age=0, end_age=2)
    >>> round(float(loss(torch.zeros(1, 3), torch.tensor([2]))), 4)
    1.2142
    """

    def __init__(
        self,
        sigma: float = 2.0,
        lambda_l1: float = 1.0,
        *,
        min_sigma: float = 1.0,
        start_age: int = 0,
        end_age: int = 100,
    ) -> None:
        super().__init__(sigma, min_sigma=min_sigma, start_age=start_age, end_age=end_age)
        self.lambda_l1 = float(lambda_l1)

    def extra_repr(self) -> str:
        return f"lambda_l1={self.lambda_l1}, " + super().extra_repr()

    def forward(self, logits: torch.Tensor, ages, std=None) -> torch.Tensor:
        logits = _upcast(logits)
        idx, y = self._prepare(logits, ages)
        kl = self._kl(logits, y, std)
        a = self._ages(logits)
        l1 = (torch.softmax(logits, dim=1) @ a - y).abs().mean()
        total = kl + self.lambda_l1 * l1
        self._record(logits, idx, {"total": total, "kl": kl, "l1": l1})
        return total


class L1ExpectationLoss(_AgeLoss):
    r"""L1 regression of the expected age (DEX-style expectation [5]_), :math:`L = |m - y|`.

    ``last_components``: ``total``, ``l1``, ``ce`` (logged only), ``k_mean``.

    Parameters
    ----------
    start_age, end_age : int, default 0, 100

    Examples
    --------
    >>> import torch
    >>> loss = L1ExpectationLoss(start_age=0, end_age=2)
    >>> float(loss(torch.zeros(2, 3), torch.tensor([0, 2])))
    1.0
    """

    def forward(self, logits: torch.Tensor, ages, std=None) -> torch.Tensor:
        logits = _upcast(logits)
        idx, y = self._prepare(logits, ages)
        a = self._ages(logits)
        l1 = (torch.softmax(logits, dim=1) @ a - y).abs().mean()
        self._record(logits, idx, {"total": l1, "l1": l1})
        return l1


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def _amr(**kwargs) -> MeanResidueLoss:
    if kwargs.get("k") is not None:
        raise ValueError(
            f"'amr' is the adaptive loss (k=None), got k={kwargs['k']!r}; use "
            "get_loss('mean_residue', k=...) for a fixed top-K"
        )
    kwargs.pop("k", None)
    return MeanResidueLoss(k=None, **kwargs)


def _mean_residue(**kwargs) -> MeanResidueLoss:
    if kwargs.get("k") is None:
        raise ValueError(
            "'mean_residue' is the fixed-K loss and needs an integer k, e.g. "
            "get_loss('mean_residue', k=6); use get_loss('amr') for the adaptive top-K"
        )
    return MeanResidueLoss(**kwargs)


@dataclass(frozen=True)
class LossSpec:
    """A registry entry: everything tables, figures, grids and tests need to know of a loss.

    Attributes
    ----------
    build : callable
        The constructor ``get_loss`` calls.
    cls : type
        The class whose ``__init__`` defines the accepted keyword arguments.
    label : str
        Display name in tables and figures (``"AMR"``, ``"mean-variance"`` ...).
    has_topk : bool
        Whether the loss has a top-K set (its K is shown; others read ``n/a``).
    weights : tuple of str
        Its term weights, by the constructor's argument names (``lambda_mean`` ...).
    components : tuple of str
        The terms of ``last_components`` that make up ``total`` (besides ``total`` itself).
    """

    build: Callable[..., _AgeLoss]
    cls: type[_AgeLoss]
    label: str
    has_topk: bool = False
    weights: tuple[str, ...] = ()
    components: tuple[str, ...] = ()

    def parameters(self) -> list[str]:
        """Keyword arguments the constructor accepts."""
        return [p.name for p in inspect.signature(self.cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


#: name -> :class:`LossSpec`; the order is the order of every table and figure (the paper's
#: loss first, then its fixed-K variant, then the baselines)
LOSSES: dict[str, LossSpec] = {
    "amr": LossSpec(_amr, MeanResidueLoss, "AMR", has_topk=True,
                    weights=("lambda_mean", "lambda_residue"),
                    components=("ce", "mean", "residue")),
    "mean_residue": LossSpec(_mean_residue, MeanResidueLoss, "mean-residue", has_topk=True,
                             weights=("lambda_mean", "lambda_residue"),
                             components=("ce", "mean", "residue")),
    "mean_variance": LossSpec(MeanVarianceLoss, MeanVarianceLoss, "mean-variance",
                              weights=("lambda_mean", "lambda_variance"),
                              components=("ce", "mean", "variance")),
    "ce": LossSpec(CrossEntropyLoss, CrossEntropyLoss, "CE", components=("ce",)),
    "dldl": LossSpec(DLDLLoss, DLDLLoss, "DLDL", components=("kl",)),
    "dldl_v2": LossSpec(DLDLv2Loss, DLDLv2Loss, "DLDL-v2", weights=("lambda_l1",),
                        components=("kl", "l1")),
    "l1": LossSpec(L1ExpectationLoss, L1ExpectationLoss, "L1", components=("l1",)),
}


def loss_spec(name: str) -> LossSpec:
    """The registry entry of ``name``, or a ``ValueError`` listing the valid names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_order(name: str) -> int:
    """Position of ``name`` in tables and figures (unknown names last).

    >>> sorted(["ce", "amr", "dldl"], key=loss_order)
    ['amr', 'ce', 'dldl']
    """
    return list(LOSSES).index(name) if name in LOSSES else len(LOSSES)


def component_order() -> tuple[str, ...]:
    """Every loss term in registry order, each once (the learning-curve panels).

    >>> component_order()
    ('ce', 'mean', 'residue', 'variance', 'kl', 'l1')
    """
    return tuple(dict.fromkeys(c for spec in LOSSES.values() for c in spec.components))


#: the term weights that are settings of their own (training settings, grid keys, notebook
#: parameters and ``ageest run`` flags by these names); a loss takes those its entry names
WEIGHT_SETTINGS = ("lambda_mean", "lambda_residue", "lambda_variance")


def weight_default(name: str) -> float:
    """The one default of weight setting ``name``: its constructor default in the losses that
    take it (which agree; a test checks it).

    >>> weight_default("lambda_mean"), weight_default("lambda_residue")
    (0.2, 0.05)
    """
    for spec in LOSSES.values():
        if name in spec.weights:
            return float(inspect.signature(spec.cls.__init__).parameters[name].default)
    raise ValueError(f"{name!r} is not a loss weight; weights: {', '.join(WEIGHT_SETTINGS)}")


def loss_weights(name: str, settings: Mapping[str, Any]) -> dict[str, float]:
    """The weight settings loss ``name`` takes, picked from ``settings`` by name (the others do
    not concern it, so they are not part of its runs' identity).

    >>> loss_weights("mean_variance", {"lambda_mean": 0.2, "lambda_residue": 0.1,
    ...                                "lambda_variance": 0.05})
    {'lambda_mean': 0.2, 'lambda_variance': 0.05}
    >>> loss_weights("ce", {"lambda_mean": 0.2})
    {}
    """
    return {w: float(settings[w]) for w in loss_spec(name).weights
            if w in WEIGHT_SETTINGS and w in settings}


def topk_mask(logits: torch.Tensor, ages, *, start_age: int = 0,
              k: int | None = None) -> torch.Tensor:
    """(N, C) bool, True for the classes inside top-K: the set the residue loss leaves out
    (ranked on the logits, see :func:`residue_loss`).

    >>> topk_mask(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([1])).tolist()
    [[True, True, False]]
    >>> topk_mask(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([1]), k=1).tolist()
    [[True, False, False]]
    """
    _check_logits_shape(logits)
    _check_k(k, logits)
    idx, _ = _prepare(logits, ages, start_age)
    return ~_out_of_topk_mask(logits, idx, k)


def list_losses() -> list[str]:
    """Names accepted by :func:`get_loss`, in registry order.

    Examples
    --------
    >>> list_losses()
    ['amr', 'mean_residue', 'mean_variance', 'ce', 'dldl', 'dldl_v2', 'l1']
    """
    return list(LOSSES)


def loss_parameters(name: str) -> list[str]:
    """Keyword arguments that ``get_loss(name, ...)`` accepts.

    Examples
    --------
    >>> loss_parameters("ce")
    ['start_age', 'end_age']
    """
    return loss_spec(name).parameters()


def get_loss(name: str, **kwargs) -> _AgeLoss:
    """Build a composite loss by registry name.

    Parameters
    ----------
    name : str
        One of :func:`list_losses`: ``ce``, ``mean_variance``, ``amr`` (adaptive mean-residue,
        the paper's loss), ``mean_residue`` (fixed K; requires ``k``), ``dldl``, ``dldl_v2``,
        ``l1``.
    **kwargs
        Constructor arguments, e.g. ``start_age``, ``end_age``, ``lambda_mean``, ``k``.

    Returns
    -------
    torch.nn.Module
        Callable as ``loss(logits, ages, std=None)``; sets ``loss.last_components``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names), an argument the loss does not take
        (the message lists those it does), or ``mean_residue`` without ``k``.

    Examples
    --------
    >>> loss = get_loss("amr", start_age=0, end_age=69)
    >>> loss.k is None, loss.num_classes
    (True, 70)
    """
    spec = loss_spec(name)
    accepted = spec.parameters()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} does not take {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return spec.build(**kwargs)
