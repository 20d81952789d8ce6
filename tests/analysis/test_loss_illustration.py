"""Tests of ageest.analysis.loss_illustration: the example distributions, the numbers behind notebook 01 against
hand-derived references, the static figures, and the loss explorer driven without a browser."""

from __future__ import annotations

import json
import math
import re

import nbformat
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ageest import losses, paths, plots
from ageest.analysis import loss_illustration
from ageest.pipeline import artefacts
from ageest.plots import loss_explorer

TRUE_AGE = 30
#: the settings the tests share (the notebook's noise; the paper's weights by default)
NOISY = loss_illustration.Illustration(noise=0.3, seed=0, fixed_k=4)


@pytest.fixture(scope="module")
def examples():
    return loss_illustration.example_distributions(TRUE_AGE, NOISY)


@pytest.fixture(scope="module")
def response(examples):
    return loss_illustration.loss_response_table(examples)


# --- example distributions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected_mode"), [("unimodal", 31), ("shifted", 38), ("bimodal", 24)]
)
def test_example_logits_modes(shape, expected_mode):
    z = loss_illustration.example_logits(TRUE_AGE, shape, 2.0)
    assert z.shape == (70,) and z.dtype == torch.float64
    assert int(z.argmax()) == expected_mode


def test_shifted_mode_stays_inside_the_age_range():
    z = loss_illustration.example_logits(65, "shifted", 2.0, loss_illustration.Illustration(num_classes=70))
    assert int(z.argmax()) == 65 - 8


def test_sharpness_narrows_the_distribution():
    a = torch.arange(70, dtype=torch.float64)

    def std(s):
        p = torch.softmax(loss_illustration.example_logits(TRUE_AGE, "unimodal", s), 0)
        m = p @ a
        return float((p @ (a - m) ** 2).sqrt())

    assert std(0.5) > std(1.0) > std(4.0)
    assert std(1.0) == pytest.approx(4.0, rel=0.02)  # base_sigma at sharpness 1


def test_noise_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    setup = loss_illustration.Illustration(noise=0.5, seed=3)
    z1 = loss_illustration.example_logits(TRUE_AGE, setup=setup)
    z2 = loss_illustration.example_logits(TRUE_AGE, setup=setup)
    z3 = loss_illustration.example_logits(TRUE_AGE, setup=setup.replace(seed=4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"true_age": 70}, "outside the age range 0..69"),
        ({"true_age": 30, "shape": "trimodal"}, "shape must be one of"),
        ({"true_age": 30, "sharpness": 0.0}, "sharpness must be finite and > 0"),
    ],
)
def test_example_logits_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss_illustration.example_logits(**kwargs)


def test_illustration_settings_are_checked_once():
    with pytest.raises(ValueError, match="noise must be finite and >= 0"):
        loss_illustration.Illustration(noise=-1.0)
    with pytest.raises(ValueError, match="base_sigma must be finite and > 0"):
        loss_illustration.Illustration(base_sigma=0.0)


# --- the numbers --------------------------------------------------------------------------------


def test_topk_mask_matches_the_losses_definition(examples):
    for z in examples.logits.values():
        mask = loss_illustration.topk_mask(z, TRUE_AGE)
        p = torch.softmax(z, 0)
        assert mask[TRUE_AGE]
        assert torch.equal(mask, p >= p[TRUE_AGE])
        assert int(mask.sum()) == int(losses.topk_size(z[None], [TRUE_AGE])[0])
        fixed = loss_illustration.topk_mask(z, TRUE_AGE, k=5)
        assert int(fixed.sum()) == 5 and set(fixed.nonzero().ravel().tolist()) == set(
            torch.argsort(p, descending=True)[:5].tolist())
    with pytest.raises(ValueError, match="k must be None"):
        loss_illustration.topk_mask(z, TRUE_AGE, k=0)


def test_terms_table_against_hand_computation(examples):
    t = loss_illustration.terms_table(examples.replace(setup=NOISY.replace(eps=1e-3)))
    assert list(t.example) == examples.names
    assert np.isfinite(t.drop(columns="example").to_numpy(dtype=float)).all()
    a = np.arange(70)
    for (_, row), z in zip(t.iterrows(), examples.logits.values(), strict=True):
        p = torch.softmax(z, 0).numpy()
        out = p < p[TRUE_AGE]
        assert row.k == int((~out).sum())
        assert row.p_true == pytest.approx(p[TRUE_AGE])
        assert row.expected_age == pytest.approx(p @ a)
        assert row.ce == pytest.approx(-math.log(p[TRUE_AGE]))
        assert row["mean"] == pytest.approx(0.5 * (p @ a - TRUE_AGE) ** 2)
        assert row.residue_mass == pytest.approx(p[out].sum())
        assert row.topk_mass + row.residue_mass == pytest.approx(1.0)
        assert row.residue_entropy == pytest.approx(-(p[out] * np.log(p[out])).sum())
        q = p[out] + 1e-3
        assert row.residue == pytest.approx(-(q * np.log(q)).sum(), rel=1e-6)


