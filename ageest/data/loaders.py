"""Real-format loaders: read the paper's datasets exactly as researchers have them on disk.

Every loader returns one :class:`pandas.DataFrame`, one row per image, with at least

=========== ========================================================================
column      meaning
=========== ========================================================================
path        absolute path of the image (str)
age         training label (int): the real age, or the rounded apparent mean (CLAP)
age_mean    float: the apparent-age mean for CLAP-style data, else equal to ``age``
subject     identity (pandas ``string``), ``<NA>`` when the dataset has none
std         apparent-age std (float), NaN when unknown
split       ``"train"``/``"valid"``/``"test"`` (pandas ``string``), ``<NA>`` when none
image_id    unique id of the image within the dataset (str)
=========== ========================================================================

plus loader-specific extra columns. ``df.attrs`` carries ``source`` (what was read),
``skipped`` (records dropped under ``on_bad="skip"``, each with path, reason and fix) and, where
relevant, ``ignored_files``/``ignored_train``/``unlabelled``.

Bad input (missing or empty folder, zero-byte/corrupt/non-image file, age outside the declared
range, missing CSV column, duplicate file name, label without image) raises
:class:`~ageest.data.integrity.DataError` naming every offending file and the fix; pass
``on_bad="skip"`` to skip those records instead (they are listed, never dropped silently).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ageest.data.integrity import (
    BadRecords,
    DataError,
    MissingDataError,
    check_image_file,
    check_on_bad,
    folder_file_problem,
)

COLUMNS = ("path", "age", "age_mean", "subject", "std", "split", "image_id")
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
    "test": "test", "tst": "test", "testing": "test",
}

FGNET_AGE_RANGE = (0, 69)
CLAP_AGE_RANGE = (0, 100)
UTKFACE_AGE_RANGE = (0, 116)
# The FG-NET release: 1,002 images of 82 subjects (001..082), ages 0..69.
FGNET_EXPECTED = {"n_images": 1002, "n_subjects": 82, "age_min": 0, "age_max": 69}

_FGNET_RE = re.compile(r"^(?P<subject>\d{3})a(?P<age>\d{2})(?P<suffix>[ab]?)\.jpe?g$", re.I)
_UTK_RE = re.compile(
    r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<datetime>\d+)\.jpg(?:\.chip\.jpg)?$", re.I
)
_UTK_AGE_RE = re.compile(r"^(?P<age>\d+)_")


# --------------------------------------------------------------------------------------------
# shared helpers


def _require_dir(root: str | os.PathLike, what: str, fix: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingDataError(f"{what} folder {root} does not exist; {fix}")
    if not root.is_dir():
        raise MissingDataError(f"{what} path {root} is not a folder; {fix}")
    return root.resolve()


def _require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDataError(f"{what} {path} does not exist; {fix}")
    return path.resolve()


def _list_files(root: Path, *, recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Regular files under ``root`` (sorted) and the hidden/system files that were left out."""
    it = root.rglob("*") if recursive else root.iterdir()
    files, ignored = [], []
    for p in sorted(it):
        if not p.is_file():
            continue
        # Hidden files (.DS_Store, ._foo.jpg from macOS copies) and Thumbs.db are file-system
        # noise, not data; they are listed in df.attrs["ignored_files"] rather than raising.
        if p.name.startswith(".") or p.name.lower() in {"thumbs.db", "desktop.ini"}:
            ignored.append(str(p))
            continue
        files.append(p)
    return files, ignored


def _normalise_split(value: Any, where: str, bad: BadRecords) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return pd.NA
    key = str(value).strip().lower()
    if key in ("", "nan", "none", "na"):
        return pd.NA
    if key not in _SPLIT_ALIASES:
        bad.add(where, f"split value {value!r} is not one of train/valid/test",
                "use train, valid (or val) or test, or leave the cell empty")
        return None
    return _SPLIT_ALIASES[key]


#: the most age classes a label range may declare (a network head of that many outputs; human
#: ages need at most ~120, so a larger range is a typo such as 0,2000000000)
MAX_CLASSES = 1000


def check_class_count(lo: int, hi: int, what: str = "age_range") -> None:
    """A ``ValueError`` naming ``what`` when ``lo..hi`` asks for more than :data:`MAX_CLASSES`.

    >>> check_class_count(0, 2000000000, "--age-range")
    Traceback (most recent call last):
    ...
    ValueError: --age-range 0,2000000000: 2000000001 age classes; at most 1000 (one network output per age): give the range the labels really span, e.g. 0,100
    """
    if int(hi) - int(lo) + 1 > MAX_CLASSES:
        raise ValueError(f"{what} {lo},{hi}: {int(hi) - int(lo) + 1} age classes; at most "
                         f"{MAX_CLASSES} (one network output per age): give the range the "
                         "labels really span, e.g. 0,100")


def age_fix(problem: str, age_range: tuple[int, int] | None) -> str:
    """What to do about a bad age label: a missing one is filled in or its row dropped (no
    age range can cover it); one outside the range is corrected or the range widened.

    >>> age_fix("age is missing", (0, 100))
    'fill in the age, or delete the row'
    """
    if problem == "age is missing":
        return "fill in the age, or delete the row"
    if "outside the declared range" in problem and age_range:
        return "correct the age, or declare an age range covering it (--age-range LO,HI)"
    return "correct the age"


