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

run: setup
	$(VENV)/bin/dvc repro

bench: setup
	$(PY) bench/bench_train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
