"""The training loop: one model, one loss, one fold, top to bottom (after nanoGPT's ``train.py``).

:func:`train` takes a :class:`TrainConfig`, a dataset table and a :class:`~ageest.data.Fold`, and
returns the per-epoch history, the test predictions (full probability vectors) and the selected
epoch. It writes only checkpoints (``best.pt``, ``last.pt``, atomically) into ``ckpt_dir``; the
run directory files (``predictions.parquet``, ``history.csv``, ``metrics.json`` ...) are written
by :func:`ageest.engine.run.train_run` through :mod:`ageest.engine.store`.

Model selection
---------------
- ``"val_best"`` (default): the epoch with the best validation score (MAE of the expected age; the
  ε-error when every validation image has an apparent-age std, as CLAP2016's official script
  does). A fold without validation images falls back to the last epoch, and says so.
- ``"last"``: the last epoch.
- ``"test_best_epoch_official"``: the official code's behaviour, reproduced as a named option:
  the test split is evaluated after every epoch and the best test epoch is reported. This is
  selection on the test set; every output of such a run carries ``test_selected = True``.

In the clean modes the test split is read exactly once, after training, with the selected weights.

Distributed
-----------
The same code runs under ``torchrun --nproc_per_node N -m ageest.engine.run --params params.yaml
--out DIR``: :mod:`ageest.engine.distributed` initialises the process group, wraps the model in DDP
(with synchronised batch norm), a ``DistributedSampler`` splits each epoch and ``batch_size`` stays
the *global* batch. Every rank evaluates the full validation/test sets (so all ranks take the same
selection decision without communication); only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ageest.data.dataset import TRANSFORMS
from ageest.engine import distributed as dist
from ageest.engine.models import CPU_AUTO, OWN_NORMALIZATION
from ageest.errors import UserError
from ageest.files import atomic_write_bytes
from ageest.losses import WEIGHT_SETTINGS, loss_weights, weight_default
from ageest.official import OFFICIAL_SELECTION, SELECTIONS
from ageest.parameters import check_value, settings_of

OPTIMIZERS = ("adamw", "sgd")
#: what ``amp`` may be: ``auto`` (bf16 autocast + channels_last on a CPU that executes bf16
#: natively, fp32 otherwise: :func:`resolve_amp`), ``fp32`` (= None: no autocast), ``bf16``,
#: ``fp16`` (CUDA, with a gradient scaler)
AMP_MODES = ("auto", "fp32", "bf16", "fp16")


def native_bf16() -> bool:
    """Whether this CPU executes bf16 arithmetic in hardware (AMX tiles or AVX-512-BF16, as torch
    reports them) and torch's kernels may use it: ``ATEN_CPU_CAPABILITY=avx2`` or ``=default``
    (torch's capability below AVX512) means fp32. Without it bf16 is emulated and slower."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_amp(amp: str | None, device: str = "cpu", channels_last: bool = False,
                model: str | None = None) -> tuple[str | None, bool]:
    """The autocast mode and memory format a run really uses: ``(amp, channels_last)``.

    ``auto`` on a CPU trains the fastest way measured for the backbone
    (``benchmarks/bench_precision.py``): a backbone with its own CPU choice
    (:data:`ageest.engine.models.CPU_AUTO`: EfficientNet-Lite0, fp32 + channels_last, as its
    depthwise convolutions run slower in bf16) takes it; any other on a CPU with native bf16
    (:func:`native_bf16`) takes bf16 autocast with channels_last; elsewhere, and on CUDA (choose
    ``bf16`` or ``fp16`` there yourself), fp32 with the given memory format. ``fp32`` is
    ``None``. The losses and metrics stay in fp32 either way (the training loop casts the
    logits back before the loss).

    >>> resolve_amp("fp32")
    (None, False)
    >>> resolve_amp("bf16", channels_last=True)
    ('bf16', True)
    >>> resolve_amp("auto", "cpu", model="efficientnet_lite0")
    (None, True)
    """
    if amp in (None, "fp32"):
        return None, channels_last
    if amp != "auto":
        return amp, channels_last
    if torch.device(device).type == "cpu":
        if model in CPU_AUTO:
            return CPU_AUTO[model]
        if native_bf16():
            return "bf16", True
    return None, channels_last