def _age_problem(age: Any, age_range: tuple[int, int] | None) -> str | None:
    """Why ``age`` is not a valid label (or None)."""
    if age is None or (isinstance(age, str) and not age.strip()):
        return "age is missing"
    try:
        a = float(age)
    except (TypeError, ValueError):
        return f"age {age!r} is not a number"
    if math.isnan(a):
        return "age is missing"
    if not math.isfinite(a):
        return f"age {age!r} is not finite"
    shown = f"{a:g}"  # 40.0 -> "40", 24.5 -> "24.5"
    if a < 0:
        return f"age {shown} is negative"
    if age_range is not None and not (age_range[0] - 0.5 <= a <= age_range[1] + 0.5):
        return f"age {shown} is outside the declared range {age_range[0]}-{age_range[1]}"
    return None


LABEL_ROUNDINGS = ("half_up", "half_even")


def round_age(value: float, rounding: str = "half_up") -> int:
    """A training label from an apparent mean: half up (``floor(x + 0.5)``, the default) or half
    to even (``numpy.around``, what the official CLAP2016 code does).

    >>> round_age(24.5), round_age(24.49), round_age(0.2), round_age(24.5, "half_even")
    (25, 24, 0, 24)
    """
    if rounding == "half_even":
        return int(np.around(float(value)))
    if rounding != "half_up":
        raise ValueError(f"label_rounding={rounding!r}: expected one of {LABEL_ROUNDINGS}")
    return int(math.floor(float(value) + 0.5))


def _pixel_count(path: Path) -> int | None:
    """Width x height from the image header (no decode); None when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]) * int(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _finish(
    rows: list[dict[str, Any]], bad: BadRecords, *, source: str,
    attrs: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Build the table with the contract's dtypes, after raising/recording the bad records."""
    skipped = bad.finish()
    # Bad records never enter ``rows`` (each loader `continue`s after bad.add), so nothing
    # needs removing here.
    if not rows:
        raise DataError(
            f"{source}: no usable images left"
            + (f" ({len(skipped)} skipped as bad)" if skipped else "")
            + "; check that the folder holds the dataset's images"
        )
    df = pd.DataFrame(rows)
    df["path"] = df["path"].astype(str)
    df["age"] = df["age"].astype("int64")
    df["age_mean"] = df["age_mean"].astype("float64")
    df["subject"] = df["subject"].astype("string")
    df["std"] = pd.to_numeric(df["std"], errors="coerce").astype("float64")
    df["split"] = df["split"].astype("string")
    df["image_id"] = df["image_id"].astype(str)
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[list(COLUMNS) + extra].reset_index(drop=True)
    if df["image_id"].duplicated().any():  # loaders check earlier; this guards the contract
        dups = df.loc[df["image_id"].duplicated(keep=False), "image_id"].unique().tolist()
        raise DataError(f"{source}: duplicate image ids {dups[:10]}; rename the files")
    df.attrs.update({"source": source, "skipped": skipped, **(attrs or {})})
    return df


CSV_AGE_RANGE = (0, 100)


def _inside_root(entry: str, root: Path, allow_outside_root: bool) -> tuple[Path, str | None]:
    """``root / entry`` resolved (symlinks followed), and why it is not acceptable: a path that
    ends up outside ``root`` (``../``, an absolute path elsewhere, a link out) is refused unless
    ``allow_outside_root``."""
    path = (root / entry).resolve()
    if not allow_outside_root and not path.is_relative_to(root.resolve()):
        return path, (f"path resolves to {path}, outside the image root {root.resolve()}; keep "
                      "images under the image root, or pass allow_outside_root=True")
    return path, None


def _row(path: Path | str, age: int, *, age_mean: float | None = None, subject: Any = pd.NA,
         std: float = float("nan"), split: Any = pd.NA, image_id: str, **extra: Any
         ) -> dict[str, Any]:
    return {"path": str(path), "age": int(age),
            "age_mean": float(age if age_mean is None else age_mean), "subject": subject,
            "std": std, "split": split, "image_id": image_id, **extra}


# --------------------------------------------------------------------------------------------
# FG-NET


def parse_fgnet_name(name: str) -> tuple[str, int, str] | None:
    """Parse an FG-NET file name ``NNNAxx[a|b].JPG`` into (subject, age, suffix).

    Either case of the ``A``, the suffix and the extension is accepted; ``None`` when the name
    does not follow the pattern.

    >>> parse_fgnet_name("001A02.JPG")
    ('001', 2, '')
    >>> parse_fgnet_name("010a07b.jpeg")
    ('010', 7, 'b')
    >>> parse_fgnet_name("readme.txt") is None
    True
    """
    m = _FGNET_RE.match(name)
    if m is None:
        return None
    return m["subject"], int(m["age"]), m["suffix"].lower()


