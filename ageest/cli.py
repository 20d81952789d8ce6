"""The ``ageest`` command line. Each sub-command lives in the module that does the work and
registers itself here through ``SUBCOMMANDS``: a name, a function that adds its arguments to a
parser, and a function that runs it and returns an exit status."""

from __future__ import annotations

import argparse
import importlib
import sys

from ageest import __version__

# name -> (module, help); the module defines add_arguments(parser) and run(args); modules are imported only when that command is used
# or when --help needs its arguments, so `ageest --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("ageest.envinfo", "Print versions, device and paths of this installation."),
    "data": ("ageest.data.prepare", "Load or generate a dataset, check it, write its manifest."),
    "run": ("ageest.runner", "Train a grid of runs (dataset x protocol x loss x k x seed x fold); resumable."),
    "reproduce": ("ageest.reproduce", "Execute the notebooks of a profile with papermill; write REPORT.md."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ageest",
        description="Adaptive Mean-Residue loss reproducibility kit for facial age estimation.",
    )
    parser.add_argument("--version", action="version", version=f"ageest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
