"""The scoring engine: files x profiles -> one row per (file, profile, ear).

Flow per file: stream-decode -> RMS over the whole file (level calibration) -> full-length windows
(the last one is shifted back to end at the file's end, so every window has the trained length and
windows batch across files) -> resample to 24 kHz -> model -> window scores -> aggregation.

The encoder runs once per window; only the small head runs once per profile. Windows of several files
fill one batch. A file up to `ScoreOptions.hold_seconds` long is decoded once and its windows held (a
few MB); a longer one is decoded twice, first for its level, then for windows that are scored as they
stream, so memory does not grow with a file's length: only window scores and frame scores are kept.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from haaqicli import audio
from haaqicli.audiogram import Profile
from haaqicli.models.calibration import Calibration, CalibrationWarning, load_calibration
from haaqicli.models.registry import get_info, load_model
from haaqicli.scoring.options import ScoreOptions
from haaqicli.scoring.prepare import (
    DecodingProcess,
    PreparedFile,
    channel_spectrum,
    close_stream,
    ears_for,
    prepare_file,
    prepared_stream,
    window_chunks,
)
from haaqicli.util.constants import MODEL_SAMPLE_RATE
from haaqicli.util.devices import model_device, model_label
from haaqicli.util.errors import HaaqiError, ModelError
from haaqicli.util.executor import TaskProgress, open_executor, unreadable, worker_name
from haaqicli.util.hashing import content_hash
from haaqicli.util.levels import warn_untrained_level
from haaqicli.util.progress import AudioProgress, ProgressCallback

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from haaqicli.output.tables import IncrementalTable, PartitionedTable
    from haaqicli.scoring.network import WindowScorer

# torch loads with the model (`load_model`, `scoring.network`) and pandas with the table
# (`output.tables`), both after a folder's decoding has started
__all__ = ["PreparedFile", "ScoreRun", "aggregate", "ears_for", "prepare_file", "score_file", "score_inputs",
           "score_prepared", "stitch_timeline", "window_chunks"]

# Timelines kept for reports are thinned to at most this many points per row.
MAX_TIMELINE_POINTS = 2000


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


def _window_weights(starts_s: np.ndarray, ends_s: np.ndarray) -> np.ndarray:
    return np.maximum(ends_s - starts_s, 1e-9)


def aggregate(scores: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray) -> dict[str, float]:
    """Length-weighted mean, min and 10th percentile of window scores, and the worst window."""
    weights = _window_weights(starts_s, ends_s)
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


def _error_rows(prepared: PreparedFile, profiles: Sequence[Profile], base: dict) -> list[dict]:
    return [
        {**base, "profile": p.name, "ear": "", "status": "error", "error": prepared.error,
         "audiogram_hash": p.values_hash()} for p in profiles
    ]


def _channel_audiograms(prepared: PreparedFile, profiles: Sequence[Profile]) -> list[np.ndarray]:
    """Per scored channel, the audiograms of the ear that hears it. A mono signal reaches both ears:
    it is scored with each ear's audiogram (one encoder pass)."""
    left = np.stack([p.ear("left").as_array() for p in profiles])
    right = np.stack([p.ear("right").as_array() for p in profiles])
    grams = {"both": np.concatenate([left, right]), "left": left, "right": right}
    return [grams[ear] for ear in prepared.ears]


def score_intervals(
    calibration: Calibration | None, clip: np.ndarray, ear: str, profiles: Sequence[Profile],
    starts_s: np.ndarray, ends_s: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated (score_lo, score_hi) per profile of one channel's window scores (rows of ``clip``:
    one per profile, or left then right audiograms when ``ear`` is "both"). A signal heard by both
    ears gets the mean of the two ears' intervals, as its score is the mean of their scores."""
    n = len(profiles)
    if calibration is None:
        return np.full(n, np.nan), np.full(n, np.nan)
    weights = _window_weights(starts_s, ends_s)
    means = clip @ weights / weights.sum()
    sides = ["left", "right"] if ear == "both" else [ear]
    ptas = np.array([p.ear(side).pta() for side in sides for p in profiles])
    lo, hi = calibration.interval(means, ptas)
    return lo.reshape(len(sides), n).mean(axis=0), hi.reshape(len(sides), n).mean(axis=0)


