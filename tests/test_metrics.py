"""Tests of ageest.metrics: known values, input types, error messages and the statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ageest.metrics import (
    READOUTS,
    aggregate_lopo,
    bootstrap_mae_ci,
    cumulative_score,
    epsilon_error,
    epsilon_per_image,
    epsilon_summary,
    expected_age,
    mae,
    mae_by_age_group,
    paired_test,
    per_subject_mae,
    predict_age,
)

PROBS = np.array(
    [
        [0.2, 0.3, 0.5, 0.0],  # E = 1.3, argmax 2, median 1 (cdf .2 .5 ...)
        [0.0, 0.0, 0.0, 1.0],  # E = 3
        [0.25, 0.25, 0.25, 0.25],  # E = 1.5, argmax 0 (ties -> lowest), median 1
        [0.1, 0.1, 0.1, 0.7],  # E = 2.4, argmax 3, median 3
    ]
)


# --------------------------------------------------------------------------------------------
# readouts
# --------------------------------------------------------------------------------------------


def test_expected_age_known_values_and_types():
    want = np.array([1.3, 3.0, 1.5, 2.4])
    np.testing.assert_allclose(expected_age(PROBS), want)
    np.testing.assert_allclose(expected_age(PROBS, start_age=10), want + 10)
    np.testing.assert_allclose(expected_age(torch.tensor(PROBS, requires_grad=True)), want)
    np.testing.assert_allclose(expected_age(PROBS.tolist()), want)
    assert expected_age(PROBS).dtype == np.float64


@pytest.mark.parametrize(
    "readout, want",
    [
        ("expectation", [1.3, 3.0, 1.5, 2.4]),
        ("rounded", [1.0, 3.0, 2.0, 2.0]),  # 1.5 -> 2 (half to even, as np.around)
        ("argmax", [2.0, 3.0, 0.0, 3.0]),
        ("median", [1.0, 3.0, 1.0, 3.0]),
    ],
)
def test_predict_age_readouts(readout, want):
    np.testing.assert_allclose(predict_age(PROBS, readout), want)
    shifted = predict_age(PROBS, readout, start_age=5)
    if readout == "rounded":  # 6.5 rounds to 6 (half to even), 1.5 to 2
        np.testing.assert_allclose(shifted, [6.0, 8.0, 6.0, 7.0])
    else:
        np.testing.assert_allclose(shifted, np.array(want) + 5)


def test_rounded_readout_is_half_to_even_like_official_np_around():
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # E = 0.5, 2.5
    np.testing.assert_array_equal(predict_age(probs, "rounded"), np.around([0.5, 2.5]))
    assert predict_age(probs, "rounded").tolist() == [0.0, 2.0]


def test_readouts_on_float32_softmax_of_tensor():
    z = torch.randn(50, 101, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(z, dim=1)
    for r in READOUTS:
        out = predict_age(p, r)
        assert out.shape == (50,) and np.isfinite(out).all()
    np.testing.assert_allclose(
        predict_age(p, "expectation"), (p.double() @ torch.arange(101.0).double()).numpy()
    )


# --------------------------------------------------------------------------------------------
# point metrics
# --------------------------------------------------------------------------------------------


def test_mae_known_values_and_input_types():
    assert mae([1.0, 2.0, 5.0], [1, 3, 3]) == 1.0
    assert mae(np.array([0.5]), np.array([0])) == 0.5
    assert mae(torch.tensor([1.0, 2.0]), pd.Series([2.0, 2.0])) == 0.5
    assert mae(np.array([[1.0], [3.0]]), [0, 0]) == 2.0  # (N, 1) column accepted
    assert isinstance(mae([1], [2]), float)


def test_cumulative_score_known_values():
    pred, true = [1, 2, 5, 10], [1, 3, 3, 3]  # errors 0 1 2 7
    cs = cumulative_score(pred, true)
    assert isinstance(cs, pd.Series) and cs.name == "cs" and cs.index.name == "theta"
    assert list(cs.index) == list(range(11))
    np.testing.assert_allclose(cs.values, [0.25, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 1, 1, 1, 1])
    assert cumulative_score(pred, true, thetas=[2.5]).to_dict() == {2.5: 0.75}
    assert cs.is_monotonic_increasing


def test_epsilon_error_known_values():
    # errors of 0, 1 sigma, 2 sigma
    got = epsilon_error([20.0, 32.0, 14.0], [20.0, 30.0, 20.0], [3.0, 2.0, 3.0])
    want = np.mean([0.0, 1 - math.exp(-0.5), 1 - math.exp(-2.0)])
    assert got == pytest.approx(want)
    assert epsilon_error(torch.tensor([5.0]), torch.tensor([5.0]), torch.tensor([1.0])) == 0.0


def test_epsilon_sigma_zero_takes_the_limit_and_is_counted():
    # σ = 0 (raters agree): 0 for an exact prediction, 1 otherwise, the formula's σ -> 0+ limit
    assert epsilon_error([20.0, 20.3], [20.0, 20.0], [0.0, 0.0]) == pytest.approx(0.5)
    for sd in (1e-3, 1e-6):  # the limit is approached continuously
        assert epsilon_error([20.3], [20.0], [sd]) == pytest.approx(1.0)
    s = epsilon_summary([20.0, 22.0, 25.0, 30.0], [20.0, 20.0, 25.0, 31.0],
                        [0.0, 2.0, np.nan, 0.0])
    assert s == {"epsilon": pytest.approx((0 + (1 - math.exp(-0.5)) + 1) / 3), "n": 3,
                 "n_sigma_zero": 2, "n_sigma_missing": 1}
    e = epsilon_per_image([20.0, 30.0], [20.0, 30.0], [np.nan, 0.0])
    assert np.isnan(e[0]) and e[1] == 0.0
    with pytest.raises(ValueError, match="std contains 1 NaN"):
        epsilon_error([1.0], [1.0], [np.nan])


def test_epsilon_error_official_rounding():
    # x 20.6 -> 21, mu 19.5 -> 20 (half to even), sigma 2 -> 2.0001
    got = epsilon_error([20.6], [19.5], [2.0], official_rounding=True)
    assert got == pytest.approx(1 - math.exp(-1.0 / (2 * 2.0001**2)))
    # sigma 0 is allowed only in the official mode (sigma + 1e-4)
    assert epsilon_error([20.0], [20.2], [0.0], official_rounding=True) == 0.0
    assert epsilon_error([21.0], [20.0], [0.0], official_rounding=True) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# LOPO aggregation
# --------------------------------------------------------------------------------------------


def test_aggregate_lopo_pooled_vs_subject_mean():
    df = pd.DataFrame(
        {
            "pred": [1.0, 2.0, 10.0, 4.0, 4.0, 4.0],
            "age": [0, 2, 4, 4, 5, 6],
            "subject": ["001", "001", "002", "003", "003", "003"],
        }
    )
    r = aggregate_lopo(df)
    # errors 1 0 6 0 1 2: pooled 10/6; subjects: .5, 6, 1 -> 7.5/3
    assert r["mae_pooled"] == pytest.approx(10 / 6)
    assert r["mae_subject_mean"] == pytest.approx(2.5)
    assert r["mae_subject_std"] == pytest.approx(np.std([0.5, 6, 1], ddof=1))
    assert (r["n_images"], r["n_subjects"]) == (6, 3)
    same = aggregate_lopo(pred=df["pred"].to_numpy(), true=df["age"], subject=df["subject"])
    assert same == r
    renamed = df.rename(columns={"pred": "p", "age": "y", "subject": "s"})
    assert aggregate_lopo(renamed, pred_col="p", true_col="y", subject_col="s") == r
    per = per_subject_mae(df)
    assert per.index.tolist() == ["001", "002", "003"]
    assert per["n"].tolist() == [2, 1, 3] and per["mae"].tolist() == [0.5, 6.0, 1.0]
    one = aggregate_lopo(pred=[1.0], true=[0.0], subject=[7])
    assert math.isnan(one["mae_subject_std"]) and one["mae_subject_mean"] == 1.0


# --------------------------------------------------------------------------------------------
# bootstrap and paired tests
# --------------------------------------------------------------------------------------------


def _reference_cluster_bootstrap(err, subj, n_boot, seed, statistic):
    """Loop version with the same random draws as the vectorised one."""
    codes, uniq = pd.factorize(pd.Series(subj))
    s = len(uniq)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, s, size=(n_boot, s))
    reps = []
    for row in draws:
        if statistic == "pooled":
            chosen = np.concatenate([err[codes == c] for c in row])
            reps.append(chosen.mean())
        else:
            reps.append(np.mean([err[codes == c].mean() for c in row]))
    return np.array(reps)


@pytest.mark.parametrize("statistic", ["pooled", "subject_mean"])
def test_cluster_bootstrap_matches_loop_reference(statistic):
    rng = np.random.default_rng(1)
    subj = np.repeat(np.arange(15), rng.integers(1, 8, size=15))
    true = rng.integers(0, 70, size=subj.size).astype(float)
    pred = true + rng.normal(0, 1 + subj % 4, size=subj.size)  # subject-dependent error
    r = bootstrap_mae_ci(pred, true, subj, n_boot=300, seed=3, statistic=statistic, ci=0.9)
    reps = _reference_cluster_bootstrap(np.abs(pred - true), subj, 300, 3, statistic)
    low, high = np.quantile(reps, [0.05, 0.95])
    assert r["low"] == pytest.approx(low) and r["high"] == pytest.approx(high)
    agg = aggregate_lopo(pred=pred, true=true, subject=subj)
    key = "mae_pooled" if statistic == "pooled" else "mae_subject_mean"
    assert r["estimate"] == pytest.approx(agg[key])
    assert r["n_clusters"] == 15 and r["n_boot"] == 300 and r["ci"] == 0.9
    # seeded: same seed, same interval; another seed, another one
    assert bootstrap_mae_ci(pred, true, subj, n_boot=300, seed=3, statistic=statistic, ci=0.9) == r
    assert (
        bootstrap_mae_ci(pred, true, subj, n_boot=300, seed=4, statistic=statistic)["low"]
        != (r["low"])
    )


def test_bootstrap_cluster_interval_is_wider_than_image_level_for_correlated_errors():
    # 20 subjects, 30 images each, errors almost constant within a subject
    rng = np.random.default_rng(0)
    subj = np.repeat(np.arange(20), 30)
    err = np.repeat(rng.exponential(4.0, 20), 30) + rng.normal(0, 0.1, 600)
    true = np.zeros(600)
    clustered = bootstrap_mae_ci(err, true, subj, n_boot=500)
    iid = bootstrap_mae_ci(err, true, n_boot=500)
    assert iid["n_clusters"] == 600
    assert clustered["high"] - clustered["low"] > 3 * (iid["high"] - iid["low"])
    assert clustered["low"] < clustered["estimate"] < clustered["high"]


def test_paired_permutation_test_exact_small_sample():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    b = np.array([2.0, 3.5, 3.5, 5.0, 6.5, 7.0])  # A better on every image
    r = paired_test(a, b)
    assert r["mean_diff"] == pytest.approx(np.mean(a - b))
    assert r["statistic"] == pytest.approx(np.mean(a - b))
    # exact sign-flip test: only the all-negative and all-positive flips are as extreme, 2 / 64
    assert r["p_value"] == pytest.approx(2 / 64)
    assert paired_test(a, b, alternative="less")["p_value"] == pytest.approx(1 / 64)
    assert (r["n"], r["method"]) == (6, "permutation")


def test_paired_wilcoxon_matches_scipy_and_detects_difference():
    rng = np.random.default_rng(0)
    a = rng.exponential(3.0, 200)
    b = a + rng.normal(0.5, 1.0, 200)
    r = paired_test(a, b, method="wilcoxon")
    ref = stats.wilcoxon(a, b)
    assert r["statistic"] == ref.statistic and r["p_value"] == pytest.approx(ref.pvalue)
    assert r["p_value"] < 1e-3 and r["mean_diff"] < 0
    perm = paired_test(a, b, n_resamples=2000, seed=1)
    assert perm["p_value"] < 1e-2
    # same errors: no evidence either way
    same = paired_test(a, a, method="wilcoxon")
    assert (same["statistic"], same["p_value"], same["mean_diff"]) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_paired_permutation_matches_scipy(alternative):
    rng = np.random.default_rng(4)
    a = rng.exponential(3.0, 12)
    b = a + rng.normal(0.3, 1.0, 12)

    def mean_diff(x, y, axis):
        return np.mean(x - y, axis=axis)

    # 2^12 = 4096 <= n_resamples: both enumerate every sign pattern, so the p-values are equal
    ref = stats.permutation_test(
        (a, b), mean_diff, permutation_type="samples", vectorized=True, alternative=alternative
    )
    got = paired_test(a, b, alternative=alternative)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    # Monte Carlo on a larger sample: equal up to resampling noise
    a, b = rng.exponential(3.0, 300), rng.exponential(3.0, 300) + 0.2
    ref = stats.permutation_test(
        (a, b),
        mean_diff,
        permutation_type="samples",
        vectorized=True,
        n_resamples=4000,
        alternative=alternative,
        rng=np.random.default_rng(0),
    )
    got = paired_test(a, b, n_resamples=4000, alternative=alternative, seed=1)
    assert abs(got["p_value"] - ref.pvalue) < 0.03


def test_paired_permutation_null_p_value_is_not_small():
    rng = np.random.default_rng(2)
    a = rng.exponential(3.0, 100)
    b = a + rng.normal(0.0, 1.0, 100) * rng.choice([-1, 1], 100)
    assert paired_test(a, b, n_resamples=999)["p_value"] > 0.05


# --------------------------------------------------------------------------------------------
# per-age-group MAE
# --------------------------------------------------------------------------------------------


def test_mae_by_age_group_edges_and_width():
    pred = [2, 8, 25, 69, 0]
    true = [3, 6, 20, 69, 10]
    t = mae_by_age_group(pred, true, bins=[0, 10, 20, 70])
    assert t["group"].tolist() == ["0-9", "10-19", "20-70"]
    assert t["n"].tolist() == [2, 1, 2]  # 69 falls into the closed last bin
    np.testing.assert_allclose(t["mae"], [1.5, 10.0, 2.5])
    w = mae_by_age_group(pred, true, bins=30)
    assert w["group"].tolist() == ["0-29", "30-59", "60-90"]
    assert w["n"].tolist() == [4, 0, 1] and math.isnan(w["mae"][1])
    lab = mae_by_age_group(pred, true, bins=[0, 18, 70], labels=["minor", "adult"])
    assert lab["group"].tolist() == ["minor", "adult"] and lab["n"].sum() == 5


# --------------------------------------------------------------------------------------------
# error messages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mae([1, 2], [1, 2, 3]), r"pred and true must have the same length, got 2 and 3"),
        (lambda: mae([], []), r"pred is empty"),
        (lambda: mae([1, np.nan], [1, 2]), r"pred contains 1 NaN value\(s\) of 2"),
        (lambda: mae([1, 2], [1, np.inf]), r"true contains 1 infinite"),
        (
            lambda: mae([[1, 2], [3, 4]], [1, 2]),
            r"pred must be one-dimensional \(N,\), got shape \(2, 2\)",
        ),
        (lambda: mae(["a"], [1]), r"pred must be numeric"),
        (lambda: cumulative_score([1], [1], thetas=[]), r"thetas must be a non-empty"),
        (lambda: cumulative_score([1], [1], thetas=[-1]), r"thetas must be >= 0"),
        (
            lambda: epsilon_error([1, 2], [1, 2], [1]),
            r"std must have the same length as pred, got 1 and 2",
        ),
        (lambda: epsilon_error([1], [1], [-1.0]), r"std must be >= 0"),
        (lambda: epsilon_error([1], [np.nan], [1.0]), r"mean contains 1 NaN"),
        (lambda: expected_age([0.2, 0.8]), r"probs must have shape \(N, C\).*got shape \(2,\)"),
        (lambda: expected_age([[1.0, 2.0]]), r"rows summing to 1.*pass softmax\(logits\)"),
        (lambda: expected_age([[-0.5, 1.5]]), r"non-negative"),
        (lambda: expected_age([[np.nan, 1.0]]), r"probs contains NaN"),
        (lambda: predict_age(PROBS, "mode"), r"readout must be one of .*'mode'"),
        (
            lambda: aggregate_lopo(pred=[1, 2], true=[1, 2], subject=["a"]),
            r"subject must have length 2",
        ),
        (
            lambda: aggregate_lopo(pred=[1, 2], true=[1, 2], subject=["a", None]),
            r"subject has 1 missing",
        ),
        (lambda: aggregate_lopo(pred=[1, 2], true=[1, 2]), r"give either a DataFrame or all of"),
        (
            lambda: aggregate_lopo(pd.DataFrame({"pred": [1]})),
            r"lacks column\(s\) \['age', 'subject'\]",
        ),
        (lambda: aggregate_lopo([1, 2]), r"data must be a pandas DataFrame"),
        (lambda: bootstrap_mae_ci([1], [1], n_boot=0), r"n_boot must be a positive int"),
        (lambda: bootstrap_mae_ci([1], [1], ci=1.0), r"ci must be in \(0, 1\)"),
        (lambda: bootstrap_mae_ci([1], [1], statistic="median"), r"statistic must be 'pooled'"),
        (lambda: bootstrap_mae_ci([1, 2], [1, 2], [np.nan, "a"]), r"subject has 1 missing"),
        (lambda: paired_test([1, 2], [1]), r"errors_a and errors_b must have the same length"),
        (lambda: paired_test([1], [2], method="t"), r"method must be 'permutation' or 'wilcoxon'"),
        (lambda: paired_test([1], [2], alternative="up"), r"alternative must be"),
        (lambda: paired_test([1], [2], n_resamples=0), r"n_resamples must be a positive int"),
        (
            lambda: mae_by_age_group([1], [100], bins=[0, 10, 20]),
            r"1 true age\(s\) fall outside.*\[0, 20\]",
        ),
        (lambda: mae_by_age_group([1], [1], bins=[10, 0]), r"strictly increasing"),
        (lambda: mae_by_age_group([1], [1], bins=0), r"width must be > 0"),
        (lambda: mae_by_age_group([1], [-1], bins=10), r"negative"),
        (
            lambda: mae_by_age_group([1], [1], bins=[0, 10], labels=["a", "b"]),
            r"labels must have 1",
        ),
    ],
)
def test_metric_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_score_summary_is_the_one_score_of_selection_and_test():
    """Known values, and the trainer's selection score and a run's test metrics agree with it
    (they both call it)."""
    import pandas as pd

    from ageest.engine.run import test_metrics
    from ageest.engine.train import _score

    expected, truth, std = [20.4, 30.5, 41.0], [20.0, 31.0, 41.0], [1.0, 0.0, float("nan")]
    from ageest import metrics as M

    s = M.score_summary(expected, truth, std, thetas=[0, 1])
    assert s["mae"] == pytest.approx((0.4 + 0.5 + 0.0) / 3)
    assert s["mae_rounded"] == pytest.approx((0 + 1 + 0) / 3)  # 30.5 rounds to 30 (half even)
    assert s["cs"] == {"0": pytest.approx(1 / 3), "1": 1.0}
    assert (s["n_sigma_zero"], s["n_sigma_missing"]) == (1, 1)
    assert s["epsilon"] == pytest.approx((1 - np.exp(-0.16 / 2) + 1.0) / 2)
    probs = np.zeros((3, 50))
    for i, e in enumerate(expected):  # two neighbouring ages give the expectation exactly
        lo = int(np.floor(e))
        probs[i, lo], probs[i, lo + 1] = 1 - (e - lo), e - lo
    table = pd.DataFrame({"age_mean": truth, "std": std})
    picked = _score(probs, table, 0)
    assert {k: picked[k] for k in picked} == pytest.approx(
        {k: s[k] for k in ("mae", "mae_rounded", "epsilon", "epsilon_official")})
    preds = pd.DataFrame({"expected_age": expected, "age_mean": truth, "std": std})
    m = test_metrics(preds)
    assert m["mae"] == s["mae"] and m["cs"]["1"] == 1.0 and m["epsilon"] == s["epsilon"]
