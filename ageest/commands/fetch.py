"""``ageest fetch fgnet``: the FG-NET release, downloaded or taken from a local copy, checked and
unpacked atomically (:func:`ageest.data.fetch.fetch_fgnet`, whose docstring has the details)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ageest.data.fetch import DATASETS, FGNET_URL, fetch_fgnet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="the release to fetch")
    parser.add_argument("--to", type=Path, default=None,
                        help="the folder to create (default: <data folder>/FGNET)")
    parser.add_argument("--from", dest="source", default=None,
                        help=f"a local FGNET.zip, an unpacked copy (a folder with images/ and "
                             f"points/), or a URL (default: {FGNET_URL})")


def run(args: argparse.Namespace) -> int:
    fetch_fgnet(args.source, args.to)
    return 0