def load_fgnet(
    root: str | os.PathLike, *, on_bad: str = "raise", check_images: str = "header",
    age_range: tuple[int, int] = FGNET_AGE_RANGE, expected: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Load an FG-NET folder: images named ``NNNAxx[a|b].JPG`` (subject NNN, age xx).

    Parameters
    ----------
    root : path-like
        The folder holding the images (or its parent, when the images are in ``root/images``).
    on_bad : {"raise", "skip"}
        What to do with bad files (see the module docstring).
    check_images : {"header", "decode", "none"}
        How thoroughly each image is checked (:func:`~ageest.data.integrity.check_image_file`).
    age_range : (int, int)
        Declared age range; FG-NET is 0-69 (70 classes).
    expected : dict, optional
        Expected ``n_images``, ``n_subjects``, ``age_min``, ``age_max``; defaults to the FG-NET
        release (1,002 images, 82 subjects, ages 0-69). A copy that differs triggers a warning
        listing every difference (not an error: copies in the wild differ).

    Returns
    -------
    DataFrame
        The common columns, ``subject`` = ``"001"``..``"082"``, ``split`` = NA, ``image_id`` =
        the upper-cased stem (``"001A02"``), plus ``suffix``.
    """
    check_on_bad(on_bad)
    root = _require_dir(root, "FG-NET", "pass the folder holding the NNNAxx.JPG images")
    files, ignored = _list_files(root)
    for inner in ("images", "FGNET/images"):  # the release unpacks to FGNET/images/
        # a release folder (images/ beside points/, fetch.json ...) holds no photo itself
        if (root / inner).is_dir() and not any(parse_fgnet_name(f.name) for f in files):
            root = root / inner
            files, ignored = _list_files(root)
    if not files:
        raise MissingDataError(
            f"FG-NET folder {root} holds no files; pass the folder holding the NNNAxx.JPG images"
        )
    bad = BadRecords(on_bad, f"FG-NET folder {root}")
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for p in files:
        problem = folder_file_problem(p, root, check_images)
        if problem is not None:
            bad.add(p, *problem)
            continue
        parsed = parse_fgnet_name(p.name)
        if parsed is None:
            bad.add(p, "name does not follow FG-NET's NNNAxx[a|b].JPG",
                    "rename it (subject NNN, age xx, optional a/b) or move it out of the folder")
            continue
        subject, age, suffix = parsed
        problem = _age_problem(age, age_range)
        if problem is not None:
            bad.add(p, problem, f"check the name, or declare age_range covering {age}")
            continue
        image_id = f"{subject}A{age:02d}{suffix}"
        if image_id in seen:
            bad.add(p, f"duplicate of {seen[image_id].name} (same subject, age and suffix)",
                    "remove one copy, or add an a/b suffix if both are distinct photos")
            continue
        seen[image_id] = p
        rows.append(_row(p, age, subject=subject, image_id=image_id, suffix=suffix))
    rows.sort(key=lambda r: r["image_id"])  # canonical order, whatever the names' case
    _add_landmark_extents(rows, root.parent / "points")
    df = _finish(rows, bad, source=str(root), attrs={"ignored_files": ignored})
    _check_expected(df, FGNET_EXPECTED if expected is None else expected, f"FG-NET {root}")
    return df


#: the columns of a face's landmark extent (FG-NET's 68 points), for face_crop: landmarks
LANDMARK_COLUMNS = ("landmark_x0", "landmark_y0", "landmark_x1", "landmark_y1")


def _add_landmark_extents(rows: list[dict[str, Any]], points: Path) -> None:
    """With the release's ``points/`` folder beside ``images/`` (one ``.pts`` per photo, lower
    case), each row gets the extent of its 68 landmarks (:data:`LANDMARK_COLUMNS`; NaN for a
    photo without a file). A file that does not parse is an error naming it."""
    if not points.is_dir():
        return
    files = {p.stem.lower(): p for p in points.iterdir() if p.suffix.lower() == ".pts"}
    for row in rows:
        pts = files.get(Path(row["path"]).stem.lower())
        extent = [float("nan")] * 4
        if pts is not None:
            xy = read_pts(pts)
            extent = [*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()]
        row.update(zip(LANDMARK_COLUMNS, extent, strict=True))


def read_pts(path: str | os.PathLike, n_points: int = 68) -> np.ndarray:
    r"""An FG-NET landmark file (``version: 1``, ``n_points: 68``, then one ``x y`` line per
    point between ``{`` and ``}``, in the photo's pixels) as an ``(n_points, 2)`` array; a file
    that does not parse is a :class:`DataError` naming it and the line.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "001a02.pts"
    >>> _ = f.write_text("version: 1\nn_points: 2\n{\n1.5 2\n3 4.25\n}\n")
    >>> read_pts(f, n_points=2).tolist()
    [[1.5, 2.0], [3.0, 4.25]]
    """
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="ascii").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the landmark file ({exc}); replace it with the "
                        "release's") from None
    fix = "replace it with the release's file"
    try:
        start, end = lines.index("{"), lines.index("}")
    except ValueError:
        raise DataError(f"{path}: not a landmark file (no '{{' ... '}}' block); {fix}") from None
    declared = next((line.split(":", 1)[1].strip() for line in lines[:start]
                     if line.startswith("n_points")), None)
    if declared != str(n_points):
        raise DataError(f"{path}: declares n_points {declared}, expected {n_points}; {fix}")
    points = []
    for number, line in enumerate(lines[start + 1:end], start=start + 2):
        try:
            x, y = (float(v) for v in line.split())
        except ValueError:
            raise DataError(f"{path}:{number}: {line!r} is not two numbers 'x y'; {fix}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(f"{path}:{number}: {line!r} is not finite; {fix}")
        points.append((x, y))
    if len(points) != n_points:
        raise DataError(f"{path}: {len(points)} points between the braces, expected {n_points}; "
                        f"{fix}")
    return np.asarray(points, dtype=np.float64)


def _check_expected(df: pd.DataFrame, expected: dict[str, int], what: str) -> list[str]:
    """Warn, listing every difference, when a copy of a dataset differs from its release."""
    found = {"n_images": len(df), "n_subjects": int(df["subject"].nunique()),
             "age_min": int(df["age"].min()), "age_max": int(df["age"].max())}
    diffs = [f"{k}: expected {v}, found {found[k]}" for k, v in expected.items()
             if k in found and found[k] != v]
    if diffs:
        warnings.warn(f"{what} differs from the release manifest: " + "; ".join(diffs),
                      stacklevel=3)
    df.attrs["expected_differences"] = diffs
    return diffs


# --------------------------------------------------------------------------------------------
# CLAP2016 / APPA-REAL

_CLAP_COLUMNS = ("file_name", "apparent_age_avg", "apparent_age_std")


def _read_csv_checked(path: Path, required: Iterable[str], fix: str) -> pd.DataFrame:
    """A label CSV read as UTF-8 text, refused (naming the file and the fix) when it is another
    encoding, does not parse, lacks a required column or names a column twice (pandas would
    rename the second ``age`` to ``age.1`` and the first would be used silently)."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = [str(c).strip() for c in next(csv.reader(fh), [])]
        # Identifiers stay text: subject 007 must not become 7.0 because another row is empty.
        table = pd.read_csv(path, dtype={"path": str, "file_name": str, "subject": str,
                                         "split": str})
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} "
                        f"at position {exc.start}); save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc}); {fix}") from exc
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path}: column {twice[0]!r} appears {header.count(twice[0])} times in "
                        f"the header ({header}); keep one column of each name")
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} (found {list(table.columns)}); {fix}"
        )
    return table


