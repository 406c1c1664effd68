"""HAAQI's fixed formulas that need no ear model (numpy only, so the neural models can use them
without importing the compiled engine): the score from its sub-terms, the NAL-R prescription, the
audiogram at HAAQI's six frequencies and the ERB-spaced band centres of the ear model."""

from __future__ import annotations

from typing import Any

import numpy as np

from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES
from haaqicli.util.errors import ProfileError

# The sub-terms `haaqi_terms` returns beside the score (d_loud, d_norm clipped to [0, 1]).
TERMS: tuple[str, ...] = ("cep_high", "bm_sync5", "d_loud", "d_norm")
HAAQI_FREQUENCIES = np.array([250.0, 500.0, 1000.0, 2000.0, 4000.0, 6000.0])
N_BANDS = 32
EAR_Q = 9.26449
MIN_BW = 24.7
# NAL-R's per-frequency correction at HAAQI_FREQUENCIES (dB).
NALR_BIAS = np.array([-17.0, -8.0, 1.0, -1.0, -2.0, -2.0])


def combine_clipped_terms(cep_high: Any, sync5: Any, d_loud: Any, d_norm: Any) -> tuple[Any, Any, Any]:
    """(score, nonlinear, linear) from the four sub-terms, with d_loud/d_norm already clipped to [0, 1]
    as `combine_terms` returns them. Arithmetic only, so it also runs on arrays and (differentiably) on
    torch tensors: the models' term heads combine their predictions with this one formula."""
    nonlinear = 0.754 * cep_high**3 + 0.246 * sync5
    linear = 0.329 * d_loud + 0.671 * d_norm
    score = 0.336 * nonlinear + 0.001 * linear + 0.501 * nonlinear**2 + 0.161 * linear**2
    return score, nonlinear, linear


def haaqi_loss(audiogram: Any) -> np.ndarray:
    """Hearing loss at HAAQI's six frequencies from 8 levels at AUDIOGRAM_FREQUENCIES (or an object
    with `.as_array()`). Log-frequency linear interpolation like pyclarity's `Audiogram.resample`;
    since the six frequencies are a subset of the eight, it simply drops 3 kHz and 8 kHz."""
    levels = np.asarray(audiogram.as_array() if hasattr(audiogram, "as_array") else audiogram, dtype=float)
    if levels.shape != (len(AUDIOGRAM_FREQUENCIES),):
        raise ProfileError(
            f"audiogram must have {len(AUDIOGRAM_FREQUENCIES)} levels at {AUDIOGRAM_FREQUENCIES} Hz, "
            f"got shape {levels.shape}"
        )
    if not np.all(np.isfinite(levels)):
        raise ProfileError("audiogram contains a non-finite level")
    freqs = np.log(np.asarray(AUDIOGRAM_FREQUENCIES, dtype=float))
    return np.interp(np.log(HAAQI_FREQUENCIES), freqs, levels, left=levels[0], right=levels[-1])


def nalr_gain_db(loss6: np.ndarray) -> np.ndarray:
    """NAL-R insertion gains (dB) at HAAQI_FREQUENCIES for losses there: one (6,) row or a batch
    (..., 6). A row without loss gets no gain (HAAQI then applies a pure delay)."""
    loss6 = np.asarray(loss6, dtype=float)
    critical = loss6[..., 1] + loss6[..., 2] + loss6[..., 3]
    x_ave = np.where(critical <= 180, 0.05 * critical, 9.0 + 0.116 * (critical - 180))
    gain = np.maximum(x_ave[..., None] + 0.31 * loss6 + NALR_BIAS, 0.0)
    return np.where(np.max(loss6, axis=-1, keepdims=True) <= 0, 0.0, gain)


def center_frequencies(n_bands: int = N_BANDS, low: float = 80.0, high: float = 8000.0) -> np.ndarray:
    """ERB-spaced centre frequencies (Slaney's formula), ascending from `low` to `high`."""
    q = EAR_Q * MIN_BW
    k = np.arange(1, n_bands)
    cf = -q + np.exp(k * (np.log(low + q) - np.log(high + q)) / (n_bands - 1)) * (high + q)
    return np.concatenate(([high], cf))[::-1]
