"""``ageest fetch fgnet``: the authors' FG-NET release, downloaded (or taken from a local copy),
checked, and unpacked atomically with the manifest later runs verify.

The FG-NET authors distribute ``FGNET.zip`` (about 46 MB; linked from the official AMR README):
``FGNET/images/`` with 1,002 photos ``NNNAxx.JPG`` and ``FGNET/points/`` with one 68-point
landmark file per photo (lower-case names, ``001a02.pts``). ::

    ageest fetch fgnet                               # download from FGNET_URL
    ageest fetch fgnet --from ~/Downloads/FGNET.zip  # a copy of the zip (offline)
    ageest fetch fgnet --from ~/data/FGNET           # an unpacked copy (images/ and points/)
    ageest fetch fgnet --to ~/data/FGNET-release     # where it goes (default DATA/FGNET)

Nothing is half-done: the archive is read into a temporary folder beside the target, every
check runs there (1,002 images of 82 subjects aged 0-69 under FG-NET's names, one landmark file
of 68 points for each), and only then is the folder renamed into place. ``fetch.json`` in it
records the source and the archive's SHA-256; ``manifest.json`` is the dataset manifest
(:func:`ageest.data.integrity.write_dataset_manifest`) that ``ageest data --manifest`` and
later runs verify. A second call finds the release in place and checks it again (idempotent).
Any problem is one line naming the URL or the file and the fix.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ageest import __version__, paths
from ageest.data.integrity import DataError, MissingDataError
from ageest.files import file_sha256, read_json, write_json

#: the authors' distribution of FG-NET (linked from the official AMR-Loss README)
FGNET_URL = "http://yanweifu.github.io/FG_NET_data/FGNET.zip"
#: the release's content: what a fetched copy must hold
FGNET_RELEASE = {"n_images": 1002, "n_subjects": 82, "age_min": 0, "age_max": 69}
FETCH_RECORD = "fetch.json"
MANIFEST = "manifest.json"
DATASETS = ("fgnet",)


def fetch_fgnet(source: str | Path | None = None, to: str | Path | None = None, *,
                expected: dict[str, int] | None = None,
                log: Callable[[str], None] = print) -> Path:
    """Bring the FG-NET release to ``to`` (see the module docstring) and return that folder.

    ``expected`` overrides :data:`FGNET_RELEASE` (tests fetch a small release of their own).
    """
    to = Path(to).expanduser() if to else paths.writable_root(paths.DATA, "AGEEST_DATA") / "FGNET"
    expected = FGNET_RELEASE if expected is None else expected
    if (to / FETCH_RECORD).is_file():
        summary = check_release(to, expected)
        record = read_json(to / FETCH_RECORD)
        log(f"FG-NET is already in {to} (from {record.get('source')}, "
            f"{_archive(record.get('archive_sha256'))}): {_describe(summary)}")
        return to
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise DataError(f"--to {to}: exists and was not written by ageest fetch; choose another "
                        "folder or remove it")
    to.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=to.parent, prefix=f".{to.name}-fetch-") as tmp:
        staging = Path(tmp) / "release"
        where, digest = _unpack(source or FGNET_URL, Path(tmp), staging)
        summary, df = _checked(staging, expected)
        _write_manifest(df, staging, to)
        write_json(staging / FETCH_RECORD, {
            "dataset": "fgnet", "source": str(where), "archive_sha256": digest,
            "ageest_version": __version__, **summary})
        if to.exists():
            to.rmdir()  # empty (checked above)
        staging.rename(to)  # one step: the folder is there whole or not at all
    log(f"FG-NET from {where}: {_describe(summary)}; {_archive(digest)} -> {to}")
    return to


def _archive(digest: str | None) -> str:
    """How a fetch line names its source's digest: an archive's SHA-256, or that a folder was
    copied (each photo's SHA-256 is in the dataset manifest either way)."""
    return f"archive sha256 {digest}" if digest else "a folder, no archive (sha256 per file " \
        "in manifest.json)"


def _describe(summary: dict[str, Any]) -> str:
    return (f"{summary['n_images']} images of {summary['n_subjects']} subjects, ages "
            f"{summary['age_min']}-{summary['age_max']}, {summary['n_points']} landmark files, "
            f"{summary['n_grayscale']} grayscale photos")


def _unpack(source: str | Path, tmp: Path, staging: Path) -> tuple[str, str | None]:
    """The release under ``staging`` (``images/``, ``points/``) from a URL, a zip or a folder;
    returns where it came from and the archive's SHA-256 (None for a folder)."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        archive = _download(text, tmp / "FGNET.zip")
    else:
        archive = Path(text).expanduser()
        if not archive.exists():
            raise MissingDataError(f"--from {archive}: no such file or folder; give the "
                                   "authors' FGNET.zip or its unpacked folder")
        if archive.is_dir():
            root = release_root(archive)
            for part in ("images", "points"):
                shutil.copytree(root / part, staging / part)
            return str(archive), None
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{archive}: not a zip archive; give the authors' FGNET.zip ("
                        f"{FGNET_URL}) or its unpacked folder")
    unpacked = tmp / "unpacked"
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = Path(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise DataError(f"{archive}: holds {member.filename!r}, a path outside the "
                                    "archive's folder; this is not the FG-NET release")
                if "__MACOSX" in name.parts:  # macOS metadata the authors' zip carries
                    continue
                zf.extract(member, unpacked)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot be unpacked ({exc}); download it again") from None
    root = release_root(unpacked)
    staging.mkdir(parents=True)
    for part in ("images", "points"):
        (root / part).rename(staging / part)
    return str(source), file_sha256(archive)


def _download(url: str, path: Path) -> Path:
    """``url`` into ``path``; one line naming the URL and the offline route when it fails."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {url} ({reason}); on a machine with network access "
                        "download it, then run `ageest fetch fgnet --from FGNET.zip`") from None
    return path


