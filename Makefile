# One-command set-up: `make run` (embedded default job) and `make test` (the test suite).
# Set-up is quiet: one line, then only what pip reports as an error (-qq, no progress bars).
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_QUIET := -qq --progress-bar off

# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV): torch 2.13.0 (CPU build), then this project and its pinned dependencies"
	@python3 -m venv $(VENV)
	@$(PY) -m pip install $(PIP_QUIET) torch==2.13.0
	@$(PY) -m pip install $(PIP_QUIET) -e '.[test]'
	@touch $@

install: $(VENV)/.installed

run: install
	@$(VENV)/bin/maskunet train

test: install
	$(PY) -m pytest -q --durations=25

bench: install
	$(PY) scripts/bench_unet.py

.PHONY: install run test bench
