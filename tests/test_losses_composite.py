"""Tests of the composite losses and the registry in ageest.losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ageest.losses import (
    LOSSES,
    CrossEntropyLoss,
    DLDLLoss,
    DLDLv2Loss,
    L1ExpectationLoss,
    MeanResidueLoss,
    MeanVarianceLoss,
    get_loss,
    label_distribution_kl,
    list_losses,
    loss_parameters,
    mean_loss,
    residue_loss,
    topk_size,
    variance_loss,
)

torch.set_num_threads(1)

EXPECTED_COMPONENTS = {
    "ce": {"total", "ce", "k_mean"},
    "mean_variance": {"total", "ce", "mean", "variance", "k_mean"},
    "amr": {"total", "ce", "mean", "residue", "k_mean"},
    "mean_residue": {"total", "ce", "mean", "residue", "k_mean"},
    "dldl": {"total", "ce", "kl", "k_mean"},
    "dldl_v2": {"total", "ce", "kl", "l1", "k_mean"},
    "l1": {"total", "ce", "l1", "k_mean"},
}


def _kwargs(name: str) -> dict:
    return {"k": 4} if name == "mean_residue" else {}


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=g, dtype=torch.float64) * 2
    ages = torch.tensor([10, 20, 15, 13, 17, 10])  # start_age=10, end_age=20: both ends
    std = torch.tensor([0.2, 3.0, float("nan"), 5.0, 1.5, 0.0], dtype=torch.float64)
    return logits, ages, std


def test_registry_names():
    assert list_losses() == ["amr", "mean_residue", "mean_variance", "ce", "dldl", "dldl_v2",
                             "l1"]  # the table order: the paper's loss first
    assert set(LOSSES) == set(EXPECTED_COMPONENTS)


@pytest.mark.parametrize("name", list_losses())
def test_registry_metadata_matches_the_loss(name, data):
    """The entry's components are what the loss logs besides total/ce/k_mean, and the total is
    exactly their sum weighted by the entry's weights; its weights are constructor arguments."""
    spec = LOSSES[name]
    logits, ages, _ = data
    loss = get_loss(name, start_age=10, end_age=20, **_kwargs(name))
    float(loss(logits, ages))
    comps = loss.last_components
    assert set(comps) == {"total", "ce", "k_mean", *spec.components}
    assert set(spec.weights) <= set(spec.parameters())
    weight = {c: 1.0 for c in spec.components}
    for w in spec.weights:  # lambda_<term> weighs the term <term>
        assert w.removeprefix("lambda_") in spec.components, w
        weight[w.removeprefix("lambda_")] = getattr(loss, w)
    assert comps["total"] == pytest.approx(sum(weight[c] * comps[c] for c in spec.components),
                                           rel=1e-12)
    assert spec.has_topk == ("k" in spec.parameters())
    assert spec.label


@pytest.mark.parametrize("name", list_losses())
def test_every_registered_loss_forward_backward(name, data):
    logits, ages, std = data
    loss = get_loss(name, start_age=10, end_age=20, **_kwargs(name))
    for s in (None, std):
        z = logits.clone().requires_grad_(True)
        total = loss(z, ages, std=s)
        assert total.ndim == 0 and total.dtype == torch.float64 and torch.isfinite(total)
        total.backward()
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        comps = loss.last_components
        assert set(comps) == EXPECTED_COMPONENTS[name]
        assert all(isinstance(v, float) and math.isfinite(v) for v in comps.values())
        assert comps["total"] == pytest.approx(float(total.detach()))
        assert comps["ce"] == pytest.approx(float(F.cross_entropy(logits, ages - 10)))
        assert comps["k_mean"] == pytest.approx(float(topk_size(logits, ages - 10).double().mean()))


@pytest.mark.parametrize("name", list_losses())
def test_every_registered_loss_float32_and_wrong_class_count(name):
    loss = get_loss(name, start_age=0, end_age=69, **_kwargs(name))
    z = torch.randn(4, 70, requires_grad=True)
    out = loss(z, torch.tensor([0, 69, 30, 5]))
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match=r"shape \(4, 101\) have 101 classes.*expects 70"):
        loss(torch.randn(4, 101), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("name", list_losses())
def test_every_registered_loss_gradcheck(name, data):
    logits, ages, std = data
    loss = get_loss(name, start_age=10, end_age=20, **_kwargs(name))
    # well-separated distinct logits so the top-K sets are fixed under finite differences
    z = (torch.randperm(66, generator=torch.Generator().manual_seed(5)).double() * 0.2).reshape(
        6, 11
    )
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, ages, std=std), (z,), eps=1e-6, atol=1e-5)