def _read_name_list(ignore_list: str | os.PathLike | Iterable[str]) -> set[str]:
    """Names from an ignore list: a file (one name per line, or a CSV with ``file_name``)."""
    if isinstance(ignore_list, (str, os.PathLike)):
        path = _require_file(ignore_list, "ignore list", "pass an existing file or a list")
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path)
            col = "file_name" if "file_name" in table.columns else table.columns[0]
            names = table[col].astype(str).tolist()
        else:
            names = path.read_text(encoding="utf-8").splitlines()
    else:
        names = [str(n) for n in ignore_list]
    # Entries may be bare names or paths like train/000123.jpg; match on the base name.
    return {Path(n.strip()).name for n in names if n.strip() and not n.startswith("#")}


def load_clap2016(
    root: str | os.PathLike, use_face_crops: bool = False,
    ignore_list: str | os.PathLike | Iterable[str] | None = None, *, on_bad: str = "raise",
    check_images: str = "header", age_range: tuple[int, int] = CLAP_AGE_RANGE,
    splits: Iterable[str] = SPLITS, ignore_splits: Iterable[str] = ("train",),
    min_pixels: int | None = None, label_rounding: str = "half_up",
) -> pd.DataFrame:
    """Load CLAP2016 / APPA-REAL in its release layout.

    ``root/{train,valid,test}/`` hold the images; ``root/gt_avg_{split}.csv`` hold
    ``file_name, num_ratings, apparent_age_avg, apparent_age_std`` (``num_ratings`` optional).

    Parameters
    ----------
    root : path-like
        The release folder.
    use_face_crops : bool
        Use ``<file_name>_face.jpg`` (APPA-REAL's crop, e.g. ``000123.jpg_face.jpg``; also
        ``000123_face.jpg``) when present; images without a crop keep the full image and are
        listed in ``df.attrs["face_crop_missing"]`` with a warning.
    ignore_list : path-like or iterable of str, optional
        File names to drop (yu4u's list of 118 bad training images, one name a line, is what
        the official code reads from ``<CLAP folder>/ignore_list.txt``), from the splits in
        ``ignore_splits``. Names that belong to other splits are *kept* there and a warning
        lists them; names found nowhere are also warned about. The dropped training files are
        listed in ``df.attrs["ignored_train"]``.
    ignore_splits : iterable of str
        Where the ignore list applies: ``("train",)`` by default (the test set is never
        filtered); the official code applies it to whichever split it loads (``train, valid,
        test``).
    min_pixels : int, optional
        Drop images with fewer than this many pixels (width x height, from the header), in
        every split. The official ``CLAP_data.py`` drops ``img.size < 3072`` on the RGB array,
        i.e. fewer than 1,024 pixels (32 x 32): ``min_pixels=1024``. An area rule, not a side
        rule: a 20 x 60 image (1,200 pixels) passes there, and here.
    label_rounding : {"half_up", "half_even"}
        How the apparent mean becomes the integer training label (:func:`round_age`); the
        official code uses ``np.around`` (half to even).
    on_bad, check_images
        As in :func:`load_fgnet`.
    age_range : (int, int)
        Declared range of the rounded apparent mean (0-100).
    splits : iterable of str
        Which splits to read (all three by default).

    Returns
    -------
    DataFrame
        ``age`` = rounded apparent mean (training label), ``age_mean`` = apparent mean,
        ``std`` = apparent std (for the epsilon-error), ``subject`` = NA (no identities in the
        release), ``split``, ``image_id`` = ``"<split>/<file_name>"``, plus ``file_name`` and
        ``num_ratings``.
    """
    check_on_bad(on_bad)
    root = _require_dir(root, "CLAP2016", "pass the APPA-REAL folder holding train/, valid/, "
                        "test/ and gt_avg_*.csv")
    ignore_splits = tuple(ignore_splits)
    unknown = [sp for sp in ignore_splits if sp not in SPLITS]
    if unknown:
        raise ValueError(f"ignore_splits: {unknown} not among {SPLITS}")
    if label_rounding not in LABEL_ROUNDINGS:
        raise ValueError(f"label_rounding={label_rounding!r}: expected one of {LABEL_ROUNDINGS}")
    scan = _ClapScan(
        ignore=_read_name_list(ignore_list) if ignore_list is not None else set(),
        ignore_splits=ignore_splits, bad=BadRecords(on_bad, f"CLAP2016 folder {root}"),
        use_face_crops=use_face_crops, check_images=check_images, min_pixels=min_pixels,
        age_range=age_range, label_rounding=label_rounding)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits: {split!r} is not one of {SPLITS}")
        scan.read_split(root, split)
    scan.warn(root)
    return _finish(scan.rows, scan.bad, source=str(root), attrs={
        "unlabelled": scan.unlabelled, "face_crop_missing": scan.crop_missing,
        "ignored_train": scan.ignored_train, "ignored_not_train": scan.ignored_elsewhere,
        "dropped": scan.dropped, "too_small": scan.too_small,
        "filters": {"ignore_list_names": len(scan.ignore),
                    "ignore_splits": list(ignore_splits), "min_pixels": min_pixels,
                    "label_rounding": label_rounding}})


