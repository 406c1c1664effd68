"""Which Debian packages may feed training, which are reserved, and the package-level split.

Music comes from free game packages. Evaluation packages are reserved: they must never be read
for training or tuning, so every path into the corpus goes through :func:`guard_package`.
The train/validation split is by package (never by file), so near-duplicate tracks from one
game never straddle the split.
"""

from __future__ import annotations

import fnmatch

from haaqicli.errors import HaaqiError

# Packages whose audio files (ogg/wav/flac/mp3) are training music.
AUDIO_PACKAGES: tuple[str, ...] = (
    "wesnoth-1.16-music",
    "naev-data",
    "supertux-data",
    "hedgewars-data",
    "colobot-common-sounds",
    "singularity-music",
    "supertuxkart-data",
    "marsshooter-data",
    "freedroidrpg-data",
    "flare-game",
    "pushover-data",
    "megaglest-data",
    "starfighter-data",
    "warmux-data",
)
# Packages whose MIDI files are rendered with fluidsynth + a GM soundfont.
MIDI_PACKAGES: tuple[str, ...] = ("simutrans-data", "openttd-openmsx", "freedink-data")
TRAIN_PACKAGES: tuple[str, ...] = AUDIO_PACKAGES + MIDI_PACKAGES

# Reserved for the final evaluation: never fetched, read, trained or tuned on. Glob patterns.
RESERVED_PATTERNS: tuple[str, ...] = (
    "widelands-data*",
    "openclonk-data*",
    "fretsonfire-songs-*",
    "hyperrogue-music*",
    "0ad-data*",
    "musescore-general-soundfont*",
    "music21*",
    "*music21-corpus*",
)

# Held out for validation. Chosen for diversity, not size:
#  - flare-game: orchestral/fantasy recordings (ogg),
#  - marsshooter-data: electronic/rock game music (ogg),
#  - openttd-openmsx: GM MIDI rendered with FluidR3 (tests the synthetic-render domain).
VALIDATION_PACKAGES: tuple[str, ...] = ("flare-game", "marsshooter-data", "openttd-openmsx")

# Real recorded music that calibrates the predicted-score intervals (data.calibration_set): the
# intervals are fitted on ufoai-music and checked on nexuiz-music. Never training packages, so
# guard_package refuses them for training like any package not on the training list.
CALIBRATION_PACKAGES: tuple[str, ...] = ("ufoai-music", "nexuiz-music")


class DatasetError(HaaqiError):
    """The corpus, manifest or a dataset option is unusable; the message names the file/option."""


class ReservedPackageError(DatasetError):
    """A reserved evaluation package (or a package not on the training list) was requested."""


def is_reserved(name: str) -> bool:
    """True when ``name`` (a package name or a path component) matches a reserved pattern."""
    lowered = name.lower()
    return any(fnmatch.fnmatch(lowered, pattern) for pattern in RESERVED_PATTERNS)


def guard_package(name: str) -> str:
    """Return ``name`` if it is an allowed training package, else raise ReservedPackageError."""
    if is_reserved(name):
        raise ReservedPackageError(f"package {name!r} is reserved for evaluation and must not be used for training")
    if name not in TRAIN_PACKAGES:
        raise ReservedPackageError(f"package {name!r} is not on the training list (haaqicli.data.packages)")
    return name


def guard_path(relative: str) -> None:
    """Refuse any corpus path that has a reserved package name in one of its components."""
    for part in relative.replace("\\", "/").split("/"):
        if part and is_reserved(part):
            raise ReservedPackageError(f"path {relative!r} lies in reserved package {part!r}")


def split_of(package: str, validation: tuple[str, ...] = VALIDATION_PACKAGES) -> str:
    """'validation' for held-out packages, 'train' otherwise (after the reserved guard)."""
    guard_package(package)
    return "validation" if package in validation else "train"
