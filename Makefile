# The README's two commands: `make repro` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# DVC stage commands call `python`: make it the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Keep every tool's state inside the project and quiet (no network here).
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export MUSIC21_SCRATCH ?= /tmp/music21

.PHONY: install repro test lint clean-venv prefect-up prefect-down prefect-run pull-repro ablations objectives \
	prefect-deploy prefect-worker prefect-server

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

# With a DVC remote (README, "Running on more than one machine"): fetch every artifact the remote
# has, then reproduce only what is missing or stale.
pull-repro: install
	$(BIN)/dvc pull --allow-missing
	$(BIN)/dvc repro

# The block ablation on DVC's experiment queue: make ablations JOBS=1 ARGS='-S train.steps=1000'
JOBS ?= 1
ablations: install
	$(BIN)/python -m flows.ablations --jobs $(JOBS) $(ARGS)

# Diffusion vs autoregressive (plain REMI and BPE) at equal training time: make objectives ARGS='--budget-s 300'
objectives: install
	$(BIN)/python -m flows.objectives --bpe 1000 $(ARGS)

# Two workers (pytest-xdist): most of the suite's time is DVC, Prefect and torchrun subprocesses
# that leave a core idle. Whole files per worker, so a module's fixtures (its Prefect server, its
# DVC project) stay in one process. make test TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check smdim pipeline flows tests

clean-venv:
	rm -rf $(VENV)

# --- Prefect (flows/): a local server + the process serving deployment smdim/full ---
# State, PIDs and logs live in .prefect/ (PREFECT_HOME). Each process gets its own process group
# (setsid), so prefect-down stops it and its children by PID.
PREFECT_PORT ?= 4200
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)/api

# The server alone (for work-pool deployments and workers); prefect-up adds `serve`.
prefect-server: install
	@mkdir -p $(PREFECT_HOME)
	@if [ -f $(PREFECT_HOME)/server.pid ] && kill -0 $$(cat $(PREFECT_HOME)/server.pid) 2>/dev/null; then \
	  echo "prefect server already running (PID $$(cat $(PREFECT_HOME)/server.pid))"; \
	else \
	  setsid $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) \
	    > $(PREFECT_HOME)/server.log 2>&1 < /dev/null & echo $$! > $(PREFECT_HOME)/server.pid; \
	fi
	@for i in $$(seq 120); do \
	  $(BIN)/python -c "import urllib.request as u; u.urlopen('$(PREFECT_URL)/health', timeout=2)" 2>/dev/null && break; \
	  if [ $$i = 120 ]; then echo "prefect server not healthy after 120 s: see $(PREFECT_HOME)/server.log"; exit 1; fi; \
	  sleep 1; \
	done
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (log: $(PREFECT_HOME)/server.log)"

prefect-up: prefect-server
	@if [ -f $(PREFECT_HOME)/serve.pid ] && kill -0 $$(cat $(PREFECT_HOME)/serve.pid) 2>/dev/null; then \
	  echo "deployment smdim/full already served (PID $$(cat $(PREFECT_HOME)/serve.pid))"; \
	else \
	  PREFECT_API_URL=$(PREFECT_URL) setsid $(BIN)/python -m flows.serve --project-dir $(CURDIR) \
	    > $(PREFECT_HOME)/serve.log 2>&1 < /dev/null & echo $$! > $(PREFECT_HOME)/serve.pid; \
	fi
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (logs: $(PREFECT_HOME)/server.log, serve.log)"
	@echo "Run: make prefect-run   or   PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect deployment run smdim/full --watch"

# Work-pool deployment (prefect.yaml): deployment smdim/full on the process pool $(PREFECT_POOL);
# a worker on any machine with a checkout runs it there (prefect-up's `serve` is not needed then).
PREFECT_POOL ?= smdim-local
prefect-deploy: install
	@PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect work-pool inspect $(PREFECT_POOL) > /dev/null 2>&1 || \
	  PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect work-pool create $(PREFECT_POOL) --type process
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect work-pool set-concurrency-limit $(PREFECT_POOL) 1
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect --no-prompt deploy --name full

prefect-worker: install
	PREFECT_API_URL=$(PREFECT_URL) SMDIM_PROJECT_DIR=$(CURDIR) $(BIN)/prefect worker start --pool $(PREFECT_POOL)

prefect-run: install
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect deployment run smdim/full --watch

prefect-down:
	@for name in serve server; do \
	  f=$(PREFECT_HOME)/$$name.pid; \
	  if [ -f $$f ] && kill -0 $$(cat $$f) 2>/dev/null; then \
	    kill -TERM -- -$$(cat $$f) && echo "stopped $$name (PID $$(cat $$f))"; \
	  fi; \
	  rm -f $$f; \
	done
