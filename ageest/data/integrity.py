"""Data integrity: the errors bad input raises, per-file checks, and dataset manifests.

Every loader funnels its problems through :class:`BadRecords`: with ``on_bad="raise"`` (the
default) it collects *all* problems of a load and raises one :class:`DataError` that lists each
file, what is wrong with it and how to fix it; with ``on_bad="skip"`` it drops those records and
lists them in ``df.attrs["skipped"]`` (and in the dataset manifest), so nothing is dropped
silently.

A dataset manifest (:func:`write_dataset_manifest`) holds counts, the age histogram and a
sha256 per file; :func:`verify_dataset_manifest` compares a later load against it and reports
changed, missing and added files. Hashes are cached in a small JSON file keyed by
``(path, size, mtime)`` so a second verification of an unchanged dataset reads no image.
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

from ageest.artifacts import atomic_write_text, read_json, write_json

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
ON_BAD_CHOICES = ("raise", "skip")
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
        self.records.append({"path": str(path), "reason": reason, "fix": fix})

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
    try:
        with Image.open(path) as im:
            if mode == "decode":
                im.load()
            elif im.size[0] <= 0 or im.size[1] <= 0:
                return f"image has size {im.size}"
    except UnidentifiedImageError:
        return "not a readable image (corrupt or not an image format PIL knows)"
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for damaged data
        return f"corrupt image ({exc})"
    return None


# --------------------------------------------------------------------------------------------
# sha256 with a (path, size, mtime) cache


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    return verify_files(paths, cache_path, decode=False)[0]


def _decode_problem(path: Path) -> str | None:
    """Why the full pixel data of ``path`` cannot be decoded (a truncated JPEG passes a header
    check and fails here), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except UnidentifiedImageError:
        return "not a readable image (corrupt or not an image format PIL knows)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded ({exc})"
    return None


def verify_files(paths: list[str], cache_path: str | os.PathLike | None = None, *,
                 decode: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 and (``decode``) a full decode of every file, once: both are cached by
    ``path|size|mtime_ns`` (in ``cache_path``, JSON), so an unchanged file is neither re-read
    nor re-decoded.

    Returns ``(hashes, problems)``: ``path -> sha256`` for every file, and ``path -> why it
    cannot be decoded`` for the bad ones (a file that failed is decoded again next time).
    """
    cache = _read_cache(cache_path)
    hashes: dict[str, str] = {}
    problems: dict[str, str] = {}
    changed = False
    for p in paths:
        path = Path(p)
        key = _file_key(path)
        entry = cache.get(key)
        if not isinstance(entry, dict) or (decode and not entry.get("decodes")):
            problem = _decode_problem(path) if decode else None
            # decodes: None = not checked (hash only), True/False = the full decode's verdict
            entry = {"sha256": _sha256_file(path), "decodes": (problem is None) if decode else None}
            if problem is not None:
                problems[str(p)] = problem
            cache[key] = entry
            changed = True
        hashes[str(p)] = entry["sha256"]
    if cache_path is not None and changed:
        atomic_write_text(cache_path, json.dumps(cache))
    return hashes, problems


def check_duplicate_content(df: pd.DataFrame, hashes: dict[str, str], *, source: str) -> None:
    """Byte-identical images under two subjects (or two splits) put one face on both sides of a
    split: a :class:`DataError` naming both files. Under one subject it is only a warning."""
    digest = df["path"].map(hashes)
    mask = digest.duplicated(keep=False)
    if not mask.any():
        return
    dup = df[mask].copy()
    dup["_sha"] = digest[mask]
    leaks, same = [], []
    for _, group in dup.groupby("_sha", sort=True):
        files = group["path"].tolist()
        subjects = set(group["subject"].dropna().astype(str)) if "subject" in group else set()
        splits = set(group["split"].dropna().astype(str)) if "split" in group else set()
        if len(subjects) > 1 or len(splits) > 1 or (not subjects and not splits):
            where = (f"subjects {sorted(subjects)}" if len(subjects) > 1 else
                     f"splits {sorted(splits)}" if len(splits) > 1 else "no subject ids")
            leaks.append(f"{files[0]} and {files[1]} are byte-identical ({where})")
        else:
            same.append(f"{files[0]} = {files[1]}")
    if leaks:
        raise DataError(f"{source}: identical images under different subjects or splits would "
                        "leak one face across the split:\n  " + "\n  ".join(leaks[:20])
                        + "\nremove the duplicate copies")
    if same:
        warnings.warn(f"{source}: {len(same)} byte-identical image pair(s) within one subject, "
                      f"e.g. {same[:3]}", stacklevel=3)


def content_digest(df: pd.DataFrame, hashes: dict[str, str]) -> str:
    """16 hex digits naming what a dataset table *is*: every image's id, label, subject, split
    and the sha256 of its bytes (sorted by image id; paths are left out, so a moved copy of the
    same data has the same digest)."""
    import hashlib

    cols = [c for c in ("image_id", "age", "age_mean", "std", "subject", "split") if c in df]
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
    old = manifest.get("files", {})
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
