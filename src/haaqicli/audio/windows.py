"""Windows: every window has the length the models were trained on (`plan_windows`), cut from a
stream as it is decoded (`iter_windows`), and `calibrated_windows`, the one call that turns a file
into model-ready windows at its presentation level."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haaqicli.audio.io import DEFAULT_BLOCK_FRAMES, BlockSource, as_source, require_duration
from haaqicli.audio.level import LevelMeter, overall_rms, presentation_gain
from haaqicli.audio.resample import StreamResampler, resampled_length


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    samples: np.ndarray  # (channels, n) at `sample_rate` (the source's own unless resampled)
    sample_rate: int = 0


def plan_windows(n_frames: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, end) frame ranges of overlapping windows covering ``n_frames``.

    Every window has the full length the models were trained on: windows start every ``hop``, and
    the last one is shifted back to end exactly at the end (overlapping its neighbour more), so no
    window is ever a short tail. Input shorter than one window is a single short window.
    """
    if window <= 0 or hop <= 0:
        raise ValueError("window and hop must be positive")
    if n_frames <= window:
        return [(0, n_frames)]
    starts = list(range(0, n_frames - window + 1, hop))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return [(start, start + window) for start in starts]


def iter_windows(source: BlockSource | str | Path, window_s: float, hop_s: float,
                 block_frames: int = DEFAULT_BLOCK_FRAMES, meter: LevelMeter | None = None,
                 downmix: bool = False, sample_rate: int | None = None) -> Iterator[Window]:
    """The windows of :func:`plan_windows`, streamed: at most one window plus one block is held,
    so a 2-hour file needs no more memory than a short one. Windows are read-only views of the decoded
    stream, not copies: a consumer that keeps a window keeps the block under it. With ``meter``, every
    decoded block is also metered (before any downmix), so the level and the windows come from one
    decoding pass; ``downmix`` averages the channels of each block, so windows are mono.

    With ``sample_rate``, the stream is resampled to that rate as it is decoded (`StreamResampler`:
    the same samples as `resample` of the whole file, so windows have real context at their edges)
    and the windows are planned and cut at that rate, as the API does with a whole waveform.

    The plan uses the frame count the decoder announced; if it delivers fewer frames (an estimate
    from a compressed container), the last window still ends at the real end with the full length,
    its head taken from the previous window (a file shorter than one window is one short window).
    """
    if window_s <= 0 or hop_s <= 0:
        raise ValueError("window_s and hop_s must be positive")
    src = as_source(source)
    native = src.info.sample_rate
    sr = int(sample_rate or native)
    resampler = StreamResampler(native, sr, 1 if downmix else src.info.channels) if sr != native else None
    n_frames = resampled_length(src.info.frames, native, sr) if resampler else src.info.frames
    plan = plan_windows(n_frames, max(1, int(round(window_s * sr))), max(1, int(round(hop_s * sr))))
    buffer = np.zeros((1 if downmix else src.info.channels, 0), dtype=np.float32)
    buffer_start = 0  # absolute frame index of buffer[:, 0]
    index = 0
    last: Window | None = None  # the latest window yielded, and its frames
    last_span = (0, 0)

    def take(block: np.ndarray) -> Iterator[Window]:
        """Append a block; yield the windows it completes and drop what no later window needs."""
        nonlocal buffer, buffer_start, index, last, last_span
        if block.shape[1] == 0:  # the resampler often has nothing yet: do not copy the buffer
            return
        buffer = np.concatenate([buffer, block], axis=1) if buffer.shape[1] else block
        while index < len(plan) and plan[index][1] <= buffer_start + buffer.shape[1]:
            start, end = plan[index]
            samples = buffer[:, start - buffer_start : end - buffer_start]
            samples.flags.writeable = False  # a view: `buffer` is replaced, never written, so it stays valid
            last = Window(start / sr, end / sr, samples, sr)
            last_span = (start, end)
            yield last
            index += 1
        keep_from = plan[index][0] if index < len(plan) else buffer_start + buffer.shape[1]
        if keep_from > buffer_start:
            buffer = buffer[:, keep_from - buffer_start :]
            buffer_start = keep_from

    for block in src.blocks(block_frames):
        if meter is not None:
            meter.add(block)
        if downmix and block.shape[0] == 2:  # equal to the mean, at a quarter of its cost
            block = ((block[0] + block[1]) * np.float32(0.5))[None]
        elif downmix and block.shape[0] > 2:
            block = block.mean(axis=0, keepdims=True)
        yield from take(resampler.push(block) if resampler else block)
    if resampler:
        yield from take(resampler.finish())
    if index < len(plan):  # the decoder delivered fewer frames than it announced
        start = plan[index][0]
        samples = buffer[:, max(0, start - buffer_start) :]
        end = start + samples.shape[1]
        if last is not None and last_span[1] < end and start <= last_span[1]:
            # as in plan_windows, the last window keeps the full length and ends at the end: its head
            # comes from the previous window
            head = last.samples[:, end - last.samples.shape[1] - last_span[0] : start - last_span[0]]
            samples = np.concatenate([head, samples], axis=1)
            yield Window((end - samples.shape[1]) / sr, end / sr, samples, sr)
        elif last is None and samples.shape[1] > 0:
            yield Window(start / sr, end / sr, samples.copy(), sr)


