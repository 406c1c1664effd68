"""Kates' auditory periphery model as used by HAAQI v1 (pyclarity-compatible behaviour).

Stages: 24 kHz resampling -> broadband alignment -> optional NAL-R -> middle ear -> gammatone
filterbank (control path sets the level-dependent bandwidth) -> OHC compression -> per-band
envelope alignment -> dB SL conversion -> IHC adaptation -> threshold noise -> group-delay
compensation. All 32 bands are processed at once; only the truly sequential recursions
(gammatone resonators, IHC adaptation) are compiled with numba.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from numba import njit
from scipy.signal import butter, cheby2, lfilter, resample_poly

FS = 24_000.0  # the model's internal sample rate (Hz)
N_BANDS = 32
HAAQI_FREQUENCIES = np.array([250.0, 500.0, 1000.0, 2000.0, 4000.0, 6000.0])
EAR_Q = 9.26449
MIN_BW = 24.7
SMALL = 1e-30


@dataclass
class EarOutput:
    """Model outputs for reference (x) and processed (y); arrays are (bands, samples)."""

    x_db: np.ndarray
    x_bm: np.ndarray
    y_db: np.ndarray
    y_bm: np.ndarray
    x_sl: np.ndarray
    y_sl: np.ndarray


# ----------------------------------------------------------------------------- parameters


def center_frequencies(n_bands: int = N_BANDS, low: float = 80.0, high: float = 8000.0) -> np.ndarray:
    """ERB-spaced centre frequencies (Slaney's formula), ascending from `low` to `high`."""
    q = EAR_Q * MIN_BW
    k = np.arange(1, n_bands)
    cf = -q + np.exp(k * (np.log(low + q) - np.log(high + q)) / (n_bands - 1)) * (high + q)
    return np.concatenate(([high], cf))[::-1]


def loss_parameters(loss6: np.ndarray, cf: np.ndarray) -> tuple[np.ndarray, ...]:
    """Split the loss into OHC/IHC parts; returns (attn_ohc, bandwidth, low_knee, ratio, attn_ihc)."""
    loss6 = np.asarray(loss6, dtype=float)
    grid = np.concatenate(([cf[0]], HAAQI_FREQUENCIES, [cf[-1]]))
    values = np.concatenate(([loss6[0]], loss6, [loss6[-1]]))
    loss = np.maximum(np.interp(cf, grid, values), 0.0)
    n = len(cf)
    ratio_normal = 1.25 + 2.25 * np.arange(n) / (n - 1)
    ohc_full = 1.25 * 70.0 * (1.0 - 1.0 / ratio_normal)  # loss at which the OHC part saturates
    heavy = loss >= ohc_full
    attn_ohc = np.where(heavy, 0.8 * ohc_full, 0.8 * loss)
    attn_ihc = np.where(heavy, 0.2 * ohc_full + (loss - ohc_full), 0.2 * loss)
    bandwidth = 1.0 + attn_ohc / 50.0 + 2.0 * (attn_ohc / 50.0) ** 6
    low_knee = attn_ohc + 30.0
    upper_out = 30.0 + 70.0 / ratio_normal
    ratio = (100.0 - low_knee) / (upper_out + attn_ohc - low_knee)
    return attn_ohc, bandwidth, low_knee, ratio, attn_ihc


# ----------------------------------------------------------------------------- input stages


def resample_to_model_rate(x: np.ndarray, sample_rate: float) -> np.ndarray:
    """Resample to 24 kHz with the rate rounded to whole kHz, matching the reference model (so 44.1 kHz
    is treated as 44 kHz), then match the RMS of the input (within 21 kHz when downsampling)."""
    target_khz = int(round(FS / 1000))
    source_khz = int(np.round(sample_rate / 1000))
    if source_khz == target_khz:
        return np.asarray(x, dtype=float)
    y = resample_poly(x, target_khz, source_khz)
    if source_khz < target_khz:
        gain = np.sqrt(np.mean(x**2)) / np.sqrt(np.mean(y**2))
        return gain * y
    b_in, a_in = cheby2(7, 30, 21 / source_khz)
    b_out, a_out = cheby2(7, 30, 21 / target_khz)
    rms_in = np.sqrt(np.mean(lfilter(b_in, a_in, x) ** 2))
    rms_out = np.sqrt(np.mean(lfilter(b_out, a_out, y) ** 2))
    return (rms_in / rms_out) * y


def _xcorr_fft(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """c[k] = sum_n a[n+k] b[n] for k in [-max_lag, max_lag] (rows batched), non-circular via padding."""
    n = a.shape[-1]
    size = sfft.next_fast_len(n + max_lag + 1, real=True)
    spec = sfft.rfft(a, size, axis=-1) * np.conj(sfft.rfft(b, size, axis=-1))
    full = sfft.irfft(spec, size, axis=-1)
    return np.concatenate((full[..., size - max_lag :], full[..., : max_lag + 1]), axis=-1)


def input_align(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadband alignment (cross-covariance peak, backed off 2 ms for dispersion), then trim the
    leading/trailing samples where the reference is below 0.001 of its peak."""
    n = min(len(x), len(y))
    ny = len(y)
    # c[j] = sum x[m + j - (n-1)] y[m]; the first maximum of |c| wins, as in the oracle
    c = _xcorr_fft(x[:n] - x[:n].mean(), y[:n] - y[:n].mean(), n - 1)
    delay = (n - 1) - int(np.argmax(np.abs(c)))
    delay = int(np.rint(delay - 2 * FS / 1000.0))
    if delay > 0:
        y = np.concatenate((y[delay:ny], np.zeros(delay)))
    else:
        y = np.concatenate((np.zeros(-delay), y[: ny + delay]))
    ax = np.abs(x)
    above = np.nonzero(ax > 0.001 * ax.max())[0]
    first, last = above[0], min(above[-1], ny)
    return x[first : last + 1], y[first : last + 1]


def _fir2(n_taps: int, freqs: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Frequency-sampling FIR design (MATLAB fir2 semantics, 512-point grid, Hamming window)."""
    grid_n = 512 if n_taps < 1024 else int(2 ** np.ceil(np.log2(n_taps)))
    npt = grid_n + 1
    h = np.zeros(npt)
    h[0] = gains[0]
    start = 0
    for i in range(len(freqs) - 1):
        stop = int(np.fix(freqs[i + 1] * npt)) - 1
        idx = np.arange(start, stop + 1)
        frac = 0.0 if start == stop else (idx - start) / (stop - start)
        h[start : stop + 1] = frac * gains[i + 1] + (1 - frac) * gains[i]
        start = stop + 1
    half = 0.5 * (n_taps - 1)
    h = h * np.exp(-half * 1j * np.pi * np.arange(npt) / (npt - 1))
    full = np.concatenate((h, np.conj(h[npt - 2 : 0 : -1])))
    return np.real(np.fft.ifft(full))[:n_taps] * np.hamming(n_taps)


def nalr_filter(loss6: np.ndarray, n_fir: int = 140) -> np.ndarray:
    """NAL-R prescription as a linear-phase FIR (n_fir+1 taps at 24 kHz); a pure delay for no loss."""
    loss6 = np.asarray(loss6, dtype=float)
    if np.max(loss6) <= 0:
        fir = np.zeros(n_fir + 1)
        fir[n_fir // 2] = 1.0
        return fir
    bias = np.array([-17.0, -8.0, 1.0, -1.0, -2.0, -2.0])
    critical = loss6[1] + loss6[2] + loss6[3]
    x_ave = 0.05 * critical if critical <= 180 else 9.0 + 0.116 * (critical - 180)
    gain_db = np.maximum(x_ave + 0.31 * loss6 + bias, 0.0)
    fmax = 0.5 * FS
    grid = np.concatenate(([0.0], HAAQI_FREQUENCIES, [fmax]))
    values = np.concatenate(([gain_db[0]], gain_db, [gain_db[-1]]))
    freqs = np.linspace(0, n_fir, n_fir + 1) / n_fir
    return _fir2(n_fir + 1, freqs, 10 ** (np.interp(fmax * freqs, grid, values) / 20))


def middle_ear(x: np.ndarray) -> np.ndarray:
    """1-pole low-pass at 5 kHz then 2-pole high-pass at 350 Hz (rough threshold equal-loudness)."""
    b, a = butter(1, 5000 / (0.5 * FS))
    y = lfilter(b, a, x)
    b, a = butter(2, 350 / (0.5 * FS), "high")
    return lfilter(b, a, y)


# ----------------------------------------------------------------------------- filterbank


def _resonator_coefficients(rel_bw: np.ndarray, cf: np.ndarray) -> tuple[np.ndarray, ...]:
    erb = MIN_BW + cf / EAR_Q
    a = np.exp(-rel_bw * (2 * np.pi / FS) * erb * 1.019)
    a1, a2, a3, a4, a5 = 4.0 * a, -6.0 * a * a, 4.0 * a**3, -(a**4), 4.0 * a * a
    gain = 2.0 * (1 - a1 - a2 - a3 - a4) / (1 + a1 + a5)
    return a1, a2, a3, a4, a5, gain


@njit(cache=True, fastmath=False)
def _gammatone(x, cf, a1, a2, a3, a4, a5, gain, want_bm):  # pragma: no cover - compiled
    """Complex-demodulated 4th-order gammatone per band: envelope and (optionally) BM motion.

    The carrier is generated by the same 2-D rotation recursion as the reference code, so the
    demodulation phase drifts identically.
    """
    n_bands = cf.shape[0]
    n = x.shape[0]
    env = np.empty((n_bands, n))
    bm = np.empty((n_bands, n)) if want_bm else np.empty((0, 0))
    tpt = 2.0 * np.pi / 24000.0
    for k in range(n_bands):
        cos_n = np.cos(tpt * cf[k])
        sin_n = np.sin(tpt * cf[k])
        c1 = a1[k]
        c2 = a2[k]
        c3 = a3[k]
        c4 = a4[k]
        c5 = a5[k]
        g = gain[k]
        cold = 1.0
        sold = 0.0
        # direct form I states: inputs u[n-1], u[n-2]; outputs y[n-1..n-4], real and imaginary
        ur1 = ur2 = ui1 = ui2 = 0.0
        yr1 = yr2 = yr3 = yr4 = 0.0
        yi1 = yi2 = yi3 = yi4 = 0.0
        for i in range(n):
            if i > 0:
                tmp = cold * cos_n + sold * sin_n
                sold = sold * cos_n - cold * sin_n
                cold = tmp
            ur = x[i] * cold
            ui = x[i] * sold
            yr = ur + c1 * ur1 + c5 * ur2 + c1 * yr1 + c2 * yr2 + c3 * yr3 + c4 * yr4
            yi = ui + c1 * ui1 + c5 * ui2 + c1 * yi1 + c2 * yi2 + c3 * yi3 + c4 * yi4
            ur2 = ur1
            ur1 = ur
            ui2 = ui1
            ui1 = ui
            yr4 = yr3
            yr3 = yr2
            yr2 = yr1
            yr1 = yr
            yi4 = yi3
            yi3 = yi2
            yi2 = yi1
            yi1 = yi
            env[k, i] = g * np.sqrt(yr * yr + yi * yi)
            if want_bm:
                bm[k, i] = g * (yr * cold + yi * sold)
    return env, bm


@njit(cache=True)
def _ihc_adaptation(db, bm):  # pragma: no cover - compiled
    """IHC rapid (2 ms) and short-term (60 ms) adaptation: RC-circuit recursion per band, overshoot 2."""
    delta = 2.0
    tau1 = 0.002
    tau2 = 0.060
    dt = 1.0 / 24000.0
    r1 = 1.0 / delta
    r2 = 0.5 * (1.0 - r1)
    r3 = r2
    c1 = tau1 * (r1 + r2) / (r1 * r2)
    c2 = tau2 / ((r1 + r2) * r3)
    a11 = r1 + r2 + r1 * r2 * (c1 / dt)
    a12 = -r1
    a21 = -r3
    a22 = r2 + r3 + r2 * r3 * (c2 / dt)
    denom = 1.0 / (a11 * a22 - a21 * a12)
    inv_r1 = 1.0 / r1
    p1 = r1 * r2 * (c1 / dt)
    p2 = r2 * r3 * (c2 / dt)
    n_bands, n = db.shape
    out = np.empty_like(db)
    bm_out = np.empty_like(bm)
    for k in range(n_bands):
        v1 = 0.0
        v2 = 0.0
        for i in range(n):
            v0 = db[k, i]
            b1 = v0 * r2 + p1 * v1
            b2 = p2 * v2
            v1 = denom * (a22 * b1 - a12 * b2)
            v2 = denom * (-a21 * b1 + a11 * b2)
            o = (v0 - v1) * inv_r1
            if o < 0.0:
                o = 0.0
            out[k, i] = o
            bm_out[k, i] = bm[k, i] * ((o + 1e-30) / (v0 + 1e-30))
    return out, bm_out


def _bandwidth_for_level(control_rms: np.ndarray, bw_min: np.ndarray, bw_max: np.ndarray, level1: float):
    """Widen the filters linearly between 50 and 100 dB SPL of the control-band level."""
    with np.errstate(divide="ignore"):
        level = 20 * np.log10(control_rms) + level1
    frac = np.clip((level - 50.0) / 50.0, 0.0, 1.0)
    bw = bw_min + frac * (bw_max - bw_min)
    bw = np.where(level < 50, bw_min, np.where(level > 100, bw_max, bw))
    return bw


def _compress(env, bm, control, attn_ohc, low_knee, ratio, level1):
    """OHC compression: gain from the control envelope (linear < knee, CR:1 up to 100 dB SPL),
    smoothed by an 800 Hz one-pole low-pass, applied to envelope and BM motion."""
    log_c = level1 + 20 * np.log10(np.maximum(control, SMALL))
    log_c = np.maximum(np.minimum(log_c, 100.0), low_knee[:, None])
    gain_db = -attn_ohc[:, None] - (log_c - low_knee[:, None]) * (1 - 1 / ratio[:, None])
    gain = 10 ** (gain_db / 20)
    b, a = butter(1, 800 / (0.5 * FS))
    gain = lfilter(b, a, gain, axis=-1)
    return gain * env, gain * bm


def _align_bands(ref: np.ndarray, out: np.ndarray, max_lag_ms: float = 100.0) -> np.ndarray:
    """Shift each processed band to the lag (within +-100 ms) maximising its correlation with the reference."""
    n = ref.shape[-1]
    lags = min(int(np.rint(0.001 * max_lag_ms * FS)), n)
    c = _xcorr_fft(ref, out, lags)  # index j <-> lag j - lags
    # the oracle searches lags -lags+1 .. lags and takes the first maximum
    best = np.argmax(c[:, 1:], axis=-1) + 1 - lags
    shifted = np.empty_like(out)
    for k, lag in enumerate(best):
        delay = -int(lag)
        if delay > 0:
            shifted[k, : n - delay] = out[k, delay:]
            shifted[k, n - delay :] = 0.0
        elif delay < 0:
            shifted[k, :-delay] = 0.0
            shifted[k, -delay:] = out[k, : n + delay]
        else:
            shifted[k] = out[k]
    return shifted


def _to_sl(env: np.ndarray, bm: np.ndarray, attn_ihc: np.ndarray, level1: float):
    """Envelope to dB SL (after IHC attenuation), BM rescaled so its envelope is in dB SL too."""
    db = np.maximum(level1 - attn_ihc[:, None] + 20 * np.log10(env + SMALL), 0.0)
    return db, bm * ((db + SMALL) / (env + SMALL))


def _group_delay_samples(rel_bw: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """Integer DC group delay of each band's resonator (sum k*c_k / sum c_k, numerator minus denominator)."""
    a1, a2, a3, a4, a5, _ = _resonator_coefficients(rel_bw, cf)
    b = np.stack([np.ones_like(a1), a1, a5], axis=1)
    a = np.stack([np.ones_like(a1), -a1, -a2, -a3, -a4], axis=1)
    gd = (b @ np.arange(3)) / b.sum(1) - (a @ np.arange(5)) / a.sum(1)
    return np.rint(gd).astype(int)


def _delay_bands(x: np.ndarray, delays: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    n = x.shape[-1]
    for k, d in enumerate(delays):
        out[k, d:] = x[k, : n - d]
    return out


def _rms_to_sl(avg, control_avg, attn_ohc, low_knee, ratio, attn_ihc, level1):
    """Long-term band RMS through the static compression curve, in dB SL."""
    c = np.maximum(np.minimum(level1 + 20 * np.log10(np.maximum(control_avg, SMALL)), 100.0), low_knee)
    gain = -attn_ohc - (c - low_knee) * (1 - 1 / ratio)
    level = np.maximum(level1 + 20 * np.log10(np.maximum(avg, SMALL)), 0.0)
    return np.maximum(level + gain - attn_ihc, 0.0)


def threshold_noise(shape: tuple[int, int], level1: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise 10 dB below auditory threshold for reference then processed BM motion.

    The reference implementation draws from numpy's legacy global generator (reference first, then
    processed); with an integer seed we draw the identical stream from a private RandomState, so
    results equal the oracle's after `np.random.seed(seed)`.
    """
    rs = np.random.RandomState(seed)
    gain = 10 ** ((-10.0 - level1) / 20)
    return gain * rs.standard_normal(shape), gain * rs.standard_normal(shape)


def ear_model(
    reference: np.ndarray,
    reference_sr: float,
    processed: np.ndarray,
    processed_sr: float,
    loss6: np.ndarray,
    equalisation: int,
    level1: float,
    seed: int | None = 0,
) -> EarOutput:
    """Run both signals through the impaired-ear model (reference gets NAL-R when equalisation == 1)."""
    cf = center_frequencies()
    attn_ohc_y, bw_min_y, knee_y, ratio_y, attn_ihc_y = loss_parameters(loss6, cf)
    loss_x = np.zeros(6) if equalisation == 0 else loss6
    attn_ohc_x, bw_min_x, knee_x, ratio_x, attn_ihc_x = loss_parameters(loss_x, cf)
    bw_max = loss_parameters(np.full(6, 100.0), cf)[1]

    x = resample_to_model_rate(np.asarray(reference, dtype=float), reference_sr)
    y = resample_to_model_rate(np.asarray(processed, dtype=float), processed_sr)
    n = min(len(x), len(y))
    x, y = input_align(x[:n], y[:n])
    n = len(x)
    if equalisation == 1:
        fir = nalr_filter(loss6)
        x = np.convolve(x, fir)[len(fir) - 1 : len(fir) - 1 + n]
    x = middle_ear(x)
    y = middle_ear(y)

    # Control path: the widest (maximally damaged) filters set the level-dependent bandwidth.
    coeffs = _resonator_coefficients(bw_max, cf)
    x_ctrl, _ = _gammatone(x, cf, *coeffs, False)
    y_ctrl, _ = _gammatone(y, cf, *coeffs, False)
    x_ctrl_rms = np.sqrt(np.mean(x_ctrl**2, axis=1))
    y_ctrl_rms = np.sqrt(np.mean(y_ctrl**2, axis=1))
    bw_x = _bandwidth_for_level(x_ctrl_rms, bw_min_x, bw_max, level1)
    bw_y = _bandwidth_for_level(y_ctrl_rms, bw_min_y, bw_max, level1)

    x_env, x_bm = _gammatone(x, cf, *_resonator_coefficients(bw_x, cf), True)
    y_env, y_bm = _gammatone(y, cf, *_resonator_coefficients(bw_y, cf), True)
    x_avg = np.sqrt(np.mean(x_env**2, axis=1))
    y_avg = np.sqrt(np.mean(y_env**2, axis=1))

    x_env, x_bm = _compress(x_env, x_bm, x_ctrl, attn_ohc_x, knee_x, ratio_x, level1)
    y_env, y_bm = _compress(y_env, y_bm, y_ctrl, attn_ohc_y, knee_y, ratio_y, level1)
    y_env = _align_bands(x_env, y_env)
    y_bm = _align_bands(x_bm, y_bm)

    x_db, x_bm = _to_sl(x_env, x_bm, attn_ihc_x, level1)
    y_db, y_bm = _to_sl(y_env, y_bm, attn_ihc_y, level1)
    x_db, x_bm = _ihc_adaptation(x_db, x_bm)
    y_db, y_bm = _ihc_adaptation(y_db, y_bm)

    noise_x, noise_y = threshold_noise(x_bm.shape, level1, seed)
    x_bm = x_bm + noise_x
    y_bm = y_bm + noise_y

    # Both signals are delayed with the reference's bandwidths, as in the original model.
    gd = _group_delay_samples(bw_x, cf)
    gd = gd - gd.min()
    correct = gd.max() - gd
    x_db, y_db = _delay_bands(x_db, correct), _delay_bands(y_db, correct)
    x_bm, y_bm = _delay_bands(x_bm, correct), _delay_bands(y_bm, correct)

    x_sl = _rms_to_sl(x_avg, x_ctrl_rms, attn_ohc_x, knee_x, ratio_x, attn_ihc_x, level1)
    y_sl = _rms_to_sl(y_avg, y_ctrl_rms, attn_ohc_y, knee_y, ratio_y, attn_ihc_y, level1)
    return EarOutput(x_db, x_bm, y_db, y_bm, x_sl, y_sl)
