"""How far `--precision int8` moves each model's scores from float32, item by item, on validation-real.

Writes data/results/int8.json (scripts/model_card.py quotes it): per model, the mean, 99th percentile and
largest |int8 - float32| over the items, and both precisions' metrics (`evaluation_metrics`).
Run from the repository root, on a quiet machine (it scores every item twice per model):
    .venv/bin/python scripts/int8-check.py [--split validation-real] [--exclude-package ufoai-music]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from haaqicli.models.registry import load_model
from haaqicli.training.train import evaluation_metrics, evaluation_split, predict_with_terms
from haaqicli.util.atomic import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="labels/manifest.parquet")
    parser.add_argument("--split", default="validation-real")
    parser.add_argument("--exclude-package", action="append", default=None,
                        help="packages left out (default: ufoai-music, which chose the checkpoints)")
    parser.add_argument("--model", action="append", default=None, help="default: distilled and teacher")
    parser.add_argument("--out", default="data/results/int8.json")
    args = parser.parse_args()
    excluded = args.exclude_package if args.exclude_package is not None else ["ufoai-music"]

    data = evaluation_split(args.manifest, args.split, excluded)
    labels = data.labels.numpy()
    result: dict = {"split": args.split, "excluded": excluded, "n": len(data), "models": {}}
    for name in args.model or ["distilled", "teacher"]:
        predicted = {}
        for precision in ("float32", "int8"):
            model, info = load_model(name, device="cpu", precision=precision)
            predicted[precision], _ = predict_with_terms(model, data, 32)
        delta = np.abs(predicted["int8"] - predicted["float32"])
        result["models"][name] = {
            "sha256": info.sha256,
            "mean_abs": float(delta.mean()), "p99_abs": float(np.quantile(delta, 0.99)), "max_abs": float(delta.max()),
            **{precision: evaluation_metrics(data.meta.assign(predicted=scores, label=labels))
               for precision, scores in predicted.items()},
        }
        print(f"{name}: n={len(delta)} mean |int8-float32| {delta.mean():.4f}, p99 {np.quantile(delta, 0.99):.4f}, "
              f"max {delta.max():.4f}", flush=True)
    atomic_write(Path(args.out), lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
