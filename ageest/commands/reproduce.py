"""``ageest reproduce``: the notebooks of a profile through papermill, then ``REPORT.md``
(:mod:`ageest.pipeline.reproduce`, whose docstring has the outputs and the options' meaning)."""

from __future__ import annotations

import argparse
import sys

from ageest.errors import format_user_error
from ageest.pipeline.reproduce import (
    KERNEL_NAME,
    PROFILES,
    NotebookFailed,
    ReproduceError,
    reproduce,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default",
                        help=f"parameter profile in params/ ({', '.join(PROFILES)}); "
                             "default: %(default)s")
    parser.add_argument("--fgnet", metavar="DIR", help="real FG-NET image folder "
                        "(default: the synthetic FG-NET-like data; required by --profile paper)")
    parser.add_argument("--clap", metavar="DIR", help="real CLAP2016 / APPA-REAL folder "
                        "(default: synthetic; required by --profile paper)")
    parser.add_argument("--utkface", metavar="DIR", help="real UTKFace image folder (the "
                        "{age}_{gender}_{race}_{datetime}.jpg crops); required by --profile "
                        "utkface, which then uses only it")
    parser.add_argument("--pretrain", metavar="DIR", help="UTKFace folder of an age-pretraining "
                        "stage: the clean FG-NET-format runs start from a model trained there "
                        "(train only on faces you may tune on: the development names)")
    parser.add_argument("--device", help="training device, e.g. cpu, cuda, cuda:1 "
                        "(default: the profile's)")
    parser.add_argument("--workers", type=int, help="parallel training runs "
                        "(default: the profile's)")
    parser.add_argument("--results-dir", metavar="DIR",
                        help="output folder (default: results/<profile>)")
    parser.add_argument("--only", metavar="NN[,NN]", help="run only these notebooks "
                        "(numbers or stems), e.g. --only 03,04 to recompute tables")
    parser.add_argument("--params-dir", metavar="DIR",
                        help="folder holding your own profile folders (default: the package's "
                             "params/)")
    parser.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel (default: "
                        "%(default)s, registered by the Makefile)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML renderings")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="set notebook parameter NAME in every notebook that declares it "
                             "(repeatable; VALUE converted to the declared type, lists "
                             "comma-separated), e.g. -p epochs 4 -p losses amr,ce")


def run(args: argparse.Namespace) -> int:
    try:
        names = [name for name, _ in args.parameter]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ReproduceError(f"-p {dup} is given twice; give each parameter once")
        reproduce(args.profile, fgnet=args.fgnet, clap=args.clap, utkface=args.utkface,
                  pretrain=args.pretrain,
                  device=args.device,
                  workers=args.workers, results_dir=args.results_dir, only=args.only,
                  kernel_name=args.kernel, html=not args.no_html,
                  parameters=dict(args.parameter), params_dir=args.params_dir)
    except NotebookFailed as exc:
        print(format_user_error("reproduce", exc), file=sys.stderr)
        return 1
    return 0
