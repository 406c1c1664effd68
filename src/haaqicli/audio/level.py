"""Level: RMS metering of decoded audio and the presentation gain that calibrates it, the one definition
of calibration for the engine and the API: a signal of RMS ``target_rms(spl)`` is heard at ``spl`` dB SPL."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from haaqicli.audio.io import BlockSource, as_source
from haaqicli.util.constants import DEFAULT_SPL, REFERENCE_RMS
from haaqicli.util.errors import AudioError

# Below this a file is treated as silent: -120 dBFS.
SILENCE_RMS: float = 1e-6


def channel_rms(source: BlockSource | str | Path | np.ndarray, allow_silent: bool = False) -> np.ndarray:
    """RMS per channel, streamed. Silent input (overall RMS < 1e-6) raises ``AudioError`` unless allowed."""
    if isinstance(source, np.ndarray):
        x = source[None, :] if source.ndim == 1 else source
        meter = LevelMeter(x.shape[0], "<array>")
        meter.add(x)
    else:
        src = as_source(source)
        meter = LevelMeter(src.info.channels, str(getattr(src, "path", "<audio>")))
        for block in src.blocks():
            meter.add(block)
    return meter.rms(allow_silent)


class LevelMeter:
    """Running per-channel RMS over the blocks of a stream (each frame counted once)."""

    def __init__(self, channels: int, name: str) -> None:
        self.sums = np.zeros(channels, dtype=np.float64)
        self.count = 0
        self.name = name

    def add(self, block: np.ndarray) -> None:
        self.sums += np.square(block).sum(axis=1, dtype=np.float64)
        self.count += block.shape[1]

    def rms(self, allow_silent: bool = False) -> np.ndarray:
        """RMS per channel; silent input (overall RMS < 1e-6) raises ``AudioError`` unless allowed."""
        if self.count == 0:
            raise AudioError(f"{self.name}: no audio frames")
        rms = np.sqrt(self.sums / self.count)
        total = overall_rms(rms)
        if not allow_silent and total < SILENCE_RMS:
            level = 20 * math.log10(total) if total > 0 else -math.inf
            raise AudioError(f"{self.name}: silent (RMS {level:.0f} dBFS, below -120 dBFS)")
        return rms


def overall_rms(rms: np.ndarray) -> float:
    """RMS over all channels together (so stereo balance is kept when one gain is applied)."""
    values = np.asarray(rms, dtype=np.float64)
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0


def target_rms(spl: float = DEFAULT_SPL) -> float:
    """The RMS heard at ``spl`` dB SPL in the model's calibration: a waveform with RMS REFERENCE_RMS is
    heard at DEFAULT_SPL (65 dB SPL), so the target is ``0.1 * 10**((spl - 65) / 20)``. The engine and
    the API (`HAAQIPredictor`, differentiably) both scale to it."""
    return float(REFERENCE_RMS * 10 ** ((spl - DEFAULT_SPL) / 20))


def presentation_gain(rms: float, spl: float = DEFAULT_SPL) -> float:
    """Gain that maps a signal of (overall) RMS ``rms`` to ``spl`` dB SPL (`target_rms`); a silent
    signal has no level to set (AudioError)."""
    if not (rms > SILENCE_RMS):  # also catches NaN
        raise AudioError(f"cannot set the level of a silent signal (RMS {rms:g})")
    return float(target_rms(spl) / rms)
