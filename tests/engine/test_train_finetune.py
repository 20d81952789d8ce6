"""Fine-tuning settings a pretrained backbone needs: the one-cycle schedule (against torch's own
scheduler), a lower learning rate for the backbone than for the age head, test-time flip
averaging (the stored predictions are the averaged ones), a model that normalises its inputs
itself, and run identities that stay valid when such settings are added."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ageest.engine import models
from ageest.engine import train as train_module
from ageest.engine.run import params_hash
from ageest.engine.train import TrainConfig, epoch_lr, onecycle_lr, predict_probs, train
from tests.helpers import tiny_config as _cfg

pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.mark.parametrize(("total", "warmup"), [(50, 0.3), (37, 0.5), (12, 0.25), (200, 0.1)])
def test_onecycle_is_torchs_onecyclelr_step_by_step(total, warmup):
    """Exact in real arithmetic (the same formula); float64 rounding only."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=total,
                                                pct_start=warmup, cycle_momentum=False)
    reference = []
    for step in range(total):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        if step < total - 1:
            sched.step()
    ours = [onecycle_lr(1e-3, warmup, step, total) for step in range(total)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=0)
    # and through the config: epoch e, batch i of n is step (e - 1) * n + i
    cfg = TrainConfig(lr_schedule="onecycle", lr=1e-3, epochs=total // 4 or 1,
                      warmup_fraction=warmup)
    assert epoch_lr(cfg, 2, 1, 4) == onecycle_lr(1e-3, warmup, 5, cfg.epochs * 4)


def test_onecycle_trains_per_batch_and_records_the_epochs_first_rate(tiny):
    df, info, folds = tiny
    cfg = _cfg(lr_schedule="onecycle", warmup_fraction=0.5, epochs=2)
    result = train(cfg, df, folds[0], start_age=info.start_age, end_age=info.end_age)
    steps = int(np.ceil(len(folds[0].train) / cfg.batch_size))
    assert result.history["lr"].tolist() == pytest.approx(
        [onecycle_lr(1e-3, 0.5, 0, 2 * steps), onecycle_lr(1e-3, 0.5, steps, 2 * steps)])


def test_backbone_lr_scale_makes_two_groups_and_zero_freezes_the_backbone(tiny):
    model = models.get_model("small_cnn", num_classes=5)
    opt = train_module._make_optimizer(_cfg(backbone_lr_scale=0.1), model)
    train_module._set_lr(opt, 1e-3)
    head_ids = {id(p) for p in models.head(model).parameters()}
    by_group = [({id(p) for p in g["params"]}, g["lr"]) for g in opt.param_groups]
    assert by_group[0] == (head_ids, 1e-3)
    assert by_group[1][1] == pytest.approx(1e-4)
    assert by_group[1][0] == {id(p) for p in model.parameters()} - head_ids
    # one group and the plain rate by default
    assert len(train_module._make_optimizer(_cfg(), model).param_groups) == 1

    df, info, folds = tiny
    torch.manual_seed(0)
    before = models.get_model("small_cnn", num_classes=info.end_age - info.start_age + 1)
    cfg = _cfg(backbone_lr_scale=0.0, epochs=1)
    result = train(cfg, df, folds[0], start_age=info.start_age, end_age=info.end_age,
                   ckpt_dir=None)
    assert np.isfinite(result.history["train_total"]).all()
    # a frozen backbone: the training loop took its parameters out of the optimiser
    frozen = _cfg(backbone_lr_scale=0.0)
    opt = train_module._make_optimizer(frozen, before)
    assert [len(g["params"]) for g in opt.param_groups] == [2]
    assert not any(p.requires_grad for n, p in before.named_parameters() if not n.startswith("fc."))


def test_head_is_the_age_layer_of_every_registry_model():
    for name in models.list_models():
        model = models.get_model(name, num_classes=7)
        assert models.head(model).out_features == 7, name


def test_tta_flip_averages_the_mirror_image_and_is_what_a_run_stores(tiny):
    torch.manual_seed(0)
    model = models.get_model("small_cnn", num_classes=4).eval()
    x = torch.rand(3, 3, 16, 16)
    loader = [(x, torch.zeros(3), torch.arange(3))]
    plain, _ = predict_probs(model, loader, "cpu")
    mirrored, _ = predict_probs(model, [(torch.flip(x, dims=[3]), None, torch.arange(3))], "cpu")
    both, _ = predict_probs(model, loader, "cpu", flip=True)
    np.testing.assert_allclose(both, (plain + mirrored) / 2, rtol=0, atol=1e-7)
    assert not np.allclose(plain, mirrored)  # the check above could fail

    df, info, folds = tiny
    runs = {flip: train(_cfg(tta_flip=flip, epochs=1), df, folds[0], start_age=info.start_age,
                        end_age=info.end_age) for flip in (False, True)}
    # same seed, same weights: only the evaluation differs, and the stored predictions follow it
    a, b = (np.stack(runs[f].predictions["probs"]) for f in (False, True))
    assert a.shape == b.shape and not np.allclose(a, b)
    assert runs[True].numerics["tta_flip"] is True


def test_a_self_normalising_model_refuses_normalize_and_amp_auto_is_its_fastest(monkeypatch):
    with pytest.raises(ValueError, match=r"normalize=True with model efficientnet_lite0.*twice"):
        TrainConfig(model="efficientnet_lite0", normalize=True)
    # auto: each backbone's fastest measured arm on a CPU (docs/models.md): Lite0 fp32 +
    # channels_last whatever the CPU's bf16 (bf16 + channels_last ran 0.5-0.7x as fast), the
    # small CNN bf16 + channels_last where bf16 is native, fp32 elsewhere
    for native in (True, False):
        monkeypatch.setattr(train_module, "native_bf16", lambda native=native: native)
        lite = TrainConfig(model="efficientnet_lite0", amp="auto")
        assert (lite.amp, lite.channels_last) == (None, True)
        small = TrainConfig(model="small_cnn", amp="auto")
        assert (small.amp, small.channels_last) == (("bf16", True) if native else (None, False))
    assert train_module.resolve_amp("auto", "cuda", model="efficientnet_lite0") == (None, False)


def test_run_identities_survive_new_settings():
    """Hashes written before the fine-tuning settings existed keep their values (pinned below,
    computed with the code before them), a new setting at its default changes nothing, and a
    new setting set to another value is part of the identity."""
    params = dict(TrainConfig().to_dict(), dataset="utkface", protocol="holdout",
                  fold="holdout", fold_index=0, data_digest="abc", split_digest="def", k=None)
    changed = dict(params, loss="ce", model="small_cnn", epochs=30, lr_schedule="cosine",
                   amp="bf16", channels_last=True)
    assert params_hash(params) == "5583d2a67f48"
    assert params_hash(changed) == "6f03b5aaabc9"
    new = train_module.identity_defaults()
    assert {"tta_flip", "backbone_lr_scale", "warmup_fraction"} <= set(new)
    for name, default in new.items():
        assert params_hash({**changed, name: default}) == "6f03b5aaabc9"
        without = {k: v for k, v in changed.items() if k != name}
        assert params_hash(without) == "6f03b5aaabc9"
    assert params_hash({**changed, "tta_flip": True}) != "6f03b5aaabc9"
    assert params_hash({**changed, "backbone_lr_scale": 0.1}) != "6f03b5aaabc9"
