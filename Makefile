# Entry points used by README.md and .ci/run. `make test` and `make run` set up the
# virtual environment first, so each is the one command a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export DVC_NO_ANALYTICS := true

.PHONY: setup test lint run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# `python` in the stages' commands (dvc.yaml) must be the environment's. THREADS: torch's
# threads per stage; on a small shared CPU one thread is far faster than two fighting other
# jobs (10x for the demo's train stage on the 2-core development machine); `make run THREADS=2`
# for two.
THREADS ?= 1
run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/dvc repro

bench: setup
	PY=$(PY) sh bench/run_all.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
