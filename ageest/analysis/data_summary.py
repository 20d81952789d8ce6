"""Data preparation for the pipeline (notebook 00): pick the real or the synthetic datasets, load
them with manifests, and summarise datasets and folds with their disjointness checks.

The pipeline has an FG-NET-format dataset (real FG-NET when a folder is given, else the
synthetic FG-NET-like faces) and a CLAP2016-format one (the APPA-REAL release, or the synthetic
CLAP-like faces), or, with ``utkface_dir``, real UTKFace faces alone (no identities: a seeded,
age-stratified train/valid/test split written as a CSV, :func:`utkface_split_csv`).
:func:`dataset_choice` and :func:`load_datasets` are the one place that decides which, so
notebooks 00, 02, 03 and 04 agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KINDS = {"fgnet": ("fgnet", "synthetic-fgnet"), "clap": ("clap2016", "synthetic-clap"),
         "utkface": ("utkface", None)}
LABELS = {"fgnet": "FG-NET format", "clap": "CLAP2016 format", "utkface": "UTKFace"}
#: how a caption names each kind's data ("FG-NET-format MAE ...", "UTKFace MAE ...")
CAPTION_LABELS = {"fgnet": "FG-NET-format", "clap": "CLAP2016-format", "utkface": "UTKFace"}
#: where notebook 00 writes the UTKFace split (under the results folder)
UTKFACE_SPLIT = Path("splits") / "utkface_split.csv"


def dataset_choice(kind: str, data_dir: str | os.PathLike | None = "") -> tuple[str, str | None]:
    """Registry name and data folder for ``kind`` (``"fgnet"`` or ``"clap"``): the real dataset
    when ``data_dir`` is given, else its synthetic stand-in (folder ``None``: the default one).

    >>> dataset_choice("fgnet", ""), dataset_choice("clap", "")
    (('synthetic-fgnet', None), ('synthetic-clap', None))
    >>> dataset_choice("fgnet", "/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: fgnet_dir='/no/such/folder': no such folder; give the FG-NET format dataset folder, or '' for synthetic data
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    real, synthetic = KINDS[kind]
    if synthetic is None and not data_dir:
        raise ValueError(f"{kind}_dir is empty: {LABELS[kind]} has no synthetic stand-in; pass "
                         f"the folder of its images (ageest reproduce --{kind} DIR)")
    if data_dir:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{kind}_dir={str(data_dir)!r}: no such folder; give the "
                                    f"{LABELS[kind]} dataset folder, or '' for synthetic data")
        return real, str(path.resolve())
    return synthetic, None


def load(kind: str, data_dir: str | os.PathLike | None, *, out: str | os.PathLike,
         size: int = 64, on_bad: str = "raise",
         loader_options: Mapping[str, Any] | None = None,
         identical_images: str | None = None) -> tuple[pd.DataFrame, Any]:
    """Load the ``kind`` dataset (see :func:`dataset_choice`) and verify or write its manifest
    at ``out/data/<name>.manifest.json`` (counts, age histogram, sha256 per file).

    Returns the dataset table and its :class:`ageest.data.DatasetInfo`.
    """
    from ageest.data import get_dataset

    name, folder = dataset_choice(kind, data_dir)
    manifest = Path(out) / "data" / f"{name}.manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    return get_dataset(name, data_dir=folder, size=size, on_bad=on_bad, manifest=manifest,
                       loader_options=loader_options, identical_images=identical_images)


