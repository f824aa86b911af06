# Sightline: `make run` runs the pipeline on the default dataset, `make test` the tests.
# Both create/reuse .venv and install from the pinned constraints (no resolver backtracking).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR := $(or $(SIGHTLINE_HOME),.sightline)
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/pip install --ignore-requires-python -c constraints.txt
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==24.3.1
	$(PIP_INSTALL) -q -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/sightline run --home $(HOME_DIR)

lint: install
	$(BIN)/ruff check .

# Everything, as CI runs it (real DAG runs, multi-process training, the served model).
test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop: ruff and the tests not marked slow (~2.5 minutes on 2 vCPUs).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.pipeline_bench

clean:
	rm -rf $(HOME_DIR) build *.egg-info
