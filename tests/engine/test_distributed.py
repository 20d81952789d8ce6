"""One run on two processes (``torchrun``, DistributedDataParallel, gloo on CPU) computes what the
same run computes in one process.

What should match, and why this configuration
---------------------------------------------
With ``batch_size`` the *global* batch, each epoch's order comes from one seeded permutation that
rank r of W reads every W-th index of, so the W ranks' batches together are exactly the one-process
batch; DDP averages the ranks' gradients, which equals the gradient of the global batch mean when
the ranks hold equally many images (an even number of training images here). Three things would
break the equality and are excluded on purpose:

- batch norm statistics over each rank's slice: :func:`ageest.engine.distributed.wrap_model` synchronises
  them (``GlooSyncBatchNorm`` on CPU), and the model is ResNet-18, full of batch norm, so this is
  tested rather than avoided;
- random augmentation and dropout draw per-rank random numbers: ``augment: false`` and ResNet-18
  (no dropout);
- AdamW's first steps move every weight by about ``lr * sign(g)``, so gradients equal up to float
  rounding can still flip the sign of near-zero entries: plain SGD keeps rounding at rounding size.

The run is in float64 (``dtype: float64``): the one- and two-process computations differ only in
the order of their reductions (gradient all-reduce, batch-norm statistics summed over ranks), so
in real arithmetic they are equal, and in float64 they agree to ~1e-13 whatever kernels the CPU
dispatches (AVX-512, AVX2 or plain). The tolerances below (1e-9) leave four orders of magnitude
for that and still catch a real bug: without synchronised batch norm the training loss is off by
~3% and single predictions by ~3 years. (In float32 the two agree only to ~1e-3 relative after an
epoch, and by how much depends on the CPU's kernels: an AVX2 machine gave 1.3e-3.)
The stored expected ages are float64 (computed from the float64 probabilities), so they are
held to the same 1e-9.
64 px images: at 32 px the synthetic faces leave some ResNet channels nearly constant.
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

from ageest.data import get_dataset, make_folds
from ageest.data.synthetic import write_fgnet_like
from ageest.engine import distributed, grids, store

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
    tasks = grids.expand_grid(grid)
    df, _ = get_dataset("fgnet", data_dir=data)
    folds = make_folds(df, "group-kfold", n_folds=3, val_fraction=0.15, seed=0)
    # equal shards: an odd count would make DistributedSampler repeat one image on one rank
    even = [i for i, f in enumerate(folds) if len(f.train) % 2 == 0]
    assert even, "no fold with an even number of training images"
    params = next(t["params"] for t in tasks if t["params"]["fold_index"] == even[0])
    return {**params, "augment": False, "dtype": "float64"}


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
    _run([sys.executable, "-m", "ageest.engine.run", "--params", str(path), "--out", str(one)], env)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = _run([str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend",
                "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "ageest.engine.run",
                "--params", str(path), "--out", str(two)], env)
    assert out.stdout.count("test MAE") == 1  # rank 0 alone reports (and writes)

    for run_dir in (one, two):
        assert store.is_finished(run_dir)
    h1, h2 = (pd.read_csv(d / store.HISTORY) for d in (one, two))
    for col in ("train_total", "train_mae", "val_mae"):
        np.testing.assert_allclose(h2[col], h1[col], rtol=1e-9, atol=0, err_msg=col)
    p1, p2 = (store.load_predictions(d).sort_values("image_id") for d in (one, two))
    assert p1["image_id"].tolist() == p2["image_id"].tolist()
    np.testing.assert_allclose(p2["expected_age"].to_numpy(), p1["expected_age"].to_numpy(),
                               rtol=1e-9, atol=0)
    m1, m2 = (store.read_metrics(d) for d in (one, two))
    assert m2["mae"] == pytest.approx(m1["mae"], rel=1e-9, abs=0)
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
