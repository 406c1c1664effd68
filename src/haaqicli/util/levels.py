"""Presentation level: one definition shared by `haaqi score`, `check`, `sweep`, `reference` and the API.

The label convention: the reference is presented at L dB SPL (its RMS over all channels is heard at L)
and the processed signal keeps its level relative to the reference, so a codec that loses 3 dB is
heard 3 dB softer. Exact HAAQI does this literally (`level1 = L - 20*log10(rms(reference))` applies
to both signals). Without a reference (`haaqi score`, the API, `check` without `--reference`) the
file's own RMS is heard at L, which assumes the original was at the same level.

The models learnt the scale from labels made at the levels their training data used; outside that
range a prediction is an extrapolation, so it is warned about.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from haaqicli.util.constants import DEFAULT_SPL
from haaqicli.util.errors import AudioError

LEVEL_DEFINITION = (
    "Level: the reference is presented at L dB SPL (its RMS over all channels) and the processed "
    "signal keeps its level relative to the reference. Without a reference, the file's RMS is heard "
    "at L, assuming the original was at the same level."
)

SCORE_SPL_HELP = ("Presentation level L in dB SPL: the file's RMS (over all channels) is heard at L, which "
                  "assumes the original was at the same level. Exact HAAQI (--reference): the reference is "
                  "heard at L and the processed file keeps its level relative to it.")
REFERENCE_SPL_HELP = ("Presentation level L in dB SPL of the reference (its RMS over all channels); the "
                      "processed file keeps its level relative to the reference (the label convention).")


class LevelWarning(UserWarning):
    """A predicted score at a presentation level the model was not trained at."""


def reference_level1(reference: np.ndarray, spl: float) -> float:
    """compute_haaqi's `level1` that presents `reference` (any shape: RMS over every sample of every
    channel) at `spl` dB SPL; the processed signal, calibrated by the same level1, keeps its relative level."""
    rms = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    if not rms > 0:
        raise AudioError("the reference is silent: it cannot be presented at a level")
    return float(spl - 20.0 * np.log10(rms))


def trained_spl_range(training: Mapping[str, Any] | None) -> tuple[float, float]:
    """(lowest, highest) presentation level of a model's training labels, from its metadata
    (`training["spl_range"]`, written by `haaqi train`/`distill`); models exported before the field
    existed were all labelled at DEFAULT_SPL."""
    value = (training or {}).get("spl_range")
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return DEFAULT_SPL, DEFAULT_SPL
    return (low, high) if low <= high else (high, low)


def untrained_level_message(spl: float, model_name: str, training: Mapping[str, Any] | None) -> str:
    """A one-line warning when `spl` lies outside the model's trained levels, else ''."""
    low, high = trained_spl_range(training)
    if low - 1e-9 <= spl <= high + 1e-9:
        return ""
    trained = f"{low:g} dB SPL" if low == high else f"{low:g}-{high:g} dB SPL"
    return (f"presentation level {spl:g} dB SPL (--spl): the {model_name} model was trained on labels at "
            f"{trained} only, so its scores at this level are an extrapolation; use the exact HAAQI "
            "(--reference) where an original exists")


def warn_untrained_level(spl: float, model_name: str, training: Mapping[str, Any] | None) -> None:
    message = untrained_level_message(spl, model_name, training)
    if message:
        warnings.warn(message, LevelWarning, stacklevel=3)
