"""Landmark face crops against whole photos on the real FG-NET release, with the fgnet profile's
recipe: the profile's clean AMR runs (every fold, seed 0, the same pretraining when the profile
had one) trained again on whole photos, and both scored on the same test photos.

This measures a choice the profile made beforehand (crops, because the recipe was chosen on
UTKFace's face crops); it must not be used to change it (FG-NET chooses nothing).

Usage (after ``ageest reproduce --profile fgnet --fgnet DIR [--pretrain DIR]``)::

    python benchmarks/fgnet_crop.py --results results/fgnet --out results/fgnet-whole

``--out`` receives the whole-photo runs (resumable: finished runs are skipped); the printed
table pairs each test photo's error under both inputs (MAE pooled and over subjects, paired
permutation test over subjects).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def whole_photo_grid(results: Path) -> dict:
    """The profile's clean FG-NET AMR grid as its runs recorded it, on whole photos."""
    from ageest.engine import store

    runs = [d for d in store.find_run_dirs(results / "runs")
            if store.is_finished(d) and store.read_params(d)["loss"] == "amr"
            and store.read_params(d)["selection"] == "val_best"]
    if not runs:
        raise SystemExit(f"{results}: no finished clean AMR run; run the fgnet profile first")
    p = store.read_params(runs[0])
    keys = ("model", "pretrained", "optimizer", "lr", "milestones", "lr_schedule", "epochs",
            "batch_size", "image_size", "transforms", "normalize", "grad_clip", "amp",
            "warmup_fraction", "tta_flip", "device", "n_folds", "val_fraction", "split_seed",
            "lambda_mean", "lambda_residue")
    grid = {k: p[k] for k in keys if k in p}
    grid.update({"dataset": [p["dataset"]], "data_dir": p["data_dir"],
                 "protocol": [p["protocol"]], "losses": ["amr"], "seeds": [p["seed"]],
                 "face_crop": "none", "workers": 1, "quiet": True})
    if p.get("init_from"):
        grid["init_from"] = p["init_from"]
    return grid


def compare(results: Path, out: Path) -> pd.DataFrame:
    """Both inputs' AMR predictions on the same photos: MAE pooled and over subjects, the
    paired subject-level difference and its permutation p-value."""
    from ageest import metrics
    from ageest.engine import store

    def amr(root: Path) -> pd.DataFrame:
        pred = store.load_predictions(root / "runs")
        pred = pred[(pred["loss"] == "amr") & (pred["selection"] == "val_best")
                    & (pred["k"] == "adaptive")]
        return pred.assign(err=(pred["expected_age"] - pred["age"]).abs())

    crop, whole = amr(results), amr(out)
    both = crop.merge(whole, on=["image_id", "seed"], suffixes=("_crop", "_whole"))
    per_subject = both.groupby("subject_crop")[["err_crop", "err_whole"]].mean()
    test = metrics.paired_test(per_subject["err_crop"].to_numpy(),
                               per_subject["err_whole"].to_numpy(), method="permutation",
                               n_resamples=9999, seed=0)
    rows = []
    for name in ("crop", "whole"):
        rows.append({"input": "landmark crops (profile)" if name == "crop" else "whole photos",
                     "photos": len(both), "subjects": len(per_subject),
                     "mae_pooled": both[f"err_{name}"].mean(),
                     "mae_subject_mean": per_subject[f"err_{name}"].mean()})
    table = pd.DataFrame(rows)
    table["crop_minus_whole_subject"] = float(np.mean(per_subject["err_crop"]
                                                      - per_subject["err_whole"]))
    table["p_value"] = float(test["p_value"])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/fgnet"))
    parser.add_argument("--out", type=Path, default=Path("results/fgnet-whole"))
    args = parser.parse_args(argv)
    from ageest.engine.grids import run_grid

    summary = run_grid(whole_photo_grid(args.results), results_dir=args.out)
    print(f"whole-photo runs: {summary['status'].value_counts().to_dict()}, "
          f"{summary['wall_time_s'].fillna(0).sum():.0f} s trained now")
    print(compare(args.results, args.out).round(3).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
