"""Tests of ageest.losses: known values, every reduction, error messages, gradients, and the
vectorised residue loss against a plain per-sample Python loop."""

from __future__ import annotations

import math

import pytest
import torch

from ageest.losses import (
    gaussian_label_distribution,
    label_distribution_kl,
    mean_loss,
    residue_loss,
    topk_size,
    variance_loss,
)

torch.set_num_threads(1)

# --------------------------------------------------------------------------------------------
# plain references: one sample at a time, Python floats and math only
# --------------------------------------------------------------------------------------------


def _softmax_row(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    s = sum(e)
    return [v / s for v in e]


def ref_residue(logits, ages, *, start_age=0, k=None, eps=1e-3, topk_constant=False):
    """Per-sample residue loss, written from the paper's definition."""
    out = []
    for row, age in zip(logits.tolist(), ages.tolist(), strict=True):
        p = _softmax_row(row)
        y = int(age) - start_age
        c = len(p)
        if k is None:
            top = {j for j in range(c) if p[j] >= p[y]}
        else:
            # the k most probable; among equal probabilities the lower index first
            top = set(sorted(range(c), key=lambda j: (-p[j], j))[:k])
        total = 0.0
        for j in range(c):
            if j in top:
                if topk_constant and eps > 0:
                    total += -eps * math.log(eps)
                continue
            q = p[j] + eps
            total += -q * math.log(q) if q > 0 else 0.0
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def ref_mean(logits, ages, start_age=0):
    out = []
    for row, age in zip(logits.tolist(), ages.tolist(), strict=True):
        p = _softmax_row(row)
        m = sum((start_age + j) * pj for j, pj in enumerate(p))
        out.append(0.5 * (m - age) ** 2)
    return torch.tensor(out, dtype=torch.float64)


def ref_variance(logits, start_age=0):
    out = []
    for row in logits.tolist():
        p = _softmax_row(row)
        m = sum((start_age + j) * pj for j, pj in enumerate(p))
        out.append(sum(pj * (start_age + j - m) ** 2 for j, pj in enumerate(p)))
    return torch.tensor(out, dtype=torch.float64)


def official_residue(logits, ages, eps=1e-3):
    """The official code's formula (q = p*[p < p_y], summed over all classes), vectorised."""
    p = torch.softmax(logits, dim=1)
    n, c = p.shape
    pos = torch.zeros(n, c, dtype=p.dtype)
    for i in range(n):  # the official one-hot
        pos[i, int(ages[i])] = 1
    prob_gt = (pos * p).sum(1, keepdim=True).expand(n, c)
    q = (p < prob_gt).to(p.dtype) * p
    return (-(q + eps) * torch.log(q + eps)).sum(1)


def _apply(reduction, per_sample):
    return {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]


@pytest.fixture
def batch():
    """Random float64 logits with exact ties and targets at both ends of the range."""
    g = torch.Generator().manual_seed(0)
    n, c = 12, 9
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    logits[3] = torch.tensor([1.0, 1.0, 0.0, 1.0, -1.0, 1.0, 0.5, 0.5, 2.0])  # ties with y
    logits[4] = logits[3]
    logits[5] = 0.0  # all equal
    logits[6, :] = torch.tensor([3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # tie at top
    ages = torch.randint(0, c, (n,), generator=g)
    ages[0], ages[1] = 0, c - 1  # both ends
    ages[3], ages[4], ages[5], ages[6] = 1, 4, 2, 8
    return logits, ages


# --------------------------------------------------------------------------------------------
# known values on hand-made tensors, every reduction
# --------------------------------------------------------------------------------------------

HALF_QUARTERS = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]], dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mean_loss_known_values(reduction):
    # means: 0.75 and 1.25; targets 0 and 2 -> 0.5*0.75^2, 0.5*0.75^2
    per = torch.tensor([0.28125, 0.28125], dtype=torch.float64)
    got = mean_loss(HALF_QUARTERS, torch.tensor([0, 2]), reduction=reduction)
    torch.testing.assert_close(got, _apply(reduction, per))


def test_mean_loss_start_age_shifts_ages():
    # ages 10, 11, 12: mean 10.75, target 12 -> 0.5 * 1.25^2
    got = mean_loss(HALF_QUARTERS[:1], torch.tensor([12]), start_age=10)
    assert float(got) == pytest.approx(0.78125)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_variance_loss_known_values(reduction):
    # (0.5, .25, .25) on ages 0,1,2: mean .75, E[a^2] = .25 + 1 = 1.25 -> var 1.25 - .5625
    per = torch.tensor([0.6875, 0.6875], dtype=torch.float64)
    got = variance_loss(HALF_QUARTERS, reduction=reduction)
    torch.testing.assert_close(got, _apply(reduction, per))
    torch.testing.assert_close(variance_loss(HALF_QUARTERS, start_age=30, reduction=reduction), got)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_residue_loss_known_values_adaptive(reduction):
    # row 0, y=0: top-K {0}; out: two 0.25 -> 0.5 log 4. row 1, y=1: p_y=.25 tied with class 0,
    # top-K {0, 1, 2}: residue 0.
    per = torch.tensor([0.5 * math.log(4), 0.0], dtype=torch.float64)
    got = residue_loss(HALF_QUARTERS, torch.tensor([0, 1]), eps=0.0, reduction=reduction)
    torch.testing.assert_close(got, _apply(reduction, per))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_residue_loss_known_values_eps(reduction):
    eps = 1e-3
    # row 0 out-of-top-K: classes 1 and 2 (p = .25); row 1, y=2: top-K {2}, out: classes 0, 1
    h = -(0.25 + eps) * math.log(0.25 + eps)
    per = torch.tensor([2 * h, 2 * h], dtype=torch.float64)
    got = residue_loss(HALF_QUARTERS, torch.tensor([0, 2]), eps=eps, reduction=reduction)
    torch.testing.assert_close(got, _apply(reduction, per))
    const = -eps * math.log(eps)  # one top-K class each
    got_c = residue_loss(
        HALF_QUARTERS, torch.tensor([0, 2]), eps=eps, topk_constant=True, reduction=reduction
    )
    torch.testing.assert_close(got_c, _apply(reduction, per + const))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_residue_loss_known_values_fixed_k(reduction):
    # k=2. row 0: top {0, then 1 (tie 1/2 -> lower index)}: out {2}. row 1: top {2, 0}: out {1}
    h = -0.25 * math.log(0.25)
    per = torch.tensor([h, h], dtype=torch.float64)
    got = residue_loss(HALF_QUARTERS, torch.tensor([2, 2]), k=2, eps=0.0, reduction=reduction)
    torch.testing.assert_close(got, _apply(reduction, per))


def test_residue_fixed_k_extremes():
    z = torch.randn(5, 7, dtype=torch.float64)
    ages = torch.tensor([0, 6, 3, 2, 1])
    # k = C: nothing outside top-K
    assert torch.equal(residue_loss(z, ages, k=7, reduction="none"), torch.zeros(5, dtype=z.dtype))
    # k = 1 with the true class as the unique arg-max is the adaptive loss
    z = torch.zeros(5, 7, dtype=torch.float64)
    z[torch.arange(5), ages] = 2.0
    torch.testing.assert_close(residue_loss(z, ages, k=1), residue_loss(z, ages))


def test_topk_size_known_values_and_ties():
    z = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    assert topk_size(z, torch.tensor([0, 2, 1, 1])).tolist() == [1, 3, 3, 2]
    assert topk_size(z, torch.tensor([10, 12, 11, 11]), start_age=10).tolist() == [1, 3, 3, 2]
    assert topk_size(z, torch.tensor([0, 2, 1, 1])).dtype == torch.int64


def test_gaussian_label_distribution_and_kl_known_values():
    q = gaussian_label_distribution(torch.tensor([1.0]), 1.0, 3)
    w = [math.exp(-0.5), 1.0, math.exp(-0.5)]
    s = sum(w)
    torch.testing.assert_close(q[0], torch.tensor([v / s for v in w]))
    # KL to uniform = log 3 - H(q)
    h = -sum(v / s * math.log(v / s) for v in w)
    for reduction in ("mean", "sum", "none"):
        got = label_distribution_kl(
            torch.zeros(2, 3, dtype=torch.float64), torch.tensor([1, 1]), 1.0, reduction=reduction
        )
        per = torch.full((2,), math.log(3) - h, dtype=torch.float64)
        torch.testing.assert_close(got, _apply(reduction, per))
    # a tiny sigma is a one-hot, without NaN
    q = gaussian_label_distribution(torch.tensor([2]), 1e-6, 4)
    assert q.tolist() == [[0.0, 0.0, 1.0, 0.0]]


# --------------------------------------------------------------------------------------------
# vectorised vs per-sample loop reference (within 1e-6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 1, 2, 3, 5, 9])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize("topk_constant", [False, True])
def test_residue_matches_loop_reference(batch, k, eps, topk_constant):
    logits, ages = batch
    got = residue_loss(logits, ages, k=k, eps=eps, topk_constant=topk_constant, reduction="none")
    want = ref_residue(logits, ages, k=k, eps=eps, topk_constant=topk_constant)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)  # float64: exact up to rounding


