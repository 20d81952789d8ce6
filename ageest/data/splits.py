"""Evaluation protocols on scikit-learn's group splitters, with leakage checks.

=============== ==================================================== =======================
protocol        test folds                                           fold ids
=============== ==================================================== =======================
``lopo``        :class:`~sklearn.model_selection.LeaveOneGroupOut`   the subject id
                over ``subject`` (FG-NET: 82 folds)
``group-kfold`` :class:`~sklearn.model_selection.GroupKFold`          ``"0"`` .. ``"n-1"``
                (``n_folds`` subject-disjoint folds)
``holdout``     the table's ``split`` column (train/valid/test: a     ``"holdout"``
                dataset's own split, or a split CSV)
=============== ==================================================== =======================

For ``lopo`` and ``group-kfold`` a validation set is carved from each fold's *training
subjects* with :class:`~sklearn.model_selection.GroupShuffleSplit` (``val_fraction`` of the
subjects), so validation is subject-disjoint from both training and test and model selection
never sees the test subject. For ``holdout`` the validation set is the ``valid`` split.
(``holdout`` is named apart from the *official protocol*, the official code's way of training
and selecting: :mod:`ageest.official`.)

Images without a subject (UTKFace, CLAP2016) are their own group under ``group-kfold`` (no
identity-leakage check is possible for them); ``lopo`` requires every subject to be known.
Every fold is passed through :func:`check_disjoint` before it is returned.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, LeaveOneGroupOut

from ageest.data.integrity import DataError, LeakageError

PROTOCOLS = ("lopo", "group-kfold", "holdout")


@dataclass
class Fold:
    """One train/validation/test partition, as integer positions into the dataset table."""

    fold_id: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Number of images per part."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _groups(df: pd.DataFrame, *, require: bool) -> np.ndarray:
    """Group label per row: the subject where known, else a group of its own (the image)."""
    if "subject" not in df.columns:
        subj = pd.Series(pd.NA, index=df.index, dtype="string")
    else:
        subj = df["subject"].astype("string")
    unknown = subj.isna().to_numpy()
    if require and unknown.any():
        examples = df.loc[unknown, "path"].head(5).tolist() if "path" in df else []
        raise DataError(
            f"{int(unknown.sum())} image(s) have no subject, e.g. {examples}; the lopo protocol "
            "needs every subject (use protocol='group-kfold' or fill the subject column)"
        )
    ids = df["image_id"].astype(str) if "image_id" in df else pd.Series(
        np.arange(len(df)).astype(str), index=df.index)
    groups = np.where(unknown, "\x00image:" + ids.to_numpy(dtype=object),
                      subj.fillna("").to_numpy(dtype=object))
    return groups.astype(object)


def _carve_val(train: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int,
               fold_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``train`` positions into (train, val) by whole groups."""
    if val_fraction <= 0:
        return train, np.array([], dtype=np.int64)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
    n_groups = len(np.unique(groups[train]))
    if n_groups < 2:
        raise DataError(f"fold {fold_id}: only {n_groups} training subject(s); cannot carve a "
                        "subject-disjoint validation set (use val_fraction=0)")
    gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    tr, va = next(gss.split(train, groups=groups[train]))
    return np.sort(train[tr]), np.sort(train[va])


