"""Comparison tables and statistics computed from stored predictions only (notebooks 03 and 04).

Everything here starts from a *predictions frame*: one row per (run, test image), as written by the
runner's prediction store and gathered by :func:`ageest.engine.store.load_predictions`, with the columns

``run``, ``dataset``, ``protocol``, ``loss``, ``k`` (``"adaptive"`` or an int as text), ``seed``,
``fold``, ``selection``, ``start_age``, ``image_id``, ``subject``, ``age``, ``age_mean``, ``std``
and ``probs`` (the predicted distribution, one numpy vector per row).

No function here trains or reads images, so every table can be recomputed on a CPU in seconds.
Runs trained with ``selection="test_best_epoch_official"`` (the official code's epoch selected on
the test set) keep that label in every table as ``official (test-selected epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ageest import metrics
from ageest.losses import LOSSES, loss_order
from ageest.official import (
    OFFICIAL_LABEL,
    OFFICIAL_READOUTS,
    OFFICIAL_SELECTION,
    SELECTION_LABELS,
    protocol_label,
)
from ageest.parameters import as_list

# Columns identifying a method (one row of a comparison table).
METHOD_COLUMNS = ("loss", "k", "selection")
PRED_COLUMNS = ("run", "dataset", "protocol", "loss", "k", "seed", "fold", "selection",
                "start_age", "image_id", "subject", "age", "age_mean", "std", "probs")


# ---------------------------------------------------------------------------------------------
# helpers on the predictions frame


def _has_topk(loss: str) -> bool:
    """Whether ``loss`` has a top-K at all (the registry says); the prediction store writes
    "adaptive" for every other loss."""
    return loss in LOSSES and LOSSES[loss].has_topk


def k_label(loss: str, k: object) -> str:
    """The K shown in a table: ``"n/a"`` for a loss without a top-K (CE, mean-variance, DLDL…).

    >>> k_label("amr", "adaptive"), k_label("mean_residue", 3), k_label("ce", "adaptive")
    ('adaptive', '3', 'n/a')
    """
    return str(k) if _has_topk(loss) else "n/a"


def method_label(loss: str, k: object, selection: str = "") -> str:
    """A readable method name: the loss, its fixed K when it has one, and the official marking.

    >>> method_label("mean_residue", 3), method_label("amr", "adaptive", OFFICIAL_SELECTION)
    ('mean_residue (K=3)', 'amr [official (test-selected epoch)]')
    """
    name = str(loss)
    if k not in (None, "", "adaptive") and not (isinstance(k, float) and np.isnan(k)):
        name += f" (K={k})"
    if selection == OFFICIAL_SELECTION:
        name += f" [{OFFICIAL_LABEL}]"
    return name


def check_predictions(preds: pd.DataFrame) -> pd.DataFrame:
    """Raise ``ValueError`` naming the missing columns, or when the frame is empty."""
    missing = [c for c in PRED_COLUMNS if c not in preds.columns]
    if missing:
        raise ValueError(f"predictions frame lacks columns {missing}; gather it with "
                         "ageest.engine.store.load_predictions(runs_dir)")
    if preds.empty:
        raise ValueError("predictions frame is empty: no finished runs were found")
    return preds


def prob_matrix(preds: pd.DataFrame) -> np.ndarray:
    """Stack the ``probs`` vectors of ``preds`` into an (N, C) float64 matrix, renormalised so
    rows sum to 1 exactly (the store may keep float16, whose rounding breaks that)."""
    p = np.stack([np.asarray(v, dtype=np.float64) for v in preds["probs"]])  # (N, C)
    return p / p.sum(axis=1, keepdims=True)


def add_readouts(preds: pd.DataFrame, readouts: Iterable[str] = metrics.READOUTS) -> pd.DataFrame:
    """Return a copy with a ``pred_<readout>`` column per readout and ``pred_std`` (the std of
    the predicted distribution), computed per start age (datasets may differ)."""
    check_predictions(preds)
    out = preds.copy()
    readouts = list(readouts)
    for col in [f"pred_{r}" for r in readouts] + ["pred_std"]:
        out[col] = np.nan
    for start_age, idx in out.groupby("start_age").groups.items():
        p = prob_matrix(out.loc[idx])  # (n, C)
        ages = np.arange(p.shape[1], dtype=np.float64) + int(start_age)
        for r in readouts:
            out.loc[idx, f"pred_{r}"] = metrics.predict_age(p, r, start_age=int(start_age))
        m = p @ ages
        out.loc[idx, "pred_std"] = np.sqrt(np.clip(p @ ages**2 - m**2, 0.0, None))
    return out


def _seed_sd(group: pd.DataFrame, pred: np.ndarray, true: np.ndarray) -> float:
    """Sample std over seeds of the pooled MAE (NaN with one seed): training-noise spread."""
    per_seed = pd.Series(np.abs(pred - true)).groupby(group["seed"].to_numpy()).mean()
    return float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")


def _clusters(group: pd.DataFrame) -> pd.Series:
    """Subject labels for the cluster bootstrap; each image is its own cluster when unknown."""
    subject = group["subject"].astype("string")
    return subject.fillna("image:" + group["image_id"].astype(str))


def _epsilon_with_ci(pred: np.ndarray, mean: np.ndarray, std: np.ndarray, clusters, *,
                     n_boot: int, ci: float, seed: int, official_rounding: bool = False
                     ) -> tuple[dict, dict]:
    """The ε-error summary (σ = 0 at the formula's limit; images without a σ left out and
    counted) and its cluster-bootstrap CI: ε is the mean of per-image terms e_i >= 0, so the
    bootstrap of mean |e_i - 0| over the same clusters is its confidence interval.
    ``official_rounding``: the official code's ε (rounded x and μ, σ + 1e-4)."""
    e = metrics.epsilon_per_image(pred, mean, std, official_rounding=official_rounding)  # (N,)
    known = np.isfinite(e)
    boot = metrics.bootstrap_mae_ci(e[known], np.zeros(int(known.sum())),
                                    np.asarray(clusters)[known], n_boot=n_boot, ci=ci, seed=seed)
    return metrics.epsilon_summary(pred, mean, std, official_rounding=official_rounding), boot


