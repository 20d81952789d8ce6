"""Choose the utkface profile's CPU recipe by measurement on real faces.

Every candidate trains the same losses and seeds on one train/valid/test split of a UTKFace
folder (the development faces only: make a folder of the names you may tune on, and never point
this at faces kept for an independent evaluation) and is compared on **validation** MAE only:
the MAE of the epoch the run selects on validation, the last epoch's validation MAE, and the
training wall time. Test MAE is not printed: the test part is held out for the committed recipe.

Usage::

    python benchmarks/utkface_recipe.py split --utkface DEV --out results/recipe
    python benchmarks/utkface_recipe.py subset --utkface DEV --out results/recipe \\
        --n-train 700 --to DEV700      # FG-NET-sized training part; then run on DEV700 with
        # --out results/recipe/DEV700
    python benchmarks/utkface_recipe.py run --utkface DEV --out results/recipe \\
        --candidates small64-8ep,small64-20ep-cos --losses amr,ce --seeds 0
    python benchmarks/utkface_recipe.py table --out results/recipe     # the Markdown table
    python benchmarks/utkface_recipe.py faces --utkface DEV --out results/recipe --run RUN
    python benchmarks/utkface_recipe.py profile --out results/recipe --results results/utkface

``split`` writes ``OUT/dev_split.csv`` (seeded, age-stratified 70/15/15, the kit's
:func:`ageest.data.splits.stratified_split`); ``run`` trains what is not finished (an
interrupted sweep resumes); ``table`` reads the run folders. The candidates are below, each a
set of ``ageest run`` grid keys on top of :data:`BASE`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

#: what every candidate shares (the utkface profile's keys; amp auto: bf16 where native)
BASE = {"model": "small_cnn", "pretrained": False, "optimizer": "adamw", "lr": 1e-3,
        "batch_size": 64, "image_size": 64, "transforms": "light", "normalize": False,
        "amp": "auto", "workers": 2, "keep_checkpoints": "none", "quiet": True}
#: what the EfficientNet-Lite0 candidates share (on top of BASE)
LITE = {"model": "efficientnet_lite0", "pretrained": True, "batch_size": 32, "epochs": 5,
        "lr_schedule": "onecycle", "tta_flip": True, "workers": 1}
#: the candidates, by name: grid keys that differ from BASE
CANDIDATES: dict[str, dict] = {
    "small64-8ep": {"epochs": 8, "milestones": [6]},  # the recipe before this measurement
    "small64-20ep-step": {"epochs": 20, "milestones": [15]},
    "small64-20ep-cos": {"epochs": 20, "lr_schedule": "cosine"},
    "small64-20ep-cos-wd0.05": {"epochs": 20, "lr_schedule": "cosine", "weight_decay": 0.05},
    "small64-20ep-cos-bs32": {"epochs": 20, "lr_schedule": "cosine", "batch_size": 32},
    "small64-20ep-cos-lr3e-3": {"epochs": 20, "lr_schedule": "cosine", "lr": 3e-3},
    "small64-30ep-cos": {"epochs": 30, "lr_schedule": "cosine"},
    "small64-30ep-cos-bs32": {"epochs": 30, "lr_schedule": "cosine", "batch_size": 32},
    "small64-20ep-cos-bs16": {"epochs": 20, "lr_schedule": "cosine", "batch_size": 16},
    "small96-20ep-cos": {"epochs": 20, "lr_schedule": "cosine", "image_size": 96},
    "resnet18-64-12ep-cos": {"epochs": 12, "lr_schedule": "cosine", "model": "resnet18"},
    "small64-20ep-cos-clip5": {"epochs": 20, "lr_schedule": "cosine", "grad_clip": 5.0},
    # bf16 parity: the same recipe in fp32 (amp auto resolves to bf16 on a CPU with native bf16)
    "small64-20ep-cos-fp32": {"epochs": 20, "lr_schedule": "cosine", "amp": "fp32"},
    # the pretrained CPU backbone: EfficientNet-Lite0 from its packaged ImageNet weights, batch
    # 32, one-cycle per batch (30 % warm-up), test-time flip averaging
    **{name: {**LITE, **keys} for name, keys in {
        "lite64-5ep-1cyc": {},
        "lite64-4ep-1cyc": {"epochs": 4},
        "lite64-5ep-1cyc-bb0.3": {"backbone_lr_scale": 0.3},
        "lite96-5ep-1cyc": {"image_size": 96},
        "lite64-5ep-cos": {"lr_schedule": "cosine"},
        "lite64-8ep-1cyc": {"epochs": 8},
        "lite112-4ep-1cyc": {"image_size": 112, "epochs": 4},
        "lite96-3ep-1cyc": {"image_size": 96, "epochs": 3},
        "lite112-3ep-1cyc": {"image_size": 112, "epochs": 3},
        # bf16 parity of the chosen recipe: the same in fp32 (NCHW, as amp fp32 runs)
        "lite96-3ep-1cyc-fp32": {"image_size": 96, "epochs": 3, "amp": "fp32"},
        "lite64-5ep-1cyc-noflip": {"tta_flip": False},
        # bf16 parity of the pretrained model: the same recipe in fp32 (NCHW, as amp fp32 runs)
        "lite64-5ep-1cyc-fp32": {"amp": "fp32"},
        # for FG-NET-sized training sets (a fold trains on ~700 photos; `subset --n-train 700`):
        # the utkface recipe as it is, and longer one-cycle schedules / a larger input
        "lite96-8ep-1cyc": {"image_size": 96, "epochs": 8},
        "lite96-15ep-1cyc": {"image_size": 96, "epochs": 15},
        "lite128-8ep-1cyc": {"image_size": 128, "epochs": 8},
    }.items()},
}
SPLIT = "dev_split.csv"


def make_split(utkface: Path, out: Path) -> Path:
    from ageest.data import get_dataset
    from ageest.data.splits import stratified_split

    df, _ = get_dataset("utkface", data_dir=utkface)
    split = stratified_split(df, fractions=(0.7, 0.15, 0.15), seed=0)
    out.mkdir(parents=True, exist_ok=True)
    split.to_csv(out / SPLIT, index=False)
    print(f"{out / SPLIT}: {split['split'].value_counts().to_dict()}")
    return out / SPLIT


def subset(utkface: Path, out: Path, n_train: int, to: Path, seed: int = 0) -> Path:
    """A development folder with a smaller training part: ``n_train`` faces drawn (seeded,
    age-stratified by decade) from the training part of ``OUT/dev_split.csv``, with its whole
    valid and test parts, as hard links in ``to`` (copies where links are refused), and the
    split CSV of that folder as ``OUT/dev_split.csv`` under ``to``'s name in ``out``. The same
    validation faces as the full split, so candidates compare across training-set sizes."""
    split = pd.read_csv(out / SPLIT, dtype=str)
    train = split[split["split"] == "train"]
    if not 0 < n_train <= len(train):
        raise SystemExit(f"--n-train {n_train}: choose 1..{len(train)} (the training part)")
    decade = train["image_id"].str.split("_").str[0].astype(int) // 10
    share = n_train / len(train)
    picked = (train.groupby(decade, group_keys=False)
              .apply(lambda g: g.sample(n=max(1, round(len(g) * share)), random_state=seed)))
    keep = pd.concat([picked, split[split["split"] != "train"]])
    return _link_folder(utkface, keep, to, out)


def pretrain_pool(utkface: Path, out: Path, subset_dir: Path, to: Path) -> Path:
    """The pretraining pool of an age-pretraining measurement: the development faces that are
    not in ``subset_dir``'s training part (its validation and test faces stay, in the same
    parts, so a pretraining run selects its epoch on the same faces), as hard links in ``to``,
    with its split CSV in ``out / to.name``. Fine-tuning on ``subset_dir`` from a run trained
    here then never sees one of its training faces twice."""
    split = pd.read_csv(out / SPLIT, dtype=str)
    small = pd.read_csv(out / subset_dir.name / SPLIT, dtype=str)
    taken = set(small.loc[small["split"] == "train", "image_id"])
    keep = split[~split["image_id"].isin(taken)]
    return _link_folder(utkface, keep, to, out)


def _link_folder(utkface: Path, keep: pd.DataFrame, to: Path, out: Path) -> Path:
    """The faces of the split table ``keep`` as hard links in ``to`` (copies where links are
    refused; a face already there is left), and ``keep`` as that folder's split CSV in
    ``out / to.name``, which ``run --out`` takes."""
    import os
    import shutil

    to.mkdir(parents=True, exist_ok=True)
    for name in keep["image_id"]:
        if not (to / name).exists():
            try:
                os.link(utkface / name, to / name)
            except OSError:
                shutil.copy2(utkface / name, to / name)
    out_dir = out / to.name
    out_dir.mkdir(parents=True, exist_ok=True)
    keep.to_csv(out_dir / SPLIT, index=False)
    print(f"{to}: {keep['split'].value_counts().to_dict()}; split {out_dir / SPLIT}")
    return out_dir


def run(utkface: Path, out: Path, names: list[str], losses: list[str], seeds: list[int],
        keep_checkpoints: str = "none", init_from: Path | None = None) -> None:
    from ageest.engine.grids import run_grid

    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"--candidates: unknown {unknown}; choose from {sorted(CANDIDATES)}")
    for name in names:
        grid = {**BASE, **CANDIDATES[name], "dataset": ["utkface"], "data_dir": str(utkface),
                "split_csv": str(out / SPLIT), "protocol": ["holdout"], "losses": losses,
                "seeds": seeds, "keep_checkpoints": keep_checkpoints,
                **({"init_from": str(init_from)} if init_from else {})}
        print(f"{name}: {CANDIDATES[name]}", flush=True)
        where = out / (name + ("-init" if init_from else ""))
        summary = run_grid(grid, results_dir=where)
        for row in summary.itertuples():
            print(f"  {row.status} {Path(row.run_dir).parent.name} {row.wall_time_s:.0f} s",
                  flush=True)


def table(out: Path, test: bool = False) -> pd.DataFrame:
    from ageest.engine import store

    rows = []
    for name in [c + tail for c in CANDIDATES for tail in ("", "-init")]:
        if not (out / name).is_dir():
            continue
        for run_dir in store.find_run_dirs(out / name):
            if not store.is_finished(run_dir):
                continue
            params, metrics = store.read_params(run_dir), store.read_metrics(run_dir)
            hist = pd.read_csv(Path(run_dir) / "history.csv")
            best = hist.loc[hist["epoch"] == metrics["best_epoch"]].iloc[0]
            rows.append({"candidate": name, "loss": params["loss"], "seed": params["seed"],
                         "val_mae_selected": round(float(best["val_mae"]), 3),
                         "epoch": int(metrics["best_epoch"]),
                         "val_mae_last": round(float(hist["val_mae"].iloc[-1]), 3),
                         "val_mae_swing": round(float(hist["val_mae"].diff().abs().max()), 2),
                         "wall_s": round(float(metrics["wall_time_s"]), 1),
                         # CPU seconds of the training passes: unlike wall time, not inflated
                         # by whatever else shared the two cores
                         "train_cpu_s": round(float(hist["train_cpu_s"].sum()), 1),
                         "amp": params.get("amp") or "fp32"})
            if test:  # the held-out part: only for the recipe already chosen
                rows[-1]["test_mae"] = round(float(metrics["mae"]), 3)
    return pd.DataFrame(rows)


def faces(utkface: Path, out: Path, run_dir: Path, part: str = "valid") -> pd.DataFrame:
    """``ageest predict`` with and without ``--detect-faces`` (OpenCV's Haar cascade, a square
    crop with a 40 % margin) on one part of the development split, with a finished run: how often
    a face is found, and what the crop does to the predicted age and its error."""
    from ageest.inference.predict import load_run, predict

    split = pd.read_csv(out / SPLIT)
    names = split.loc[split["split"] == part, "image_id"].tolist()
    paths = [utkface / n for n in names]
    ages = pd.Series([int(n.split("_", 1)[0]) for n in names])
    run = load_run(run_dir)
    whole = predict(paths, run=run)
    crop = predict(paths, run=run, detect_faces=True)
    found = crop["face"] == "detected face"
    err_whole = (whole["expected_age"] - ages).abs()
    err_crop = (crop["expected_age"] - ages).abs()
    shift = crop["expected_age"] - whole["expected_age"]
    rows = []
    for label, mask in (("all faces", pd.Series(True, index=found.index)),
                        ("face detected", found), ("no face detected", ~found)):
        rows.append({"images": label, "n": int(mask.sum()),
                     "share": round(float(mask.mean()), 3),
                     "mae_whole_image": round(float(err_whole[mask].mean()), 3),
                     "mae_detect_faces": round(float(err_crop[mask].mean()), 3),
                     "mean_shift_years": round(float(shift[mask].mean()), 3),
                     "mean_abs_shift_years": round(float(shift[mask].abs().mean()), 3)})
    return pd.DataFrame(rows)


def profile_mae(results: Path, out: Path, dev_names: Path) -> pd.DataFrame:
    """Each run of a finished ``utkface`` profile, scored on the development faces of its test
    split only (a folder may hold other faces, e.g. stand-ins for the faces kept for an
    independent evaluation): ``mae_dev_test`` over all of them, and ``mae_unseen`` over those
    that were also in this sweep's held-out test part, i.e. faces no recipe choice ever read."""
    from ageest.engine import store

    dev = set(dev_names.read_text(encoding="utf-8").split())
    split = pd.read_csv(out / SPLIT)
    unseen = set(split.loc[split["split"] == "test", "image_id"]) & dev
    rows = []
    for run_dir in store.find_run_dirs(results / "runs"):
        if not store.is_finished(run_dir):
            continue
        params, pred = store.read_params(run_dir), store.read_predictions(run_dir)
        err = (pred["expected_age"] - pred["age"]).abs()
        on_dev, on_unseen = pred["image_id"].isin(dev), pred["image_id"].isin(unseen)
        rows.append({"loss": params["loss"], "k": params.get("k") or "adaptive",
                     "seed": params["seed"], "n_dev_test": int(on_dev.sum()),
                     "mae_dev_test": round(float(err[on_dev].mean()), 3),
                     "n_unseen": int(on_unseen.sum()),
                     "mae_unseen": round(float(err[on_unseen].mean()), 3),
                     "wall_s": round(float(store.read_metrics(run_dir)["wall_time_s"]), 1)})
    return pd.DataFrame(rows).sort_values(["loss", "k", "seed"], key=lambda c: c.astype(str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("split", "subset", "pool", "run", "table", "faces",
                                            "profile"))
    parser.add_argument("--subset", type=Path, help="pool: the subset folder to leave out")
    parser.add_argument("--init-from", type=Path,
                        help="run: start every candidate from this run (age pretraining); its "
                        "runs go to OUT/<candidate>-init")
    parser.add_argument("--n-train", type=int, help="subset: faces kept in the training part")
    parser.add_argument("--to", type=Path, help="subset: the folder to write (hard links)")
    parser.add_argument("--results", type=Path,
                        help="profile: the results folder of `ageest reproduce --profile utkface`")
    parser.add_argument("--dev-names", type=Path, default=Path("../shared/utkface/dev_names.txt"),
                        help="profile: the development names (the faces one may score on)")
    parser.add_argument("--run", type=Path, help="faces: a finished run folder (fold-...)")
    parser.add_argument("--part", default="valid", help="faces: the split part to predict")
    parser.add_argument("--keep-checkpoints", default="none", choices=("none", "best", "all"),
                        help="run: checkpoints kept (faces needs best)")
    parser.add_argument("--test", action="store_true",
                        help="table: add the held-out test MAE (only once the recipe is chosen)")
    parser.add_argument("--utkface", type=Path, help="the UTKFace folder of development faces")
    parser.add_argument("--out", type=Path, default=Path("results/recipe"))
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--losses", default="amr,ce")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args(argv)
    if args.command in ("split", "subset", "pool", "run", "faces") and args.utkface is None:
        parser.error(f"{args.command} needs --utkface DIR")
    if args.command == "split":
        make_split(args.utkface, args.out)
    elif args.command == "subset":
        if args.n_train is None or args.to is None:
            parser.error("subset needs --n-train N and --to DIR")
        subset(args.utkface, args.out, args.n_train, args.to)
    elif args.command == "pool":
        if args.subset is None or args.to is None:
            parser.error("pool needs --subset DIR and --to DIR")
        pretrain_pool(args.utkface, args.out, args.subset, args.to)
    elif args.command == "run":
        if not (args.out / SPLIT).is_file():
            parser.error(f"{args.out / SPLIT} is missing: run the split command first")
        run(args.utkface, args.out, args.candidates.split(","), args.losses.split(","),
            [int(s) for s in args.seeds.split(",")], args.keep_checkpoints, args.init_from)
    elif args.command == "profile":
        if args.results is None:
            parser.error("profile needs --results DIR")
        print(profile_mae(args.results, args.out, args.dev_names).to_markdown(index=False))
    elif args.command == "faces":
        if args.run is None:
            parser.error("faces needs --run RUN_DIR")
        print(faces(args.utkface, args.out, args.run, args.part).to_markdown(index=False))
    else:
        t = table(args.out, test=args.test)
        if t.empty:
            print("no finished runs")
            return 0
        print(t.to_markdown(index=False))
        print()
        # the summary compares candidates on the sweep's losses (--losses, AMR and CE by
        # default), seed 0, the runs every candidate has
        compare = args.losses.split(",")
        print(f"per candidate: mean over {compare}, seed 0")
        shown = t[t["loss"].isin(compare) & (t["seed"] == 0)]
        per = shown.groupby("candidate", sort=False).agg(
            runs=("loss", "size"), val_mae_selected=("val_mae_selected", "mean"),
            val_mae_last=("val_mae_last", "mean"), wall_s=("wall_s", "mean"),
            train_cpu_s=("train_cpu_s", "mean"))
        print(per.round(3).to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
