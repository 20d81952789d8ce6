"""Comparison tables from stored predictions (ageest.analysis.comparisons), on hand-made predictions with
known answers, and the figures drawn from them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ageest import plots  # noqa: E402
from ageest.analysis import comparisons as ev  # noqa: E402

C = 10  # ages 0..9


def onehot(age: float) -> np.ndarray:
    """A distribution putting all mass on ``age`` (or split between the two neighbours)."""
    p = np.zeros(C)
    lo = int(np.floor(age))
    frac = age - lo
    p[lo] += 1 - frac
    if frac:
        p[lo + 1] += frac
    return p


def frame(rows):
    """rows: (loss, k, selection, seed, image_id, subject, age, predicted age[, std])."""
    out = []
    for r in rows:
        loss, k, sel, seed, iid, subj, age, pred = r[:8]
        std = r[8] if len(r) > 8 else np.nan
        out.append(dict(run=f"{loss}-{k}-{sel}-{seed}", dataset="d", protocol="group-kfold",
                        loss=loss, k=k, seed=seed, fold="0", selection=sel, start_age=0,
                        image_id=iid, subject=subj, age=age, age_mean=float(age), std=std,
                        probs=onehot(pred).astype(np.float16)))
    return pd.DataFrame(out)


CLEAN, OFFICIAL = "best_val_mae", ev.OFFICIAL_SELECTION
# true ages 2, 4, 6 (subject a: images 1, 2; subject b: image 3)
IMAGES = [("1", "a", 2), ("2", "a", 4), ("3", "b", 6)]


def grid():
    rows = []
    # amr clean: errors 0.5, 0, 1 -> pooled 0.5, subject mean ((0.25) + 1)/2 = 0.625
    for (iid, s, age), pred in zip(IMAGES, (2.5, 4.0, 7.0), strict=True):
        rows.append(("amr", "adaptive", CLEAN, 0, iid, s, age, pred))
    # amr official: expectation 2.5 rounds to 2 (half to even) -> errors 0, 1, 1
    for (iid, s, age), pred in zip(IMAGES, (2.5, 5.0, 7.0), strict=True):
        rows.append(("amr", "adaptive", OFFICIAL, 0, iid, s, age, pred))
    # ce clean: errors 2, 2, 2
    for iid, s, age in IMAGES:
        rows.append(("ce", "adaptive", CLEAN, 0, iid, s, age, age + 2))
    # fixed K=2: errors 1, 1, 1
    for iid, s, age in IMAGES:
        rows.append(("mean_residue", "2", CLEAN, 0, iid, s, age, age + 1))
    return frame(rows)


def test_prob_matrix_renormalises_float16():
    p = ev.prob_matrix(grid())
    assert p.shape == (12, C) and np.allclose(p.sum(axis=1), 1.0, atol=1e-12)


def test_readouts_and_predicted_std():
    df = ev.add_readouts(frame([("amr", "adaptive", CLEAN, 0, "1", "a", 2, 2.5)]))
    row = df.iloc[0]
    assert row.pred_expectation == pytest.approx(2.5, abs=1e-3)
    assert row.pred_rounded == 2 and row.pred_argmax == 2 and row.pred_median == 2
    assert row.pred_std == pytest.approx(0.5, abs=1e-3)  # two ages half a year from the mean


def test_mae_comparison_known_values():
    t = ev.mae_comparison(grid(), n_boot=50).set_index("method")
    amr = t.loc["amr"]
    assert amr.mae_pooled == pytest.approx(0.5, abs=1e-3)
    assert amr.mae_subject_mean == pytest.approx(0.625, abs=1e-3)
    assert amr.n_images == 3 and amr.n_subjects == 2 and amr.protocol == "clean (best_val_mae)"
    assert amr.mae_pooled_low <= amr.mae_pooled <= amr.mae_pooled_high
    # data other than the real FG-NET never sit beside a published number
    assert np.isnan(amr.published_mae) and amr.published_source == "not comparable: data d"
    official = t.loc["amr [official (test-selected epoch)]"]
    assert official.readout == "rounded" and official.protocol == "official (test-selected epoch)"
    assert official.mae_pooled == pytest.approx(2 / 3)
    assert t.loc["ce"].mae_pooled == pytest.approx(2.0, abs=1e-3)
    assert np.isnan(t.loc["ce"].published_mae)
    # clean rows first, the official row last
    assert t.index[-1].endswith("[official (test-selected epoch)]")


def test_dual_protocol_gap_is_official_minus_clean():
    t = ev.dual_protocol(grid()).set_index("protocol")
    assert t.loc["official (test-selected epoch)", "mae_pooled"] == pytest.approx(2 / 3)
    assert t.loc["clean (validation-selected)", "mae_pooled"] == pytest.approx(0.5, abs=1e-3)
    gap = t.loc["optimism gap (official − clean)"]
    assert gap.mae_pooled == pytest.approx(2 / 3 - 0.5, abs=1e-3)
    assert t.loc["official (test-selected epoch)", "cs_readout"] == "argmax"
    with pytest.raises(ValueError, match="dual protocol needs"):
        ev.dual_protocol(grid().query("selection != @OFFICIAL"))


def test_cs_curves_and_age_groups():
    cs = ev.cs_curves(grid(), thetas=[0, 1, 2])
    amr = cs[(cs.method == "amr") & (cs.readout == "expectation")].set_index("theta")["cs"]
    assert amr.tolist() == pytest.approx([1 / 3, 1.0, 1.0])
    official = cs[cs.method.str.contains("official")]
    assert set(official.readout) == {"argmax"}
    # clean rows also come with the paper-comparable integer readout, named
    assert set(cs[cs.method == "amr"].readout) == {"expectation", "argmax"}
    groups = ev.age_group_mae(grid(), bins=[0, 5, 10])
    ce = groups[groups.method == "ce"]
    assert ce["n"].tolist() == [2, 1] and ce["mae"].tolist() == pytest.approx([2.0, 2.0],
                                                                                abs=1e-3)


def test_paired_tests_match_images_and_exclude_official():
    t = ev.paired_tests(grid(), n_resamples=99, unit="image").set_index("baseline")
    assert set(t.index) == {"ce", "mean_residue (K=2)"}  # no official row
    assert t.loc["ce", "n"] == 3 and t.loc["ce", "unit"] == "image"
    assert t.loc["ce", "mean_diff"] == pytest.approx(0.5 - 2.0, abs=1e-3)
    # the default unit is the subject: one pair per subject (2 here), mean error per subject
    by_subject = ev.paired_tests(grid(), n_resamples=99).set_index("baseline")
    assert by_subject.loc["ce", "unit"] == "subject"
    assert by_subject.loc["ce", "n"] == 2 and by_subject.loc["ce", "n_images"] == 3
    assert by_subject.loc["ce", "mean_diff"] == pytest.approx(0.625 - 2.0, abs=1e-3)
    assert 0 < t.loc["ce", "p_value"] <= 1
    # no runs of the reference, or the reference alone: nothing to pair, an empty table with
    # the columns (a pipeline with one loss used to stop here with KeyError 'baseline')
    absent = ev.paired_tests(grid(), reference="dldl")
    assert absent.empty and list(absent.columns) == list(ev.PAIRED_COLUMNS)
    alone = ev.paired_tests(grid()[lambda d: d["loss"] == "amr"], reference="amr")
    assert alone.empty and dict(zip(alone["baseline"], alone["p_value"], strict=True)) == {}


def test_protocol_sensitivity_deltas():
    t = ev.protocol_sensitivity(grid())
    amr = t[t.method == "amr"].set_index("readout")
    assert amr.loc["expectation", "mae_pooled_delta"] == 0
    assert amr.loc["rounded", "mae_pooled"] == pytest.approx((0 + 0 + 1) / 3)
    assert set(t.readout) == {"expectation", "rounded", "argmax", "median"}


def test_k_ablation_orders_fixed_then_adaptive():
    t = ev.k_ablation(grid(), n_boot=50)
    assert t["k"].tolist() == ["2", "adaptive"]
    assert t.set_index("k").loc["2", "delta_vs_adaptive"] == pytest.approx(0.5, abs=1e-3)
    fig = plots.k_ablation(t, synthetic=True)
    assert "synthetic" in fig.axes[0].get_title()
    plt.close(fig)


def clap_frame():
    rows = []
    for i, (age, pred, std) in enumerate([(20, 20, 2.0), (30, 32, 2.0), (40, 40, 4.0),
                                          (50, 54, 4.0)]):
        for loss, shift in (("amr", 0), ("ce", 1)):
            p = np.zeros(101)
            p[pred + shift] = 1.0
            rows.append(dict(run=loss, dataset="c", protocol="holdout", loss=loss,
                             k="adaptive", seed=0, fold="holdout", selection=CLEAN,
                             start_age=0, image_id=str(i), subject=pd.NA, age=age,
                             age_mean=float(age), std=std, probs=p))
    return pd.DataFrame(rows)


def test_epsilon_comparison_known_values():
    t = ev.epsilon_comparison(clap_frame(), n_boot=50).set_index("method")
    # amr: errors 0, 2 (σ 2), 0, 4 (σ 4): two images at one σ -> 2 (1 - e^-1/2) / 4
    expected = 2 * (1 - np.exp(-0.5)) / 4
    assert t.loc["amr", "epsilon"] == pytest.approx(expected, abs=1e-9)
    assert t.loc["amr", "epsilon_official"] == pytest.approx(expected, abs=1e-4)
    assert np.isnan(t.loc["amr", "published_epsilon_error"])
    assert t.loc["amr", "published_source"] == "not comparable: data c"
    assert t.loc["amr", "n_sigma_zero"] == 0
    with pytest.raises(ValueError, match="annotators' std"):
        ev.epsilon_comparison(grid())


def test_epsilon_comparison_with_sigma_zero_and_missing_sigma_has_no_blank_column():
    """Real CLAP2016 labels include σ = 0: the exact ε and its CI must still be numbers."""
    df = clap_frame()
    df.loc[df["image_id"] == "0", "std"] = 0.0  # amr predicts it exactly: e = 0; ce misses: 1
    df.loc[df["image_id"] == "1", "std"] = np.nan  # left out and counted
    t = ev.epsilon_comparison(df, n_boot=50).set_index("method")
    for col in ("epsilon", "epsilon_low", "epsilon_high", "epsilon_official"):
        assert t[col].notna().all(), col
    assert t.loc["amr", "n_sigma_zero"] == 1 and t.loc["amr", "n_sigma_missing"] == 1
    # amr: images 0 (σ 0, exact: 0), 2 (exact: 0), 3 (one σ) -> (1 - e^-1/2) / 3
    assert t.loc["amr", "epsilon"] == pytest.approx((1 - np.exp(-0.5)) / 3, abs=1e-9)
    v = ev.epsilon_variants(df).set_index(["method", "readout"])
    assert v["epsilon"].notna().all()


def test_ambiguity_calibration_bins_and_correlation():
    t = ev.ambiguity_calibration(clap_frame(), n_bins=2)
    amr = t[t.method == "amr"]
    assert amr["n"].sum() == 4 and len(amr) == 2
    assert amr["pred_std_mean"].tolist() == pytest.approx([0.0, 0.0])  # one-hot predictions
    fig = plots.ambiguity_calibration(t)
    plt.close(fig)


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"lacks columns \['probs'\]"):
        ev.mae_comparison(grid().drop(columns=["probs"]))
    with pytest.raises(ValueError, match="empty"):
        ev.mae_comparison(grid().iloc[0:0])


def test_figures_from_tables():
    df = grid()
    for fig in (plots.cs_curves(ev.cs_curves(df)),
                plots.age_group_mae(ev.age_group_mae(df, bins=[0, 5, 10])),
                plots.dual_protocol(ev.dual_protocol(df))):
        assert fig.axes
        plt.close(fig)


def test_cs_wide_layout():
    wide = ev.cs_wide(ev.cs_curves(grid(), thetas=[0, 1, 2]))
    assert list(wide.columns) == ["method", "protocol", "readout", "cs0", "cs1", "cs2"]
    assert wide.set_index(["method", "readout"]).loc[("amr", "expectation"), "cs1"] == \
        pytest.approx(1.0)


def fake_history():
    rows = []
    for dataset in ("synthetic-fgnet", "synthetic-clap"):
        for loss, k, sel in (("amr", "adaptive", "val_best"), ("ce", "adaptive", "val_best"),
                             ("amr", "adaptive", OFFICIAL), ("mean_residue", "2", "val_best")):
            for fold in ("0", "1"):
                for epoch in (1, 2, 3):
                    rows.append(dict(dataset=dataset, loss=loss, k=k, selection=sel, fold=fold,
                                     seed=0, epoch=epoch, train_total=5.0 - epoch,
                                     train_ce=4.0 - epoch / 2, train_k_mean=30.0 / epoch + int(fold),
                                     val_mae=10.0 - epoch,
                                     test_mae=9.0 - epoch if sel == OFFICIAL else np.nan))
    return pd.DataFrame(rows)


def test_history_figures_and_adaptive_k_table():
    history = fake_history()
    fig = plots.learning_curves(history, synthetic=True)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["train_total", "train_ce", "val_mae", "test_mae"]
    plt.close(fig)
    fig = plots.adaptive_k_per_epoch(history)
    assert [ax.get_title() for ax in fig.axes] == ["synthetic-fgnet", "synthetic-clap"]
    plt.close(fig)
    amr = history[(history.loss == "amr") & (history.dataset == "synthetic-fgnet")
                  & (history.selection == "val_best")]
    table = ev.adaptive_k_history(amr)
    assert table["k_mean"].tolist() == pytest.approx([30.5, 15.5, 10.5])
    assert table["n_runs"].tolist() == [2, 2, 2]
    fig = plots.adaptive_k_distribution(amr)
    plt.close(fig)


def test_seed_spread_and_epsilon_interval():
    rows = []
    for seed, shift in ((0, 1.0), (1, 3.0)):  # pooled MAE 1 for seed 0, 3 for seed 1
        for iid, s, age in IMAGES:
            rows.append(("ce", "adaptive", CLEAN, seed, iid, s, age, age + shift))
    t = ev.mae_comparison(frame(rows), n_boot=50).iloc[0]
    assert t.seeds == 2 and t.mae_pooled == pytest.approx(2.0, abs=1e-3)
    assert t.mae_seed_sd == pytest.approx(np.std([1.0, 3.0], ddof=1), abs=1e-3)
    assert np.isnan(ev.mae_comparison(grid(), n_boot=20)["mae_seed_sd"]).all()
    e = ev.epsilon_comparison(clap_frame(), n_boot=200).set_index("method").loc["amr"]
    assert 0 <= e.epsilon_low <= e.epsilon <= e.epsilon_high <= 1


def test_k_column_says_n_a_for_losses_without_top_k():
    from ageest.analysis.comparisons import k_label

    assert [k_label(loss, "adaptive") for loss in ("amr", "ce", "mean_variance", "dldl")] == [
        "adaptive", "n/a", "n/a", "n/a"]
    assert k_label("mean_residue", 4) == "4"


def test_evaluation_tables_for_every_subset_of_the_losses():
    """What notebook 03 builds from stored predictions, for every non-empty subset of the
    methods the fixture holds (the reference alone, without it, any mix)."""
    import itertools

    preds = grid()
    methods = sorted(set(zip(preds["loss"], preds["k"].astype(str), strict=True)))
    for n in range(1, len(methods) + 1):
        for subset in itertools.combinations(methods, n):
            keep = pd.Series(list(zip(preds["loss"], preds["k"].astype(str), strict=True)),
                             index=preds.index).isin(subset)
            part = preds[keep]
            mae = ev.mae_comparison(part, n_boot=20)
            assert len(mae) == part.groupby(["loss", "k", "selection"]).ngroups
            paired = ev.paired_tests(part, reference="amr", n_resamples=19)
            assert list(paired.columns) == list(ev.PAIRED_COLUMNS)
            assert ev.protocol_sensitivity(part)["mae_pooled"].notna().all()
            if ev.has_official(part, loss="amr"):
                assert len(ev.dual_protocol(part, loss="amr")) == 3


def test_mae_comparison_without_subject_ids_counts_no_subjects():
    """UTKFace-like predictions (no subject ids): the table says NA subjects and no subject
    mean, instead of counting each image as a subject; the pooled MAE is the same."""
    with_ids = ev.mae_comparison(grid(), n_boot=50).set_index("method")
    no_ids = grid().assign(subject=pd.NA)
    table = ev.mae_comparison(no_ids, n_boot=50).set_index("method")
    assert table["n_subjects"].isna().all() and table["mae_subject_mean"].isna().all()
    assert with_ids["n_subjects"].notna().all()
    np.testing.assert_allclose(table["mae_pooled"], with_ids["mae_pooled"])
    assert (table["mae_pooled_low"] <= table["mae_pooled"]).all()


def test_k_ablation_figure_takes_an_interval_collapsed_by_rounding():
    """One test subject: the bootstrap bound equals the MAE but for one ulp (seen: 11.584255535445644
    against …646); the bar must be drawn, not refused as negative. A bound off by more is an
    error."""
    value = 11.584255535445646
    t = pd.DataFrame({"k": ["2", "adaptive"], "k_value": [2.0, np.nan],
                      "mae_pooled": [value, 10.0], "mae_pooled_low": [np.nextafter(value, 99), 9.0],
                      "mae_pooled_high": [np.nextafter(value, 0), 11.0]})
    fig = plots.k_ablation(t, synthetic=True)
    plt.close(fig)
    with pytest.raises(ValueError, match="does not contain its value"):
        plots.k_ablation(t.assign(mae_pooled_low=[value + 0.5, 9.0]))


def test_paired_tests_on_subject_free_data_count_each_face_once_and_weigh_the_seeds():
    """UTKFace has no subjects: with two seeds each face is one unit (its error averaged over
    the seeds), not two pairs, and the table says whether AMR's difference to a baseline is
    larger than what another seed moves."""
    rows = []
    for seed, (amr_off, ce_off) in enumerate([(0.5, 2.0), (1.0, 2.2)]):
        for iid, age in (("f1", 1), ("f2", 2), ("f3", 3), ("f4", 4)):
            rows.append(("amr", "adaptive", CLEAN, seed, iid, pd.NA, age, age + amr_off))
            rows.append(("ce", "adaptive", CLEAN, seed, iid, pd.NA, age, age + ce_off))
    preds = frame(rows)
    table = ev.paired_tests(preds, unit="subject", n_resamples=99)
    row = table.iloc[0]
    assert row["n"] == 4 and row["n_images"] == 8  # four faces, eight (face, seed) pairs
    assert row["unit"] == "image (mean over seeds)"
    assert row["n_seeds"] == 2 and row["diff_per_seed"] == "-1.500, -1.200"
    assert row["seed_spread"] == pytest.approx(np.std([0.5, 1.0], ddof=1), abs=1e-3)
    assert bool(row["beyond_seed_spread"]) is True
    by_image = ev.paired_tests(preds, unit="image", n_resamples=99).iloc[0]
    assert by_image["n"] == 8 and by_image["unit"] == "image"


def test_the_official_clap_row_heads_with_the_official_epsilon():
    """Its epoch was selected on the official ε (rounded prediction and mean, σ + 1e-4), so that
    is its headline, with the exact ε beside it, labelled; a clean row keeps the exact ε."""
    df = clap_frame()
    df.loc[df["image_id"] == "0", "std"] = 0.0  # the official σ + 1e-4 differs from the limit
    official = df[df["loss"] == "amr"].assign(selection=ev.OFFICIAL_SELECTION,
                                               run="amr-official")
    # an expectation of 31.6 rounds to 32 (official) but scores 31.6 exactly (clean)
    for frame_ in (df, official):
        p = np.zeros(101)
        p[31], p[32] = 0.4, 0.6
        frame_.loc[frame_["image_id"] == "1", "probs"] = pd.Series(
            [p] * int((frame_["image_id"] == "1").sum()),
            index=frame_.index[frame_["image_id"] == "1"])
    t = ev.epsilon_comparison(pd.concat([df, official], ignore_index=True),
                              n_boot=50).set_index("method")
    off = t.loc[ev.method_label("amr", "adaptive", ev.OFFICIAL_SELECTION)]
    clean = t.loc["amr"]
    assert off["epsilon_kind"].startswith("official") and clean["epsilon_kind"] == "exact"
    assert off["epsilon"] == pytest.approx(off["epsilon_official"], abs=1e-12)
    assert clean["epsilon"] == pytest.approx(clean["epsilon_exact"], abs=1e-12)
    assert off["epsilon_official"] != pytest.approx(off["epsilon_exact"], abs=1e-6)
    assert off["epsilon_low"] <= off["epsilon"] <= off["epsilon_high"]


def test_subject_mae_counts_photos_once_and_trajectories_follow_the_widest_span():
    """Per subject: its photos counted once however many methods (it once counted a photo per
    method), each clean method's MAE, official rows left out; the trajectories pick the
    subjects with the widest age span and list every clean method per photo."""
    t = ev.subject_mae(grid()).set_index("subject")
    assert t.loc["a", "n_images"] == 2 and t.loc["b", "n_images"] == 1
    assert (t.loc["a", "age_min"], t.loc["a", "age_max"]) == (2, 4)
    assert t.loc["a", "mae_amr"] == pytest.approx(0.25, abs=1e-3)  # errors 0.5 and 0
    assert t.loc["b", "mae_ce"] == pytest.approx(2.0, abs=1e-3)
    assert not any("official" in c for c in t.columns)
    traj = ev.subject_trajectories(grid(), n_subjects=1)
    assert set(traj["subject"]) == {"a"}  # span 2 years against 0
    assert len(traj) == 2 * traj["method"].nunique()
