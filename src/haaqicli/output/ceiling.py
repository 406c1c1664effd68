"""The top of the HAAQI scale per hearing profile: the exact HAAQI of clean music against itself.

HAAQI compares what a listener with the profile's audiogram hears from the processed music with what a
normal-hearing listener hears from the clean reference (NAL-R amplified for the loss). So for hearing loss even the untouched original
scores well below 1 (normal hearing about 0.97, N2 / `mild` about 0.55, N3 / `moderate` about 0.36): a
score means "how close to what normal hearing gets from the clean original", and a threshold above a
profile's ceiling fails every file, perfect ones included.

The ceiling is measured, not modelled: the exact HAAQI (our pyclarity-compatible implementation) of a few
deterministic synthetic music clips (`haaqicli.audio.synth`) against themselves, each ear with its audiogram,
the reference presented at `spl` dB SPL. It needs no files, so it is the same figure everywhere, also
from an installed wheel. The built-in profiles' values at the default level are stored in
`ceilings.json` beside this module, written by `haaqi profiles --measure --json src/haaqicli/output/ceilings.json`
(a test recomputes one entry); profile files and other levels are measured on demand (a second or two per
ear). Real music can sit a few hundredths away: `haaqi reference --reference masters/ masters/` gives the
ceiling of your own clean files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from haaqicli.audio import synth
from haaqicli.audiogram import BUILTIN_PROFILES, EARS, Profile
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import DEFAULT_SPL
from haaqicli.util.errors import HaaqiError

# The clean clips: (seed, tempo in bpm) of `synth.music`, 8 s each at HAAQI's own 24 kHz (no resampling).
# Shorter clips lower the normal-hearing ceiling (4 s: 0.93-0.95, 8 s: 0.96-0.98; start-up of the ear model).
CLEAN_CLIPS: tuple[tuple[int, float], ...] = ((0, 120.0), (1, 96.0), (2, 140.0), (3, 108.0))
CLIP_SECONDS = 8.0
SAMPLE_RATE = 24000
STORED = "ceilings.json"
METHOD = (f"exact HAAQI of {len(CLEAN_CLIPS)} clean synthetic music clips ({CLIP_SECONDS:g} s, "
          "haaqicli.audio.synth.music seeds 0-3) against themselves, mean over clips")


@dataclass(frozen=True)
class Ceiling:
    """Exact HAAQI of clean music for one profile: per ear (mean over the clips), and the clips' range."""

    profile: str
    left: float
    right: float
    low: float  # lowest clip (mean of the ears)
    high: float  # highest clip
    spl: float
    left_levels: tuple[float, ...]
    right_levels: tuple[float, ...]

    @property
    def score(self) -> float:
        """What a clean file scores: the mean of the ears (a mono file is heard by both)."""
        return (self.left + self.right) / 2

    def matches(self, profile: Profile, spl: float) -> bool:
        return (self.left_levels == profile.left.levels and self.right_levels == profile.right.levels
                and abs(self.spl - spl) < 1e-9)


def clean_clips() -> list[np.ndarray]:

    return [synth.music(CLIP_SECONDS, SAMPLE_RATE, seed=seed, tempo_bpm=tempo)[0].astype(np.float64)
            for seed, tempo in CLEAN_CLIPS]


def measure_ceilings(profiles: Iterable[Profile], spl: float = DEFAULT_SPL, workers: int = 1) -> dict[str, Ceiling]:
    """Measure every profile's ceiling (one exact-HAAQI batch; `workers` CPU processes, <= 0: all cores).
    Audiograms shared by several profiles (aliases, symmetric ears) are scored once."""
    # lazy: numba, scipy only where this path runs (start-up time)
    from haaqicli.reference.dispatch import compute_haaqi_batch

    profiles = list(profiles)
    clips = clean_clips()
    audiograms = list(dict.fromkeys(p.ear(ear).levels for p in profiles for ear in EARS))
    items = [{"processed": clip, "reference": clip, "processed_sr": SAMPLE_RATE, "reference_sr": SAMPLE_RATE,
              "audiogram": np.asarray(levels, dtype=np.float32), "equalisation": 1, "seed": 0,
              # the reference presented at `spl` dB SPL (label convention)
              "level1": spl - 20 * np.log10(np.sqrt(np.mean(clip**2))), "noise": "fast"}
             for levels in audiograms for clip in clips]
    scores = np.asarray(compute_haaqi_batch(items, workers=workers, device="cpu")).reshape(len(audiograms), -1)
    per_clip = dict(zip(audiograms, scores, strict=True))
    out = {}
    for profile in profiles:
        left, right = per_clip[profile.left.levels], per_clip[profile.right.levels]
        both = (left + right) / 2
        out[profile.name] = Ceiling(profile.name, float(left.mean()), float(right.mean()), float(both.min()),
                                    float(both.max()), float(spl), profile.left.levels, profile.right.levels)
    return out


@cache
def _stored() -> tuple[float, dict[str, Ceiling]]:
    try:
        data = json.loads((resources.files(__package__) / STORED).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return DEFAULT_SPL, {}
    return float(data["spl"]), {name: Ceiling(**{**entry, "left_levels": tuple(entry["left_levels"]),
                                                  "right_levels": tuple(entry["right_levels"])})
                                for name, entry in data["profiles"].items()}


def stored_ceiling(profile: Profile, spl: float = DEFAULT_SPL) -> Ceiling | None:
    """The stored ceiling of a built-in profile, if this profile (same audiogram) and level are stored."""
    found = _stored()[1].get(profile.name)
    return found if found is not None and found.matches(profile, spl) else None


def ceilings_for(profiles: Sequence[Profile], spl: float = DEFAULT_SPL, measure: bool = False,
                 workers: int = 1) -> dict[str, Ceiling]:
    """Ceilings by profile name: stored values where they apply (unless `measure`), measured otherwise."""
    found: dict[str, Ceiling] = {}
    missing = []
    for profile in profiles:
        stored = None if measure else stored_ceiling(profile, spl)
        if stored is None:
            missing.append(profile)
        else:
            found[profile.name] = stored
    if missing:
        found.update(measure_ceilings(missing, spl, workers))
    return {p.name: found[p.name] for p in profiles}


def builtin_ceilings() -> dict[str, Ceiling]:
    """The stored ceilings of every built-in profile at the default level (measured if not stored)."""
    return ceilings_for(list(BUILTIN_PROFILES.values()))


def write_ceilings(ceilings: Mapping[str, Ceiling], path: str | Path) -> None:
    """The JSON `ceilings.json` is made of (also `haaqi profiles --json`)."""
    spls = {c.spl for c in ceilings.values()}
    data: dict[str, Any] = {"spl": spls.pop() if len(spls) == 1 else None, "method": METHOD,
                            "profiles": {name: {k: (round(v, 6) if isinstance(v, float) else v)
                                                for k, v in asdict(c).items()}
                                         for name, c in ceilings.items()}}
    text = json.dumps(data, indent=1) + "\n"
    try:
        atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as error:
        raise HaaqiError(f"{path}: cannot write ({error.strerror or error})") from None
