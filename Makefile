# The two commands of the README. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install --quiet -e .

setup-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	bash tools/install-system-packages.sh

## run: migrate the embedded SQLite database, load the demo data, serve on 127.0.0.1:8000
run: setup
	$(BIN)/health migrate
	$(BIN)/health seed --demo
	$(BIN)/health serve

## test: the whole suite, on SQLite and on a PostgreSQL the tests start themselves, in
## TEST_WORKERS processes (pytest-xdist), each test file in one of them with its own servers
TEST_WORKERS ?= 2
test: setup-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup-test
	$(BIN)/python bench/ingest.py
