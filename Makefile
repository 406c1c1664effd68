# Two commands set up and check a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install system-deps test lint bench corpus dataset freeze labels train distill evaluate models ablation musicnn clean

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

# The figures README.md and weights/MODEL_CARD.md quote (pyclarity's HAAQI timed in the same run); the
# end-to-end rows (whole haaqi processes on generated folders, kept in data/bench) come first.
bench:
	mkdir -p data/results
	$(BIN)/haaqi bench --end-to-end data/bench --files 4 --seconds 30 --repeats 3 --pyclarity-seconds 10 \
		--json data/results/bench.json

# The training pipeline (see weights/MODEL_CARD.md): corpus -> manifest -> frozen manifest -> labels -> models.
# `make dataset` builds data/manifest.parquet from the corpus (deterministic: a fresh clone rebuilds the same
# items) and compares it with the committed labels/manifest.parquet; `make freeze` writes that frozen copy
# (commit it before labelling); `make labels` labels the frozen manifest into labels/manifest.labels/
# (append-only shards to commit; validation splits first; resumable).
BUILT    ?= data/manifest.parquet
MANIFEST ?= labels/manifest.parquet
WORKERS  ?= 2
SPLITS   ?=

CORPUS_DIR ?= data/corpus

corpus:
	CORPUS_DIR="$(CORPUS_DIR)" WORKERS="$(WORKERS)" VENV="$(VENV)" bash scripts/install-corpus.sh

# Every validation clip x 7 profiles x 4 variants (clean + 3 degradations), then training items up to 125,000,
# then 6,000 training items with band-limited references and 4,000 whose references went through a
# low-bitrate encoder (their own seeds: the others stay as they were).
dataset:
	$(BIN)/haaqi dataset build --manifest $(BUILT) --items 125000 --variants 12 --band-items 6000 --coded-band-items 4000 --frozen $(MANIFEST)

freeze:
	$(BIN)/haaqi dataset freeze --manifest $(BUILT) --out $(MANIFEST)

# SPLITS="--split validation-real" labels just that split; the default order is validation-real, validation, train.
labels:
	$(BIN)/haaqi dataset label --manifest $(MANIFEST) --workers $(WORKERS) $(SPLITS)
	$(BIN)/haaqi dataset stats --manifest $(MANIFEST)

train:
	$(BIN)/haaqi train --manifest $(MANIFEST)

distill:
	$(BIN)/haaqi distill --manifest $(MANIFEST)

evaluate:
	$(BIN)/haaqi evaluate --manifest $(MANIFEST)

models: train distill evaluate

# The ablation rows (baseline, +terms, +conditioning, +ranking) and a learning curve, one table in
# data/results/ablation (scripts/model_card.py adds it to the card). ABLATION="--max-minutes 60 ..." adds options.
ablation:
	$(BIN)/haaqi ablate --manifest $(MANIFEST) --out data/results/ablation --release teacher --release distilled $(ABLATION)

# The musicnn content prior (--content-prior musicnn): the musicnn 0.1.0 wheel (ISC licence, TF1 checkpoints
# inside) into data/musicnn/, converted to data/musicnn/MSD_musicnn.safetensors (sha256 pinned in
# haaqicli.models.musicnn). Not shipped in weights/ until an ablation row shows it helps.
MUSICNN_WHEEL := data/musicnn/musicnn-0.1.0-py3-none-any.whl

musicnn: data/musicnn/MSD_musicnn.safetensors

$(MUSICNN_WHEEL):
	mkdir -p data/musicnn
	$(BIN)/pip download -q --disable-pip-version-check musicnn==0.1.0 --no-deps -d data/musicnn

data/musicnn/MSD_musicnn.safetensors: $(MUSICNN_WHEEL) scripts/convert-musicnn.py src/haaqicli/models/musicnn.py
	PYTHONPATH=src $(BIN)/python scripts/convert-musicnn.py $(MUSICNN_WHEEL) --model MSD_musicnn --out $@

clean:
	rm -rf build dist .pytest_cache .ruff_cache