def test_loss_response_totals_decompose(response, examples):
    assert len(response) == 5 * len(examples.names)
    assert set(response.loss) == {"CE", "mean-variance", "AMR", "mean-residue K=4", "DLDL"}
    assert np.isfinite(response.total).all()
    for _, r in response.iterrows():
        if r.loss == "CE":
            assert r.total == pytest.approx(r.ce)
        elif r.loss == "mean-variance":
            assert r.total == pytest.approx(r.ce + r.weighted_mean + r.weighted_variance)
            assert r.weighted_variance == pytest.approx(0.05 * r.variance)
        elif r.loss == "DLDL":
            assert r.total == pytest.approx(r.kl) and math.isnan(r.ce)
        else:
            assert r.total == pytest.approx(r.ce + r.weighted_mean + r.weighted_residue)
            assert r.weighted_mean == pytest.approx(0.2 * r["mean"])


def test_amr_equals_fixed_k_when_the_adaptive_k_matches(examples):
    terms = loss_illustration.terms_table(examples)
    name, k = next((r.example, int(r.k)) for r in terms.itertuples())
    table = loss_illustration.loss_response_table(loss_illustration.Examples(
        {name: examples.logits[name]}, TRUE_AGE, NOISY.replace(fixed_k=k)))
    totals = dict(zip(table.loss, table.total, strict=True))
    assert totals["AMR"] == pytest.approx(totals[f"mean-residue K={k}"])


def test_gradients_match_closed_forms(examples):
    a = np.arange(70, dtype=float)
    for z in examples.logits.values():
        g = loss_illustration.term_gradients(z, TRUE_AGE, NOISY)
        p = torch.softmax(z, 0).numpy()
        m = p @ a
        onehot = np.eye(70)[TRUE_AGE]
        np.testing.assert_allclose(g["ce"], p - onehot, atol=1e-12)
        # d/dz_j of 0.5 (m - y)^2 = (m - y) p_j (a_j - m)
        np.testing.assert_allclose(g["mean"], (m - TRUE_AGE) * p * (a - m), atol=1e-10)
        # d/dz_j of sum_i p_i (a_i - m)^2 = p_j ((a_j - m)^2 - v)
        v = p @ (a - m) ** 2
        np.testing.assert_allclose(g["variance"], p * ((a - m) ** 2 - v), atol=1e-10)
        np.testing.assert_allclose(
            g["total"], g["ce"] + 0.2 * g["mean"] + 0.05 * g["residue"], atol=1e-12)
        for term, grad in g.items():
            assert np.isfinite(grad).all(), term
            assert abs(grad.sum()) < 1e-9, term  # softmax is shift-invariant


def test_gradient_table(examples):
    t = loss_illustration.gradient_table(examples)
    assert len(t) == len(examples.names) * 6
    assert np.isfinite(t[["l2_norm", "max_abs", "grad_true_age"]].to_numpy()).all()
    assert (t.loc[t.term == "ce", "grad_true_age"] < 0).all()


def test_k_sweep_shows_k_falling_as_a_noisy_prediction_sharpens():
    grid = loss_illustration.sharpness_grid(7)
    clean = loss_illustration.k_sweep(TRUE_AGE, grid, NOISY.replace(noise=0.0),
                                      shapes=["unimodal", "shifted"])
    # a clean Gaussian: K counts the ages at least as close to the mode as the true age
    assert (clean.loc[clean["shape"] == "unimodal", "k"] == 3).all()
    assert (clean.loc[clean["shape"] == "shifted", "k"] == 17).all()
    noisy = loss_illustration.k_sweep(TRUE_AGE, grid, NOISY, shapes=["unimodal"])
    assert noisy.k.iloc[0] > noisy.k.iloc[-1] == 3
    assert np.isfinite(noisy.drop(columns="shape").to_numpy(dtype=float)).all()
    with pytest.raises(ValueError, match="points must be an integer >= 2"):
        loss_illustration.sharpness_grid(1)


# --- figures ------------------------------------------------------------------------------------


def test_figures_build_and_save(tmp_path, examples, response):
    sweep = loss_illustration.k_sweep(TRUE_AGE, loss_illustration.sharpness_grid(5), NOISY)
    figures = {
        "distributions": plots.distributions_figure(examples),
        "distributions_fixed": plots.distributions_figure(examples, k=4),
        "response": plots.loss_response_figure(response),
        "gradients": plots.gradients_figure(examples),
        "k_sweep": plots.k_sweep_figure(sweep),
    }
    n_axes = {"distributions": 4, "distributions_fixed": 4, "response": 2, "gradients": 16,
              "k_sweep": 3}
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        assert sum(ax.get_visible() for ax in fig.axes) == n_axes[name], name
        declared = "loss_illustration_" + name.removesuffix("_fixed")
        out = artefacts.save_figure(fig, tmp_path, declared, dpi=40)
        assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out["pdf"].stat().st_size > 1000


