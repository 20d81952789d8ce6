"""Training-step speed per precision and memory format, on this CPU, in one run.

For each arm (fp32, fp32 + channels_last, bf16 autocast, bf16 + channels_last, and ``auto`` as
:func:`ageest.engine.train.resolve_amp` resolves it here) it times a full step of the model (forward,
the AMR loss in fp32 as the training loop computes it, backward, AdamW) on pre-made batches,
alternating the arms round by round so a shared machine's load hits all alike, and prints the
median images/s and its ratio to fp32. The issue's targets: on a CPU with native bf16 ``auto``
>= 1.8x fp32 (2 threads); without it ``auto`` within 5 % of fp32.

Usage::

    python benchmarks/bench_precision.py                       # small CNN, 64 px, batch 64
    python benchmarks/bench_precision.py --threads 1 --model resnet18 --rounds 3
    # the pretrained CPU backbone beside the small CNN, in one run (utkface profile's batch 32)
    python benchmarks/bench_precision.py --model small_cnn,efficientnet_lite0 --batch 32

With several models, the arms of every model alternate within each round, and a last table gives
each model's img/s under ``auto`` and its ratio to the first model's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from ageest.engine.models import get_model
from ageest.engine.train import _autocast, native_bf16, resolve_amp
from ageest.losses import get_loss

ARMS = {"fp32": (None, False), "fp32+channels_last": (None, True), "bf16": ("bf16", False),
        "bf16+channels_last": ("bf16", True)}


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s), for the printed header."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def step_speed(model_name: str, amp: str | None, channels_last: bool, *, size: int, batch: int,
               steps: int, classes: int = 117) -> float:
    """Images/s of ``steps`` training steps (after 3 untimed warm-up steps)."""
    torch.manual_seed(0)
    model = get_model(model_name, num_classes=classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = get_loss("amr", start_age=0, end_age=classes - 1)
    pool = [(torch.rand(batch, 3, size, size), torch.randint(0, classes, (batch,)))
            for _ in range(8)]
    if channels_last:
        pool = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in pool]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast("cpu", amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)  # the loop's cast: the loss is computed in fp32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for x, y in pool[:3]:
        step(x, y)
    t0 = time.perf_counter()
    for i in range(steps):
        step(*pool[i % len(pool)])
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn",
                        help="registry name(s), comma-separated: timed in one run")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.model.split(",") if m.strip()]
    auto_arm = "auto"  # what resolve_amp picks for each model on this CPU, named per model
    arms: dict[str, tuple[str | None, bool] | None] = {**ARMS, auto_arm: None}
    print(f"{cpu_name()}; native bf16: {native_bf16()}; torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}); {', '.join(names)}, {args.size} px, "
          f"batch {args.batch}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    speeds = {(m, arm): [] for m in names for arm in arms}
    for _ in range(args.rounds):
        for m in names:
            for arm, pair in arms.items():
                amp, cl = pair if pair is not None else resolve_amp("auto", "cpu", model=m)
                speeds[m, arm].append(step_speed(m, amp, cl, size=args.size,
                                                 batch=args.batch, steps=args.steps))
    med = {key: statistics.median(values) for key, values in speeds.items()}
    for m in names:
        print(f"\n{m}\n\n| arm | img/s (median) | × fp32 | per round |\n|---|---:|---:|---|")
        auto = resolve_amp("auto", "cpu", model=m)
        for arm in arms:
            label = (f"auto (= {auto[0] or 'fp32'}{' + channels_last' if auto[1] else ''})"
                     if arm == auto_arm else arm)
            print(f"| {label} | {med[m, arm]:,.0f} | {med[m, arm] / med[m, 'fp32']:.2f} | "
                  + ", ".join(f"{v:.0f}" for v in speeds[m, arm]) + " |")
    if len(names) > 1:
        print(f"\nunder amp auto (each model's own choice)\n\n| model | img/s (median) | × "
              f"{names[0]} |\n|---|---:|---:|")
        for m in names:
            print(f"| {m} | {med[m, auto_arm]:,.0f} | "
                  f"{med[m, auto_arm] / med[names[0], auto_arm]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
