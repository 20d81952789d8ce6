"""Overhead of the real training loop over the bare model step, on the CPU.

Compares, in one run and alternating the arms epoch by epoch (so a shared machine's changing
load hits both alike):

- **real**: training-epoch throughput of :func:`ageest.engine.train.train` (images/s of the ``history``,
  evaluation excluded): the uint8-cached dataset, the ``light`` augmentation, the DataLoader,
  the AMR loss with its logged components and adaptive K, the train-MAE bookkeeping, the
  non-finite check and the tqdm bar (unless ``--quiet``);
- **bare**: the same small CNN's forward + cross-entropy + backward + AdamW step on pre-made
  tensors (a pool of 16 random batches: one repeated batch is memorised and its vanishing
  gradients turn denormal, which slows CPU arithmetic);
- **bare+amr** (information): the bare step with the AMR loss instead of cross-entropy.

and prints real / bare (target >= 0.90) twice: from wall-clock time, and from this process's
CPU time (``time.process_time``), which other processes' load barely changes; on a shared machine
run it with ``--threads 1`` and read the CPU-time ratio.

Usage::

    python benchmarks/bench_train_loop.py                   # 64 px, batch 32, 2 threads
    python benchmarks/bench_train_loop.py --rounds 11 --threads 1 --quiet

Each round times one bare "epoch" (as many steps as a real epoch has full batches) and one real
epoch (a fresh ``train(epochs=1)`` call); the printed ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from ageest.data import get_dataset, make_folds
from ageest.engine.models import get_model
from ageest.engine.train import TrainConfig, train
from ageest.losses import get_loss


def bare_speed(num_classes: int, size: int, batch: int, steps: int, loss: str
               ) -> tuple[float, float]:
    """(wall, CPU-time) images/s of forward + loss + backward + AdamW step on pre-made batches."""
    torch.manual_seed(0)
    model = get_model("small_cnn", num_classes=num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amr = get_loss("amr", start_age=0, end_age=num_classes - 1)
    pool = [(torch.rand(batch, 3, size, size), torch.randint(0, num_classes, (batch,)))
            for _ in range(16)]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = model(x)
        value = F.cross_entropy(logits, y) if loss == "ce" else amr(logits, y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    for x, y in pool[:3]:  # warm-up (oneDNN primitive creation)
        step(x, y)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(*pool[i % len(pool)])
    n = steps * batch
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def real_speed(df, info, fold, *, size: int, batch: int, quiet: bool) -> tuple[float, float]:
    """(wall, CPU-time) training images/s of one real epoch: a whole :func:`train` call with
    ``epochs=1`` (its untimed set-up, data preload and final test pass are excluded: the history
    times the training part of the epoch only)."""
    cfg = TrainConfig(model="small_cnn", loss="amr", epochs=1, batch_size=batch,
                      image_size=size, selection="last", quiet=quiet, seed=0)
    res = train(cfg, df, fold, start_age=info.start_age, end_age=info.end_age)
    h = res.history.iloc[0]
    n = len(fold.train)
    return float(h["images_per_s"]), n / float(h["train_cpu_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side (default 64)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the arms")
    parser.add_argument("--quiet", action="store_true", help="no tqdm bar in the real arm")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df, info = get_dataset("synthetic-fgnet", size=args.size)
    # one fold's training images, no validation (evaluation is not timed anyway)
    fold = make_folds(df, "group-kfold", n_folds=5, val_fraction=0.0)[0]
    steps = max(1, len(fold.train) // args.batch)
    print(f"small_cnn, {args.size} px, batch {args.batch}, {args.threads} threads, "
          f"{len(fold.train)} training images/epoch, torch {torch.__version__}")
    # warm-up of both arms (oneDNN primitives for these shapes are created once per process)
    real_speed(df, info, fold, size=args.size, batch=args.batch, quiet=True)
    bare_speed(info.num_classes, args.size, args.batch, 3, "ce")
    real, bare, bare_amr = [], [], []
    for r in range(args.rounds):
        bare.append(bare_speed(info.num_classes, args.size, args.batch, steps, "ce"))
        real.append(real_speed(df, info, fold, size=args.size, batch=args.batch,
                               quiet=args.quiet))
        bare_amr.append(bare_speed(info.num_classes, args.size, args.batch, steps, "amr"))
        print(f"round {r + 1}: wall img/s real {real[-1][0]:.0f}, bare {bare[-1][0]:.0f}, "
              f"bare+amr {bare_amr[-1][0]:.0f} | CPU-time img/s real {real[-1][1]:.0f}, "
              f"bare {bare[-1][1]:.0f}, bare+amr {bare_amr[-1][1]:.0f}", flush=True)
    for i, clock in enumerate(("wall", "CPU-time")):
        ratios = [a[i] / b[i] for a, b in zip(real, bare, strict=True)]
        med = [statistics.median(x[i] for x in arm) for arm in (real, bare, bare_amr)]
        print(f"{clock}: median real {med[0]:.0f} img/s, bare {med[1]:.0f} img/s, bare+amr "
              f"{med[2]:.0f} img/s; ratio real/bare = {statistics.median(ratios):.3f} "
              "(target >= 0.90; per round: " + ", ".join(f"{x:.3f}" for x in ratios) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
