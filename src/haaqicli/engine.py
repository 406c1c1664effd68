"""The scoring engine: files x profiles -> one row per (file, profile, ear).

Flow per file: stream-decode -> RMS over the whole file (level calibration) -> full-length windows
(the last one is shifted back to end at the file's end, so every window has the trained length and
windows batch across files) -> resample to 24 kHz -> model -> window scores -> aggregation.

The encoder runs once per window; only the small head runs once per profile.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from haaqicli import audio
from haaqicli.audiogram import Profile
from haaqicli.constants import DEFAULT_SPL, HOP_SECONDS, MODEL_SAMPLE_RATE, WINDOW_SECONDS
from haaqicli.errors import HaaqiError
from haaqicli.tables import SCORE_COLUMNS, IncrementalTable, content_hash

# Timelines kept for reports are thinned to at most this many points per row.
MAX_TIMELINE_POINTS = 2000
# Files longer than this are streamed in the main process instead of prefetched by workers,
# so a 2-hour file never sits whole in memory.
PREFETCH_MAX_SECONDS = 20 * 60.0
# Windows resampled per call: one filter pass over many windows, little raw audio held.
RESAMPLE_BATCH = 16


@dataclass
class ScoreOptions:
    model: str = "distilled"
    device: str = "auto"
    batch_size: int = 16
    workers: int = 1
    spl: float = DEFAULT_SPL
    mix: str = "stereo"  # "stereo": channel i scored with ear i; "mono": downmix first
    window_s: float = WINDOW_SECONDS
    hop_s: float = HOP_SECONDS
    beats_checkpoint: str | None = None
    weights_dir: str | None = None


@dataclass
class ScoreRun:
    table: pd.DataFrame
    timelines: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    audio_seconds: float = 0.0
    interrupted: bool = False

    @property
    def n_failed(self) -> int:
        return int((self.table["status"] != "ok").sum()) if len(self.table) else 0


@dataclass
class PreparedFile:
    """One file decoded into model-ready windows (or the error that stopped it)."""

    input: audio.InputFile
    ears: list[str] = field(default_factory=list)  # one entry per scored channel
    windows: np.ndarray | None = None  # (channels, n_windows, window_samples) at 24 kHz, calibrated
    starts_s: np.ndarray | None = None
    ends_s: np.ndarray | None = None
    duration_s: float = float("nan")
    sample_rate: int = 0
    channels: int = 0
    content_hash: str = ""
    error: str = ""


def ears_for(channels: int, mix: str) -> list[str]:
    """Which ear each scored channel is heard by."""
    if mix == "mono" or channels == 1:
        return ["both"]
    return ["left", "right"]


def prepare_file(
    item: audio.InputFile, options: ScoreOptions, model_sample_rate: int = MODEL_SAMPLE_RATE
) -> PreparedFile:
    """Decode, calibrate, window and resample one file. Errors become the row's reason."""
    prepared = PreparedFile(input=item)
    # hashlib releases the GIL, so the file is hashed on another core while it is decoded
    hashing = _hash_pool().submit(content_hash, item.path)
    try:
        source = audio.open_audio(item.path)
        info = source.info
        prepared.duration_s = info.duration_s
        prepared.sample_rate = info.sample_rate
        prepared.channels = info.channels
        prepared.ears = ears_for(info.channels, options.mix)
        # One decoding pass: windows are collected (and resampled a batch at a time) while the level
        # is metered; the presentation gain is applied afterwards (resampling is linear).
        meter = audio.LevelMeter(info.channels, str(item.path))
        pending: list[np.ndarray] = []
        resampled: list[np.ndarray] = []
        starts, ends = [], []

        def flush() -> None:
            length = min(w.shape[-1] for w in pending)  # only a short last window can differ
            batch = np.stack([w[..., :length] for w in pending]) if len(pending) > 1 else pending[0][None]
            resampled.extend(audio.resample(batch, info.sample_rate, model_sample_rate))
            pending.clear()

        mono = len(prepared.ears) == 1
        for window in audio.iter_windows(source, options.window_s, options.hop_s, meter=meter, downmix=mono):
            pending.append(window.samples if mono else window.samples[:2])
            starts.append(window.start_s)
            ends.append(window.end_s)
            if len(pending) == RESAMPLE_BATCH:
                flush()
        if pending:
            flush()
        gain = audio.presentation_gain(audio.overall_rms(meter.rms()), options.spl)
        length = min(w.shape[1] for w in resampled)
        prepared.windows = np.stack([w[:, :length] for w in resampled], axis=1).astype(np.float32)
        prepared.windows *= np.float32(gain)
        prepared.starts_s = np.array(starts, dtype=np.float64)
        prepared.ends_s = np.array(ends, dtype=np.float64)
        prepared.content_hash = hashing.result()
    except HaaqiError as error:
        prepared.error = str(error)
    except Exception as error:  # a batch never dies because of one file
        prepared.error = f"{item.path}: {type(error).__name__}: {error}"
    if not prepared.content_hash:
        try:
            prepared.content_hash = hashing.result()
        except OSError:
            pass  # the decoding error already names the file
    return prepared