def _methods(preds: pd.DataFrame) -> list[tuple]:
    keys = preds[list(METHOD_COLUMNS)].drop_duplicates()
    return sorted(keys.itertuples(index=False, name=None),
                  key=lambda t: (t[2] == OFFICIAL_SELECTION, loss_order(t[0]), _k_order(t[1])))


def _k_order(k: object) -> float:
    return -1.0 if str(k) == "adaptive" else float(k)


def add_published(table: pd.DataFrame, preds: pd.DataFrame, *, dataset: str, protocol: str,
                  metric: str) -> pd.DataFrame:
    """Add ``published_<metric>``, ``published_source`` and ``published_differs`` beside the
    rows of the real ``dataset`` (FG-NET): the published number of the row's method with its
    source, and what the row's runs did otherwise than the published setting (the official
    code's: ResNet-50 at 227 px for 100 epochs, whole photos, leave-one-person-out, epoch chosen
    on the test subject) — backbone, image size, epochs, face crop, protocol, epoch selection.
    A row that differs in nothing recorded says so, and that the published number's readout,
    fold aggregation and epoch selection are not known. Rows on other data (synthetic,
    UTKFace) get NaN and the reason; a method without a sourced number reads "not available"
    (fixed-K rows too: the located numbers are of the adaptive loss)."""
    from ageest.published import NOT_AVAILABLE, paper_value

    values, sources, differs = [], [], []
    for (loss, k, selection), group in _method_groups(preds):
        datasets = set(group["dataset"])
        value, source, diff = np.nan, NOT_AVAILABLE, ""
        if datasets != {dataset}:
            source = f"not comparable: data {', '.join(sorted(datasets))}"
        elif not (str(k) != "adaptive" and _has_topk(loss)):
            value, source = paper_value(dataset, str(loss), metric)
        if datasets == {dataset} and dataset == "fgnet":  # the published FG-NET setting
            diff = published_differences(group, selection, protocol=protocol)
        values.append(value)
        sources.append(source)
        differs.append(diff)
    out = table.copy()
    out[f"published_{metric}"] = values
    out["published_source"] = sources
    out["published_differs"] = differs
    return out


#: the published FG-NET setting the ``published_differs`` column compares a row with: the
#: official scripts' (ageest/resources/official_settings.yaml) with whole photos
def _published_setting() -> dict[str, Any]:
    from ageest.official import official_values

    values = official_values("fgnet")
    return {"model": values["model"], "image_size": values["image_size"],
            "epochs": values["epochs"], "face_crop": "none"}


def published_differences(group: pd.DataFrame, selection: str, *, protocol: str = "lopo"
                          ) -> str:
    """What one method's runs (its rows of the predictions frame) did otherwise than the
    published FG-NET setting, as text for a table cell; settings a run did not record (older
    runs) are left out.

    >>> g = pd.DataFrame({"model": ["efficientnet_lite0"], "image_size": [96], "epochs": [8],
    ...                   "face_crop": ["landmarks"], "protocol": ["group-kfold"],
    ...                   "n_folds": [5]})
    >>> published_differences(g, "val_best")  # doctest: +NORMALIZE_WHITESPACE
    'backbone efficientnet_lite0 (published: resnet50); 96 px (227); 8 epochs (100); landmark
    face crops (whole photos); subject-grouped 5-fold (leave-one-person-out); epoch chosen on
    validation (on the test subject)'
    """
    paper = _published_setting()

    def one(col: str) -> Any:
        seen = _recorded(group, col) or []
        return seen[0] if len(seen) == 1 else (", ".join(map(str, seen)) if len(seen) else None)

    parts = []
    model, size, epochs, crop = one("model"), one("image_size"), one("epochs"), one("face_crop")
    if model is not None and str(model) != paper["model"]:
        parts.append(f"backbone {model} (published: {paper['model']})")
    if size is not None and str(size) != str(paper["image_size"]):
        parts.append(f"{size} px ({paper['image_size']})")
    if epochs is not None and str(epochs) != str(paper["epochs"]):
        parts.append(f"{epochs} epochs ({paper['epochs']})")
    if crop is not None and str(crop) != paper["face_crop"]:
        parts.append(f"{'landmark face crops' if crop == 'landmarks' else crop} (whole photos)")
    if one("init_from"):
        parts.append("age-pretrained (init_from) before the folds (ImageNet only)")
    protocols = set(group["protocol"].astype(str))
    if protocols != {protocol}:
        folds = one("n_folds")
        named = ("subject-grouped " + (f"{folds}-fold" if folds is not None else "k-fold")
                 if protocols == {"group-kfold"} else ", ".join(sorted(protocols)))
        parts.append(f"{named} (leave-one-person-out)")
    if selection != OFFICIAL_SELECTION:
        parts.append("epoch chosen on validation (on the test subject)")
    if not parts:
        return ("none recorded; the published number's readout, fold aggregation and epoch "
                "selection are not known")
    return "; ".join(parts)


def _method_groups(preds: pd.DataFrame):
    for key in _methods(preds):
        mask = np.ones(len(preds), dtype=bool)
        for col, value in zip(METHOD_COLUMNS, key, strict=True):
            mask &= (preds[col] == value).to_numpy()
        yield key, preds[mask]


# ---------------------------------------------------------------------------------------------
# the paper's comparison tables


