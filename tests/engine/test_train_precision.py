"""amp auto: bf16 autocast + channels_last only where the CPU executes bf16 natively, recorded
in the run's parameters and identity; every loss stays in float32 under autocast."""

from __future__ import annotations

import pytest
import torch

import ageest.engine.train
from ageest.engine.train import TrainConfig, precision_label, resolve_amp
from ageest.losses import get_loss, list_losses


def _loss(name: str):
    kw = {"k": 4} if name == "mean_residue" else {}
    return get_loss(name, start_age=0, end_age=116, **kw)


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_is_float32_under_bf16_autocast(name):
    torch.manual_seed(0)
    logits = torch.randn(64, 117) * 3
    ages = torch.randint(0, 117, (64,))
    loss = _loss(name)
    plain = loss(logits, ages)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(logits, ages)  # before the fix: off by ~1e-3 of the loss (bf16 matmul)
        half = loss(logits.bfloat16(), ages)
    assert inside.dtype == torch.float32 and half.dtype == torch.float32
    # the same float32 operations on the same inputs: equal to float32 rounding of one sum
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=0)
    torch.testing.assert_close(half, loss(logits.bfloat16().float(), ages), rtol=1e-6, atol=0)


def test_amr_gradient_flows_back_to_bf16_logits():
    logits = (torch.randn(8, 117) * 2).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _loss("amr")(logits, torch.randint(0, 117, (8,))).backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_per_cpu(monkeypatch, native):
    monkeypatch.setattr(ageest.engine.train, "native_bf16", lambda: native)
    assert resolve_amp("auto", "cpu") == (("bf16", True) if native else (None, False))
    assert resolve_amp("auto", "cpu", channels_last=True) == (("bf16" if native else None), True)
    assert resolve_amp("auto", "cuda") == (None, False)  # CUDA: the user chooses
    assert resolve_amp("fp32", "cpu") == (None, False)
    cfg = TrainConfig(amp="auto")
    assert (cfg.amp, cfg.channels_last) == (("bf16", True) if native else (None, False))
    assert TrainConfig(amp="auto", dtype="float64").amp is None


def test_precision_label():
    assert precision_label("bf16", True, "auto") == "bf16 autocast + channels_last (amp auto)"
    assert precision_label(None, False) == "fp32"


def test_grid_records_what_auto_resolved_to(monkeypatch, tmp_path):
    from ageest.engine.grids import expand_grid

    grid = {"dataset": ["synthetic-fgnet"], "losses": ["ce"], "folds": [0], "amp": "auto",
            "synthetic_size": 32}
    found = {}
    for native in (True, False):
        monkeypatch.setattr(ageest.engine.train, "native_bf16", lambda native=native: native)
        params = expand_grid(grid, tmp_path)[0]["params"]
        found[native] = params
    assert (found[True]["amp"], found[True]["channels_last"]) == ("bf16", True)
    assert (found[False]["amp"], found[False]["channels_last"]) == (None, False)
    # a bf16 run is never reused as an fp32 one: the identity differs
    assert found[True]["params_hash"] != found[False]["params_hash"]


def test_forced_avx2_kernels_resolve_auto_to_fp32():
    import os
    import subprocess
    import sys

    code = "from ageest.engine.train import resolve_amp; print(resolve_amp('auto', 'cpu'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(None, False)"