def test_residue_matches_loop_reference_float32_and_start_age(batch):
    logits, ages = batch
    got = residue_loss(logits.float(), ages + 20, start_age=20, reduction="none")
    assert got.dtype == torch.float32
    want = ref_residue(logits, ages + 20, start_age=20)
    # float32: residue terms are sums of C = 5..101 entropies of size <= 1/e each, each carrying
    # float32's ~6e-8 relative error, so 1e-6 absolute covers ~16 such roundings on any CPU
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_residue_with_constant_equals_official_code(batch):
    logits, ages = batch
    got = residue_loss(logits, ages, topk_constant=True, reduction="none")
    torch.testing.assert_close(got, official_residue(logits, ages), atol=1e-12, rtol=0)


def test_residue_official_constant_is_per_topk_class(batch):
    logits, ages = batch
    eps = 1e-3
    diff = residue_loss(logits, ages, topk_constant=True, reduction="none") - residue_loss(
        logits, ages, reduction="none"
    )
    want = topk_size(logits, ages).double() * (-eps * math.log(eps))
    torch.testing.assert_close(diff, want)


def test_mean_and_variance_match_loop_reference(batch):
    logits, ages = batch
    torch.testing.assert_close(
        mean_loss(logits, ages + 3, start_age=3, reduction="none"), ref_mean(logits, ages + 3, 3)
    )
    torch.testing.assert_close(variance_loss(logits, reduction="none"), ref_variance(logits))


