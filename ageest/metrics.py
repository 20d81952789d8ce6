"""Evaluation metrics for age estimation: readouts, MAE, cumulative score, the CLAP2016
ε-error, leave-one-person-out aggregation, a subject-level bootstrap and paired tests.

All functions take numpy arrays, lists, pandas Series or torch tensors (moved to the CPU and
detached) and compute in float64 numpy. Inputs are checked: mismatched lengths, empty input and
NaN raise ``ValueError`` naming the argument.

References
----------
.. [1] Z. Zhao, P. Qian, Y. Hou, Z. Zeng. Adaptive Mean-Residue Loss for Robust Facial Age
   Estimation. IEEE ICME 2022, arXiv:2203.17156.
.. [2] S. Escalera et al. ChaLearn Looking at People and Faces of the World: Face Analysis
   Workshop and Challenge 2016. CVPR Workshops 2016 (the ε-error).
.. [3] B. Efron, R. Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas and scipy are imported where used: `import ageest.metrics` needs numpy only
    import pandas as pd

__all__ = [
    "expected_age",
    "predict_age",
    "READOUTS",
    "mae",
    "cumulative_score",
    "epsilon_error",
    "epsilon_per_image",
    "epsilon_summary",
    "score_summary",
    "per_subject_mae",
    "aggregate_lopo",
    "bootstrap_mae_ci",
    "paired_test",
    "mae_by_age_group",
]

#: readouts accepted by :func:`predict_age`; "rounded" is the official code's MAE readout and
#: "argmax" its CS(θ) readout
READOUTS = ("expectation", "rounded", "argmax", "median")


# --------------------------------------------------------------------------------------------
# input conversion
# --------------------------------------------------------------------------------------------


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}: {err}") from err
    return arr


def _vector(x, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim == 2 and 1 in arr.shape:  # (N, 1) column from a model head
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s) of {arr.size}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains {int(np.isinf(arr).sum())} infinite value(s)")
    return arr


def _pair(pred, true, names: tuple[str, str] = ("pred", "true")) -> tuple[np.ndarray, np.ndarray]:
    p = _vector(pred, names[0])
    t = _vector(true, names[1])
    if p.shape != t.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same length, got {p.size} and {t.size}"
        )
    return p, t


def _labels(x, name: str, n: int) -> np.ndarray:
    """Subject (cluster) labels: any hashable values, no missing ones."""
    import pandas as pd
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    s = pd.Series(np.asarray(x, dtype=object) if not isinstance(x, pd.Series) else x.to_numpy())
    if s.ndim != 1 or len(s) != n:
        raise ValueError(f"{name} must have length {n} to match the predictions, got {len(s)}")
    if s.isna().any():
        raise ValueError(
            f"{name} has {int(s.isna().sum())} missing value(s); every image needs a subject "
            "for subject-level statistics"
        )
    return s.to_numpy()


def _probs(probs) -> np.ndarray:
    p = _to_numpy(probs, "probs")
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, C) with N, C >= 1, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "probs must be non-negative with rows summing to 1 (got row sums in "
            f"[{p.sum(axis=1).min():.4g}, {p.sum(axis=1).max():.4g}]); pass softmax(logits), "
            "not logits"
        )
    return p


# --------------------------------------------------------------------------------------------
# readouts
# --------------------------------------------------------------------------------------------


def expected_age(probs, start_age: int = 0) -> np.ndarray:
    r"""Expected age of each predicted distribution [1]_.

    .. math:: m = \sum_j (\text{start\_age} + j)\, p_j

    Parameters
    ----------
    probs : array-like or torch.Tensor, shape (N, C)
        Probabilities (rows sum to 1).
    start_age : int, default 0
        Age of class 0.

    Returns
    -------
    numpy.ndarray
        Shape (N,), float64.

    Examples
    --------
    >>> expected_age([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], start_age=10)
    array([10.5, 12. ])
    """
    p = _probs(probs)
    return p @ (np.arange(p.shape[1], dtype=np.float64) + start_age)


def predict_age(probs, readout: str = "expectation", start_age: int = 0) -> np.ndarray:
    r"""Point prediction from a predicted age distribution.

    - ``"expectation"`` (default): :math:`m = \sum_j a_j p_j`.
    - ``"rounded"``: :math:`m` rounded to the nearest integer with ``numpy.round`` (half to
      even), as the official code's ``np.around`` does for MAE [1]_.
    - ``"argmax"``: the most probable age (the lowest on ties); the official code's CS(θ)
      readout.
    - ``"median"``: the smallest age whose cumulative probability reaches 0.5.

    Parameters
    ----------
    probs : array-like or torch.Tensor, shape (N, C)
    readout : {"expectation", "rounded", "argmax", "median"}
    start_age : int, default 0

    Returns
    -------
    numpy.ndarray
        Shape (N,), float64.

    Examples
    --------
    >>> p = [[0.2, 0.3, 0.5]]
    >>> [float(predict_age(p, r)[0]) for r in READOUTS]
    [1.3, 1.0, 2.0, 1.0]
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    p = _probs(probs)
    a = np.arange(p.shape[1], dtype=np.float64) + start_age
    if readout == "expectation":
        return p @ a
    if readout == "rounded":
        return np.round(p @ a)
    if readout == "argmax":
        return a[np.argmax(p, axis=1)]
    # a small tolerance so that a cumulative sum of exactly 0.5 in exact arithmetic (0.2 + 0.3)
    # is not missed through float rounding
    cdf = np.cumsum(p, axis=1)
    return a[np.argmax(cdf >= 0.5 - 1e-9, axis=1)]