#: what ``lr_schedule`` may be: torch's MultiStepLR stepped once after each epoch
#: (``multistep``: the stages last exactly the milestones), or the official scripts'
#: ``scheduler.step(epoch)`` after 0-based epoch ``epoch`` (``official``: the first stage is one
#: epoch longer, the last one shorter: 16/15/15/15/15/15/9 epochs for milestones 15..90 of 100)
#: ``cosine``: the learning rate of epoch e (1-based) of E is lr * (1 + cos(pi (e-1) / E)) / 2,
#: annealed once per epoch towards 0 (milestones and gamma unused)
#: ``onecycle``: per batch, torch's ``OneCycleLR`` (cosine warm-up from lr/25 to lr over the first
#: ``warmup_fraction`` of the steps, cosine annealing to lr/25e4 over the rest; no momentum cycle)
LR_SCHEDULES = ("multistep", "official", "cosine", "onecycle")
#: what ``select_metric`` may be; ``auto``: the ε-error when every image of the selection split
#: has a raters' std (official selection: the official ε, the number ``main_CLAP.py`` logs), else
#: the MAE (official selection: the rounded MAE that ``main_FGNET.py`` logs)
SELECT_METRICS = ("auto", "mae", "mae_rounded", "epsilon", "epsilon_official")
DTYPES = ("float32", "float64")
#: what ``face_crop`` may be: the whole photo, or a face cut from FG-NET's landmarks
FACE_CROPS = ("none", "landmarks")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and the batch."""


def _option(default: Any = dataclasses.MISSING, help: str = "", *, factory=None,
            choices: tuple | None = None, minimum: float | None = None,
            maximum: float | None = None, above: bool = False, grid: bool = True) -> Any:
    """A :class:`TrainConfig` field with its help text, choices and range: the one place they
    are written (:func:`ageest.parameters.settings_of` makes them the grid schema's keys, the
    ``ageest run`` flags and the one check, :func:`ageest.parameters.check_value`)."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "above": above,
            "grid": grid}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that decides how one model is trained (one run = this + data + fold + seed).

    Each field's meaning, choices and range are in its metadata (``dataclasses.fields``); they
    are what ``ageest run --help`` prints. See the module docstring for ``selection``.
    """

    model: str = _option("small_cnn", "backbone: a name of ageest.engine.models.list_models() "
                         "(small_cnn, efficientnet_lite0, resnet18, resnet50, vgg16)")
    pretrained: bool = _option(False, "ImageNet weights: torchvision's from the local torch hub "
                               "cache, efficientnet_lite0's from its installed package (never "
                               "downloaded)")
    init_from: str = _option("", "a finished run (its folder, or its checkpoints/best.pt) "
                             "whose weights start this one: its backbone, and its age head's "
                             "rows for the ages both runs cover (the others start fresh); the "
                             "same model. An age-pretraining stage (as DEX pretrains on "
                             "IMDB-WIKI): a clean-protocol option, recorded with the file's "
                             "SHA-256. '' = the model's own start")
    loss: str = _option("amr", "a name of ageest.losses.list_losses()", grid=False)
    loss_kwargs: dict[str, Any] = _option(
        help='extra loss arguments beside the weights; in a grid, per loss: {"amr": {"eps": '
             '0.001}} (JSON on the command line); start_age/end_age are added', factory=dict)
    lambda_mean: float = _option(weight_default("lambda_mean"), "λ1, weight of the mean term "
                                 "(amr, mean_residue, mean_variance; official: 0.2)", minimum=0.0)
    lambda_residue: float = _option(weight_default("lambda_residue"), "λ2 of amr and "
                                    "mean_residue, weight of the residue term (official: 0.05)",
                                    minimum=0.0)
    lambda_variance: float = _option(weight_default("lambda_variance"), "λ2 of mean_variance, "
                                     "weight of the variance term (its paper: 0.05)",
                                     minimum=0.0)
    optimizer: str = _option("adamw", "adamw (official FG-NET script) or sgd with momentum "
                             "(official CLAP2016 script)", choices=OPTIMIZERS)
    lr: float = _option(1e-3, "learning rate", minimum=0.0, above=True)
    momentum: float = _option(0.9, "SGD momentum", minimum=0.0, maximum=1.0)
    weight_decay: float | None = _option(None, "default: 0.01 for AdamW (torch's default, the "
                                         "FG-NET script's), 1e-4 for SGD", minimum=0.0)
    milestones: list[int] = _option(help="epochs at which lr is multiplied by gamma, e.g. "
                                    "15,30,45,60,75,90 (the paper's)", factory=list, minimum=0)
    gamma: float = _option(0.1, "lr factor at each milestone", minimum=0.0)
    epochs: int = _option(10, "training epochs", minimum=1)
    batch_size: int = _option(32, "global batch (split over ranks under torchrun)", minimum=1)
    grad_clip: float | None = _option(None, "clip the global gradient norm to this value "
                                      "(CLAP2016 script: 5); none: no clipping", minimum=0.0,
                                      above=True)
    device: str = _option("cpu", "cpu, cuda, cuda:1")
    amp: str = _option("fp32", "autocast: auto (bf16 + channels_last where the CPU "
                              "executes bf16 natively, else fp32; fp32 on CUDA), fp32, bf16, fp16 "
                              "(CUDA, with a gradient scaler); a run records what auto resolved "
                              "to", choices=AMP_MODES)
    channels_last: bool = _option(False, "NHWC memory format (faster convolutions on recent "
                                  "GPUs and oneDNN)")
    num_workers: int = _option(0, "DataLoader worker processes per run (0: load in the "
                               "training process; each worker is seeded)", minimum=0)
    seed: int = _option(0, "seeds the run (seed_everything) and its DataLoader generator",
                        grid=False)
    selection: str = _option("val_best", f"val_best, last or {OFFICIAL_SELECTION} (see "
                             "ageest.engine.train)", choices=SELECTIONS, grid=False)
    select_metric: str = _option(
        "auto", "score that picks the epoch (auto: epsilon when every image has a raters' std, "
        "else mae; official selection: the official code's rounded MAE / epsilon)",
        choices=SELECT_METRICS)
    lr_schedule: str = _option("multistep", "multistep: torch's stages; official: "
                               "scheduler.step(epoch) as the official scripts; cosine: annealed "
                               "per epoch from lr towards 0; onecycle: per batch, warm-up then "
                               "cosine annealing (torch's OneCycleLR)",
                               choices=LR_SCHEDULES)
    warmup_fraction: float = _option(0.3, "onecycle: share of the training steps spent warming "
                                     "up (torch's pct_start)", minimum=0.0, maximum=1.0,
                                     above=True)
    backbone_lr_scale: float = _option(1.0, "learning rate of everything but the age head, as a "
                                       "fraction of lr (a pretrained backbone: e.g. 0.1; 0 "
                                       "freezes it); the head trains at lr", minimum=0.0,
                                       maximum=1.0)
    dtype: str = _option("float32", "parameter and activation dtype (float64: equivalence "
                         "tests that must agree to ~1e-12 on any CPU)", choices=DTYPES)
    transforms: str = _option("light", "augmentation family of ageest.data.build_transforms",
                              choices=TRANSFORMS)
    augment: bool = _option(True, "random training augmentation; False trains on the "
                            "evaluation transform", grid=False)
    image_size: int = _option(64, "network input side (px)", minimum=8)
    normalize: bool = _option(False, "ImageNet mean/std normalisation of the inputs (a model "
                              "that normalises its inputs itself, efficientnet_lite0, refuses it)")
    face_crop: str = _option("none", "none: the whole photo (the official code's); landmarks: "
                             "the square around FG-NET's 68 landmarks (its points/ folder) "
                             "times face_margin, before resizing (a clean-protocol option)",
                             choices=FACE_CROPS)
    face_margin: float = _option(1.4, "face_crop landmarks: the crop's side over the landmarks' "
                                 "larger extent", minimum=1.0)
    tta_flip: bool = _option(False, "test-time flip averaging: every evaluation (validation, "
                             "test, ageest predict) averages the softmax of the image and of its "
                             "mirror image; the stored predictions are the averaged ones")
    eval_batch_size: int | None = _option(None, "batch size of evaluation passes (default: "
                                          "2 x batch_size)", minimum=1)
    threads: int | None = _option(None, "torch threads per run (default: cores / workers); "
                                  "with ray, CPUs per run", minimum=1, grid=False)
    quiet: bool = _option(False, "no per-batch progress bars", grid=False)

    def __post_init__(self) -> None:
        # every field against its own declaration (the grid's check, one function); what
        # follows are the rules between fields
        for setting in _settings():
            setattr(self, setting.name,
                    check_value(setting, getattr(self, setting.name), "TrainConfig"))
        if self.dtype == "float64" and self.amp not in (None, "fp32", "auto"):
            raise ValueError("dtype='float64' cannot be combined with amp; set amp to fp32")
        if self.dtype == "float64":
            self.amp = None  # float64 equivalence runs never autocast
        if self.normalize and self.model in OWN_NORMALIZATION:
            raise ValueError(f"normalize=True with model {self.model}: the model normalises its "
                             "inputs itself (its weights' preprocessing), so they would be "
                             "normalised twice; set normalize: false")
        self.amp, self.channels_last = resolve_amp(self.amp, self.device, self.channels_last,
                                                   self.model)
        self.milestones = sorted(self.milestones)
        self.loss_kwargs = dict(self.loss_kwargs or {})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, raising ``ValueError`` naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the fields every run identity has hashed since identities were first written (ageest 0.x):
#: they stay in the hash whatever their value, so those identities keep their values. A field
#: added since is part of a run's identity only where it differs from its default
#: (:func:`identity_defaults`, :func:`ageest.engine.run.params_hash`), so adding a setting leaves
#: every finished run valid.
PINNED_IDENTITY_FIELDS = frozenset({
    "model", "pretrained", "loss", "loss_kwargs", "lambda_mean", "lambda_residue",
    "lambda_variance", "optimizer", "lr", "momentum", "weight_decay", "milestones", "gamma",
    "epochs", "batch_size", "grad_clip", "device", "amp", "channels_last", "num_workers", "seed",
    "selection", "select_metric", "lr_schedule", "dtype", "transforms", "augment", "image_size",
    "normalize", "eval_batch_size", "threads", "quiet"})


def identity_defaults() -> dict[str, Any]:
    """The settings left out of a run's identity while they hold their default: every
    :class:`TrainConfig` field added after :data:`PINNED_IDENTITY_FIELDS`, with its default."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)
            if f.name not in PINNED_IDENTITY_FIELDS}


