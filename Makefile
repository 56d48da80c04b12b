# `make run` and `make test` do all set-up on a fresh clone: create .venv when missing, install medtrain
# with the pinned constraints (torch/torchvision install from local wheels in about a minute), then run.
# Installed modules are compiled to bytecode at install time: with PYTHONDONTWRITEBYTECODE set (as
# on the development machine) `--no-compile` made every test process compile torch anew.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The test suite runs in one process per core (pytest-xdist), each with one torch thread (see
# tests/conftest.py): on 2 cores that halves its time. `make test TEST_JOBS=0` runs it in one process.
TEST_JOBS ?= auto
XDIST     := -n $(TEST_JOBS) --maxprocesses=4 --dist loadfile

.PHONY: install run test test-fast lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## train the default experiment (synthetic data, CPU)
	$(BIN)/python -m medtrain $(ARGS)

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)  ## skip the slower end-to-end tests
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
