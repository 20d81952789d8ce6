"""A finished run's network as ONNX: ``ageest export --run RUN_DIR --onnx model.onnx``.

The exported graph takes the preprocessed images (``image``: float32 ``(N, 3, H, W)``) and gives
``probs`` (the softmax over the ages) and ``expected_age`` (their expectation, the paper's
prediction). What the input must be (size, decoding, normalisation, the age range) is written
beside it as ``<name>.json``. The export is checked against PyTorch on the run's own test
images with onnxruntime: the largest difference in expected age is printed and recorded there.
Needs the extra ``onnx`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ageest.inference.predict import (
    LoadedRun,
    RunError,
    evaluation_dataset,
    load_run,
    preprocessing,
)

#: parity bound on the expected age (years) between onnxruntime and PyTorch, float32
PARITY_TOLERANCE = 1e-3


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise RunError(f"ONNX export needs the extra 'onnx' ({exc.name} is missing): "
                       "pip install 'ageest[onnx]'") from None


def age_head(run: LoadedRun):
    """The run's network followed by the softmax and the expected-age head (float32, CPU)."""
    import torch

    class AgeHead(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, ages: torch.Tensor) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("ages", ages)  # (C,)

        def forward(self, image: torch.Tensor):
            probs = torch.softmax(self.net(image), dim=1)  # (N, C)
            return probs, probs @ self.ages  # (N, C), (N,)

    ages = torch.arange(run.start_age, run.end_age + 1, dtype=torch.float32)
    return AgeHead(run.model.float().cpu(), ages).eval()


def test_images(run: LoadedRun) -> list[str]:
    """The image paths of the run's test split, rebuilt from its data and fold (the images its
    ``predictions.parquet`` scored)."""
    from ageest.engine.run import _checked_fold, load_data

    df, _ = load_data(run.params)
    fold = _checked_fold(df, run.params, run.run_dir)
    return df.iloc[np.asarray(fold.test, dtype=np.int64)]["path"].astype(str).tolist()


def _batch(run: LoadedRun, paths: list[str]) -> np.ndarray:
    """The preprocessed images (N, 3, H, W) float32, as the run's evaluation made them."""
    import torch

    ds = evaluation_dataset(run, paths)
    return torch.stack([ds[i][0] for i in range(len(ds))]).float().numpy()


def export_onnx(run_dir: str | os.PathLike, onnx_path: str | os.PathLike, *,
                checkpoint: str = "best", check: bool = True,
                max_images: int | None = None) -> dict[str, Any]:
    """Export a run to ONNX, write the preprocessing beside it, and (``check``) compare
    onnxruntime with PyTorch on the run's test images. Returns what ``<name>.json`` holds."""
    import torch

    from ageest.files import write_json

    _require_onnx()
    if Path(onnx_path).is_dir():  # checked before the export (torch.onnx would raise deep down)
        raise RunError(f"--onnx {onnx_path}: is a folder; give a file name, e.g. "
                       f"{Path(onnx_path) / 'model.onnx'}")
    run = load_run(run_dir, checkpoint=checkpoint, device="cpu")
    head = age_head(run)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    side = int(run.config.image_size)
    dummy = torch.zeros(2, 3, side, side)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(head, (dummy,), str(onnx_path), input_names=["image"], verbose=False,
                      output_names=["probs", "expected_age"], dynamo=True,
                      dynamic_shapes={"image": {0: batch}}, external_data=False)
    info: dict[str, Any] = {"run": str(run.run_dir), "checkpoint": run.checkpoint.name,
                            "onnx": onnx_path.name, "preprocessing": preprocessing(run)}
    if check:
        info["parity"] = parity(head, onnx_path, run, max_images=max_images)
    write_json(onnx_path.with_suffix(".json"), info)
    return info


def parity(head, onnx_path: Path, run: LoadedRun, *, max_images: int | None = None
           ) -> dict[str, Any]:
    """Largest |expected age| and |probability| differences between onnxruntime and PyTorch on
    the run's test images."""
    import onnxruntime as ort
    import torch

    paths = test_images(run)[:max_images]
    x = _batch(run, paths)
    with torch.no_grad():
        probs_t, age_t = (t.numpy() for t in head(torch.from_numpy(x)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probs_o, age_o = session.run(["probs", "expected_age"], {"image": x})
    return {"n_images": len(paths),
            "max_abs_diff_expected_age": float(np.max(np.abs(age_o - age_t))) if paths else 0.0,
            "max_abs_diff_probs": float(np.max(np.abs(probs_o - probs_t))) if paths else 0.0,
            "tolerance_expected_age": PARITY_TOLERANCE}
