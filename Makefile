# Entry points used by README.md and .ci/run. `make test` and `make run` set up the
# virtual environment first, so each is the one command a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

export DVC_NO_ANALYTICS := true

.PHONY: setup lock test lint run bench clean

setup: $(STAMP)

# requirements.lock pins every package of the environment to one version and one file (its
# sha256): `--require-hashes` installs exactly those or fails. The project itself goes in
# last, editable, without dependencies (all in the lock) and with the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --require-hashes -r $(LOCK)
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Re-resolve pyproject.toml's dependencies to their newest allowed versions and rewrite
# requirements.lock (tools/lock.py); then `make setup` installs them.
lock: setup
	$(PY) tools/lock.py

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
