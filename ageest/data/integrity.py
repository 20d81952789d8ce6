"""Data integrity: the errors bad input raises, per-file checks, and dataset manifests.

Every loader funnels its problems through :class:`BadRecords`: with ``on_bad="raise"`` (the
default) it collects *all* problems of a load and raises one :class:`DataError` that lists each
file, what is wrong with it and how to fix it; with ``on_bad="skip"`` it drops those records and
lists them in ``df.attrs["skipped"]`` (and in the dataset manifest), so nothing is dropped
silently.

A dataset manifest (:func:`write_dataset_manifest`) holds counts, the age histogram and a
sha256 per file; :func:`verify_dataset_manifest` compares a later load against it and reports
changed, missing and added files. Hashes are cached in a small JSON file keyed by
``(path, size, mtime, ctime, inode)`` so a second verification of an unchanged dataset reads no
image (ctime and inode are in the key because ``os.utime`` can restore an mtime but not them).

Identical images (:func:`resolve_identical`): the same decoded pixels under two names. Where the
copies could fall on both sides of a split, they must be resolved before any split: the policy
``refuse`` stops (FG-NET, CLAP2016: a copy under two subjects or two official splits is a data
error), ``dedupe`` keeps one copy of a group whose labels agree and drops a group whose labels
disagree (a label conflict: the same photo under two ages). Both are counted and listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ageest.files import atomic_write_text, file_sha256, read_json, write_json

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
ON_BAD_CHOICES = ("raise", "skip")
#: what to do with identical images (same decoded pixels); see :func:`resolve_identical`
IDENTICAL_CHOICES = ("refuse", "dedupe")
#: how a git-lfs pointer file starts (an image or checkpoint that was never pulled)
GIT_LFS_HEADER = b"version https://git-lfs.github.com/spec/"
CHECK_IMAGES_CHOICES = ("header", "decode", "none")
MANIFEST_VERSION = 1


class DataError(ValueError):
    """A dataset on disk is not what the loader expects; the message names the file and the fix."""


class MissingDataError(DataError, FileNotFoundError):
    """A folder or file the loader needs does not exist (or holds nothing)."""


class LeakageError(DataError):
    """Train, validation and test share a subject or a file."""


def check_on_bad(on_bad: str) -> str:
    """Validate the ``on_bad`` argument shared by all loaders."""
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad={on_bad!r}: expected one of {ON_BAD_CHOICES}")
    return on_bad


@dataclass
class BadRecords:
    """Collect the problems of one load, then raise them together or record them as skipped.

    Parameters
    ----------
    on_bad : {"raise", "skip"}
        ``"raise"``: :meth:`finish` raises one :class:`DataError` listing every problem.
        ``"skip"``: :meth:`finish` warns once and returns the records, which the loader stores
        in ``df.attrs["skipped"]``.
    source : str
        What is being loaded (a folder or an annotation file), named in the error.
    """

    on_bad: str
    source: str
    records: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_on_bad(self.on_bad)

    def add(self, path: str | os.PathLike, reason: str, fix: str) -> None:
        """Record one bad file (or annotation row): what is wrong and what the user should do."""
        self.records.append({"path": printable_path(path), "reason": reason, "fix": fix})

    def __bool__(self) -> bool:
        return bool(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def paths(self) -> set[str]:
        """The paths recorded so far."""
        return {r["path"] for r in self.records}

    def finish(self, max_listed: int = 25) -> list[dict[str, str]]:
        """Raise (``on_bad="raise"``) or warn and return the skipped records (``"skip"``)."""
        if not self.records:
            return []
        listed = "\n".join(
            f"  - {r['path']}: {r['reason']} -> {r['fix']}" for r in self.records[:max_listed]
        )
        more = len(self.records) - max_listed
        if more > 0:
            listed += f"\n  ... and {more} more"
        if self.on_bad == "raise":
            raise DataError(
                f"{self.source}: {len(self.records)} bad record(s):\n{listed}\n"
                "Fix or remove these files, or pass on_bad='skip' to skip them (they are then "
                "listed in df.attrs['skipped'] and in the dataset manifest)."
            )
        warnings.warn(
            f"{self.source}: skipped {len(self.records)} bad record(s) (on_bad='skip'):\n{listed}",
            stacklevel=3,
        )
        return list(self.records)


#: the largest image ageest opens, in pixels (width x height): 8,192 x 8,192 by default, far
#: above any face photo; set AGEEST_MAX_IMAGE_PIXELS to change it. A larger file is a bad record
#: naming its size (PIL's own decompression-bomb guard would stop at 179 M pixels with a
#: traceback, or decode hundreds of megabytes below that).
MAX_IMAGE_PIXELS_DEFAULT = 8192 * 8192


def max_image_pixels() -> int:
    """The pixel limit in force (:data:`MAX_IMAGE_PIXELS_DEFAULT`, or AGEEST_MAX_IMAGE_PIXELS)."""
    text = os.environ.get("AGEEST_MAX_IMAGE_PIXELS", "").strip()
    if not text:
        return MAX_IMAGE_PIXELS_DEFAULT
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"AGEEST_MAX_IMAGE_PIXELS={text!r}: expected a positive whole number of "
                         "pixels, e.g. 67108864 (8192 x 8192); unset it for that default")
    return int(text)


def size_problem(size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` (width, height) is refused, or None.

    >>> size_problem((15000, 15000))
    'image is 15000 x 15000 = 225,000,000 pixels, above the limit of 67,108,864 (AGEEST_MAX_IMAGE_PIXELS)'
    """
    w, h = size
    if w <= 0 or h <= 0:
        return f"image has size {size}"
    limit = max_image_pixels()
    if w * h > limit:
        return (f"image is {w} x {h} = {w * h:,} pixels, above the limit of {limit:,} "
                "(AGEEST_MAX_IMAGE_PIXELS)")
    return None