@functools.lru_cache(maxsize=1)
def _hash_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="haaqi-hash")


def aggregate(scores: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray) -> dict[str, float]:
    """Length-weighted mean, min and 10th percentile of window scores, and the worst window."""
    weights = np.maximum(ends_s - starts_s, 1e-9)
    worst = int(np.argmin(scores))
    return {
        "score": float(np.sum(scores * weights) / np.sum(weights)),
        "score_min": float(scores[worst]),
        "score_p10": float(np.percentile(scores, 10)),
        "worst_start_s": float(starts_s[worst]),
        "worst_end_s": float(ends_s[worst]),
    }


def stitch_timeline(
    frames: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Join per-window frame scores into one timeline; in overlaps each frame comes from the window
    whose centre is nearest, so nothing is counted twice."""
    times, values = [], []
    n_windows, n_frames = frames.shape
    centres = (starts_s + ends_s) / 2
    for k in range(n_windows):
        t = starts_s[k] + (np.arange(n_frames) + 0.5) * (ends_s[k] - starts_s[k]) / n_frames
        nearest = np.argmin(np.abs(t[:, None] - centres[None, :]), axis=1) == k
        times.append(t[nearest])
        values.append(frames[k][nearest])
    t_all, v_all = np.concatenate(times), np.concatenate(values)
    order = np.argsort(t_all, kind="stable")
    t_all, v_all = t_all[order], v_all[order]
    if len(t_all) > MAX_TIMELINE_POINTS:
        step = math.ceil(len(t_all) / MAX_TIMELINE_POINTS)
        t_all, v_all = t_all[::step], v_all[::step]
    return t_all.astype(np.float32), v_all.astype(np.float32)


class WindowScorer:
    """Runs the model over windows: encoder once per window, head once per audiogram."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = max(1, batch_size)

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray, audiograms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows (N, T), audiograms (P, 8) -> clip scores (P, N) and frame scores (P, N, F)."""
        clips, frames = [], []
        for start in range(0, len(windows), self.batch_size):
            wave = torch.from_numpy(windows[start : start + self.batch_size]).to(self.device)
            features = self.model.encode(wave)
            clip_p, frame_p = [], []
            for levels in audiograms:
                gram = torch.as_tensor(levels, dtype=torch.float32, device=self.device).expand(len(wave), -1)
                clip_logit, frame_logits = self.model.head(features, gram)
                clip_p.append(torch.sigmoid(clip_logit).float().cpu().numpy())
                frame_p.append(torch.sigmoid(frame_logits).float().cpu().numpy())
            clips.append(np.stack(clip_p))
            frames.append(np.stack(frame_p))
        return np.concatenate(clips, axis=1), np.concatenate(frames, axis=1)


def _error_rows(prepared: PreparedFile, profiles: Sequence[Profile], base: dict) -> list[dict]:
    return [
        {**base, "profile": p.name, "ear": "", "status": "error", "error": prepared.error} for p in profiles
    ]


def score_prepared(
    prepared: PreparedFile, profiles: Sequence[Profile], scorer: WindowScorer, base: dict
) -> tuple[list[dict], dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]]:
    """Rows and timelines for one prepared file."""
    if prepared.error or prepared.windows is None:
        return _error_rows(prepared, profiles, base), {}
    rows, timelines = [], {}
    left = np.stack([p.ear("left").as_array() for p in profiles])
    right = np.stack([p.ear("right").as_array() for p in profiles])
    for channel, ear in enumerate(prepared.ears):
        if ear == "both":
            # A mono signal reaches both ears: score with each ear's audiogram (one encoder pass)
            # and average the ears.
            clip, frames = scorer(prepared.windows[channel], np.concatenate([left, right]))
            n = len(profiles)
            clip, frames = (clip[:n] + clip[n:]) / 2, (frames[:n] + frames[n:]) / 2
        else:
            clip, frames = scorer(prepared.windows[channel], left if ear == "left" else right)
        for index, profile in enumerate(profiles):
            stats = aggregate(clip[index], prepared.starts_s, prepared.ends_s)
            rows.append({**base, "profile": profile.name, "ear": ear, "status": "ok", "error": "", **stats})
            timelines[(prepared.input.relative, profile.name, ear)] = stitch_timeline(
                frames[index], prepared.starts_s, prepared.ends_s
            )
    order = {p.name: i for i, p in enumerate(profiles)}
    rows.sort(key=lambda row: order[row["profile"]])  # stable: ears stay left, right within a profile
    return rows, timelines


def _prepared_stream(
    items: Sequence[audio.InputFile], options: ScoreOptions, sample_rate: int
) -> Iterator[PreparedFile]:
    """Prepared files in input order; joblib workers decode ahead when asked for."""
    if options.workers <= 1:
        for item in items:
            yield prepare_file(item, options, sample_rate)
        return
    parallel = Parallel(n_jobs=options.workers, return_as="generator", prefer="processes")
    yield from parallel(delayed(prepare_file)(item, options, sample_rate) for item in items)


def score_inputs(
    inputs: Sequence[str | Path],
    profiles: Sequence[Profile],
    options: ScoreOptions | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | Callable[[int, int], None] = True,
) -> ScoreRun:
    """Score every discovered file for every profile. Returns the table (SCORE_COLUMNS) and timelines.

    With ``out`` the table is written incrementally and atomically; with ``resume`` rows already done
    (same content hash, profile and model sha256, status ok) are kept and their files skipped.
    """
    from haaqicli.models.registry import load_model, resolve_device

    options = options or ScoreOptions()
    if not profiles:
        raise HaaqiError("no profile given (use --profile)")
    items = audio.discover(inputs)
    device = resolve_device(options.device)
    model, info = load_model(
        options.model, device=device, beats_checkpoint=options.beats_checkpoint, weights_dir=options.weights_dir
    )
    scorer = WindowScorer(model, device, options.batch_size)

    profile_names = [p.name for p in profiles]
    kept, done_hashes = _resumable_rows(out, resume, profile_names, info.sha256)
    table = IncrementalTable(out, SCORE_COLUMNS) if out else None
    if table is not None and len(kept):
        table.add(kept)
    todo = [item for item in items if not done_hashes or content_hash(item.path) not in done_hashes]

    rows: list[dict] = []
    timelines: dict = {}
    started = time.perf_counter()
    audio_seconds = 0.0
    interrupted = False
    report_progress = _progress_callback(progress, len(todo))
    try:
        for count, prepared in enumerate(_prepared_stream(todo, options, info.sample_rate), start=1):
            base = {
                "file": prepared.input.relative,
                "path": str(prepared.input.path),
                "model": info.name,
                "model_sha256": info.sha256,
                "duration_s": prepared.duration_s,
                "sample_rate": prepared.sample_rate,
                "channels": prepared.channels,
                "content_hash": prepared.content_hash,
            }
            file_rows, file_timelines = score_prepared(prepared, profiles, scorer, base)
            rows.extend(file_rows)
            timelines.update(file_timelines)
            if table is not None:
                table.add(file_rows)
            if not prepared.error:
                audio_seconds += prepared.duration_s
            report_progress(count, len(todo))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if table is not None:
            table.close()
        report_progress(-1, len(todo))

    frame = table.frame() if table is not None else pd.DataFrame(rows, columns=SCORE_COLUMNS)
    return ScoreRun(
        table=frame.reindex(columns=SCORE_COLUMNS),
        timelines=timelines,
        seconds=time.perf_counter() - started,
        audio_seconds=audio_seconds,
        interrupted=interrupted,
    )


def _resumable_rows(
    out: str | Path | None, resume: bool, profile_names: Sequence[str], model_sha256: str
) -> tuple[pd.DataFrame, set[str]]:
    """Rows of a previous run to keep, and the content hashes of files that need no new scoring:
    those with an ok row for every requested profile under the same model."""
    from haaqicli.tables import read_table

    if not (resume and out and Path(out).exists()):
        return pd.DataFrame(columns=SCORE_COLUMNS), set()
    previous = read_table(out)
    ok = previous[(previous["status"] == "ok") & (previous["model_sha256"] == model_sha256)]
    ok = ok[ok["profile"].isin(profile_names)]
    complete = ok.groupby("content_hash")["profile"].nunique()
    done = set(complete[complete == len(set(profile_names))].index)
    return ok[ok["content_hash"].isin(done)].reset_index(drop=True), done


def _progress_callback(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int, int], None]:
    """A rich progress bar (files/s and ETA), a caller's callback, or nothing.
    Called with (done, total); done == -1 closes the bar."""
    if callable(progress):
        return progress
    if not progress:
        return lambda done, total: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.data.speed]{task.fields[rate]}"),
        TimeRemainingColumn(),
        transient=False,
    )
    task = bar.add_task("scoring", total=total, rate="")
    bar.start()
    started = time.perf_counter()

    def update(done: int, total: int) -> None:
        if done < 0:
            bar.stop()
            return
        rate = done / max(time.perf_counter() - started, 1e-9)
        bar.update(task, completed=done, rate=f"{rate:.2f} files/s")

    return update
