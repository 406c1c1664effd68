#!/usr/bin/env python3
"""Build the calibration set of the predicted-score intervals (seeded, resumable).

    PYTHONPATH=src .venv/bin/python scripts/calibration-set.py            # both packages, both models
    haaqi calibrate --model distilled --fit data/calibration/ufoai-music.parquet \\
        --check data/calibration/nexuiz-music.parquet --write

Downloads ufoai-music and nexuiz-music with `apt-get download` into data/calibration/ (git-ignored),
cuts clips, degrades them with the training sampler, labels every version for the profiles normal,
N1-N4, S1-S2 with the exact HAAQI and scores it with the shipped models. See
haaqicli.data.calibration_set for the layout; a rerun continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from haaqicli.data.calibration_set import SetConfig, build_package_set, fetch_package
from haaqicli.data.packages import CALIBRATION_PACKAGES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--root", type=Path, default=Path("data/calibration"))
    parser.add_argument("--package", action="append", choices=CALIBRATION_PACKAGES, default=None)
    parser.add_argument("--model", action="append", default=None, help="models to predict with [teacher, distilled]")
    parser.add_argument("--clips", type=int, default=SetConfig.clips, help="clips per package")
    parser.add_argument("--variants", type=int, default=SetConfig.variants, help="versions per clip (first clean)")
    parser.add_argument("--seed", type=int, default=SetConfig.seed)
    parser.add_argument("--workers", type=int, default=SetConfig.workers, help="labelling processes")
    args = parser.parse_args(argv)
    config = SetConfig(clips=args.clips, variants=args.variants, seed=args.seed, workers=args.workers)
    models = args.model or ["teacher", "distilled"]
    for package in args.package or list(CALIBRATION_PACKAGES):
        fetch_package(package, args.root)
        started = time.time()

        def progress(done: int, total: int, package: str = package, started: float = started) -> None:
            print(f"{package}: {done}/{total} clips ({time.time() - started:.0f} s)", flush=True)

        table = build_package_set(args.root / "corpus", package, args.root / f"{package}.parquet", models, config,
                                  on_clip=progress)
        print(f"{package}: {len(table)} items, {table['clip_id'].nunique()} clips -> "
              f"{args.root / f'{package}.parquet'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
