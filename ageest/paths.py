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


def results_dir(profile: str) -> Path:
    """Folder of one profile's outputs: ``RESULTS / profile``."""
    return RESULTS / profile