def test_topk_size_matches_reference(batch):
    logits, ages = batch
    want = []
    for row, a in zip(logits.tolist(), ages.tolist(), strict=True):
        p = _softmax_row(row)
        want.append(sum(pj >= p[a] for pj in p))
    assert topk_size(logits, ages).tolist() == want


def test_fixed_k_tie_break_is_stable_lower_index_first():
    # four equal logits; k=2 keeps classes 0 and 1, so classes 2 and 3 carry the gradient
    z = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    residue_loss(z, torch.tensor([0]), k=2, eps=0.0).backward()
    g = z.grad[0]
    assert g[2] == g[3] and g[0] == g[1] and g[2] != g[0]


def test_residue_eps_zero_with_underflow_is_finite():
    # p underflows to exactly 0 in float32 for logits -1e4: 0 log 0 = 0, no NaN, finite grads
    z = torch.tensor([[0.0, -1e4, 5.0, -2.0], [5.0, -1e4, 0.0, -1e4]], requires_grad=True)
    ages = torch.tensor([0, 2])
    val = residue_loss(z, ages, eps=0.0, reduction="none")
    val.sum().backward()
    assert torch.isfinite(val).all() and torch.isfinite(z.grad).all()
    # row 0: out of top-K are class 1 (p = 0) and class 3; row 1: classes 1 and 3, both p = 0
    p3 = torch.softmax(z.detach()[0].double(), dim=0)[3]
    assert val.tolist() == pytest.approx([float(-p3 * torch.log(p3)), 0.0], abs=1e-6)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


def _gradcheck(fn, z):
    z = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-5)


def test_gradcheck_mean_and_variance():
    z = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ages = torch.tensor([0, 5, 2, 3])
    _gradcheck(lambda x: mean_loss(x, ages, start_age=0, reduction="none"), z)
    _gradcheck(lambda x: variance_loss(x, reduction="sum"), z)


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_gradcheck_residue(k, eps):
    # distinct, well-separated logits: the top-K set is constant under the finite differences
    g = torch.Generator().manual_seed(2)
    z = torch.randperm(24, generator=g).double().reshape(4, 6) * 0.3
    ages = torch.tensor([0, 5, 2, 3])
    _gradcheck(lambda x: residue_loss(x, ages, k=k, eps=eps, reduction="none"), z)


def test_gradcheck_label_distribution_kl_with_per_sample_sigma():
    z = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64)
    _gradcheck(lambda x: label_distribution_kl(x, torch.tensor([0, 2, 4]), sigma), z)


