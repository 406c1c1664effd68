"""Kates' auditory periphery model as used by HAAQI v1 (pyclarity-compatible behaviour).

Stages: 24 kHz resampling -> broadband alignment -> optional NAL-R -> middle ear -> gammatone
filterbank (control path sets the level-dependent bandwidth) -> OHC compression -> per-band
envelope alignment -> dB SL conversion -> IHC adaptation -> threshold noise -> group-delay
compensation. All 32 bands are processed at once; only the truly sequential recursions
(gammatone resonators, IHC adaptation) are compiled with numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.fft as sfft

from haaqicli.reference.dsp import _jit, butter, cheby2, lfilter, resample_poly
from haaqicli.reference.formula import (  # noqa: F401  (re-exported: the ear's constants)
    EAR_Q,
    HAAQI_FREQUENCIES,
    MIN_BW,
    N_BANDS,
    center_frequencies,
    nalr_gain_db,
)
from haaqicli.reference.parallel import map_rows, run_all

FS = 24_000.0  # the model's internal sample rate (Hz)
SMALL = 1e-30
DB_PER_NEPER = 20.0 / math.log(10.0)  # 20 log10(x) = DB_PER_NEPER ln(x)


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
    spec_a, spec_b = run_all(partial(sfft.rfft, a, size, axis=-1), partial(sfft.rfft, b, size, axis=-1))
    full = sfft.irfft(spec_a * np.conj(spec_b), size, axis=-1)
    return np.concatenate((full[..., size - max_lag :], full[..., : max_lag + 1]), axis=-1)


# A float32 FFT correlation is within this fraction of ||a|| ||b|| of the exact one (with a wide margin)
FLOAT32_CORRELATION_TOLERANCE = 1e-5


def _refined_first_max(approx: np.ndarray, tol: float, exact) -> int:  # type: ignore[no-untyped-def]
    """Index of the first maximum of a sequence known to within +-tol by `approx` (a float32 FFT
    correlation): the indices within tol of the approximate maximum (the 4 best, on a flat peak) are
    re-evaluated by `exact(indices)` in float64 and the first exact maximum wins. This equals the
    exact search except on plateaus where values agree to ~1e-5 relative, where any choice is
    equivalent."""
    cand = np.nonzero(approx >= approx.max() - tol)[0]
    if cand.size == 1:  # the usual case: a clear maximum, nothing to re-check
        return int(cand[0])
    if cand.size > 4:
        cand = np.sort(cand[np.argsort(-approx[cand], kind="stable")[:4]])
    return int(cand[int(np.argmax(exact(cand.astype(np.int64))))])


def input_align(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadband alignment (cross-covariance peak, backed off 2 ms for dispersion), then trim the
    leading/trailing samples where the reference is below 0.001 of its peak."""
    n = min(len(x), len(y))
    ny = len(y)
    # c[j] = sum x[m + j - (n-1)] y[m]; the first maximum of |c| wins, as in the oracle. float32
    # transforms (2.4x faster), with the near-maximal lags re-checked in float64.
    a, b = x[:n] - x[:n].mean(), y[:n] - y[:n].mean()
    c = np.abs(_xcorr_fft(a.astype(np.float32), b.astype(np.float32), n - 1))
    tol = FLOAT32_CORRELATION_TOLERANCE * np.sqrt(np.dot(a, a) * np.dot(b, b)) + 1e-300
    best = _refined_first_max(c, tol, lambda idx: np.abs(_lagged_dots(a, b, idx - (n - 1))))
    delay = (n - 1) - best
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
        stop = int(np.trunc(freqs[i + 1] * npt)) - 1
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
    gain_db = nalr_gain_db(loss6)
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


# Gammatone state/parameter rows of the flat `st` array, each row N_BANDS long. Keeping every
# per-band quantity in ONE flat array with compile-time row offsets lets LLVM prove the band loop
# free of aliasing and vectorise it (8 bands per AVX-512 instruction); separate arrays defeat that.
_COS, _SIN, _A1, _A2, _A3, _A4, _A5, _GAIN = 0, 1, 2, 3, 4, 5, 6, 7
_C, _S, _UR1, _UR2, _UI1, _UI2, _YR1, _YR2, _YR3, _YR4, _YI1, _YI2, _YI3, _YI4 = range(8, 22)
_GPREV, _LP, _ACC, _ENV, _BM, _LO, _HI, _SCALE = 22, 23, 24, 25, 26, 27, 28, 29
_ST_ROWS = 30