def test_summary_metrics_are_finite_json(examples, response):
    terms = loss_illustration.terms_table(examples)
    grads = loss_illustration.gradient_table(examples)
    sweep = loss_illustration.k_sweep(TRUE_AGE, loss_illustration.sharpness_grid(4), NOISY)
    metrics = loss_illustration.summary_metrics(terms, response, grads, sweep)
    text = json.dumps(metrics, allow_nan=False)  # raises on NaN / inf
    assert set(metrics["examples"]) == set(examples.names)
    assert set(metrics["k_sweep"]) == set(loss_illustration.SHAPES)
    assert "AMR" in text


# --- the explorer, without a browser --------------------------------------------------------------


def test_explorer_updates_when_a_control_moves():
    ex = loss_explorer.loss_explorer(true_age=30, shape="bimodal", setup=NOISY)
    first = dict(ex.values)
    html_before, png_before = ex.summary.value, ex.image.value
    assert png_before[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{first['total']:.4f}" in html_before
    assert all(math.isfinite(v) for v in first["terms"].values())

    ex.controls["true_age"].value = 36
    assert ex.values["true_age"] == 36
    assert ex.values["total"] != pytest.approx(first["total"])
    assert ex.summary.value != html_before and ex.image.value != png_before

    # λ2 rescales the residue's share and nothing else
    terms = dict(ex.values["terms"])
    total = ex.values["total"]
    ex.controls["lambda_residue"].value = 0.5
    assert ex.values["terms"] == pytest.approx(terms)
    assert ex.values["total"] == pytest.approx(total + 0.45 * terms["residue"])


def test_explorer_fixed_k_and_shape_controls():
    ex = loss_explorer.loss_explorer(true_age=30, shape="unimodal")
    assert ex.controls["k"].disabled and ex.values["k_mode"] == "adaptive"
    ex.controls["k_mode"].value = "fixed"
    ex.controls["k"].value = 7
    assert not ex.controls["k"].disabled
    assert ex.values["k"] == 7 and int(ex.values["in_topk"].sum()) == 7
    assert "mean-residue (K=7)" in ex.summary.value
    residue_fixed = ex.values["terms"]["residue"]
    ex.controls["k_mode"].value = "adaptive"
    assert ex.values["terms"]["residue"] != pytest.approx(residue_fixed)
    ex.controls["shape"].value = "shifted"
    assert abs(ex.values["expected_age"] - 38) < 1
    sharp_before = ex.values["p_true"]
    ex.controls["sharpness"].value = 3.0
    assert ex.values["p_true"] != pytest.approx(sharp_before)
    with pytest.raises(ValueError, match="shape must be one of"):
        loss_explorer.loss_explorer(shape="flat")


# --- the notebook and its parameter files -------------------------------------------------------

NOTEBOOK = paths.NOTEBOOKS / "01_loss_illustration.ipynb"


def test_notebook_is_committed_clean_on_the_ageest_kernel():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "ageest"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "metrics" in code[-1].source and "01_loss_illustration.json" in code[-1].source
    # thin cells: no class definitions, no sys.path edits, no chdir
    assert not any(re.search(r"^\s*class\s+\w+|sys\.path|os\.chdir", c.source, re.M)
                   for c in code)


def test_params_files_declare_only_notebook_parameters():
    papermill = pytest.importorskip("papermill")
    import yaml

    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert {"profile", "results_dir"} <= set(declared)
    for profile in ("smoke", "default", "paper"):
        path = paths.PARAMS / profile / "01_loss_illustration.yaml"
        values = yaml.safe_load(path.read_text()) or {}
        assert set(values) <= set(declared), (path, set(values) - set(declared))


def test_examples_carry_their_true_age_and_setup(examples):
    """The tables and figures read each example against the true age and setup it was made
    with: they take no second true age (there is none to get wrong), and a true age outside
    the logits' classes is refused when the examples are built."""
    assert examples.true_age == TRUE_AGE and examples.setup is NOISY
    assert examples.stacked.shape == (4, 70) and examples.stacked.dtype == torch.float64
    with pytest.raises(TypeError):
        loss_illustration.terms_table(examples, TRUE_AGE)  # the old (examples, true_age) form
    with pytest.raises(ValueError, match="true_age=7 is outside the age range 0..4"):
        loss_illustration.Examples({"x": torch.zeros(5)}, 7)
    with pytest.raises(ValueError, match="examples is empty"):
        loss_illustration.Examples({}, 3)
    older = examples.replace(true_age=40)
    assert loss_illustration.terms_table(older).p_true.tolist() == pytest.approx(
        torch.softmax(examples.stacked, 1)[:, 40].tolist())
