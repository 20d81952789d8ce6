# Two set-up commands: `make reproduce` and `make test`. Both create .venv when missing and
# reinstall only when pyproject.toml changed (the stamp files below record the last install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default
# extra arguments for `ageest reproduce`, e.g. ARGS="--fgnet DIR --clap DIR --device cuda"
ARGS ?=

.PHONY: reproduce test test-fast test-slow lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

# the exact environment: every package at requirements/constraints.txt's version (the kit extra
# holds the notebooks' and pipeline's dependencies; `pip install ageest` alone is the light core)
CONSTRAINTS := requirements/constraints.txt

# pip compiles every installed module at install time: keep it (no --no-compile), as this
# machine's environment sets PYTHONDONTWRITEBYTECODE=1 and nothing would be compiled later: every
# import in every notebook kernel and worker would compile torch's modules again (with
# --no-compile the install took ~25 s less and pytest 468 s instead of 299 s)
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[kit]'
	$(BIN)/python -m ipykernel install --sys-prefix --name ageest --display-name "Python (ageest)"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name ageest --display-name "Python (ageest)"
	touch $(VENV)/.installed $@

reproduce: $(VENV)/.installed
	$(BIN)/ageest reproduce --profile $(PROFILE) $(ARGS)

# the suite on every core: one pytest-xdist worker per core, each pinned to its core, a test
# module's tests on one worker (module fixtures built once), the slow tiers first (tests/conftest.py)
XDIST := -n auto --dist loadfile --no-loadscope-reorder

test: $(VENV)/.installed-dev
	$(BIN)/ruff check ageest tests benchmarks
	$(BIN)/python -m pytest $(XDIST)

# the unit tier alone (losses, metrics, data, store, trainer on tiny data), for the edit-test loop
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "unit and not slow" -q

test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m slow $(XDIST)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check ageest tests benchmarks

# Speed targets: each benchmark prints ratios measured within one run (not part of make test).
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_losses.py
	$(BIN)/python benchmarks/bench_train_loop.py
	$(BIN)/python benchmarks/bench_precision.py
	$(BIN)/python benchmarks/bench_runner.py
	$(BIN)/python benchmarks/bench_ray.py

clean-venv:
	rm -rf $(VENV)

.PHONY: lab test-browser

# JupyterLab on this machine only, in notebooks/, with the project's kernel ("ageest", registered
# into .venv by the install step above, so the notebooks open without a kernel prompt).
lab: $(VENV)/.installed
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# The real-browser test alone: JupyterLab + headless Chromium (Debian's chromium, chromium-driver);
# it fails, not skips, when they are missing.
test-browser: $(VENV)/.installed-dev
	AGEEST_REQUIRE_BROWSER=1 $(BIN)/python -m pytest tests/browser -rs