@dataclass
class _ClapScan:
    """The CLAP2016 loader's pass over the release: its rules, and what each row became (kept,
    bad, dropped by the ignore list or the size rule, unlabelled), for the data summary."""

    ignore: set[str]
    ignore_splits: tuple[str, ...]
    bad: BadRecords
    use_face_crops: bool
    check_images: str
    min_pixels: int | None
    age_range: tuple[int, int]
    label_rounding: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    crop_missing: list[str] = field(default_factory=list)
    ignored_train: list[str] = field(default_factory=list)
    ignored_elsewhere: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    seen_names: dict[str, str] = field(default_factory=dict)
    # what each rule dropped, per split (reported in the data summary)
    dropped: dict[str, dict[str, int]] = field(default_factory=lambda: {
        "ignore_list": dict.fromkeys(SPLITS, 0), "min_pixels": dict.fromkeys(SPLITS, 0)})

    def read_split(self, root: Path, split: str) -> None:
        folder = _require_dir(root / split, f"CLAP2016 {split}",
                              f"the release has {root}/{split}/ next to gt_avg_{split}.csv")
        csv = _require_file(root / f"gt_avg_{split}.csv", "CLAP2016 label file",
                            f"the release has gt_avg_{split}.csv in {root}")
        table = _read_csv_checked(csv, _CLAP_COLUMNS,
                                  "APPA-REAL's gt_avg_*.csv has file_name, num_ratings, "
                                  "apparent_age_avg, apparent_age_std")
        files, _ = _list_files(folder)
        if not files:
            raise MissingDataError(f"CLAP2016 {split} folder {folder} holds no files; "
                                   "unpack the release's images there")
        labelled = set()
        for i, rec in enumerate(table.to_dict("records")):
            name = str(rec["file_name"]).strip()
            labelled.add(name)
            self.read_row(folder, csv, split, i, name, rec)
        self.unlabelled += [str(p) for p in files
                            if not (p.name.endswith("_face.jpg") or p.name in labelled)]

    def read_row(self, folder: Path, csv: Path, split: str, i: int, name: str,
                 rec: dict[str, Any]) -> None:
        where = f"{csv}:{i + 2} ({name})"  # +2: header line, 1-based
        if name in self.seen_names:
            self.bad.add(where, f"duplicate file name (also in {self.seen_names[name]})",
                         "remove the duplicated row")
            return
        self.seen_names[name] = f"{csv.name}:{i + 2}"
        image = folder / name
        if not image.is_file():
            self.bad.add(where, f"label without image: {image} does not exist",
                         f"restore the image or delete its row from {csv.name}")
            return
        if name in self.ignore:
            if split not in self.ignore_splits or split != "train":
                self.ignored_elsewhere.append(f"{split}/{name}")
            if split in self.ignore_splits:
                self.dropped["ignore_list"][split] += 1
                if split == "train":
                    self.ignored_train.append(str(image))
                return
        path = self.face_crop(folder, image, name) if self.use_face_crops else image
        problem = check_image_file(path, self.check_images)
        if problem is not None:
            self.bad.add(path, problem, "replace the image with the release's copy")
            return
        if self.min_pixels is not None:
            pixels = _pixel_count(path)
            if pixels is not None and pixels < int(self.min_pixels):
                self.dropped["min_pixels"][split] += 1
                self.too_small.append(f"{split}/{name}")
                return
        mean, std = rec["apparent_age_avg"], rec["apparent_age_std"]
        problem = _age_problem(mean, self.age_range)
        if problem is None and not (isinstance(std, (int, float)) and std >= 0):
            problem = f"apparent_age_std {std!r} is not a non-negative number"
        if problem is not None:
            self.bad.add(where, problem, f"correct the row in {csv.name}")
            return
        self.rows.append(_row(path, round_age(mean, self.label_rounding), age_mean=float(mean),
                              std=float(std), split=split, image_id=f"{split}/{name}",
                              file_name=name, num_ratings=float(rec.get("num_ratings", np.nan))))

    def face_crop(self, folder: Path, image: Path, name: str) -> Path:
        crops = [folder / f"{name}_face.jpg", folder / f"{Path(name).stem}_face.jpg"]
        found = next((c for c in crops if c.is_file()), None)
        if found is None:
            self.crop_missing.append(str(image))
        return found or image

    def warn(self, root: Path) -> None:
        """What was not used, and why, as warnings (nothing is dropped silently)."""
        if self.unlabelled:
            warnings.warn(f"CLAP2016 {root}: {len(self.unlabelled)} file(s) have no label in "
                          f"gt_avg_*.csv and are not used, e.g. {self.unlabelled[:5]} "
                          "(listed in df.attrs['unlabelled'])", stacklevel=3)
        if self.crop_missing:
            warnings.warn(f"CLAP2016 {root}: {len(self.crop_missing)} image(s) have no "
                          f"_face.jpg crop; their full image is used, e.g. "
                          f"{self.crop_missing[:5]}", stacklevel=3)
        kept_listed = [n for n in self.ignored_elsewhere
                       if n.split("/", 1)[0] not in self.ignore_splits]
        if kept_listed:
            warnings.warn(f"CLAP2016 ignore list names {len(kept_listed)} file(s) of splits it "
                          f"does not filter ({', '.join(self.ignore_splits) or 'none'} only), "
                          f"e.g. {kept_listed[:5]}; they are kept", stacklevel=3)
        unused = self.ignore - {Path(p).name for p in self.ignored_train} - {
            n.split("/", 1)[1] for n in self.ignored_elsewhere}
        if unused:
            warnings.warn(f"CLAP2016 ignore list: {len(unused)} name(s) match no labelled file, "
                          f"e.g. {sorted(unused)[:5]}", stacklevel=3)