def utkface_split_csv(utkface_dir: str | os.PathLike, out: str | os.PathLike, *,
                      split_csv: str | os.PathLike | None = "", seed: int = 0,
                      fractions=None, on_bad: str = "raise",
                      df: pd.DataFrame | None = None, identical_images: str | None = None
                      ) -> Path:
    """The split the UTKFace runs use, as a CSV (``image_id, split``): the user's ``split_csv``
    (checked against the images), else a seeded, age-stratified 60/10/30 split
    (:func:`ageest.data.splits.stratified_split`) written to ``out/splits/utkface_split.csv``.
    An existing file there with another split is an error, never overwritten. ``df``: the
    UTKFace table when the caller has loaded it already (else it is loaded here)."""
    from ageest.data import get_dataset
    from ageest.data.splits import SPLIT_FRACTIONS, apply_split_csv, stratified_split
    from ageest.files import atomic_write_text

    if df is None:
        name, folder = dataset_choice("utkface", utkface_dir)
        df, _ = get_dataset(name, data_dir=folder, on_bad=on_bad,
                            identical_images=identical_images)
    if split_csv:
        apply_split_csv(df, split_csv)  # raises naming what does not match
        return Path(split_csv).expanduser().resolve()
    split = stratified_split(df, fractions=tuple(fractions or SPLIT_FRACTIONS), seed=seed)
    path = Path(out) / UTKFACE_SPLIT
    text = split.to_csv(index=False)
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        raise FileExistsError(f"{path} holds another split (other images, seed or fractions); "
                              "delete it, use another results_dir, or pass it as utkface_split")
    if not path.is_file():
        atomic_write_text(path, text)
    return path.resolve()


def load_datasets(*, fgnet_dir: str = "", clap_dir: str = "", utkface_dir: str = "",
                  utkface_split: str = "", out: str | os.PathLike, size: int = 64,
                  on_bad: str = "raise", split_seed: int = 0, split_fractions=None,
                  identical_images: str | None = None, clap: bool = True
                  ) -> dict[str, tuple[pd.DataFrame, Any]]:
    """The pipeline's datasets by label: UTKFace alone (with its split, see
    :func:`utkface_split_csv`) when ``utkface_dir`` is given, else the FG-NET-format and the
    CLAP2016-format dataset (real or synthetic, :func:`dataset_choice`; ``clap=False``: the
    FG-NET-format one alone, as the fgnet profile trains no CLAP2016 runs). ``identical_images``:
    the identical-image policy (None = each dataset's own, see :func:`ageest.data.get_dataset`),
    applied before any split."""
    policy = {"on_bad": on_bad, "identical_images": identical_images}
    if utkface_dir:
        from ageest.data.splits import apply_split_csv

        df, info = load("utkface", utkface_dir, out=out, size=size, **policy)
        split = utkface_split_csv(utkface_dir, out, split_csv=utkface_split, seed=split_seed,
                                  fractions=split_fractions, df=df, **policy)
        df = apply_split_csv(df, split)  # the loader's own split_csv step, on the loaded table
        df.attrs["split_csv"] = str(split)
        return {LABELS["utkface"]: (df, info)}
    if clap_dir and not clap:
        raise ValueError("clap_dir is given but clap_losses is empty: name the CLAP2016-format "
                         "losses, or leave clap_dir empty")
    datasets = {LABELS["fgnet"]: load("fgnet", fgnet_dir, out=out, size=size, **policy)}
    if clap:
        datasets[LABELS["clap"]] = load("clap", clap_dir, out=out, size=size, **policy)
    return datasets


def dataset_folds(datasets: Mapping[str, tuple[pd.DataFrame, Any]], *, protocol: str,
                  n_folds: int, val_fraction: float, split_seed: int
                  ) -> dict[str, tuple[pd.DataFrame, list]]:
    """Each dataset with its folds: the FG-NET-format data under ``protocol``, the others
    (CLAP2016, UTKFace) under their train/valid/test split (``official``)."""
    from ageest.data import make_folds

    out = {}
    for label, (df, _) in datasets.items():
        if label == LABELS["fgnet"]:
            folds = make_folds(df, protocol, n_folds=n_folds, val_fraction=val_fraction,
                               seed=split_seed)
        else:
            folds = make_folds(df, "holdout")
        out[label] = (df, folds)
    return out