def _file_rows(
    prepared: PreparedFile, profiles: Sequence[Profile], base: dict,
    results: Sequence[tuple[np.ndarray, np.ndarray]], calibration: Calibration | None = None,
    bandwidths: Sequence[float] | None = None,
) -> tuple[list[dict], dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]]:
    """Rows and timelines of one file from its channels' scores (and content bandwidths, Hz)."""
    if prepared.error or prepared.starts_s is None:
        return _error_rows(prepared, profiles, base), {}
    rows, timelines = [], {}
    n = len(profiles)
    bandwidths = [math.nan] * len(prepared.ears) if bandwidths is None else bandwidths
    for ear, (clip, frames), bandwidth in zip(prepared.ears, results, bandwidths, strict=True):
        lo, hi = score_intervals(calibration, clip, ear, profiles, prepared.starts_s, prepared.ends_s)
        if ear == "both":  # average the two ears' scores
            clip, frames = (clip[:n] + clip[n:]) / 2, (frames[:n] + frames[n:]) / 2
        for index, profile in enumerate(profiles):
            stats = aggregate(clip[index], prepared.starts_s, prepared.ends_s)
            rows.append({**base, "profile": profile.name, "ear": ear, "status": "ok", "error": "",
                         "audiogram_hash": profile.values_hash(), **stats,
                         "score_lo": float(lo[index]), "score_hi": float(hi[index]), "bandwidth_hz": float(bandwidth)})
            timelines[(prepared.input.relative, profile.name, ear)] = stitch_timeline(
                frames[index], prepared.starts_s, prepared.ends_s
            )
    order = {p.name: i for i, p in enumerate(profiles)}
    rows.sort(key=lambda row: order[row["profile"]])  # stable: ears stay left, right within a profile
    return rows, timelines


class _FileScores:
    """One file's window scores, gathered chunk by chunk (its windows are not kept), then its rows."""

    def __init__(self, prepared: PreparedFile, profiles: Sequence[Profile], base: dict,
                 sample_rate: int = MODEL_SAMPLE_RATE) -> None:
        self.prepared, self.base, self.sample_rate = prepared, base, sample_rate
        self.audiograms = [] if prepared.error else _channel_audiograms(prepared, profiles)
        self.clips: list[list[np.ndarray]] = [[] for _ in self.audiograms]
        self.frames: list[list[np.ndarray]] = [[] for _ in self.audiograms]
        self.starts: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.waiting = 0  # chunks queued for the scorer and not scored yet
        self.complete = bool(prepared.error)  # every chunk queued
        self.covered_s = 0.0  # audio scored so far, for the progress
        # each scored channel's long-term spectrum (`bandwidth_hz`): a held file's comes gathered with its
        # windows (`prepare_file`, off the network's thread), a streamed file's is gathered chunk by chunk
        self.spectrum = prepared.spectrum or channel_spectrum(prepared.duration_s, sample_rate)

    @property
    def done(self) -> bool:
        return self.complete and not self.waiting

    def rows(self, profiles: Sequence[Profile], calibration: Calibration | None = None) -> tuple[list[dict], dict]:
        prepared = self.prepared
        if not prepared.error and not self.starts:
            prepared.error = f"{prepared.input.path}: no audio windows"
        if not prepared.error:
            prepared.starts_s, prepared.ends_s = np.concatenate(self.starts), np.concatenate(self.ends)
            results = [(np.concatenate(c, axis=1), np.concatenate(f, axis=1))
                       for c, f in zip(self.clips, self.frames, strict=True)]
        return _file_rows(prepared, profiles, self.base, [] if prepared.error else results, calibration,
                          self.spectrum.bandwidth(self.sample_rate))


