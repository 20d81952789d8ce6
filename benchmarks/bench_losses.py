"""Time the vectorised AMR loss against a per-sample loop written the way the official code is.

Prints, in one run:

1. forward+backward time of ``ageest.losses.MeanResidueLoss`` (adaptive K: cross-entropy + mean
   + residue) and of a reference that builds its one-hot by looping over the batch exactly as
   the official ``residue_loss_adaptive_K.py`` does (per-sample indexing, a CPU round trip for the
   targets, a float64 mask, a host read of the mean K), and the speed-up;
2. the loss's share of one training step (forward, loss, backward, SGD step) of a small CNN on
   64x64 images.

Usage::

    python benchmarks/bench_losses.py                  # N=64, C=101 on the CPU
    python benchmarks/bench_losses.py --device cuda    # the same on a GPU

Targets: speed-up >= 2x on a CPU; loss share < 2 % of a training step. Timings are medians of
``torch.utils.benchmark`` blocked measurements after warm-up (it synchronises CUDA itself).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

from ageest.engine.models import get_model
from ageest.losses import MeanResidueLoss


class OfficialStyleAMR(nn.Module):
    """Cross-entropy plus the official mean-residue loss, computed as the official code does.

    Follows ``MeanResidueLossAdaptive.forward`` line by line, with ``.cuda()`` replaced by the
    given device so that it runs on a CPU too. Returns the total ``ce + l1*mean + l2*residue``
    (the official residue includes the constant ``-eps*log(eps)`` per top-K class).
    """

    def __init__(self, lambda_1: float, lambda_2: float, start_age: int, end_age: int, device):
        super().__init__()
        self.lambda_1, self.lambda_2 = lambda_1, lambda_2
        self.start_age, self.end_age = start_age, end_age
        self.device = device
        self.last_k = float("nan")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = logits.size()[0]
        # official: target.type(torch.FloatTensor).cuda() -- a copy to the host and back
        target_f = target.type(torch.FloatTensor).to(self.device)
        p = torch.softmax(logits, dim=1)
        a = torch.arange(self.start_age, self.end_age + 1, dtype=torch.float32).to(self.device)
        mean = torch.squeeze((p * a).sum(1, keepdim=True), dim=1)
        mean_loss = ((mean - target_f) ** 2).mean() / 2.0
        eps = 1e-3
        width = self.end_age + 1 - self.start_age
        pos = torch.zeros(n, width).to(self.device)
        for i in range(n):  # the official per-sample one-hot
            pos[i, target_f[i].int()] = 1
        prob_gt = (pos * p).sum(1).unsqueeze(dim=1).to(self.device)
        prob_gt = prob_gt.expand(n, width)
        pos_no_k = (p < prob_gt).to(torch.float64).to(self.device)  # torch.tensor(..., dtype=float)
        p_not_k = pos_no_k * p
        residue = (-(p_not_k + eps) * torch.log(p_not_k + eps)).sum(1, keepdim=True).mean()
        self.last_k = float(((pos_no_k == 0).sum() / n).item())  # host read, as logged
        ce = F.cross_entropy(logits, target)
        return ce + self.lambda_1 * mean_loss + self.lambda_2 * residue


def median_ms(fn, min_run_time: float) -> float:
    for _ in range(3):  # warm-up (allocator, kernels, autograd graph caches)
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved_ms(fns: dict, min_run_time: float, rounds: int = 5) -> dict[str, float]:
    """Median over ``rounds`` alternating measurements, so that load from other processes
    drifts over both candidates alike rather than biasing whichever ran second."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, min_run_time / rounds))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    parser.add_argument("--batch", type=int, default=64, help="batch size N")
    parser.add_argument("--classes", type=int, default=101, help="number of age classes C")
    parser.add_argument("--image-size", type=int, default=64, help="CNN input size in px")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    n, c = args.batch, args.classes
    g = torch.Generator().manual_seed(0)
    logits0 = (torch.randn(n, c, generator=g) * 2).to(device)
    ages = torch.randint(0, c, (n,), generator=g).to(device)

    ours = MeanResidueLoss(start_age=0, end_age=c - 1, topk_constant=True)
    ref = OfficialStyleAMR(0.2, 0.05, 0, c - 1, device)

    # same value and gradient first, so the timings compare equal work
    z1 = logits0.clone().requires_grad_(True)
    z2 = logits0.clone().requires_grad_(True)
    v1, v2 = ours(z1, ages), ref(z2, ages)
    v1.backward()
    v2.backward()
    value_diff = abs(float(v1.detach()) - float(v2.detach()))
    grad_diff = float((z1.grad - z2.grad).abs().max())

    def fwd_bwd(loss_fn):
        def run():
            z = logits0.detach().requires_grad_(True)
            loss_fn(z, ages).backward()

        return run

    t = interleaved_ms({"ours": fwd_bwd(ours), "ref": fwd_bwd(ref)}, 2 * args.min_run_time)
    t_ours, t_ref = t["ours"], t["ref"]

    model, model_name = get_model("small_cnn", num_classes=c), "ageest.engine.models small_cnn"
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.rand(n, 3, args.image_size, args.image_size, generator=g).to(device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = ours(model(images), ages)
        loss.backward()
        opt.step()

    t_step = median_ms(train_step, args.min_run_time)

    print(f"torch {torch.__version__}, python {platform.python_version()}, device {device}", end="")
    if device.type == "cpu":
        print(f", {torch.get_num_threads()} thread(s)")
    else:
        print(f" ({torch.cuda.get_device_name(device)})")
    print(f"N={n}, C={c}; AMR loss (CE + 0.2 mean + 0.05 adaptive residue), forward+backward")
    print(f"  agreement: |value diff| = {value_diff:.2e}, max |grad diff| = {grad_diff:.2e}")
    print(f"  vectorised (ageest):          {t_ours:8.3f} ms")
    print(f"  per-sample loop (official):   {t_ref:8.3f} ms")
    print(f"  speed-up:                     {t_ref / t_ours:8.2f} x   (target >= 2x)")
    print(f"training step of {model_name} at {args.image_size}x{args.image_size} px, batch {n}")
    print(f"  step (forward, AMR loss, backward, SGD): {t_step:8.3f} ms")
    print(
        f"  loss share of the step:                  {100 * t_ours / t_step:8.2f} %  (target < 2%)"
    )
    ok = math.isfinite(value_diff) and value_diff < 1e-4 and grad_diff < 1e-5
    if not ok:
        print(
            "ERROR: the vectorised loss and the official-style reference disagree", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