def bomb_problem(exc: Exception) -> str:
    """The refusal of an image so large that PIL stopped at its header (its
    ``DecompressionBombError`` gives the pixel count, not the sides), in :func:`size_problem`'s
    words."""
    import re

    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    limit = min(max_image_pixels(), 2 * (Image.MAX_IMAGE_PIXELS or 0) or max_image_pixels())
    return f"image is {pixels}, above the limit of {limit:,} (AGEEST_MAX_IMAGE_PIXELS)"


def printable_path(path: str | os.PathLike) -> str:
    r"""A path as text that any terminal and JSON file can take: bytes of a name that is not
    valid UTF-8 (kept by Python as surrogates) are shown as ``\xff``.

    >>> printable_path(os.fsdecode(b"41_0_0_2017\xff\xfe.jpg"))
    '41_0_0_2017\\xff\\xfe.jpg'
    """
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def folder_file_problem(path: Path, inside: Path, mode: str = "header"
                        ) -> tuple[str, str] | None:
    """What is wrong with one file of a dataset folder, and the fix, or None: a name that is
    not valid UTF-8, a symbolic link out of the folder ``inside``, or not a usable image
    (:func:`check_image_file`). The one check of every folder loader (FG-NET, UTKFace)."""
    if printable_path(path.name) != path.name:
        return ("file name is not valid UTF-8 text",
                "rename the file (ageest writes names into UTF-8 tables and manifests)")
    if path.is_symlink() and not path.resolve().is_relative_to(inside):
        # as the CSV loader's paths: a dataset folder holds its own images
        return (f"symbolic link to {path.resolve()}, outside the folder {inside}",
                "copy the image into the folder, or remove the link")
    problem = check_image_file(path, mode)
    if problem is not None:
        return problem, "remove the file or replace it with the original image"
    return None


