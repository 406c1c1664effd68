#!/usr/bin/env python3
"""Average the weights of models fine-tuned from one start (a uniform "model soup", Wortsman et al. 2022).

    PYTHONPATH=src .venv/bin/python scripts/average-weights.py --out data/exp/soupw --name distilled \\
        data/exp/s60w:distilled data/exp/s61w:distilled

Each source is REGISTRY:NAME, loaded with its sha256 checked (haaqicli.models.registry.average_models);
the result can be evaluated (`haaqi evaluate --weights-dir OUT`) and promoted like any trained model.
"""

from __future__ import annotations

import argparse
import sys

from haaqicli.models.registry import average_models, registry_source
from haaqicli.util.errors import HaaqiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("sources", nargs="+", type=registry_source, help="REGISTRY:NAME of each model to average (two or more)")
    parser.add_argument("--out", required=True, help="registry folder the average is written to")
    parser.add_argument("--name", required=True, help="its name there")
    args = parser.parse_args(argv)
    try:
        info = average_models(args.sources, args.name, args.out)
    except HaaqiError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{args.out}/{info.name}: mean of {len(args.sources)} models ({info.n_params:,} parameters, sha256 {info.sha256[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
