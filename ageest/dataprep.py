"""Data preparation for the pipeline (notebook 00): pick the real or the synthetic datasets, load
them with manifests, and summarise datasets and folds with their disjointness checks.

The pipeline always has an FG-NET-format dataset (real FG-NET when a folder is given, else the
synthetic FG-NET-like faces) and a CLAP2016-format one (the APPA-REAL release, or the synthetic
CLAP-like faces). :func:`dataset_choice` is the one place that decides which, so notebooks 00, 02
and 04 agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KINDS = {"fgnet": ("fgnet", "synthetic-fgnet"), "clap": ("clap2016", "synthetic-clap")}
LABELS = {"fgnet": "FG-NET format", "clap": "CLAP2016 format"}


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
    if data_dir:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{kind}_dir={str(data_dir)!r}: no such folder; give the "
                                    f"{LABELS[kind]} dataset folder, or '' for synthetic data")
        return real, str(path.resolve())
    return synthetic, None


def load(kind: str, data_dir: str | os.PathLike | None, *, out: str | os.PathLike,
         size: int = 64, on_bad: str = "raise") -> tuple[pd.DataFrame, Any]:
    """Load the ``kind`` dataset (see :func:`dataset_choice`) and verify or write its manifest
    at ``out/data/<name>.manifest.json`` (counts, age histogram, sha256 per file).

    Returns the dataset table and its :class:`ageest.data.DatasetInfo`.
    """
    from ageest.data import get_dataset

    name, folder = dataset_choice(kind, data_dir)
    manifest = Path(out) / "data" / f"{name}.manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    return get_dataset(name, data_dir=folder, size=size, on_bad=on_bad, manifest=manifest)


def data_summary(datasets: Mapping[str, tuple[pd.DataFrame, Any]]) -> pd.DataFrame:
    """One row per dataset: name, synthetic or real, images, subjects, age range and median,
    images per split, annotators' σ (mean) where known, manifest check result."""
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
        })
    return pd.DataFrame(rows)


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
