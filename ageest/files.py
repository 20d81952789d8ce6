"""Files written atomically (a temporary name, then a rename: a partial file never looks finished),
JSON read and written one way, and the manifest every results folder carries. The base every
layer writes through; the catalogue-checked tables and figures are :mod:`ageest.pipeline.artefacts`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.
    Errors name ``path`` (not the temporary file): a folder there is an ``IsADirectoryError``."""
    import errno

    path = Path(path)
    if path.is_dir():  # the rename would fail naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode an ordinary open() would (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # e.g. ENOSPC from write(): say which file could not be written
            raise OSError(exc.errno, f"{exc.strerror or exc}: {path}", str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    # os.umask can only be read by setting it; do that once, at import, not per write (threads)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def plain(value: Any, *, nonfinite_as_none: bool = False) -> Any:
    """Plain Python data for YAML and JSON: mappings with text keys, lists for tuples, text for
    paths, Python numbers for numpy and torch scalars and arrays; with ``nonfinite_as_none``
    (JSON) NaN and infinities become ``None`` (YAML keeps them).

    >>> import numpy as np
    >>> plain({1: (np.float32(0.5), Path("a"))}), plain([float("nan")], nonfinite_as_none=True)
    ({'1': [0.5, 'a']}, [None])
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v, nonfinite_as_none=nonfinite_as_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, nonfinite_as_none=nonfinite_as_none) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return plain(value.tolist(), nonfinite_as_none=nonfinite_as_none)
    if nonfinite_as_none and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN/inf written as ``null``)."""
    return atomic_write_text(path, json.dumps(plain(obj, nonfinite_as_none=True), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json`, naming the file on a parse error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to have it rewritten") from exc


def write_manifest(
    out_dir: str | os.PathLike, *, parameters: Mapping[str, Any] | None = None,
    seeds: Any = None, wall_time_s: float | None = None, extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``manifest.json`` in ``out_dir``: versions, git commit, device, parameters, seeds,
    wall time (see :func:`ageest.envinfo.environment_report`)."""
    from ageest.envinfo import environment_report

    manifest: dict[str, Any] = environment_report()
    manifest["parameters"] = dict(parameters or {})
    manifest["seeds"] = seeds
    manifest["wall_time_s"] = wall_time_s
    if extra:
        manifest.update(extra)
    return write_json(Path(out_dir) / "manifest.json", manifest)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
