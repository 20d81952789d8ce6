"""ageest as a library: the README's "Use the losses in your own training loop" example runs as
written, and importing the losses and metrics pulls in nothing of the kit beyond torch and
numpy (a fresh interpreter each, so what other tests imported does not count)."""

from __future__ import annotations

import re
import subprocess
import sys

from ageest import paths

HEAVY = ("pandas", "scipy", "matplotlib", "jupyter_client", "papermill", "pyarrow", "sklearn",
         "seaborn", "yaml", "PIL")


def _readme_example() -> str:
    text = (paths.ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use the losses in your own training loop", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=paths.ROOT)


def test_readme_example_trains_a_step_and_imports_nothing_heavy():
    check = (f"\nimport sys\nheavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")
    done = _run(_readme_example() + check)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    components = eval(lines[0])  # the printed last_components dict  # noqa: S307
    assert set(components) >= {"total", "ce", "mean", "residue", "k_mean"}
    assert all(isinstance(v, float) for v in components.values())
    assert float(lines[-2]) >= 0.0  # the MAE
    assert lines[-1] == "HEAVY []", lines[-1]


def test_losses_and_metrics_import_only_torch_and_numpy():
    done = _run("import sys\nimport ageest.losses, ageest.metrics\n"
                f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_one_version_number():
    """pyproject reads ageest.__version__; the installed metadata, `ageest --version` and the
    citation file agree with it."""
    import importlib.metadata

    import yaml

    import ageest

    assert importlib.metadata.version("ageest") == ageest.__version__
    citation = yaml.safe_load((paths.ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert str(citation["version"]) == ageest.__version__
    pyproject = (paths.ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'version = { attr = "ageest.__version__" }' in pyproject
    done = _run("from ageest.cli import main; main(['--version'])")
    assert done.stdout.strip() == f"ageest {ageest.__version__}"