# --------------------------------------------------------------------------------------------
# point metrics
# --------------------------------------------------------------------------------------------


def mae(pred, true) -> float:
    r"""Mean absolute error, :math:`\frac1N \sum_i |\hat y_i - y_i|`.

    Parameters
    ----------
    pred, true : array-like or torch.Tensor, shape (N,)

    Returns
    -------
    float

    Examples
    --------
    >>> mae([1.0, 2.0, 5.0], [1, 3, 3])
    1.0
    """
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t)))


def cumulative_score(pred, true, thetas: Iterable[int] = range(11)) -> pd.Series:
    r"""Cumulative score: the share of images with absolute error at most θ [1]_.

    .. math:: CS(\theta) = \frac1N \sum_i [\,|\hat y_i - y_i| \le \theta\,]

    Values are fractions in [0, 1], not percentages. The official code evaluates CS with the
    arg-max readout (``predict_age(..., "argmax")``); pass whichever readout you report.

    Parameters
    ----------
    pred, true : array-like or torch.Tensor, shape (N,)
    thetas : iterable of numbers, default range(11)
        Error tolerances θ (years), each ``>= 0``.

    Returns
    -------
    pandas.Series
        Indexed by θ (index name ``"theta"``), series name ``"cs"``.

    Examples
    --------
    >>> cumulative_score([1, 2, 5], [1, 3, 3], thetas=[0, 1, 2]).round(4).to_dict()
    {0: 0.3333, 1: 0.6667, 2: 1.0}
    """
    import pandas as pd
    p, t = _pair(pred, true)
    th = np.asarray(list(thetas), dtype=np.float64)
    if th.ndim != 1 or th.size == 0:
        raise ValueError("thetas must be a non-empty sequence of numbers")
    if np.isnan(th).any() or (th < 0).any():
        raise ValueError(f"thetas must be >= 0, got {th.tolist()}")
    err = np.abs(p - t)  # (N,)
    cs = (err[None, :] <= th[:, None]).mean(axis=1)  # (T,)
    index = pd.Index([int(v) if float(v).is_integer() else float(v) for v in th], name="theta")
    return pd.Series(cs, index=index, name="cs")


