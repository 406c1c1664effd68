"""Realistic random audiograms for training labels.

Each draw is one ear's audiogram (8 values, dB HL at AUDIOGRAM_FREQUENCIES) plus its family
label, because a HAAQI label is computed for one ear. Families:
normal hearing, Bisgaard 2010 standard audiograms N1-N7 / S1-S3 with smooth perturbations,
steep-sloping (ski-slope), flat, noise-notched (4 kHz) and asymmetric pairs (the worse or the
better ear of a pair whose ears differ by 15-40 dB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES, HL_MAX, HL_MIN

# Bisgaard, Vlaming & Dahlquist (2010) standard audiograms N1-N7 / S1-S3, taken from the shared
# built-in profiles so the 8 kHz extrapolation matches the rest of the tool.
BISGAARD: dict[str, tuple[float, ...]] = {
    name: tuple(float(v) for v in BUILTIN_PROFILES[name].left.levels)
    for name in ("N1", "N2", "N3", "N4", "N5", "N6", "N7", "S1", "S2", "S3")
}

# Sampling weights of the families. Mild-moderate losses dominate real hearing-aid users;
# normal hearing is kept frequent because clean/identity items need it to reach labels near 1.
FAMILY_WEIGHTS: dict[str, float] = {
    "normal": 0.22,
    "bisgaard": 0.38,
    "sloping": 0.12,
    "flat": 0.10,
    "notched": 0.10,
    "asymmetric": 0.08,
}

_LOG_F = np.log2(np.asarray(AUDIOGRAM_FREQUENCIES, dtype=float) / 1000.0)


@dataclass(frozen=True)
class SampledAudiogram:
    levels: tuple[float, ...]  # 8 values, dB HL, rounded to 0.5 dB
    family: str  # e.g. "normal", "bisgaard:N3", "sloping", "asymmetric:worse"
    ear: str  # "left" or "right"

    def as_array(self) -> np.ndarray:
        return np.asarray(self.levels, dtype=float)

    @property
    def pta(self) -> float:
        """Four-frequency pure-tone average (0.5, 1, 2, 4 kHz)."""
        idx = [AUDIOGRAM_FREQUENCIES.index(f) for f in (500, 1000, 2000, 4000)]
        return float(np.mean(self.as_array()[idx]))

    @property
    def severity(self) -> str:
        return severity_of(self.pta)


def severity_of(pta: float) -> str:
    """WHO-style grades on the 4-frequency PTA."""
    if pta <= 20:
        return "normal"
    if pta <= 40:
        return "mild"
    if pta <= 60:
        return "moderate"
    if pta <= 80:
        return "severe"
    return "profound"


def _smooth_perturbation(rng: np.random.Generator, scale_db: float) -> np.ndarray:
    """A smooth random curve over log-frequency: low-order polynomial plus small jitter."""
    coeffs = rng.normal(0.0, scale_db / 2.0, size=3)
    curve = coeffs[0] + coeffs[1] * _LOG_F / 2.0 + coeffs[2] * (_LOG_F**2 - 2.0) / 4.0
    return curve + rng.normal(0.0, scale_db / 4.0, size=len(_LOG_F))


def _finish(levels: np.ndarray) -> tuple[float, ...]:
    clipped = np.clip(levels, HL_MIN, HL_MAX)
    return tuple(float(v) for v in np.round(clipped * 2.0) / 2.0)


def _normal(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(-5.0, 12.0)
    return base + rng.normal(0.0, 3.0, size=8) + np.where(_LOG_F > 1.5, rng.uniform(0, 10), 0.0)


def _bisgaard(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    name = str(rng.choice(sorted(BISGAARD)))
    scale = rng.uniform(5.0, 10.0)
    return np.asarray(BISGAARD[name], dtype=float) + _smooth_perturbation(rng, scale), name


def _sloping(rng: np.random.Generator) -> np.ndarray:
    # Ski slope: near-normal lows, a knee between 1 and 3 kHz, then 15-35 dB/octave.
    low = rng.uniform(0.0, 30.0)
    knee = rng.uniform(0.0, np.log2(3.0))
    slope = rng.uniform(15.0, 35.0)
    return low + slope * np.maximum(_LOG_F - knee, 0.0) + rng.normal(0.0, 3.0, size=8)


def _flat(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20.0, 85.0) + _smooth_perturbation(rng, 5.0)


def _notched(rng: np.random.Generator) -> np.ndarray:
    # Noise-induced notch centred at 3-6 kHz (mostly 4 kHz), with recovery at 8 kHz.
    base = rng.uniform(0.0, 25.0) + rng.normal(0.0, 3.0, size=8)
    centre = np.log2(rng.choice([3.0, 4.0, 4.0, 4.0, 6.0]))
    depth = rng.uniform(20.0, 55.0)
    width = rng.uniform(0.5, 1.0)
    return base + depth * np.exp(-0.5 * ((_LOG_F - centre) / (width / 2.0)) ** 2)


def sample_audiogram(rng: np.random.Generator, family: str | None = None) -> SampledAudiogram:
    """Draw one ear's audiogram. ``family`` forces a family (for tests and balanced sets)."""
    if family is None:
        names = list(FAMILY_WEIGHTS)
        weights = np.asarray([FAMILY_WEIGHTS[n] for n in names])
        family = str(rng.choice(names, p=weights / weights.sum()))
    ear = str(rng.choice(["left", "right"]))
    if family == "normal":
        return SampledAudiogram(_finish(_normal(rng)), "normal", ear)
    if family == "bisgaard":
        levels, name = _bisgaard(rng)
        return SampledAudiogram(_finish(levels), f"bisgaard:{name}", ear)
    if family == "sloping":
        return SampledAudiogram(_finish(_sloping(rng)), "sloping", ear)
    if family == "flat":
        return SampledAudiogram(_finish(_flat(rng)), "flat", ear)
    if family == "notched":
        return SampledAudiogram(_finish(_notched(rng)), "notched", ear)
    if family == "asymmetric":
        left, right = sample_asymmetric_pair(rng)
        worse_is_left = left.pta >= right.pta
        chosen = left if ear == "left" else right
        which = "worse" if (ear == "left") == worse_is_left else "better"
        return SampledAudiogram(chosen.levels, f"asymmetric:{which}", ear)
    raise ValueError(f"unknown audiogram family {family!r}")


def sample_asymmetric_pair(rng: np.random.Generator) -> tuple[SampledAudiogram, SampledAudiogram]:
    """A (left, right) pair: one ear from a loss family, the other 15-40 dB worse in a smooth way."""
    base_family = str(rng.choice(["normal", "bisgaard", "sloping", "flat"]))
    better = sample_audiogram(rng, base_family).as_array()
    worse = better + rng.uniform(15.0, 40.0) + _smooth_perturbation(rng, 6.0)
    pair = [better, worse]
    if rng.random() < 0.5:
        pair.reverse()
    return (
        SampledAudiogram(_finish(pair[0]), "asymmetric", "left"),
        SampledAudiogram(_finish(pair[1]), "asymmetric", "right"),
    )
