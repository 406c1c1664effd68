#!/usr/bin/env python3
"""Ship a model trained into an experiment's registry under a release name (sha256 checked on load).

    PYTHONPATH=src .venv/bin/python scripts/promote-model.py data/results/ablation/weights ablation-ranking distilled

Then fit its intervals again (`haaqi calibrate ... --write`) and pin its scores
(`tests/test_shipped_models.py --pin`): both belong to the weights' sha256.
"""

from __future__ import annotations

import argparse

from haaqicli.models.registry import promote_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("source_dir", help="registry folder the model was trained into")
    parser.add_argument("source", help="its name there")
    parser.add_argument("name", help="release name (teacher, distilled)")
    parser.add_argument("--weights-dir", default=None, help="release registry [default: weights/]")
    args = parser.parse_args(argv)
    info = promote_model(args.source, args.source_dir, args.name, args.weights_dir)
    print(f"{args.source_dir}/{args.source} -> {info.name} ({info.file}, sha256 {info.sha256[:12]}, "
          f"{info.n_params:,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