def load_utkface(
    root: str | os.PathLike, *, on_bad: str = "raise", check_images: str = "header",
    age_range: tuple[int, int] = UTKFACE_AGE_RANGE, recursive: bool = True,
    split_csv: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Load UTKFace: ``{age}_{gender}_{race}_{datetime}.jpg`` (also ``.jpg.chip.jpg`` crops).

    Names that carry an age but not the full pattern (e.g. a missing race field) are kept with
    one warning listing them; names without an age are bad records (error listing them, or
    skipped with ``on_bad="skip"``). UTKFace has no identities: ``subject`` is NA, so splits
    treat every image as its own group (no identity-leakage check is possible).

    Parameters
    ----------
    root : path-like
        Folder of images (searched recursively by default: the release ships part1/2/3).
    on_bad, check_images
        As in :func:`load_fgnet`.
    age_range : (int, int)
        Declared age range (0-116 in the release).
    recursive : bool
        Search sub-folders.
    split_csv : path-like, optional
        A train/valid/test split (``image_id, split``; :func:`ageest.data.splits.stratified_split`
        writes one) giving the ``split`` column, so the ``official`` protocol uses it.

    Returns
    -------
    DataFrame
        Common columns plus ``gender`` and ``race`` (NA where the name lacks them);
        ``image_id`` = path relative to ``root``. ``df.attrs["malformed_names"]`` lists the
        kept names that lack a field (the release has a few three-field names).
    """
    check_on_bad(on_bad)
    root = _require_dir(root, "UTKFace", "pass the folder holding the {age}_... .jpg images")
    files, ignored = _list_files(root, recursive=recursive)
    if not files:
        raise MissingDataError(f"UTKFace folder {root} holds no files; unpack the images there")
    bad = BadRecords(on_bad, f"UTKFace folder {root}")
    rows, malformed = [], []
    for p in files:
        problem = folder_file_problem(p, root, check_images)
        if problem is not None:
            bad.add(p, *problem)
            continue
        m = _UTK_RE.match(p.name)
        gender = race = pd.NA
        if m is not None:
            age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
        else:
            m2 = _UTK_AGE_RE.match(p.name)
            if m2 is None:
                bad.add(p, "name carries no age ({age}_{gender}_{race}_{datetime}.jpg)",
                        "rename it with the age first, or remove it")
                continue
            age = int(m2["age"])
            malformed.append(str(p))
        problem = _age_problem(age, age_range)
        if problem is not None:
            bad.add(p, problem, f"check the name, or declare age_range covering {age}")
            continue
        rows.append(_row(p, age, image_id=p.relative_to(root).as_posix(), gender=gender,
                         race=race))
    if malformed:
        warnings.warn(f"UTKFace {root}: {len(malformed)} name(s) do not follow "
                      f"age_gender_race_datetime.jpg but carry an age and are kept: "
                      f"{[Path(m).name for m in malformed[:10]]}", stacklevel=2)
    df = _finish(rows, bad, source=str(root),
                 attrs={"ignored_files": ignored, "malformed_names": malformed})
    df["gender"] = df["gender"].astype("Int64")
    df["race"] = df["race"].astype("Int64")
    if split_csv is not None:
        from ageest.data.splits import apply_split_csv

        df = apply_split_csv(df, split_csv)
    return df


# --------------------------------------------------------------------------------------------
# generic CSV


def load_csv(
    csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
    on_bad: str = "raise", check_images: str = "header",
    age_range: tuple[int, int] | None = CSV_AGE_RANGE, allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Load any image folder described by a CSV with columns ``path``, ``age`` and optionally
    ``subject``, ``std``, ``split`` (``train``/``valid``/``test``; ``val`` accepted) and
    ``age_mean``.

    Parameters
    ----------
    csv_path : path-like
        The CSV file.
    image_root : path-like, optional
        Folder that relative ``path`` entries are relative to; defaults to the CSV's folder.
    on_bad, check_images
        As in :func:`load_fgnet`.
    age_range : (int, int), optional
        Declared age range, 0-100 by default (the model gets one class per age in it, so an
        age of 1e6 must not silently build a million classes); ``None`` accepts any
        non-negative age. An age outside it is an error naming the CSV line.
    allow_outside_root : bool
        Accept ``path`` entries that resolve outside the image root (``../``, absolute paths,
        symlinks leading out); refused by default, naming the CSV line.

    Returns
    -------
    DataFrame
        Common columns (non-integer ages are kept in ``age_mean`` and rounded for ``age``; an
        ``age_mean`` column, when given, is used as is), ``image_id`` = the CSV's ``path``
        entry, plus any other CSV column.
    """
    check_on_bad(on_bad)
    csv_path = _require_file(csv_path, "label CSV", "pass --csv pointing to an existing file")
    root = Path(image_root).expanduser().resolve() if image_root is not None else csv_path.parent
    _require_dir(root, "image root", "pass --image-root pointing to the images' folder")
    table = _read_csv_checked(csv_path, ("path", "age"),
                              "the CSV needs columns path and age (optional subject, std, split)")
    if table.empty:
        raise DataError(f"{csv_path}: no rows; add one row per image (path, age)")
    bad = BadRecords(on_bad, f"label CSV {csv_path}")
    seen: dict[str, int] = {}
    rows = [row for i, rec in enumerate(table.to_dict("records"))
            if (row := _csv_row(rec, i + 2, csv_path, root, bad, seen, check_images=check_images,
                                age_range=age_range, allow_outside_root=allow_outside_root))
            is not None]
    return _finish(rows, bad, source=str(csv_path), attrs={"image_root": str(root)})



def _usable_image(path: Path, where: str, bad: BadRecords, check_images: str, *,
                  missing_fix: str, bad_fix: str) -> bool:
    """Whether the image a label row names exists and passes ``check_images``; if not, the
    problem is recorded in ``bad`` (naming the row, or the file) with its fix."""
    if not path.exists():
        bad.add(where, f"label without image: {path} does not exist", missing_fix)
        return False
    problem = check_image_file(path, check_images)
    if problem is not None:
        bad.add(path, problem, bad_fix)
        return False
    return True


def _csv_row(rec: dict[str, Any], line: int, csv_path: Path, root: Path, bad: BadRecords,
             seen: dict[str, int], *, check_images: str, age_range: tuple[int, int] | None,
             allow_outside_root: bool) -> dict[str, Any] | None:
    """One CSV line as a table row, or ``None`` after recording why it is bad."""
    entry = str(rec["path"]).strip()
    where = f"{csv_path}:{line} ({entry})"
    path, outside = _inside_root(entry, root, allow_outside_root)
    if outside is not None:
        bad.add(where, outside, "fix the path in the CSV")
        return None
    if str(path) in seen:
        bad.add(where, f"duplicate file name (also on line {seen[str(path)]})",
                "remove the duplicated row")
        return None
    seen[str(path)] = line
    if not _usable_image(path, where, bad, check_images,
                         missing_fix="fix the path (relative to --image-root) or delete the row",
                         bad_fix="replace the image or delete its row"):
        return None
    problem = _age_problem(rec["age"], age_range)
    if problem is not None:
        bad.add(where, problem, age_fix(problem, age_range))
        return None
    age_f = float(rec["age"])
    mean = rec.get("age_mean", age_f)
    mean = age_f if pd.isna(mean) else float(mean)
    split = _normalise_split(rec.get("split"), where, bad)
    if split is None:
        return None
    subject = rec.get("subject", pd.NA)
    subject = pd.NA if pd.isna(subject) else str(subject).strip()
    std = rec.get("std", float("nan"))
    extra = {k: v for k, v in rec.items() if k not in COLUMNS}
    return _row(path, round_age(age_f), age_mean=mean, subject=subject,
                std=float("nan") if pd.isna(std) else float(std), split=split,
                image_id=entry, **extra)

# --------------------------------------------------------------------------------------------
# Facial-Age-Estimation-Benchmark database JSON

# Paplham & Franc's five subject-exclusive splits over ten folders (train, valid, test).
BENCHMARK_SPLITS: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    0: ((0, 1, 2, 3, 4, 5), (6, 7), (8, 9)),
    1: ((2, 3, 4, 5, 6, 7), (8, 9), (0, 1)),
    2: ((4, 5, 6, 7, 8, 9), (0, 1), (2, 3)),
    3: ((5, 6, 7, 8, 9, 0), (1, 2), (3, 4)),
    4: ((6, 7, 8, 9, 0, 1), (2, 3), (4, 5)),
}