def test_composites_equal_their_parts(data):
    logits, ages, _ = data
    y = ages - 10
    ce = F.cross_entropy(logits, y)
    lm = mean_loss(logits, ages, start_age=10)
    lv = variance_loss(logits, start_age=10)
    mv = MeanVarianceLoss(0.3, 0.07, start_age=10, end_age=20)
    torch.testing.assert_close(mv(logits, ages), ce + 0.3 * lm + 0.07 * lv)
    assert mv.last_components["mean"] == pytest.approx(float(lm))
    assert mv.last_components["variance"] == pytest.approx(float(lv))
    for k, eps, const in ((None, 1e-3, False), (3, 0.0, False), (None, 1e-3, True)):
        mr = MeanResidueLoss(0.2, 0.05, k=k, eps=eps, topk_constant=const, start_age=10, end_age=20)
        lr = residue_loss(logits, ages, start_age=10, k=k, eps=eps, topk_constant=const)
        torch.testing.assert_close(mr(logits, ages), ce + 0.2 * lm + 0.05 * lr)
        assert mr.last_components["residue"] == pytest.approx(float(lr))
    torch.testing.assert_close(CrossEntropyLoss(start_age=10, end_age=20)(logits, ages), ce)
    m = torch.softmax(logits, 1) @ torch.arange(10, 21, dtype=torch.float64)
    l1 = (m - ages).abs().mean()
    torch.testing.assert_close(L1ExpectationLoss(start_age=10, end_age=20)(logits, ages), l1)
    kl = label_distribution_kl(logits, ages, 2.0, start_age=10)
    torch.testing.assert_close(DLDLLoss(start_age=10, end_age=20)(logits, ages), kl)
    v2 = DLDLv2Loss(2.0, 0.5, start_age=10, end_age=20)
    torch.testing.assert_close(v2(logits, ages), kl + 0.5 * l1)
    assert v2.last_components["l1"] == pytest.approx(float(l1))


def test_composite_known_values():
    # two classes (ages 0, 1), equal logits, target 1: ce = log 2, m = .5, var = .25, K = 2
    z = torch.zeros(1, 2, dtype=torch.float64)
    mv = MeanVarianceLoss(start_age=0, end_age=1)
    assert float(mv(z, torch.tensor([1]))) == pytest.approx(math.log(2) + 0.2 * 0.125 + 0.05 * 0.25)
    assert mv.last_components["k_mean"] == 2.0
    mr = MeanResidueLoss(start_age=0, end_age=1, eps=0.0)
    # both classes tie with the target, so the residue is 0
    assert float(mr(z, torch.tensor([1]))) == pytest.approx(math.log(2) + 0.2 * 0.125)
    assert mr.last_components["residue"] == 0.0
    assert float(L1ExpectationLoss(start_age=0, end_age=1)(z, torch.tensor([1]))) == 0.5


