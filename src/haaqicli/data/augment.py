"""Content augmentation of the clean reference, before degradation and labelling.

The label is always computed on the final (reference, processed) pair, so changing the reference is
label-correct: a loud modern master, a mono fold-down, a reverberant hall recording or two tracks
played together are clean music too, and the models must learn that they are. An augmentation is a
JSON-able dict recorded per item in the manifest (column ``augment``); the empty dict is none.

Keys, applied in this order (a recording is made in a room, then mixed, equalised and mastered):

- ``downmix``: weight of the left channel in the mono fold-down (stereo sources; default 0.5),
- ``mix``: a second clip of the same split (``source``, ``source_sha256``, ``offset_s``) added at
  ``gain_db`` relative to the first clip's RMS,
- ``room``: moderate room reverb on the reference (``rt60_s``, ``drr_db``, ``seed``),
- ``eq``: peaking bands (``peaks``: [freq_hz, gain_db, q]) and a gentle ``db_per_octave`` tilt,
- ``master``: compression (``threshold_db``, ``ratio``, ``time_ms``) then limiting (``drive_db``,
  ``release_ms``), as loud masters are made,
- ``band``: the content ends at ``cutoff_hz`` (a steep Butterworth low-pass of ``order``), as in music
  released at a low sample rate or through a lossy encoder's low-pass; or, coded (``codec``,
  ``bitrate``, ``rate_hz``), the master went through a real low-bitrate encoder at a low sample rate,
  whose own band edge and artefacts stay in the reference, as in old Vorbis and MP3 releases. Never
  drawn with the others: only the manifest's band-limited items carry it (`sample_band`,
  `sample_coded_band`), so that clean music whose top octaves are missing is not read as damage
  (`haaqi evaluate`'s clean_by_bandwidth).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from haaqicli.data import degrade

Augmentation = dict[str, Any]

# Probability of each augmentation on a training item (independent draws): about a quarter of the
# items keep the clip as it is.
AUGMENT_PROBABILITY: dict[str, float] = {"downmix": 0.3, "mix": 0.2, "room": 0.15, "eq": 0.3, "master": 0.25}

# Band-limited references: cutoffs log-uniform over where narrow releases end (16-24 kHz sample rates,
# Vorbis and MP3 low-passes at low bitrates); steeper than the damage family `lowpass` (order 8).
BAND_CUTOFF_RANGE_HZ = (5000.0, 12000.0)
# Coded band-limited references: every (codec, rate, bitrate) here encodes with this ffmpeg (libvorbis
# refuses 96 kb/s mono at 22.05 and 24 kHz) and leaves content ending at 7.3-13 kHz, as the narrow
# Vorbis files of the real-music validation packages do (measured with `audio.bandwidth`).
CODED_BAND_CODECS = ("vorbis", "mp3")
CODED_BAND_RATES_HZ = (16000, 22050, 24000)
CODED_BAND_BITRATES = (32, 48, 64)
BAND_ORDERS = (16, 24)


def sample_augmentation(rng: np.random.Generator, stereo: bool,
                        partner: Mapping[str, Any] | None = None) -> Augmentation:
    """Draw an augmentation. ``partner`` (source, source_sha256, offset_s of another clip of the same
    split and sample rate) makes a two-track mix possible; ``stereo`` a weighted fold-down."""
    draws = {name: rng.random() < p for name, p in AUGMENT_PROBABILITY.items()}
    out: Augmentation = {}
    if stereo and draws["downmix"]:
        out["downmix"] = round(float(rng.choice([0.0, 1.0, rng.uniform(0.15, 0.85)])), 3)
    if partner is not None and draws["mix"]:
        out["mix"] = {"source": str(partner["source"]), "source_sha256": str(partner["source_sha256"]),
                      "offset_s": float(partner["offset_s"]), "gain_db": round(float(rng.uniform(-12.0, 0.0)), 1)}
    if draws["room"]:
        out["room"] = {"rt60_s": round(float(rng.uniform(0.2, 0.9)), 2), "drr_db": round(float(rng.uniform(4.0, 15.0)), 1),
                       "seed": int(rng.integers(0, 2**31 - 1))}
    if draws["eq"]:
        peaks = [[round(float(np.exp(rng.uniform(np.log(80.0), np.log(10000.0)))), 1),
                  round(float(rng.uniform(-6.0, 6.0)), 1), round(float(rng.uniform(0.5, 2.0)), 2)]
                 for _ in range(int(rng.integers(1, 4)))]
        out["eq"] = {"peaks": peaks, "db_per_octave": round(float(rng.uniform(-2.0, 2.0)), 2)}
    if draws["master"]:
        out["master"] = {"threshold_db": round(float(rng.uniform(-18.0, -4.0)), 1),
                         "ratio": float(rng.choice([2.0, 3.0, 4.0, 6.0])), "time_ms": float(rng.choice([5.0, 20.0, 50.0])),
                         "drive_db": round(float(rng.uniform(2.0, 10.0)), 1),
                         "release_ms": float(rng.choice([50.0, 100.0, 200.0]))}
    return out


def sample_band(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the ``band`` augmentation: where the reference's content ends and how steeply."""
    low, high = np.log(BAND_CUTOFF_RANGE_HZ[0]), np.log(BAND_CUTOFF_RANGE_HZ[1])
    return {"cutoff_hz": round(float(np.exp(rng.uniform(low, high))), -1), "order": int(rng.choice(BAND_ORDERS))}


def sample_coded_band(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a coded ``band`` augmentation: the encoder, the sample rate it codes at and its bitrate."""
    return {"codec": str(rng.choice(CODED_BAND_CODECS)), "rate_hz": int(rng.choice(CODED_BAND_RATES_HZ)),
            "bitrate": int(rng.choice(CODED_BAND_BITRATES))}


def augmentation_kind(augment: Mapping[str, Any]) -> str:
    """Short label for stats: 'none' or the keys, e.g. 'mix+master'."""
    keys = [k for k in ("downmix", "mix", "room", "eq", "master", "band") if k in augment]
    return "+".join(keys) if keys else "none"


def apply_augmentation(clip: np.ndarray, sr: int, augment: Mapping[str, Any],
                       read_partner: Callable[[Mapping[str, Any]], np.ndarray]) -> np.ndarray:
    """The augmented mono reference from a mono ``clip`` (already folded down with ``downmix``).
    ``read_partner(mix)`` returns the mix partner's mono clip of the same length and rate."""
    x = np.asarray(clip, dtype=np.float64)
    if "mix" in augment:
        other = np.asarray(read_partner(augment["mix"]), dtype=np.float64)
        scale = degrade._rms(x) / (degrade._rms(other) or 1.0) * 10 ** (float(augment["mix"]["gain_db"]) / 20.0)
        x = x + scale * other
    if "room" in augment:
        x = degrade.reverb(x, sr, {"type": "reverb", **augment["room"]})
    if "eq" in augment:
        x = degrade.resonance(x, sr, {"peaks": augment["eq"]["peaks"]})
        x = degrade.tilt(x, sr, {"db_per_octave": augment["eq"]["db_per_octave"]})
    if "master" in augment:
        master = augment["master"]
        x = degrade.compressor(x, sr, master)
        x = degrade.limiter(x, sr, master)
    if "band" in augment:  # last: a narrow release of the finished master
        band = augment["band"]
        if "codec" in band:  # coded at its rate, or the clip's own where that is lower
            x = degrade.codec(x, sr, {**band, "rate_hz": min(int(band["rate_hz"]), sr)})
        else:
            x = degrade.lowpass(x, sr, band)
    return x