def check_image_file(path: str | os.PathLike, mode: str = "header") -> str | None:
    """Return why ``path`` is not a usable image, or ``None`` when it is.

    Parameters
    ----------
    path : path-like
        The file to check.
    mode : {"header", "decode", "none"}
        ``"header"`` opens the file with PIL (reads the header: catches zero-byte, non-image and
        most corrupt files at ~0.1 ms a file); ``"decode"`` also decodes the pixels (catches
        truncated files; slower); ``"none"`` only checks existence and size.

    Examples
    --------
    >>> check_image_file("no/such/file.jpg")
    'file does not exist'
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in CHECK_IMAGES_CHOICES:
        raise ValueError(f"check_images={mode!r}: expected one of {CHECK_IMAGES_CHOICES}")
    path = Path(path)
    if not path.is_file():
        return "file does not exist"
    if path.stat().st_size == 0:
        return "zero-byte file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file (extension {path.suffix!r})"
    if mode == "none":
        return None
    max_image_pixels()  # a bad AGEEST_MAX_IMAGE_PIXELS is the user's error, not the file's
    try:
        with Image.open(path) as im:
            problem = size_problem(im.size)  # before any pixel is decoded
            if problem is not None:
                return problem
            if mode == "decode":
                im.load()
    except Image.DecompressionBombError as exc:  # PIL's own guard stops it before we can
        return bomb_problem(exc)
    except UnidentifiedImageError:
        return _unreadable(path)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for damaged data
        return f"corrupt image ({exc})"
    return None


# --------------------------------------------------------------------------------------------
# sha256 with a (path, size, mtime, ctime, inode) cache


def _file_key(path: Path) -> str:
    """The cache key of ``path``: what ``os.utime`` can restore (mtime) and what it cannot
    (ctime, inode), so a file changed in place with its size and mtime restored is read again."""
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _read_cache(cache_path: str | os.PathLike | None) -> dict[str, Any]:
    """The per-file JSON cache, or an empty one (a damaged cache only costs re-reading the
    files; it is rewritten by the caller)."""
    if cache_path is None or not Path(cache_path).is_file():
        return {}
    try:
        return json.loads(Path(cache_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def _sha256_file(path: Path) -> str:
    return file_sha256(path)  # one name to patch in tests that count the hashing


def sha256_files(paths: list[str], cache_path: str | os.PathLike | None = None) -> dict[str, str]:
    """sha256 of each file, reusing a JSON cache keyed by ``path|size|mtime_ns``.

    Parameters
    ----------
    paths : list of str
        Files to hash (must exist).
    cache_path : path-like, optional
        JSON cache file; read if present and rewritten atomically with the new entries. ``None``
        hashes everything afresh.

    Returns
    -------
    dict
        ``path -> hex digest``.
    """
    return verify_files(paths, cache_path, decode=False).hashes


def _decode(path: Path) -> tuple[str | None, str | None]:
    """Decode the full pixel data of ``path`` once: ``(pixel digest, None)``, or ``(None, why
    it cannot be decoded)`` (a truncated JPEG passes a header check and fails here). The pixel
    digest is the sha256 of the mode, the size and the decoded pixels, so the same image saved
    with other metadata, or re-saved losslessly (PNG), has the same digest."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            h = hashlib.sha256(f"{im.mode}|{im.size[0]}x{im.size[1]}|".encode())
            h.update(im.tobytes())
    except UnidentifiedImageError:
        return None, _unreadable(path)
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"cannot be decoded ({exc})"
    return h.hexdigest(), None