def _gammatone_state(rel_bw: np.ndarray, cf: np.ndarray, **rows: np.ndarray) -> np.ndarray:
    """Flat parameter/state array; `rows` sets extra rows by name (lo, hi, scale)."""
    st = np.zeros((_ST_ROWS, N_BANDS))
    for name, values in rows.items():
        st[{"lo": _LO, "hi": _HI, "scale": _SCALE}[name]] = values
    st[_COS] = np.cos(2.0 * np.pi / FS * cf)
    st[_SIN] = np.sin(2.0 * np.pi / FS * cf)
    st[_A1 : _GAIN + 1] = np.stack(_resonator_coefficients(rel_bw, cf))
    st[_C] = 1.0
    return st.ravel()


@_jit(inline="always")
def _resonate(st, i, xi):  # pragma: no cover - compiled
    """Advance every band's complex-demodulated 4th-order gammatone by sample i (vectorised over bands).

    The carrier comes from the same 2-D rotation recursion as the reference code (not cos/sin calls),
    so the demodulation phase drifts identically; the y[n-1] term is added last, as in lfilter."""
    nb = 32
    if i > 0:
        for k in range(nb):
            c = st[_C * nb + k]
            s = st[_S * nb + k]
            st[_C * nb + k] = c * st[_COS * nb + k] + s * st[_SIN * nb + k]
            st[_S * nb + k] = s * st[_COS * nb + k] - c * st[_SIN * nb + k]
    for k in range(nb):
        ur = xi * st[_C * nb + k]
        ui = xi * st[_S * nb + k]
        a1 = st[_A1 * nb + k]
        a2 = st[_A2 * nb + k]
        a3 = st[_A3 * nb + k]
        a4 = st[_A4 * nb + k]
        a5 = st[_A5 * nb + k]
        yr = (ur + a1 * st[_UR1 * nb + k] + a5 * st[_UR2 * nb + k] + a2 * st[_YR2 * nb + k]
              + a3 * st[_YR3 * nb + k] + a4 * st[_YR4 * nb + k]) + a1 * st[_YR1 * nb + k]
        yi = (ui + a1 * st[_UI1 * nb + k] + a5 * st[_UI2 * nb + k] + a2 * st[_YI2 * nb + k]
              + a3 * st[_YI3 * nb + k] + a4 * st[_YI4 * nb + k]) + a1 * st[_YI1 * nb + k]
        st[_UR2 * nb + k] = st[_UR1 * nb + k]
        st[_UR1 * nb + k] = ur
        st[_UI2 * nb + k] = st[_UI1 * nb + k]
        st[_UI1 * nb + k] = ui
        st[_YR4 * nb + k] = st[_YR3 * nb + k]
        st[_YR3 * nb + k] = st[_YR2 * nb + k]
        st[_YR2 * nb + k] = st[_YR1 * nb + k]
        st[_YR1 * nb + k] = yr
        st[_YI4 * nb + k] = st[_YI3 * nb + k]
        st[_YI3 * nb + k] = st[_YI2 * nb + k]
        st[_YI2 * nb + k] = st[_YI1 * nb + k]
        st[_YI1 * nb + k] = yi


@_jit(nogil=True)
def _gammatone_control(x, st, env):  # pragma: no cover - compiled
    """Control-path envelopes clipped to [lo, hi] per band (the compression rule's linear range),
    written time-major into `env` (samples * bands); returns the mean square of the unclipped envelopes."""
    nb = 32
    n = x.shape[0]
    for i in range(n):
        _resonate(st, i, x[i])
        for k in range(nb):
            yr = st[_YR1 * nb + k]
            yi = st[_YI1 * nb + k]
            e = st[_GAIN * nb + k] * np.sqrt(yr * yr + yi * yi)
            st[_ACC * nb + k] += e * e
            env[i, k] = min(max(e, st[_LO * nb + k]), st[_HI * nb + k])
    env_ms = np.empty(nb)
    for k in range(nb):
        env_ms[k] = st[_ACC * nb + k] / n
    return env_ms


