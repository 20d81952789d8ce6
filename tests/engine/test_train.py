"""The trainer on a tiny FG-NET-format synthetic dataset (12 subjects, 120 images, 32 px):
history, predictions, determinism, resume from a checkpoint, model selection (incl. the
test-selected official mode), the non-finite-loss error and the params-YAML entry point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ageest import losses
from ageest.data import make_folds
from ageest.engine.train import NonFiniteLossError, TrainConfig, load_checkpoint, train
from tests.helpers import tiny_config

TIMING = ["epoch_time_s", "images_per_s", "train_cpu_s"]  # history columns that vary per run


pytestmark = pytest.mark.usefixtures("two_threads")


_cfg = tiny_config  # the trainer's tiny-data settings (tests/helpers.py)


def _train(tiny, cfg, **kw):
    df, info, folds = tiny
    return train(cfg, df, folds[0], start_age=info.start_age, end_age=info.end_age, **kw)


def test_end_to_end_history_and_predictions(tiny):
    df, info, folds = tiny
    res = _train(tiny, _cfg())
    h = res.history
    for col in ("epoch", "lr", "train_total", "train_ce", "train_mean", "train_residue",
                "train_k_mean", "train_mae", "val_mae", "epoch_time_s", "images_per_s", "train_cpu_s",
                "selected"):
        assert col in h.columns, col
    assert h["epoch"].tolist() == [1, 2]
    assert np.isfinite(h[["train_total", "train_mae", "val_mae", "images_per_s"]]).all().all()
    assert h["selected"].sum() == 1 and res.best_epoch == int(h.loc[h["selected"], "epoch"].iloc[0])
    # selection on validation: the selected epoch has the lowest validation MAE
    assert res.best_epoch == int(h.loc[h["val_mae"].idxmin(), "epoch"])
    assert res.selected_by == "validation mae" and not res.test_selected
    assert "test_mae" not in h.columns  # the clean protocol never looks at test during training
    p = res.predictions
    test_ids = set(df.iloc[folds[0].test]["image_id"])
    assert set(p["image_id"]) == test_ids and len(p) == len(folds[0].test)
    probs = np.stack(p["probs"].to_list())
    assert probs.shape == (len(p), info.num_classes)
    # float32 softmax over C classes sums to 1 within ~C * 6e-8; stored as float16 probabilities
    # and renormalised on read, so 1e-5 is the float32 bound with room for any CPU's kernels
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    ages = np.arange(info.start_age, info.end_age + 1)
    np.testing.assert_allclose(p["expected_age"], probs @ ages, rtol=1e-5)


def test_same_seed_gives_identical_predictions(tiny):
    a = _train(tiny, _cfg(epochs=1))
    b = _train(tiny, _cfg(epochs=1))
    c = _train(tiny, _cfg(epochs=1, seed=1))
    pa, pb = np.stack(a.predictions["probs"]), np.stack(b.predictions["probs"])
    assert np.array_equal(pa, pb)
    pd.testing.assert_frame_equal(a.history.drop(columns=TIMING),
                                  b.history.drop(columns=TIMING))
    assert not np.array_equal(pa, np.stack(c.predictions["probs"]))


def test_resume_from_last_checkpoint_equals_uninterrupted(tiny, tmp_path):
    straight = _train(tiny, _cfg(epochs=3), ckpt_dir=tmp_path / "a")
    # "killed" after epoch 2: train 2 epochs, then continue the same run to 3
    _train(tiny, _cfg(epochs=2), ckpt_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    resumed = _train(tiny, _cfg(epochs=3), ckpt_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 3
    assert resumed.history["epoch"].tolist() == [1, 2, 3]
    assert np.array_equal(np.stack(straight.predictions["probs"]),
                          np.stack(resumed.predictions["probs"]))
    assert resumed.best_epoch == straight.best_epoch


def test_official_selection_reads_test_every_epoch_and_is_marked(tiny):
    res = _train(tiny, _cfg(epochs=3, selection="test_best_epoch_official"))
    h = res.history
    assert res.test_selected
    assert "test_mae" in h.columns and h["test_mae"].notna().all()
    assert res.best_epoch == int(h.loc[h["test_mae"].idxmin(), "epoch"])
    assert res.selected_by.startswith("test (official")
    # the reported predictions are those of the test-selected epoch
    assert res.predictions.pipe(
        lambda p: np.mean(np.abs(p["expected_age"] - p["age_mean"]))
    ) == pytest.approx(h["test_mae"].min(), rel=1e-6)


def test_last_selection_and_fold_without_validation(tiny):
    df, info, folds = tiny
    res = _train(tiny, _cfg(selection="last"))
    assert res.best_epoch == 2 and res.selected_by == "last epoch"
    no_val = make_folds(df, "group-kfold", n_folds=3, val_fraction=0.0)[0]
    assert len(no_val.val) == 0
    res = train(_cfg(), df, no_val, start_age=info.start_age, end_age=info.end_age)
    assert res.best_epoch == 2 and res.selected_by == "last epoch (no validation images)"


class _NaNAfter(torch.nn.Module):
    """Wraps a loss and returns NaN from the ``n``-th call on (counting from 0)."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.last_components = {}

    def forward(self, logits, ages, std=None):
        out = self.inner(logits, ages, std=std)
        self.last_components = dict(self.inner.last_components)
        self.calls += 1
        if self.calls > self.n:
            self.last_components["total"] = float("nan")
            return out * float("nan")
        return out