@functools.cache
def _settings() -> tuple:
    """:class:`TrainConfig`'s fields as :class:`ageest.parameters.Setting` (built once)."""
    return tuple(settings_of(dataclasses.fields(TrainConfig)))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``predictions`` has one row per test image: the table columns ``image_id``, ``subject``,
    ``age``, ``age_mean``, ``std``, plus ``expected_age`` and ``probs`` ((C,) float32 arrays).
    """

    history: pd.DataFrame
    predictions: pd.DataFrame
    best_epoch: int
    selected_by: str
    test_selected: bool
    wall_time_s: float
    resumed_from_epoch: int | None = None
    numerics: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] | None = None  # what init_from loaded (file, SHA-256, source run)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device). Call once per run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive numpy/random seeds from the worker's torch seed (itself
    drawn from the loader's generator), so augmentation in workers is reproducible."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` through a temporary file and a rename: a killed run never leaves a
    truncated checkpoint under the final name."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


class CheckpointError(UserError, RuntimeError):
    """A file that is not a checkpoint this kit wrote; the message names it and the fix."""


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", *,
                    fix: str = "delete it to retrain") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors only: ``weights_only``).

    The one reader of checkpoints (training's resume, ``ageest predict`` and ``export``): a
    git-lfs pointer, an empty or truncated file, or a pickle that carries code is refused with a
    :class:`CheckpointError` naming the file and ``fix``. Nothing is executed, and torch's advice
    to load with ``weights_only=False`` (which would run that code) is never passed on.
    """
    import pickle

    from ageest.data.integrity import GIT_LFS_HEADER

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(len(GIT_LFS_HEADER))
    if head.startswith(GIT_LFS_HEADER):
        raise CheckpointError(f"{path}: a git-lfs pointer, not the weights; fetch them with "
                              "`git lfs pull` (or copy the real file)")
    if not head:
        raise CheckpointError(f"{path}: empty file; {fix}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(
                f"{path}: not a checkpoint this kit wrote: it holds Python objects whose code "
                "would run when loaded, and ageest does not execute it; use checkpoints "
                f"written by ageest (a run's checkpoints/best.pt), or {fix}") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(exc)}); {fix}"
                              ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zip errors ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{_first_line(exc)}); the file is truncated or not a torch "
                              f"checkpoint: {fix}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def precision_label(amp: str | None, channels_last: bool, asked: str | None = None) -> str:
    """How a run computes, for progress lines: ``bf16 autocast + channels_last (amp auto)``.

    >>> precision_label(None, False, "auto")
    'fp32 (amp auto)'
    """
    text = f"{amp} autocast" if amp else "fp32"
    text += " + channels_last" if channels_last else ""
    return text + (f" (amp {asked})" if asked not in (None, amp, "fp32") else "")


def eval_amp(amp: str | None, device: str) -> str | None:
    """The autocast of evaluation passes (validation, test, ``ageest predict``): the run's on
    CUDA; none on a CPU, where a forward pass is cheap beside training and fp32 scores keep the
    selected epoch and the stored predictions independent of the CPU's bf16 support."""
    return amp if torch.device(device).type == "cuda" else None


