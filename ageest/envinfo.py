"""Environment report: package versions, git commit, device. Used by every results manifest and by
the notebooks' setup cells."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from ageest import paths

PACKAGES = (
    "ageest", "torch", "torchvision", "numpy", "pandas", "scipy", "scikit-learn", "matplotlib",
    "seaborn", "papermill", "pillow",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, ``None`` when it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """Commit of the checkout the package runs from, with ``-dirty`` when it has local changes."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(paths.ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(paths.ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def device_report() -> dict[str, object]:
    """CPU/GPU facts that change training numbers."""
    import torch

    info: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
    return info


def environment_report() -> dict[str, object]:
    """Everything a results manifest records about the environment."""
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "device": device_report(),
        "paths": {"root": str(paths.ROOT), "data": str(paths.DATA), "results": str(paths.RESULTS)},
    }
