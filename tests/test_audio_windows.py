"""haaqicli.audio.windows: full-length windows cut from streams, and calibrated_windows."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from synth import chord, tone

from haaqicli import audio
from haaqicli.audio import (
    ArraySource,
    AudioInfo,
    iter_windows,
    open_audio,
    resample,
)


class _LongSynthetic:
    """A 2-hour stereo 48 kHz stream produced block by block (never materialised)."""

    def __init__(self, seconds: float, sr: int = 48000):
        self.info = AudioInfo(sr, 2, int(seconds * sr), seconds, "synthetic")
        self.path = Path("<long>")

    def blocks(self, block_frames: int = 65536):
        left = self.info.frames
        block = np.full((2, block_frames), 0.1, np.float32)
        while left > 0:
            n = min(block_frames, left)
            left -= n
            yield block[:, :n]


class _ShortDelivery(ArraySource):
    """Announces more frames than it delivers (a compressed container's estimate)."""

    def __init__(self, samples: np.ndarray, sample_rate: int, announced: int):
        super().__init__(samples, sample_rate)
        self.info = AudioInfo(sample_rate, self.samples.shape[0], announced, announced / sample_rate, "float32")


def test_windows_count_overlap_and_last_window_ends_at_the_end() -> None:
    sr = 8000
    x = np.arange(int(10.6 * sr), dtype=np.float32)[None, :] / 1e6
    windows = list(iter_windows(ArraySource(x, sr), 6.0, 4.5, block_frames=777))
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 6.0), (4.5, 10.5), (4.6, 10.6)]
    for w in windows:  # exact samples, native rate
        start = int(w.start_s * sr)
        np.testing.assert_array_equal(w.samples, x[:, start : int(round(w.end_s * sr))])
        assert w.sample_rate == sr


def test_windows_short_file_single_window_and_all_windows_full_length() -> None:
    sr = 8000
    short = ArraySource(np.ones((2, int(0.3 * sr)), np.float32), sr)
    windows = list(iter_windows(short, 6.0, 4.5))
    assert len(windows) == 1 and windows[0].samples.shape == (2, int(0.3 * sr))
    exact = ArraySource(np.ones((1, 12 * sr + int(0.2 * sr)), np.float32), sr)
    spans = [(w.start_s, w.end_s) for w in iter_windows(exact, 6.0, 6.0)]
    assert spans == [(0.0, 6.0), (6.0, 12.0), (6.2, 12.2)]  # the 0.2 s tail is covered by a full window
    gaps = [(w.start_s, w.end_s) for w in iter_windows(ArraySource(np.ones((1, 10 * sr), np.float32), sr), 2.0, 3.0)]
    assert gaps == [(0.0, 2.0), (3.0, 5.0), (6.0, 8.0), (8.0, 10.0)]


def test_windows_at_the_model_rate_are_slices_of_the_whole_resampled_signal() -> None:
    sr, model_sr = 44100, 24000
    x = np.random.default_rng(5).normal(size=(2, int(14.3 * sr))).astype(np.float32) * 0.1
    meter = audio.LevelMeter(2, "x")
    windows = list(iter_windows(ArraySource(x, sr), 6.0, 4.5, block_frames=10_000, meter=meter,
                                downmix=True, sample_rate=model_sr))
    whole = resample(x.mean(axis=0, keepdims=True), sr, model_sr)
    n = whole.shape[1]
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 6.0), (4.5, 10.5), ((n - 144000) / model_sr, n / model_sr)]
    for w in windows:
        assert w.sample_rate == model_sr and w.samples.shape == (1, 6 * model_sr)
        start = int(round(w.start_s * model_sr))
        np.testing.assert_allclose(w.samples, whole[:, start : start + 6 * model_sr], atol=1e-6)
    np.testing.assert_allclose(meter.rms(), np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1)), rtol=1e-6)


@pytest.mark.parametrize("model_rate", [None, 8000])
def test_windows_when_the_decoder_delivers_fewer_frames_than_announced(model_rate: int | None) -> None:
    sr = 16000
    x = np.random.default_rng(1).normal(size=(1, int(10.0 * sr))).astype(np.float32)
    source = _ShortDelivery(x, sr, announced=int(11.5 * sr))
    windows = list(iter_windows(source, 6.0, 4.5, sample_rate=model_rate))
    rate = model_rate or sr
    # the plan wanted windows at 0, 4.5 and 5.5 s (ending at 11.5 s); the last one ends at the real end
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 6.0), (4.0, 10.0)]
    assert all(w.samples.shape == (1, 6 * rate) for w in windows)
    if model_rate is None:
        np.testing.assert_array_equal(windows[-1].samples, x[:, 4 * sr :])


def test_windows_bounded_memory_on_two_hour_stream() -> None:
    source = _LongSynthetic(2 * 3600.0)
    tracemalloc.start()
    count = 0
    last = None
    for window in iter_windows(source, 6.0, 4.5, block_frames=48000):
        count += 1
        last = window
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 7200 s: 1599 windows every 4.5 s (the last ends at 7197 s) plus one ending at 7200 s.
    assert count == 1600 and last is not None and last.end_s == pytest.approx(7200.0)
    assert last.samples.shape == (2, 6 * 48000)
    window_bytes = 2 * 6 * 48000 * 4
    assert peak < 6 * window_bytes  # a few windows' worth, not 2 hours (2.7 GB)


def test_windows_stream_a_ten_minute_file(tmp_path: Path) -> None:
    sr = 8000
    path = tmp_path / "long.flac"
    with sf.SoundFile(str(path), "w", sr, 1, format="FLAC") as handle:
        for minute in range(10):
            handle.write(tone(200 + 50 * minute, sr=sr, seconds=60.0, amplitude=0.2)[0])
    source = open_audio(path)
    assert source.info.duration_s == pytest.approx(600.0)
    windows = list(iter_windows(source, 6.0, 4.5))
    assert len(windows) == 133  # full windows start at 0, 4.5, ..., 594 s; the last ends at 600 s
    assert windows[-1].end_s == pytest.approx(600.0)
    assert all(w.samples.shape == (1, 6 * sr) for w in windows)


def test_calibrated_windows_held_and_streamed_are_the_same_samples() -> None:
    """The one call from a stream to model-ready windows: metered in the same pass (held) or with the gain
    of an earlier pass (streamed in chunks), the windows are the same, scaled to the level's target RMS."""
    sr, model_rate = 16000, 24000
    x = (0.05 * chord(sr=sr, seconds=20.0, channels=2)).astype(np.float32)
    (held,) = audio.calibrated_windows(ArraySource(x, sr), 70.0, 6.0, 3.0, model_rate, downmix=False)
    gain = audio.file_gain(ArraySource(x, sr), 70.0)
    assert held.gain == pytest.approx(gain, rel=1e-12)
    assert gain == pytest.approx(audio.target_rms(70.0) / np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    chunks = list(audio.calibrated_windows(ArraySource(x, sr), 70.0, 6.0, 3.0, model_rate, downmix=False,
                                           gain=gain, chunk_windows=2))
    assert [c.windows.shape[1] for c in chunks] == [2, 2, 2]
    np.testing.assert_array_equal(np.concatenate([c.windows for c in chunks], axis=1), held.windows)
    np.testing.assert_array_equal(np.concatenate([c.starts_s for c in chunks]), held.starts_s)
    assert held.windows.shape == (2, 6, 6 * model_rate)
    (mono,) = audio.calibrated_windows(ArraySource(x, sr), 70.0, 6.0, 3.0, model_rate, downmix=True)
    assert mono.windows.shape == (1, 6, 6 * model_rate)