class _BatchQueue:
    """Chunks of windows from one or more files, scored together once they fill a batch; each file's
    scores go back to it (a file's scores do not depend on the files that share its batches)."""

    def __init__(self, scorer: WindowScorer) -> None:
        self.scorer = scorer
        self.chunks: list[tuple[_FileScores, np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_windows = 0

    def add(self, file: _FileScores, windows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.chunks.append((file, windows, starts, ends))
        if file.prepared.spectrum is None:  # a streamed file's: gathered chunk by chunk
            file.spectrum.add(windows)
        file.waiting += 1
        self.n_windows += windows.shape[0] * windows.shape[1]

    @property
    def full(self) -> bool:
        return self.n_windows >= self.scorer.batch_size

    def score(self) -> float:
        """Score every queued chunk; returns the seconds of audio they covered."""
        units = [(windows[channel], file.audiograms[channel])
                 for file, windows, _, _ in self.chunks for channel in range(windows.shape[0])]
        results = iter(self.scorer.score_units(units))
        seconds = 0.0
        for file, windows, starts, ends in self.chunks:
            for channel in range(windows.shape[0]):
                clip, frames = next(results)
                file.clips[channel].append(clip)
                file.frames[channel].append(frames)
            file.starts.append(starts)
            file.ends.append(ends)
            file.waiting -= 1
            end = float(ends.max()) if len(ends) else file.covered_s
            seconds += max(0.0, end - file.covered_s)
            file.covered_s = max(file.covered_s, end)
        self.chunks.clear()
        self.n_windows = 0
        return seconds


def score_prepared(
    prepared: Sequence[PreparedFile], profiles: Sequence[Profile], scorer: WindowScorer, bases: Sequence[dict],
    calibration: Calibration | None = None, options: ScoreOptions | None = None,
    model_sample_rate: int = MODEL_SAMPLE_RATE,
) -> list[tuple[list[dict], dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]]]:
    """Rows and timelines for each of several prepared files, their windows scored in shared batches
    (a streamed file's windows decoded again with `options`); with a calibration, each row also gets
    its interval."""
    options = options or ScoreOptions()
    queue = _BatchQueue(scorer)
    files = [_FileScores(item, profiles, base, model_sample_rate) for item, base in zip(prepared, bases, strict=True)]
    for file in files:
        if not file.prepared.error:
            for windows, starts, ends in window_chunks(file.prepared, options, scorer.batch_size, model_sample_rate):
                queue.add(file, windows, starts, ends)
                if queue.full:
                    queue.score()
        file.complete = True
    if queue.chunks:
        queue.score()
    return [file.rows(profiles, calibration) for file in files]


def score_inputs(
    inputs: Sequence[str | Path],
    profiles: Sequence[Profile],
    options: ScoreOptions | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | ProgressCallback = True,
    scheduler: str | None = None,
    keep_timelines: bool = True,
) -> ScoreRun:
    """Score every discovered file for every profile. Returns the table (SCORE_COLUMNS) and timelines.

    With ``out`` the table is written incrementally and atomically (a folder: a Parquet dataset, and
    the returned table holds only the failed files' rows); with ``resume`` rows already done (same
    content hash, profile name and audiogram values, presentation level and model sha256, status ok)
    are kept and their files skipped. ``scheduler`` (a Dask address or ``local:N``): each file is one
    task on that cluster.
    ``progress``: a bar in seconds of audio (moving within long files), or a callback
    (see haaqicli.util.progress).
    """
    options = options or ScoreOptions()
    if not profiles:
        raise HaaqiError("no profile given (use --profile)")
    items = audio.discover(inputs)
    if scheduler:  # the workers load the model; here only its identity is needed
        options = replace(options, weights_dir=options.weights_dir or os.environ.get("HAAQI_WEIGHTS"))
        info = get_info(options.model, options.weights_dir)
        table, todo = _open_todo(items, out, resume, profiles, options, info)
        warn_untrained_level(options.spl, info.name, info.training)
        return _score_on_cluster(todo, profiles, options, info, table, progress, scheduler, keep_timelines,
                                 model_calibration(info, options))

    # The files start decoding before the model loads (torch's import is most of a short run): the
    # registry's manifest gives the model's rate and identity. An official BEATs checkpoint sets its
    # own rate, so there the decoding waits for the model.
    opened = None  # (table, files to score, their prepared stream)
    try:
        if options.beats_checkpoint is None:
            try:
                info = get_info(options.model, options.weights_dir)
            except ModelError:
                pass  # load_model below says why
            else:
                opened = _open_and_stream(items, out, resume, profiles, options, info)
        # lazy: torch loads here, while the files decode
        from haaqicli.scoring.network import WindowScorer, network_threads

        device = model_device(options.device, options.precision)
        model, info = load_model(
            options.model, device=device, beats_checkpoint=options.beats_checkpoint,
            weights_dir=options.weights_dir, precision=options.precision
        )
        if opened is None:
            opened = _open_and_stream(items, out, resume, profiles, options, info)
        scorer = WindowScorer(model, device, options.batch_size)
        warn_untrained_level(options.spl, info.name, info.training)
        calibration = model_calibration(info, options)
    except BaseException:  # the decoding process stops, its windows go
        if opened is not None:
            close_stream(opened[2])
        raise
    table, todo, stream = opened

    rows: list[dict] = []
    timelines: dict = {}
    started = time.perf_counter()
    audio_seconds = 0.0
    interrupted = False
    bar = AudioProgress("scoring", len(todo), callback=progress if callable(progress) else None,
                        display=bool(progress))
    if progress:
        _probe_durations(todo, bar)
    queue = _BatchQueue(scorer)
    files: list[_FileScores] = []  # in input order, until their rows are out

    def score_queue() -> None:
        # score what is queued, then hand out the rows of every finished file, in input order
        nonlocal audio_seconds
        if queue.chunks:
            bar.advance(queue.score())
        while files and files[0].done:
            file = files.pop(0)
            file_rows, file_timelines = file.rows(profiles, calibration)
            rows.extend(file_rows)
            timelines.update(file_timelines)
            if table is not None:
                table.add(file_rows)
            if not file.prepared.error:
                audio_seconds += file.prepared.duration_s
                if file.prepared.channels > 2:  # said once the file's rows exist, in this process
                    warnings.warn(audio.downmix_message(file.prepared.input.path, file.prepared.channels),
                                  audio.DownmixWarning, stacklevel=2)
            duration = file.prepared.duration_s
            bar.advance(max(0.0, duration - file.covered_s) if np.isfinite(duration) else 0.0, files=1)

    with network_threads(model, device, decoding_beside=not isinstance(stream, DecodingProcess)):
        try:
            for prepared in stream:
                file = _FileScores(prepared, profiles, _row_base(prepared, info, options), info.sample_rate)
                files.append(file)
                if not prepared.error:
                    try:
                        for windows, starts, ends in window_chunks(prepared, options, scorer.batch_size,
                                                                   info.sample_rate):
                            queue.add(file, windows, starts, ends)
                            if queue.full:
                                score_queue()
                    except HaaqiError as error:  # a streamed file that fails on its second pass
                        prepared.error = str(error)
                    file.complete = True
                if queue.full or (files and files[0].done):
                    score_queue()
            score_queue()
        except KeyboardInterrupt:
            interrupted = True
            try:  # files already decoded are one batch at most: score them, so their rows are kept
                files[:] = [file for file in files if file.complete]
                score_queue()
            except KeyboardInterrupt:
                pass
        finally:
            close_stream(stream)
            if table is not None:
                table.close()
            bar.close()

    # lazy: pandas loads after the decoding has started (start-up time)
    import pandas as pd

    from haaqicli.output.tables import SCORE_COLUMNS, IncrementalTable, PartitionedTable  # lazy: pandas

    frame = table.frame() if isinstance(table, IncrementalTable) else pd.DataFrame(rows, columns=SCORE_COLUMNS)
    if isinstance(table, PartitionedTable):  # the rows are in the dataset; the failures are returned
        frame = frame[frame["status"] != "ok"]
    return ScoreRun(
        table=frame.reindex(columns=SCORE_COLUMNS),
        timelines=timelines,
        seconds=time.perf_counter() - started,
        audio_seconds=audio_seconds,
        interrupted=interrupted,
    )


def _open_todo(items: Sequence[audio.InputFile], out: str | Path | None, resume: bool, profiles: Sequence[Profile],
               options: ScoreOptions, info: Any) -> tuple[IncrementalTable | PartitionedTable | None, list[audio.InputFile]]:
    """The output table (with the rows a resumed run keeps) and the files still to score."""
    table, done_hashes = _open_table(out, resume, profiles, options.spl, _model_identity(info, options))
    if not done_hashes:
        return table, list(items)
    # each file is hashed once: the hash travels with the item into prepare_file
    hashed = [replace(item, content_hash=content_hash(item.path)) for item in items]
    return table, [item for item in hashed if item.content_hash not in done_hashes]


def _open_and_stream(items: Sequence[audio.InputFile], out: str | Path | None, resume: bool,
                     profiles: Sequence[Profile], options: ScoreOptions, info: Any) -> tuple[Any, list, Any]:
    """`_open_todo`, and the prepared stream of the files to score, started as early as it can be:
    before the table (and pandas) loads where every file is scored."""
    stream = None if resume else prepared_stream(items, options, info.sample_rate)
    try:
        table, todo = _open_todo(items, out, resume, profiles, options, info)
    except BaseException:
        if stream is not None:
            close_stream(stream)
        raise
    return table, todo, prepared_stream(todo, options, info.sample_rate) if stream is None else stream


def model_calibration(info: Any, options: ScoreOptions) -> Calibration | None:
    """The interval calibration of the loaded weights, or None (with a warning) when there is none that
    belongs to them; an official BEATs encoder under the teacher's head is another model: never."""
    if options.beats_checkpoint is not None:
        warnings.warn(f"{info.name}: no interval calibration for a --beats-checkpoint encoder; "
                      "score_lo/score_hi stay empty", CalibrationWarning, stacklevel=2)
        return None
    return load_calibration(info.name, info.sha256, options.weights_dir)


def _probe_durations(items: Sequence[audio.InputFile], bar: AudioProgress) -> None:
    """Add each file's duration to the progress total, in a background thread (probing a compressed
    file can take a subprocess; the scoring does not wait for it)."""

    def probe() -> None:
        for item in items:
            try:
                bar.add_total(audio.open_audio(item.path).info.duration_s)
            except Exception:  # noqa: BLE001 - the file's own row reports why it cannot be read
                continue

    threading.Thread(target=probe, name="haaqi-probe", daemon=True).start()


def _model_identity(info: Any, options: ScoreOptions) -> tuple[str, str]:
    """(model column, weights sha256) of the rows this run writes: the model's name carries a
    precision other than float32 ("teacher:int8"), whose scores are other scores."""
    return model_label(info.name, options.precision), info.sha256


def _row_base(prepared: PreparedFile, info: Any, options: ScoreOptions) -> dict:
    """The columns a file's rows share."""
    name, sha256 = _model_identity(info, options)
    return {
        "spl": float(options.spl),
        "file": prepared.input.relative,
        "path": str(prepared.input.path),
        "model": name,
        "model_sha256": sha256,
        "duration_s": prepared.duration_s,
        "sample_rate": prepared.sample_rate,
        "channels": prepared.channels,
        "content_hash": prepared.content_hash,
    }


# The columns that decide whether a previous row is kept by --resume.
RESUME_KEY_COLUMNS = ["content_hash", "profile", "audiogram_hash", "spl", "model", "model_sha256", "status"]


def _finished_files(previous: pd.DataFrame, profiles: Sequence[Profile], spl: float,
                    model: tuple[str, str]) -> set[str]:
    """Content hashes of the files that need no new scoring: an ok row for every requested profile,
    scored with the same audiogram values, level and model (name, precision and weights)."""
    ok = previous[_kept_mask(previous, None, profiles, spl, model)]
    complete = ok.groupby("content_hash")["profile"].nunique()
    return set(complete[complete == len({(p.name, p.values_hash()) for p in profiles})].index)


def _kept_mask(previous: pd.DataFrame, done: set[str] | None, profiles: Sequence[Profile], spl: float,
               model: tuple[str, str]) -> np.ndarray:
    """Rows to keep on resume: the resumable ones (tables.resumable_rows) of the same model, its
    (model column, sha256) (and a finished file, given ``done``)."""
    # lazy: pandas loads after the decoding has started (start-up time)
    from haaqicli.output.tables import resumable_rows

    same_model = (previous["model"] == model[0]) & (previous["model_sha256"] == model[1])
    mask = resumable_rows(previous, profiles, spl) & same_model.to_numpy(dtype=bool)
    return mask & previous["content_hash"].isin(done).to_numpy(dtype=bool) if done is not None else mask


def _open_table(out: str | Path | None, resume: bool, profiles: Sequence[Profile], spl: float,
                model: tuple[str, str]) -> tuple[IncrementalTable | PartitionedTable | None, set[str]]:
    """The output table, holding the rows a resumed run keeps, and the content hashes of finished files.
    Tables written before rows recorded the audiogram hash and level are rescored; from a dataset folder
    only the key columns are read (its kept rows stay in their part files)."""
    # lazy: pandas only once the decoding has started (start-up time)
    from haaqicli.output.tables import SCORE_COLUMNS, open_table, previous_rows  # (pandas)

    previous = previous_rows(out, RESUME_KEY_COLUMNS) if resume else None
    done = _finished_files(previous, profiles, spl, model) if previous is not None else set()
    if not out:
        return None, done
    keep = None if previous is None else (lambda rows: _kept_mask(rows, done, profiles, spl, model))
    return open_table(out, SCORE_COLUMNS, keep=keep), done


def score_file(item: audio.InputFile, profiles: Sequence[Profile], options: ScoreOptions, model_sha256: str,
               calibration: Calibration | None = None) -> tuple[list[dict], dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]], float]:
    """One file as one task (on a cluster worker): its rows, timelines and scored seconds of audio. The
    model is this process's (loaded once, sha256 checked); the file is read here, from its path."""
    scorer, info = worker_scorer(options, model_sha256)
    reason = unreadable(item.path)
    prepared = PreparedFile(input=item, error=reason) if reason else prepare_file(item, options, info.sample_rate)
    [(rows, timelines)] = score_prepared([prepared], profiles, scorer, [_row_base(prepared, info, options)],
                                         calibration, options, info.sample_rate)
    return rows, timelines, 0.0 if prepared.error else prepared.duration_s


