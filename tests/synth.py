"""Small synthetic signals for tests: tones, harmonic chords, noise bursts, and codec copies via ffmpeg.

All generators return float32 arrays shaped (channels, n). Everything is seeded and tiny.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

HAVE_FFMPEG = shutil.which("ffmpeg") is not None

# codec name -> (ffmpeg encoder, file extension)
CODECS: dict[str, tuple[str, str]] = {
    "mp3": ("libmp3lame", ".mp3"),
    "opus": ("libopus", ".opus"),
    "vorbis": ("libvorbis", ".ogg"),
    "aac": ("aac", ".m4a"),
    "flac": ("flac", ".flac"),
    "aiff": ("pcm_s16be", ".aiff"),
    "alac": ("alac", ".m4a"),
}


def _channels(x: np.ndarray, channels: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if channels == 1:
        return x[None, :]
    # slightly different levels per channel so stereo balance is testable
    return np.stack([x * (1.0 - 0.2 * c) for c in range(channels)]).astype(np.float32)


def tone(freq: float = 440.0, sr: int = 16000, seconds: float = 1.0, amplitude: float = 0.3,
         channels: int = 1, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return _channels(amplitude * np.sin(2 * np.pi * freq * t + phase), channels)


def chord(root: float = 220.0, sr: int = 16000, seconds: float = 1.0, amplitude: float = 0.3,
          intervals: Sequence[float] = (1.0, 1.25, 1.5), harmonics: int = 4, channels: int = 1) -> np.ndarray:
    """A major triad of harmonic tones (1/k amplitude per harmonic), peak-normalised to ``amplitude``."""
    t = np.arange(int(round(sr * seconds))) / sr
    x = np.zeros_like(t)
    for ratio in intervals:
        for k in range(1, harmonics + 1):
            f = root * ratio * k
            if f < sr / 2:
                x += np.sin(2 * np.pi * f * t) / k
    x *= amplitude / max(np.max(np.abs(x)), 1e-12)
    return _channels(x, channels)


def noise_burst(sr: int = 16000, seconds: float = 1.0, amplitude: float = 0.1, burst_s: float = 0.2,
                period_s: float = 0.5, seed: int = 0, channels: int = 1) -> np.ndarray:
    """White-noise bursts of ``burst_s`` every ``period_s`` (silence between)."""
    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    x = rng.standard_normal(n) * amplitude
    gate = (np.arange(n) / sr) % period_s < burst_s
    return _channels(x * gate, channels)


def write_wav(path: str | Path, x: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    """Write (channels, n) or (n,) audio as WAV (any libsndfile format by extension, really)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(x, dtype=np.float32)
    sf.write(str(path), data.T if data.ndim == 2 else data, sr, subtype=subtype)
    return path


def encode_with_ffmpeg(path: str | Path, codec: str, bitrate: str | None = None,
                       out: str | Path | None = None, sample_rate: int | None = None) -> Path:
    """Encode ``path`` with ffmpeg (codec: mp3, opus, vorbis, aac, flac, aiff, alac); returns the new file."""
    encoder, ext = CODECS[codec]
    src = Path(path)
    dst = Path(out) if out is not None else src.with_name(f"{src.stem}_{codec}{ext}")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-vn", "-c:a", encoder]
    if bitrate:
        cmd += ["-b:a", str(bitrate)]
    if sample_rate:
        cmd += ["-ar", str(sample_rate)]
    cmd.append(str(dst))
    subprocess.run(cmd, check=True, capture_output=True)
    return dst
