"""Protocols: LOPO, group K-fold and holdout (the table's own train/valid/test split), with
subject-disjoint validation and leakage checks that name the overlapping subjects or files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ageest.data import DataError, Fold, LeakageError, check_disjoint, make_folds
from ageest.data.splits import PROTOCOLS


def table(n_subjects: int = 12, per_subject: int = 4, *, split: bool = False) -> pd.DataFrame:
    """A dataset table without images (splits never open files)."""
    rows = []
    for s in range(n_subjects):
        for j in range(per_subject):
            rows.append({"path": f"/d/{s:03d}_{j}.jpg", "age": s + j, "subject": f"{s:03d}",
                         "image_id": f"{s:03d}_{j}"})
    df = pd.DataFrame(rows)
    df["subject"] = df["subject"].astype("string")
    if split:  # subject-disjoint holdout split: subject s -> train/valid/test by s % 3
        parts = np.array(["train", "valid", "test"])[df["subject"].astype(int).to_numpy() % 3]
        df["split"] = pd.array(parts, dtype="string")
    return df


def subjects(df: pd.DataFrame, pos: np.ndarray) -> set[str]:
    return set(df["subject"].iloc[pos])


def test_lopo_one_fold_per_subject_with_disjoint_validation():
    df = table()
    folds = make_folds(df, "lopo", val_fraction=0.25, seed=0)
    assert [f.fold_id for f in folds] == [f"{s:03d}" for s in range(12)]
    for f in folds:
        assert subjects(df, f.test) == {f.fold_id}
        assert f.fold_id not in subjects(df, f.train) | subjects(df, f.val)
        assert not subjects(df, f.train) & subjects(df, f.val)
        assert len(subjects(df, f.val)) == 3  # ceil(0.25 * 11 training subjects)
        # every image is in exactly one part
        allpos = np.concatenate([f.train, f.val, f.test])
        assert sorted(allpos.tolist()) == list(range(len(df)))
        assert all(p.dtype == np.int64 for p in (f.train, f.val, f.test))


def test_group_kfold_covers_every_image_once():
    df = table(n_subjects=10)
    folds = make_folds(df, "group-kfold", n_folds=5, val_fraction=0.2)
    assert [f.fold_id for f in folds] == ["0", "1", "2", "3", "4"]
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(len(df)))
    for f in folds:
        assert len(subjects(df, f.test)) == 2
        assert not (subjects(df, f.test) & (subjects(df, f.train) | subjects(df, f.val)))


def test_validation_carve_depends_on_seed_only():
    df = table()
    a = make_folds(df, "group-kfold", n_folds=3, seed=1)
    b = make_folds(df, "group-kfold", n_folds=3, seed=1)
    c = make_folds(df, "group-kfold", n_folds=3, seed=2)
    assert all(np.array_equal(x.val, y.val) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, c, strict=True))
    assert any(not np.array_equal(x.val, y.val) for x, y in zip(a, c, strict=True))


def test_no_validation():
    folds = make_folds(table(), "lopo", val_fraction=0)
    assert all(len(f.val) == 0 for f in folds)


def test_holdout_protocol_uses_split_column():
    df = table(split=True)
    (fold,) = make_folds(df, "holdout")
    assert fold.fold_id == "holdout"
    assert (df["split"].iloc[fold.train] == "train").all()
    assert (df["split"].iloc[fold.val] == "valid").all()
    assert (df["split"].iloc[fold.test] == "test").all()


def test_holdout_split_that_leaks_subjects_is_refused():
    df = table(split=True)
    # each subject's images spread over all three splits
    df["split"] = pd.array(np.array(["train", "valid", "test"])[np.arange(len(df)) % 3],
                           dtype="string")
    with pytest.raises(LeakageError, match=r"train/val share \d+ subject\(s\): \['000'"):
        make_folds(df, "holdout")


def test_holdout_without_valid_carves_from_train_and_warns():
    df = table()
    df["split"] = pd.array(np.where(df["subject"] < "009", "train", "test"), dtype="string")
    with pytest.warns(UserWarning, match="no 'valid' rows"):
        (fold,) = make_folds(df, "holdout", val_fraction=0.2)
    assert len(fold.val) and not subjects(df, fold.val) & subjects(df, fold.train)


def test_holdout_needs_a_split_column():
    with pytest.raises(DataError, match="needs a split column"):
        make_folds(table(), "holdout")


def test_unknown_subjects():
    df = table(n_subjects=3)
    df.loc[[0, 1], "subject"] = pd.NA
    with pytest.raises(DataError, match="2 image.*have no subject.*group-kfold"):
        make_folds(df, "lopo")
    # group-kfold: each unknown image is its own group
    folds = make_folds(df, "group-kfold", n_folds=3, val_fraction=0)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(len(df)))


def test_bad_arguments():
    df = table(n_subjects=3)
    with pytest.raises(ValueError, match="protocol='loso'"):
        make_folds(df, "loso")
    with pytest.raises(DataError, match="n_folds=5 must be between 2 and the number of subjects"):
        make_folds(df, "group-kfold", n_folds=5)
    with pytest.raises(DataError, match="only 1 training subject"):
        make_folds(table(n_subjects=2), "lopo", val_fraction=0.5)


def test_check_disjoint_names_subjects_and_files():
    df = table(n_subjects=4)
    with pytest.raises(LeakageError, match=r"fold x: train/test share 1 subject\(s\): \['001'\]"):
        check_disjoint(df, Fold("x", np.array([0, 4]), np.array([8]), np.array([5])))
    # the same file listed twice under different subjects (a duplicated row)
    dup = pd.concat([df, df.iloc[[0]].assign(subject="999")], ignore_index=True)
    with pytest.raises(LeakageError, match=r"train/test share 1 file\(s\): \['/d/000_0.jpg'\]"):
        check_disjoint(dup, np.array([0]), None, np.array([len(dup) - 1]))
    with pytest.raises(LeakageError, match=r"train/val share 1 row"):
        check_disjoint(df, np.array([0, 1]), np.array([1]), np.array([8]))
    check_disjoint(df, np.array([0, 1]), np.array([4]), np.array([8]))  # fine: no error


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_returns_checked_folds(protocol):
    df = table(split=protocol == "holdout")
    folds = make_folds(df, protocol, n_folds=3)
    for f in folds:
        check_disjoint(df, f)
        assert set(f.sizes()) == {"train", "val", "test"} and f.sizes()["test"] > 0