def test_dldl_uses_per_sample_std_with_floor_and_fallback(data):
    logits, ages, std = data
    loss = DLDLLoss(sigma=2.0, min_sigma=1.0, start_age=10, end_age=20)
    got = loss(logits, ages, std=std)
    # 0.2 -> floor 1.0, NaN -> sigma 2.0, 0.0 -> floor 1.0
    sigma = torch.tensor([1.0, 3.0, 2.0, 5.0, 1.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(got, label_distribution_kl(logits, ages, sigma, start_age=10))
    assert not torch.allclose(got, loss(logits, ages))  # std changes the target
    v2 = DLDLv2Loss(sigma=2.0, start_age=10, end_age=20)
    kl_part = v2(logits, ages, std=std) - v2.lambda_l1 * v2.last_components["l1"]
    torch.testing.assert_close(kl_part, got)


def test_registry_builds_the_right_objects():
    amr = get_loss("amr", start_age=0, end_age=69)
    assert isinstance(amr, MeanResidueLoss) and amr.k is None and amr.num_classes == 70
    assert (amr.lambda_mean, amr.lambda_residue, amr.eps) == (0.2, 0.05, 1e-3)
    fixed = get_loss("mean_residue", k=6, start_age=0, end_age=100)
    assert fixed.k == 6
    mv = get_loss("mean_variance", lambda_variance=0.1)
    assert (mv.lambda_mean, mv.lambda_variance, mv.num_classes) == (0.2, 0.1, 101)
    assert isinstance(get_loss("dldl_v2", sigma=3.0), DLDLv2Loss)
    assert get_loss("amr", k=None).k is None
    assert "k" in loss_parameters("mean_residue") and "k" not in loss_parameters("ce")
    assert "lambda_mean" in repr(amr)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_loss("nope"), r"unknown loss 'nope'; valid names: amr, mean_residue, mean_variance, ce"),
        (lambda: loss_parameters("nope"), r"valid names: amr"),
        (
            lambda: get_loss("mean_residue"),
            r"'mean_residue' is the fixed-K loss and needs an integer k",
        ),
        (lambda: get_loss("amr", k=6), r"'amr' is the adaptive loss.*mean_residue"),
        (lambda: get_loss("ce", k=3), r"loss 'ce' does not take k; accepted: start_age, end_age"),
        (
            lambda: get_loss("amr", lambda_var=0.1),
            r"does not take lambda_var; accepted: .*lambda_residue",
        ),
        (lambda: MeanResidueLoss(k=0, end_age=9), r"k must be None .* \[1, 10\]"),
        (lambda: MeanResidueLoss(k=11, end_age=9), r"got 11"),
        (lambda: MeanResidueLoss(eps=-1.0), r"eps must be a finite number >= 0"),
        (
            lambda: CrossEntropyLoss(start_age=5, end_age=5),
            r"end_age must be greater than start_age",
        ),
        (lambda: CrossEntropyLoss(end_age=69.0), r"end_age must be an int"),
        (lambda: DLDLLoss(sigma=0.0), r"sigma must be finite and > 0"),
        (lambda: DLDLLoss(min_sigma=float("nan")), r"min_sigma must be finite and > 0"),
    ],
)
def test_construction_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", list_losses())
def test_forward_errors(name):
    loss = get_loss(name, start_age=0, end_age=4, **({"k": 2} if name == "mean_residue" else {}))
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"\[start_age, end_age\] = \[0, 4\].*\[0, 7\]"):
        loss(z, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"non-finite"):
        loss(torch.full((2, 5), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"ages must have shape \(N,\) = \(2,\)"):
        loss(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\)"):
        loss(torch.zeros(5), torch.tensor([0]))


@pytest.mark.parametrize("name", ["dldl", "dldl_v2"])
def test_std_errors(name):
    loss = get_loss(name, start_age=0, end_age=4)
    z, y = torch.zeros(2, 5), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"std must have shape \(N,\) = \(2,\).*got shape \(3,\)"):
        loss(z, y, std=torch.ones(3))
    with pytest.raises(ValueError, match=r"std must be >= 0"):
        loss(z, y, std=torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("k", [None, 1, 3, 11])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize("topk_constant", [False, True])
def test_mean_residue_closed_form_gradient_equals_autograd(data, k, eps, topk_constant):
    # MeanResidueLoss uses a hand-written gradient; compare it with autograd through the
    # functional losses (ties in the batch included)
    logits, ages, _ = data
    logits = logits.clone()
    logits[2] = logits[1]
    logits[3, :4] = 1.5  # ties inside a row
    loss = MeanResidueLoss(
        0.3, 0.07, k=k, eps=eps, topk_constant=topk_constant, start_age=10, end_age=20
    )
    z1 = logits.clone().requires_grad_(True)
    total = loss(z1, ages)
    (2.5 * total).backward()
    z2 = logits.clone().requires_grad_(True)
    ref = (
        F.cross_entropy(z2, ages - 10)
        + 0.3 * mean_loss(z2, ages, start_age=10)
        + 0.07 * residue_loss(z2, ages, start_age=10, k=k, eps=eps, topk_constant=topk_constant)
    )
    (2.5 * ref).backward()
    torch.testing.assert_close(total.detach(), ref.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, atol=1e-12, rtol=1e-10)


def test_mean_residue_no_grad_and_eval_paths(data):
    logits, ages, _ = data
    loss = get_loss("amr", start_age=10, end_age=20)
    with torch.no_grad():
        v = loss(logits, ages)
    assert not v.requires_grad and set(loss.last_components) == EXPECTED_COMPONENTS["amr"]
    # a logits tensor that needs no grad still gives the same value
    assert float(v) == pytest.approx(float(loss(logits.clone(), ages)))


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(name, dtype):
    loss = get_loss(name, start_age=0, end_age=9, **({"k": 3} if name == "mean_residue" else {}))
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)).to(dtype)
    z.requires_grad_(True)
    out = loss(z, torch.tensor([0, 9, 4, 4]))
    assert out.dtype == torch.float32
    out.backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()
    ref = get_loss(name, start_age=0, end_age=9, **({"k": 3} if name == "mean_residue" else {}))
    assert float(out.detach()) == pytest.approx(
        float(ref(z.detach().float(), torch.tensor([0, 9, 4, 4]))), rel=1e-6
    )
