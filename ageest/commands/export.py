"""``ageest export``: a finished run's network to ONNX, checked against PyTorch on its test
images (:mod:`ageest.inference.export`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ageest.inference.export import PARITY_TOLERANCE, export_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN_DIR",
                        help="a finished run folder: results/<profile>/runs/<run>/fold-<id>")
    parser.add_argument("--onnx", required=True, metavar="FILE",
                        help="the ONNX file to write (its preprocessing goes to FILE's .json)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the onnxruntime-against-PyTorch check on the test images")


def run(args: argparse.Namespace) -> int:
    info = export_onnx(args.run, args.onnx, checkpoint=args.checkpoint, check=not args.no_check)
    print(f"wrote {args.onnx} and {Path(args.onnx).with_suffix('.json')}")
    if "parity" in info:
        p = info["parity"]
        print(f"onnxruntime against PyTorch on {p['n_images']} test images: max |Δ expected "
              f"age| {p['max_abs_diff_expected_age']:.2e} years, max |Δ p| "
              f"{p['max_abs_diff_probs']:.2e}")
        if p["max_abs_diff_expected_age"] > PARITY_TOLERANCE:
            print(f"ageest export: error: the difference exceeds {PARITY_TOLERANCE} years",
                  file=sys.stderr)
            return 1
    return 0
