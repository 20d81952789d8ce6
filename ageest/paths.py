"""One source of paths, derived from this file's location (cookiecutter-data-science style).

``AGEEST_DATA`` and ``AGEEST_RESULTS`` override the data and results roots; nothing else in the
package builds an absolute path of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("AGEEST_DATA", ROOT / "data")).expanduser().resolve()
RESULTS = Path(os.environ.get("AGEEST_RESULTS", ROOT / "results")).expanduser().resolve()
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"


def writable_root(root: Path, variable: str) -> Path:
    """``root`` (``DATA`` or ``RESULTS``) created when missing; one line naming the environment
    variable when it points at a file, since a command fails there on its first write.

    >>> writable_root(Path(__file__), "AGEEST_DATA")
    Traceback (most recent call last):
    ...
    NotADirectoryError: AGEEST_DATA=... is a file, not a folder; point AGEEST_DATA at a folder, or unset it to use the default
    """
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{variable}={root} is a file, not a folder; point {variable} "
                                 "at a folder, or unset it to use the default")
    root.mkdir(parents=True, exist_ok=True)
    return root


def output_root(profile: str, results_dir: str | os.PathLike | None = None) -> Path:
    """Where a notebook or pipeline run writes: ``results_dir`` when given (non-empty), else
    ``RESULTS / profile``. Inside it: ``tables/``, ``figures/``, ``metrics/<notebook>.json``,
    ``runs/``, ``executed/``."""
    if results_dir:
        return Path(results_dir).expanduser().resolve()
    return RESULTS / profile