def epsilon_per_image(pred, mean, std, *, official_rounding: bool = False) -> np.ndarray:
    r"""Per-image ε-error :math:`e_i = 1 - \exp(-(x_i - \mu_i)^2 / (2\sigma_i^2))`.

    Raters who all agree give :math:`\sigma_i = 0` (real CLAP2016 labels have such images).
    There the formula is 0/0 at :math:`x_i = \mu_i` and :math:`-\infty` in the exponent
    otherwise, so its limit as :math:`\sigma_i \to 0^+` is used: :math:`e_i = 0` when the
    prediction equals the mean exactly, else 1. That limit is the metric's own value (a
    consensus label tolerates no error at all) and needs no arbitrary constant, unlike a floor on
    σ, whose size would decide how much error those images tolerate; so it is preferred.
    ``official_rounding=True`` is the official code instead (x and μ rounded half to even, σ +
    1e-4, so σ = 0 needs no rule). A missing σ (NaN) gives NaN for that image.

    >>> epsilon_per_image([20.0, 21.0, 20.0], [20.0, 20.0, 22.0], [0.0, 0.0, 2.0]).round(4)
    array([0.    , 1.    , 0.3935])
    """
    x, mu = _pair(pred, mean, ("pred", "mean"))
    sd = _to_numpy(std, "std").astype(np.float64).reshape(-1)
    if sd.shape != x.shape:
        raise ValueError(f"std must have the same length as pred, got {sd.size} and {x.size}")
    known = np.isfinite(sd)
    if (sd[known] < 0).any():
        raise ValueError(f"std must be >= 0, got min {sd[known].min():g}")
    if official_rounding:
        x, mu, sd = np.round(x), np.round(mu), sd + 1e-4
    e = np.full(x.shape, np.nan)
    pos = known & (sd > 0)
    e[pos] = 1.0 - np.exp(-((x[pos] - mu[pos]) ** 2) / (2.0 * sd[pos] ** 2))
    zero = known & (sd == 0)
    e[zero] = (x[zero] != mu[zero]).astype(np.float64)
    return e


def epsilon_summary(pred, mean, std, *, official_rounding: bool = False) -> dict[str, float | int]:
    """The ε-error over every image whose σ is known, and how many images needed a rule.

    Returns ``{"epsilon", "n", "n_sigma_zero", "n_sigma_missing"}``: ``epsilon`` is the mean of
    :func:`epsilon_per_image` over the ``n`` images with a finite σ (NaN when there is none);
    ``n_sigma_zero`` of them took the σ = 0 limit (0 in the official variant, which adds 1e-4);
    ``n_sigma_missing`` images had no σ and are left out.

    >>> epsilon_summary([20.0, 21.0, 30.0], [20.0, 20.0, 30.0], [0.0, 0.0, float("nan")])
    {'epsilon': 0.5, 'n': 2, 'n_sigma_zero': 2, 'n_sigma_missing': 1}
    """
    e = epsilon_per_image(pred, mean, std, official_rounding=official_rounding)
    sd = _to_numpy(std, "std").astype(np.float64).reshape(-1)
    known = np.isfinite(sd)
    return {"epsilon": float(np.mean(e[known])) if known.any() else float("nan"),
            "n": int(known.sum()),
            "n_sigma_zero": 0 if official_rounding else int((sd[known] == 0).sum()),
            "n_sigma_missing": int((~known).sum())}


def score_summary(expected, truth, std=None, *, thetas=None) -> dict[str, Any]:
    """A split's scores from expected ages: ``mae``, ``mae_rounded`` (of the expectation
    rounded half to even, the official readout) and, when any image has a raters' σ,
    ``epsilon`` (σ = 0 at the formula's limit), ``n_sigma_zero``, ``n_sigma_missing`` and
    ``epsilon_official`` (the official code's rounding and σ + 1e-4); with ``thetas``, ``cs``
    (CS(θ) by θ as text). The one computation behind epoch selection and a run's test metrics.

    >>> score_summary([20.4, 30.0], [20.0, 31.0], [1.0, float("nan")])["mae_rounded"]
    0.5
    """
    expected = _to_numpy(expected, "expected").astype(np.float64).reshape(-1)
    truth = _to_numpy(truth, "truth").astype(np.float64).reshape(-1)
    if len(expected) == 0:
        out: dict[str, Any] = {"mae": float("nan"), "mae_rounded": float("nan")}
    else:
        out = {"mae": mae(expected, truth), "mae_rounded": mae(np.round(expected), truth)}
    if thetas is not None:
        out["cs"] = {str(t): float(v) for t, v in
                     cumulative_score(expected, truth, thetas=thetas).items()}
    sd = None if std is None else _to_numpy(std, "std").astype(np.float64).reshape(-1)
    if sd is not None and len(sd) and np.isfinite(sd).any():
        summary = epsilon_summary(expected, truth, sd)
        out["epsilon"] = summary["epsilon"]
        out["n_sigma_zero"], out["n_sigma_missing"] = (summary["n_sigma_zero"],
                                                       summary["n_sigma_missing"])
        out["epsilon_official"] = epsilon_summary(expected, truth, sd,
                                                  official_rounding=True)["epsilon"]
    return out


