"""``ageest data``: load (or generate) a dataset, check it, summarise it, write its manifest.

Examples::

    ageest data --dataset synthetic-fgnet                     # generate once, summarise
    ageest data --dataset fgnet --data-dir ~/data/FGNET/images --manifest results/fgnet.json
    ageest data --dataset csv --csv my/labels.csv --on-bad skip
    ageest data --dataset synthetic-fgnet --figure results/figures   # face grid (PNG + PDF)

A second run with the same ``--manifest`` verifies the files against it (changed, missing and
added files are reported; ``--strict`` turns differences into a non-zero exit status).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ageest.data.integrity import (
    IDENTICAL_CHOICES,
    dataset_summary,
    identical_line,
    is_identical_record,
    verify_dataset_manifest,
)
from ageest.data.loaders import check_class_count
from ageest.data.registry import DATASETS, get_dataset
from ageest.data.splits import PROTOCOLS, make_folds


def age_range_arg(text: str) -> tuple[int, int]:
    """``LO,HI`` -> (LO, HI), for ``--age-range``.

    >>> age_range_arg("0,120")
    (0, 120)
    """
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected two integers LO,HI, e.g. 0,120") from None
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 <= LO < HI")
    try:
        check_class_count(lo, hi, "--age-range")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ageest data``."""
    parser.add_argument("--dataset", default="synthetic-fgnet", choices=list(DATASETS),
                        help="registry name (default: synthetic-fgnet)")
    parser.add_argument("--data-dir", type=Path, help="dataset folder (fgnet, clap2016, "
                        "utkface; for synthetic data: where to generate it)")
    parser.add_argument("--csv", type=Path, help="label CSV (dataset csv)")
    parser.add_argument("--json", type=Path, help="database JSON (dataset benchmark-json)")
    parser.add_argument("--image-root", type=Path, help="image folder for csv/benchmark-json")
    parser.add_argument("--size", type=int, default=64, help="synthetic image size (px)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    parser.add_argument("--on-bad", choices=("raise", "skip"), default="raise",
                        help="bad files: stop with an error (default) or skip and record them")
    parser.add_argument("--identical-images", choices=IDENTICAL_CHOICES,
                        help="identical images (same decoded pixels): refuse (stop when copies "
                             "could cross a split) or dedupe (keep one copy of a group whose "
                             "labels agree, drop a group whose labels disagree); default: the "
                             "dataset's (dedupe for utkface, refuse for the others)")
    parser.add_argument("--age-range", type=age_range_arg, metavar="LO,HI",
                        help="declared age range of csv/benchmark-json labels (csv default "
                             "0,100)")
    parser.add_argument("--manifest", type=Path,
                        help="dataset manifest JSON: written if absent, else verified")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when the manifest differs")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="also print fold sizes of this protocol")
    parser.add_argument("--figure", type=Path,
                        help="folder to save a grid of synthetic faces across ages")


def run(args: argparse.Namespace) -> int:
    """Run ``ageest data``; returns the exit status."""
    options = {"age_range": args.age_range} if args.age_range is not None else {}
    df, info = get_dataset(args.dataset, data_dir=args.data_dir, csv=args.csv,
                           json=args.json, image_root=args.image_root, size=args.size,
                           seed=args.seed, on_bad=args.on_bad, loader_options=options,
                           identical_images=args.identical_images)
    s = dataset_summary(df)
    print(f"{info.name}: {s['n_images']} images, {s['n_subjects']} subjects, ages "
          f"{s['age_min']}-{s['age_max']} (label range {info.start_age}-{info.end_age}, "
          f"{info.num_classes} classes), root {info.root}")
    print(f"splits: {s['split_counts']}; default protocol: {info.default_protocol}")
    where = "also listed in the manifest" if args.manifest else "not recorded elsewhere"
    identical = df.attrs.get("identical")
    bad = [r for r in df.attrs.get("skipped", []) if not is_identical_record(r)]
    if bad:  # the loader's warning listed each one already
        print(f"skipped {len(bad)} bad file(s) (listed above; {where})")
    if identical and identical["groups"]:
        print(identical_line(identical))
        for group in identical["records"][:20]:
            print(f"  {', '.join(group['files'])} (ages {group['ages']}): {group['action']}")
        if len(identical["records"]) > 20:
            print(f"  ... and {len(identical['records']) - 20} more groups ({where})")
    status = 0
    if args.manifest is not None:
        from ageest.data.integrity import write_dataset_manifest

        if args.manifest.is_file():
            report = verify_dataset_manifest(df, args.manifest)
            print(f"manifest {args.manifest}: {report}")
            status = 1 if (args.strict and not report.ok) else 0
        else:
            write_dataset_manifest(df, args.manifest, extra={"dataset": info.name})
            print(f"wrote manifest {args.manifest}")
    if args.protocol is not None:
        for fold in make_folds(df, args.protocol, seed=args.seed)[:10]:
            print(f"  fold {fold.fold_id}: {fold.sizes()}")
    if args.figure is not None:
        from ageest.pipeline.artefacts import save_figure  # the figure, only when asked
        from ageest.plots import synthetic_faces

        out = save_figure(synthetic_faces(seed=args.seed), args.figure, "synthetic_faces",
                          folder=args.figure)
        print(f"wrote {out['png']} and {out['pdf']}")
    return status
