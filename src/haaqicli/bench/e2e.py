"""End-to-end benchmarks: the `haaqi` command run as a user runs it, as a subprocess, on generated
folders, timed as whole processes (start-up included), beside pyclarity in the same run.

Rows:
- start-up: `haaqi --help`, `haaqi models`, and `haaqi score` of one short file (time to its row);
- `haaqi score` of many short files and of a few 3-minute stereo files, each model, in float32 and
  with `--precision int8`;
- `haaqi reference --pairs` on generated pairs of 6-s clips at 44.1 kHz against pyclarity's
  `compute_haaqi` on the same pairs in as many worker processes, one call per pair and audiogram, after
  one warm-up call per worker, imports not counted.
Our rows are timed after a first, cold invocation (reported beside them) as the median of `warm_runs`
more (numba's on-disk cache and the OS file cache warm): one process's wall time varies by a few tenths
of a second from run to run, as much as the marginal rate's difference of two rows. Every row says whether another heavy job (labelling, training,
rendering, another test run) was running, and the load average, since this often runs on shared machines.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from haaqicli.audio import synth
from haaqicli.audiogram import resolve_profiles
from haaqicli.util import allocator

PROFILE = "mild"  # one symmetric profile (the label convention's listener)
# Command lines that mean a heavy job shares the machine (searched in /proc/*/cmdline). Training is
# matched as a haaqi subcommand, so a labelling run's `--split train` is not taken for training.
HEAVY_JOBS = {
    "labelling": re.compile(r"dataset label|calibration-set\.py"),  # the latter labels its clips too
    "training": re.compile(r"(haaqi|haaqicli\.cli)\s+(train|pretrain|distill|correct|evaluate|ablate)\b"
                           r"|haaqicli\.train|train-models\.sh"),
    "rendering": re.compile(r"fluidsynth|install-corpus|(haaqi|haaqicli\.cli)\s+corpus\b"),
    "data preparation": re.compile(r"dataset\s+(build|export|verify)\b"),
    "tests": re.compile(r"pytest"),
    "bench": re.compile(r"haaqi bench"),
}


def heavy_jobs_in(cmdline: str) -> set[str]:
    """The kinds of heavy job (HEAVY_JOBS) that one process's command line runs."""
    if "bench.e2e" in cmdline:  # this benchmark's own subprocesses
        return set()
    return {job for job, pattern in HEAVY_JOBS.items() if pattern.search(cmdline)}


@dataclass
class Row:
    name: str
    command: str
    audio_seconds: float
    wall_seconds: float  # the median of the warm invocations (after the first)
    cold_seconds: float | None = None  # the first invocation
    baseline_seconds: float | None = None  # pyclarity on the same work, where there is one
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def x_realtime(self) -> float | None:
        return self.audio_seconds / self.wall_seconds if self.audio_seconds else None

    @property
    def x_pyclarity(self) -> float | None:
        return self.baseline_seconds / self.wall_seconds if self.baseline_seconds else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "x_realtime": self.x_realtime, "x_pyclarity": self.x_pyclarity}


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (None where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = 1.0) -> float | None:
    """Cores in use by the whole machine over the next ``sample_s`` seconds. The benchmark calls it
    between its own runs, so it measures other work; the load average would still count the runs the
    benchmark itself just made for a minute after them."""
    before = _cpu_ticks()
    time.sleep(sample_s)
    after = _cpu_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def _stopped(stat: str) -> bool:
    """Whether /proc/PID/stat says the process is stopped (state T, or t when traced); the state follows
    the command name in brackets, which may itself hold spaces or brackets."""
    fields = stat[stat.rfind(")") + 1:].split()
    return bool(fields) and fields[0] in ("T", "t")


def process_heavy_jobs(proc: Path) -> set[str]:
    """The heavy jobs that the process at /proc/PID runs, none when it is paused (SIGSTOP, as the README
    pauses labelling for a measurement: it takes no CPU) or gone."""
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        if _stopped((proc / "stat").read_text()):
            return set()
    except OSError:
        return set()
    return heavy_jobs_in(cmdline)


