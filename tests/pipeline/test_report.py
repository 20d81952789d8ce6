"""REPORT.md and the paper-numbers file: sourced values only, "not available" otherwise,
synthetic-data marking at the top and in every table caption, paper order."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ageest.files import write_json  # noqa: E402
from ageest.pipeline import report  # noqa: E402
from ageest.pipeline.artefacts import save_figure, save_table  # noqa: E402

CITATION = ('as quoted by B. Kwon, "Data Augmentation Using a Convolutional Autoencoder for Age '
            'Estimation from Facial Images", Journal of Multimedia Information System 12(3):95 '
            '(2025), Table 3')


def test_paper_numbers_are_exactly_the_sourced_ones():
    table = report.paper_results()
    sourced = table[table.value.notna()]
    assert sorted(zip(sourced.method, sourced.value, strict=True)) == [
        ("amr", 3.61), ("dex", 4.63), ("mean_variance", 4.1)]
    assert all(src.startswith(CITATION) for src in sourced.source)
    assert set(sourced.dataset) == {"fgnet"} and set(sourced.metric) == {"mae"}
    assert set(sourced.protocol) == {"lopo"}
    assert (table[table.value.isna()].source == report.NOT_AVAILABLE).all()
    assert not table.source.str.contains("unverified").any()


def test_paper_value_lookup():
    value, source = report.paper_value("fgnet", "amr", "mae")
    assert value == 3.61 and source.startswith(CITATION)
    value, source = report.paper_value("fgnet", "dldl", "mae")
    assert math.isnan(value) and source == "not available"


def _published_preds(dataset: str, protocol: str) -> pd.DataFrame:
    import numpy as np

    rows = []
    for loss, selection in (("amr", "val_best"), ("amr", "test_best_epoch_official"),
                            ("mean_variance", "test_best_epoch_official")):
        for i in range(4):
            p = np.zeros(70)
            p[20 + i] = 1.0
            rows.append({"run": f"{loss}-{selection}", "dataset": dataset, "protocol": protocol,
                         "loss": loss, "k": "adaptive", "seed": 0, "fold": str(i),
                         "selection": selection, "start_age": 0, "image_id": f"{i}",
                         "subject": f"{i:03d}", "age": 21, "age_mean": 21.0, "std": np.nan,
                         "probs": p})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("dataset,protocol,reason", [
    ("fgnet", "lopo", None),
    ("synthetic-fgnet", "lopo", "not comparable: data synthetic-fgnet"),
    ("fgnet", "group-kfold", None),
])
def test_published_numbers_sit_beside_real_fgnet_rows_with_what_differs(dataset, protocol,
                                                                        reason):
    """Every row on real FG-NET gets the published number of its method and, in its own cell,
    what its runs did otherwise than the published setting; other data get none."""
    from ageest.analysis.comparisons import mae_comparison

    t = mae_comparison(_published_preds(dataset, protocol), n_boot=10).set_index("method")
    clean = t.loc["amr"]
    official = t.loc["amr [official (test-selected epoch)]"]
    mv = t.loc["mean_variance [official (test-selected epoch)]"]
    if reason is not None:
        for row in (clean, official, mv):
            assert math.isnan(row.published_mae) and row.published_source == reason
            assert row.published_differs == ""
        return
    assert clean.published_mae == official.published_mae == 3.61 and mv.published_mae == 4.1
    assert official.published_source.startswith(CITATION)
    assert "epoch chosen on validation" in clean.published_differs
    assert "epoch chosen on validation" not in official.published_differs
    if protocol == "lopo":  # the official LOPO rows differ in nothing these runs recorded
        assert official.published_differs.startswith("none recorded")
    else:
        assert "subject-grouped k-fold (leave-one-person-out)" in official.published_differs


def test_published_differs_names_backbone_size_epochs_crop_and_pretraining():
    from ageest.analysis.comparisons import mae_comparison

    preds = _published_preds("fgnet", "group-kfold").assign(
        model="efficientnet_lite0", image_size=96, epochs=8, n_folds=5, face_crop="landmarks",
        init_from="/r/pretraining/fold-holdout")
    text = mae_comparison(preds, n_boot=10).set_index("method").loc["amr", "published_differs"]
    for part in ("backbone efficientnet_lite0 (published: resnet50)", "96 px (227)",
                 "8 epochs (100)", "landmark face crops (whole photos)", "age-pretrained",
                 "subject-grouped 5-fold (leave-one-person-out)"):
        assert part in text, part


def _fake_results(out, *, synthetic: bool):
    write_json(out / "metrics" / "00_data_prep.json", {"synthetic": synthetic, "n": 3})
    write_json(out / "metrics" / "03_evaluation.json", {"amr_mae": 4.5, "note": "x"})
    table = pd.DataFrame({"method": ["amr", "ce"], "loss": ["amr", "ce"], "mae_pooled": [4.5, 5.0]})
    save_table(table, out, "mae_comparison", "MAE comparison.", synthetic=synthetic)
    save_table(pd.DataFrame({"k": ["1", "adaptive"], "mae_pooled": [5.1, 4.5]}), out,
               "k_ablation", "K ablation.", synthetic=synthetic)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, out, "cs_curves")
    save_figure(fig, out, "loss_illustration_distributions")  # a notebook-01 figure
    fig.savefig(out / "figures" / "extra.png")  # a file no catalogue entry declares
    plt.close(fig)
    write_json(out / "manifest.json", {
        "git_commit": "abc", "wall_time_s": 12.5,
        "notebooks": [
            {"notebook": "00_data_prep.ipynb", "status": "done", "wall_time_s": 2.0,
             "tables": [], "figures": []},
            {"notebook": "01_loss_illustration.ipynb", "status": "done", "wall_time_s": 3.0,
             "tables": [], "figures": ["loss_illustration_distributions"]},
            {"notebook": "03_evaluation.ipynb", "status": "done", "wall_time_s": 4.0,
             "tables": ["mae_comparison"], "figures": ["cs_curves"]},
        ]})


def test_report_marks_synthetic_data_and_paper_values(tmp_path):
    _fake_results(tmp_path, synthetic=True)
    path = report.write_report(tmp_path, profile="smoke")
    text = path.read_text()
    head = text.split("## ", 1)[0]
    assert report.SYNTHETIC_NOTE in head, "the top of the report must say the data are synthetic"
    # every table carries the synthetic note in its caption
    for name in ("mae_comparison", "k_ablation"):
        md = (tmp_path / "tables" / f"{name}.md").read_text()
        assert md.startswith(report.SYNTHETIC_NOTE)
    assert text.count(report.SYNTHETIC_NOTE) >= 3
    assert "## Published numbers" in text and CITATION in text
    assert "| fgnet | lopo | amr | mae | 3.61 |" in text
    assert "| fgnet | lopo | mean_variance | mae | 4.1 |" in text
    assert "not available" in text and "unverified" not in text
    # paper order: FG-NET comparison before the CS figure before the K ablation
    assert text.index("### MAE comparison") < text.index("### CS(θ) curves") \
        < text.index("### MAE by K")
    # a notebook-01 figure is placed in its section under its catalogue title, and linked
    assert "### Example distributions and top-K" in text
    assert "](figures/loss_illustration_distributions.png)" in text
    assert text.index("## The loss") < text.index("loss_illustration_distributions.png") \
        < text.index("## Training")
    # a file the catalogue does not declare is still shown, at the end
    assert text.index("## Other artefacts") < text.index("](figures/extra.png)")
    assert "## Runs of `ageest run`" not in text  # a command's section only when it wrote
    # missing artefacts are named, not silently skipped
    assert "*Not produced in this run* (`tables/clap_epsilon_comparison` is missing)" in text
    assert "| 01_loss_illustration.ipynb | done | 3.0 |" in text
    assert "`amr_mae`: 4.5" in text


def test_report_real_data_has_no_synthetic_marking(tmp_path):
    _fake_results(tmp_path, synthetic=False)
    text = report.build_report(tmp_path)
    assert report.SYNTHETIC_NOTE not in text
    assert CITATION in text


def test_caption():
    assert report.caption("x", synthetic=False) == "x"
    assert report.caption("x", synthetic=True) == f"{report.SYNTHETIC_NOTE}. x"


def test_unsourced_value_is_rejected(monkeypatch):
    bad = pd.DataFrame([{"artefact": "a", "dataset": "fgnet", "protocol": "lopo",
                         "method": "ce", "metric": "mae", "value": 3.0, "source": ""}])
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: bad)
    with pytest.raises(ValueError, match="without a source"):
        report.paper_results()


def test_report_opens_with_its_answer(tmp_path):
    """REPORT.md's first section is the summary: each method's headline metric with its CI,
    the seed spread, AMR's paired difference to each baseline, and the best clean method —
    before the published numbers and the notebooks' long sections."""
    _fake_results(tmp_path, synthetic=False)
    table = pd.DataFrame({
        "method": ["amr", "ce", "amr (test-selected)"], "loss": ["amr", "ce", "amr"],
        "protocol": ["clean (val_best)", "clean (val_best)", "official (test-selected)"],
        "seeds": [2, 2, 1], "mae_pooled": [4.5, 5.0, 4.1], "mae_pooled_low": [4.2, 4.6, 3.8],
        "mae_pooled_high": [4.8, 5.4, 4.4], "mae_seed_sd": [0.1, 0.2, float("nan")]})
    save_table(table, tmp_path, "mae_comparison", "FG-NET-format MAE (years).")
    save_table(pd.DataFrame({"reference": ["amr"], "baseline": ["ce"], "unit": ["subject"],
                             "mean_diff": [-0.5], "p_value": [0.01], "test": ["permutation"]}),
               tmp_path, "paired_tests", "Paired tests.")
    text = report.build_report(tmp_path, profile="default")
    assert text.index("## Summary") < text.index("## Published numbers") < text.index("## Notebooks")
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "**FG-NET-format, MAE (years), lower is better**" in summary
    assert "| amr | clean (val_best) | 4.50 [4.20, 4.80] | 2 | 0.10 | — |" in summary
    assert "| ce | clean (val_best) | 5.00 [4.60, 5.40] | 2 | 0.20 | -0.50 (p = 0.01" in summary
    # the test-selected row is shown but neither paired nor chosen as the best
    assert "| amr (test-selected) | official (test-selected) | 4.10 [3.80, 4.40] | 1 | — | — |" \
        in summary
    assert "Best under the clean protocol: **amr**, MAE (years) 4.50 [4.20, 4.80]" in summary
    assert report.summary_lines(tmp_path / "nothing") == []