def data_metrics(datasets: Mapping[str, tuple[pd.DataFrame, Any]],
                 folds: Mapping[str, tuple[pd.DataFrame, list]], splits: pd.DataFrame,
                 filters: pd.DataFrame | None = None, *, protocol: str) -> dict[str, Any]:
    """Notebook 00's ``metrics.json``: per dataset its name, counts and folds (UTKFace: the
    split file and the kept names that lack a field), and whether every fold is disjoint."""
    out: dict[str, Any] = {"synthetic": any(bool(info.synthetic) for _, info in
                                            datasets.values())}
    for label, (df, info) in datasets.items():
        kind = next(k for k, v in LABELS.items() if v == label)
        entry: dict[str, Any] = {"dataset": info.name, "images": len(df),
                                 "subjects": int(df["subject"].nunique()),
                                 "folds": len(folds[label][1]),
                                 "identical": {k.removeprefix("identical_"): v
                                               for k, v in identical_counts(df).items()}}
        if kind == "fgnet":
            entry["protocol"] = protocol
            entry["grey_images"] = grey_count(df)
        if kind == "clap":
            entry.update(sigma_mean=float(df["std"].mean()),
                         filters=[] if filters is None else filters.to_dict("records"))
        if kind == "utkface":
            entry.update(split_csv=df.attrs.get("split_csv"),
                         malformed_names=len(df.attrs.get("malformed_names", [])),
                         split=df["split"].value_counts().to_dict())
        out[kind] = entry
    out["all_folds_disjoint"] = bool((splits["disjoint"] == "passed").all())
    return out


def data_summary(datasets: Mapping[str, tuple[pd.DataFrame, Any]]) -> pd.DataFrame:
    """One row per dataset: name, synthetic or real, images, subjects, age range and median,
    images per split, annotators' σ (mean) where known, manifest check result, grey
    (single-channel) images, which the loader turns into RGB, and what the
    identical-image policy found and did (groups of identical images, their files, label
    conflicts, groups kept once, files dropped)."""
    rows = []
    for label, (df, info) in datasets.items():
        split = df["split"].astype("string").fillna("none").value_counts()
        std = pd.to_numeric(df["std"], errors="coerce")
        rows.append({
            "dataset": label, "name": info.name, "synthetic": bool(info.synthetic),
            "images": len(df), "subjects": int(df["subject"].dropna().nunique()),
            "age_min": int(df["age"].min()), "age_max": int(df["age"].max()),
            "age_median": float(df["age"].median()),
            "classes": f"{info.start_age}-{info.end_age} ({info.num_classes})",
            "splits": ", ".join(f"{k} {v}" for k, v in split.sort_index().items()),
            "sigma_mean": float(std.mean()) if std.notna().any() else np.nan,
            "manifest": info.extra.get("manifest_report", "written"),
            "grey_images": grey_count(df),
            **identical_counts(df),
        })
        if "malformed_names" in df.attrs and info.name == "utkface":
            # UTKFace's few names with a field missing: kept (they carry the age), counted here
            rows[-1]["names_missing_a_field"] = len(df.attrs["malformed_names"])
    return pd.DataFrame(rows)


#: PIL modes of single-channel (grey) images: decoded to RGB by repeating the channel
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def grey_count(df: pd.DataFrame) -> int:
    """How many of the table's images are stored single-channel (grey scans: FG-NET has 175);
    the loader converts them to RGB. Reads each file's header only, once per table: the count
    is kept in ``df.attrs`` (the data summary and notebook 00's metrics both ask)."""
    from PIL import Image

    if "grey_images" not in df.attrs:
        n = 0
        for path in df["path"]:
            with Image.open(path) as im:
                n += im.mode in GREY_MODES
        df.attrs["grey_images"] = n
    return df.attrs["grey_images"]


def identical_counts(df: pd.DataFrame) -> dict[str, Any]:
    """The identical-image counts of a loaded table (``df.attrs["identical"]``; zeros and the
    policy ``not checked`` when the images were not verified).

    >>> identical_counts(pd.DataFrame())["identical_policy"]
    'not checked'
    """
    found = df.attrs.get("identical") or {}
    return {"identical_policy": found.get("policy", "not checked"),
            "identical_groups": int(found.get("groups", 0)),
            "identical_files": int(found.get("files", 0)),
            "label_conflicts": int(found.get("label_conflicts", 0)),
            "identical_kept": int(found.get("kept", 0)),
            "identical_dropped": int(found.get("dropped", 0))}