def _unreadable(path: Path) -> str:
    """Why PIL cannot identify ``path``: a git-lfs pointer (the image was never pulled) is said
    as such, anything else is not a readable image."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(GIT_LFS_HEADER))
    except OSError:
        head = b""
    if head.startswith(GIT_LFS_HEADER):
        return "a git-lfs pointer, not the image (run `git lfs pull` in its repository)"
    return "not a readable image (corrupt or not an image format PIL knows)"


@dataclass
class FileChecks:
    """What :func:`verify_files` found: ``hashes`` (path -> sha256 of the bytes, every file),
    ``pixels`` (path -> digest of the decoded pixels, every file that decodes; only with
    ``decode``) and ``problems`` (path -> why it cannot be decoded)."""

    hashes: dict[str, str]
    pixels: dict[str, str]
    problems: dict[str, str]


def verify_files(paths: list[str], cache_path: str | os.PathLike | None = None, *,
                 decode: bool = True) -> FileChecks:
    """sha256 and (``decode``) a full decode of every file, once: the byte hash, the pixel
    digest and the decode verdict are cached by ``path|size|mtime|ctime|inode`` (in
    ``cache_path``, JSON), so an unchanged file is neither re-read nor re-decoded (a file that
    failed is decoded again next time)."""
    cache = _read_cache(cache_path)
    out = FileChecks({}, {}, {})
    changed = False
    for p in paths:
        path = Path(p)
        key = _file_key(path)
        entry = cache.get(key)
        if not isinstance(entry, dict) or (decode and not entry.get("pixels")):
            pixels, problem = _decode(path) if decode else (None, None)
            # pixels: None = not decoded (hash only) or not decodable
            entry = {"sha256": _sha256_file(path), "pixels": pixels}
            if problem is not None:
                out.problems[str(p)] = problem
            cache[key] = entry
            changed = True
        out.hashes[str(p)] = entry["sha256"]
        if entry.get("pixels"):
            out.pixels[str(p)] = entry["pixels"]
    if cache_path is not None and changed:
        atomic_write_text(cache_path, json.dumps(cache))
    return out


def check_identical(policy: str) -> str:
    """Validate the ``identical_images`` argument."""
    if policy not in IDENTICAL_CHOICES:
        raise ValueError(f"identical_images={policy!r}: expected one of {IDENTICAL_CHOICES}")
    return policy


#: which copy of an agreeing group is kept: the one in the test split first (so a benchmark's
#: test set stays whole and the training copy goes), then valid, train, no split
_KEEP_ORDER = {"test": 0, "valid": 1, "train": 2}
#: how a skipped record of the identical-image policy starts
_IDENTICAL_REASON = "identical pixels to"
#: the columns that must agree for copies to be one labelled image
_LABEL_COLUMNS = ("age", "age_mean", "std", "subject")


def _label(row: pd.Series) -> tuple[str, ...]:
    return tuple("NA" if c not in row or pd.isna(row[c]) else str(row[c])
                 for c in _LABEL_COLUMNS)


def identical_groups(df: pd.DataFrame, pixels: dict[str, str]) -> list[pd.DataFrame]:
    """The groups of two or more rows of ``df`` whose images have the same decoded pixels
    (``pixels``: path -> pixel digest, :func:`verify_files`), each sorted by the copy that
    :func:`resolve_identical` keeps first."""
    digest = df["path"].map(pixels)
    mask = digest.notna() & digest.duplicated(keep=False)
    if not mask.any():
        return []
    dup = df[mask].assign(_pixels=digest[mask])
    split = dup["split"] if "split" in dup else pd.Series(pd.NA, index=dup.index)
    dup["_order"] = split.map(lambda s: _KEEP_ORDER.get(s, 3) if isinstance(s, str) else 3)
    return [g.sort_values(["_order", "image_id"]).drop(columns=["_pixels", "_order"])
            for _, g in dup.groupby("_pixels", sort=True)]


def _crosses(group: pd.DataFrame) -> str | None:
    """Where a group's copies could end up on two sides of a split (two subjects, two official
    splits, or no subject ids at all), said for the error; None when they cannot."""
    subjects = set(group["subject"].dropna().astype(str)) if "subject" in group else set()
    splits = set(group["split"].dropna().astype(str)) if "split" in group else set()
    if len(subjects) > 1:
        return f"subjects {sorted(subjects)}"
    if len(splits) > 1:
        return f"splits {sorted(splits)}"
    return None if subjects else "no subject ids, so a split can separate them"


def resolve_identical(df: pd.DataFrame, pixels: dict[str, str], *, policy: str, on_bad: str,
                      source: str) -> pd.DataFrame:
    """Apply the identical-image policy to a dataset table, before any split.

    Parameters
    ----------
    df : DataFrame
        A dataset table (``path``, ``image_id``, ``age``; ``age_mean``, ``std``, ``subject``,
        ``split`` where known).
    pixels : dict
        path -> pixel digest (:func:`verify_files`).
    policy : {"refuse", "dedupe"}
        ``"refuse"``: a group whose copies could fall on two sides of a split (two subjects, two
        official splits, or no subject ids) is a :class:`DataError` listing them; copies under one
        subject and one split stay (a warning). ``"dedupe"``: every group whose labels (age,
        apparent mean, σ, subject) agree keeps one copy (the test copy first, then valid, train,
        then the first image id), a group whose labels disagree is a label conflict and is dropped
        whole.
    on_bad : {"raise", "skip"}
        ``"skip"`` resolves what ``"refuse"`` would stop on as ``"dedupe"`` does.
    source : str
        Named in the error and the records.

    Returns
    -------
    DataFrame
        The table without the dropped copies. ``df.attrs["identical"]`` holds the counts
        (``policy``, ``groups``, ``files``, ``label_conflicts``, ``kept``, ``dropped``) and one
        record per group (``files``, ``ages``, ``action``); every dropped file is added to
        ``df.attrs["skipped"]`` with the reason.
    """
    check_identical(policy)
    check_on_bad(on_bad)
    groups = identical_groups(df, pixels)
    summary: dict[str, Any] = {"policy": policy, "groups": len(groups),
                               "files": int(sum(len(g) for g in groups)), "label_conflicts": 0,
                               "kept": 0, "dropped": 0, "records": []}
    refused = [(g, why) for g in groups if (why := _crosses(g)) is not None]
    if policy == "refuse" and refused and on_bad == "raise":
        listed = "\n  ".join(f"{', '.join(g['image_id'].astype(str))} ({why})"
                             for g, why in refused[:20])
        more = f"\n  ... and {len(refused) - 20} more" if len(refused) > 20 else ""
        raise DataError(
            f"{source}: {len(refused)} group(s) of identical images (same decoded pixels) could "
            f"fall on both sides of a split:\n  {listed}{more}\nremove the extra copies, or pass "
            "identical_images='dedupe' (--identical-images dedupe) to keep one copy of each "
            "group whose labels agree and drop groups whose labels disagree, or on_bad='skip'")
    resolve = groups if policy == "dedupe" else [g for g, _ in refused]
    if policy == "refuse" and len(resolve) < len(groups):
        kept_together = [", ".join(g["image_id"].astype(str)) for g in groups
                         if _crosses(g) is None]
        warnings.warn(f"{source}: {len(kept_together)} group(s) of identical images within one "
                      f"subject and split are kept, e.g. {kept_together[:3]}", stacklevel=3)
    drop: list[str] = []
    skipped: list[dict[str, str]] = []
    for g in resolve:
        ids = g["image_id"].astype(str).tolist()
        ages = g["age"].astype(int).tolist()
        conflict = len({_label(row) for _, row in g.iterrows()}) > 1
        gone = g["path"].tolist() if conflict else g["path"].tolist()[1:]
        action = ("dropped: label conflict" if conflict else f"kept {ids[0]}")
        summary["label_conflicts"] += int(conflict)
        summary["kept"] += 0 if conflict else 1
        summary["dropped"] += len(gone)
        summary["records"].append({"files": ids, "ages": ages, "action": action})
        for path, iid in zip(g["path"], ids, strict=True):
            if path not in gone:
                continue
            others = ", ".join(i for i in ids if i != iid)
            reason = (f"{_IDENTICAL_REASON} {others} (ages {ages}): "
                      + ("labels disagree, the whole group is dropped" if conflict
                         else f"one copy kept ({ids[0]})"))
            skipped.append({"path": path, "reason": reason,
                            "fix": "delete the extra copies, or correct the label of the right "
                                   "one and delete the others"})
        drop += gone
    attrs = dict(df.attrs)
    out = df[~df["path"].isin(drop)].reset_index(drop=True) if drop else df
    out.attrs.update(attrs)
    if skipped:
        out.attrs["skipped"] = list(attrs.get("skipped", [])) + skipped
    out.attrs["identical"] = summary
    return out


def identical_line(identical: dict) -> str:
    """One line of identical-image counts (``df.attrs["identical"]``).

    >>> identical_line({"policy": "dedupe", "groups": 3, "files": 7, "label_conflicts": 1,
    ...                 "kept": 2, "dropped": 5})
    'identical images (policy dedupe): 3 groups, 7 files; 1 label conflict (dropped whole), 2 groups kept once; 5 files dropped'
    """
    c = identical["label_conflicts"]
    return (f"identical images (policy {identical['policy']}): {identical['groups']} groups, "
            f"{identical['files']} files; {c} label conflict{'s' if c != 1 else ''} (dropped "
            f"whole), {identical['kept']} groups kept once; {identical['dropped']} files dropped")


def is_identical_record(record: dict[str, str]) -> bool:
    """Whether a ``df.attrs["skipped"]`` record is a copy the identical-image policy dropped
    (those are summarised by :func:`identical_line`, not listed one by one)."""
    return record["reason"].startswith(_IDENTICAL_REASON)


def content_digest(df: pd.DataFrame, hashes: dict[str, str]) -> str:
    """16 hex digits naming what a dataset table *is*: every image's id, label, subject, split
    and the sha256 of its bytes (sorted by image id; paths are left out, so a moved copy of the
    same data has the same digest)."""
    import hashlib

    cols = [c for c in ("image_id", "age", "age_mean", "std", "subject", "split",
                        # FG-NET's landmark extents, when its points/ folder is there: they
                        # decide a landmark crop (absent elsewhere: other digests unchanged)
                        "landmark_x0", "landmark_y0", "landmark_x1", "landmark_y1") if c in df]
    rows = df[cols].astype(str).assign(sha256=df["path"].map(hashes)).sort_values("image_id")
    blob = rows.to_csv(index=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# dataset manifests


def dataset_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Counts and the age histogram of a dataset table (what a manifest records besides hashes)."""
    ages = df["age"].astype(int)
    subjects = df["subject"].dropna() if "subject" in df else pd.Series([], dtype="string")
    split = df["split"].fillna("none") if "split" in df else pd.Series(["none"] * len(df))
    return {
        "n_images": int(len(df)),
        "n_subjects": int(subjects.nunique()),
        "age_min": int(ages.min()) if len(df) else None,
        "age_max": int(ages.max()) if len(df) else None,
        "age_histogram": {str(a): int(c) for a, c in sorted(Counter(ages.tolist()).items())},
        "split_counts": {str(k): int(v) for k, v in split.astype(str).value_counts().items()},
    }


