# The README's two commands: `make repro` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Keep every tool's state inside the project and quiet (no network here).
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export MUSIC21_SCRATCH ?= /tmp/music21

.PHONY: install repro test lint clean-venv

install: $(VENV)/.installed

# CPU torch first, in its own step: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check smdim pipeline flows tests

clean-venv:
	rm -rf $(VENV)
