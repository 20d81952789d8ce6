"""The ``ageest`` command line. Each sub-command is a module of :mod:`ageest.commands` (the top
layer: it parses its arguments and calls the library) registered here through ``SUBCOMMANDS``:
a name, a function that adds its arguments to a parser, and a function that runs it and
returns an exit status."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ageest import __version__
from ageest.errors import USER_ERRORS, format_os_error, format_user_error

# name -> (module, help); the module defines add_arguments(parser) and run(args). A module is
# imported only when its command is used (or its --help asked for), so `ageest --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("ageest.commands.info", "Print versions, device and paths of this installation."),
    "data": ("ageest.commands.data", "Load or generate a dataset, check it, write its manifest."),
    "fetch": ("ageest.commands.fetch", "Download (or take a local copy of) the FG-NET release, check it, unpack it."),
    "run": ("ageest.commands.run", "Train a grid of runs (dataset x protocol x loss x k x seed x fold); resumable."),
    "reproduce": ("ageest.commands.reproduce", "Execute the notebooks of a profile with papermill; write REPORT.md."),
    "predict": ("ageest.commands.predict", "Predict the age of photos with a finished run (files or folders)."),
    "export": ("ageest.commands.export", "Export a finished run's network to ONNX, checked against PyTorch."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ageest`` parser. Only ``command``'s module is imported (to add its arguments), so
    ``ageest --help`` lists the sub-commands without importing torch."""
    parser = argparse.ArgumentParser(
        prog="ageest",
        description="Adaptive Mean-Residue loss reproducibility kit for facial age estimation.",
    )
    parser.add_argument("--version", action="version", version=f"ageest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.add_argument("--debug", action="store_true",
                       help="show the full traceback of an error instead of one line")
        p.set_defaults(_run=mod.run)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is one), if any."""
    return next((a for a in argv if a in SUBCOMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(_command(argv))
    except ModuleNotFoundError as exc:  # the core install has the losses, not the commands
        print(f"ageest {_command(argv)}: error: needs {exc.name!r}, which the core install "
              "(`pip install ageest`) leaves out; install the kit: pip install 'ageest[kit]'",
              file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if args.debug:
        return int(args._run(args) or 0)
    warnings.showwarning = _warning_printer(args.command)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        print(format_user_error(args.command, exc), file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path: a bug or the machine, keep the traceback
            raise
        print(format_os_error(args.command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ageest {args.command}: interrupted; finished work is kept, run the same command "
              "again to resume", file=sys.stderr)
        return 130


def _warning_printer(command: str):
    """``warnings.showwarning`` for the command line: ``ageest CMD: warning: message`` (its
    own lines indented), without the source line Python prints by default."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        first, *rest = str(message).strip().splitlines() or [category.__name__]
        text = "\n".join([f"ageest {command}: warning: {first}", *(f"  {r}" for r in rest)])
        print(text, file=file or sys.stderr)

    return show


if __name__ == "__main__":
    sys.exit(main())
