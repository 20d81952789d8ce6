"""One run on two processes (``torchrun``, DistributedDataParallel, gloo on CPU) computes what the
same run computes in one process.

What should match, and why this configuration
---------------------------------------------
With ``batch_size`` the *global* batch, each epoch's order comes from one seeded permutation that
rank r of W reads every W-th index of, so the W ranks' batches together are exactly the one-process
batch; DDP averages the ranks' gradients, which equals the gradient of the global batch mean when
the ranks hold equally many images (an even number of training images here). Three things would
break the equality and are excluded on purpose:

- batch norm statistics over each rank's slice: :func:`ageest.distributed.wrap_model` synchronises
  them (``GlooSyncBatchNorm`` on CPU), and the model is ResNet-18, full of batch norm, so this is
  tested rather than avoided;
- random augmentation and dropout draw per-rank random numbers: ``augment: false`` and ResNet-18
  (no dropout);
- AdamW's first steps move every weight by about ``lr * sign(g)``, so gradients equal up to float
  rounding can still flip the sign of near-zero entries: plain SGD keeps rounding at rounding size.

In float64 the first gradients of the two set-ups agree to ~1e-14 (checked by hand while writing
this test); in float32 they agree to ~5e-6, and after an epoch of 4 SGD steps the training loss
agrees to ~3e-5 relative. The same comparison *without* synchronised batch norm is off by ~3% in
training loss and ~3 years in single predictions, so the tolerances below tell a correct
distributed run from a subtly wrong one. 64 px images: at 32 px the synthetic faces leave some
ResNet channels nearly constant, and float32 rounding is then amplified to ~1e-2.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ageest import distributed, runner, store
from ageest.data import get_dataset, make_folds
from ageest.data.synthetic import write_fgnet_like

pytestmark = pytest.mark.filterwarnings("ignore:FG-NET .* differs from the release manifest")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(tmp_path: Path) -> dict:
    data = write_fgnet_like(tmp_path / "fg", seed=0, size=64, n_subjects=12, n_images=120)
    grid = {"dataset": "fgnet", "data_dir": str(data), "protocol": "group-kfold", "n_folds": 3,
            "losses": ["amr"], "model": "resnet18", "optimizer": "sgd", "lr": 1e-3,
            "epochs": 1, "batch_size": 16, "image_size": 64, "synthetic_size": 64,
            "threads": 1, "quiet": True, "results_dir": str(tmp_path / "grid")}
    tasks = runner.expand_grid(grid)
    df, _ = get_dataset("fgnet", data_dir=data)
    folds = make_folds(df, "group-kfold", n_folds=3, val_fraction=0.15, seed=0)
    # equal shards: an odd count would make DistributedSampler repeat one image on one rank
    even = [i for i, f in enumerate(folds) if len(f.train) % 2 == 0]
    assert even, "no fold with an even number of training images"
    params = next(t["params"] for t in tasks if t["params"]["fold_index"] == even[0])
    return {**params, "augment": False}


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def test_two_process_ddp_run_matches_one_process(tmp_path):
    params = _params(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo on the loopback interface only
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "ageest.train", "--params", str(path), "--out", str(one)], env)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = _run([str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend",
                "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "ageest.train",
                "--params", str(path), "--out", str(two)], env)
    assert out.stdout.count("test MAE") == 1  # rank 0 alone reports (and writes)

    for run_dir in (one, two):
        assert store.is_finished(run_dir)
    h1, h2 = (pd.read_csv(d / store.HISTORY) for d in (one, two))
    np.testing.assert_allclose(h2["train_total"], h1["train_total"], rtol=1e-3)
    np.testing.assert_allclose(h2["train_mae"], h1["train_mae"], rtol=1e-3)
    np.testing.assert_allclose(h2["val_mae"], h1["val_mae"], rtol=5e-3)
    p1, p2 = (store.load_predictions(d).sort_values("image_id") for d in (one, two))
    assert p1["image_id"].tolist() == p2["image_id"].tolist()
    gap = np.abs(p1["expected_age"].to_numpy() - p2["expected_age"].to_numpy())
    assert gap.max() < 0.5, f"predicted ages differ by up to {gap.max():.3f} years"
    m1, m2 = (store.read_metrics(d) for d in (one, two))
    assert m2["mae"] == pytest.approx(m1["mae"], rel=1e-2)
    assert m1["best_epoch"] == m2["best_epoch"] == 1


def test_sync_batchnorm_conversion_keeps_parameters_and_acts_as_batchnorm_in_one_process():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2),
                                torch.nn.BatchNorm1d(2))
    reference = copy.deepcopy(model)
    params, keys = list(model.parameters()), list(model.state_dict())
    converted = distributed.convert_gloo_sync_batchnorm(model)
    assert isinstance(converted[1], distributed.GlooSyncBatchNorm)
    assert isinstance(converted[4], distributed.GlooSyncBatchNorm)
    # same Parameter objects (an optimizer built before stays valid), same checkpoint keys
    assert all(a is b for a, b in zip(params, converted.parameters(), strict=True))
    assert list(converted.state_dict()) == keys
    x = torch.randn(8, 3, 8, 8)
    torch.testing.assert_close(converted(x), reference(x))  # training mode, batch statistics
    torch.testing.assert_close(converted[1].running_var, reference[1].running_var)
    converted.eval(), reference.eval()
    torch.testing.assert_close(converted(x), reference(x))  # running statistics
    with pytest.raises(ValueError, match=r"\(N, C, \.\.\.\)"):
        converted[4](torch.zeros(3))