def clap_filters(clean: pd.DataFrame, clap_dir: str | os.PathLike | None, *, size: int = 64
                 ) -> pd.DataFrame:
    """What the CLAP2016 loader's rules drop, per split, under the clean protocol (``clean``:
    the table as notebook 00 loaded it, with the loader's default, clean options) and under the
    official one (the record's ``ignore_splits``/``min_pixels``, :mod:`ageest.official`; loaded
    here), and how many kept images have a raters' σ of 0 (their ε takes the formula's limit).
    One row per (protocol, split): ``kept``, ``dropped_ignore_list``, ``dropped_min_pixels``,
    ``sigma_zero``."""
    from ageest.data import get_dataset
    from ageest.official import official_values

    name, folder = dataset_choice("clap", clap_dir)
    official = {k: v for k, v in official_values("clap", "official").items()
                if k in ("ignore_splits", "min_pixels")}
    official_df, _ = get_dataset(name, data_dir=folder, size=size, loader_options=official)
    rows = []
    for protocol, df in (("clean", clean), ("official", official_df)):
        dropped = df.attrs.get("dropped", {})
        for split in ("train", "valid", "test"):
            part = df[df["split"] == split]
            rows.append({
                "protocol": protocol, "split": split, "kept": len(part),
                "dropped_ignore_list": int(dropped.get("ignore_list", {}).get(split, 0)),
                "dropped_min_pixels": int(dropped.get("min_pixels", {}).get(split, 0)),
                "sigma_zero": int((pd.to_numeric(part["std"], errors="coerce") == 0).sum()),
            })
    return pd.DataFrame(rows)


def split_summary(df: pd.DataFrame, folds: list, *, dataset: str) -> pd.DataFrame:
    """One row per fold: images and subjects per part, and the overlaps between parts (subjects
    and files), each of which :func:`ageest.data.check_disjoint` requires to be zero; the check
    is run again here and its verdict shown in ``disjoint``."""
    from ageest.data import LeakageError, check_disjoint

    rows = []
    for fold in folds:
        parts = {"train": fold.train, "val": fold.val, "test": fold.test}
        row: dict[str, Any] = {"dataset": dataset, "fold": fold.fold_id}
        subjects = {}
        files = {}
        for part, idx in parts.items():
            sub = df.iloc[idx]
            subjects[part] = set(sub["subject"].dropna().astype(str))
            files[part] = set(sub["path"].astype(str))
            row[f"{part}_images"] = len(idx)
            row[f"{part}_subjects"] = len(subjects[part])
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            row[f"shared_subjects_{a}_{b}"] = len(subjects[a] & subjects[b])
            row[f"shared_files_{a}_{b}"] = len(files[a] & files[b])
        try:
            check_disjoint(df, fold)
            row["disjoint"] = "passed"
        except LeakageError as exc:
            row["disjoint"] = f"FAILED: {exc}"
        rows.append(row)
    return pd.DataFrame(rows)


def split_summaries(datasets: Mapping[str, tuple[pd.DataFrame, list]]) -> pd.DataFrame:
    """:func:`split_summary` of several datasets, ``{label: (table, folds)}``, in one table."""
    return pd.concat([split_summary(df, folds, dataset=label)
                      for label, (df, folds) in datasets.items()], ignore_index=True)


def face_grid_picks(df: pd.DataFrame, *, n_rows: int = 4, n_cols: int = 8, seed: int = 0
                    ) -> list[list[tuple[str, int]]]:
    """The images of :func:`ageest.plots.face_grid`, as rows of ``(path, age)``: with subjects,
    one row per subject (those with the widest age span) at increasing ages; without, each row
    samples images at evenly spaced ages."""
    rng = np.random.default_rng(seed)
    rows: list[list[tuple[str, int]]] = []
    if df["subject"].notna().any():
        span = df.groupby("subject")["age"].agg(lambda a: a.max() - a.min())
        for subject in span.sort_values(ascending=False, kind="stable").index[:n_rows]:
            sub = df[df["subject"] == subject].sort_values("age")
            take = np.unique(np.linspace(0, len(sub) - 1, min(n_cols, len(sub))).round()
                             .astype(int))
            rows.append([(sub["path"].iloc[i], int(sub["age"].iloc[i])) for i in take])
    else:
        targets = np.linspace(df["age"].min(), df["age"].max(), n_cols)
        for _ in range(n_rows):
            row = []
            for t in targets:
                near = df.iloc[(df["age"] - t).abs().argsort()[:10]]
                pick = near.iloc[int(rng.integers(len(near)))]
                row.append((pick["path"], int(pick["age"])))
            rows.append(row)
    return rows
