#!/usr/bin/env python3
"""Average the weights of models fine-tuned from one start (a uniform "model soup", Wortsman et al. 2022).

    PYTHONPATH=src .venv/bin/python scripts/average-weights.py --out data/exp/soupw --name distilled \\
        data/exp/s60w:distilled data/exp/s61w:distilled

Each source is REGISTRY:NAME, loaded with its sha256 checked; all must share an architecture and config.
The result is registered in --out with the sources' sha256 and training records, so it can be evaluated
(`haaqi evaluate --weights-dir OUT`) and promoted like any trained model. Averaging only makes sense for
models that started from the same weights: they then sit in one basin of the loss, where the mean of
their weights is a model too.
"""

from __future__ import annotations

import argparse
import sys

import torch

from haaqicli.models.registry import ModelInfo, load_model, save_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("sources", nargs="+", help="REGISTRY:NAME of each model to average (two or more)")
    parser.add_argument("--out", required=True, help="registry folder the average is written to")
    parser.add_argument("--name", required=True, help="its name there")
    args = parser.parse_args(argv)
    if len(args.sources) < 2:
        parser.error("give two or more REGISTRY:NAME sources")
    loaded = []
    for source in args.sources:
        folder, _, name = source.rpartition(":")
        if not folder or not name:
            parser.error(f"{source}: expected REGISTRY:NAME")
        loaded.append(load_model(name, weights_dir=folder))
    first_model, first_info = loaded[0]
    for (_, info), source in zip(loaded[1:], args.sources[1:], strict=True):
        if info.arch != first_info.arch or info.config != first_info.config:
            parser.error(f"{source}: another architecture or config than {args.sources[0]}")
    states = [model.state_dict() for model, _ in loaded]
    average = {key: (torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
                     if value.is_floating_point() else value)
               for key, value in states[0].items()}
    first_model.load_state_dict(average)
    training = {
        "average_of": [{"source": source, "sha256": info.sha256, "training": info.training, "metrics": info.metrics}
                       for source, (_, info) in zip(args.sources, loaded, strict=True)],
        "items": max(info.training.get("items", 0) for _, info in loaded),
        "packages": sorted({p for _, info in loaded for p in info.training.get("packages", [])}),
        "spl_range": first_info.training.get("spl_range"),
    }
    info = save_model(first_model, ModelInfo(name=args.name, arch=first_info.arch, config=first_info.config,
                                             file=f"{args.name}.safetensors", training=training), args.out)
    print(f"{args.out}/{info.name}: mean of {len(loaded)} models ({info.n_params:,} parameters, "
          f"sha256 {info.sha256[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