def mae_comparison(preds: pd.DataFrame, *, readout: str = "expectation", n_boot: int = 1000,
                   ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """MAE comparison (FG-NET format, or UTKFace): one row per method (loss, K, selection).

    Columns: ``method``, ``protocol`` (clean or official), ``loss``, ``k``, ``readout``,
    ``seeds``, ``n_images``, ``n_subjects`` (NA when the data has no subject ids: UTKFace),
    ``mae_pooled`` with its subject-bootstrap CI (image-bootstrap without subjects)
    (``mae_pooled_low``/``_high``), ``mae_subject_mean`` with CI, ``mae_seed_sd`` (std of the
    pooled MAE over seeds; NaN for one seed), ``cs5`` (CS at θ = 5), and the published value
    beside the rows it can be compared with (``published_mae``, ``published_source``:
    :func:`add_published`). Official rows use the
    official readout (rounded expectation) whatever ``readout`` says, as the official code does.
    """
    preds = add_readouts(check_predictions(preds))
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        r = "rounded" if selection == OFFICIAL_SELECTION else readout
        pred, true = group[f"pred_{r}"].to_numpy(), group["age"].to_numpy(float)
        clusters = _clusters(group)
        agg = metrics.aggregate_lopo(pred=pred, true=true, subject=clusters)
        pooled = metrics.bootstrap_mae_ci(pred, true, clusters, n_boot=n_boot, ci=ci, seed=seed)
        by_subject = metrics.bootstrap_mae_ci(pred, true, clusters, n_boot=n_boot, ci=ci,
                                              seed=seed, statistic="subject_mean")
        cs_readout = OFFICIAL_READOUTS["cs"] if selection == OFFICIAL_SELECTION else readout
        cs5 = metrics.cumulative_score(group[f"pred_{cs_readout}"], true, thetas=[5]).iloc[0]
        if group["subject"].isna().any():  # no subject ids: no subject count, no subject mean
            agg = {**agg, "n_subjects": pd.NA, "mae_subject_mean": np.nan}
            by_subject = {"low": np.nan, "high": np.nan}
        rows.append({
            "method": method_label(loss, k, selection), "protocol": protocol_label(selection),
            "loss": loss, "k": k_label(loss, k), "readout": r, "seeds": group["seed"].nunique(),
            "n_images": agg["n_images"], "n_subjects": agg["n_subjects"],
            "mae_pooled": agg["mae_pooled"], "mae_pooled_low": pooled["low"],
            "mae_pooled_high": pooled["high"], "mae_subject_mean": agg["mae_subject_mean"],
            "mae_subject_low": by_subject["low"], "mae_subject_high": by_subject["high"],
            "mae_seed_sd": _seed_sd(group, pred, true), "cs5": float(cs5),
        })
    table = pd.DataFrame(rows)
    table["n_subjects"] = table["n_subjects"].astype("Int64")
    return add_published(table, preds, dataset="fgnet", protocol="lopo", metric="mae")


def epsilon_comparison(preds: pd.DataFrame, *, readout: str = "expectation", n_boot: int = 1000,
                       ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """CLAP2016-format ε-error comparison: one row per method.

    ``epsilon`` is each row's headline ε with a bootstrap CI (``epsilon_low``/``_high``; by
    subject where known, else by image), of the kind ``epsilon_kind`` names: for clean rows the
    exact ε-error of the chosen readout against the annotators' mean and σ; for official rows
    the official code's ε (prediction and mean rounded, σ + 1e-4), the number their epoch was
    selected on and the official code logs. Beside it both kinds by name: ``epsilon_exact``
    and ``epsilon_official``. Also the MAE against the apparent mean with a bootstrap CI, and
    the paper's ε with its source.
    """
    preds = add_readouts(check_predictions(preds))
    if preds["std"].isna().all():
        raise ValueError("the ε-error needs the annotators' std; these predictions come from a "
                         "dataset without it (use mae_comparison)")
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        r = "rounded" if selection == OFFICIAL_SELECTION else readout
        pred = group[f"pred_{r}"].to_numpy()
        mean, std = group["age_mean"].to_numpy(float), group["std"].to_numpy(float)
        clusters = _clusters(group)
        boot = metrics.bootstrap_mae_ci(pred, mean, clusters, n_boot=n_boot, ci=ci, seed=seed)
        # ε is the mean of per-image terms e_i >= 0 (σ = 0 at the formula's limit), so the
        # bootstrap of mean |e_i - 0| over the same clusters is its confidence interval; images
        # without a σ are left out and counted
        is_official = selection == OFFICIAL_SELECTION
        summary, e_boot = _epsilon_with_ci(pred, mean, std, clusters, n_boot=n_boot, ci=ci,
                                           seed=seed, official_rounding=is_official)
        exact = metrics.epsilon_summary(pred, mean, std)
        official = metrics.epsilon_summary(pred, mean, std, official_rounding=True)
        rows.append({
            "method": method_label(loss, k, selection), "protocol": protocol_label(selection),
            "loss": loss, "k": k_label(loss, k), "readout": r, "seeds": group["seed"].nunique(),
            "n_images": len(group), "epsilon": summary["epsilon"], "epsilon_low": e_boot["low"],
            "epsilon_high": e_boot["high"],
            "epsilon_kind": "official (rounded, σ + 1e-4)" if is_official else "exact",
            "epsilon_exact": exact["epsilon"], "epsilon_official": official["epsilon"],
            "n_sigma_zero": exact["n_sigma_zero"], "n_sigma_missing": exact["n_sigma_missing"],
            "mae": boot["estimate"], "mae_low": boot["low"], "mae_high": boot["high"],
        })
    table = pd.DataFrame(rows)
    return add_published(table, preds, dataset="clap2016", protocol="holdout",
                         metric="epsilon_error")


def cs_curves(preds: pd.DataFrame, *, readout: str = "expectation",
              thetas: Sequence[int] = range(11)) -> pd.DataFrame:
    """CS(θ) for θ in ``thetas``, one row per method, readout and θ (long format: ``method``,
    ``protocol``, ``readout``, ``theta``, ``cs``).

    Official rows use the argmax readout (the official code's CS). Clean rows come with two
    readouts: ``readout`` (the one their MAE uses; with the continuous expected age CS(0) is ~0)
    and ``argmax``, the integer readout a published CS curve is comparable with."""
    preds = add_readouts(check_predictions(preds))
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        chosen = [OFFICIAL_READOUTS["cs"]] if selection == OFFICIAL_SELECTION else list(
            dict.fromkeys([readout, "argmax"]))
        for r in chosen:
            cs = metrics.cumulative_score(group[f"pred_{r}"], group["age"].to_numpy(float),
                                          thetas)
            for theta, value in cs.items():
                rows.append({"method": method_label(loss, k, selection),
                             "protocol": protocol_label(selection), "readout": r,
                             "theta": int(theta), "cs": float(value)})
    return pd.DataFrame(rows)


def cs_wide(cs: pd.DataFrame) -> pd.DataFrame:
    """The long CS table of :func:`cs_curves` as one row per method and a ``cs<θ>`` column per θ
    (the layout of the paper's CS figure read off as numbers)."""
    wide = cs.pivot_table(index=["method", "protocol", "readout"], columns="theta", values="cs",
                          sort=False)
    wide.columns = [f"cs{int(t)}" for t in wide.columns]
    return wide.reset_index()


def age_group_mae(preds: pd.DataFrame, *, bins: Sequence[float] | int = 10,
                  readout: str = "expectation") -> pd.DataFrame:
    """MAE per true-age group and method (long format: ``method``, ``protocol``, ``group``,
    ``low``, ``high``, ``n``, ``mae``)."""
    preds = add_readouts(check_predictions(preds))
    frames = []
    for (loss, k, selection), group in _method_groups(preds):
        r = "rounded" if selection == OFFICIAL_SELECTION else readout
        t = metrics.mae_by_age_group(group[f"pred_{r}"], group["age"].to_numpy(float), bins)
        t.insert(0, "protocol", protocol_label(selection))
        t.insert(0, "method", method_label(loss, k, selection))
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def subject_mae(preds: pd.DataFrame, *, readout: str = "expectation") -> pd.DataFrame:
    """Per-subject MAE of every clean-protocol method (each photo's prediction averaged over
    seeds first): one row per subject with ``n_images``, ``age_min``, ``age_max`` and one
    ``mae_<method>`` column per method, subjects in id order. Data without subject ids (UTKFace)
    give an empty table."""
    preds = add_readouts(check_predictions(preds))
    preds = preds[(preds["selection"] != OFFICIAL_SELECTION) & preds["subject"].notna()]
    if preds.empty:
        return pd.DataFrame(columns=["subject", "n_images", "age_min", "age_max"])
    per = _per_photo(preds, readout)
    photos = per.drop_duplicates("image_id")  # one row per photo, whatever the methods
    base = (photos.groupby("subject")["age"].agg(n_images="size", age_min="min", age_max="max")
            .reset_index())
    per = per.assign(abs_err=(per["predicted"] - per["age"]).abs())
    wide = per.pivot_table(index="subject", columns="method", values="abs_err", aggfunc="mean")
    wide = wide[[m for m in per["method"].drop_duplicates()]]
    wide.columns = [f"mae_{m}" for m in wide.columns]
    return base.merge(wide.reset_index(), on="subject")


def _per_photo(preds: pd.DataFrame, readout: str) -> pd.DataFrame:
    """One row per clean method and photo: the photo's prediction (``readout``) averaged over
    seeds, with its subject and true age."""
    frames = []
    for (loss, k, selection), group in _method_groups(preds):
        g = group.groupby("image_id", sort=False).agg(
            subject=("subject", "first"), age=("age", "first"),
            predicted=(f"pred_{readout}", "mean"))
        frames.append(g.reset_index().assign(method=method_label(loss, k, selection)))
    return pd.concat(frames, ignore_index=True)


def subject_trajectories(preds: pd.DataFrame, *, readout: str = "expectation",
                         n_subjects: int = 6) -> pd.DataFrame:
    """Ageing trajectories of a few subjects: for the ``n_subjects`` subjects with the widest
    age span (ties: more photos, then id), every clean method's prediction (averaged over
    seeds) against the true age of each of their photos. Long format: ``subject``,
    ``image_id``, ``age``, ``method``, ``predicted``, sorted by subject, method and age."""
    preds = add_readouts(check_predictions(preds))
    preds = preds[(preds["selection"] != OFFICIAL_SELECTION) & preds["subject"].notna()]
    if preds.empty or n_subjects < 1:
        return pd.DataFrame(columns=["subject", "image_id", "age", "method", "predicted"])
    per = _per_photo(preds, readout)
    photos = per.drop_duplicates("image_id")
    rank = photos.groupby("subject")["age"].agg(span=lambda a: a.max() - a.min(), n="size")
    rank = rank.reset_index().sort_values(["span", "n", "subject"],
                                          ascending=[False, False, True])
    chosen = rank["subject"].head(n_subjects).tolist()
    out = per[per["subject"].isin(chosen)]
    methods = list(dict.fromkeys(per["method"]))  # the registry's loss order
    out = out.assign(subject=pd.Categorical(out["subject"], categories=chosen, ordered=True),
                     order=out["method"].map({m: i for i, m in enumerate(methods)}))
    out = out.sort_values(["subject", "order", "age"], kind="stable")
    return (out.assign(subject=out["subject"].astype(str))
            [["subject", "image_id", "age", "method", "predicted"]].reset_index(drop=True))


PAIRED_UNITS = ("subject", "image")
PAIRED_COLUMNS = ("reference", "baseline", "unit", "n", "n_images", "mae_reference",
                  "mae_baseline", "mean_diff", "statistic", "p_value", "test", "n_seeds",
                  "diff_per_seed", "seed_spread", "beyond_seed_spread")


def seed_spread(both: pd.DataFrame) -> dict[str, object]:
    """Whether a paired difference is larger than what retraining with another seed moves:
    ``both`` holds matched rows (``seed``, ``err_ref``, ``err_base``).

    ``diff_per_seed``: reference − baseline MAE on the matched images of each seed;
    ``seed_spread``: the larger of the two methods' sample std over seeds of their MAE;
    ``beyond_seed_spread``: every seed's difference has one sign and their mean exceeds the
    spread in size (None with fewer than two seeds: no spread to compare with).

    >>> rows = pd.DataFrame({"seed": [0, 0, 1, 1], "err_ref": [1.0, 1.0, 1.2, 1.2],
    ...                      "err_base": [2.0, 2.0, 2.1, 2.1]})
    >>> out = seed_spread(rows)
    >>> out["diff_per_seed"], round(out["seed_spread"], 3), out["beyond_seed_spread"]
    ('-1.000, -0.900', 0.141, True)
    """
    per_seed = both.groupby("seed", sort=True)[["err_ref", "err_base"]].mean()
    diffs = per_seed["err_ref"] - per_seed["err_base"]
    out: dict[str, object] = {"n_seeds": len(per_seed),
                              "diff_per_seed": ", ".join(f"{d:.3f}" for d in diffs),
                              "seed_spread": float("nan"), "beyond_seed_spread": None}
    if len(per_seed) > 1:
        spread = float(per_seed.std(ddof=1).max())
        one_sign = bool((diffs > 0).all() or (diffs < 0).all())
        out.update(seed_spread=spread,
                   beyond_seed_spread=one_sign and abs(float(diffs.mean())) > spread)
    return out


def paired_tests(preds: pd.DataFrame, *, reference: str = "amr", readout: str = "expectation",
                 target: str = "age", method: str = "permutation", n_resamples: int = 9999,
                 seed: int = 0, unit: str = "subject") -> pd.DataFrame:
    """Paired tests of the reference loss's absolute errors against each other method on the
    same images and seeds (clean protocol only; official runs are excluded because their epoch
    was chosen on these very images).

    ``unit="subject"`` (default) pairs one number per subject: the mean absolute error over
    that subject's matched images and seeds. In leave-one-person-out all of a subject's images
    are predicted by one model, so their errors are not independent, and a test over images
    would count one subject's luck many times (anti-conservative p-values). Images without a
    subject are their own unit. ``unit="image"`` pairs per image and seed, labelled as such.

    Columns: ``reference``, ``baseline``, ``unit``, ``n`` (matched units), ``n_images``
    (matched images × seeds), ``mae_reference``, ``mae_baseline`` (over images), ``mean_diff``
    (reference − baseline over units; negative favours the reference), ``statistic``,
    ``p_value``, ``test``; and against the seeds (:func:`seed_spread`): ``n_seeds``,
    ``diff_per_seed``, ``seed_spread``, ``beyond_seed_spread``. Empty (with these columns) when
    the reference has no clean runs or there is no other method: a pipeline with one loss has
    nothing to pair.
    """
    if unit not in PAIRED_UNITS:
        raise ValueError(f"unit={unit!r}: expected one of {PAIRED_UNITS}")
    preds = add_readouts(check_predictions(preds), [readout])
    preds = preds[preds["selection"] != OFFICIAL_SELECTION]
    preds = preds.assign(err=(preds[f"pred_{readout}"] - preds[target].astype(float)).abs(),
                         unit=_clusters(preds).astype(str) if unit == "subject"
                         else preds["image_id"].astype(str) + "/seed"
                         + preds["seed"].astype(str))
    ref = preds[(preds["loss"] == reference) & (preds["k"].astype(str) == "adaptive")]
    if ref.empty:
        return pd.DataFrame(columns=list(PAIRED_COLUMNS))
    key = ["image_id", "seed"]
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        if loss == reference and str(k) == "adaptive":
            continue
        both = ref[key + ["unit", "err"]].merge(group[key + ["err"]], on=key,
                                                suffixes=("_ref", "_base"))
        if both.empty:
            continue
        per_unit = both.groupby("unit", sort=True)[["err_ref", "err_base"]].mean()
        test = metrics.paired_test(per_unit["err_ref"], per_unit["err_base"], method=method,
                                   n_resamples=n_resamples, seed=seed)
        # subject-free data (UTKFace): each image is its own unit, its error averaged over
        # the seeds, so n counts images once however many seeds there are
        shown = unit if unit == "image" or group["subject"].notna().any() else \
            "image (mean over seeds)"
        rows.append({"reference": reference, "baseline": method_label(loss, k, selection),
                     "unit": shown, "n": test["n"], "n_images": len(both),
                     "mae_reference": float(both["err_ref"].mean()),
                     "mae_baseline": float(both["err_base"].mean()),
                     "mean_diff": test["mean_diff"], "statistic": test["statistic"],
                     "p_value": test["p_value"], "test": test["method"],
                     **seed_spread(both)})
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


# ---------------------------------------------------------------------------------------------
# beyond the paper


def dual_protocol(preds: pd.DataFrame, *, loss: str = "amr",
                  thetas: Sequence[int] = (3, 5)) -> pd.DataFrame:
    """The same loss under the official protocol (test-selected epoch, MAE from the rounded
    expectation, CS from the argmax) and the clean one (validation-selected epoch, expectation
    for both), and the optimism gap (official − clean).

    Columns: ``protocol``, ``selection``, ``mae_readout``, ``cs_readout``, ``seeds``,
    ``n_images``, ``mae_pooled``, ``mae_subject_mean``, ``cs<θ>`` per θ, and ``setup``: the
    run settings beside the selection in which the two differ (an official twin reads whole
    photos, starts from ImageNet and predicts each photo once, whatever its clean runs do:
    ``face_crop``, ``init_from``, ``tta_flip``). When they differ, the last row is the
    difference (official − clean) of protocol *and* setup, not the optimism of test-set
    selection alone, and says so. Raises when either protocol has no runs of ``loss``.
    """
    preds = add_readouts(check_predictions(preds))
    preds = preds[(preds["loss"] == loss) & (preds["k"].astype(str) == "adaptive")]
    official = preds[preds["selection"] == OFFICIAL_SELECTION]
    clean = preds[preds["selection"] != OFFICIAL_SELECTION]
    if official.empty or clean.empty:
        raise ValueError(f"dual protocol needs runs of {loss!r} with selection "
                         f"{OFFICIAL_SELECTION!r} and with a clean selection; found "
                         f"{sorted(preds['selection'].unique())}")
    rows = []
    for name, group, mae_r, cs_r in (("official", official, OFFICIAL_READOUTS["mae"],
                                      OFFICIAL_READOUTS["cs"]),
                                     ("clean", clean, "expectation", "expectation")):
        true = group["age"].to_numpy(float)
        agg = metrics.aggregate_lopo(pred=group[f"pred_{mae_r}"].to_numpy(), true=true,
                                     subject=_clusters(group))
        cs = metrics.cumulative_score(group[f"pred_{cs_r}"].to_numpy(), true, thetas)
        row = {"protocol": OFFICIAL_LABEL if name == "official" else SELECTION_LABELS["val_best"],
               "selection": ",".join(sorted(group["selection"].unique())),
               "mae_readout": mae_r, "cs_readout": cs_r, "seeds": group["seed"].nunique(),
               "n_images": agg["n_images"], "mae_pooled": agg["mae_pooled"],
               "mae_subject_mean": agg["mae_subject_mean"]}
        row.update({f"cs{t}": float(v) for t, v in cs.items()})
        rows.append(row)
    setups = [_setup(official), _setup(clean)]
    differs = [f"{k} {setups[0][k]} (clean: {setups[1][k]})" for k in setups[0]
               if setups[0][k] != setups[1].get(k)]
    rows[0]["setup"] = "; ".join(differs)
    rows[1]["setup"] = ""
    label = ("difference (official − clean): protocol and setup" if differs
             else "optimism gap (official − clean)")
    gap = {"protocol": label, "selection": "", "mae_readout": "",
           "cs_readout": "", "seeds": np.nan, "n_images": np.nan, "setup": ""}
    for col in [c for c in rows[0] if c.startswith(("mae_pooled", "mae_subject", "cs"))
                and c not in ("cs_readout",)]:
        gap[col] = rows[0][col] - rows[1][col]
    rows.append(gap)
    return pd.DataFrame(rows)


def _recorded(group: pd.DataFrame, col: str) -> list | None:
    """The distinct values a group of runs recorded for setting ``col`` (None: no run recorded
    it, an older predictions frame), shared by the published and the dual-protocol notes."""
    return None if col not in group.columns else list(group[col].dropna().unique())


def _setup(group: pd.DataFrame) -> dict[str, str]:
    """The input settings of a group of runs that an official twin may not share with its
    clean runs (recorded runs only; several values joined)."""
    out = {}
    for col, name in (("face_crop", "face crop"), ("init_from", "start"),
                      ("tta_flip", "flip averaging")):
        values = _recorded(group, col)
        if values is None:
            continue
        values = [str(v) for v in values]
        if col == "init_from":
            values = ["age-pretrained" if v else "ImageNet" for v in values]
        out[name] = ", ".join(sorted(set(values))) or "none"
    return out


def protocol_sensitivity(preds: pd.DataFrame, *,
                         readouts: Sequence[str] = metrics.READOUTS) -> pd.DataFrame:
    """MAE (pooled and per-subject mean) and CS(5) of every method under every readout.

    Long format: ``method``, ``protocol``, ``readout``, ``mae_pooled``, ``mae_subject_mean``,
    ``cs5``, and ``mae_pooled_delta``: the change from the expectation readout.
    """
    preds = add_readouts(check_predictions(preds), readouts)
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        true = group["age"].to_numpy(float)
        for r in readouts:
            pred = group[f"pred_{r}"].to_numpy()
            agg = metrics.aggregate_lopo(pred=pred, true=true, subject=_clusters(group))
            rows.append({"method": method_label(loss, k, selection),
                         "protocol": protocol_label(selection), "readout": r,
                         "mae_pooled": agg["mae_pooled"],
                         "mae_subject_mean": agg["mae_subject_mean"],
                         "cs5": float(metrics.cumulative_score(pred, true, [5]).iloc[0])})
    table = pd.DataFrame(rows)
    base = table[table["readout"] == "expectation"].set_index("method")["mae_pooled"]
    table["mae_pooled_delta"] = table["mae_pooled"] - table["method"].map(base)
    return table


def epsilon_variants(preds: pd.DataFrame, *,
                     readouts: Sequence[str] = metrics.READOUTS) -> pd.DataFrame:
    """ε-error of every method under every readout, exact and with the official rounding
    (prediction and mean rounded, σ + 1e-4). Long format."""
    preds = add_readouts(check_predictions(preds), readouts)
    if preds["std"].isna().all():
        raise ValueError("ε-error variants need the annotators' std")
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        mean, std = group["age_mean"].to_numpy(float), group["std"].to_numpy(float)
        for r in readouts:
            pred = group[f"pred_{r}"].to_numpy()
            rows.append({
                "method": method_label(loss, k, selection),
                "protocol": protocol_label(selection), "readout": r,
                "epsilon": metrics.epsilon_summary(pred, mean, std)["epsilon"],
                "epsilon_official": metrics.epsilon_summary(
                    pred, mean, std, official_rounding=True)["epsilon"],
                "mae_vs_mean": metrics.mae(pred, mean),
            })
    return pd.DataFrame(rows)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN when it is undefined (fewer than 3 values, or a constant
    input such as a model that always predicts a one-hot distribution)."""
    from scipy import stats

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def ambiguity_calibration(preds: pd.DataFrame, *, n_bins: int = 5) -> pd.DataFrame:
    """Predicted distribution's std against the annotators' σ, per method, in ``n_bins``
    quantile bins of σ (clean-protocol runs only).

    Long format: ``method``, ``bin``, ``n``, ``sigma_mean`` (annotators), ``pred_std_mean``,
    ``abs_error_mean`` (|expectation − apparent mean|), and per method the Spearman rank
    correlation of predicted std with σ (``spearman_std_sigma``) and with the absolute error
    (``spearman_std_error``), repeated on each row of the method.
    """
    preds = add_readouts(check_predictions(preds), ["expectation"])
    preds = preds[preds["selection"] != OFFICIAL_SELECTION]
    if preds["std"].isna().any():
        raise ValueError("ambiguity calibration needs the annotators' std for every image "
                         "(CLAP2016-format data)")
    rows = []
    for (loss, k, selection), group in _method_groups(preds):
        sigma = group["std"].to_numpy(float)
        pred_std = group["pred_std"].to_numpy(float)
        err = (group["pred_expectation"] - group["age_mean"].astype(float)).abs().to_numpy()
        rho_sigma, rho_err = _spearman(pred_std, sigma), _spearman(pred_std, err)
        bins = pd.qcut(sigma, q=min(n_bins, len(np.unique(sigma))), duplicates="drop")
        frame = pd.DataFrame({"bin": bins, "sigma": sigma, "pred_std": pred_std, "err": err})
        for b, part in frame.groupby("bin", observed=True):
            rows.append({"method": method_label(loss, k, selection),
                         "bin": f"{b.left:.2f}-{b.right:.2f}",
                         "n": len(part), "sigma_mean": part["sigma"].mean(),
                         "pred_std_mean": part["pred_std"].mean(),
                         "abs_error_mean": part["err"].mean(),
                         "spearman_std_sigma": float(rho_sigma),
                         "spearman_std_error": float(rho_err)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the K ablation


def k_ablation(preds: pd.DataFrame, *, readout: str = "expectation", n_boot: int = 1000,
               ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """MAE of the mean-residue loss for each fixed K and for the adaptive K (clean protocol).

    Columns: ``k`` (text, ``"adaptive"`` last), ``k_value`` (NaN for adaptive), ``loss``,
    ``seeds``, ``n_images``, ``mae_pooled`` with subject-bootstrap CI, ``mae_subject_mean``,
    ``cs5``, and ``delta_vs_adaptive`` (positive: the fixed K is worse).
    """
    preds = check_predictions(preds)
    chosen = preds[preds["loss"].isin(["mean_residue", "amr"])
                   & (preds["selection"] != OFFICIAL_SELECTION)]
    if chosen.empty:
        raise ValueError("no mean_residue / amr runs with a clean selection in these predictions")
    table = mae_comparison(chosen, readout=readout, n_boot=n_boot, ci=ci, seed=seed)
    table = table.drop(columns=["published_mae", "published_source", "published_differs",
                                "readout", "protocol", "method"])
    table["k"] = table["k"].astype(str)
    table["k_value"] = pd.to_numeric(table["k"], errors="coerce")
    adaptive = table.loc[table["k"] == "adaptive", "mae_pooled"]
    table["delta_vs_adaptive"] = (table["mae_pooled"] - adaptive.iloc[0]) if len(adaptive) \
        else np.nan
    table = table.sort_values(["k_value"], na_position="last", kind="stable")
    cols = ["k", "k_value", "loss"] + [c for c in table.columns if c not in ("k", "k_value",
                                                                              "loss")]
    return table[cols].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# choosing predictions and histories


def is_synthetic(preds: pd.DataFrame) -> bool:
    """Whether any run in ``preds`` (or a history table) used a synthetic dataset."""
    from ageest.data import DATASETS

    return any(DATASETS[name].synthetic if name in DATASETS else False
               for name in preds["dataset"].unique())


def mae_caption(preds: pd.DataFrame, *, data: str, readout: str, ci: float) -> str:
    """The MAE comparison's caption: the data, the clean rows' readout, what the bootstrap
    resamples (subjects, or images when the data have no identities) and, when there are
    official-protocol rows, how their epoch and readout were chosen.

    >>> p = pd.DataFrame({"subject": ["a"], "selection": ["val_best"]})
    >>> mae_caption(p, data="UTKFace", readout="expectation", ci=0.95)
    'UTKFace MAE (years), expectation readout for clean rows; 95% subject-bootstrap CIs.'
    """
    unit = "subject" if preds["subject"].notna().any() else "image"
    text = f"{data} MAE (years), {readout} readout for clean rows; {ci:.0%} {unit}-bootstrap CIs."
    evaluation = protocol_phrase(preds)
    if evaluation:
        text += f" Evaluation: {evaluation}."
    if has_official(preds):
        text += (" Official rows: epoch chosen on the test set's rounded MAE (test-selected), "
                 "rounded readout.")
    return text


def protocol_phrase(preds: pd.DataFrame) -> str:
    """How the FG-NET-format runs of ``preds`` tested their subjects, for captions and
    REPORT.md: leave-one-person-out or a subject-grouped k-fold, with the folds the runs cover
    ("" for data without subjects or without a recorded protocol).

    >>> p = pd.DataFrame({"protocol": ["group-kfold"] * 2, "n_folds": [5, 5],
    ...                   "fold": ["0", "1"], "subject": ["001", "002"]})
    >>> protocol_phrase(p)
    'subject-grouped 5-fold, 2 of 5 folds (each subject in one test fold)'
    >>> protocol_phrase(p.assign(protocol="lopo", fold=["001", "002"]))
    'leave-one-person-out, 2 folds of one subject each'
    """
    if "protocol" not in preds.columns or preds["subject"].isna().all():
        return ""
    parts = []
    for protocol, group in preds.groupby(preds["protocol"].astype(str), sort=True):
        n_run = group["fold"].astype(str).nunique() if "fold" in group.columns else None
        if protocol == "lopo":
            parts.append(f"leave-one-person-out, {n_run} folds of one subject each")
        elif protocol == "group-kfold":
            k = group["n_folds"].dropna().unique() if "n_folds" in group.columns else []
            k = int(k[0]) if len(k) == 1 else None
            name = f"subject-grouped {k}-fold" if k else "subject-grouped k-fold"
            cover = (f"all {k} folds" if k and n_run == k else f"{n_run} of {k or '?'} folds")
            parts.append(f"{name}, {cover} (each subject in one test fold)")
        elif protocol != "holdout":
            parts.append(protocol)
    return "; ".join(parts)


def has_official(preds: pd.DataFrame, loss: str | None = None) -> bool:
    """Whether any run used the official code's protocol (test-selected epoch); with ``loss``:
    whether that loss (adaptive K) has runs under both protocols, as :func:`dual_protocol`
    needs."""
    official = preds["selection"] == OFFICIAL_SELECTION
    if loss is None:
        return bool(official.any())
    mine = (preds["loss"] == loss) & (preds["k"].astype(str) == "adaptive")
    return bool((mine & official).any() and (mine & ~official).any())


def formats(preds: pd.DataFrame) -> tuple[str, bool]:
    """``(main, has_clap)``: the kind the MAE tables are about (``utkface`` when UTKFace runs
    are stored, else ``fgnet``) and whether CLAP2016-format runs are there (the ε tables)."""
    from ageest.analysis.data_summary import KINDS

    present = set(preds["dataset"])
    main = "utkface" if present & set(KINDS["utkface"]) else "fgnet"
    return main, bool(present & set(KINDS["clap"]))


def by_format(preds: pd.DataFrame, kind: str, *, losses: str | Sequence[str] = "") -> pd.DataFrame:
    """The predictions of the FG-NET-format (``kind="fgnet"``), CLAP2016-format (``"clap"``)
    or UTKFace (``"utkface"``) runs, real or synthetic, restricted to ``losses`` (comma list or
    sequence; "" = every loss except the fixed-K ``mean_residue`` runs of the K ablation).

    Raises ``ValueError`` when there are none, or when both the real dataset and its synthetic
    stand-in are present (their numbers must not be pooled).
    """
    from ageest.analysis.data_summary import KINDS

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    names = [n for n in KINDS[kind] if n in set(preds["dataset"])]
    if not names:
        raise ValueError(f"no {kind} runs among the stored predictions (datasets present: "
                         f"{sorted(preds['dataset'].unique())}); train them in notebook 02")
    if len(names) > 1:
        raise ValueError(f"the results folder holds runs of both {names[0]!r} and {names[1]!r}; "
                         "use a separate results_dir for real and synthetic data")
    chosen = preds[preds["dataset"] == names[0]]
    wanted = as_list(losses)
    if wanted:
        missing = sorted(set(wanted) - set(chosen["loss"]))
        if missing:
            raise ValueError(f"losses {missing} have no {kind} runs; trained: "
                             f"{sorted(chosen['loss'].unique())}")
        return chosen[chosen["loss"].isin(wanted)]
    return chosen[chosen["loss"] != "mean_residue"]


def adaptive_k_history(history: pd.DataFrame, *, column: str = "train_k_mean") -> pd.DataFrame:
    """Per loss and epoch, the mean adaptive K of the runs (folds × seeds): ``k_mean`` (mean over
    runs), ``k_min``, ``k_max``, ``n_runs``; from the runs' ``history.csv``."""
    if column not in history:
        raise ValueError(f"history has no {column!r} column; columns: {list(history.columns)}")
    part = history[history[column].notna()]
    if part.empty:
        raise ValueError(f"no run logged {column!r}")
    table = part.groupby(["loss", "k", "epoch"])[column].agg(
        k_mean="mean", k_min="min", k_max="max", n_runs="size").reset_index()
    return table


#: the keys of :func:`aggregate`'s rows
AGGREGATE_KEYS = ("dataset", "protocol", "loss", "k", "selection")


def aggregate(preds: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
              thetas: Sequence[int] = (1, 3, 5, 10)) -> pd.DataFrame:
    """The table of ``ageest run``: one row per (dataset, protocol, loss, k, selection) over all
    finished folds and seeds, from the expected age.

    Columns: the keys, ``test_selected``, ``seeds``, ``n_runs``, ``n_folds``, ``n_images``,
    ``n_subjects``; ``mae_pooled`` (over images) and ``mae_subject_mean`` (mean of per-subject
    MAEs) each with a subject-level bootstrap CI (``_low``/``_high``; images without a subject
    are their own cluster); ``mae_seed_sd``; ``cs<θ>`` (fraction); ``epsilon`` with its CI and
    the σ counts when any image has an apparent-age std (NaN otherwise).
    """
    rows = []
    for key, grp in preds.groupby(list(AGGREGATE_KEYS), sort=True, dropna=False):
        pred = grp["expected_age"].to_numpy(dtype=np.float64)
        true = grp["age_mean"].to_numpy(dtype=np.float64)
        subj = _clusters(grp).to_numpy(dtype=object)
        lopo = metrics.aggregate_lopo(pred=pred, true=true, subject=subj)
        row: dict[str, Any] = dict(zip(AGGREGATE_KEYS, key, strict=True))
        row.update(test_selected=bool(grp["test_selected"].any()),
                   seeds=",".join(str(s) for s in sorted(grp["seed"].unique())),
                   n_runs=int(grp["run"].nunique()), n_folds=int(grp["fold"].nunique()),
                   n_images=lopo["n_images"], n_subjects=lopo["n_subjects"])
        for stat, name in (("pooled", "mae_pooled"), ("subject_mean", "mae_subject_mean")):
            b = metrics.bootstrap_mae_ci(pred, true, subj, n_boot=n_boot, ci=ci,
                                         statistic=stat, seed=seed)
            row[name], row[f"{name}_low"], row[f"{name}_high"] = lopo[name], b["low"], b["high"]
        row["mae_seed_sd"] = _seed_sd(grp, pred, true)
        for t, v in metrics.cumulative_score(pred, true, thetas=thetas).items():
            row[f"cs{int(t)}"] = float(v)
        std = pd.to_numeric(grp["std"], errors="coerce").to_numpy(dtype=np.float64)
        row["epsilon"] = row["epsilon_low"] = row["epsilon_high"] = float("nan")
        row["n_sigma_zero"] = row["n_sigma_missing"] = 0
        if np.isfinite(std).any():
            summary, b = _epsilon_with_ci(pred, true, std, subj, n_boot=n_boot, ci=ci, seed=seed)
            row.update(epsilon=summary["epsilon"], epsilon_low=b["low"], epsilon_high=b["high"],
                       n_sigma_zero=summary["n_sigma_zero"],
                       n_sigma_missing=summary["n_sigma_missing"])
        rows.append(row)
    return pd.DataFrame(rows)