@_jit(nogil=True)
def _gammatone_main(x, st, comp, lp_b0, lp_b1, lp_a1, env, bm):  # pragma: no cover - compiled
    """Main path: with `comp` (time-major OHC gain in linear units, before its 800 Hz one-pole
    smoothing, still to be multiplied by the `scale` row) writes the compressed envelope and BM
    motion (band-major) into `env` and `bm`; returns the mean square of the uncompressed envelope."""
    nb = 32
    n = x.shape[0]
    flat = comp.ravel()
    for i in range(n):
        _resonate(st, i, x[i])
        for k in range(nb):
            yr = st[_YR1 * nb + k]
            yi = st[_YI1 * nb + k]
            g = st[_GAIN * nb + k]
            e = g * np.sqrt(yr * yr + yi * yi)
            st[_ACC * nb + k] += e * e
            gi = flat[i * nb + k] * st[_SCALE * nb + k]
            lp = lp_b0 * gi + lp_b1 * st[_GPREV * nb + k] - lp_a1 * st[_LP * nb + k]
            st[_LP * nb + k] = lp
            st[_GPREV * nb + k] = gi
            st[_ENV * nb + k] = lp * e
            st[_BM * nb + k] = lp * (g * (yr * st[_C * nb + k] + yi * st[_S * nb + k]))
        # a separate (scatter) store loop: writing env/bm above would add pointers that block the
        # vectorisation of the loop over bands
        for k in range(nb):
            env[k, i] = st[_ENV * nb + k]
            bm[k, i] = st[_BM * nb + k]
    env_ms = np.empty(nb)
    for k in range(nb):
        env_ms[k] = st[_ACC * nb + k] / n
    return env_ms


def ihc_state_space() -> tuple[float, float, float, float, float, float, float]:
    """The IHC adaptation (RC circuit, overshoot 2, 2 ms and 60 ms time constants, at 24 kHz) as the
    linear state update [v1, v2] <- M [v1, v2] + g v0 of the reference code's two-node circuit, for the
    dB SL envelope v0; the output is max((v0 - v1) / r1, 0). Returns (g1, g2, m11, m12, m21, m22, r1)."""
    delta, dt = 2.0, 1.0 / FS
    r1 = 1.0 / delta
    r2 = r3 = 0.5 * (1.0 - r1)
    c1 = 0.002 * (r1 + r2) / (r1 * r2)
    c2 = 0.060 / ((r1 + r2) * r3)
    a11, a12 = r1 + r2 + r1 * r2 * (c1 / dt), -r1
    a21, a22 = -r3, r2 + r3 + r2 * r3 * (c2 / dt)
    denom = 1.0 / (a11 * a22 - a21 * a12)
    p1, p2 = r1 * r2 * (c1 / dt), r2 * r3 * (c2 / dt)
    return (denom * a22 * r2, -denom * a21 * r2, denom * a22 * p1, -denom * a12 * p2, -denom * a21 * p1,
            denom * a11 * p2, r1)


# compile-time constants of `_ihc_step`: folded, the recursion's critical path is one multiply-add
_IHC_G1, _IHC_G2, _IHC_M11, _IHC_M12, _IHC_M21, _IHC_M22, _IHC_R1 = ihc_state_space()
_IHC_INV_R1 = 1.0 / _IHC_R1


@_jit(inline="always")
def _ihc_step(v0, e, b, v1, v2):  # pragma: no cover - compiled
    """One sample of the IHC adaptation (see `ihc_state_space`) for the dB SL envelope v0; the BM
    sample b is rescaled to the dB SL envelope and by the same adaptation gain: b (v0/e) (o/v0) = b o/e
    (each +1e-30). Returns (envelope out, BM out, new state v1, v2)."""
    small = 1e-30
    w1 = (_IHC_G1 * v0 + _IHC_M12 * v2) + _IHC_M11 * v1
    w2 = (_IHC_G2 * v0 + _IHC_M21 * v1) + _IHC_M22 * v2
    o = (v0 - w1) * _IHC_INV_R1
    if o < 0.0:
        o = 0.0
    return o, b * ((o + small) / (e + small)), w1, w2


@_jit(nogil=True)
def _post(x_env, x_log, x_bm, y_env, y_log, y_bm, offset, shift_env, shift_bm, delay, noise, noise_gain, k0, k1, x_out, x_bm_out, y_out, y_bm_out):  # noqa: E501  # pragma: no cover
    """Per band: time shift (envelope alignment), BM rescaled to the dB SL envelope, IHC rapid (2 ms)
    and short-term (60 ms) adaptation with overshoot 2 (RC-circuit recursion), threshold noise
    (noise: (2, bands, samples), reference then processed), then the group-delay compensation delay.
    Envelopes come in as natural logs (see `_log_env`); dB SL = max(DB_PER_NEPER ln + offset, 0), offset being
    level1 minus the IHC attenuation ((2, bands): reference, processed).
    The reference (x) is not shifted; a positive processed shift advances a band (envelope and BM
    motion may be aligned by different lags, exactly as in the reference code).

    Both signals run in the same time loop: the adaptation recursion is latency-bound, so two
    independent chains (kept in registers) cost about as much as one. Writes bands k0..k1-1 of the
    outputs (threads take disjoint band ranges).
    """
    n = x_log.shape[1]
    for k in range(k0, k1):
        d = delay[k]
        x_out[k, :d] = 0.0
        x_bm_out[k, :d] = 0.0
        y_out[k, :d] = 0.0
        y_bm_out[k, :d] = 0.0
        xv1 = xv2 = yv1 = yv2 = 0.0
        for i in range(n - d):
            v0 = max(x_log[k, i] * DB_PER_NEPER + offset[0, k], 0.0)
            o, b, xv1, xv2 = _ihc_step(v0, x_env[k, i], x_bm[k, i], xv1, xv2)
            x_out[k, i + d] = o
            x_bm_out[k, i + d] = b + noise_gain * noise[0, k, i]
            se = i + shift_env[k]
            sb = i + shift_bm[k]
            if 0 <= se < n:
                v0 = max(y_log[k, se] * DB_PER_NEPER + offset[1, k], 0.0)
                e = y_env[k, se]
            else:
                v0 = 0.0
                e = 0.0
            b = y_bm[k, sb] if 0 <= sb < n else 0.0
            o, b, yv1, yv2 = _ihc_step(v0, e, b, yv1, yv2)
            y_out[k, i + d] = o
            y_bm_out[k, i + d] = b + noise_gain * noise[1, k, i]