def test_residue_gradient_only_flows_through_out_of_topk_terms():
    # a single sample whose true class is the arg-max: K = 1, so the residue is the entropy of
    # the remaining classes and its gradient matches that of the explicit masked sum
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    residue_loss(z, torch.tensor([0]), eps=0.0).backward()
    z2 = z.detach().clone().requires_grad_(True)
    p = torch.softmax(z2, dim=1)[0]
    (-(p[1:] * torch.log(p[1:])).sum()).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_dtype_and_device_follow_input():
    z = torch.randn(3, 4, dtype=torch.float64)
    ages = [0, 1, 3]  # a list is accepted
    for fn in (
        lambda: mean_loss(z, ages),
        lambda: variance_loss(z),
        lambda: residue_loss(z, ages),
        lambda: label_distribution_kl(z, ages),
    ):
        out = fn()
        assert out.dtype == torch.float64 and out.device == z.device and out.ndim == 0
    # integer-valued float ages are accepted and equal the integer ones
    torch.testing.assert_close(
        residue_loss(z, torch.tensor([0.0, 1.0, 3.0])), residue_loss(z, torch.tensor([0, 1, 3]))
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(batch):
    logits, ages = batch
    for k in (None, 3):
        cpu = residue_loss(logits, ages, k=k, reduction="none")
        gpu = residue_loss(logits.cuda(), ages.cuda(), k=k, reduction="none")
        torch.testing.assert_close(gpu.cpu(), cpu)


# --------------------------------------------------------------------------------------------
# error messages
# --------------------------------------------------------------------------------------------

Z = torch.zeros(2, 3)
Y = torch.tensor([0, 2])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mean_loss(torch.zeros(3), Y), r"shape \(N, C\).*got shape \(3,\)"),
        (lambda: mean_loss(torch.zeros(0, 3), Y[:0]), r"empty batch"),
        (lambda: mean_loss(torch.zeros(2, 1), Y), r"at least 2 age classes"),
        (lambda: mean_loss(torch.zeros(2, 3, dtype=torch.long), Y), r"floating-point"),
        (lambda: mean_loss([[0.0, 1.0]], Y), r"must be a torch.Tensor"),
        (lambda: mean_loss(Z, torch.tensor([0, 1, 2])), r"\(N,\) = \(2,\).*got shape \(3,\)"),
        (lambda: mean_loss(Z, torch.tensor([[0], [1]])), r"got shape \(2, 1\)"),
        (lambda: mean_loss(Z, torch.tensor([0, 3])), r"\[start_age, end_age\] = \[0, 2\]"),
        (lambda: mean_loss(Z, torch.tensor([0, 3]), start_age=1), r"\[1, 3\].*\[0, 3\]"),
        (lambda: residue_loss(Z, torch.tensor([-1, 0])), r"\[0, 2\]"),
        (lambda: residue_loss(Z, torch.tensor([0.5, 1.0])), r"integer-valued.*\[0.5\]"),
        (lambda: residue_loss(Z, torch.tensor([True, False])), r"integer or real"),
        (
            lambda: mean_loss(torch.tensor([[0.0, float("nan"), 1.0], [0, 0, 0]]), Y),
            r"non-finite.*1 of 2 rows",
        ),
        (
            lambda: residue_loss(torch.tensor([[0.0, float("inf"), 1.0], [0, 0, 0]]), Y),
            r"non-finite",
        ),
        (lambda: variance_loss(torch.tensor([[0.0, float("nan"), 1.0]])), r"non-finite"),
        (lambda: variance_loss(torch.zeros(4)), r"shape \(N, C\)"),
        (
            lambda: residue_loss(Z, Y, k=0),
            r"k must be None \(adaptive\) or an integer in \[1, C\] = \[1, 3\]",
        ),
        (lambda: residue_loss(Z, Y, k=4), r"\[1, 3\].*got 4"),
        (lambda: residue_loss(Z, Y, k=2.0), r"got 2.0"),
        (lambda: residue_loss(Z, Y, eps=-1e-3), r"eps must be a finite number >= 0"),
        (lambda: residue_loss(Z, Y, eps=float("nan")), r"eps must be a finite number >= 0"),
        (lambda: mean_loss(Z, Y, reduction="avg"), r"reduction must be one of .*'avg'"),
        (lambda: variance_loss(Z, reduction="avg"), r"reduction must be one of"),
        (lambda: residue_loss(Z, Y, reduction=None), r"reduction must be one of"),
        (lambda: topk_size(Z, torch.tensor([0, 5])), r"\[0, 2\]"),
        (lambda: label_distribution_kl(Z, Y, 0.0), r"sigma must be finite and > 0"),
        (
            lambda: label_distribution_kl(Z, Y, torch.ones(3)),
            r"sigma must be a scalar or have shape \(N,\) = \(2,\)",
        ),
        (lambda: label_distribution_kl(Z, Y, reduction="x"), r"reduction must be one of"),
        (lambda: gaussian_label_distribution(Y, -1.0, 3), r"sigma must be > 0"),
    ],
)
def test_functional_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("k", [None, 6])
def test_residue_matches_loop_reference_at_paper_size(k):
    # CLAP2016 size: C = 101 ages 0..100, a batch of 64 with both ends of the range present
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(64, 101, generator=g, dtype=torch.float64) * 3
    logits[10:14, 40:45] = 2.0  # exact ties in four rows
    ages = torch.randint(0, 101, (64,), generator=g)
    ages[:3] = torch.tensor([0, 100, 42])
    ages[10:14] = 42  # the true class sits in the tie
    got = residue_loss(logits, ages, k=k, reduction="none")
    torch.testing.assert_close(got, ref_residue(logits, ages, k=k), atol=1e-12, rtol=0)  # float64
