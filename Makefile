# Two commands set up and check a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install system-deps test lint bench corpus dataset labels train distill evaluate models clean

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

# The figures README.md and weights/MODEL_CARD.md quote (pyclarity's HAAQI timed in the same run).
bench:
	mkdir -p data/results
	$(BIN)/haaqi bench --files 4 --seconds 30 --repeats 3 --pyclarity-seconds 10 --json data/results/bench.json

# The training pipeline (see weights/MODEL_CARD.md): corpus -> manifest -> labels -> models.
MANIFEST ?= data/manifest.parquet
WORKERS  ?= 2

corpus:
	bash scripts/install-corpus.sh

# 12 variants (degradation x audiogram) of each of the 3,750 clips: the same clips as the first 30,000-item
# manifest (8 variants), whose items keep their ids, so labels made for it stay valid.
dataset:
	$(BIN)/haaqi dataset build --manifest $(MANIFEST) --items 45000 --variants 12

labels:
	$(BIN)/haaqi dataset label --manifest $(MANIFEST) --workers $(WORKERS)
	$(BIN)/haaqi dataset stats --manifest $(MANIFEST)

train:
	$(BIN)/haaqi train --manifest $(MANIFEST)

distill:
	$(BIN)/haaqi distill --manifest $(MANIFEST)

evaluate:
	$(BIN)/haaqi evaluate --manifest $(MANIFEST)

models: train distill evaluate

clean:
	rm -rf build dist .pytest_cache .ruff_cache
