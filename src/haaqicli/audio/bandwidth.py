"""Content bandwidth: where a signal's long-term spectrum ends.

Why it is measured: without the reference, a recording whose content stops early (an old or low-rate
encode, a dull synthesiser) looks like low-pass damage to a non-intrusive model. `haaqi evaluate`
reports the models' error on clean music by this bandwidth (`training.train.evaluation_metrics`), and
`haaqi score` gives each row the bandwidth of the channel it scored (`bandwidth_hz`), so a low score of
such a file can be read with that in mind.

The bandwidth is the highest frequency whose power, in the mean spectrum of Hann-windowed frames, lies
within `floor_db` of the spectrum's strongest bin. A -50 dB floor sits above the dither and coding noise
of a 16-bit or lossy file and below the top octave of full-band music.
"""

from __future__ import annotations

import functools

import numpy as np

DEFAULT_FLOOR_DB: float = 50.0
DEFAULT_FRAME: int = 2048
# Below this a channel's content counts as band-limited (`haaqi score`'s note; the model card's limit).
BAND_LIMITED_HZ: float = 10000.0
# Bins of `bandwidth_group` (Hz): below 8 kHz, 8-10, 10-11 kHz and above.
BANDWIDTH_EDGES: tuple[float, ...] = (8000.0, BAND_LIMITED_HZ, 11000.0)


# `haaqi score` transforms about this many frames per channel of a short file, and one per window of
# a long one (`frame_stride`): the long-term spectrum needs no more, and scoring pays for every frame
# (numpy's transform: ~20 us a frame, so a 10-s stereo file costs ~1.5 ms).
SCORE_FRAMES_PER_FILE: int = 32


def frame_stride(n_samples: float, frame: int = DEFAULT_FRAME, frames: int = SCORE_FRAMES_PER_FILE) -> int:
    """Every how many frames to keep so that `n_samples` of audio give about `frames` frames."""
    return max(1, int(n_samples // (frame * frames)))


class LongTermSpectrum:
    """The mean power spectrum of rows of audio, gathered chunk by chunk (a long file's windows stream).

    A chunk (rows, T) or (rows, n, T) is cut into frames of `frame` samples along T, and every
    `stride`-th frame of each row of T kept, the first always (so each of a file's windows counts)."""

    def __init__(self, frame: int = DEFAULT_FRAME, stride: int = 1) -> None:
        self.frame, self.stride = frame, stride
        self.power: np.ndarray | None = None  # (rows, frame // 2 + 1) sums
        self.frames = 0

    def add(self, chunk: np.ndarray) -> None:
        """Add (rows, T) or (rows, n, T) audio (frames of each row of the last axis; rows of the first)."""
        x = np.asarray(chunk, dtype=np.float32)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if x.shape[-1] < self.frame:
            x = np.pad(x, ((0, 0), (0, 0), (0, self.frame - x.shape[-1])))
        n_frames = x.shape[-1] // self.frame
        # a view until the kept frames are gathered: only they are copied
        frames = x[..., : n_frames * self.frame].reshape(*x.shape[:2], n_frames, self.frame)[:, :, :: self.stride]
        frames = frames.reshape(x.shape[0], -1, self.frame)
        # float64: numpy's float32 transform is ~2x slower (and scipy.fft would add to start-up)
        spectrum = np.fft.rfft(frames * _hann(self.frame), axis=-1)
        power = np.sum(spectrum.real**2 + spectrum.imag**2, axis=1, dtype=np.float64)
        self.power = power if self.power is None else self.power + power
        self.frames += frames.shape[1]

    def bandwidth(self, sample_rate: float, floor_db: float = DEFAULT_FLOOR_DB) -> np.ndarray:
        """Bandwidth in Hz of each row (NaN for a silent row, or before any audio)."""
        if self.power is None:
            return np.full(0, np.nan)
        peak = self.power.max(axis=1, keepdims=True)
        above = self.power >= peak * 10.0 ** (-floor_db / 10.0)
        top = self.frame // 2 - np.argmax(above[:, ::-1], axis=1)  # the last bin above the floor
        return np.where(peak[:, 0] > 0, top * (sample_rate / self.frame), np.nan)


@functools.lru_cache(maxsize=4)
def _hann(frame: int) -> np.ndarray:
    return np.hanning(frame)


def content_bandwidth(waves: np.ndarray, sample_rate: float, floor_db: float = DEFAULT_FLOOR_DB,
                      frame: int = DEFAULT_FRAME) -> np.ndarray:
    """Bandwidth in Hz of each row of `waves` (T,) or (N, T); NaN for a silent row. Frames of `frame`
    samples, hop `frame` (a row shorter than one frame is one zero-padded frame)."""
    spectrum = LongTermSpectrum(frame)
    spectrum.add(np.atleast_2d(waves))
    return spectrum.bandwidth(sample_rate, floor_db)


def _group_names(edges: tuple[float, ...]) -> tuple[str, ...]:
    khz = [f"{edge / 1000:g}" for edge in edges]
    return (f"< {khz[0]} kHz", *(f"{a}-{b} kHz" for a, b in zip(khz[:-1], khz[1:], strict=True)),
            f">= {khz[-1]} kHz")


# The bins' names, narrowest first, then "unknown" (silent).
BANDWIDTH_GROUPS: tuple[str, ...] = (*_group_names(BANDWIDTH_EDGES), "unknown")


def bandwidth_group(hz: float) -> str:
    """The bin of a bandwidth in BANDWIDTH_GROUPS ("unknown" for NaN)."""
    if not np.isfinite(hz):
        return BANDWIDTH_GROUPS[-1]
    return BANDWIDTH_GROUPS[int(np.searchsorted(BANDWIDTH_EDGES, hz, side="right"))]
