"""Where a folder's `haaqi score` time goes: each stage of the engine timed alone, in one process.

Decoding, the whole preparation of a file (decoding, level metering, resampling to 24 kHz, windowing),
and the network on all of the folder's windows at 1 and at N torch threads; with the CPU seconds they
sum to, set beside the machine's cores, this says whether a whole-process time can still fall without
doing less work. Run on a quiet machine, from the repository root:
    .venv/bin/python scripts/score-phases.py data/bench/long-8x180s [--model distilled] [--profile mild]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import soundfile as sf
import torch

from haaqicli import audio
from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.engine import WindowScorer, prepare_file
from haaqicli.models.registry import load_model
from haaqicli.scoring.options import ScoreOptions


def timed(function) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def decode_only(paths: list[str]) -> None:
    """libsndfile's decoding alone, as the engine reads files (16-bit PCM as integers)."""
    for path in paths:
        with sf.SoundFile(path) as handle:
            dtype = "int16" if handle.subtype == "PCM_16" else "float32"
            while len(handle.read(1 << 16, dtype=dtype, always_2d=True)):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--model", default="distilled")
    parser.add_argument("--profile", default="mild")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the N of the last row")
    args = parser.parse_args()

    items = audio.discover([args.folder])
    paths = [str(item.path) for item in items]
    seconds = sum(audio.open_audio(path).info.duration_s for path in paths)
    torch.set_num_threads(1)
    rows = [("decode only (libsndfile), 1 thread", timed(lambda: decode_only(paths)))]
    prepared = []
    # the content hash is given, so the file's hashing (another thread in `haaqi score`) is left out
    rows.append(("prepare: decode, level, resample, windows, 1 thread",
                 timed(lambda: prepared.extend(prepare_file(replace(item, content_hash="-"), ScoreOptions())
                                               for item in items))))
    failed = [p.input.path for p in prepared if p.error]
    if failed:
        raise SystemExit(f"cannot prepare {failed[0]}")
    model, _ = load_model(args.model, device="cpu")
    scorer = WindowScorer(model, torch.device("cpu"), ScoreOptions().batch_size)
    gram = np.asarray([BUILTIN_PROFILES[args.profile].left.as_array()], dtype=np.float32)
    units = [(p.windows[channel], gram) for p in prepared for channel in range(p.windows.shape[0])]
    windows = sum(len(unit[0]) for unit in units)
    rows.append((f"network ({args.model}), {windows} windows, 1 thread", timed(lambda: scorer.score_units(units))))
    torch.set_num_threads(args.threads)
    rows.append((f"network ({args.model}), {windows} windows, {args.threads} threads",
                 timed(lambda: scorer.score_units(units))))
    print(f"{len(paths)} files, {seconds:.0f} s of audio ({args.folder}); {os.cpu_count()} cores")
    for name, wall in rows:
        print(f"  {name:<58} {wall:6.2f} s")
    cpu = rows[1][1] + rows[2][1]
    print(f"  {'prepare + network, CPU seconds at one thread each':<58} {cpu:6.2f} s "
          f"(at best {cpu / (os.cpu_count() or 1):.2f} s of wall time on every core, start-up not counted)")


if __name__ == "__main__":
    main()
