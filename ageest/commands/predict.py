"""``ageest predict``: the age of photos (files or folders) from a finished run
(:mod:`ageest.inference.predict`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ageest.inference.predict import RunError, load_run, plot_predictions, predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files, or folders of images (searched recursively)")
    parser.add_argument("--run", required=True, metavar="RUN_DIR",
                        help="a finished run folder: results/<profile>/runs/<run>/fold-<id>")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="the selected epoch's weights (best, default) or the last epoch's")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--out", default="predictions.csv",
                        help="CSV written with one row per image (default predictions.csv)")
    parser.add_argument("--plot", metavar="DIR", help="also draw each image beside its age "
                        "distribution into DIR (PNG and PDF)")
    parser.add_argument("--detect-faces", action="store_true",
                        help="crop the largest face (OpenCV Haar cascade, extra 'faces') before "
                        "predicting; without OpenCV the whole image is used and the CSV says so")


def run(args: argparse.Namespace) -> int:
    from ageest.files import atomic_write_text

    # where the results go, checked before any work: a folder as --out, a file as --plot
    if Path(args.out).is_dir():
        raise RunError(f"--out {args.out}: is a folder; give a CSV file name, e.g. "
                       f"{Path(args.out) / 'predictions.csv'}")
    if args.plot and Path(args.plot).exists() and not Path(args.plot).is_dir():
        raise RunError(f"--plot {args.plot}: is a file; give a folder for the figures")
    loaded = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
    table = predict(args.inputs, run=loaded, detect_faces=args.detect_faces)
    shown = table.drop(columns=["probs"])
    atomic_write_text(args.out, shown.to_csv(index=False))
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {args.out} ({len(table)} images; run {loaded.run_dir}, checkpoint "
          f"{loaded.checkpoint.name})", file=sys.stderr)
    if args.plot:
        paths = plot_predictions(table, loaded, args.plot)
        print(f"wrote {len(paths)} figures to {args.plot}", file=sys.stderr)
    return 0
