"""Deterministic music-like test signals: chords with harmonics, note envelopes, drum-like noise.

Used by the benchmark, the bundled examples and the tests, so nothing needs a music corpus.
"""

from __future__ import annotations

import numpy as np

# A I-V-vi-IV progression around A3 (Hz of the chord roots).
_ROOTS = (220.0, 329.63, 369.99, 293.66)
_CHORD_RATIOS = (1.0, 1.2599, 1.4983)  # root, major third, fifth


def tone(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def music(
    seconds: float,
    sample_rate: int = 44100,
    channels: int = 1,
    seed: int = 0,
    tempo_bpm: float = 120.0,
    level_dbfs: float = -20.0,
) -> np.ndarray:
    """A chord progression with harmonics, per-note envelopes and a noise-burst beat.

    Returns float32 (channels, n). Stereo channels differ (panning and a little delay), so per-ear
    scoring sees two different signals.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    beat = 60.0 / tempo_bpm
    out = np.zeros((channels, n), dtype=np.float64)
    bar = 4 * beat
    brightness = rng.uniform(0.5, 0.8)
    for bar_index in range(int(np.ceil(seconds / bar))):
        root = _ROOTS[(bar_index + seed) % len(_ROOTS)] * rng.choice([0.5, 1.0])
        start, stop = int(bar_index * bar * sample_rate), min(n, int((bar_index + 1) * bar * sample_rate))
        if start >= n:
            break
        segment = t[start:stop] - t[start]
        envelope = np.exp(-segment / (bar * 0.6)) * (1 - np.exp(-segment / 0.01))
        for ratio in _CHORD_RATIOS:
            f0 = root * ratio
            for harmonic in range(1, 8):
                if f0 * harmonic > sample_rate / 2.2:
                    break
                amp = brightness**harmonic / harmonic
                phase = rng.uniform(0, 2 * np.pi)
                for ch in range(channels):
                    pan = 1.0 if channels == 1 else (0.6 + 0.4 * ((ratio + ch) % 2))
                    out[ch, start:stop] += pan * amp * envelope * np.sin(2 * np.pi * f0 * harmonic * segment + phase)
    # Melody: short plucked notes on each beat.
    for beat_index in range(int(seconds / beat)):
        start = int(beat_index * beat * sample_rate)
        length = min(n - start, int(beat * sample_rate))
        if length <= 0:
            break
        segment = np.arange(length) / sample_rate
        f0 = _ROOTS[beat_index % len(_ROOTS)] * 2 * rng.choice([1.0, 1.125, 1.25, 1.5])
        note = np.exp(-segment / 0.15) * np.sin(2 * np.pi * f0 * segment) * 0.5
        note += np.exp(-segment / 0.08) * np.sin(2 * np.pi * 2 * f0 * segment) * 0.2
        for ch in range(channels):
            out[ch, start : start + length] += note * (1.0 if ch == 0 else 0.7)
    # Drum-like noise bursts on beats 2 and 4.
    for beat_index in range(1, int(seconds / beat), 2):
        start = int(beat_index * beat * sample_rate)
        length = min(n - start, int(0.12 * sample_rate))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.03 * sample_rate)) * 0.4
        for ch in range(channels):
            out[ch, start : start + length] += burst
    if channels > 1:  # a small inter-channel delay makes the ears genuinely different
        out[1] = np.roll(out[1], int(0.0007 * sample_rate))
    rms = np.sqrt(np.mean(out**2)) + 1e-12
    out *= 10 ** (level_dbfs / 20) / rms
    return out.astype(np.float32)


def lowpass(x: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Brick-wall low-pass in the frequency domain (a simple, obvious degradation)."""
    spectrum = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / sample_rate)
    spectrum[..., freqs > cutoff_hz] = 0
    return np.fft.irfft(spectrum, n=x.shape[-1], axis=-1).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape)
    scale = np.sqrt(np.mean(x**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return (x + scale * noise).astype(np.float32)
