"""ageest as a library: the README's "Use the losses in your own training loop" example runs as
written, and importing the losses and metrics pulls in nothing of the kit beyond torch and
numpy (a fresh interpreter each, so what other tests imported does not count)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

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


def test_a_command_without_the_kit_says_to_install_it():
    """Under the core install a sub-command's dependencies are missing: one line naming the
    missing module and the extra to install, exit 2 (simulated in a fresh interpreter whose
    import system refuses pandas)."""
    code = (
        "import sys\n"
        "class NoPandas:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pandas' or name.startswith('pandas.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoPandas())\n"
        "from ageest.cli import main\n"
        "sys.exit(main(['run', '--help']))\n")
    done = _run(code)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "ageest run: error: needs 'pandas', which the core install (`pip install ageest`) "
        "leaves out; install the kit: pip install 'ageest[kit]'")


@pytest.mark.slow
def test_the_built_wheel_without_extras_trains_with_the_oldest_torch(tmp_path):
    """The standard front-end builds the wheel and the sdist, twine's metadata check passes, and
    in a fresh virtual environment with only the core installed (torch 2.13.0, the CPU wheel on
    this machine's disk: the low end of the supported range) the README example trains a step
    without importing pandas, scipy, matplotlib or Jupyter. (The high end, 2.14.1, is the kit's
    own environment: the tests above.) `make test-slow` runs it: about a minute."""
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(paths.ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    built = sorted(str(p) for p in dist.iterdir())
    assert sorted(p.rsplit(".", 1)[-1] for p in built) == ["gz", "whl"]  # the sdist, the wheel
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *built],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = dist.glob("ageest-*.whl")
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "torch==2.13.0", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    check = (_readme_example() + "\nimport sys, torch\nprint('TORCH', torch.__version__)\n"
             f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip().splitlines()
    assert out[-2].startswith("TORCH 2.13.0") and out[-1] == "HEAVY []", out[-3:]