def epsilon_error(pred, mean, std, *, official_rounding: bool = False) -> float:
    r"""ε-error of the ChaLearn LAP apparent-age challenge [2]_ (CLAP2016's metric).

    .. math:: \varepsilon = \frac1N \sum_i \Bigl(1 - \exp\bigl(-\tfrac{(x_i - \mu_i)^2}
              {2 \sigma_i^2}\bigr)\Bigr)

    with prediction :math:`x_i`, apparent-age mean :math:`\mu_i` and standard deviation
    :math:`\sigma_i` of the raters' guesses. 0 is perfect, 1 the worst. An image with
    :math:`\sigma_i = 0` contributes the formula's limit (0 for an exact prediction, else 1; see
    :func:`epsilon_per_image`); :func:`epsilon_summary` also counts them.

    ``official_rounding=True`` reproduces the official code: x and μ are rounded with
    ``numpy.round`` (half to even) and σ is replaced by :math:`\sigma + 10^{-4}` (the code adds
    1e-4 "in case var_s == 0"; it does not take a maximum).

    Parameters
    ----------
    pred, mean, std : array-like or torch.Tensor, shape (N,)
        ``std`` must be known (finite) for every image; use :func:`epsilon_summary` when some
        are missing.
    official_rounding : bool, default False

    Returns
    -------
    float

    Examples
    --------
    One exact prediction and one a full σ away, 1 - exp(-1/2) = 0.3935:

    >>> round(epsilon_error([20.0, 32.0], [20.0, 30.0], [3.0, 2.0]), 4)
    0.1967
    >>> round(epsilon_error([20.4], [20.0], [0.0], official_rounding=True), 4)
    0.0
    """
    sd = _vector(std, "std")
    e = epsilon_per_image(pred, mean, sd, official_rounding=official_rounding)
    return float(np.mean(e))


# --------------------------------------------------------------------------------------------
# leave-one-person-out aggregation
# --------------------------------------------------------------------------------------------


def _frame_or_arrays(data, pred, true, subject, pred_col, true_col, subject_col):
    import pandas as pd
    if data is not None:
        if not isinstance(data, pd.DataFrame):
            raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        missing = [c for c in (pred_col, true_col, subject_col) if c not in data.columns]
        if missing:
            raise ValueError(
                f"data lacks column(s) {missing}; has {list(data.columns)} "
                "(set pred_col/true_col/subject_col)"
            )
        pred, true, subject = data[pred_col], data[true_col], data[subject_col]
    elif pred is None or true is None or subject is None:
        raise ValueError("give either a DataFrame or all of pred=, true=, subject=")
    p, t = _pair(pred, true)
    s = _labels(subject, "subject", p.size)
    return p, t, s


def per_subject_mae(
    data: pd.DataFrame | None = None,
    *,
    pred=None,
    true=None,
    subject=None,
    pred_col: str = "pred",
    true_col: str = "age",
    subject_col: str = "subject",
) -> pd.DataFrame:
    """MAE and image count of each subject (one LOPO fold per subject on FG-NET).

    Parameters
    ----------
    data : pandas.DataFrame, optional
        With columns ``pred_col``, ``true_col``, ``subject_col``. Or pass arrays instead.
    pred, true, subject : array-like, optional
    pred_col, true_col, subject_col : str

    Returns
    -------
    pandas.DataFrame
        Index ``subject`` (sorted), columns ``n`` (int) and ``mae``.

    Examples
    --------
    >>> per_subject_mae(pred=[1, 2, 10], true=[0, 2, 4], subject=["a", "a", "b"]).to_dict("index")
    {'a': {'n': 2, 'mae': 0.5}, 'b': {'n': 1, 'mae': 6.0}}
    """
    import pandas as pd
    p, t, s = _frame_or_arrays(data, pred, true, subject, pred_col, true_col, subject_col)
    df = pd.DataFrame({"subject": s, "err": np.abs(p - t)})
    out = df.groupby("subject", sort=True)["err"].agg(n="size", mae="mean")
    return out