_worker_lock = threading.Lock()


def worker_scorer(options: ScoreOptions, model_sha256: str) -> tuple[WindowScorer, Any]:
    """This process's scorer for ``options``, loaded on first use, and a check that it is the model the
    client asked for (a worker with other weights would give other scores)."""
    with _worker_lock:  # a worker with several threads loads the model once, not once per thread
        scorer, info = _load_scorer(options.model, options.device, options.batch_size, options.beats_checkpoint,
                                    options.weights_dir, options.precision)
    if info.sha256 != model_sha256:
        raise ModelError(f"{worker_name()}: model {info.name!r} has sha256 {info.sha256[:12]}..., the client's "
                         f"has {model_sha256[:12]}...; install the same weights on every worker")
    return scorer, info


@functools.lru_cache(maxsize=2)
def _load_scorer(model: str, device: str, batch_size: int, beats_checkpoint: str | None,
                 weights_dir: str | None, precision: str = "float32") -> tuple[WindowScorer, Any]:
    # lazy: torch only where a model runs (start-up time)
    from haaqicli.scoring.network import WindowScorer

    torch_device = model_device(device, precision)
    network, info = load_model(model, device=torch_device, beats_checkpoint=beats_checkpoint,
                               weights_dir=weights_dir, precision=precision)
    return WindowScorer(network, torch_device, batch_size), info