def _post_bands(x_env, x_log, x_bm, y_env, y_log, y_bm, offset, shift_env, shift_bm, delay, noise, noise_gain):  # noqa: E501
    """`_post` over all bands, split across threads; returns (x_db, x_bm, y_db, y_bm), BM as float32
    (only the float32 BM coherence reads it)."""
    x_out, y_out = np.empty_like(x_log), np.empty_like(y_log)
    x_bm_out = np.empty(x_bm.shape, dtype=np.float32)
    y_bm_out = np.empty(y_bm.shape, dtype=np.float32)
    args = (x_env, x_log, x_bm, y_env, y_log, y_bm, offset, shift_env, shift_bm, delay, noise, noise_gain)
    map_rows(lambda k0, k1: _post(*args, k0, k1, x_out, x_bm_out, y_out, y_bm_out), x_log.shape[0])
    return x_out, x_bm_out, y_out, y_bm_out


def _bandwidth_for_level(control_rms: np.ndarray, bw_min: np.ndarray, bw_max: np.ndarray, level1: float):
    """Widen the filters linearly between 50 and 100 dB SPL of the control-band level."""
    with np.errstate(divide="ignore"):
        level = 20 * np.log10(control_rms) + level1
    frac = np.clip((level - 50.0) / 50.0, 0.0, 1.0)
    bw = bw_min + frac * (bw_max - bw_min)
    bw = np.where(level < 50, bw_min, np.where(level > 100, bw_max, bw))
    return bw


def _compression_rule(attn_ohc, low_knee, ratio, level1: float) -> tuple[np.ndarray, ...]:
    """OHC gain (linear, before smoothing) from the control envelope c: linear below the knee, CR:1 up
    to 100 dB SPL, linear above. The dB-domain rule gain = -(1-1/CR)(L - knee) - attn with
    L = clip(level, knee, 100) is evaluated in the linear domain as scale * clip(c, lo, hi)**p
    (one power instead of a log10 and an exp). Returns (lo, hi, p, scale) per band; the clip is done
    in the control kernel, the power by numpy (SIMD, far faster than a compiled scalar pow), the
    scale in the main kernel."""
    p = -(1.0 - 1.0 / ratio)
    lo = 10 ** ((low_knee - level1) / 20)
    hi = np.maximum(10 ** ((100.0 - level1) / 20), lo)
    scale = 10 ** (-attn_ohc / 20) * lo ** (-p)
    return lo, hi, p, scale


@_jit(nogil=True)
def _lagged_dots(a, b, lags):  # pragma: no cover - compiled
    """sum_m a[m+lag] b[m] over the overlap, for each lag (float64, sequential sum)."""
    n = a.shape[0]
    out = np.empty(lags.shape[0])
    for j in range(lags.shape[0]):
        lag = lags[j]
        acc = 0.0
        if lag >= 0:
            for m in range(n - lag):
                acc += a[m + lag] * b[m]
        else:
            for m in range(-lag, n):
                acc += a[m + lag] * b[m]
        out[j] = acc
    return out