def aggregate_lopo(
    data: pd.DataFrame | None = None,
    *,
    pred=None,
    true=None,
    subject=None,
    pred_col: str = "pred",
    true_col: str = "age",
    subject_col: str = "subject",
) -> dict[str, float]:
    r"""Aggregate leave-one-person-out predictions in the two ways the paper leaves open.

    - pooled over images: :math:`\frac1N \sum_i |\hat y_i - y_i|` (each image counts once);
    - mean over subjects: :math:`\frac1S \sum_s \mathrm{MAE}_s` (each fold/subject counts
      once, so subjects with few images weigh more).

    Parameters
    ----------
    data : pandas.DataFrame, optional
        All folds' test predictions, with columns ``pred_col``, ``true_col``, ``subject_col``.
    pred, true, subject : array-like, optional
        Instead of ``data``.
    pred_col, true_col, subject_col : str, default "pred", "age", "subject"

    Returns
    -------
    dict
        ``mae_pooled``, ``mae_subject_mean``, ``mae_subject_std`` (sample std over subjects,
        NaN for one subject), ``n_images``, ``n_subjects``.

    Examples
    --------
    >>> r = aggregate_lopo(pred=[1, 2, 10], true=[0, 2, 4], subject=["a", "a", "b"])
    >>> r["mae_pooled"], r["mae_subject_mean"], r["n_subjects"]
    (2.3333333333333335, 3.25, 2)
    """
    p, t, s = _frame_or_arrays(data, pred, true, subject, pred_col, true_col, subject_col)
    per = per_subject_mae(pred=p, true=t, subject=s)
    return {
        "mae_pooled": float(np.mean(np.abs(p - t))),
        "mae_subject_mean": float(per["mae"].mean()),
        "mae_subject_std": float(per["mae"].std(ddof=1)) if len(per) > 1 else float("nan"),
        "n_images": int(p.size),
        "n_subjects": int(len(per)),
    }


# --------------------------------------------------------------------------------------------
# uncertainty and paired comparison
# --------------------------------------------------------------------------------------------


def bootstrap_mae_ci(
    pred,
    true,
    subject=None,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    statistic: str = "pooled",
    seed: int = 0,
) -> dict[str, float]:
    r"""Percentile bootstrap confidence interval for MAE, resampling whole subjects [3]_.

    Images of one person are correlated, so the resampling unit is the subject (cluster
    bootstrap): each replicate draws S subjects with replacement out of the S present and
    recomputes the MAE over all their images. Without ``subject`` every image is its own
    cluster (the ordinary bootstrap). Vectorised: per-subject error sums and counts are weighted
    by a (n_boot, S) matrix of draw counts.

    Parameters
    ----------
    pred, true : array-like, shape (N,)
    subject : array-like, shape (N,), optional
        Subject label of each image.
    n_boot : int, default 2000
    ci : float, default 0.95
        Coverage of the two-sided interval, in (0, 1).
    statistic : {"pooled", "subject_mean"}
        MAE pooled over images, or the mean of per-subject MAEs (see :func:`aggregate_lopo`).
    seed : int, default 0
        Seed of a private ``numpy.random.Generator`` (global state is untouched).

    Returns
    -------
    dict
        ``estimate`` (on the original data), ``low``, ``high``, ``ci``, ``n_boot``,
        ``n_clusters``.

    Examples
    --------
    >>> r = bootstrap_mae_ci([1, 2, 3, 4], [1, 1, 1, 1], ["a", "a", "b", "b"], n_boot=200)
    >>> r["estimate"], r["n_clusters"], 0.5 <= r["low"] <= r["estimate"] <= r["high"] <= 2.5
    (1.5, 2, True)
    """
    import pandas as pd
    p, t = _pair(pred, true)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if statistic not in ("pooled", "subject_mean"):
        raise ValueError(f"statistic must be 'pooled' or 'subject_mean', got {statistic!r}")
    err = np.abs(p - t)
    if subject is None:
        codes = np.arange(err.size)
    else:
        codes = pd.factorize(_labels(subject, "subject", err.size))[0]
    n_clusters = int(codes.max()) + 1
    sums = np.bincount(codes, weights=err, minlength=n_clusters)  # (S,)
    counts = np.bincount(codes, minlength=n_clusters).astype(np.float64)  # (S,)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))  # (B, S) subject indices
    flat = (draws + n_clusters * np.arange(n_boot)[:, None]).ravel()
    weights = np.bincount(flat, minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)
    if statistic == "pooled":
        estimate = sums.sum() / counts.sum()
        reps = (weights @ sums) / (weights @ counts)  # (B,)
    else:
        per = sums / counts  # (S,)
        estimate = per.mean()
        reps = (weights @ per) / n_clusters
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return {
        "estimate": float(estimate),
        "low": float(low),
        "high": float(high),
        "ci": float(ci),
        "n_boot": int(n_boot),
        "n_clusters": n_clusters,
    }


