"""Datasets by name: ``get_dataset("synthetic-fgnet")`` etc. (timm-style registry).

=================== ============ =============================================================
name                ages         source
=================== ============ =============================================================
synthetic-fgnet     0-69         FG-NET-format synthetic faces, generated on first use
synthetic-clap      0-100        APPA-REAL-format synthetic faces, generated on first use
fgnet               0-69         ``--data-dir``: the FG-NET images
clap2016            0-100        ``--data-dir``: the APPA-REAL release
utkface             0-116        ``--data-dir``: UTKFace images
csv                 from data    ``--csv`` (+ ``--image-root``): path, age[, subject, std, split]
benchmark-json      from data    ``--json`` + ``--image-root``: a benchmark database JSON
=================== ============ =============================================================

Synthetic datasets live in ``ageest.paths.DATA / "synthetic-fgnet"`` (``-<size>px-seed<seed>``
appended when not the default 64 px / seed 0). They are written to a temporary folder and
renamed, so an interrupted generation never looks complete; a later call reuses the folder
after checking its generator marker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ageest import paths
from ageest.data import loaders, synthetic
from ageest.data.integrity import (
    DataError,
    check_identical,
    check_on_bad,
    verify_dataset_manifest,
    write_dataset_manifest,
)


@dataclass(frozen=True)
class DatasetSpec:
    """What a registry entry needs and declares."""

    name: str
    description: str
    start_age: int | None  # None: taken from the data (or age_range)
    end_age: int | None
    needs: tuple[str, ...]  # get_dataset arguments that must be given
    synthetic: bool
    has_own_split: bool
    default_protocol: str
    #: the identical-image policy when none is given (:func:`~ageest.data.integrity.
    #: resolve_identical`): ``refuse`` where subjects or an official split say who is who, so a
    #: copy across them is a data error to fix; ``dedupe`` for subject-free collections known
    #: to hold copies under several names (UTKFace)
    identical_images: str = "refuse"


@dataclass
class DatasetInfo:
    """What a loaded dataset is: label range, where it lives, which protocols apply."""

    name: str
    start_age: int
    end_age: int
    root: Path
    synthetic: bool
    has_own_split: bool
    default_protocol: str = "group-kfold"
    manifest: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """``end_age - start_age + 1``."""
        return self.end_age - self.start_age + 1


DATASETS: dict[str, DatasetSpec] = {
    "synthetic-fgnet": DatasetSpec(
        "synthetic-fgnet", "FG-NET-format synthetic faces (82 subjects, 1,002 images)",
        *loaders.FGNET_AGE_RANGE, (), True, False, "lopo"),
    "synthetic-clap": DatasetSpec(
        "synthetic-clap", "APPA-REAL-format synthetic faces with apparent-age mean/std",
        *loaders.CLAP_AGE_RANGE, (), True, True, "holdout"),
    "fgnet": DatasetSpec("fgnet", "FG-NET (NNNAxx.JPG images)", *loaders.FGNET_AGE_RANGE,
                         ("data_dir",), False, False, "lopo"),
    "clap2016": DatasetSpec("clap2016", "CLAP2016 / APPA-REAL release",
                            *loaders.CLAP_AGE_RANGE, ("data_dir",), False, True, "holdout"),
    "utkface": DatasetSpec("utkface", "UTKFace ({age}_{gender}_{race}_{date}.jpg)",
                           *loaders.UTKFACE_AGE_RANGE, ("data_dir",), False, False,
                           "group-kfold", identical_images="dedupe"),
    "csv": DatasetSpec("csv", "any image folder + CSV (path, age[, subject, std, split])",
                       None, None, ("csv",), False, False, "group-kfold"),
    "benchmark-json": DatasetSpec(
        "benchmark-json", "Facial-Age-Estimation-Benchmark database JSON", None, None,
        ("json", "image_root"), False, True, "holdout"),
}

_FLAGS = {"data_dir": "--data-dir", "csv": "--csv", "json": "--json",
          "image_root": "--image-root"}


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS)


def synthetic_root(name: str, *, size: int = 64, seed: int = 0) -> Path:
    """Folder of a synthetic dataset under ``ageest.paths.DATA``.

    >>> synthetic_root("synthetic-fgnet").name, synthetic_root("synthetic-clap", size=32).name
    ('synthetic-fgnet', 'synthetic-clap-32px-seed0')
    """
    suffix = "" if (size, seed) == (64, 0) else f"-{size}px-seed{seed}"
    return paths.writable_root(paths.DATA, "AGEEST_DATA") / f"{name}{suffix}"


def ensure_synthetic(name: str, root: str | os.PathLike, *, size: int = 64, seed: int = 0,
                     **kwargs: Any) -> Path:
    """Generate synthetic dataset ``name`` in ``root`` unless a complete copy is there.

    A complete copy carries the generator marker with the same kind, size, seed and generator
    version; a folder with a different marker, or none, is an error (never overwritten).
    """
    writers: dict[str, tuple[str, Callable[..., Path]]] = {
        "synthetic-fgnet": ("fgnet-like", synthetic.write_fgnet_like),
        "synthetic-clap": ("clap-like", synthetic.write_clap_like),
    }
    kind, writer = writers[name]
    root = Path(root)
    if not (root.is_dir() and any(root.iterdir())):
        try:
            return writer(root, seed=seed, size=size, **kwargs)
        except FileExistsError:
            # Another process (e.g. a parallel run of the same grid) published it meanwhile;
            # fall through and check its marker like any existing copy.
            if not (root.is_dir() and any(root.iterdir())):
                raise
    marker = synthetic.read_marker(root)
    want = {"kind": kind, "size": size, "seed": seed,
            "generator_version": synthetic.GENERATOR_VERSION, **kwargs}
    if marker is None:
        raise DataError(f"{root} exists but was not written by the synthetic generator "
                        f"(no {synthetic.MARKER}); delete it or choose another --data-dir")
    diff = {k: (marker.get(k), v) for k, v in want.items() if marker.get(k) != v}
    if diff:
        raise DataError(f"{root} holds a synthetic dataset generated with other "
                        f"parameters {diff} (found, wanted); delete the folder to "
                        "regenerate it")
    return root


def get_dataset(
    name: str, *, data_dir: str | os.PathLike | None = None, csv: str | os.PathLike | None = None,
    json: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
    size: int = 64, seed: int = 0, on_bad: str = "raise",
    loader_options: Mapping[str, Any] | None = None,
    manifest: str | os.PathLike | None = None, verify: bool = True,
    hash_cache: str | os.PathLike | None = None, identical_images: str | None = None,
) -> tuple[pd.DataFrame, DatasetInfo]:
    """Load dataset ``name`` (see :data:`DATASETS`) into a table plus its :class:`DatasetInfo`.

    Parameters
    ----------
    name : str
        A registry name.
    data_dir : path-like, optional
        Dataset folder (``fgnet``, ``clap2016``, ``utkface``; for synthetic data: where to
        generate/reuse it instead of ``ageest.paths.DATA``).
    csv : path-like, optional
        Label CSV for ``csv``.
    json : path-like, optional
        Database JSON for ``benchmark-json``.
    image_root : path-like, optional
        Image folder for ``csv`` (default: the CSV's folder) and ``benchmark-json``.
    size, seed : int
        Image size and seed of synthetic datasets (ignored for real ones).
    on_bad : {"raise", "skip"}
        Bad-input policy passed to the loader.
    loader_options : mapping, optional
        Extra loader keywords (e.g. ``{"ignore_list": ..., "use_face_crops": True}`` for
        ``clap2016``, ``{"age_range": (0, 80)}`` for ``csv``).
    manifest : path-like, optional
        Dataset manifest JSON: verified (warning on differences) when it exists, else written.
    verify : bool
        Read every image once in full (sha256 and a complete decode, cached by path, size,
        mtime, ctime and inode in ``hash_cache``), so a truncated file fails here, naming it, and
        not after a training epoch; identical images (same decoded pixels) are resolved by the
        ``identical_images`` policy before any split. Sets ``df.attrs["content_digest"]``
        (:func:`~ageest.data.integrity.content_digest`), which run identities include, and
        ``df.attrs["identical"]`` (the counts and groups).
    hash_cache : path-like, optional
        Where the per-file cache lives (default ``<ageest.paths.DATA>/.file-cache.json``).
    identical_images : {"refuse", "dedupe"}, optional
        What to do with identical images (:func:`~ageest.data.integrity.resolve_identical`);
        default: the dataset's (``dedupe`` for UTKFace, ``refuse`` for the others).
        ``on_bad="skip"`` resolves what ``refuse`` would stop on. UTKFace's ``split_csv`` is
        applied after this step, so a split never sees the dropped copies.

    Returns
    -------
    (DataFrame, DatasetInfo)

    Examples
    --------
    >>> get_dataset("fgnet")
    Traceback (most recent call last):
    ...
    ValueError: dataset 'fgnet' needs --data-dir (data_dir=...): FG-NET (NNNAxx.JPG images)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    check_on_bad(on_bad)
    spec = DATASETS[name]
    policy = check_identical(identical_images or spec.identical_images)
    given = {"data_dir": data_dir, "csv": csv, "json": json, "image_root": image_root}
    for need in spec.needs:
        if given[need] is None:
            raise ValueError(f"dataset {name!r} needs {_FLAGS[need]} ({need}=...): "
                             f"{spec.description}")
    opts = dict(loader_options or {})
    # a split CSV is applied to the table after identical copies are resolved (it lists the
    # images that remain), so no copy is ever assigned a side
    split_csv = opts.pop("split_csv", None) if name == "utkface" else None
    df, root = _load(name, opts, data_dir=data_dir, csv=csv, json=json, image_root=image_root,
                     size=size, seed=seed, on_bad=on_bad)
    if verify:
        df = _verify_content(df, on_bad=on_bad, source=f"dataset {name!r} ({root})",
                             cache_path=hash_cache, identical_images=policy)
    if split_csv is not None:
        from ageest.data.splits import apply_split_csv

        df = apply_split_csv(df, split_csv)
    info = _dataset_info(name, df, root, opts.get("age_range"))
    df.attrs["dataset"] = name
    if manifest is not None:
        manifest = Path(manifest)
        if manifest.is_file():
            info.extra["manifest_report"] = str(verify_dataset_manifest(df, manifest))
        else:
            write_dataset_manifest(df, manifest, extra={"dataset": name})
        info.manifest = manifest
    return df, info


def _load(name: str, opts: dict[str, Any], *, data_dir, csv, json, image_root, size: int,
          seed: int, on_bad: str) -> tuple[pd.DataFrame, Path]:
    """Call dataset ``name``'s loader (generating synthetic data on first use); returns the
    table and the folder its images live in."""
    if name == "synthetic-fgnet":
        root = Path(data_dir) if data_dir is not None else synthetic_root(name, size=size,
                                                                           seed=seed)
        ensure_synthetic(name, root, size=size, seed=seed)
        df = loaders.load_fgnet(root, on_bad=on_bad, **opts)
    elif name == "synthetic-clap":
        root = Path(data_dir) if data_dir is not None else synthetic_root(name, size=size,
                                                                           seed=seed)
        ensure_synthetic(name, root, size=size, seed=seed)
        opts.setdefault("use_face_crops", True)
        opts.setdefault("ignore_list", root / "ignore_list.csv")
        df = loaders.load_clap2016(root, on_bad=on_bad, **opts)
    elif name == "fgnet":
        root = Path(data_dir)
        df = loaders.load_fgnet(root, on_bad=on_bad, **opts)
    elif name == "clap2016":
        root = Path(data_dir)
        # the official code reads <CLAP folder>/ignore_list.txt; use it when it is there
        if opts.get("ignore_list") is None and (root / "ignore_list.txt").is_file():
            opts["ignore_list"] = root / "ignore_list.txt"
        df = loaders.load_clap2016(root, on_bad=on_bad, **opts)
    elif name == "utkface":
        root = Path(data_dir)
        df = loaders.load_utkface(root, on_bad=on_bad, **opts)
    elif name == "csv":
        df = loaders.load_csv(csv, image_root, on_bad=on_bad, **opts)
        root = Path(df.attrs["image_root"])
    else:  # benchmark-json
        df = loaders.load_benchmark_json(json, image_root, on_bad=on_bad, **opts)
        root = Path(df.attrs["image_root"])
    return df, root


def _dataset_info(name: str, df: pd.DataFrame, root: Path,
                  declared: tuple[int, int] | None) -> DatasetInfo:
    """The label range (the registry's, else the declared or observed one), the default
    protocol and whether an official split is present."""
    spec = DATASETS[name]
    start, end = spec.start_age, spec.end_age
    if start is None:
        start, end = (declared if declared is not None
                      else (int(df["age"].min()), int(df["age"].max())))
        loaders.check_class_count(start, end, "age_range")
    has_split = spec.has_own_split and bool(df["split"].notna().any())
    info = DatasetInfo(name=name, start_age=int(start), end_age=int(end),
                       root=Path(root).resolve(), synthetic=spec.synthetic,
                       has_own_split=has_split,
                       default_protocol=spec.default_protocol if (
                           spec.default_protocol != "holdout" or has_split) else "group-kfold")
    return info


def _verify_content(df: pd.DataFrame, *, on_bad: str, source: str,
                    cache_path: str | os.PathLike | None, identical_images: str
                    ) -> pd.DataFrame:
    """Full decode + sha256 of every image (cached), bad files raised or skipped per
    ``on_bad``, identical images resolved per ``identical_images``, the content digest recorded
    in ``df.attrs``."""
    from ageest import paths
    from ageest.data.integrity import (
        BadRecords,
        content_digest,
        resolve_identical,
        verify_files,
    )

    if cache_path is None:
        cache_path = paths.writable_root(paths.DATA, "AGEEST_DATA") / ".file-cache.json"
    checks = verify_files(df["path"].tolist(), cache_path)
    problems = checks.problems
    if problems:
        bad = BadRecords(on_bad, source)
        for path, why in problems.items():
            bad.add(path, why, "replace the file with a good copy or remove it")
        skipped = bad.finish()  # raises under on_bad="raise"
        attrs = dict(df.attrs)
        df = df[~df["path"].isin(problems)].reset_index(drop=True)
        df.attrs.update(attrs)
        df.attrs["skipped"] = list(attrs.get("skipped", [])) + skipped
    df = resolve_identical(df, checks.pixels, policy=identical_images, on_bad=on_bad,
                           source=source)
    df.attrs["content_digest"] = content_digest(df, checks.hashes)
    return df


__all__ = ["DATASETS", "DatasetInfo", "DatasetSpec", "ensure_synthetic", "get_dataset",
           "list_datasets", "synthetic_root"]
