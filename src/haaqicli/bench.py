"""`haaqi bench`: end-to-end speed against pyclarity's HAAQI, measured in the same run.

Throughput is reported as a multiple of real time (seconds of audio scored per wall-clock second),
including decoding and resampling, and as a ratio to pyclarity's intrusive HAAQI on the same machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from haaqicli import synth
from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.constants import AUDIOGRAM_FREQUENCIES


@dataclass
class BenchRow:
    name: str
    audio_seconds: float
    wall_seconds: float

    @property
    def realtime(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-12)

    def to_dict(self) -> dict:
        return {**asdict(self), "x_realtime": self.realtime}


def make_bench_folder(folder: Path, n_files: int = 8, seconds: float = 30.0, sample_rate: int = 44100) -> float:
    """Write stereo music-like WAV files; returns their total duration in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_files):
        audio = synth.music(seconds, sample_rate, channels=2, seed=index)
        sf.write(folder / f"track{index:02d}.wav", audio.T, sample_rate, subtype="PCM_16")
    return n_files * seconds


def time_model(folder: Path, model: str, device: str, batch_size: int, workers: int, repeats: int) -> BenchRow:
    """Best of `repeats` end-to-end scoring runs of a folder (decode + resample + model)."""
    from haaqicli.engine import ScoreOptions, score_inputs

    options = ScoreOptions(model=model, device=device, batch_size=batch_size, workers=workers, mix="mono")
    profiles = [BUILTIN_PROFILES["mild"]]
    score_inputs([folder], profiles, options, progress=False)  # warm-up: model load, caches
    best = None
    audio_seconds = 0.0
    for _ in range(repeats):
        run = score_inputs([folder], profiles, options, progress=False)
        if run.n_failed:
            raise RuntimeError(f"bench: scoring failed: {run.table['error'].iloc[0]}")
        audio_seconds = run.audio_seconds
        best = run.seconds if best is None else min(best, run.seconds)
    label = f"{model} ({device})"
    return BenchRow(label, audio_seconds, float(best))


def time_pyclarity(seconds: float, sample_rate: int = 44100) -> tuple[BenchRow, float] | None:
    """pyclarity's intrusive HAAQI on one clip (it is slow, so one call). None if not installed."""
    try:
        from clarity.evaluator.haaqi import compute_haaqi as clarity_haaqi
        from clarity.utils.audiogram import Audiogram as ClarityAudiogram
    except ImportError:
        return None
    reference = synth.music(seconds, sample_rate, seed=1)[0]
    processed = synth.lowpass(reference, sample_rate, 5000)
    profile = BUILTIN_PROFILES["mild"].left
    audiogram = ClarityAudiogram(levels=np.array(profile.levels), frequencies=np.array(AUDIOGRAM_FREQUENCIES))
    level1 = 65 - 20 * np.log10(np.sqrt(np.mean(reference**2)))
    started = time.perf_counter()
    score = clarity_haaqi(processed, reference, sample_rate, sample_rate, audiogram, 1, level1)
    return BenchRow("pyclarity HAAQI (cpu)", seconds, time.perf_counter() - started), float(score)


def run_bench(
    folder: Path,
    n_files: int = 8,
    seconds: float = 30.0,
    models: tuple[str, ...] = ("distilled", "teacher"),
    batch_size: int = 16,
    workers: int = 1,
    repeats: int = 2,
    pyclarity_seconds: float = 10.0,
    threads: int | None = None,
) -> dict:
    """Run every timing and return a JSON-able summary."""
    if threads:
        torch.set_num_threads(threads)
    make_bench_folder(folder, n_files, seconds)
    rows: list[BenchRow] = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for model in models:
            rows.append(time_model(folder, model, device, batch_size, workers, repeats))
    result: dict = {"cpu_threads": torch.get_num_threads(), "files": n_files, "file_seconds": seconds}
    oracle = time_pyclarity(pyclarity_seconds)
    try:
        from haaqicli.reference.bench import benchmark_reference

        ours = benchmark_reference(seconds=pyclarity_seconds, with_oracle=False)
        rows.append(BenchRow("exact HAAQI, ours (cpu)", pyclarity_seconds, float(ours["ours_seconds"])))
    except ImportError:
        pass
    if oracle is not None:
        rows.append(oracle[0])
        result["pyclarity_score"] = oracle[1]
    baseline = oracle[0].realtime if oracle is not None else None
    result["rows"] = [
        {**row.to_dict(), "x_pyclarity": (row.realtime / baseline) if baseline else None} for row in rows
    ]
    return result


def format_bench(result: dict) -> str:
    lines = [
        f"{'what':34s} {'audio s':>9s} {'wall s':>9s} {'x real time':>12s} {'x pyclarity':>12s}",
    ]
    for row in result["rows"]:
        ratio = f"{row['x_pyclarity']:.1f}" if row["x_pyclarity"] else "-"
        lines.append(
            f"{row['name']:34s} {row['audio_seconds']:9.1f} {row['wall_seconds']:9.3f} "
            f"{row['x_realtime']:12.1f} {ratio:>12s}"
        )
    lines.append(f"(torch threads: {result['cpu_threads']}; {result['files']} stereo files of {result['file_seconds']} s)")
    return "\n".join(lines)
