# Set-up and everyday commands. Needs only Python 3.11 (or 3.10+), pip and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Pins torch for the set-up only (a CPU build on this kind of machine); the
# package itself accepts any torch>=2.3. Override: make TORCH_CONSTRAINT=/dev/null install
TORCH_CONSTRAINT ?= requirements/torch-cpu.txt
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: install minihack browser test lint format demo bench-envs clean

install: $(VENV)/.installed browser

# Debian's headless Chromium for the browser tests of `mbm-agent view` (Playwright cannot
# download its own browser here, so it drives this one). Skipped when it is already there.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; \
	else \
		echo "no apt-get here: install Chromium at /usr/bin/chromium (or set MBM_CHROMIUM) for the browser tests; they skip without it"; \
	fi

$(VENV)/.installed: pyproject.toml requirements/torch-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c $(TORCH_CONSTRAINT) -e ".[$(EXTRAS)]"
	$(MAKE) minihack
	touch $@

# NetHack through MiniHack (the minihack extra) for its tests. nle pins gymnasium exactly and
# RLlib pins another, so pip cannot resolve both: nle and minihack go in with --no-deps (they
# run under the gymnasium dev holds), with their own run-time needs named here; minihack
# imports pkg_resources (setuptools asks for <81 to keep it). Where they do not install (no wheel for
# this platform), the MiniHack tests skip and say so.
minihack:
	$(BIN)/pip install pybind11 "setuptools<81"
	$(BIN)/pip install --no-deps "nle>=1.1" "minihack>=1.0" || \
		echo "nle/minihack did not install: tests/mbm_agent/training/test_minihack.py will skip"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

demo: install
	$(BIN)/mbm-agent demo

bench-envs: install
	$(BIN)/python benchmarks/env_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
