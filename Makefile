# Batched Optuna sweeps of tiny sine networks. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed first and on its own: on a CPU machine this takes the CPU wheel; a GPU machine
# overrides it (e.g. TORCH='torch==2.13.0 --index-url …') to bring its CUDA build.
TORCH ?= torch==2.13.0
# Empty: `make sweep` runs the question's designed study and its ablation (specs default, ablation).
SPEC ?=
TRIALS ?=
STUDY ?=
# Empty: each command uses $$SWEEPS_STORAGE if set (keeps a password off the command line),
# else sqlite:///studies/studies.db (or the spec's own storage for sweep/worker).
STORAGE ?=
STORAGE_FLAG := $(if $(STORAGE),--storage $(STORAGE))
HOST ?= 127.0.0.1
PORT ?= 8080
QUICK ?=
COMPILE ?=
SWEEP_FLAGS := $(if $(TRIALS),--trials $(TRIALS)) $(STORAGE_FLAG) $(if $(COMPILE),--compile)

.PHONY: help install sweep worker list show dashboard report bench nnet-reference test test-all clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the project into it (torch first, from TORCH)

sweep: install ## the designed study + ablation (or SPEC=name), continuing, then their report: [TRIALS=n] [STORAGE=url]
	$(if $(SPEC),$(PY) -m sweeps run $(SPEC) $(SWEEP_FLAGS),$(PY) -m sweeps run default $(SWEEP_FLAGS) && $(PY) -m sweeps run ablation $(SWEEP_FLAGS))
	$(PY) -m sweeps report $(if $(SPEC),--study "$$($(PY) -c 'import sys; from sweeps.study import spec; print(spec.load(sys.argv[1]).name)' '$(SPEC)')") $(STORAGE_FLAG)

worker: install ## join a study as one more worker: make worker SPEC=default STORAGE=postgresql://…
	$(PY) -m sweeps worker $(or $(SPEC),default) $(SWEEP_FLAGS)

list: install ## the studies in STORAGE with counts and best values
	$(PY) -m sweeps list $(STORAGE_FLAG)

show: install ## a study's best trials: make show STUDY=default
	$(PY) -m sweeps show $(or $(STUDY),$(SPEC),default) $(STORAGE_FLAG)

dashboard: install ## optuna-dashboard for STORAGE on 127.0.0.1:8080 (HOST=…, PORT=… to change)
	$(PY) -m sweeps dashboard $(STORAGE_FLAG) --host $(HOST) --port $(PORT)

report: install ## the answer, tables and figures (HTML, Markdown, CSV, JSON): make report [STUDY=name]
	$(PY) -m sweeps report $(if $(STUDY),--study $(STUDY)) $(STORAGE_FLAG)

bench: install ## engine, sweeps and second order against their references (QUICK=1: about a minute); writes bench.json
	$(PY) -m sweeps.tools.bench $(if $(QUICK),--quick) --out bench.json

nnet-reference: install ## R's own nnet on the same data and seeds (needs Rscript and r-cran-nnet)
	$(PY) -m sweeps.tools.nnet_reference $(STORAGE_FLAG)

test: install ## the fast test suite
	$(PY) -m pytest -q

test-all: install ## every test, the slow ones included
	$(PY) -m pytest -q -m ''

clean: ## remove .venv and build leftovers (studies/ is kept)
	rm -rf $(VENV) build *.egg-info .pytest_cache
