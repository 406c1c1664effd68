# Two commands set up and check a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --disable-pip-version-check -c constraints.txt

.PHONY: install system-deps test lint bench corpus dataset labels train distill evaluate clean

install: system-deps $(BIN)/python
	$(PIP) torch==2.11.0 torchaudio==2.11.0
	$(PIP) -e '.[dev]'
	# pyclarity is the oracle for tests and benchmarks only, never a runtime dependency.
	$(PIP) pyclarity
	$(BIN)/haaqi --version

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

system-deps:
	bash scripts/install-system-deps.sh

test:
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check src tests

bench:
	$(BIN)/haaqi bench

corpus:
	bash scripts/install-corpus.sh

dataset:
	$(BIN)/haaqi dataset build

clean:
	rm -rf build dist .pytest_cache .ruff_cache