@dataclass
class CalibratedWindows:
    """Windows of a file at its presentation level, at the model's rate."""

    windows: np.ndarray  # (channels, n, samples) float32, scaled by `gain`
    starts_s: np.ndarray
    ends_s: np.ndarray
    gain: float  # the presentation gain applied (see haaqicli.audio.level)


def file_gain(source: BlockSource, spl: float) -> float:
    """One decoding pass for a stream's presentation gain at ``spl`` (its RMS over all channels)."""
    name = str(getattr(source, "path", "<audio>"))
    meter = LevelMeter(source.info.channels, name)
    for block in source.blocks():
        meter.add(block)
    require_duration(name, meter.count / source.info.sample_rate)  # ffmpeg's duration is an estimate
    return presentation_gain(overall_rms(meter.rms()), spl)


def calibrated_windows(source: BlockSource, spl: float, window_s: float, hop_s: float, sample_rate: int,
                       downmix: bool, gain: float | None = None,
                       chunk_windows: int | None = None) -> Iterator[CalibratedWindows]:
    """The one call from a decoded stream to model-ready windows: resampled to ``sample_rate`` as they
    are decoded (`iter_windows`), mono with ``downmix`` (else at most two channels), scaled to ``spl``.

    Without ``gain`` the level is metered in the same decoding pass, so every window is held until the
    end and comes as one chunk. With a ``gain`` (`file_gain`, an earlier pass over a long file) the
    windows stream in chunks of ``chunk_windows``: memory does not grow with the file's length. The
    samples are the same either way (same decoder, resampler and gain)."""
    name = str(getattr(source, "path", "<audio>"))
    meter = LevelMeter(source.info.channels, name) if gain is None else None
    windows: list[np.ndarray] = []
    starts: list[float] = []
    ends: list[float] = []

    def chunk(scale: float) -> CalibratedWindows:
        # one pass: each window (a view of the decoded stream) is scaled straight into the chunk
        stacked = np.empty((windows[0].shape[0], len(windows), windows[0].shape[1]), dtype=np.float32)
        for index, samples in enumerate(windows):
            np.multiply(samples, np.float32(scale), out=stacked[:, index])
        out = CalibratedWindows(stacked, np.array(starts, dtype=np.float64), np.array(ends, dtype=np.float64), scale)
        windows.clear()
        starts.clear()
        ends.clear()
        return out

    for window in iter_windows(source, window_s, hop_s, meter=meter, downmix=downmix, sample_rate=sample_rate):
        windows.append(window.samples if downmix else window.samples[:2])
        starts.append(window.start_s)
        ends.append(window.end_s)
        if gain is not None and chunk_windows and len(windows) >= chunk_windows:
            yield chunk(gain)
    if meter is not None:
        require_duration(name, meter.count / source.info.sample_rate)  # ffmpeg's duration is an estimate
        gain = presentation_gain(overall_rms(meter.rms()), spl)
    if windows:
        yield chunk(gain)  # type: ignore[arg-type]
