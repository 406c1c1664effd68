"""`haaqi bench`: end-to-end speed against pyclarity's HAAQI, measured in the same run.

Throughput is reported as a multiple of real time (seconds of audio scored per wall-clock second),
including decoding and resampling, and as a ratio to pyclarity's intrusive HAAQI on the same machine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
import torch

from haaqicli.audio import synth
from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.engine import score_inputs
from haaqicli.models.registry import load_model, measure_throughput
from haaqicli.reference.parallel import thread_count
from haaqicli.scoring import ScoreOptions
from haaqicli.util.executor import parse_local

BATCH_CLIPS = 8  # clips per call in the labelling-engine rows


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


def time_model_only(model: str, device: str, batch_size: int, repeats: int, precision: str = "float32") -> BenchRow:
    """The network alone (fbank included) on one batch of 6-s windows: the models' own throughput,
    without decoding, resampling and per-file work, which both models share."""
    network, info = load_model(model, device=device, precision=precision)
    speed = measure_throughput(network, batch=batch_size, threads=None, repeats=max(3, repeats), device=device)
    audio_seconds = batch_size * info.window_s
    label = model if precision == "float32" else f"{model}, {precision}"
    return BenchRow(f"{label} ({device}, model only)", audio_seconds, audio_seconds / speed["realtime_factor"])


def time_reference(seconds: float, repeats: int, sample_rate: int = 44100) -> tuple[list[BenchRow], dict]:
    """Our exact HAAQI and pyclarity's (when installed) on the same clip, same rate, timed alternately."""
    # lazy: numba, scipy only where this path runs (start-up time)
    from haaqicli.reference.bench import benchmark_batch, benchmark_reference

    measured = benchmark_reference(seconds=seconds, repeats=repeats, sample_rate=sample_rate)
    rows = [BenchRow(f"exact HAAQI, ours (cpu, {thread_count()} threads)", seconds, measured["ours_seconds"])]
    if "pyclarity_seconds" in measured:
        rows.append(BenchRow("pyclarity HAAQI (cpu)", seconds, measured["pyclarity_seconds"]))
    # the labelling engine: many clips per call (processes on the CPU, one torch batch on a GPU)
    batches = [("cpu", f"exact HAAQI, ours, {BATCH_CLIPS} clips (cpu, {os.cpu_count()} processes)")]
    if torch.cuda.is_available():
        batches.append(("cuda", f"exact HAAQI, ours, {BATCH_CLIPS} clips (cuda, one batch)"))
    for device, label in batches:
        batch = benchmark_batch(seconds, BATCH_CLIPS, sample_rate, device=device, repeats=repeats)
        measured[f"batch_{device}"] = {k: v for k, v in batch.items() if k != "scores"}
        rows.append(BenchRow(label, seconds * BATCH_CLIPS, batch["wall_seconds"]))
    return rows, measured


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
        for model in models:
            rows.append(time_model_only(model, device, batch_size, repeats))
        if device == "cpu":  # int8 kernels are CPU only
            for model in models:
                rows.append(time_model_only(model, device, batch_size, repeats, precision="int8"))
    result: dict = {"cpu_threads": torch.get_num_threads(), "files": n_files, "file_seconds": seconds}
    reference_rows, reference = time_reference(pyclarity_seconds, repeats)
    rows.extend(reference_rows)
    result["reference"] = reference
    oracle = reference_rows[1] if len(reference_rows) > 1 else None
    baseline = oracle.realtime if oracle is not None else None
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
    reference = result.get("reference", {})
    if "speedup" in reference:
        lines.append(
            f"exact HAAQI vs pyclarity on one {reference['seconds']:g}-s clip at {reference['sample_rate']} Hz: "
            f"{reference['speedup_wall']:.1f}x wall, {reference['speedup']:.1f}x CPU time; "
            f"scores {reference['ours_score']:.6f} vs {reference['pyclarity_score']:.6f}"
        )
    return "\n".join(lines)


def run_cluster_bench(folder: Path, scheduler: str, n_files: int = 8, seconds: float = 30.0,
                      model: str = "distilled", batch_size: int = 16, repeats: int = 2) -> dict:
    """Throughput of `haaqi score --scheduler` on the same synthetic files: with 1 and with N workers
    for ``local:N`` (and their ratio), or with every worker of a running cluster for an address. Each
    row is the best of ``repeats`` runs after a warm-up that loads the model on every worker; the
    workers score on the CPU, one thread each."""
    audio_seconds = make_bench_folder(folder, n_files, seconds)
    options = ScoreOptions(model=model, device="cpu", batch_size=batch_size, mix="mono")
    profiles = [BUILTIN_PROFILES["mild"]]
    local = parse_local(scheduler)
    rows: list[BenchRow] = []
    for workers in ([1, local] if local and local > 1 else [local]):
        cluster, address = _bench_cluster(workers) if workers else (None, scheduler)
        try:
            score_inputs([folder], profiles, options, progress=False, scheduler=address)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                run = score_inputs([folder], profiles, options, progress=False, scheduler=address)
                if run.n_failed:
                    raise RuntimeError(f"bench: scoring failed: {run.table['error'].iloc[0]}")
                best = min(best, run.seconds)
            name = f"{model}, {workers} worker{'s' if workers != 1 else ''}" if workers else f"{model}, {scheduler}"
            rows.append(BenchRow(name, audio_seconds, best))
        finally:
            if cluster is not None:
                cluster.close()
    result: dict = {"scheduler": scheduler, "files": n_files, "file_seconds": seconds, "model": model,
                    "rows": [row.to_dict() for row in rows]}
    if len(rows) == 2:
        result["scaling"] = rows[1].realtime / rows[0].realtime
        result["per_worker_x_realtime"] = rows[0].realtime
    return result


def _bench_cluster(workers: int):  # type: ignore[no-untyped-def]
    # lazy: dask.distributed is an optional dependency, needed on this path only
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return cluster, cluster.scheduler_address


def format_cluster_bench(result: dict) -> str:
    lines = [f"{'what':34s} {'audio s':>9s} {'wall s':>9s} {'x real time':>12s} {'files/s':>9s}"]
    for row in result["rows"]:
        lines.append(f"{row['name']:34s} {row['audio_seconds']:9.1f} {row['wall_seconds']:9.3f} "
                     f"{row['x_realtime']:12.1f} {result['files'] / row['wall_seconds']:9.2f}")
    if "scaling" in result:
        workers = result["rows"][1]["name"].split(", ")[1]
        lines.append(f"scaling {workers} / 1 worker: {result['scaling']:.2f}x "
                     f"(per worker: {result['per_worker_x_realtime']:.1f}x real time)")
    lines.append(f"({result['files']} stereo files of {result['file_seconds']} s, scored mono on the CPU, "
                 f"one thread per worker)")
    return "\n".join(lines)