def make_folds(df: pd.DataFrame, protocol: str, *, n_folds: int = 5, val_fraction: float = 0.15,
               seed: int = 0) -> list[Fold]:
    """Partition a dataset table into folds under ``protocol``.

    Parameters
    ----------
    df : DataFrame
        Dataset table (``subject``, ``image_id``, ``path``; ``split`` for ``holdout``).
    protocol : {"lopo", "group-kfold", "holdout"}
        See the module docstring.
    n_folds : int
        Number of folds for ``group-kfold``.
    val_fraction : float
        Share of each fold's training *subjects* moved to validation (``lopo``,
        ``group-kfold``; and ``holdout`` when the table has no ``valid`` rows). 0 = none.
    seed : int
        Seed of the validation carve (the test folds themselves are deterministic).

    Returns
    -------
    list of Fold
        Positions (``np.int64`` arrays, sorted) into ``df``; each fold passed
        :func:`check_disjoint`.

    Examples
    --------
    >>> df = pd.DataFrame({"subject": list("aabbccdd"), "path": [f"{i}.jpg" for i in range(8)],
    ...                    "image_id": [str(i) for i in range(8)], "age": range(8)})
    >>> folds = make_folds(df, "lopo", val_fraction=0.34)
    >>> [f.fold_id for f in folds], folds[0].test.tolist()
    (['a', 'b', 'c', 'd'], [0, 1])
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {PROTOCOLS}")
    if len(df) == 0:
        raise DataError("make_folds: the dataset table is empty")
    positions = np.arange(len(df), dtype=np.int64)
    folds: list[Fold] = []
    if protocol == "holdout":
        if "split" not in df.columns or df["split"].isna().all():
            raise DataError("protocol 'holdout' needs a split column with train/valid/test; "
                            "this dataset has none (use lopo or group-kfold)")
        split = df["split"].astype("string").fillna("").to_numpy(dtype=object)
        unknown = sorted(set(split) - {"train", "valid", "test", ""})
        if unknown:
            raise DataError(f"split column has values {unknown}; expected train/valid/test")
        n_none = int((split == "").sum())
        if n_none:
            warnings.warn(f"holdout protocol: {n_none} image(s) have no split and are unused",
                          stacklevel=2)
        train, val, test = (positions[split == s] for s in ("train", "valid", "test"))
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"holdout split has {len(train)} train and {len(test)} test "
                            "images; both must be non-empty")
        if len(val) == 0 and val_fraction > 0:
            warnings.warn("holdout protocol: no 'valid' rows; carving validation from train "
                          f"(val_fraction={val_fraction}, by subject)", stacklevel=2)
            train, val = _carve_val(train, _groups(df, require=False), val_fraction, seed,
                                    "holdout")
        folds.append(Fold("holdout", train, val, test))
    else:
        groups = _groups(df, require=protocol == "lopo")
        n_groups = len(np.unique(groups))
        if protocol == "lopo":
            if n_groups < 2:
                raise DataError(f"lopo needs at least 2 subjects; found {n_groups}")
            splitter = LeaveOneGroupOut()
        else:
            if not 2 <= n_folds <= n_groups:
                raise DataError(f"group-kfold: n_folds={n_folds} must be between 2 and the "
                                f"number of subjects ({n_groups})")
            splitter = GroupKFold(n_splits=n_folds)
        for i, (tr, te) in enumerate(splitter.split(positions, groups=groups)):
            fold_id = str(groups[te[0]]) if protocol == "lopo" else str(i)
            train, val = _carve_val(positions[tr], groups, val_fraction, seed, fold_id)
            folds.append(Fold(fold_id, train, val, np.sort(positions[te])))
    for fold in folds:
        check_disjoint(df, fold)
    return folds


def check_disjoint(df: pd.DataFrame, fold_or_train: Fold | np.ndarray,
                   val: np.ndarray | None = None, test: np.ndarray | None = None, *,
                   fold_id: str | None = None) -> None:
    """Raise :class:`LeakageError` if train, validation and test share a subject or a file.

    Parameters
    ----------
    df : DataFrame
        The dataset table the positions index.
    fold_or_train : Fold or array of int
        A :class:`Fold`, or the training positions (then give ``val`` and ``test``).
    val, test : array of int, optional
        Validation and test positions.
    fold_id : str, optional
        Named in the error message.

    Raises
    ------
    LeakageError
        Naming the overlapping subjects (where known), files (``path``/``image_id``) or
        positions, and between which parts.
    """
    if isinstance(fold_or_train, Fold):
        fold_id = fold_or_train.fold_id if fold_id is None else fold_id
        parts = {"train": fold_or_train.train, "val": fold_or_train.val,
                 "test": fold_or_train.test}
    else:
        parts = {"train": fold_or_train, "val": val, "test": test}
    parts = {k: np.asarray(v, dtype=np.int64) for k, v in parts.items() if v is not None}
    problems: list[str] = []
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = parts[a], parts[b]
            both = np.intersect1d(pa, pb)
            if len(both):
                problems.append(f"{a}/{b} share {len(both)} row(s): {both[:10].tolist()}")
                continue
            for col, what in (("subject", "subject(s)"), ("path", "file(s)"),
                              ("image_id", "image id(s)")):
                if col not in df.columns:
                    continue
                va = df[col].iloc[pa].dropna().astype(str)
                vb = df[col].iloc[pb].dropna().astype(str)
                shared = sorted(set(va) & set(vb))
                if shared:
                    problems.append(f"{a}/{b} share {len(shared)} {what}: {shared[:10]}")
    if problems:
        where = f"fold {fold_id}: " if fold_id is not None else ""
        raise LeakageError(
            where + "; ".join(problems) + ". Train, validation and test must not share "
            "subjects or files: fix the split column or the subject ids (or duplicated files)."
        )


__all__ = ["PROTOCOLS", "Fold", "check_disjoint", "make_folds"]


#: train / valid / test shares of :func:`stratified_split` (the UTKFace profile's 60/10/30)
SPLIT_FRACTIONS = (0.6, 0.1, 0.3)


def _age_strata(ages: np.ndarray, width: int, minimum: int) -> np.ndarray:
    """Age bins of ``width`` years, a bin with fewer than ``minimum`` images merged into its
    neighbour (scikit-learn's stratification needs a few images per stratum)."""
    bins = (ages // width).astype(np.int64)
    labels = sorted(set(bins.tolist()))
    counts = {b: int((bins == b).sum()) for b in labels}
    merged = {}
    pending: list[int] = []
    for b in labels:
        pending.append(b)
        if sum(counts[p] for p in pending) >= minimum:
            merged.update(dict.fromkeys(pending, pending[-1]))
            pending = []
    last = max(merged.values()) if merged else labels[-1]
    merged.update(dict.fromkeys(pending, last))  # the oldest few join the last full bin
    return np.array([merged[b] for b in bins])


def stratified_split(df: pd.DataFrame, *, fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
                     seed: int = 0, bin_width: int = 5) -> pd.DataFrame:
    """A seeded, age-stratified train / valid / test split of a dataset without identities
    (UTKFace): scikit-learn's ``train_test_split`` twice, stratified on ``bin_width``-year age
    bins. Returns ``image_id, split`` rows in the table's order (a CSV anyone can reuse with
    ``split_csv``).

    >>> df = pd.DataFrame({"image_id": [str(i) for i in range(100)], "age": range(100)})
    >>> s = stratified_split(df, seed=0)
    >>> s["split"].value_counts().to_dict()
    {'train': 60, 'test': 30, 'valid': 10}
    """
    from sklearn.model_selection import train_test_split

    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9 \
            or fractions[0] == 0 or fractions[2] == 0:
        raise ValueError(f"split fractions {fractions}: expected train, valid, test shares "
                         "that sum to 1 (train and test > 0)")
    ages = df["age"].to_numpy(dtype=np.int64)
    positions = np.arange(len(df))
    strata = _age_strata(ages, bin_width, minimum=max(10, int(np.ceil(3 / min(
        f for f in fractions if f > 0)))))
    n_test, n_val = (int(round(f * len(df))) for f in (fractions[2], fractions[1]))
    rest, test = train_test_split(positions, test_size=n_test, random_state=seed,
                                  stratify=strata)
    split = np.full(len(df), "train", dtype=object)
    split[test] = "test"
    if n_val > 0:
        _, val = train_test_split(rest, test_size=n_val, random_state=seed,
                                  stratify=strata[rest])
        split[val] = "valid"
    return pd.DataFrame({"image_id": df["image_id"].astype(str).to_numpy(), "split": split})


def apply_split_csv(df: pd.DataFrame, path) -> pd.DataFrame:
    """The table with its ``split`` column from a split CSV (``image_id, split``; what
    :func:`stratified_split` writes). Every image must be listed once, with train, valid or
    test; an id the table lacks is an error too (the CSV belongs to another copy)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise DataError(f"split CSV {path}: no such file; pass a CSV with image_id,split "
                        "(ageest writes one to results/<profile>/splits/)")
    table = pd.read_csv(path, dtype=str)
    missing = [c for c in ("image_id", "split") if c not in table.columns]
    if missing:
        raise DataError(f"split CSV {path}: no column(s) {missing}; expected image_id,split")
    bad = sorted(set(table["split"]) - {"train", "valid", "test"})
    if bad:
        raise DataError(f"split CSV {path}: split values {bad}; expected train, valid, test")
    dup = table["image_id"][table["image_id"].duplicated()].tolist()
    if dup:
        raise DataError(f"split CSV {path}: image ids listed twice, e.g. {dup[:3]}")
    mapping = dict(zip(table["image_id"], table["split"], strict=True))
    ids = df["image_id"].astype(str)
    unlisted = ids[~ids.isin(mapping)].tolist()
    foreign = sorted(set(mapping) - set(ids))
    if unlisted or foreign:
        raise DataError(f"split CSV {path} does not match the dataset: {len(unlisted)} image(s) "
                        f"not listed (e.g. {unlisted[:3]}), {len(foreign)} listed id(s) not in "
                        f"it (e.g. {foreign[:3]}); write a split for this copy")
    out = df.copy()
    out["split"] = ids.map(mapping).astype("string").to_numpy()
    return out
