"""Fixtures of the real-browser test: a JupyterLab server on 127.0.0.1 (random free port, a token,
isolated Jupyter config/settings/runtime folders, results written to a temp folder) serving a
temp copy of the notebooks, and headless Debian Chromium driven through chromedriver.

Both are torn down in ``finally`` blocks, so a failing test still stops the server (and the
kernels it started: the server runs in its own process group) and the browser.

Nothing leaves the machine: JupyterLab's news, update check and PyPI extension manager are
switched off, and Chromium runs with background networking, component updates and sync disabled,
a fresh user-data dir, and every host name except 127.0.0.1 / localhost unresolvable.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ageest import paths

KERNEL_NAME = "ageest"
INSTALL_HINT = (
    "install Debian's Chromium and its driver with `apt-get install chromium chromium-driver` "
    "(or run `.ci/run`, which does it), then `make test-browser`"
)
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")


def _find(candidates: tuple[str, ...], env_var: str) -> str | None:
    """The first executable among ``candidates``; ``$env_var``, when set, is the only one."""
    if os.environ.get(env_var):
        candidates = (os.environ[env_var],)
    for name in candidates:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> dict[str, str]:
    """Paths of the Chromium binary and chromedriver (``AGEEST_CHROMIUM`` and
    ``AGEEST_CHROMEDRIVER`` override the search). When either is missing the test is skipped,
    saying how to install them (the run's closing lines repeat it under NOT RUN), unless
    ``AGEEST_REQUIRE_BROWSER=1`` (``make test-browser``) or ``CI`` is set: then it fails."""
    required = os.environ.get("AGEEST_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))
    missing = pytest.fail if required else pytest.skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed: `pip install -e '.[dev]'` (make test does); "
                f"then {INSTALL_HINT}")
    browser = _find(CHROMIUM_CANDIDATES, "AGEEST_CHROMIUM")
    driver = _find(CHROMEDRIVER_CANDIDATES, "AGEEST_CHROMEDRIVER")
    if browser is None:
        looked = os.environ.get("AGEEST_CHROMIUM") or ", ".join(CHROMIUM_CANDIDATES)
        missing(f"Chromium not found (looked for {looked}): {INSTALL_HINT}")
    if driver is None:
        looked = os.environ.get("AGEEST_CHROMEDRIVER") or ", ".join(CHROMEDRIVER_CANDIDATES)
        missing(f"chromedriver not found (looked for {looked}): {INSTALL_HINT}")
    return {"browser": browser, "driver": driver}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_command() -> list[str]:
    """JupyterLab of the environment running the tests (.venv/bin/jupyter under `make test`)."""
    jupyter = Path(sys.executable).parent / "jupyter"
    return [str(jupyter), "lab"] if jupyter.exists() else [sys.executable, "-m", "jupyterlab"]


def _write_lab_settings(settings_dir: Path) -> None:
    """JupyterLab user settings for the test: every notebook cell attached to the DOM (so the
    test sees all outputs), no news or update checks, no toasts over the notebook."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True,
        },
    }
    for rel, content in files.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content), encoding="utf-8")


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1 only)
        return json.loads(resp.read().decode("utf-8"))


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture
def lab_server(tmp_path: Path):
    """A JupyterLab server serving a temp copy of notebooks/; yields a dict with ``url`` (base,
    no trailing slash), ``token``, ``root`` (the served folder), ``results`` (where the notebooks
    write, via AGEEST_RESULTS) and ``log`` (the server log). Always stopped on teardown."""
    root = tmp_path / "notebooks"
    shutil.copytree(paths.NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    state = tmp_path / "jupyter"
    for sub in ("config", "data", "runtime", "settings", "workspaces", "ipython"):
        (state / sub).mkdir(parents=True)
    _write_lab_settings(state / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update({
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "IPYTHONDIR": str(state / "ipython"),
        # the environment's own kernels (the `ageest` kernel lives in .venv/share/jupyter) win
        "JUPYTER_PREFER_ENV_PATH": "1",
        "AGEEST_RESULTS": str(tmp_path / "results"),
        "PYTHONUNBUFFERED": "1",
    })
    cmd = _jupyter_command() + [
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root; Jupyter refuses without this
    log = tmp_path / "jupyterlab.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as log_fh:
        # own process group: teardown can stop the server and any kernel it left behind
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n"
                                       + _log_tail(log))
                try:
                    _get_json(f"{url}/api/status?token={token}", timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise RuntimeError("JupyterLab did not answer within 60 s:\n"
                                           + _log_tail(log)) from None
                    time.sleep(0.5)
            yield {"url": url, "token": token, "root": root, "results": tmp_path / "results",
                   "log": log, "get_json": lambda p: _get_json(f"{url}{p}?token={token}")}
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server (it shuts its kernels down), then SIGKILL to its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created: server and its kernels
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def browser(chromium: dict[str, str], tmp_path: Path):
    """Headless Chromium under chromedriver, fresh profile, no outbound network; quit on
    teardown."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium["browser"]
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions",
        "--metrics-recording-only", "--no-default-browser-check", "--window-size=1400,1600",
        f"--user-data-dir={profile}",
        # any host other than the local server fails to resolve: nothing leaves the machine
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(flag)
    service = Service(executable_path=chromium["driver"],
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