def _check_worker(options: ScoreOptions, model_sha256: str) -> str:
    """Run once on every worker before any task: loads the model there (once) and checks it."""
    return worker_scorer(options, model_sha256)[1].name


def _score_on_cluster(
    todo: Sequence[audio.InputFile], profiles: Sequence[Profile], options: ScoreOptions, info: Any,
    table: IncrementalTable | PartitionedTable | None, progress: bool | ProgressCallback,
    scheduler: str, keep_timelines: bool, calibration: Calibration | None = None,
) -> ScoreRun:
    """Each file one task on a Dask cluster; rows stream into ``table`` as tasks finish. Without a
    dataset table every row is returned; with one, only the failed files' rows (bounded memory)."""
    # lazy: pandas loads after the decoding has started (start-up time)
    import pandas as pd

    from haaqicli.output.tables import SCORE_COLUMNS, IncrementalTable, PartitionedTable  # lazy: pandas

    held: list[dict] = []
    timelines: dict = {}
    started = time.perf_counter()
    audio_seconds = 0.0
    interrupted = False
    bar = TaskProgress("scoring", len(todo), display=progress is True)
    hold_all = not isinstance(table, PartitionedTable)
    try:
        with open_executor(scheduler if todo else None) as executor:  # nothing to do: no cluster
            try:
                if todo:
                    executor.run_on_workers(_check_worker, options, info.sha256)
            except HaaqiError:
                raise
            except Exception as error:  # e.g. haaqi not installed there
                raise HaaqiError(f"--scheduler {scheduler}: a worker cannot load the model "
                                 f"({type(error).__name__}: {error})") from None
            # workers start elsewhere: they get absolute paths (the rows' `path` is absolute too)
            tasks = ((replace(item, path=Path(item.path).absolute()),) for item in todo)
            for (item,), outcome in executor.imap_unordered(score_file, tasks, profiles=profiles, options=options,
                                                            model_sha256=info.sha256, calibration=calibration):
                if isinstance(outcome, BaseException):
                    failed = PreparedFile(input=item, error=f"{item.path}: {type(outcome).__name__}: {outcome}")
                    rows, file_timelines, seconds = (_error_rows(failed, profiles, _row_base(failed, info, options)),
                                                     {}, 0.0)
                else:
                    rows, file_timelines, seconds = outcome
                error = any(row["status"] != "ok" for row in rows)
                if not error and rows and rows[0]["channels"] > 2:  # said here, not in a worker's log
                    warnings.warn(audio.downmix_message(item.path, rows[0]["channels"]), audio.DownmixWarning,
                                  stacklevel=2)
                if table is not None:
                    table.add(rows)
                if hold_all or error:
                    held.extend(rows)
                if keep_timelines:
                    timelines.update(file_timelines)
                audio_seconds += seconds
                bar.update(done=1, failed=int(error), in_flight=executor.in_flight)
                if callable(progress):
                    progress(audio_seconds, 0.0, bar.done, len(todo))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if table is not None:
            table.close()
    if isinstance(table, IncrementalTable):
        held = table.frame().to_dict("records")
    order = {item.relative: index for index, item in enumerate(todo)}
    frame = pd.DataFrame(held, columns=SCORE_COLUMNS)
    # rows arrive as tasks finish: in input order again (kept rows of a resumed run first)
    frame = frame.iloc[np.argsort([order.get(name, -1) for name in frame["file"]], kind="stable")]
    return ScoreRun(table=frame.reset_index(drop=True), timelines=timelines,
                    seconds=time.perf_counter() - started, audio_seconds=audio_seconds, interrupted=interrupted)