def release_root(folder: Path) -> Path:
    """The folder holding ``images/`` (and ``points/``) in an unpacked release: ``folder``
    itself, its ``FGNET/`` (the zip's layout), or the one sub-folder that has them."""
    for candidate in (folder, folder / "FGNET",
                      *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / "images").is_dir():
            if not (candidate / "points").is_dir():
                raise DataError(f"{candidate}: has images/ but no points/ (the landmark "
                                "files); the release has both: use the authors' FGNET.zip")
            return candidate
    raise DataError(f"{folder}: no images/ folder (the release is FGNET/images and "
                    "FGNET/points); give the authors' FGNET.zip or its unpacked folder")


def check_release(root: Path, expected: dict[str, int]) -> dict[str, Any]:
    """Check an unpacked release and summarise it: every image under FG-NET's name (the
    loader's checks), the counts ``expected``, and one parsable 68-point landmark file per
    image. A problem is a :class:`DataError` naming the file."""
    return _checked(root, expected)[0]


def _checked(root: Path, expected: dict[str, int]) -> tuple[dict[str, Any], Any]:
    """:func:`check_release`'s summary and the dataset table it loaded (read once, so the
    manifest is written from the same load)."""
    import warnings

    from PIL import Image

    from ageest.data.loaders import load_fgnet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the counts are checked below, as errors
        df = load_fgnet(root / "images", expected=expected)
    found = {"n_images": len(df), "n_subjects": int(df["subject"].nunique()),
             "age_min": int(df["age"].min()), "age_max": int(df["age"].max())}
    wrong = [f"{k} {found[k]} (the release has {v})" for k, v in expected.items()
             if found.get(k) != v]
    if wrong:
        raise DataError(f"{root}: not the FG-NET release: {', '.join(wrong)}; download it "
                        f"again ({FGNET_URL})")
    # the loader read every landmark file beside the images (one that does not parse is an
    # error naming it); a photo without one has no extent
    lacking = [Path(p).name for p, x in zip(df["path"], df.get("landmark_x0", [math.nan] * len(df)),
                                             strict=True) if not math.isfinite(x)]
    if lacking:
        raise DataError(f"{root / 'points'}: no landmark file for {len(lacking)} image(s) "
                        f"({', '.join(lacking[:5])}); the release has one per image")
    grayscale = 0
    for path in df["path"]:
        with Image.open(path) as im:
            grayscale += im.mode in ("L", "LA", "I;16", "I")
    return {**found, "n_points": len(df), "n_grayscale": grayscale}, df


def _write_manifest(df, staging: Path, final: Path) -> None:
    """The dataset manifest of the staged images (``df``, as :func:`_checked` loaded them), with
    their paths as they will be in ``final``."""
    from ageest.data.integrity import write_dataset_manifest

    path = write_dataset_manifest(df, staging / MANIFEST, cache_path=staging / ".sha256-cache.json",
                                  extra={"dataset": "fgnet"})
    (staging / ".sha256-cache.json").unlink(missing_ok=True)
    manifest = read_json(path)
    for entry in manifest["files"].values():
        entry["path"] = str(final / Path(entry["path"]).relative_to(staging))
    write_json(path, manifest)
