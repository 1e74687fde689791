# One-command set-up: `make run` (embedded default job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/maskunet train

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) scripts/bench_unet.py

.PHONY: install run test bench