def machine_load(sample_s: float = 1.0) -> dict[str, Any]:
    """The 1-minute load average, the cores busy now (sampled for ``sample_s``), and the heavy jobs
    running now (other than this process and its children). Busy: a heavy job, or over half the
    cores in use by others."""
    mine = {os.getpid(), os.getppid()}
    found: set[str] = set()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        found |= process_heavy_jobs(entry)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    in_use = busy_cores(sample_s)
    cores = os.cpu_count() or 1
    crowded = in_use > 0.5 * cores if in_use is not None else load1 > 0.5 * cores
    return {"load1": round(load1, 2), "busy_cores": None if in_use is None else round(in_use, 2),
            "cores": os.cpu_count(), "heavy_jobs": sorted(found), "busy": bool(found) or crowded}


def haaqi_command() -> list[str]:
    """This interpreter running the `haaqi` console script's entry point (`cli.entry`: the same code as
    the installed script, which ends without Python's module teardown)."""
    return [sys.executable, "-c", "from haaqicli.cli import entry; entry()"]


def timed(args: Sequence[str], cwd: Path | None = None) -> float:
    """Wall time of one `haaqi` process; raises when it fails."""
    start = time.perf_counter()
    done = subprocess.run([*haaqi_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=7200)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise RuntimeError(f"haaqi {' '.join(args)} failed: {tail[0]}")
    return seconds


def cold_and_warm(args: Sequence[str], warm_runs: int) -> tuple[float, float]:
    """(first invocation, median of the `warm_runs` invocations after it) wall times."""
    cold = timed(args)
    return cold, float(np.median([timed(args) for _ in range(max(1, warm_runs))]))


# --------------------------------------------------------------------------------------------
# Generated inputs (kept in `folder`, reused when present: generating music takes longer than scoring)


def music_file(folder: Path, index: int, seconds: float, channels: int = 2, sample_rate: int = 44100,
               suffix: str = ".flac") -> None:
    """Generated music file number `index` of a folder (seeded by it), unless it is there already."""
    path = folder / f"track{index:03d}{suffix}"
    if not path.exists():
        audio = synth.music(seconds, sample_rate, channels=channels, seed=index)
        sf.write(path.with_suffix(".part" + suffix), audio.T, sample_rate, subtype="PCM_16",
                 format=suffix.lstrip(".").upper())
        path.with_suffix(".part" + suffix).replace(path)


def music_files(folder: Path, n_files: int, seconds: float, channels: int = 2, sample_rate: int = 44100,
                suffix: str = ".flac") -> float:
    """`n_files` generated music files; returns their total duration."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_files):
        music_file(folder, index, seconds, channels, sample_rate, suffix)
    return n_files * seconds


def reference_pairs(folder: Path, n_pairs: int, seconds: float = 6.0, sample_rate: int = 44100) -> Path:
    """`n_pairs` mono (reference, low-passed) pairs and their pairs CSV."""
    (folder / "ref").mkdir(parents=True, exist_ok=True)
    (folder / "proc").mkdir(parents=True, exist_ok=True)
    lines = ["reference,processed"]
    for index in range(n_pairs):
        ref, proc = folder / "ref" / f"{index:03d}.wav", folder / "proc" / f"{index:03d}.wav"
        if not (ref.exists() and proc.exists()):
            clean = synth.music(seconds, sample_rate, seed=index)[0]
            sf.write(ref, clean, sample_rate, subtype="FLOAT")
            sf.write(proc, synth.lowpass(clean, sample_rate, 2000 + 300 * (index % 20)).astype(np.float32),
                     sample_rate, subtype="FLOAT")
        lines.append(f"ref/{index:03d}.wav,proc/{index:03d}.wav")
    csv = folder / "pairs.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


# --------------------------------------------------------------------------------------------
# pyclarity's baseline


def _pyclarity_worker_start(barrier: Any, warm_up: tuple[str, str]) -> None:
    """Import pyclarity and make one call (not timed), then wait until every worker is ready."""
    _pyclarity_pair(warm_up)
    barrier.wait()


def _pyclarity_pair(pair: tuple[str, str]) -> float:
    """pyclarity's HAAQI of one mono pair for PROFILE's audiogram, presented as `haaqi reference`
    presents it (the reference at 65 dB SPL)."""
    # lazy: pyclarity is an optional dependency, needed on this path only
    from clarity.evaluator.haaqi import compute_haaqi
    from clarity.utils.audiogram import Audiogram

    reference, sr = sf.read(pair[0], dtype="float64")
    processed, _ = sf.read(pair[1], dtype="float64")
    levels = resolve_profiles([PROFILE])[0].left.as_array().astype(float)
    level1 = 65.0 - 20 * np.log10(np.sqrt(np.mean(reference**2)))
    np.random.seed(0)
    return float(compute_haaqi(processed, reference, sr, sr, Audiogram(levels=levels), 1, level1))


def pyclarity_seconds(pairs_csv: Path, workers: int) -> float | None:
    """Wall time of pyclarity's HAAQI over the pairs in `workers` processes (None without pyclarity)."""
    try:
        import clarity.evaluator.haaqi  # noqa: F401
    except ImportError:
        return None
    with pairs_csv.open() as handle:
        pairs = [(str(pairs_csv.parent / row["reference"]), str(pairs_csv.parent / row["processed"]))
                 for row in csv.DictReader(handle)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    with allocator.children_with_default_allocator():  # pyclarity as its users run it
        pool = context.Pool(workers, initializer=_pyclarity_worker_start, initargs=(barrier, pairs[0]))
    with pool:
        barrier.wait(timeout=3600)  # every worker imported pyclarity and made its warm-up call
        start = time.perf_counter()
        pool.map(_pyclarity_pair, pairs, chunksize=1)
        return time.perf_counter() - start


# --------------------------------------------------------------------------------------------


def marginal_row(folder_row: Row, first_row: Row, model: str) -> Row:
    """The rate a large folder sees: the folder's audio beyond the one short file over the wall time
    beyond that file's whole process (start-up, model loading and the first file taken out)."""
    extra_seconds = folder_row.wall_seconds - first_row.wall_seconds
    return Row(f"marginal rate, score ({model}): folder minus first row",
               f"({folder_row.command}) - ({first_row.command})",
               folder_row.audio_seconds - first_row.audio_seconds, max(extra_seconds, 1e-9), None, None,
               folder_row.load)


def run_e2e(folder: Path, short_files: int = 64, short_seconds: float = 10.0, long_files: int = 8,
            long_seconds: float = 180.0, pairs: int = 72, pair_seconds: float = 6.0, workers: int = 2,
            models: Sequence[str] = ("distilled", "teacher"), int8: bool = True,
            warm_runs: int = 3) -> dict[str, Any]:
    """Every end-to-end row (see the module docstring); inputs are generated under `folder`. `int8`:
    also each model's folder rows with `--precision int8`; `warm_runs`: timed invocations per row after
    the cold one (their median is the row's time)."""
    rows: list[Row] = []

    def row(name: str, args: list[str], audio_seconds: float, baseline: float | None = None) -> None:
        load = machine_load()
        cold, warm = cold_and_warm(args, warm_runs)
        rows.append(Row(name, "haaqi " + " ".join(args), audio_seconds, warm, cold, baseline, load))

    one = folder / "one"
    music_files(one, 1, 6.0)
    row("start-up: haaqi --help", ["--help"], 0.0)
    row("start-up: haaqi models", ["models"], 0.0)
    first_row: dict[str, Row] = {}
    for model in models:
        row(f"start-up: first row, score 1 short file ({model})",
            ["score", str(one), "--profile", PROFILE, "--model", model, "-q"], 6.0)
        first_row[model] = rows[-1]
    short = folder / f"short-{short_files}x{short_seconds:g}s"
    total = music_files(short, short_files, short_seconds)
    for model in models:
        row(f"score {short_files} stereo files of {short_seconds:g} s ({model})",
            ["score", str(short), "--profile", PROFILE, "--model", model, "-q", "--out", str(folder / "s.csv")], total)
        if rows[-1].audio_seconds > first_row[model].audio_seconds:
            rows.append(marginal_row(rows[-1], first_row[model], model))
    long = folder / f"long-{long_files}x{long_seconds:g}s"
    total = music_files(long, long_files, long_seconds)
    for model in models:
        row(f"score {long_files} stereo files of {long_seconds:g} s ({model})",
            ["score", str(long), "--profile", PROFILE, "--model", model, "-q", "--out", str(folder / "l.csv")], total)
    for model in models if int8 else ():  # the same folders with the encoder on int8 (--precision int8)
        for name, (files, seconds, path) in {"s": (short_files, short_seconds, short),
                                             "l": (long_files, long_seconds, long)}.items():
            row(f"score {files} stereo files of {seconds:g} s ({model}, int8)",
                ["score", str(path), "--profile", PROFILE, "--model", model, "--precision", "int8", "-q",
                 "--out", str(folder / f"{name}8.csv")], files * seconds)
    pairs_csv = reference_pairs(folder / f"pairs-{pairs}x{pair_seconds:g}s", pairs, pair_seconds)
    load = machine_load()
    baseline = pyclarity_seconds(pairs_csv, workers)
    args = ["reference", "--pairs", str(pairs_csv), "--profile", PROFILE, "--workers", str(workers), "-q",
            "--out", str(folder / "r.csv")]
    cold, warm = cold_and_warm(args, warm_runs)
    rows.append(Row(f"reference {pairs} pairs of {pair_seconds:g} s, 44.1 kHz ({workers} workers)",
                    "haaqi " + " ".join(args), pairs * pair_seconds, warm, cold, baseline, machine_load()))
    if baseline is not None:
        rows.append(Row(f"pyclarity compute_haaqi, same {pairs} pairs ({workers} processes)",
                        "(process pool; imports and one warm-up call per worker not counted)",
                        pairs * pair_seconds, baseline, None, baseline, load))
    return {"rows": [r.to_dict() for r in rows], "python": sys.version.split()[0], "cores": os.cpu_count(),
            "warm_runs": warm_runs}


def format_e2e(result: dict[str, Any]) -> str:
    lines = [f"{'end to end (whole haaqi processes)':58s} {'audio s':>8s} {'wall s':>8s} {'cold s':>8s} "
             f"{'x real time':>11s} {'x pyclarity':>11s}  machine"]
    for row in result["rows"]:
        load = row["load"]
        ratio = f"{row['x_pyclarity']:.1f}" if row["x_pyclarity"] else "-"
        realtime = row["x_realtime"] or float("nan")
        cold = row["cold_seconds"] if row["cold_seconds"] is not None else float("nan")
        others = load.get("busy_cores")
        usage = (f"{others:g} of {load['cores']} cores busy, " if others is not None else "") + f"load {load['load1']:g}"
        machine = (f"LOADED ({usage}"
                   + (f"; {', '.join(load['heavy_jobs'])} running" if load["heavy_jobs"] else "") + ")"
                   if load.get("busy") else f"quiet ({usage})")
        lines.append(
            f"{row['name']:58s} {row['audio_seconds']:8.0f} {row['wall_seconds']:8.2f} "
            f"{cold:8.2f} {realtime:11.1f} {ratio:>11s}  {machine}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:  # python -m haaqicli.bench.e2e FOLDER [JSON]
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0] if args else "data/bench")
    result = run_e2e(folder)
    print(format_e2e(result))
    if len(args) > 1:
        Path(args[1]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