def write_dataset_manifest(
    df: pd.DataFrame, path: str | os.PathLike, *, cache_path: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a dataset manifest as JSON: counts, age histogram, sha256 per file, skipped files.

    Parameters
    ----------
    df : DataFrame
        A dataset table (columns ``path``, ``age``, ``subject``, ``split``, ``image_id``).
    path : path-like
        The JSON file to write (atomically).
    cache_path : path-like, optional
        sha256 cache (see :func:`sha256_files`); defaults to ``.sha256-cache.json`` next to
        ``path``.
    extra : dict, optional
        More fields (dataset name, loader arguments).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if cache_path is None:
        cache_path = path.parent / ".sha256-cache.json"
    hashes = sha256_files(df["path"].tolist(), cache_path)
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        **dataset_summary(df),
        "skipped": list(df.attrs.get("skipped", [])),
        "identical": df.attrs.get("identical"),
        "files": {
            str(iid): {"path": p, "sha256": hashes[p], "age": int(a)}
            for iid, p, a in zip(df["image_id"], df["path"], df["age"], strict=True)
        },
    }
    if extra:
        manifest.update(extra)
    return write_json(path, manifest)


@dataclass
class ManifestReport:
    """Result of :func:`verify_dataset_manifest`; ``ok`` when nothing differs."""

    changed: list[str] = field(default_factory=list)  # same image_id, different bytes or label
    missing: list[str] = field(default_factory=list)  # in the manifest, not in the table/disk
    added: list[str] = field(default_factory=list)  # in the table, not in the manifest

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def __str__(self) -> str:
        if self.ok:
            return "dataset matches its manifest"
        parts = []
        for name in ("changed", "missing", "added"):
            items = getattr(self, name)
            if items:
                shown = ", ".join(items[:10]) + (" ..." if len(items) > 10 else "")
                parts.append(f"{len(items)} {name}: {shown}")
        return "; ".join(parts)