def test_non_finite_loss_names_epoch_batch_and_keeps_last_checkpoint(tiny, tmp_path,
                                                                     monkeypatch):
    df, info, folds = tiny
    n_batches = -(-len(folds[0].train) // 16)
    real = losses.get_loss
    # NaN at the 2nd batch of epoch 2 (batch index 1)
    monkeypatch.setattr(losses, "get_loss",
                        lambda *a, **k: _NaNAfter(real(*a, **k), n_batches + 1))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 1") as err:
        _train(tiny, _cfg(epochs=3), ckpt_dir=tmp_path)
    assert str(tmp_path / "last.pt") in str(err.value)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # the last good epoch is kept


def test_huge_learning_rate_fails_with_epoch_and_batch(tiny):
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, batch \d+"):
        _train(tiny, _cfg(optimizer="sgd", lr=1e30, loss="ce"))


def test_config_validation():
    # every field is checked against its own declaration, by the grid's one check
    with pytest.raises(ValueError, match="TrainConfig selection: 'best' is not one of"):
        TrainConfig(selection="best")
    with pytest.raises(ValueError, match="TrainConfig optimizer: 'adam' is not one of"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="TrainConfig lr: 0.0 is not above 0.0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="TrainConfig amp: 'bf15' is not one of"):
        TrainConfig(amp="bf15")
    with pytest.raises(ValueError, match=r"unknown TrainConfig key\(s\) \['lrr'\]"):
        TrainConfig.from_dict({"lrr": 0.1})


def test_resume_with_inconsistent_checkpoints_restarts(tiny, tmp_path):
    """A kill between writing best.pt and last.pt leaves them disagreeing: start over."""
    from ageest.engine.train import save_checkpoint

    _train(tiny, _cfg(epochs=2, selection="last"), ckpt_dir=tmp_path)
    best = load_checkpoint(tmp_path / "best.pt")
    save_checkpoint(tmp_path / "best.pt", {**best, "epoch": 1})
    with pytest.warns(UserWarning, match="disagree on the best epoch"):
        res = _train(tiny, _cfg(epochs=3, selection="last"), ckpt_dir=tmp_path)
    assert res.resumed_from_epoch is None and res.history["epoch"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_channels_last_on_cpu(tiny, amp):
    res = _train(tiny, _cfg(epochs=1, amp=amp, channels_last=True, loss="mean_variance"))
    probs = np.stack(res.predictions["probs"])
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    assert np.isfinite(res.history[["train_total", "train_variance", "val_mae"]]).all().all()


def test_official_cuda_numerics_are_scoped_to_their_run():
    """cuDNN and TF32 flags are process-wide: what an official-mode run sets must not stay set
    for the clean runs that follow in the same worker."""
    from ageest.engine.train import cuda_numerics, numerics_scope

    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.deterministic = False
        with numerics_scope():
            inside = cuda_numerics(official=True)
        assert inside == {"cudnn_deterministic": True, "cudnn_benchmark": False,
                          "tf32_matmul": False, "tf32_cudnn": False}
        assert cuda_numerics(official=False) == {"cudnn_deterministic": False,
                                                 "cudnn_benchmark": True, "tf32_matmul": True,
                                                 "tf32_cudnn": True}
        with pytest.raises(RuntimeError), numerics_scope():  # restored on failure too
            cuda_numerics(official=True)
            raise RuntimeError("the run failed")
        assert torch.backends.cudnn.benchmark is True
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved
