"""Seeded degradations: a recipe (JSON-able dict) -> a deterministic function of the audio.

``apply_recipe(x, sr, recipe, audiogram)`` maps a mono float64 signal to a processed signal of the
same length. All randomness inside a process comes from ``recipe["seed"]``, so a manifest row
regenerates bit-exactly. ``sample_recipe(rng)`` draws recipes; ``RECIPE_WEIGHTS`` sets how often
each kind is drawn and can be refitted from a labelled pilot (see ``fit_recipe_weights``) so that
labels come out roughly uniform over 0..1 (Kasperuk & Zielinski's binned re-sampling).

The codec ladder (mp2, mp3, AAC ADTS, Vorbis, Opus at 24-320 kb/s) follows Kasperuk & Zielinski;
codecs run through ffmpeg on temp files and the decoded signal is aligned back onto the reference
(encoder delay / padding removed by cross-correlation), so HAAQI sees coding error, not a shift.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy import signal

from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES
from haaqicli.util.errors import AudioError, ToolMissingError

Recipe = dict[str, Any]

# --------------------------------------------------------------------------------------------
# helpers


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x), dtype=np.float64)))


def _rng(recipe: Mapping[str, Any]) -> np.random.Generator:
    return np.random.default_rng(int(recipe.get("seed", 0)))


def _sos_filter(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    # Zero-phase, so a filtered signal stays time-aligned with its reference.
    return signal.sosfiltfilt(sos, x)


def align_to(reference: np.ndarray, processed: np.ndarray, max_lag: int) -> tuple[np.ndarray, int]:
    """Shift ``processed`` so it best matches ``reference`` (lag search within +-max_lag samples).

    Returns (aligned signal of len(reference), lag) where a positive lag means ``processed`` was
    late by ``lag`` samples (codec delay) and has been advanced.
    """
    n = len(reference)
    m = len(processed)
    size = 1 << int(np.ceil(np.log2(n + m)))
    spec = np.fft.rfft(processed, size) * np.conj(np.fft.rfft(reference, size))
    xcorr = np.fft.irfft(spec, size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([xcorr[: max_lag + 1], xcorr[size - max_lag :]])
    lag = int(lags[int(np.argmax(values))])
    out = np.zeros(n, dtype=np.float64)
    if lag >= 0:
        seg = processed[lag : lag + n]
        out[: len(seg)] = seg
    else:
        seg = processed[: n + lag]
        out[-lag : -lag + len(seg)] = seg
    return out, lag


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise ToolMissingError("ffmpeg is needed for codec degradations but is not on PATH (apt-get install ffmpeg)")
    return exe


# --------------------------------------------------------------------------------------------
# processes: each takes (x, sr, recipe, audiogram) and returns a signal of the same length

# codec -> (ffmpeg encoder, container extension, extra args, bitrates kb/s). We code mono, so the
# ladder reaches lower than Kasperuk & Zielinski's stereo 24-320 kb/s, down to each codec's lowest
# bitrates that users meet (Opus 6 kb/s, AAC 16 kb/s, MP3 8 kb/s).
CODECS: dict[str, tuple[str, str, tuple[str, ...], tuple[int, ...]]] = {
    "mp2": ("mp2", "mp2", (), (32, 48, 64, 80, 96, 128, 160, 192)),
    "mp3": ("libmp3lame", "mp3", (), (8, 16, 24, 32, 48, 64, 96, 128, 192, 320)),
    "aac": ("aac", "aac", ("-f", "adts"), (16, 20, 24, 32, 48, 64, 96, 128, 192, 256)),
    "vorbis": ("libvorbis", "ogg", (), (32, 48, 64, 96, 128, 192)),
    "opus": ("libopus", "opus", (), (6, 8, 10, 12, 16, 24, 32, 48, 64, 96, 128, 256)),
}
# MPEG audio has one bitrate table per sample-rate family: MPEG-1 (32-48 kHz) starts at 32 kb/s, so
# libmp3lame silently codes `-b:a 8k` at 44.1 kHz as 32 kb/s. Below 32 kb/s the encoder runs at a
# MPEG-2/2.5 rate whose table holds the bitrate (8 kb/s at 8 kHz, as LAME's own presets do).
MP3_LOW_RATES: dict[int, int] = {8: 8000, 16: 16000, 24: 24000}


def encode_rate(name: str, bitrate: int, sr: int) -> int:
    """The sample rate a codec recipe encodes at: Opus only codes 48 kHz; low MP3 bitrates need an
    MPEG-2/2.5 rate (see MP3_LOW_RATES); unusual source rates are coded at 48 kHz."""
    if name == "opus":
        return 48000
    if name == "mp3" and int(bitrate) in MP3_LOW_RATES:
        return MP3_LOW_RATES[int(bitrate)]
    return sr if sr in (44100, 48000) else 48000


def encoded_bitrate(path: str | Path, seconds: float) -> float:
    """The bitrate (kb/s) an encoded file really has: its size over the signal's duration."""
    return os.path.getsize(path) * 8 / 1000 / seconds


def codec(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Encode + decode with ffmpeg at ``recipe['bitrate']`` kb/s, then align back onto the input."""
    return _codec_round_trip(x, sr, recipe)[0]


def _codec_round_trip(x: np.ndarray, sr: int, recipe: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """(decoded signal aligned onto ``x``, the encoded file's real bitrate in kb/s)."""
    name = recipe["codec"]
    encoder, ext, extra, _ = CODECS[name]
    exe = _ffmpeg()
    peak = float(np.max(np.abs(x))) or 1.0
    # Encode at a safe digital level (codecs clip at full scale), undo the gain after decoding.
    gain = 0.5 / peak
    rate = int(recipe.get("rate_hz") or encode_rate(name, int(recipe["bitrate"]), sr))
    with tempfile.TemporaryDirectory(prefix="haaqi-codec-") as tmp:
        src = os.path.join(tmp, "in.wav")
        enc = os.path.join(tmp, f"enc.{ext}")
        dec = os.path.join(tmp, "dec.wav")
        sf.write(src, (x * gain).astype(np.float32), sr, subtype="FLOAT")
        enc_rate = ["-ar", str(rate)] if rate != sr else []
        common = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1"]
        # Two attempts: on a loaded machine ffmpeg has (rarely, not reproducibly) left a truncated
        # encoded file that the decoder then rejects; the bit-exact encode gives the same result twice.
        for attempt in (1, 2):
            try:
                subprocess.run(
                    [*common, "-i", src, "-ac", "1", *enc_rate, "-c:a", encoder, "-b:a",
                     f"{int(recipe['bitrate'])}k", "-fflags", "+bitexact", "-flags:a", "+bitexact", *extra, enc],
                    check=True, capture_output=True,
                )
                subprocess.run(
                    [*common, "-i", enc, "-ac", "1", "-ar", str(sr), "-c:a", "pcm_f32le", "-fflags", "+bitexact", dec],
                    check=True, capture_output=True,
                )
                break
            except subprocess.CalledProcessError as error:
                if attempt == 2:
                    last = error.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                    raise AudioError(f"ffmpeg {name} at {recipe['bitrate']} kb/s failed: {last[0]}") from None
        actual = encoded_bitrate(enc, len(x) / sr)
        decoded, _ = sf.read(dec, dtype="float64", always_2d=True)
    decoded = decoded[:, 0] / gain
    aligned, _ = align_to(x, decoded, max_lag=min(len(x) // 4, int(0.1 * sr)))
    return aligned, actual


def lowpass(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    cutoff = min(float(recipe["cutoff_hz"]), 0.45 * sr)
    sos = signal.butter(int(recipe.get("order", 8)), cutoff, btype="low", fs=sr, output="sos")
    return _sos_filter(x, sos)


def highpass(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    sos = signal.butter(int(recipe.get("order", 4)), float(recipe["cutoff_hz"]), btype="high", fs=sr, output="sos")
    return _sos_filter(x, sos)


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, kind: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    if kind == "pink":
        spec[1:] /= np.sqrt(freqs[1:] / freqs[1])
        spec[0] = 0.0
        return np.fft.irfft(spec, n)
    if kind == "babble":
        # Babble-like: several talkers of speech-shaped noise (LTASS-like, -9 dB/oct above 500 Hz,
        # roll-off below 150 Hz), each modulated by a random 2-8 Hz syllabic envelope.
        shape = 1.0 / np.sqrt(1.0 + (freqs / 500.0) ** 3) * (freqs / np.sqrt(freqs**2 + 150.0**2))
        out = np.zeros(n)
        t = np.arange(n) / sr
        for _ in range(int(rng.integers(4, 9))):
            talker = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n)
            rate = rng.uniform(2.0, 8.0)
            envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0.0, None) ** 1.5
            envelope *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t + rng.uniform(0, 2 * np.pi)) ** 2
            out += talker * envelope
        return out
    raise ValueError(f"unknown noise kind {kind!r}")


def noise(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Additive noise at ``snr_db`` relative to the signal RMS."""
    n = _shaped_noise(_rng(recipe), len(x), sr, recipe["kind"])
    scale = _rms(x) / (_rms(n) or 1.0) * 10 ** (-float(recipe["snr_db"]) / 20.0)
    return x + scale * n


def clipping(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Hard or soft (tanh) clipping at a fraction of the peak."""
    threshold = float(recipe["threshold"]) * (float(np.max(np.abs(x))) or 1.0)
    if recipe.get("mode", "hard") == "soft":
        return threshold * np.tanh(x / threshold)
    return np.clip(x, -threshold, threshold)


def bitdepth(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Uniform quantisation to ``bits`` with full scale at the clip's peak (no dither)."""
    peak = float(np.max(np.abs(x))) or 1.0
    steps = 2 ** (int(recipe["bits"]) - 1)
    return np.round(x / peak * steps) / steps * peak


def samplerate(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Down- and up-sample through ``rate_hz``; ``alias=True`` skips the anti-alias filter."""
    low = int(recipe["rate_hz"])
    if recipe.get("alias", False):
        # Sample-and-hold decimation: aliasing and imaging like a cheap converter.
        step = sr / low
        idx = np.minimum((np.floor(np.arange(len(x)) / step) * step).astype(np.int64), len(x) - 1)
        return x[idx]
    g = np.gcd(low, sr)
    down = signal.resample_poly(x, low // g, sr // g)
    up = signal.resample_poly(down, sr // g, low // g)
    out = np.zeros(len(x))
    out[: min(len(x), len(up))] = up[: len(x)]
    return out


def compressor(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Feed-forward dynamic-range compression with a smoothed level detector and make-up gain."""
    tau = float(recipe.get("time_ms", 20.0)) / 1000.0
    alpha = np.exp(-1.0 / (tau * sr))
    power = signal.lfilter([1 - alpha], [1, -alpha], np.square(x))
    level_db = 10 * np.log10(np.maximum(power, 1e-12))
    threshold_db = 10 * np.log10(np.mean(np.square(x)) + 1e-12) + float(recipe["threshold_db"])
    over = np.maximum(level_db - threshold_db, 0.0)
    gain_db = -over * (1.0 - 1.0 / float(recipe["ratio"]))
    y = x * 10 ** (gain_db / 20.0)
    # Make-up gain restores the input RMS: compression, not a level change.
    return y * (_rms(x) / (_rms(y) or 1.0))


def _fft_gain(x: np.ndarray, sr: int, gain_db: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    n = len(x)
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    return np.fft.irfft(spec * 10 ** (gain_db(freqs) / 20.0), n)


def tilt(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Spectral tilt of ``db_per_octave`` around 1 kHz (zero-phase, limited to +-24 dB)."""
    slope = float(recipe["db_per_octave"])

    def gain(f: np.ndarray) -> np.ndarray:
        return np.clip(slope * np.log2(np.maximum(f, 20.0) / 1000.0), -24.0, 24.0)

    y = _fft_gain(x, sr, gain)
    return y * (_rms(x) / (_rms(y) or 1.0))


def _peaking_sos(f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    # RBJ audio-EQ-cookbook peaking biquad.
    a = 10 ** (gain_db / 40.0)
    w0 = 2 * np.pi * f0 / sr
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def resonance(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Peaks (or notches) from a list of ``[freq_hz, gain_db, q]``, like a poorly fitted earmould."""
    y = x
    for f0, gain_db, q in recipe["peaks"]:
        if f0 < 0.45 * sr:
            y = signal.sosfilt(_peaking_sos(float(f0), float(gain_db), float(q), sr), y)
    return y


def reverb(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Synthetic exponential room impulse response (RT60, direct-to-reverberant ratio)."""
    rng = _rng(recipe)
    rt60 = float(recipe["rt60_s"])
    length = int(min(rt60 * 1.2, 3.0) * sr)
    t = np.arange(length) / sr
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    tail[: int(0.005 * sr)] = 0.0  # first reflections arrive after ~5 ms
    # Air absorption: the tail darkens with time, approximated by low-passing the whole tail.
    tail = signal.sosfilt(signal.butter(2, min(6000.0, 0.45 * sr), fs=sr, output="sos"), tail)
    tail /= np.sqrt(np.sum(tail**2)) or 1.0
    drr = 10 ** (float(recipe["drr_db"]) / 20.0)
    rir = tail
    rir[0] += drr
    wet = signal.fftconvolve(x, rir)[: len(x)]
    return wet * (_rms(x) / (_rms(wet) or 1.0))


def dropouts(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Zero out ``count`` random gaps of ``min_ms``..``max_ms`` (packet loss, buffer underruns)."""
    rng = _rng(recipe)
    y = x.copy()
    for _ in range(int(recipe["count"])):
        width = int(rng.uniform(float(recipe["min_ms"]), float(recipe["max_ms"])) / 1000.0 * sr)
        start = int(rng.integers(0, max(1, len(x) - width)))
        y[start : start + width] = 0.0
    return y


def packet_loss(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Lost packets of ``packet_ms`` in bursts (a two-state Gilbert-Elliott channel: ``loss_rate`` of
    the packets lost, ``burst`` packets per loss on average), concealed as a streaming decoder would:
    silence (``conceal="zero"``) or the last good packet repeated and fading (``"repeat"``)."""
    rng = _rng(recipe)
    size = max(1, int(round(float(recipe["packet_ms"]) / 1000.0 * sr)))
    n_packets = -(-len(x) // size)
    rate = float(recipe["loss_rate"])
    burst = max(1.0, float(recipe.get("burst", 1.0)))
    leave = 1.0 / burst  # P(lost -> good): mean burst length `burst` packets
    enter = min(1.0, rate * leave / max(1e-9, 1.0 - rate))  # stationary loss share = rate
    lost = np.zeros(n_packets, dtype=bool)
    state = False
    for i, u in enumerate(rng.random(n_packets)):
        state = (u >= leave) if state else (u < enter)
        lost[i] = state
    y = x.copy()
    repeat = recipe.get("conceal", "zero") == "repeat"
    run = 0
    for i in np.flatnonzero(lost) if not repeat else range(n_packets):
        start, stop = i * size, min(len(x), (i + 1) * size)
        if not repeat:
            y[start:stop] = 0.0
            continue
        if not lost[i]:
            run = 0
            continue
        run += 1
        previous = y[max(0, start - size) : start]
        if len(previous) < stop - start:
            y[start:stop] = 0.0
            continue
        y[start:stop] = previous[: stop - start] * 0.6**run
    return y


def limiter(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """A mastering limiter: ``drive_db`` of gain into a ceiling at the input's peak (look-ahead peak
    hold, ``release_ms`` recovery, a final safety clip), then the input RMS restored."""
    peak = float(np.max(np.abs(x))) or 1.0
    y = x * 10 ** (float(recipe["drive_db"]) / 20.0)
    look = max(1, int(0.005 * sr))
    need = np.minimum(1.0, peak / np.maximum(np.abs(y), 1e-12))
    # The gain a sample needs is held over the look-ahead window before it, so the gain is down in time.
    from scipy.ndimage import minimum_filter1d

    held = minimum_filter1d(need, size=2 * look + 1, mode="nearest")
    alpha = np.exp(-1.0 / (float(recipe.get("release_ms", 100.0)) / 1000.0 * sr))
    # Instant attack, exponential release: the running min of (held, released previous gain).
    smooth = signal.lfilter([1 - alpha], [1, -alpha], held, zi=[alpha * held[0]])[0]
    gain = np.minimum(held, smooth)
    out = np.clip(y * gain, -peak, peak)
    return out * (_rms(x) / (_rms(out) or 1.0))


def level(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Gain in dB, optionally a linear ramp from ``gain_db`` to ``end_gain_db`` over the clip."""
    start = float(recipe["gain_db"])
    end = float(recipe.get("end_gain_db", start))
    return x * 10 ** (np.linspace(start, end, len(x)) / 20.0)


# NAL-R frequency-specific constants (Byrne & Dillon 1986) at AUDIOGRAM_FREQUENCIES.
_NALR_K = {250: -17.0, 500: -8.0, 1000: 1.0, 2000: -1.0, 3000: -2.0, 4000: -2.0, 6000: -2.0, 8000: -2.0}


def nalr_gains(audiogram: np.ndarray) -> np.ndarray:
    """NAL-R insertion gains (dB) at AUDIOGRAM_FREQUENCIES, negative gains floored at 0."""
    hl = np.asarray(audiogram, dtype=float)
    freqs = list(AUDIOGRAM_FREQUENCIES)
    h3fa = (hl[freqs.index(500)] + hl[freqs.index(1000)] + hl[freqs.index(2000)]) / 3.0
    k = np.asarray([_NALR_K[f] for f in freqs])
    return np.maximum(0.15 * h3fa + 0.31 * hl + k, 0.0)


def nalr(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    """Linear NAL-R prescription for the item's audiogram (zero-phase FIR), scaled by ``amount``."""
    if audiogram is None:
        raise ValueError("nalr needs the item's audiogram")
    gains = nalr_gains(audiogram) * float(recipe.get("amount", 1.0))
    freqs = np.asarray(AUDIOGRAM_FREQUENCIES, dtype=float)

    def gain(f: np.ndarray) -> np.ndarray:
        return np.interp(np.log2(np.maximum(f, 1.0)), np.log2(freqs), gains)

    return _fft_gain(x, sr, gain)


def identity(x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | None = None) -> np.ndarray:
    return x.copy()


PROCESSES: dict[str, Callable[..., np.ndarray]] = {
    "identity": identity,
    "codec": codec,
    "lowpass": lowpass,
    "highpass": highpass,
    "noise": noise,
    "clipping": clipping,
    "bitdepth": bitdepth,
    "samplerate": samplerate,
    "compressor": compressor,
    "tilt": tilt,
    "resonance": resonance,
    "reverb": reverb,
    "dropouts": dropouts,
    "packet_loss": packet_loss,
    "limiter": limiter,
    "level": level,
    "nalr": nalr,
}


def apply_recipe(
    x: np.ndarray, sr: int, recipe: Mapping[str, Any], audiogram: np.ndarray | Sequence[float] | None = None
) -> np.ndarray:
    """Apply a recipe (or a ``cascade`` of recipes) to a mono signal; same length, float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("apply_recipe expects a mono 1-D signal")
    hl = None if audiogram is None else np.asarray(audiogram, dtype=float)
    kind = recipe["type"]
    if kind == "cascade":
        y = x
        for step in recipe["steps"]:
            y = apply_recipe(y, sr, step, hl)
        return y
    try:
        process = PROCESSES[kind]
    except KeyError:
        raise ValueError(f"unknown degradation type {kind!r}") from None
    y = np.asarray(process(x, sr, recipe, hl), dtype=np.float64)
    if y.shape != x.shape or not np.all(np.isfinite(y)):
        raise AudioError(f"degradation {kind} produced an invalid signal")
    return y


# --------------------------------------------------------------------------------------------
# recipe sampling

# Relative draw frequency of each kind. Starting values were chosen so that mild and severe
# versions are both common; refit from a labelled pilot with fit_recipe_weights().
RECIPE_WEIGHTS: dict[str, float] = {
    "identity": 0.04,
    "codec": 0.20,
    "lowpass": 0.07,
    "highpass": 0.03,
    "noise": 0.12,
    "clipping": 0.06,
    "bitdepth": 0.04,
    "samplerate": 0.05,
    "compressor": 0.04,
    "tilt": 0.04,
    "resonance": 0.04,
    "reverb": 0.05,
    "dropouts": 0.02,
    "packet_loss": 0.04,
    "level": 0.03,
    "nalr": 0.06,
    "cascade": 0.10,
}


# Share of cascades with three steps (the rest have two).
CASCADE_OF_THREE = 0.35


def _draw(rng: np.random.Generator, kind: str, has_ffmpeg: bool, sample_rate: int | None = None) -> Recipe:
    seed = int(rng.integers(0, 2**31 - 1))
    if kind == "identity":
        return {"type": "identity"}
    if kind == "codec":
        name = str(rng.choice(sorted(CODECS)))
        bitrate = int(rng.choice(CODECS[name][3]))
        recipe: Recipe = {"type": "codec", "codec": name, "bitrate": bitrate}
        if sample_rate is not None:  # recorded, so the manifest says at what rate the bitrate was coded
            recipe["rate_hz"] = encode_rate(name, bitrate, int(sample_rate))
        return recipe
    if kind == "lowpass":
        return {"type": "lowpass", "cutoff_hz": float(rng.choice([3500.0, 5000.0, 7500.0, 9000.0]))}
    if kind == "highpass":
        return {"type": "highpass", "cutoff_hz": float(rng.choice([100.0, 250.0, 500.0, 1000.0, 2000.0]))}
    if kind == "noise":
        return {"type": "noise", "kind": str(rng.choice(["white", "pink", "babble"])),
                "snr_db": float(rng.choice([-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 30.0])), "seed": seed}
    if kind == "clipping":
        # Down to 10% of the peak, log-uniform: strong clipping is as common as mild.
        return {"type": "clipping", "threshold": round(float(np.exp(rng.uniform(np.log(0.1), np.log(0.9)))), 3),
                "mode": str(rng.choice(["hard", "soft"]))}
    if kind == "bitdepth":
        return {"type": "bitdepth", "bits": int(rng.integers(3, 13))}
    if kind == "samplerate":
        return {"type": "samplerate", "rate_hz": int(rng.choice([4000, 8000, 11025, 16000, 22050])),
                "alias": bool(rng.random() < 0.3)}
    if kind == "compressor":
        return {"type": "compressor", "threshold_db": round(float(rng.uniform(-25.0, 0.0)), 1),
                "ratio": float(rng.choice([2.0, 4.0, 8.0, 20.0])), "time_ms": float(rng.choice([5.0, 20.0, 100.0]))}
    if kind == "tilt":
        return {"type": "tilt", "db_per_octave": round(float(rng.choice([-1, 1]) * rng.uniform(1.5, 9.0)), 2)}
    if kind == "resonance":
        peaks = [[round(float(np.exp(rng.uniform(np.log(300.0), np.log(8000.0)))), 1),
                  round(float(rng.uniform(-12.0, 20.0)), 1), round(float(rng.uniform(1.0, 10.0)), 2)]
                 for _ in range(int(rng.integers(1, 4)))]
        return {"type": "resonance", "peaks": peaks}
    if kind == "reverb":
        return {"type": "reverb", "rt60_s": round(float(rng.uniform(0.3, 2.5)), 2),
                "drr_db": round(float(rng.uniform(-5.0, 15.0)), 1), "seed": seed}
    if kind == "packet_loss":
        return {"type": "packet_loss", "packet_ms": float(rng.choice([10.0, 20.0, 40.0])),
                "loss_rate": round(float(rng.uniform(0.01, 0.2)), 3), "burst": round(float(rng.uniform(1.0, 4.0)), 2),
                "conceal": str(rng.choice(["zero", "repeat"])), "seed": seed}
    if kind == "dropouts":
        return {"type": "dropouts", "count": int(rng.integers(1, 12)), "min_ms": 10.0,
                "max_ms": float(rng.choice([50.0, 100.0, 250.0])), "seed": seed}
    if kind == "level":
        g = round(float(rng.uniform(-20.0, 15.0)), 1)
        recipe = {"type": "level", "gain_db": g}
        if rng.random() < 0.3:
            recipe["end_gain_db"] = round(float(rng.uniform(-20.0, 15.0)), 1)
        return recipe
    if kind == "nalr":
        return {"type": "nalr", "amount": round(float(rng.uniform(0.5, 1.0)), 2)}
    raise ValueError(f"unknown recipe kind {kind!r}")


def sample_recipe(
    rng: np.random.Generator, weights: Mapping[str, float] | None = None, has_ffmpeg: bool | None = None,
    sample_rate: int | None = None,
) -> Recipe:
    """Draw one recipe. Without ffmpeg, codec recipes are not drawn (their weight is dropped). A cascade
    chains two or three different kinds. ``sample_rate`` (the source's) records codecs' encode rates."""
    weights = dict(RECIPE_WEIGHTS if weights is None else weights)
    if has_ffmpeg is None:
        has_ffmpeg = shutil.which("ffmpeg") is not None
    if not has_ffmpeg:
        weights.pop("codec", None)
    names = sorted(k for k, v in weights.items() if v > 0)
    p = np.asarray([weights[k] for k in names], dtype=float)
    kind = str(rng.choice(names, p=p / p.sum()))
    if kind == "cascade":
        single = [k for k in names if k not in ("cascade", "identity")]
        q = np.asarray([weights[k] for k in single], dtype=float)
        count = min(len(single), 3 if rng.random() < CASCADE_OF_THREE else 2)
        kinds = rng.choice(single, size=count, replace=False, p=q / q.sum())
        return {"type": "cascade", "steps": [_draw(rng, str(k), has_ffmpeg, sample_rate) for k in kinds]}
    return _draw(rng, kind, has_ffmpeg, sample_rate)


def recipe_kind(recipe: Mapping[str, Any]) -> str:
    """Short label for stats: the type, or 'cascade:a+b'."""
    if recipe["type"] == "cascade":
        return "cascade:" + "+".join(step["type"] for step in recipe["steps"])
    return str(recipe["type"])


def recipe_to_json(recipe: Mapping[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def recipe_from_json(text: str) -> Recipe:
    return json.loads(text)


def fit_recipe_weights(kinds: Sequence[str], labels: Sequence[float], n_bins: int = 10,
                       prior: Mapping[str, float] | None = None, strength: float = 1.0,
                       floor_share: float = 0.5) -> dict[str, float]:
    """Weights per recipe kind whose mixture of pilot label histograms is closest to uniform.

    Non-negative least squares on the per-kind label histograms (each normalised to sum 1),
    pulled towards the ``prior`` weights with ``strength`` (a small pilot has noisy histograms),
    and floored at ``floor_share`` of the prior so every kind stays in the mix.
    """
    # lazy: scipy only where this path runs (start-up time)
    from scipy.optimize import nnls

    kinds_arr = np.asarray([k.split(":")[0] for k in kinds])
    labels_arr = np.asarray(labels, dtype=float)
    ok = np.isfinite(labels_arr)
    kinds_arr, labels_arr = kinds_arr[ok], labels_arr[ok]
    names = sorted(set(kinds_arr.tolist()))
    base = dict(RECIPE_WEIGHTS if prior is None else prior)
    w0 = np.asarray([base.get(n, 1.0 / len(names)) for n in names], dtype=float)
    w0 /= w0.sum()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    hists = []
    for name in names:
        h, _ = np.histogram(np.clip(labels_arr[kinds_arr == name], 0, 1), bins=edges)
        hists.append(h / max(h.sum(), 1))
    a = np.stack(hists, axis=1)  # (bins, kinds)
    target = np.full(n_bins, 1.0 / n_bins)
    reg = np.sqrt(strength) * np.eye(len(names))
    # Rows: histogram match, pull towards the prior, weights sum to one.
    lhs = np.vstack([a, reg, np.ones((1, len(names)))])
    rhs = np.concatenate([target, np.sqrt(strength) * w0, [1.0]])
    w, _ = nnls(lhs, rhs)
    w = np.maximum(w, floor_share * w0)
    w /= w.sum()
    return {name: round(float(v), 4) for name, v in zip(names, w, strict=True)}


def save_weights(weights: Mapping[str, float], path: str | Path) -> None:
    Path(path).write_text(json.dumps(dict(weights), indent=2, sort_keys=True) + "\n")


def load_weights(path: str | Path) -> dict[str, float]:
    data = json.loads(Path(path).read_text())
    unknown = set(data) - set(RECIPE_WEIGHTS)
    if unknown:
        raise ValueError(f"{path}: unknown recipe kinds {sorted(unknown)}")
    return {str(k): float(v) for k, v in data.items()}
