# One-command set-up: `make run` (embedded default job) and `make test` (the test suite).
# Set-up is quiet: one line, then only what pip reports as an error (-qq, no progress bars).
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_QUIET := -qq --progress-bar off
# The default tier: every capability end to end against real services, in minutes.
# `make test-long`: the scenarios that are inherently minutes (marker `long`, see README).
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
# constraints.txt pins the rest, so pip never backtracks.
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "setting up $(VENV): torch 2.13.0 (CPU build), then this project and its pinned dependencies"
	@python3 -m venv $(VENV)
	@$(PY) -m pip install $(PIP_QUIET) torch==2.13.0
	@$(PY) -m pip install $(PIP_QUIET) -c constraints.txt -e '.[test]'
	@touch $@

install: $(VENV)/.installed

run: install
	@$(VENV)/bin/maskunet train

test: install
	$(PYTEST) -m "not long" --durations=15

test-long: install
	$(PYTEST) -m long --durations=15

test-all: install
	$(PYTEST) --durations=25

bench: install
	$(PY) scripts/bench_unet.py
	$(PY) scripts/bench_run.py

# After a dependency change in pyproject.toml: re-pin from the working venv.
constraints: install
	@{ sed -n '1,4p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.new
	@mv constraints.new constraints.txt

.PHONY: install run test test-long test-all bench constraints
