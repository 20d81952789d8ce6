"""Speed benchmarks of the data path (not run by the tests; they print numbers and ratios).

``python -m ageest.data.benchmark`` generates the synthetic FG-NET-like set in a temporary
folder and prints

* synthetic generation speed (images/s, one thread),
* the data path alone: a DataLoader (batch 32, ``num_workers=0``) over :class:`AgeDataset`
  with the ``light`` training transform at 64 px, images/s,
* a small CNN's training step on pre-made tensors (the "bare model") and with the data path,
  and their ratio (target >= 0.90).

The machine's load matters: run it on an otherwise idle machine for numbers worth quoting.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ageest.data.dataset import AgeDataset, build_transforms
from ageest.data.loaders import load_fgnet
from ageest.data.synthetic import write_fgnet_like


def generation_speed(n_images: int = 1002, size: int = 64, seed: int = 0) -> dict[str, float]:
    """Time :func:`write_fgnet_like` (82 subjects, ``n_images`` images) in a temp folder."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_fgnet_like(Path(tmp) / "fg", seed=seed, size=size, n_images=n_images)
        dt = time.perf_counter() - t0
    return {"images": n_images, "seconds": dt, "images_per_s": n_images / dt}


def data_path_speed(ds: AgeDataset, *, batch_size: int = 32, seconds: float = 5.0
                    ) -> float:
    """Images/s of iterating a DataLoader (``num_workers=0``, shuffled) over ``ds``."""
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    for _ in dl:  # warm-up epoch (fills the cache if not preloaded)
        pass
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, _, _ in dl:
            n += len(x)
    return n / (time.perf_counter() - t0)


def train_speed(ds: AgeDataset, *, num_classes: int = 70, size: int = 64, batch_size: int = 32,
                seconds: float = 2.0, rounds: int = 5) -> dict[str, float]:
    """Images/s of a small CNN's AdamW training step, bare (pre-made batches) and fed by ``ds``.

    The two arms alternate for ``rounds`` rounds of ``seconds`` each, so a shared machine's
    changing load hits both alike; the medians and the median of per-round ratios are returned.
    """
    import statistics

    from ageest.engine.models import get_model

    model = get_model("small_cnn", num_classes=num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y.clamp(max=num_classes - 1)).backward()
        opt.step()

    # A pool of pre-made batches: one batch repeated is memorised within seconds and its
    # vanishing gradients turn denormal, which slows CPU arithmetic and skews the comparison.
    pool = [(torch.rand(batch_size, 3, size, size), torch.randint(0, num_classes, (batch_size,)))
            for _ in range(16)]
    for xb, yb in pool[:3]:
        step(xb, yb)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0,
                                     drop_last=True)

    def bare_round() -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            xb, yb = pool[(n // batch_size) % len(pool)]
            step(xb, yb)
            n += batch_size
        return n / (time.perf_counter() - t0)

    def fed_round() -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for x, y, _ in dl:
                step(x, y)
                n += len(x)
                if time.perf_counter() - t0 >= seconds:
                    break
        return n / (time.perf_counter() - t0)

    bare, fed = [], []
    for _ in range(rounds):
        bare.append(bare_round())
        fed.append(fed_round())
    return {"bare": statistics.median(bare), "fed": statistics.median(fed),
            "ratio": statistics.median(f / b for f, b in zip(fed, bare, strict=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # same arithmetic speed for both arms of the comparison
    torch.manual_seed(0)
    gen = generation_speed(size=args.size)
    print(f"synthetic generation: {gen['images']} images in {gen['seconds']:.2f} s "
          f"({gen['images_per_s']:.0f} img/s, {args.size} px)")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_fgnet_like(Path(tmp) / "fg", size=args.size)
        df = load_fgnet(root)
        ds = AgeDataset(df, start_age=0, size=args.size,
                        transform=build_transforms("light", size=args.size, train=True))
        t0 = time.perf_counter()
        ds.preload()
        print(f"decode + cache {len(ds)} images: {time.perf_counter() - t0:.2f} s, "
              f"{ds.cache_bytes() / 2**20:.1f} MiB")
        data = data_path_speed(ds, seconds=args.seconds)
        speed = train_speed(ds, size=args.size)
    print(f"data path alone (batch 32, num_workers=0, light transform): {data:.0f} img/s "
          f"({1e6 / data:.1f} us/img)")
    bare, fed = speed["bare"], speed["fed"]
    print(f"small CNN training (median of alternating rounds), bare: {bare:.0f} img/s; fed by "
          f"the data path: {fed:.0f} img/s; ratio {speed['ratio']:.3f} (target >= 0.90); "
          f"expected from the data path's own cost {1 / (1 + bare / data):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