def verify_dataset_manifest(
    df: pd.DataFrame, path: str | os.PathLike, *, cache_path: str | os.PathLike | None = None,
    strict: bool = False,
) -> ManifestReport:
    """Compare a dataset table (and its files on disk) with a manifest written earlier.

    Parameters
    ----------
    df : DataFrame
        The table as loaded now.
    path : path-like
        The manifest written by :func:`write_dataset_manifest`.
    cache_path : path-like, optional
        sha256 cache, as in :func:`write_dataset_manifest`.
    strict : bool
        Raise :class:`DataError` on any difference instead of warning.

    Returns
    -------
    ManifestReport
        ``changed`` (bytes or label differ), ``missing`` (listed in the manifest but absent from
        the table or from disk) and ``added`` (in the table only) image ids.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(
            f"{path}: no dataset manifest; write one first with write_dataset_manifest(df, path)"
        )
    manifest = read_json(path)
    if cache_path is None:
        cache_path = path.parent / ".sha256-cache.json"
    old = manifest.get("files", {}) if isinstance(manifest, dict) else None
    if not isinstance(old, dict) or not all(
            isinstance(e, dict) and {"sha256", "age"} <= set(e) for e in old.values()):
        raise DataError(f"{path}: not a dataset manifest ('files' must map image ids to their "
                        "sha256 and age); delete it to have it written again, or pass another "
                        "--manifest")
    now = {str(i): (p, int(a)) for i, p, a in zip(df["image_id"], df["path"], df["age"],
                                                    strict=True)}
    on_disk = [p for p, _ in now.values() if Path(p).is_file()]
    hashes = sha256_files(on_disk, cache_path)
    report = ManifestReport()
    for iid, entry in old.items():
        if iid not in now or now[iid][0] not in hashes:
            report.missing.append(iid)
        elif hashes[now[iid][0]] != entry["sha256"] or now[iid][1] != entry["age"]:
            report.changed.append(iid)
    report.added = sorted(set(now) - set(old))
    report.missing.sort()
    report.changed.sort()
    if not report.ok:
        msg = (f"{path}: the dataset differs from its manifest: {report}. If the change is "
               "intended, delete the manifest to have it rewritten.")
        if strict:
            raise DataError(msg)
        warnings.warn(msg, stacklevel=2)
    return report
