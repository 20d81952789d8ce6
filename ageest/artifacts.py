"""Writing results: every table, figure, JSON file and manifest goes through these helpers, so
all outputs share one format and are written atomically (a partial file never looks finished)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd


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


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and paths to JSON types; non-finite floats become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN/inf written as ``null``)."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json`, naming the file on a parse error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to have it rewritten") from exc


def save_table(
    df: pd.DataFrame, out: str | os.PathLike, name: str, caption: str = "", *,
    synthetic: bool = False, float_format: str = "{:.3f}", index: bool = False,
) -> dict[str, Path]:
    """Save a table declared in :mod:`ageest.catalogue` as ``out/tables/name.{csv,md,tex}``.

    ``out`` is a results root. The CSV keeps full precision; Markdown and LaTeX use
    ``float_format``. ``caption`` is written above the Markdown table and as the LaTeX caption,
    prefixed with the synthetic-data note when ``synthetic``. Every table of the package and the
    notebooks is written through this function.
    """
    from ageest import catalogue

    catalogue.artefact(catalogue.TABLE, name)
    caption = catalogue.caption(caption, synthetic)
    out_dir = Path(out) / "tables"
    paths: dict[str, Path] = {}
    paths["csv"] = atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=index))
    shown = _formatted(df, float_format)
    # numbers stay as formatted (tabulate would re-parse "0.060" into 0.06), right-aligned
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    if index:
        align = ["left", *align]
    md = shown.to_markdown(index=index, disable_numparse=True, colalign=align)
    if caption:
        md = f"{caption}\n\n{md}"
    paths["md"] = atomic_write_text(out_dir / f"{name}.md", md + "\n")
    tex = shown.to_latex(index=index, caption=caption or None, label=f"tab:{name}", escape=True)
    paths["tex"] = atomic_write_text(out_dir / f"{name}.tex", tex)
    return paths


def _formatted(df: pd.DataFrame, float_format: str) -> pd.DataFrame:
    """Float columns as text; a small non-zero value (a p-value of 2e-4, say) never prints as
    0.000."""
    def fmt(v: float) -> str:
        if pd.isna(v):
            return ""
        text = float_format.format(v)
        if v != 0 and float(text) == 0:
            return f"{v:.1e}"
        return text

    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(fmt)
    return shown


def save_figure(fig, out: str | os.PathLike | None, name: str, *, dpi: int = 150,
                folder: str | os.PathLike | None = None,
                stem: str | None = None) -> dict[str, Path]:
    """Save a figure declared in :mod:`ageest.catalogue` as ``out/figures/name.{png,pdf}``
    (atomically; ``folder`` replaces ``out/figures``, e.g. for ``ageest data --figure DIR``;
    ``stem`` replaces ``name`` in the file name for a figure drawn once per item, such as
    ``ageest predict --plot``'s one per image)."""
    import io

    from ageest import catalogue

    catalogue.artefact(catalogue.FIGURE, name)
    out_dir = Path(folder) if folder is not None else Path(out) / "figures"
    paths: dict[str, Path] = {}
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight")
        paths[ext] = atomic_write_bytes(out_dir / f"{stem or name}.{ext}", buf.getvalue())
    return paths


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
