# segexp — the commands a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,sweep,slurm,onnx,crf,tensorboard,mlflow,docs
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train train-debug evaluate test test-fast stress mutation lint fmt bench bench-quick bench-gpu docs docs-serve docs-pictures clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY) ## create .venv and install segexp with all extras (pinned by constraints.txt)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel -c constraints.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]" 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	$(PY) -c "import segexp, torch, pytorch_lightning, segmentation_models_pytorch; print('segexp installed; torch', torch.__version__)"

train: ## train the default experiment (U-Net on the generated shapes data, CPU, a few minutes)
	$(VENV)/bin/segexp train $(ARGS)

train-debug: ## one batch of train/val/test, to check a config end to end
	$(VENV)/bin/segexp train trainer=debug logger=csv $(ARGS)

# make test runs the test files in TEST_JOBS processes (pytest-xdist; one file stays in one
# process, so its module fixtures are built once), each torch at one thread so that the
# processes do not fight over the cores; the longest files first (tests/conftest.py, LONGEST_FIRST).
# TEST_JOBS=0: one process, torch's own thread count.
TEST_JOBS ?= 2
PARALLEL = $(filter-out 0,$(TEST_JOBS))
TEST_RUN = $(if $(PARALLEL),OMP_NUM_THREADS=1 )$(PY) -m pytest $(if $(PARALLEL),-n $(PARALLEL) --dist loadfile --no-loadscope-reorder)

test: ## run the whole test suite (what CI runs; TEST_JOBS=2 processes, 0 for one)
	$(TEST_RUN) --durations=30 $(PYTEST_ARGS)

test-fast: ## the tests not marked slow
	$(TEST_RUN) -m "not slow" $(PYTEST_ARGS)

stress: ## SIGKILL a small run 30 times at random moments, resuming each time (KILLS=30); requeue a SLURM DDP job 20 times (SIGNALS=20)
	SEGEXP_KILLS=$(or $(KILLS),30) $(PY) -m pytest -s tests/run/test_checkpoint_faults.py -k sigkill --timeout=0 $(PYTEST_ARGS)
	SEGEXP_REQUEUE_SIGNALS=$${SIGNALS:-20} $(PY) -m pytest -s tests/run/test_slurm.py -k requeue --timeout=0 $(PYTEST_ARGS)

# The core modules `make mutation` mutates (see [tool.mutmut] in pyproject.toml for the tests).
# Each mutant's tests run in a child forked from mutmut's process: OMP_NUM_THREADS=1, since a
# child forked after torch started its OpenMP threads can hang (counted as a timeout, a false kill);
# SEGEXP_MUTATION=1 turns off hypothesis' shrinking (tests/conftest.py).
MUTATE ?= segexp.model.metrics segexp.model.losses segexp.run.checkpoint segexp.run.ckpt_io segexp.data.scan segexp.run.budget_planner
MUTATION_LIMIT ?= 3600

mutation: ## mutation score of the core modules (mutmut, pip install -e .[mutation]; long, not in make test): MUTATE=<module> for one
	@for module in $(MUTATE); do \
	  echo "== mutmut: $$module (at most $(MUTATION_LIMIT) s)"; \
	  env -u PYTHONPATH SEGEXP_MUTATION=1 OMP_NUM_THREADS=1 timeout $(MUTATION_LIMIT) $(VENV)/bin/mutmut run --max-children $(or $(JOBS),1) "$$module.*" >/dev/null; \
	  status=$$?; if [ $$status -ne 0 ]; then echo "mutmut stopped ($$status): the table counts what ran"; fi; \
	done
	env -u PYTHONPATH $(PY) scripts/mutation_table.py $(MUTATE)

lint: ## ruff lint + format check + the package's layer contract (import-linter)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --config pyproject.toml

fmt: ## format and fix what ruff can
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: ## benchmarks (speed and quality per CPU-minute), prints ratios side by side
	$(PY) -m benchmarks $(ARGS)

bench-quick: ## the benchmark suite at tiny sizes (checks it runs; the numbers mean nothing)
	$(PY) -m benchmarks --quick $(ARGS)

bench-gpu: ## figure 11 on a GPU (ARGS=--cpu here; ARGS="--variants fp32,bf16" the variant table)
	$(PY) -m benchmarks.gpu $(ARGS)

docs: ## build the guide site into site/ (strict: a broken link or reference fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: ## serve the guide on http://127.0.0.1:8000, rebuilt as docs/ changes
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

docs-pictures: ## the docs' pictures, made from real runs (trains the default run: ~5 min)
	$(PY) scripts/docs_pictures.py $(ARGS)

clean: ## remove outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun site .pytest_cache .ruff_cache .hypothesis mutants
