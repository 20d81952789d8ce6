"""Real-browser test of the interactive experience: JupyterLab opens notebook 01 on the `ageest`
kernel without a prompt, runs every cell without an error, shows the static figures as images,
renders the loss explorer, and moving the explorer's true-age slider changes the loss values it
displays.

Screenshots (``01_loss_illustration_explorer.png``, and ``failure.png`` when the test fails) and
the JupyterLab and chromedriver logs are left in the test's pytest ``tmp_path`` (printed at the
end; pytest keeps the last three runs under ``/tmp/pytest-of-<user>/``).

Run alone with ``make test-browser``; skipped with an install hint when Chromium is missing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

NOTEBOOK = "01_loss_illustration.ipynb"
KERNEL_DISPLAY_NAME = "Python (ageest)"
STATIC_FIGURES = 4  # distributions, loss response, gradients, K sweep

pytestmark = pytest.mark.timeout(300)

# State of every code cell: its prompt ("[3]:", "[*]:", "[ ]:") and whether it holds an error.
CELLS_JS = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell.jp-CodeCell')).map(cell => {
  const prompt = cell.querySelector('.jp-InputArea-prompt');
  const errors = cell.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]');
  return {
    prompt: prompt ? prompt.textContent.trim() : '',
    errors: Array.from(errors).map(e => e.textContent.slice(0, 2000)),
  };
});
"""
IMAGES_JS = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-RenderedImage img')).map(
  img => [img.naturalWidth, img.naturalHeight]);
"""


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last state: {last!r})")


def _click_menu(driver, menu: str, item: str) -> None:
    """Open a main-menu entry (e.g. "Run") and click its item labelled ``item``, as a user
    would."""
    from selenium.webdriver.common.by import By

    labels = driver.find_elements(By.CSS_SELECTOR, "#jp-menu-panel .lm-MenuBar-itemLabel")
    target = next((el for el in labels if el.text.strip() == menu), None)
    assert target is not None, f"no '{menu}' menu in {[el.text for el in labels]}"
    target.click()

    def find_item():
        items = driver.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-item")
        return next((el for el in items if el.find_element(
            By.CSS_SELECTOR, ".lm-Menu-itemLabel").text.strip() == item), None)

    _wait(find_item, 10, f"menu item '{menu} > {item}'").click()


def test_notebook_01_runs_in_jupyterlab_and_the_explorer_reacts(lab_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    screenshot = tmp_path / "01_loss_illustration_explorer.png"
    try:
        # the kernel the notebook declares is registered where this JupyterLab looks
        specs = lab_server["get_json"]("/api/kernelspecs")["kernelspecs"]
        assert "ageest" in specs, (
            f"kernel 'ageest' is not registered (found {sorted(specs)}); run `make test` or "
            "`.venv/bin/python -m ipykernel install --sys-prefix --name ageest`"
        )

        driver.get(f"{lab_server['url']}/lab/tree/{NOTEBOOK}?token={lab_server['token']}")
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook"),
              90, "the notebook to open")

        def kernel_idle():
            dialogs = driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog")
            assert not dialogs, f"JupyterLab asked something: {dialogs[0].text!r}"
            name = driver.find_elements(
                By.CSS_SELECTOR, ".jp-NotebookPanel-toolbar .jp-KernelName, "
                ".jp-NotebookPanel-toolbar [data-jp-item-name='kernelName']")
            status = driver.find_elements(
                By.CSS_SELECTOR, ".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
            if not (name and status):
                return None
            return (name[0].text.strip(), status[0].get_attribute("data-status"))

        # "No Kernel" while the session initialises, then the kernel the notebook declares
        name, _ = _wait(
            lambda: (s := kernel_idle()) and s[0] not in ("", "No Kernel") and s[1] == "idle" and s,
            90, "the kernel to start")
        assert name == KERNEL_DISPLAY_NAME, f"notebook opened on kernel {name!r}"

        _click_menu(driver, "Run", "Run All Cells")

        def all_done():
            cells = driver.execute_script(CELLS_JS)
            if any(c["errors"] for c in cells):
                return cells  # stop waiting: the assertion below reports the error
            done = cells and all(re.fullmatch(r"\[\d+\]:", c["prompt"]) for c in cells)
            return cells if done else None

        cells = _wait(all_done, 150, "every cell to finish (prompts [n]:)", poll=1.0)
        errors = [(i, c["errors"]) for i, c in enumerate(cells) if c["errors"]]
        assert not errors, f"cells with an error output: {errors}"

        images = driver.execute_script(IMAGES_JS)
        assert len(images) >= STATIC_FIGURES, f"expected the static figures as images: {images}"
        assert all(w > 100 and h > 100 for w, h in images), images

        # the explorer rendered (the widget manager is there) with its numbers and figure
        explorer = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".ageest-explorer"), 30,
                         "the loss explorer widget")[0]
        values = driver.find_element(By.CSS_SELECTOR, ".ageest-loss-values")
        before = _wait(lambda: values.text.strip(), 30, "the explorer's loss values")
        assert "true age 30" in before and "AMR" in before, before
        fig = driver.find_element(By.CSS_SELECTOR, "img.ageest-explorer-figure")
        assert driver.execute_script("return arguments[0].naturalWidth", fig) > 100
        first_src = driver.execute_script("return arguments[0].src", fig)

        # move the true-age slider three steps with the keyboard, as a user would
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", explorer)
        handle = driver.find_element(By.CSS_SELECTOR, ".ageest-true-age .noUi-handle")
        handle.click()
        for _ in range(3):
            handle.send_keys(Keys.ARROW_RIGHT)
        after = _wait(lambda: (t := values.text.strip()) != before and "true age 33" in t and t,
                      30, "the loss values to follow the slider")
        total = re.compile(r"total\s+([-\d.]+)")
        assert total.search(before) and total.search(after), (before, after)
        assert total.search(before).group(1) != total.search(after).group(1), (before, after)

        # the figure follows the slider too: wait for a new, fully decoded image (no fixed sleep)
        _wait(lambda: driver.execute_script(
            "const f = document.querySelector('img.ageest-explorer-figure');"
            "return f && f.complete && f.naturalWidth > 100 && f.src !== arguments[0];",
            first_src), 30, "the explorer's figure to redraw for the new true age")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", explorer)
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000

        # the notebook's own outputs landed in the temp results folder, not the repository
        metrics = Path(lab_server["results"]) / "smoke" / "metrics" / "01_loss_illustration.json"
        assert metrics.is_file(), f"{metrics} missing"
    except BaseException:
        try:
            driver.save_screenshot(str(tmp_path / "failure.png"))
        finally:
            print(f"JupyterLab log tail:\n{Path(lab_server['log']).read_text()[-3000:]}")
        raise
    finally:
        print(f"browser-test artefacts (screenshots, logs): {tmp_path}")
