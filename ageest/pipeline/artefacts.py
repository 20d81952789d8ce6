"""The pipeline's tables and figures: every one goes through :func:`save_table` (CSV + Markdown +
LaTeX) or :func:`save_figure` (PNG + PDF), which refuse a name :mod:`ageest.pipeline.catalogue`
does not declare; written atomically through :mod:`ageest.files`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from ageest.files import atomic_write_bytes, atomic_write_text  # noqa: F401

#: the files :func:`save_table` and :func:`save_figure` write for one artefact, by kind
FILE_TYPES = {"table": ("csv", "md", "tex"), "figure": ("png", "pdf")}


def save_table(
    df: pd.DataFrame, out: str | os.PathLike, name: str, caption: str = "", *,
    synthetic: bool = False, float_format: str = "{:.3f}", index: bool = False,
) -> dict[str, Path]:
    """Save a table declared in :mod:`ageest.pipeline.catalogue` as ``out/tables/name.{csv,md,tex}``.

    ``out`` is a results root. The CSV keeps full precision; Markdown and LaTeX use
    ``float_format``. ``caption`` is written above the Markdown table and as the LaTeX caption,
    prefixed with the synthetic-data note when ``synthetic``. Every table of the package and the
    notebooks is written through this function.
    """
    from ageest.pipeline import catalogue

    catalogue.artefact(catalogue.TABLE, name)
    caption = catalogue.caption(caption, synthetic)
    texts = {"csv": df.to_csv(index=index)}
    shown = _formatted(df, float_format)
    # numbers stay as formatted (tabulate would re-parse "0.060" into 0.06), right-aligned
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    if index:
        align = ["left", *align]
    md = shown.to_markdown(index=index, disable_numparse=True, colalign=align)
    if caption:
        md = f"{caption}\n\n{md}"
    texts["md"] = md + "\n"
    texts["tex"] = shown.to_latex(index=index, caption=caption or None, label=f"tab:{name}",
                                  escape=True)
    out_dir = Path(out) / "tables"
    return {ext: atomic_write_text(out_dir / f"{name}.{ext}", texts[ext])
            for ext in FILE_TYPES["table"]}


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
    """Save a figure declared in :mod:`ageest.pipeline.catalogue` as ``out/figures/name.{png,pdf}``
    (atomically; ``folder`` replaces ``out/figures``, e.g. for ``ageest data --figure DIR``;
    ``stem`` replaces ``name`` in the file name for a figure drawn once per item, such as
    ``ageest predict --plot``'s one per image)."""

    from ageest.pipeline import catalogue

    catalogue.artefact(catalogue.FIGURE, name)
    out_dir = Path(folder) if folder is not None else Path(out) / "figures"
    paths: dict[str, Path] = {}
    for ext in FILE_TYPES["figure"]:
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight")
        paths[ext] = atomic_write_bytes(out_dir / f"{stem or name}.{ext}", buf.getvalue())
    return paths
