"""The suite's own promises: a missing browser is never silent, and make test-browser fails
without one."""

from __future__ import annotations

import os
import subprocess
import sys

from ageest import paths


def _pytest_browser(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "AGEEST_REQUIRE_BROWSER")}
    env.update({"AGEEST_CHROMIUM": "/nonexistent/chromium", **extra_env})
    return subprocess.run([sys.executable, "-m", "pytest", "tests/browser", "-q",
                           "-p", "no:cacheprovider"], cwd=paths.ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_missing_browser_prints_a_not_run_line_with_the_install_command():
    done = _pytest_browser({})
    assert done.returncode == 0, done.stdout[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("NOT RUN: ")]
    assert lines and "apt-get install chromium chromium-driver" in lines[0], done.stdout


def test_browser_test_fails_when_it_is_required_and_missing():
    for env in ({"AGEEST_REQUIRE_BROWSER": "1"}, {"CI": "true"}):
        done = _pytest_browser(env)
        assert done.returncode != 0, done.stdout[-2000:]
        assert "Chromium not found" in done.stdout
