"""Where a folder's `haaqi score` time goes: each stage of the engine timed alone, in one process.

Decoding (the engine's reader), the whole preparation of a file (decoding, level metering, resampling
to 24 kHz, windowing: `prepare_file` and `window_chunks`, as `haaqi score` runs them), and the network on all of the folder's windows at 1 and at N torch threads; with the CPU seconds they
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
import torch

from haaqicli import audio
from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.engine import prepare_file, window_chunks
from haaqicli.models.registry import load_model
from haaqicli.scoring.network import WindowScorer
from haaqicli.scoring.options import ScoreOptions


def timed(function) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def decode_only(paths: list[str]) -> None:
    """Every block of every file through the engine's reader (`AudioSource.blocks`), nothing else."""
    for path in paths:
        for _ in audio.open_audio(path).blocks():
            pass


def prepared_windows(items: list[audio.InputFile], options: ScoreOptions) -> list[np.ndarray]:
    """Each file's windows (channels, n, samples) as `haaqi score` makes them: held, or decoded again
    in chunks for a file longer than `options.hold_seconds`."""
    out = []
    for item in items:
        # the content hash is given, so the file's hashing (another thread in `haaqi score`) is left out
        prepared = prepare_file(replace(item, content_hash="-"), options)
        if prepared.error:
            raise SystemExit(prepared.error)
        chunks = [windows for windows, _, _ in window_chunks(prepared, options, options.batch_size)]
        out.append(np.concatenate(chunks, axis=1))
    return out


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
    options = ScoreOptions()
    torch.set_num_threads(1)
    decode_s = timed(lambda: decode_only(paths))
    held: list[np.ndarray] = []
    prepare_s = timed(lambda: held.extend(prepared_windows(items, options)))
    model, _ = load_model(args.model, device="cpu")
    scorer = WindowScorer(model, torch.device("cpu"), options.batch_size)
    gram = np.asarray([BUILTIN_PROFILES[args.profile].left.as_array()], dtype=np.float32)
    units = [(windows[channel], gram) for windows in held for channel in range(windows.shape[0])]
    n_windows = sum(len(unit[0]) for unit in units)
    network_s = timed(lambda: scorer.score_units(units))
    torch.set_num_threads(args.threads)
    rows = [("decode only (the engine's reader), 1 thread", decode_s),
            ("prepare: decode, level, resample, windows, 1 thread", prepare_s),
            (f"network ({args.model}), {n_windows} windows, 1 thread", network_s),
            (f"network ({args.model}), {n_windows} windows, {args.threads} threads",
             timed(lambda: scorer.score_units(units)))]
    print(f"{len(paths)} files, {seconds:.0f} s of audio ({args.folder}); {os.cpu_count()} cores")
    for name, wall in rows:
        print(f"  {name:<58} {wall:6.2f} s")
    cpu = prepare_s + network_s
    print(f"  {'prepare + network, CPU seconds at one thread each':<58} {cpu:6.2f} s "
          f"(at best {cpu / (os.cpu_count() or 1):.2f} s of wall time on every core, start-up not counted)")


if __name__ == "__main__":
    main()