def paired_test(
    errors_a,
    errors_b,
    *,
    method: str = "permutation",
    n_resamples: int = 9999,
    alternative: str = "two-sided",
    seed: int = 0,
) -> dict[str, float]:
    r"""Paired test of two methods' per-image errors on the same images.

    With :math:`d_i = e^A_i - e^B_i`:

    - ``"permutation"``: sign-flip permutation test of :math:`\bar d` (swapping the two methods
      within each image), the test ``scipy.stats.permutation_test(..., permutation_type=
      "samples")`` performs, vectorised here in numpy chunks (scipy takes ~10 s for N = 5000).
      Exact (all :math:`2^N` sign patterns) when :math:`2^N \le` ``n_resamples``, else Monte
      Carlo with :math:`p = (1 + \#\{\text{as extreme}\}) / (1 + \text{n\_resamples})`.
      The statistic is :math:`\bar d`.
    - ``"wilcoxon"``: Wilcoxon signed-rank test, ``scipy.stats.wilcoxon`` (zero differences
      dropped, ``zero_method="wilcox"``). The statistic is scipy's W.

    If every difference is zero there is no evidence either way: statistic 0, p-value 1.

    Parameters
    ----------
    errors_a, errors_b : array-like, shape (N,)
        Per-image errors (e.g. absolute errors) of methods A and B, same image order.
    method : {"permutation", "wilcoxon"}
    n_resamples : int, default 9999
        Permutations (permutation test only).
    alternative : {"two-sided", "less", "greater"}
        "less": A has smaller errors than B.
    seed : int, default 0

    Returns
    -------
    dict
        ``statistic``, ``p_value``, ``mean_diff`` (mean of A - B), ``n``, ``method``.

    Examples
    --------
    >>> a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    >>> b = [2.0, 3.5, 3.5, 5.0, 6.5, 7.0]
    >>> r = paired_test(a, b)
    >>> r["mean_diff"], round(r["p_value"], 4)
    (-1.0833333333333333, 0.0312)
    """
    from scipy import stats
    a, b = _pair(errors_a, errors_b, ("errors_a", "errors_b"))
    if method not in ("permutation", "wilcoxon"):
        raise ValueError(f"method must be 'permutation' or 'wilcoxon', got {method!r}")
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(
            f"alternative must be 'two-sided', 'less' or 'greater', got {alternative!r}"
        )
    d = a - b
    out = {"mean_diff": float(d.mean()), "n": int(d.size), "method": method}
    if np.all(d == 0):
        return {"statistic": 0.0, "p_value": 1.0, **out}
    if method == "wilcoxon":
        res = stats.wilcoxon(a, b, zero_method="wilcox", alternative=alternative)
        return {"statistic": float(res.statistic), "p_value": float(res.pvalue), **out}
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    return {
        "statistic": float(d.mean()),
        "p_value": _sign_flip_p(d, n_resamples, alternative, seed),
        **out,
    }