def _block_plan(n: int, m: int) -> tuple[int, int, int] | None:
    """(block, n_blocks, fft size) minimising the work of a +-m lag correlation done block-wise, or
    None when one transform of the whole (padded) length is cheaper."""
    full = sfft.next_fast_len(n + m + 1, real=True)
    best = (3 * full * np.log2(full), 0, 0, 0)
    for k in (4, 6, 8, 12, 16, 24, 32):
        size = sfft.next_fast_len(k * m, real=True)
        block = size - 2 * m
        n_blocks = -(-n // block)
        cost = (2 * n_blocks + 1) * size * np.log2(size)
        if n_blocks > 1 and cost < best[0]:
            best = (cost, block, n_blocks, size)
    return None if best[1] == 0 else (best[1], best[2], best[3])


def _xcorr_blocked(ref: np.ndarray, out: np.ndarray, lags: int) -> np.ndarray:
    """c[L] = sum_m ref[m+L] out[m] for L in [-lags+1, lags] per row, float32, by overlap blocks.

    `out` is cut into blocks of B samples; block j is correlated (FFT of size S >= B + 2*lags, no
    wrap-around for these lags) with the ref samples from jB - lags to jB + B + lags, and the
    cross-spectra are summed before a single inverse transform. The sum equals the full linear
    correlation over those lags, at less cost than one transform of the whole length."""
    n_bands, n = ref.shape
    plan = _block_plan(n, lags)
    if plan is None:
        return _xcorr_fft(ref.astype(np.float32), out.astype(np.float32), lags)[:, 1:]
    block, n_blocks, size = plan
    xp = np.zeros((n_bands, n_blocks * block + 2 * lags), dtype=np.float32)
    xp[:, lags : lags + n] = ref
    # `out` blocks laid out already zero-padded to the transform size: pocketfft's own padding of a
    # shorter input costs more than this copy (measured: up to 1.8x the transform)
    yp = np.zeros((n_bands, n_blocks, size), dtype=np.float32)
    full = n // block
    yp[:, :full, :block] = out[:, : full * block].reshape(n_bands, full, block)
    if n > full * block:
        yp[:, full, : n - full * block] = out[:, full * block :]
    step = xp.strides[1]
    xs = np.lib.stride_tricks.as_strided(
        xp, (n_bands, n_blocks, block + 2 * lags), (xp.strides[0], block * step, step), writeable=False
    )
    spec = sfft.rfft(xs, size, axis=-1)
    del xp
    out_spec = sfft.rfft(yp, axis=-1)
    del yp
    spec *= np.conjugate(out_spec, out=out_spec)  # in place: no third spectrum-sized array
    del out_spec
    corr = sfft.irfft(spec.sum(axis=1), size, axis=-1)
    return corr[:, 1 : 2 * lags + 1]


def _best_lags(ref: np.ndarray, out: np.ndarray, max_lag_ms: float = 100.0) -> np.ndarray:
    """Per band, the lag in [-L+1, L] (L = 100 ms) maximising sum ref[m+lag] out[m]; first maximum wins.

    The correlation is computed by float32 FFT, then the (at most 4 best) lags within the float32
    error bound of the maximum are re-evaluated exactly in float64. This equals the exact search
    except on plateaus where several lags agree to ~1e-5 relative, where any choice is equivalent.
    """
    n_bands, n = ref.shape
    lags = min(int(np.rint(0.001 * max_lag_ms * FS)), n)
    # bands split across threads (measured: faster here than scipy's threaded FFTs of the whole batch)
    c = np.concatenate(map_rows(lambda a, b: _xcorr_blocked(ref[a:b], out[a:b], lags), n_bands))
    energy = np.concatenate(map_rows(
        lambda a, b: np.einsum("ij,ij->i", ref[a:b], ref[a:b]) * np.einsum("ij,ij->i", out[a:b], out[a:b]), n_bands))
    tol = FLOAT32_CORRELATION_TOLERANCE * np.sqrt(energy) + 1e-300
    return np.array([
        _refined_first_max(c[k], tol[k], lambda idx, k=k: _lagged_dots(ref[k], out[k], idx + 1 - lags)) + 1 - lags
        for k in range(n_bands)
    ], dtype=np.int64)


def _log_env(env: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Natural log of the envelope (+1e-30) into the float32 `out`; `_post` turns it into dB SL
    (x DB_PER_NEPER, + level1 - IHC attenuation, clipped at 0) on the fly, saving three passes over the
    array. numpy's float32 log is vectorised and its float64 log is not (libm per sample): 32 bands x
    6 s take 12-17 ms (cast, add and log) instead of 45 (83 with log10). The dB SL differ by < 1e-4 dB."""
    for band, band_out in zip(env, out, strict=True):  # band by band: the three passes stay in cache
        np.copyto(band_out, band, casting="same_kind")
        band_out += np.float32(SMALL)
        np.log(band_out, out=band_out)
    return out


def _power_in_place(gain: np.ndarray, exponent: np.ndarray, rows: int = 4096) -> None:
    """gain ** exponent (float32, per band), as exp(exponent ln gain): numpy's float32 exp and log are
    vectorised and its float32 power is not. Done `rows` time steps at a time, so the three passes
    stay in cache (6 s x 32 bands: 19 ms, against 29 ms in whole-array passes and 66 ms for power).
    The gain is clipped to the compression range, so it is positive."""
    for start in range(0, gain.shape[0], rows):
        part = gain[start : start + rows]
        np.log(part, out=part)
        part *= exponent
        np.exp(part, out=part)


def _group_delay_samples(rel_bw: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """Integer DC group delay of each band's resonator (sum k*c_k / sum c_k, numerator minus denominator)."""
    a1, a2, a3, a4, a5, _ = _resonator_coefficients(rel_bw, cf)
    b = np.stack([np.ones_like(a1), a1, a5], axis=1)
    a = np.stack([np.ones_like(a1), -a1, -a2, -a3, -a4], axis=1)
    gd = (b @ np.arange(3)) / b.sum(1) - (a @ np.arange(5)) / a.sum(1)
    return np.rint(gd).astype(int)


def _rms_to_sl(avg, control_avg, attn_ohc, low_knee, ratio, attn_ihc, level1):
    """Long-term band RMS through the static compression curve, in dB SL."""
    c = np.maximum(np.minimum(level1 + 20 * np.log10(np.maximum(control_avg, SMALL)), 100.0), low_knee)
    gain = -attn_ohc - (c - low_knee) * (1 - 1 / ratio)
    level = np.maximum(level1 + 20 * np.log10(np.maximum(avg, SMALL)), 0.0)
    return np.maximum(level + gain - attn_ihc, 0.0)


NOISE_MODES = ("fast", "pyclarity")


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marsaglia & Tsang (2000) 128-layer ziggurat tables for the standard normal (31-bit + sign)."""
    m1 = 2147483648.0
    dn = tn = 3.442619855899
    vn = 9.91256303526217e-3
    kn = np.zeros(128, dtype=np.int64)
    wn = np.zeros(128)
    fn = np.zeros(128)
    q = vn / np.exp(-0.5 * dn * dn)
    kn[0] = int((dn / q) * m1)
    wn[0], wn[127] = q / m1, dn / m1
    fn[0], fn[127] = 1.0, np.exp(-0.5 * dn * dn)
    for i in range(126, 0, -1):
        dn = np.sqrt(-2.0 * np.log(vn / dn + np.exp(-0.5 * dn * dn)))
        kn[i + 1] = int((dn / tn) * m1)
        tn = dn
        fn[i] = np.exp(-0.5 * dn * dn)
        wn[i] = dn / m1
    return kn, wn, fn


_ZIG_KN, _ZIG_WN, _ZIG_FN = _ziggurat_tables()


@_jit(inline="always")
def _splitmix64(state):  # pragma: no cover - compiled
    """SplitMix64 step: returns (new state, 64 well-mixed random bits)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@_jit(inline="always")
def _unit(z):  # pragma: no cover - compiled
    return (np.float64(z >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@_jit(nogil=True)
def _ziggurat_fill(out, seeds, kn, wn, fn):  # pragma: no cover - compiled
    """Standard normal samples into each row of `out`, row j from its own SplitMix64 stream seeded by
    seeds[j] (the generator is a sequential recursion, hence numba). Marsaglia-Tsang ziggurat: ~99%
    of draws cost one 64-bit hash, a table lookup and a multiply; wedges and the tail are exact."""
    n_rows, n = out.shape
    r = 3.442619855899
    for j in range(n_rows):
        st = np.uint64(seeds[j])
        for i in range(n):
            st, z = _splitmix64(st)
            hz = np.int64(np.int32(np.uint32(z >> np.uint64(32))))
            iz = hz & 127
            if abs(hz) < kn[iz]:
                out[j, i] = hz * wn[iz]
                continue
            while True:
                if iz == 0:  # tail beyond r (Marsaglia's exponential method)
                    while True:
                        st, z = _splitmix64(st)
                        x = -np.log(_unit(z)) / r
                        st, z = _splitmix64(st)
                        if -2.0 * np.log(_unit(z)) >= x * x:
                            break
                    val = r + x if hz > 0 else -r - x
                    break
                x = hz * wn[iz]
                st, z = _splitmix64(st)
                if fn[iz] + _unit(z) * (fn[iz - 1] - fn[iz]) < np.exp(-0.5 * x * x):
                    val = x
                    break
                st, z = _splitmix64(st)
                hz = np.int64(np.int32(np.uint32(z >> np.uint64(32))))
                iz = hz & 127
                if abs(hz) < kn[iz]:
                    val = hz * wn[iz]
                    break
            out[j, i] = val


def threshold_noise(
    shape: tuple[int, int], level1: float, seed: int | None, mode: str = "fast"
) -> tuple[float, np.ndarray]:
    """Unit Gaussian noise (2, *shape) for reference then processed BM motion, and the gain that puts
    it 10 dB below auditory threshold (the gain is applied inside `_post`, saving a pass).

    mode "pyclarity": the reference implementation draws float64 from numpy's legacy global generator
    (reference first, then processed); with an integer seed we draw the identical stream from a private
    RandomState, so results equal the oracle's after `np.random.seed(seed)`.
    mode "fast": float32 samples from a compiled ziggurat, one SplitMix64 stream per (signal, band)
    seeded from `default_rng(seed)` (~6x cheaper than numpy's own float32 ziggurat here). The noise is
    ~95 dB below the BM signals wherever a tile counts, so only its statistics matter (see the oracle
    test for the measured score differences).
    """
    gain = 10 ** ((-10.0 - level1) / 20)
    if mode == "pyclarity":
        return gain, np.random.RandomState(seed).standard_normal((2, *shape))
    if mode != "fast":
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {mode!r}")
    rows, n = 2 * shape[0], shape[1]
    held = _noise_held.get((rows, seed)) if seed is not None else None
    if held is not None and held.shape[1] >= n:  # a row's stream is sequential: a shorter one is its prefix
        out = np.empty((rows, n), dtype=np.float32)
        np.copyto(out, held[:, :n])  # a copy: the caller owns its noise (5x cheaper than drawing it)
        return gain, out.reshape(2, *shape)
    out = np.empty((rows, n), dtype=np.float32)
    seeds = np.random.default_rng(seed).integers(0, 2**63 - 1, size=rows, dtype=np.int64)
    map_rows(lambda a, b: _ziggurat_fill(out[a:b], seeds[a:b], _ZIG_KN, _ZIG_WN, _ZIG_FN), rows)
    if seed is not None and out.nbytes <= NOISE_HELD_BYTES:
        _noise_held.clear()  # one stream set at a time: pairs of one run share a seed
        _noise_held[(rows, seed)] = out.copy()
    return gain, out.reshape(2, *shape)


# The last seeded noise drawn, kept for the next call with that seed (every pair of `haaqi reference`,
# `check --reference` and `sweep` uses seed 0, and most pairs are no longer than the one before):
# (rows, seed) -> (rows, samples) float32. Up to 64 MB (a 6-s pair takes 37 MB).
NOISE_HELD_BYTES = 64 << 20
_noise_held: dict[tuple[int, int], np.ndarray] = {}


def front_end(
    reference: np.ndarray,
    reference_sr: float,
    processed: np.ndarray,
    processed_sr: float,
    loss6: np.ndarray,
    equalisation: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Both signals at 24 kHz, broadband-aligned and trimmed to the same length, through NAL-R
    (reference only, when equalisation == 1) and the middle ear. Shared by both engines."""
    x, y = run_all(
        partial(resample_to_model_rate, np.asarray(reference, dtype=float), reference_sr),
        partial(resample_to_model_rate, np.asarray(processed, dtype=float), processed_sr),
    )
    n = min(len(x), len(y))
    x, y = input_align(x[:n], y[:n])
    n = len(x)
    fir = nalr_filter(loss6) if equalisation == 1 else None

    def outer_middle_ear(signal: np.ndarray, amplify: bool) -> np.ndarray:
        if amplify:  # NAL-R on the reference only
            signal = np.convolve(signal, fir)[len(fir) - 1 : len(fir) - 1 + n]
        return middle_ear(signal)

    x, y = run_all(partial(outer_middle_ear, x, fir is not None), partial(outer_middle_ear, y, False))
    return x, y


def ear_parameters(loss6: np.ndarray, equalisation: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], np.ndarray]:
    """(reference, processed) loss parameters (see `loss_parameters`) and the widest (control-path)
    bandwidths. With equalisation 0 the reference is heard by a normal ear."""
    cf = center_frequencies()
    params_y = loss_parameters(loss6, cf)
    params_x = loss_parameters(np.zeros(6) if equalisation == 0 else loss6, cf)
    bw_max = loss_parameters(np.full(6, 100.0), cf)[1]
    return params_x, params_y, bw_max


def ear_model(
    x: np.ndarray,
    y: np.ndarray,
    loss6: np.ndarray,
    equalisation: int,
    level1: float,
    seed: int | None = 0,
    noise: str = "fast",
) -> EarOutput:
    """Run the reference x and processed y, as `front_end` leaves them, through the impaired ear
    (the reference with a normal ear when equalisation == 0)."""
    cf = center_frequencies()
    params_x, params_y, bw_max = ear_parameters(loss6, equalisation)
    attn_ohc_x, bw_min_x, knee_x, ratio_x, attn_ihc_x = params_x
    attn_ohc_y, bw_min_y, knee_y, ratio_y, attn_ihc_y = params_y
    n = len(x)

    # Control path: the widest (maximally damaged) filters set the level-dependent bandwidth.
    # Control envelopes are time-major (samples, bands), the layout the main kernel reads gains in;
    # they come out already clipped to the compression rule's range (the RMS is of the raw envelope).
    lo_x, hi_x, p_x, scale_x = _compression_rule(attn_ohc_x, knee_x, ratio_x, level1)
    lo_y, hi_y, p_y, scale_y = _compression_rule(attn_ohc_y, knee_y, ratio_y, level1)
    # The two signals are independent until the comparison: each pair of stages runs in two threads.
    # Large outputs are allocated here, in the main thread: glibc serves big blocks for other threads
    # by fresh mmaps (page faults on every use), while the main heap reuses them (see _heap).
    # The OHC gain is float32: it is smoothed by an 800 Hz low-pass before use, float32 halves its memory
    # traffic and numpy's float32 power is 2.3x faster (the oracle test measures the effect: ~1e-8).
    x_gain, y_gain = np.empty((n, N_BANDS), np.float32), np.empty((n, N_BANDS), np.float32)
    x_ctrl_ms, y_ctrl_ms = run_all(
        partial(_gammatone_control, x, _gammatone_state(bw_max, cf, lo=lo_x, hi=hi_x), x_gain),
        partial(_gammatone_control, y, _gammatone_state(bw_max, cf, lo=lo_y, hi=hi_y), y_gain),
    )
    x_ctrl_rms, y_ctrl_rms = np.sqrt(x_ctrl_ms), np.sqrt(y_ctrl_ms)
    bw_x = _bandwidth_for_level(x_ctrl_rms, bw_min_x, bw_max, level1)
    bw_y = _bandwidth_for_level(y_ctrl_rms, bw_min_y, bw_max, level1)

    # Main path with OHC compression; the gain is smoothed by an 800 Hz one-pole low-pass.
    (lp_b0, lp_b1), (_, lp_a1) = butter(1, 800 / (0.5 * FS))
    p_x32, p_y32 = p_x.astype(np.float32), p_y.astype(np.float32)
    run_all(partial(_power_in_place, x_gain, p_x32), partial(_power_in_place, y_gain, p_y32))
    x_env, x_bm, y_env, y_bm = (np.empty((N_BANDS, n)) for _ in range(4))
    x_ms, y_ms = run_all(
        partial(_gammatone_main, x, _gammatone_state(bw_x, cf, scale=scale_x), x_gain, lp_b0, lp_b1, lp_a1,
                x_env, x_bm),
        partial(_gammatone_main, y, _gammatone_state(bw_y, cf, scale=scale_y), y_gain, lp_b0, lp_b1, lp_a1,
                y_env, y_bm),
    )
    del x_gain, y_gain
    x_avg, y_avg = np.sqrt(x_ms), np.sqrt(y_ms)

    # Per-band alignment of the processed envelope and BM motion (applied inside _post).
    # (one after the other: each search already splits its bands across the threads)
    shift_env = -_best_lags(x_env, y_env)
    shift_bm = -_best_lags(x_bm, y_bm)

    # Both signals are delayed with the reference's bandwidths, as in the original model.
    gd = _group_delay_samples(bw_x, cf)
    gd = gd - gd.min()
    correct = np.minimum(gd.max() - gd, n).astype(np.int64)

    noise_gain, noise_xy = threshold_noise(x_env.shape, level1, seed, noise)
    offset = np.stack((level1 - attn_ihc_x, level1 - attn_ihc_y))
    x_log, y_log = np.empty(x_env.shape, np.float32), np.empty(y_env.shape, np.float32)
    run_all(partial(_log_env, x_env, x_log), partial(_log_env, y_env, y_log))
    x_db, x_bm, y_db, y_bm = _post_bands(
        x_env, x_log, x_bm, y_env, y_log, y_bm, offset, shift_env, shift_bm, correct,
        noise_xy, noise_gain,
    )

    x_sl = _rms_to_sl(x_avg, x_ctrl_rms, attn_ohc_x, knee_x, ratio_x, attn_ihc_x, level1)
    y_sl = _rms_to_sl(y_avg, y_ctrl_rms, attn_ohc_y, knee_y, ratio_y, attn_ihc_y, level1)
    return EarOutput(x_db, x_bm, y_db, y_bm, x_sl, y_sl)
