"""The few filter designs and filters the exact HAAQI engine needs, without ``scipy.signal``.

Why: ``import scipy.signal`` takes ~0.8 s (its array-API wrappers parse hundreds of docstrings at
import), and every process that runs the exact HAAQI paid it for six functions. This module provides
exactly the variants the engine calls, computed the way scipy 1.17 computes them (same published
algorithms, same order of floating-point operations where it matters), so results agree with
``scipy.signal`` to rounding (tests/test_reference_dsp.py holds them to 1e-12 relative; measured
against scipy 1.17: bit-identical, except where the Kaiser window is involved, whose numpy ``i0``
differs from ``scipy.special.i0`` by an ulp here and there: ~2e-16 relative):

- ``butter`` (low/high-pass) and ``cheby2`` (low-pass): analog prototype zeros/poles/gain ->
  low-pass or high-pass transform at the pre-warped edge -> bilinear transform -> polynomials.
- ``lfilter``: direct form II transposed on a 1-D signal, coefficients normalised by ``a[0]``.
- ``firwin``: windowed ideal (sinc) low/high/band-pass, scaled to unit gain at the centre of its
  first pass band; Hann and Kaiser windows.
- ``resample_poly``: zero-phase polyphase resampling with scipy's default Kaiser (beta 5) filter and
  its alignment (output sample t is centred on input time t * down / up).
- ``fftconvolve``: full linear convolution along the last axis through real FFTs, other axes
  broadcast.

Only these variants are implemented; anything else raises ``ValueError`` rather than silently
computing something different. ``numpy`` and ``scipy.fft`` (cheap to import) do the work; the two
loops (lfilter's recursion, resample_poly's polyphase sums) are compiled with numba.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.fft as sfft
from numba import njit


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit with an on-disk cache. fastmath is off unless a kernel asks for a measured subset
    (the oracle test bounds every such choice against pyclarity).
    Without a writable cache location (read-only install, no writable home) numba refuses cache=True
    at decoration time; the kernels are then compiled per process instead of failing the import.
    (Defined here, the engine's leaf module, so that dsp needs no other haaqicli module; ear re-exports it.)"""

    def decorate(fn: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:
            return njit(cache=False, **options)(fn)

    return decorate


# ----------------------------------------------------------------------------- IIR design

_LOW = ("low", "lowpass")
_HIGH = ("high", "highpass")


def _butter_prototype(order: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Analog Butterworth low-pass with a 1 rad/s cutoff: no zeros, poles evenly spaced on the left
    half of the unit circle, unit gain."""
    m = np.arange(-order + 1, order, 2, dtype=np.float64)
    return np.zeros(0), -np.exp(1j * np.pi * m / (2 * order)), 1.0


def _cheby2_prototype(order: int, stop_db: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Analog Chebyshev type II low-pass whose stop band starts at 1 rad/s, `stop_db` down: zeros on
    the imaginary axis at 1/sin of the Chebyshev angles (an odd order's middle one, at infinity, is
    left out), poles -1/sinh(mu + j theta) (the reciprocals of Chebyshev type I shaped poles for the
    stop-band ripple), gain for unit DC response."""
    eps = 1.0 / math.sqrt(10 ** (0.1 * stop_db) - 1)
    mu = math.asinh(1.0 / eps) / order
    if order % 2:
        m = np.concatenate((np.arange(-order + 1, 0, 2, dtype=np.float64), np.arange(2, order, 2, dtype=np.float64)))
    else:
        m = np.arange(-order + 1, order, 2, dtype=np.float64)
    zeros = 1j / np.sin(m * np.pi / (2 * order))
    theta = np.pi * np.arange(-order + 1, order, 2, dtype=np.float64) / (2 * order)
    poles = -1 / np.sinh(mu + 1j * theta)
    gain = np.real(np.prod(-poles) / np.prod(-zeros))
    return zeros, poles, float(gain)


def _poly(roots: np.ndarray) -> np.ndarray:
    """Monic polynomial with these roots (highest power first), real when the roots come in exact
    conjugate pairs (always so for these designs), as ``numpy.poly`` does."""
    coefficients = np.ones(1, dtype=roots.dtype)
    for root in roots:
        coefficients = np.convolve(coefficients, np.array([1.0, -root], dtype=roots.dtype))
    if np.iscomplexobj(coefficients):
        if not np.array_equal(np.sort(roots.imag), np.sort(-roots.imag)):
            raise ValueError("roots are not in conjugate pairs: the polynomial is not real")
        coefficients = coefficients.real.copy()
    return coefficients


def _digital_filter(
    zeros: np.ndarray, poles: np.ndarray, gain: float, wn: float, btype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Analog prototype (cutoff 1 rad/s) -> digital (b, a) with its edge at `wn` (1 = Nyquist)."""
    wn = np.asarray(wn, dtype=np.float64)
    if wn.ndim != 0:
        raise ValueError("only low-pass and high-pass designs (one critical frequency) are implemented")
    if not 0 < wn < 1:
        raise ValueError("digital filter critical frequencies must be 0 < Wn < 1")
    # Pre-warp the edge so the bilinear transform (with fs = 2) puts it exactly at wn.
    fs = 2.0
    warped = float(2 * fs * np.tan(np.pi * wn / fs))
    degree = len(poles) - len(zeros)  # zeros at infinity
    if btype in _LOW:  # s -> s / warped
        zeros, poles, gain = warped * zeros, warped * poles, gain * warped**degree
    elif btype in _HIGH:  # s -> warped / s: the zeros at infinity move to the origin
        gain = gain * np.real(np.prod(-zeros) / np.prod(-poles))
        zeros = np.concatenate((warped / zeros, np.zeros(degree)))
        poles = warped / poles
    else:
        raise ValueError(f"btype {btype!r} is not implemented (only low-pass and high-pass)")
    # Bilinear transform s = 2 fs (z - 1) / (z + 1): zeros at infinity land on z = -1.
    degree = len(poles) - len(zeros)
    fs2 = 2.0 * fs
    gain = gain * np.real(np.prod(fs2 - zeros) / np.prod(fs2 - poles))
    zeros_z = np.concatenate(((fs2 + zeros) / (fs2 - zeros), -np.ones(degree)))
    poles_z = (fs2 + poles) / (fs2 - poles)
    return gain * _poly(zeros_z), _poly(poles_z)


def butter(order: int, wn: float, btype: str = "low") -> tuple[np.ndarray, np.ndarray]:
    """Digital Butterworth low-pass or high-pass (b, a); `wn` is the -3 dB edge as a fraction of the
    Nyquist frequency (``scipy.signal.butter(order, wn, btype)``)."""
    return _digital_filter(*_butter_prototype(order), wn, btype)


def cheby2(order: int, rs: float, wn: float, btype: str = "low") -> tuple[np.ndarray, np.ndarray]:
    """Digital Chebyshev type II low-pass (or high-pass) (b, a) with `rs` dB of stop-band attenuation
    from `wn` (fraction of Nyquist) on (``scipy.signal.cheby2(order, rs, wn, btype)``)."""
    return _digital_filter(*_cheby2_prototype(order, rs), wn, btype)


# ----------------------------------------------------------------------------- IIR filtering


@_jit(nogil=True)
def _direct_form_2t(b: np.ndarray, a: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """y = filter(b, a, x) for a[0] == 1, len(b) == len(a) >= 2, zero initial state. The operations
    (and their order) are those of scipy's lfilter, so the outputs agree to the last bit."""
    order = b.shape[0] - 1
    state = np.zeros(order)
    for n in range(x.shape[0]):
        xn = x[n]
        yn = state[0] + b[0] * xn
        for k in range(order - 1):
            state[k] = state[k + 1] + xn * b[k + 1] - yn * a[k + 1]
        state[order - 1] = xn * b[order] - yn * a[order]
        y[n] = yn


def lfilter(b: Any, a: Any, x: Any) -> np.ndarray:
    """IIR/FIR filter of a 1-D signal from rest, direct form II transposed, after dividing b and a by
    a[0] (``scipy.signal.lfilter(b, a, x)`` for 1-D float input)."""
    b = np.array(b, dtype=np.float64, ndmin=1)
    a = np.array(a, dtype=np.float64, ndmin=1)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if b.ndim != 1 or a.ndim != 1 or not b.size or not a.size:
        raise ValueError("b and a must be non-empty 1-D coefficient arrays")
    if x.ndim != 1:
        raise ValueError("only 1-D signals are implemented")
    if a[0] == 0:
        raise ValueError("a[0] must be nonzero")
    width = max(b.size, a.size)
    b = np.concatenate((b, np.zeros(width - b.size))) / a[0]
    a = np.concatenate((a, np.zeros(width - a.size))) / a[0]
    if width == 1:
        return x * b[0]
    y = np.empty_like(x)
    _direct_form_2t(b, a, x, y)
    return y


# ----------------------------------------------------------------------------- FIR design


def _window(name: Any, n: int) -> np.ndarray:
    """Symmetric window of `n` points: "hann", or ("kaiser", beta)."""
    if n == 1:
        return np.ones(1)
    if name == "hann":  # 0.5 + 0.5 cos over [-pi, pi]: the general-cosine form scipy evaluates
        return 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n))
    if isinstance(name, tuple) and len(name) == 2 and name[0] == "kaiser":
        beta = float(name[1])
        half = (n - 1) / 2.0
        ramp = (np.arange(n, dtype=np.float64) - half) / half
        return np.i0(beta * np.sqrt(1 - ramp**2.0)) / np.i0(beta)
    raise ValueError(f"window {name!r} is not implemented (only 'hann' and ('kaiser', beta))")


def firwin(numtaps: int, cutoff: Any, *, window: Any = "hann", pass_zero: bool | str = True) -> np.ndarray:
    """Linear-phase FIR by the window method (``scipy.signal.firwin`` with fs = 2, scale=True).

    `cutoff`: one edge (low-pass, high-pass) or two (band-pass), as fractions of Nyquist.
    `pass_zero`: True or "lowpass", "highpass", or "bandpass" (False with two edges). The ideal
    response is a sum of sincs, multiplied by the window, then scaled to unit gain at DC (low-pass),
    at Nyquist (high-pass) or at the centre of the pass band (band-pass).
    """
    edges = np.atleast_1d(np.asarray(cutoff, dtype=np.float64))
    if edges.ndim != 1 or not 1 <= edges.size <= 2:
        raise ValueError("cutoff must hold one or two frequencies")
    if np.min(edges) <= 0 or np.max(edges) >= 1:
        raise ValueError("cutoff frequencies must be in (0, 1) (fractions of Nyquist)")
    if isinstance(pass_zero, str):
        kind = pass_zero
    else:  # scipy's booleans: True passes DC (low-pass); False does not (high-pass, band-pass)
        kind = "lowpass" if pass_zero else "highpass" if edges.size == 1 else "bandpass"
    if kind == "lowpass" and edges.size == 1:
        left, right = 0.0, float(edges[0])
    elif kind == "highpass" and edges.size == 1:
        left, right = float(edges[0]), 1.0
    elif kind == "bandpass" and edges.size == 2 and edges[0] < edges[1]:
        left, right = float(edges[0]), float(edges[1])
    else:
        raise ValueError(f"pass_zero={pass_zero!r} with {edges.size} cutoff(s) is not implemented")
    if right == 1.0 and numtaps % 2 == 0:
        raise ValueError("a filter with an even number of taps must have zero response at Nyquist")
    m = np.arange(numtaps, dtype=np.float64) - 0.5 * (numtaps - 1)
    h = right * np.sinc(right * m)
    if left:  # the left edge's term is exactly zero for a low-pass
        h -= left * np.sinc(left * m)
    h *= _window(window, numtaps)
    centre = 0.0 if left == 0 else 1.0 if right == 1 else 0.5 * (left + right)
    h /= np.sum(h * np.cos(np.pi * m * centre))
    return h


# ----------------------------------------------------------------------------- resampling


@_jit(nogil=True)
def _polyphase(x: np.ndarray, branches: np.ndarray, down: int, half: int, y: np.ndarray) -> None:
    """y[t] = sum_j x[j] h[half + t * down - j * up], with branches[r, k] = h[r + (K - 1 - k) * up]
    (K taps per branch, zero beyond the filter): only the nonzero samples of the up-sampled signal
    are visited, from the earliest to the latest, as scipy's upfirdn sums them (so they round alike)."""
    up, n_taps = branches.shape
    n_in = x.shape[0]
    for t in range(y.shape[0]):
        centre = half + t * down  # the output's position on the up-sampled grid
        r, q = centre % up, centre // up
        j0 = q - n_taps + 1  # input sample met by branches[r, 0]
        acc = 0.0
        for k in range(max(-j0, 0), min(n_in - j0, n_taps)):
            acc += x[j0 + k] * branches[r, k]
        y[t] = acc


def resample_poly(x: Any, up: int, down: int) -> np.ndarray:
    """Resample a 1-D signal by up/down with a zero-phase polyphase FIR (``scipy.signal.resample_poly
    (x, up, down)`` with its defaults: Kaiser window, beta 5, zeros outside the signal).

    After reducing up/down by their gcd, the filter is a low-pass at 1/max(up, down) of Nyquist with
    2 * half + 1 taps, half = 10 * max(up, down), scaled by `up`. Output sample t (of
    ceil(len(x) * up / down)) is the filter centred on t * down in the up-sampled grid:
        y[t] = sum_j x[j] h[half + t * down - j * up].
    scipy reaches the same alignment by padding the filter and trimming upfirdn's output.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("only 1-D signals are implemented")
    if up != int(up) or down != int(down) or up < 1 or down < 1:
        raise ValueError("up and down must be positive integers")
    g = math.gcd(int(up), int(down))
    up, down = int(up) // g, int(down) // g
    if up == down == 1:
        return x.copy()
    n_out = -(-x.shape[0] * up // down)
    rate = max(up, down)
    half = 10 * rate
    h = firwin(2 * half + 1, 1.0 / rate, window=("kaiser", 5.0)) * up
    n_taps = -(-h.size // up)
    padded = np.zeros(n_taps * up)
    padded[: h.size] = h
    branches = np.ascontiguousarray(padded.reshape(n_taps, up).T[:, ::-1])
    y = np.empty(n_out)
    _polyphase(x, branches, down, half, y)
    return y


# ----------------------------------------------------------------------------- FFT convolution


def fftconvolve(in1: Any, in2: Any, axes: int = -1) -> np.ndarray:
    """Full linear convolution of real arrays along the last axis, the other axes broadcast against
    each other (``scipy.signal.fftconvolve(in1, in2, axes=-1)``, mode "full"): product of real FFTs
    of a fast length >= len1 + len2 - 1, trimmed to that length (a plain product when either length
    is 1, as in scipy)."""
    in1, in2 = np.asarray(in1, dtype=np.float64), np.asarray(in2, dtype=np.float64)
    if axes not in (-1, in1.ndim - 1, [-1], (-1,)):
        raise ValueError("only convolution along the last axis is implemented")
    if in1.ndim != in2.ndim:
        raise ValueError("in1 and in2 should have the same dimensionality")
    if in1.shape[-1] == 1 or in2.shape[-1] == 1:  # a scaling: scipy multiplies directly, so exactly
        return in1 * in2
    n = in1.shape[-1] + in2.shape[-1] - 1
    size = sfft.next_fast_len(n, real=True)
    spectrum = sfft.rfft(in1, size, axis=-1) * sfft.rfft(in2, size, axis=-1)
    return sfft.irfft(spectrum, size, axis=-1)[..., :n].copy()