def _sign_flip_p(d: np.ndarray, n_resamples: int, alternative: str, seed: int) -> float:
    """p-value of the paired sign-flip test of mean(d); exact for small N."""
    n = d.size
    obs = d.mean()
    tol = 1e-14 * max(abs(obs), 1e-300)  # as scipy: ties with the observed value count
    exact = n < 63 and 2**n <= n_resamples
    chunk = max(1, 2_000_000 // n)  # bounds memory to ~16 MB of signs per block
    rng = np.random.default_rng(seed)
    total = 2**n if exact else n_resamples
    count = 0
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        if exact:
            codes = np.arange(start, stop, dtype=np.int64)[:, None]  # every sign pattern once
            signs = 1.0 - 2.0 * ((codes >> np.arange(n, dtype=np.int64)) & 1)
        else:
            signs = rng.choice(np.array([-1.0, 1.0]), size=(stop - start, n))
        perm = signs @ d / n  # (B,)
        if alternative == "two-sided":
            count += int(np.count_nonzero(np.abs(perm) >= abs(obs) - tol))
        elif alternative == "less":
            count += int(np.count_nonzero(perm <= obs + tol))
        else:
            count += int(np.count_nonzero(perm >= obs - tol))
    if exact:
        return count / total
    return (count + 1) / (n_resamples + 1)


def mae_by_age_group(
    pred, true, bins: Sequence[float] | int = 10, *, labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """MAE per age group of the *true* age.

    Parameters
    ----------
    pred, true : array-like, shape (N,)
    bins : int or sequence of numbers, default 10
        An int is a bin width: groups ``[0, w), [w, 2w), ...`` up to the oldest true age. A
        sequence gives increasing edges; groups are ``[e_i, e_{i+1})`` and the last is closed,
        ``[e_{-2}, e_{-1}]``. True ages outside the edges raise ``ValueError`` (nothing is
        dropped silently).
    labels : sequence of str, optional
        One per group; default ``"a-b"`` with integer edges (inclusive ages), e.g. ``"0-9"``.

    Returns
    -------
    pandas.DataFrame
        One row per group in order (empty groups kept with ``n`` 0 and ``mae`` NaN); columns
        ``group``, ``low``, ``high``, ``n``, ``mae``.

    Examples
    --------
    >>> t = mae_by_age_group([2, 8, 25], [3, 6, 20], bins=[0, 10, 20, 30])
    >>> t[["group", "n", "mae"]].to_dict("list")
    {'group': ['0-9', '10-19', '20-30'], 'n': [2, 0, 1], 'mae': [1.5, nan, 5.0]}
    """
    import pandas as pd
    p, t = _pair(pred, true)
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins <= 0:
            raise ValueError(f"bins as a width must be > 0, got {bins}")
        top = max(np.floor(t.max() / bins) + 1, 1) * bins
        edges = np.arange(0, top + bins / 2, bins, dtype=np.float64)
        if t.min() < 0:
            raise ValueError("true ages are negative; pass explicit bin edges")
    else:
        edges = np.asarray(list(bins), dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"bins must be at least two strictly increasing edges, got {list(edges)}")
    outside = (t < edges[0]) | (t > edges[-1])
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} true age(s) fall outside the bin edges "
            f"[{edges[0]:g}, {edges[-1]:g}] (e.g. {t[outside][:3].tolist()}); widen the bins"
        )
    n_groups = edges.size - 1
    # right-open bins, except that the last edge belongs to the last bin
    group = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_groups - 1)
    err = np.abs(p - t)
    n = np.bincount(group, minlength=n_groups)
    s = np.bincount(group, weights=err, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        group_mae = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    if labels is None:

        def _fmt(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        labels = [
            f"{_fmt(lo)}-{_fmt(hi - 1 if i < n_groups - 1 and float(hi).is_integer() else hi)}"
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
        ]
    elif len(labels) != n_groups:
        raise ValueError(f"labels must have {n_groups} entries (one per group), got {len(labels)}")
    low = edges[:-1]
    high = edges[1:]
    as_int = np.all(np.mod(edges, 1) == 0)
    return pd.DataFrame(
        {
            "group": list(labels),
            "low": low.astype(int) if as_int else low,
            "high": high.astype(int) if as_int else high,
            "n": n.astype(int),
            "mae": group_mae,
        }
    )
