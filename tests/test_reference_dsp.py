"""haaqicli.reference.dsp against scipy.signal, for every variant the exact engine uses and a few nearby.

Tolerance: max |ours - scipy| <= 1e-12 * max |scipy| everywhere (TOL). Measured: the filter designs,
lfilter and fftconvolve are bit-identical to scipy 1.17; firwin with a Kaiser window and resample_poly
differ by ~1e-16 relative, because numpy's i0 (its exp) differs from scipy.special.i0 by an ulp at some
points (with scipy's i0 the resampled signals are bit-identical too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as ss

import haaqicli
from haaqicli.reference import dsp

TOL = 1e-12

RATES_KHZ = (8, 16, 22, 32, 44, 48, 88, 96)  # resample_to_model_rate's whole-kHz source rates


def _assert_close(ours: np.ndarray, theirs: np.ndarray, tol: float = TOL) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    scale = np.max(np.abs(theirs)) if theirs.size else 0.0
    assert np.max(np.abs(ours - theirs), initial=0.0) <= tol * scale


BUTTER = [
    (1, 5000 / 12000, "low"),  # middle ear
    (2, 350 / 12000, "high"),  # middle ear
    (1, 800 / 12000, "low"),  # OHC gain smoothing
    (2, 0.3, "low"),
    (3, 0.05, "low"),
    (4, 0.6, "high"),
    (1, 0.9, "high"),
]


CHEBY2 = [(7, 30, 21 / khz) for khz in RATES_KHZ if khz > 24] + [(7, 30, 21 / 24.5), (6, 40, 0.3), (5, 20, 0.5)]


@pytest.mark.parametrize(("name", "args"), [("butter", a) for a in BUTTER] + [("cheby2", a) for a in CHEBY2])
def test_iir_design(name: str, args: tuple) -> None:
    """butter(order, wn, btype) and cheby2(order, rs, wn): the same coefficients as scipy.signal."""
    b, a = getattr(dsp, name)(*args)
    b_ref, a_ref = getattr(ss, name)(*args)
    _assert_close(b, b_ref)
    _assert_close(a, a_ref)


@pytest.mark.parametrize(
    "design",
    [("butter", *args) for args in BUTTER] + [("cheby2", *args) for args in CHEBY2],
    ids=lambda d: "-".join(map(str, d)),
)
def test_lfilter_on_the_engine_designs(design: tuple) -> None:
    kind, *args = design
    b, a = ss.butter(*args) if kind == "butter" else ss.cheby2(*args)
    x = np.random.default_rng(len(b)).standard_normal(6000)
    _assert_close(dsp.lfilter(b, a, x), ss.lfilter(b, a, x))


@pytest.mark.parametrize(
    ("b", "a"),
    [([0.5, 0.25], [2.0, -0.4]),  # a[0] != 1: both are normalised by it
     ([1.0, -0.3, 0.2, 0.1], [1.0, 0.5]),  # len(b) > len(a)
     ([0.2], [1.0, -1.5, 0.7]),  # len(a) > len(b)
     ([0.3, 0.3, 0.4], [1.0]),  # FIR
     ([0.7], [2.0])],  # pure gain
)
def test_lfilter_general_coefficients(b: list, a: list) -> None:
    x = np.random.default_rng(1).standard_normal(3000)
    _assert_close(dsp.lfilter(b, a, x), ss.lfilter(b, a, x))
    _assert_close(dsp.lfilter(b, a, x[:1]), ss.lfilter(b, a, x[:1]))
    assert dsp.lfilter(b, a, x[:0]).shape == (0,)


def _modulation_edges() -> list[tuple[float | list[float], str]]:
    """The eight Hann-windowed modulation filters of haaqi._modulation_filters (129 taps, Nyquist 125 Hz)."""
    edges = [4.0, 8.0, 12.5, 20.0, 32.0, 50.0, 80.0]
    nyq = 125.0
    return ([(edges[0] / nyq, "lowpass")]
            + [([lo / nyq, hi / nyq], "bandpass") for lo, hi in zip(edges, edges[1:], strict=False)]
            + [(edges[-1] / nyq, "highpass")])


@pytest.mark.parametrize("numtaps", [129, 65, 33])
@pytest.mark.parametrize(("cutoff", "pass_zero"), _modulation_edges())
def test_firwin_hann(numtaps: int, cutoff: float | list[float], pass_zero: str) -> None:
    h = dsp.firwin(numtaps, cutoff, window="hann", pass_zero=pass_zero)
    _assert_close(h, ss.firwin(numtaps, cutoff, window="hann", pass_zero=pass_zero))


def test_engine_modulation_filters_match_scipy() -> None:
    from haaqicli.reference.haaqi import _modulation_filters

    ours = _modulation_filters()
    assert ours.shape == (8, 129)
    for row, (cutoff, pass_zero) in zip(ours, _modulation_edges(), strict=True):
        _assert_close(row, ss.firwin(129, cutoff, window="hann", pass_zero=pass_zero))


@pytest.mark.parametrize("rate", [2, 3, 4, 11, 6, 7])
def test_firwin_kaiser_as_resample_poly_designs_it(rate: int) -> None:
    h = dsp.firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))
    _assert_close(h, ss.firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)))


@pytest.mark.parametrize("pass_zero", [True, False])
def test_firwin_boolean_pass_zero(pass_zero: bool) -> None:
    _assert_close(dsp.firwin(41, 0.3, pass_zero=pass_zero), ss.firwin(41, 0.3, window="hann", pass_zero=pass_zero))
    if not pass_zero:
        _assert_close(dsp.firwin(41, [0.2, 0.4], pass_zero=False),
                      ss.firwin(41, [0.2, 0.4], window="hann", pass_zero=False))


@pytest.mark.parametrize(("up", "down"), [(24, khz) for khz in RATES_KHZ] + [(3, 7), (7, 3), (5, 1), (1, 4)])
@pytest.mark.parametrize("n", [1, 2, 5, 97, 24_011])
def test_resample_poly(up: int, down: int, n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n)
    _assert_close(dsp.resample_poly(x, up, down), ss.resample_poly(x, up, down))


def test_resample_poly_identity_and_float32_input() -> None:
    x = np.random.default_rng(0).standard_normal(100)
    y = dsp.resample_poly(x, 24, 24)
    assert y is not x and np.array_equal(y, x)
    x32 = x.astype(np.float32)
    _assert_close(dsp.resample_poly(x32, 24, 44), ss.resample_poly(x32.astype(np.float64), 24, 44))


@pytest.mark.parametrize("n", [1, 2, 60, 1000])
def test_fftconvolve_as_the_engine_broadcasts(n: int) -> None:
    rng = np.random.default_rng(n)
    b = rng.standard_normal((8, 129))
    x = rng.standard_normal((6, n))
    _assert_close(dsp.fftconvolve(b[:, None, :], x[None], axes=-1), ss.fftconvolve(b[:, None, :], x[None], axes=-1))


def test_fftconvolve_1d() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(500), rng.standard_normal(37)
    _assert_close(dsp.fftconvolve(a, b), ss.fftconvolve(a, b))
    _assert_close(dsp.fftconvolve(b, a), ss.fftconvolve(b, a))


def test_unimplemented_variants_raise() -> None:
    with pytest.raises(ValueError):
        dsp.butter(2, [0.1, 0.2], "band")
    with pytest.raises(ValueError):
        dsp.butter(2, 1.2)
    with pytest.raises(ValueError):
        dsp.firwin(41, [0.1, 0.2], pass_zero=True)  # band-stop
    with pytest.raises(ValueError):
        dsp.firwin(41, 0.2, window="hamming")
    with pytest.raises(ValueError):
        dsp.lfilter([1.0], [1.0, 0.5], np.zeros((2, 10)))
    with pytest.raises(ValueError):
        dsp.resample_poly(np.zeros((2, 10)), 2, 3)
    with pytest.raises(ValueError):
        dsp.fftconvolve(np.zeros((2, 10)), np.zeros((2, 10)), axes=0)


def test_the_exact_engine_never_imports_scipy_signal() -> None:
    """A fresh process importing the engine and scoring a 1-s 44.1 kHz pair (resampling, the Chebyshev
    RMS match, the middle ear, the modulation filters) never imports scipy.signal."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import haaqicli.reference.haaqi as h\n"
        "from haaqicli.audio import synth\n"
        "x = synth.music(1.0, 44100)[0].astype(np.float64)\n"
        "score = h.compute_haaqi(0.5 * x, x, 44100, 44100, np.full(8, 30.0))\n"
        "assert 0.0 < score <= 1.0, score\n"
        "print('scipy.signal' in sys.modules)\n"
    )
    src = str(Path(haaqicli.__file__).parents[1])  # this checkout's package, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
