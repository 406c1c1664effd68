#!/usr/bin/env python3
"""Evaluate the mean clip score of registered models (the ensemble `haaqi train --soft-target` distils).

    PYTHONPATH=src .venv/bin/python scripts/ensemble-mean.py weights:teacher weights:distilled \\
        --split validation-real --exclude-package ufoai-music

Each model is REGISTRY:NAME, loaded with its sha256 checked; the figures are haaqi evaluate's
(training.train.evaluation_metrics), for each model alone and for the mean.
"""

from __future__ import annotations

import argparse

import torch

from haaqicli.models.registry import load_model, registry_source
from haaqicli.training.train import evaluation_metrics, evaluation_split, predict
from haaqicli.util.errors import HaaqiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("models", nargs="+", type=registry_source, help="REGISTRY:NAME of each model")
    parser.add_argument("--manifest", default="labels/manifest.parquet")
    parser.add_argument("--split", default="validation-real")
    parser.add_argument("--exclude-package", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        data = evaluation_split(args.manifest, args.split, args.exclude_package)
        scores = {f"{folder}:{name}": predict(load_model(name, weights_dir=folder)[0], data)
                  for folder, name in args.models}
    except HaaqiError as error:
        parser.exit(2, f"error: {error}\n")
    scores["mean"] = sum(scores.values()) / len(args.models)
    for label, predicted in scores.items():
        m = evaluation_metrics(data.meta.assign(predicted=predicted, label=data.labels.numpy()))
        o, within, clean = m["overall"], m["within_profile"], m["clean_normal"]
        print(f"{label:24s} n {o['n']} LCC {o['lcc']:.4f} SRCC {o['srcc']:.4f} MSE {o['mse']:.4f} "
              f"within {within['lcc']:.4f} clean-normal {clean['predicted']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