def load_benchmark_json(
    json_path: str | os.PathLike, image_root: str | os.PathLike, *, benchmark_split: int = 0,
    on_bad: str = "raise", check_images: str = "header",
    age_range: tuple[int, int] | None = None, database: str | None = None,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Load a Facial-Age-Estimation-Benchmark *database* JSON (Paplham & Franc, CVPR 2024).

    The file is a list of entries with ``img_path`` (relative to ``image_root``), ``age``
    (``-1`` = unknown, a bad record), and optionally ``id_num`` (identity), ``std_age``,
    ``folder`` (subject-exclusive fold 0-9, or 0/1/2 = train/valid/test for CLAP2016 and
    CACD2000) and ``database``. Images are used as stored (``aligned_bbox`` is kept as a
    column, not applied).

    Parameters
    ----------
    json_path : path-like
        The database JSON.
    image_root : path-like
        Folder ``img_path`` is relative to.
    benchmark_split : int
        Which of the benchmark's five splits (0-4) maps folders to train/valid/test when the
        database has ten folders; ignored for three-folder databases. ``-1`` leaves ``split`` NA.
    on_bad, check_images
        As in :func:`load_fgnet`.
    age_range : (int, int), optional
        Declared age range.
    database : str, optional
        Keep only entries whose ``database`` field equals this.

    Returns
    -------
    DataFrame
        Common columns (``subject`` = ``id_num``; ``std`` = ``std_age``), plus ``folder``,
        ``database``, ``gender`` where present; ``image_id`` = ``img_path``.
    """
    check_on_bad(on_bad)
    json_path = _require_file(json_path, "benchmark JSON", "pass --json pointing to the file")
    root = _require_dir(image_root, "image root", "pass --image-root, the folder img_path is "
                        "relative to")
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc})") from exc
    if isinstance(entries, dict):  # tolerate {"data": [...]}-style wrappers
        entries = next((v for v in entries.values() if isinstance(v, list)), None)
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{json_path}: expected a non-empty list of entries with img_path, age")
    if database is not None:
        entries = [e for e in entries if e.get("database") == database]
    folder_to_split = _benchmark_folder_splits(entries, benchmark_split)
    bad = BadRecords(on_bad, f"benchmark JSON {json_path}")
    seen: dict[str, int] = {}
    rows = [row for i, e in enumerate(entries)
            if (row := _benchmark_row(e, i, json_path, root, bad, seen, folder_to_split,
                                      check_images=check_images, age_range=age_range,
                                      allow_outside_root=allow_outside_root)) is not None]
    df = _finish(rows, bad, source=str(json_path), attrs={"image_root": str(root),
                                                          "benchmark_split": benchmark_split})
    df["folder"] = df["folder"].astype("Int64")
    return df



def _benchmark_folder_splits(entries: list, benchmark_split: int) -> dict[int, str]:
    """Folder -> split: three-folder databases are train/valid/test; ten folders follow
    :data:`BENCHMARK_SPLITS`; ``-1`` (or no folders) leaves ``split`` NA."""
    folders = sorted({int(e["folder"]) for e in entries
                      if isinstance(e, dict) and e.get("folder") is not None})
    if benchmark_split == -1 or not folders:
        return {}
    if set(folders) <= {0, 1, 2} and len(folders) <= 3:
        return {0: "train", 1: "valid", 2: "test"}
    if benchmark_split not in BENCHMARK_SPLITS:
        raise ValueError(f"benchmark_split={benchmark_split}: expected 0-4 (or -1)")
    trn, val, tst = BENCHMARK_SPLITS[benchmark_split]
    return {**dict.fromkeys(trn, "train"), **dict.fromkeys(val, "valid"),
            **dict.fromkeys(tst, "test")}


def _benchmark_row(e: Any, i: int, json_path: Path, root: Path, bad: BadRecords,
                   seen: dict[str, int], folder_to_split: dict[int, str], *, check_images: str,
                   age_range: tuple[int, int] | None,
                   allow_outside_root: bool) -> dict[str, Any] | None:
    """One database entry as a table row, or ``None`` after recording why it is bad."""
    where = f"{json_path}[{i}]"
    if not isinstance(e, dict):
        bad.add(where, "entry is not an object", "fix the JSON")
        return None
    missing = [k for k in ("img_path", "age") if k not in e]
    if missing:
        bad.add(where, f"entry lacks {missing}", "every entry needs img_path and age")
        return None
    entry = str(e["img_path"])
    where = f"{json_path}[{i}] ({entry})"
    if entry in seen:
        bad.add(where, f"duplicate img_path (also entry {seen[entry]})", "remove one entry")
        return None
    seen[entry] = i
    age = e["age"]
    problem = ("age is -1 (unknown)" if age == -1 else _age_problem(age, age_range))
    if problem is not None:
        bad.add(where, problem, "correct the age or remove the entry")
        return None
    path, outside = _inside_root(entry, root, allow_outside_root)
    if outside is not None:
        bad.add(where, outside, "fix img_path in the JSON")
        return None
    if not _usable_image(path, where, bad, check_images,
                         missing_fix="check --image-root, or restore the image",
                         bad_fix="replace the image or remove its entry"):
        return None
    folder = e.get("folder")
    split = folder_to_split.get(int(folder), pd.NA) if folder is not None else pd.NA
    subject = e.get("id_num")
    std = e.get("std_age")
    return _row(
        path, round_age(age), age_mean=float(age),
        subject=pd.NA if subject is None else str(subject),
        std=float("nan") if std is None else float(std), split=split, image_id=entry,
        folder=pd.NA if folder is None else int(folder), database=e.get("database", pd.NA),
        gender=e.get("gender", pd.NA))


__all__ = [
    "BENCHMARK_SPLITS", "CLAP_AGE_RANGE", "COLUMNS", "FGNET_AGE_RANGE", "FGNET_EXPECTED",
    "SPLITS", "UTKFACE_AGE_RANGE", "load_benchmark_json", "load_clap2016", "load_csv",
    "load_fgnet", "load_utkface", "parse_fgnet_name", "round_age",
]