def _autocast(device: str, amp: str | None):
    if amp is None:
        return torch.autocast(device_type=torch.device(device).type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, loader, device: str, *, amp: str | None = None,
                  channels_last: bool = False, dtype: torch.dtype = torch.float32,
                  flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities of every item of ``loader`` in eval mode; ``flip``: the mean of
    the image's and its mirror image's softmax (test-time flip averaging, ``tta_flip``).

    Returns ``(probs, index)``: (N, C) in ``dtype`` (float32 under autocast) and the items' row
    positions (N,).
    """
    was_training = model.training
    model.eval()
    probs, index = [], []
    for x, _, idx in loader:
        x = x.to(device, dtype=dtype, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)  # (B, C)
            mirrored = model(torch.flip(x, dims=[3])) if flip else None  # width is dim 3
        p = torch.softmax(logits.to(dtype), dim=1)
        if mirrored is not None:
            p = (p + torch.softmax(mirrored.to(dtype), dim=1)) / 2
        probs.append(p.cpu())
        index.append(torch.as_tensor(idx))
    model.train(was_training)
    if not probs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(probs).numpy(), torch.cat(index).numpy()


def _score(probs: np.ndarray, table: pd.DataFrame, start_age: int) -> dict[str, float]:
    """The selection scores of ``probs`` against ``table`` (rows aligned): ``mae`` (expected
    age), ``mae_rounded`` (the official readout) and, when any image has a raters' std,
    ``epsilon`` (σ = 0 images at the formula's limit) and ``epsilon_official``."""
    from ageest import metrics

    if len(table) == 0:
        return {"mae": float("nan"), "mae_rounded": float("nan")}
    std = pd.to_numeric(table["std"], errors="coerce").to_numpy(dtype=np.float64)
    scores = metrics.score_summary(metrics.expected_age(probs, start_age=start_age),
                                   table["age_mean"].to_numpy(dtype=np.float64), std)
    return {k: scores[k] for k in ("mae", "mae_rounded", "epsilon", "epsilon_official")
            if k in scores}


def resolve_select_metric(select_metric: str, table: pd.DataFrame | None, *,
                          official: bool) -> str:
    """The concrete score behind ``select_metric`` for a selection split (see
    :data:`SELECT_METRICS`); an ε metric on a split without raters' std is an error."""
    has_std = table is not None and len(table) > 0 and bool(np.isfinite(
        pd.to_numeric(table["std"], errors="coerce").to_numpy(dtype=np.float64)).all())
    if select_metric == "auto":
        if has_std:
            return "epsilon_official" if official else "epsilon"
        return "mae_rounded" if official else "mae"
    if select_metric.startswith("epsilon") and table is not None and not has_std:
        raise ValueError(f"select_metric={select_metric!r} needs a raters' std for every image "
                         "of the selection split; this dataset has none: use mae or auto")
    return select_metric


def epoch_lr(config: TrainConfig, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The learning rate of batch ``step`` of ``steps`` in epoch ``epoch`` (1-based) under
    ``config.lr_schedule``; every schedule but ``onecycle`` keeps one rate for a whole epoch.
    (The age head's rate; the rest of the model trains at ``backbone_lr_scale`` times it.)

    >>> cfg = TrainConfig(milestones=[15, 30, 45, 60, 75, 90], epochs=100)
    >>> [sum(epoch_lr(cfg, e) == lr for e in range(1, 101)) for lr in (1e-3, 1e-4)]
    [15, 15]
    >>> cfg.lr_schedule = "official"
    >>> import itertools
    >>> [len(list(g)) for _, g in itertools.groupby(epoch_lr(cfg, e) for e in range(1, 101))]
    [16, 15, 15, 15, 15, 15, 9]
    >>> cfg = TrainConfig(lr_schedule="cosine", lr=1e-3, epochs=4)
    >>> [round(epoch_lr(cfg, e), 6) for e in range(1, 5)]
    [0.001, 0.000854, 0.0005, 0.000146]
    >>> cfg = TrainConfig(lr_schedule="onecycle", lr=1e-3, epochs=2, warmup_fraction=0.5)
    >>> [round(epoch_lr(cfg, e, i, 3), 7) for e in (1, 2) for i in range(3)]
    [4e-05, 0.00052, 0.001, 0.00075, 0.00025, 0.0]
    """
    import bisect

    if config.lr_schedule == "onecycle":
        return onecycle_lr(float(config.lr), float(config.warmup_fraction),
                           (epoch - 1) * steps + step, config.epochs * steps)
    if config.lr_schedule == "cosine":
        return float(config.lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config.epochs))
    if config.lr_schedule == "multistep":  # torch: sched.step() after each epoch
        stage = bisect.bisect_right(config.milestones, epoch - 1)
    else:  # scheduler.step(e) after 0-based epoch e: epoch e+1 trains at stage(e)
        stage = bisect.bisect_right(config.milestones, epoch - 2) if epoch >= 2 else 0
    return float(config.lr) * float(config.gamma) ** stage


def onecycle_lr(max_lr: float, warmup_fraction: float, step: int, total: int) -> float:
    """torch's ``OneCycleLR`` (two phases, cosine annealing, ``div_factor`` 25,
    ``final_div_factor`` 1e4) at 0-based ``step`` of ``total``, as a function of the step, so a
    resumed run continues on the same curve (a test compares it with torch's scheduler)."""
    initial, peak = max_lr / 25.0, max_lr
    final = initial / 1e4
    warm_end = float(warmup_fraction * total) - 1
    if step <= warm_end:
        start, end, pct = initial, peak, step / warm_end if warm_end > 0 else 1.0
    else:
        start, end, pct = peak, final, (step - warm_end) / (total - 1 - warm_end)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The head's rate ``lr``; each parameter group scales it by its ``lr_scale``."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _state_is_finite(state: dict[str, torch.Tensor]) -> bool:
    """Every floating parameter and buffer of a state dict is finite (BatchNorm running
    variances included: a diverged run leaves them infinite while its loss still reads finite)."""
    return all(bool(torch.isfinite(t).all()) for t in state.values()
               if torch.is_tensor(t) and t.is_floating_point())


def _prepare_table(df: pd.DataFrame) -> pd.DataFrame:
    """The dataset table with the columns the trainer reads, filling optional ones."""
    missing = [c for c in ("path", "age") if c not in df.columns]
    if missing:
        raise ValueError(f"dataset table lacks column(s) {missing}; see ageest.data.loaders")
    table = df.reset_index(drop=True).copy()
    if "age_mean" not in table:
        table["age_mean"] = table["age"].astype(float)
    for col in ("subject", "std", "image_id"):
        if col not in table:
            table[col] = pd.NA if col != "image_id" else table.index.astype(str)
    return table


def _nonfinite_message(what: str, epoch: int, batch: int, cfg: TrainConfig,
                       last_path: Path | None) -> str:
    kept = (f"the last good checkpoint is {last_path}" if last_path is not None
            and last_path.is_file() else "no checkpoint was written before it")
    return (f"non-finite {what} at epoch {epoch}, batch {batch} (loss {cfg.loss}, lr "
            f"{epoch_lr(cfg, epoch):g}); {kept}. Lower the learning rate or set grad_clip.")


@dataclass
class _Data:
    """The fold's tables and loaders (uint8 caches decoded once; the test set built on demand)."""

    table: pd.DataFrame
    rows: dict[str, np.ndarray]  # "train" / "val" / "test" -> row positions in ``table``
    sampler: Any
    generator: torch.Generator
    train_dl: Any
    val_dl: Any
    std: torch.Tensor | None  # (N_train,) raters' std for losses that use it, else None
    make_loader: Any  # split name -> evaluation DataLoader of that split


@dataclass
class _Selection:
    """Which split and score choose the epoch, and how the outputs name that choice."""

    loader: Any  # None: the last epoch
    split: str | None  # "val" or "test"
    key: str  # the score, e.g. "mae"
    selected_by: str


@dataclass
class _State:
    """What a checkpoint carries across epochs (and across a resume)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, Any] | None = None
    start_epoch: int = 1
    resumed_from: int | None = None


def cuda_numerics(official: bool) -> dict[str, bool]:
    """Set and return the CUDA numerics of a run. Official-protocol runs do what the official
    scripts did (``main_FGNET.py``: ``cudnn.deterministic = True``, ``cudnn.benchmark =
    False``) and turn TF32 off for matmuls and convolutions: TF32 arrived in PyTorch 1.7 (on by
    default until 1.11) but needs CUDA 11 and an Ampere GPU, and the official environment
    (PyTorch 1.7 with CUDA 10.1) could not use it. Clean runs keep torch's defaults (recorded
    as they are). The flags are process-wide: :func:`train` restores them when the run ends
    (:func:`numerics_scope`), so the official settings never reach the next run of a worker."""
    if official:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return {"cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}


@contextlib.contextmanager
def numerics_scope():
    """Restore the process-wide cuDNN and TF32 flags on exit, whatever a run set inside."""
    flags = ((torch.backends.cudnn, "deterministic"), (torch.backends.cudnn, "benchmark"),
             (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"))
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        yield
    finally:
        for (owner, name), value in zip(flags, saved, strict=True):
            setattr(owner, name, value)


def _setup_process(cfg: TrainConfig) -> tuple[str, int, bool]:
    """Threads, the process group (under torchrun) and this rank's device; seeds this rank."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = dist.init(cfg.device)
    if dist.is_distributed() and device == "cuda":  # initialised earlier: this rank's GPU
        device = f"cuda:{torch.cuda.current_device()}"
    world = dist.world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of "
                         f"processes ({world})")
    seed_everything(cfg.seed + dist.rank())  # per-rank augmentation streams; weights broadcast by DDP
    if torch.device(device).type == "cuda":
        cuda_numerics(official=cfg.selection == OFFICIAL_SELECTION)
    return device, world, dist.is_main_process()


def numerics(cfg: TrainConfig, device: str) -> dict[str, Any]:
    """How a run computed, for its ``metrics.json``: precision, memory format and, on CUDA,
    the cuDNN and TF32 settings (:func:`cuda_numerics`)."""
    out: dict[str, Any] = {"amp": cfg.amp or "fp32", "channels_last": bool(cfg.channels_last),
                           "dtype": cfg.dtype, "tta_flip": bool(cfg.tta_flip)}
    if torch.device(device).type == "cuda":
        out.update(cuda_numerics(official=False))  # reads what _setup_process set
    return out


def _face_boxes(cfg: TrainConfig, part: pd.DataFrame) -> list | None:
    """Each image's crop under ``face_crop`` (None: whole photos); ``landmarks`` needs every
    image's landmark extent, which the FG-NET loader reads from the release's points/ folder."""
    if cfg.face_crop == "none":
        return None
    from ageest.data.dataset import face_box
    from ageest.data.loaders import LANDMARK_COLUMNS

    if not set(LANDMARK_COLUMNS) <= set(part.columns):
        raise ValueError("face_crop landmarks: these images have no landmarks; it needs the "
                         "FG-NET release's points/ folder beside images/ (ageest fetch fgnet)")
    extents = part[list(LANDMARK_COLUMNS)].to_numpy(dtype=np.float64)
    lacking = part.loc[~np.isfinite(extents).all(axis=1), "path"].tolist()
    if lacking:
        raise ValueError(f"face_crop landmarks: {len(lacking)} image(s) have no landmark file, "
                         f"e.g. {lacking[0]}; the release has one per photo in points/")
    return [face_box(tuple(e), cfg.face_margin) for e in extents]


def _make_data(cfg: TrainConfig, df: pd.DataFrame, fold, start_age: int, device: str,
               world: int) -> _Data:
    """Datasets and loaders of one fold. The sampler is a seeded ``DistributedSampler`` for any
    number of processes (one included): rank r of W reads every W-th index of one permutation per
    epoch, so the ranks' batches together are the one-process batch."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from ageest.data import AgeDataset, build_transforms, cache_spec

    table = _prepare_table(df)
    rows = {name: np.asarray(part, dtype=np.int64)
            for name, part in (("train", fold.train), ("val", fold.val), ("test", fold.test))}
    if len(rows["train"]) == 0:
        raise ValueError(f"fold {fold.fold_id!r} has no training images")

    def dataset(split: str) -> AgeDataset:
        augment = split == "train" and cfg.augment
        tf = build_transforms(cfg.transforms, train=augment, size=cfg.image_size,
                              normalize=cfg.normalize)
        side, fit = cache_spec(cfg.transforms, size=cfg.image_size, train=augment)
        part = table.iloc[rows[split]]
        return AgeDataset(part, start_age=start_age, transform=tf, size=side, fit=fit,
                          boxes=_face_boxes(cfg, part)).preload()

    pin = device.startswith("cuda")

    def make_loader(split: str) -> DataLoader:
        return DataLoader(dataset(split), batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
                          shuffle=False, num_workers=0, pin_memory=pin)

    train_ds = dataset("train")
    val_dl = make_loader("val") if len(rows["val"]) else None
    train_std = pd.to_numeric(table.iloc[rows["train"]]["std"], errors="coerce").to_numpy(
        dtype=np.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=dist.rank(), shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size // world, shuffle=False,
                          sampler=sampler, generator=gen, drop_last=False,
                          num_workers=cfg.num_workers, pin_memory=pin,
                          worker_init_fn=_seed_worker if cfg.num_workers else None,
                          persistent_workers=cfg.num_workers > 0)
    return _Data(table, rows, sampler, gen, train_dl, val_dl,
                 torch.from_numpy(train_std) if np.isfinite(train_std).all() else None,
                 make_loader)


def _make_model(cfg: TrainConfig, num_classes: int, device: str,
                dtype: torch.dtype) -> torch.nn.Module:
    """The backbone on ``device`` in ``dtype`` (NHWC when asked), DDP-wrapped under torchrun."""
    from ageest.engine.models import get_model

    model = get_model(cfg.model, num_classes, pretrained=cfg.pretrained).to(device, dtype)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return dist.wrap_model(model, device)


def resolve_init(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``init_from``'s checkpoint and the parameters of the run that wrote it: ``path`` is a
    run folder (``params.yaml`` and ``checkpoints/best.pt``) or a checkpoint file inside one.
    One line naming the path and the fix when it is neither."""
    from ageest.engine import store

    path = Path(path).expanduser()
    if path.is_dir():
        run_dir, ckpt = path, path / store.CHECKPOINTS / "best.pt"
    else:
        run_dir, ckpt = path.parent.parent, path
    if not (run_dir / store.PARAMS).is_file() or not ckpt.is_file():
        raise InitError(f"init_from {path}: not a finished run's folder or checkpoint (needs "
                        f"{store.PARAMS} and {store.CHECKPOINTS}/best.pt); give the fold folder "
                        "of a run trained with keep_checkpoints best")
    if not store.is_finished(run_dir):
        raise InitError(f"init_from {path}: the run has not finished; train it first")
    return ckpt.resolve(), store.read_params(run_dir)


class InitError(UserError, ValueError):
    """``init_from`` names no usable run, or one that does not fit this run."""


def init_from_run(model: torch.nn.Module, cfg: TrainConfig, start_age: int, end_age: int,
                  sha256: str | None = None) -> dict[str, Any]:
    """Load ``cfg.init_from``'s weights into ``model`` (a fresh model of this run): every
    tensor but the age head as trained there, and the head's rows of the ages both runs cover
    (a UTKFace 0-116 head gives an FG-NET 0-69 run its rows 0-69); rows of other ages keep
    their fresh start. ``sha256`` (the grid's record) must match the file. Returns what was
    loaded: file, SHA-256, source run and ages, head rows copied."""
    from ageest.engine.models import head
    from ageest.files import file_sha256

    ckpt, src = resolve_init(cfg.init_from)
    digest = file_sha256(ckpt)
    if sha256 is not None and digest != sha256:
        raise InitError(f"init_from {ckpt}: the file changed since the grid recorded it "
                        f"(SHA-256 {digest[:12]}, recorded {sha256[:12]}); rerun the grid")
    if src.get("model") != cfg.model:
        raise InitError(f"init_from {ckpt}: a {src.get('model')} run; this run trains "
                        f"{cfg.model}: pretrain the same model")
    state = load_checkpoint(ckpt, fix="retrain the run it names")["model"]
    target = getattr(model, "module", model)
    head_module = head(target)
    prefix = next(name for name, m in target.named_modules() if m is head_module)
    own = target.state_dict()
    s_start, s_end = int(src["start_age"]), int(src["end_age"])
    lo, hi = max(start_age, s_start), min(end_age, s_end)
    rows = 0
    for key, value in own.items():
        if key not in state:
            raise InitError(f"init_from {ckpt}: no tensor {key}; the checkpoint comes from "
                            "another ageest version")
        if key.startswith(prefix + "."):  # the head: rows of the shared ages
            if lo <= hi:
                src_rows = state[key][lo - s_start: hi - s_start + 1]
                value[lo - start_age: hi - start_age + 1] = src_rows.to(value.dtype)
                rows = hi - lo + 1
        elif state[key].shape != value.shape:
            raise InitError(f"init_from {ckpt}: {key} has shape {tuple(state[key].shape)}, "
                            f"this model {tuple(value.shape)}")
        else:
            value.copy_(state[key])
    target.load_state_dict(own)
    return {"file": str(ckpt), "sha256": digest, "run": src.get("params_hash"),
            "dataset": src.get("dataset"), "ages": [s_start, s_end], "head_rows_copied": rows}


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (weight decay 0.01 unless set) or SGD with momentum (1e-4 unless set). With
    ``backbone_lr_scale`` below 1, two parameter groups: the age head at lr, the rest at
    lr x scale (their ``lr_scale``, applied by :func:`_set_lr`; 0 leaves the backbone out)."""
    from ageest.engine.models import head

    wd = cfg.weight_decay if cfg.weight_decay is not None else (
        0.01 if cfg.optimizer == "adamw" else 1e-4)
    params: Any = model.parameters()
    if cfg.backbone_lr_scale != 1.0:
        head_ids = {id(p) for p in head(model).parameters()}
        rest = [p for p in model.parameters() if id(p) not in head_ids]
        params = [{"params": [p for p in model.parameters() if id(p) in head_ids],
                   "lr_scale": 1.0}]
        if cfg.backbone_lr_scale > 0:
            params.append({"params": rest, "lr_scale": float(cfg.backbone_lr_scale)})
        else:  # frozen: no gradients, no updates (batch-norm statistics still adapt)
            for p in rest:
                p.requires_grad_(False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)


def _make_selection(cfg: TrainConfig, data: _Data) -> _Selection:
    """Selection on validation (clean), on test (official, labelled) or none (the last epoch)."""
    if cfg.selection == OFFICIAL_SELECTION:
        loader, split, by = data.make_loader("test"), "test", "test (official: best test epoch)"
    elif cfg.selection == "val_best" and data.val_dl is not None:
        loader, split, by = data.val_dl, "val", "validation"
    else:
        loader, split = None, None
        by = "last epoch" + (" (no validation images)" if cfg.selection == "val_best" else "")
    table = data.table.iloc[data.rows[split]] if split else None
    key = resolve_select_metric(cfg.select_metric, table,
                                official=cfg.selection == OFFICIAL_SELECTION)
    return _Selection(loader, split, key, by + (f" {key}" if loader is not None else ""))


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another run (its stored run identity differs)."""


def check_run_id(path: str | os.PathLike, state: dict[str, Any], run_id: str | None) -> None:
    """Refuse a checkpoint whose stored run identity (the run's parameter hash) is not
    ``run_id`` (a copy from another run's folder); checkpoints without one (older versions) and
    a ``run_id`` of None are not checked."""
    stored = state.get("run_id")
    if run_id is not None and stored is not None and str(stored) != str(run_id):
        raise CheckpointMismatchError(
            f"{path}: written by run {stored}, not by this run ({run_id}); it was copied from "
            "another run folder: delete it (and the folder's other checkpoints) to retrain, or "
            "use that run's own folder")


def _resume(ckpt_dir: Path | None, device: str, model: torch.nn.Module, opt, scaler,
            gen: torch.Generator, run_id: str | None = None) -> _State:
    """Continue from ``last.pt`` (weights, optimizer, scaler, RNG, history) when it is there and
    agrees with ``best.pt``; else a fresh state. A checkpoint of another run is refused."""
    state = _State()
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    ck = load_checkpoint(last_path, device) if last_path and last_path.is_file() else None
    if ck is not None:
        check_run_id(last_path, ck, run_id)
    if ck is not None and int(ck["best_epoch"]) > 0:
        best_path = ckpt_dir / "best.pt"
        best_ck = load_checkpoint(best_path, device) if best_path.is_file() else None
        if best_ck is not None:
            check_run_id(best_path, best_ck, run_id)
        if best_ck is None or int(best_ck["epoch"]) != int(ck["best_epoch"]):
            # killed between writing best.pt and last.pt: the pair disagrees, start over
            warnings.warn(f"{ckpt_dir}: best.pt and last.pt disagree on the best epoch; "
                          "restarting this run from scratch", stacklevel=3)
            ck = None
        else:
            state.best_state = best_ck["model"]
    if ck is None:
        return state
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    scaler.load_state_dict(ck["scaler"])
    gen.set_state(ck["loader_generator"])
    torch.set_rng_state(ck["torch_rng"])
    # the history travels as one float tensor; its integer and flag columns come back as such
    state.history = [{k: (int(v) if k == "epoch" else bool(v) if k == "selected" else v)
                      for k, v in zip(ck["history_columns"], row, strict=True)}
                     for row in ck["history_values"].tolist()]
    state.best_score, state.best_epoch = float(ck["best_score"]), int(ck["best_epoch"])
    state.start_epoch = state.resumed_from = int(ck["epoch"]) + 1
    return state


def _train_epoch(cfg: TrainConfig, epoch: int, model, loss_fn, opt, scaler, data: _Data,
                 device: str, dtype: torch.dtype, ages_axis: torch.Tensor,
                 last_path: Path | None) -> dict[str, float]:
    """One pass over the training loader; returns this rank's sums: ``n``, ``abs_err`` (of the
    expected age) and each loss component (batch-size weighted)."""
    sums: dict[str, float] = {"n": 0.0, "abs_err": 0.0}
    batches = data.train_dl
    if not cfg.quiet and dist.is_main_process():
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, file=sys.stderr)
    per_batch = cfg.lr_schedule == "onecycle"
    for it, (x, ages, idx) in enumerate(batches):
        if per_batch:
            _set_lr(opt, epoch_lr(cfg, epoch, it, len(data.train_dl)))
        x = x.to(device, dtype=dtype, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ages = ages.to(device, non_blocking=True)
        std = data.std[idx].to(device, dtype) if data.std is not None else None
        with _autocast(device, cfg.amp):
            logits = model(x)  # (B, C)
        try:
            loss = loss_fn(logits.to(dtype), ages, std=std)
        except ValueError as exc:  # the losses reject non-finite logits themselves
            if bool(torch.isfinite(logits).all()):
                raise
            raise NonFiniteLossError(_nonfinite_message(
                "model output (logits)", epoch, it, cfg, last_path)) from exc
        comps = loss_fn.last_components  # floats, one host sync per batch
        total = comps["total"] if "total" in comps else float(loss.detach())
        if not math.isfinite(total):
            raise NonFiniteLossError(_nonfinite_message(
                f"training loss ({total})", epoch, it, cfg, last_path))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        b = x.shape[0]
        for k, v in comps.items():
            sums[f"c:{k}"] = sums.get(f"c:{k}", 0.0) + v * b
        with torch.no_grad():
            m = torch.softmax(logits.detach().to(dtype), dim=1) @ ages_axis  # (B,)
            sums["abs_err"] += float((m - ages.float()).abs().sum())
        sums["n"] += b
    return sums


def _epoch_row(epoch: int, lr: float, sums: dict[str, float]) -> tuple[dict[str, Any], float]:
    """The history row of the training part (sums over ranks divided by the image count), and
    that count."""
    names = sorted(k[2:] for k in sums if k.startswith("c:"))
    totals = dist.all_reduce_sum(torch.tensor(
        [sums["n"], sums["abs_err"]] + [sums[f"c:{k}"] for k in names], dtype=torch.float64))
    n_total = float(totals[0])
    row: dict[str, Any] = {"epoch": epoch, "lr": lr}  # the rate this epoch trained with
    row.update({f"train_{k}": float(v) / n_total for k, v in zip(names, totals[2:],
                                                                 strict=True)})
    row["train_mae"] = float(totals[1]) / n_total
    return row, n_total


def _evaluate(cfg: TrainConfig, model, data: _Data, sel: _Selection, row: dict[str, Any],
              device: str, dtype: torch.dtype, start_age: int, epoch: int) -> float:
    """Score the epoch on validation (and on test under the official selection) into ``row``;
    return the selection score (lower is better; ``-epoch`` when the last epoch is taken).
    Evaluation runs on the unwrapped model: no DDP collectives, the same result on every rank."""
    kw = {"amp": eval_amp(cfg.amp, device), "channels_last": cfg.channels_last, "dtype": dtype,
          "flip": cfg.tta_flip}
    if data.val_dl is not None:
        probs, _ = predict_probs(model, data.val_dl, device, **kw)
        table = data.table.iloc[data.rows["val"]]
        row.update({f"val_{k}": v for k, v in _score(probs, table, start_age).items()})
    if sel.split == "test":
        probs, _ = predict_probs(model, sel.loader, device, **kw)
        table = data.table.iloc[data.rows["test"]]
        row.update({f"test_{k}": v for k, v in _score(probs, table, start_age).items()})
    if sel.loader is None:
        return -float(epoch)  # "last": every epoch beats the previous one
    return row[f"{sel.split}_{sel.key}"]


def _select_and_save(cfg: TrainConfig, epoch: int, score: float, row: dict[str, Any],
                     state: _State, model, opt, scaler, data: _Data,
                     ckpt_dir: Path | None, run_id: str | None = None) -> None:
    """Keep the epoch when it is the best so far (a non-finite score or loss never is), append
    its row, and write ``best.pt`` / ``last.pt`` on rank 0."""
    is_main = dist.is_main_process()
    if math.isfinite(score) and math.isfinite(row.get("train_total", 0.0)) \
            and score < state.best_score:
        state.best_score, state.best_epoch = score, epoch
        state.best_state = copy.deepcopy(model.state_dict())
        if is_main and ckpt_dir is not None:
            save_checkpoint(ckpt_dir / "best.pt", {"model": state.best_state, "epoch": epoch,
                                                   "score": score, "run_id": run_id})
    state.history.append(row)
    if is_main and ckpt_dir is not None:
        hist = pd.DataFrame(state.history)
        save_checkpoint(ckpt_dir / "last.pt", {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "loader_generator": data.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "best_score": state.best_score, "best_epoch": state.best_epoch,
            "run_id": run_id,
            "history_columns": list(hist.columns),
            "history_values": torch.tensor(hist.astype(float).to_numpy()),
        })


def _predict_test(cfg: TrainConfig, model, data: _Data, sel: _Selection, device: str,
                  dtype: torch.dtype, start_age: int) -> pd.DataFrame:
    """The test split read once with the selected weights (official: its loader already exists):
    one row per image with its expected age and full probability vector."""
    from ageest import metrics

    loader = sel.loader if sel.split == "test" else data.make_loader("test")
    probs, index = predict_probs(model, loader, device, amp=eval_amp(cfg.amp, device),
                                 channels_last=cfg.channels_last, dtype=dtype,
                                 flip=cfg.tta_flip)
    rows = data.table.iloc[data.rows["test"]].iloc[index]
    predictions = pd.DataFrame({
        "image_id": rows["image_id"].astype(str).to_numpy(),
        "subject": rows["subject"].astype("string").to_numpy(),
        "age": rows["age"].to_numpy(dtype=np.int64),
        "age_mean": rows["age_mean"].to_numpy(dtype=np.float64),
        "std": pd.to_numeric(rows["std"], errors="coerce").to_numpy(dtype=np.float64),
        "expected_age": metrics.expected_age(probs, start_age=start_age),
    })
    predictions["probs"] = list(probs.astype(np.float32))
    return predictions


def train(config: TrainConfig, df: pd.DataFrame, fold, *, start_age: int, end_age: int,
          ckpt_dir: str | os.PathLike | None = None, resume: bool = True,
          on_epoch=None, run_id: str | None = None, init_sha256: str | None = None
          ) -> TrainResult:
    """:func:`_train` with the process-wide CUDA numerics it sets restored when it returns or
    fails (:func:`numerics_scope`); see :func:`_train` for the parameters."""
    with numerics_scope():
        return _train(config, df, fold, start_age=start_age, end_age=end_age,
                      ckpt_dir=ckpt_dir, resume=resume, on_epoch=on_epoch, run_id=run_id,
                      init_sha256=init_sha256)


def _train(config: TrainConfig, df: pd.DataFrame, fold, *, start_age: int, end_age: int,
           ckpt_dir: str | os.PathLike | None = None, resume: bool = True,
           on_epoch=None, run_id: str | None = None, init_sha256: str | None = None
           ) -> TrainResult:
    """Train ``config.model`` with ``config.loss`` on one fold and predict its test images.

    Parameters
    ----------
    config : TrainConfig
    df : pandas.DataFrame
        The dataset table (``path``, ``age``, ``age_mean``, ``subject``, ``std``, ``image_id``).
    fold : ageest.data.Fold
        Positions of the train/val/test rows in ``df``.
    start_age, end_age : int
        Label range; the model has ``end_age - start_age + 1`` outputs.
    ckpt_dir : path-like, optional
        Where ``best.pt`` and ``last.pt`` go (rank 0 only); ``None``: no checkpoints.
    resume : bool
        Continue from ``ckpt_dir/last.pt`` when it exists (a killed run restarts at the epoch
        after the last completed one, with its optimizer, RNG and history; the learning rate
        follows from the epoch, :func:`epoch_lr`).
    on_epoch : callable, optional
        Called on rank 0 after every epoch with the history so far (a DataFrame), e.g. to
        write ``history.csv`` while the run goes on.
    run_id : str, optional
        The run's identity (its parameter hash), stored in every checkpoint; resuming from a
        checkpoint that holds another one is refused (:class:`CheckpointMismatchError`).
    init_sha256 : str, optional
        The SHA-256 the grid recorded for ``config.init_from``'s checkpoint; a file that no
        longer matches is refused (:class:`InitError`).

    Raises :class:`NonFiniteLossError` when the loss, the logits or the weights become NaN/inf
    (naming the epoch and batch; ``last.pt`` of the last completed epoch is kept).
    """
    from ageest.losses import get_loss

    t_start, cfg = time.perf_counter(), config
    device, world, is_main = _setup_process(cfg)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    data = _make_data(cfg, df, fold, start_age, device, world)

    model = _make_model(cfg, end_age - start_age + 1, device, dtype)
    raw_model = dist.unwrap_model(model)
    init = (init_from_run(raw_model, cfg, start_age, end_age, init_sha256)
            if cfg.init_from else None)
    weights = loss_weights(cfg.loss, {w: getattr(cfg, w) for w in WEIGHT_SETTINGS})
    loss_fn = get_loss(cfg.loss, start_age=start_age, end_age=end_age, **weights,
                       **cfg.loss_kwargs)
    opt = _make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and device.startswith("cuda"))
    ages_axis = torch.arange(start_age, end_age + 1, device=device, dtype=dtype)  # (C,)
    sel = _make_selection(cfg, data)
    state = _resume(ckpt_dir if resume else None, device, raw_model, opt, scaler, data.generator,
                    run_id)

    model.train()
    for epoch in range(state.start_epoch, cfg.epochs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        data.sampler.set_epoch(epoch)
        lr = epoch_lr(cfg, epoch, 0, len(data.train_dl))
        _set_lr(opt, lr)
        sums = _train_epoch(cfg, epoch, model, loss_fn, opt, scaler, data, device, dtype,
                            ages_axis, last_path)
        train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        row, n_total = _epoch_row(epoch, lr, sums)
        score = _evaluate(cfg, raw_model, data, sel, row, device, dtype, start_age, epoch)
        if not _state_is_finite(raw_model.state_dict()):
            raise NonFiniteLossError(_nonfinite_message(
                "parameters or buffers", epoch, len(data.train_dl) - 1, cfg, last_path))
        row["epoch_time_s"] = time.perf_counter() - t0
        row["images_per_s"] = n_total / train_time  # training throughput (evaluation excluded)
        # CPU time of this process over the same part (not DataLoader workers): load-independent
        row["train_cpu_s"] = train_cpu
        row["selected"] = False
        _select_and_save(cfg, epoch, score, row, state, raw_model, opt, scaler, data, ckpt_dir,
                         run_id)
        if on_epoch is not None and is_main:
            on_epoch(pd.DataFrame(state.history))

    if state.best_state is None:  # resumed after the final epoch, or no epoch improved a NaN score
        state.best_state = raw_model.state_dict()
        state.best_epoch = state.best_epoch or cfg.epochs
    raw_model.load_state_dict(state.best_state)
    predictions = _predict_test(cfg, raw_model, data, sel, device, dtype, start_age)
    hist = pd.DataFrame(state.history)
    hist["selected"] = hist["epoch"] == state.best_epoch
    return TrainResult(history=hist, predictions=predictions, best_epoch=int(state.best_epoch),
                       selected_by=sel.selected_by, test_selected=sel.split == "test",
                       wall_time_s=time.perf_counter() - t_start,
                       resumed_from_epoch=state.resumed_from, numerics=numerics(cfg, device),
                       init=init)
