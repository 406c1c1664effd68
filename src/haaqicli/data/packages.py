"""Which Debian packages feed the corpus, how each is turned into music, which are reserved, and the split.

Music comes from free game packages, real drum and instrument recordings and the music21 score corpus.
Evaluation packages are reserved: they must never be fetched, read, trained or tuned on, so every
path into the corpus goes through :func:`guard_package` / :func:`guard_path`. The split is by package
(never by file), so near-duplicate tracks of one game never straddle it, and renders made from a
package's MIDI (other soundfonts, real drums, loops) only ever come from training packages.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from haaqicli.util.errors import HaaqiError

# How a package's files become music (see haaqicli.data.install):
AUDIO = "audio"  # ogg/wav/flac/mp3 files are tracks as they are
MIDI = "midi"  # MIDI files rendered with fluidsynth and several GM soundfonts
TRACKER = "tracker"  # .xm/.it/.s3m/.mod modules rendered by ffmpeg's libopenmpt
RAW_U8 = "raw-u8"  # headerless unsigned 8-bit stereo PCM at 22,050 Hz (xblast-tnt-musics)
DRUMS = "drums"  # Hydrogen drum kits: real drums replace the GM drum channel of training MIDI
LOOPS = "loops"  # Sonic Pi's recorded loops layered, at tempo, under rendered training scores
SCORES = "scores"  # the music21 score corpus (PyPI, not Debian), rendered like MIDI

TRAIN = "train"
VALIDATION = "validation"  # game music held out for model selection
VALIDATION_REAL = "validation-real"  # recorded music held out (see REPORTING_ONLY_PACKAGES)


@dataclass(frozen=True)
class Package:
    name: str
    kind: str
    split: str = TRAIN
    # Path globs (inside the extracted package) whose audio is music; empty: every audio file.
    music_globs: tuple[str, ...] = ()
    debian: bool = True  # False: not an apt package (music21 comes from PyPI)


PACKAGES: tuple[Package, ...] = (
    # Game music recordings and productions (training).
    Package("wesnoth-1.16-music", AUDIO),
    Package("naev-data", AUDIO),
    Package("supertux-data", AUDIO),
    Package("hedgewars-data", AUDIO),
    Package("colobot-common-sounds", AUDIO),
    Package("singularity-music", AUDIO),
    Package("supertuxkart-data", AUDIO),
    Package("freedroidrpg-data", AUDIO),
    Package("pushover-data", AUDIO),
    Package("megaglest-data", AUDIO),
    Package("starfighter-data", AUDIO),
    Package("warmux-data", AUDIO),
    Package("warzone2100-music", AUDIO),
    Package("planetblupi-music-ogg", AUDIO),
    Package("drascula-music", AUDIO),
    Package("asc-music", AUDIO),
    Package("extremetuxracer-data", AUDIO),
    Package("lincity-ng-data", AUDIO),
    Package("freecol", AUDIO),
    Package("redeclipse-data", AUDIO, music_globs=("*/music/*",)),  # its music only, not its effects
    # Tracker modules and raw PCM, rendered to FLAC.
    Package("fb-music-high", TRACKER),
    Package("pingus-data", TRACKER),
    Package("xblast-tnt-musics", RAW_U8),
    # MIDI rendered with several soundfonts; real drums and loops.
    Package("simutrans-data", MIDI),
    Package("freedink-data", MIDI),
    Package("hydrogen-drumkits", DRUMS),
    Package("sonic-pi-samples", LOOPS),
    Package("music21", SCORES, debian=False),
    # Held out. Game validation, chosen for diversity: flare-game (orchestral/fantasy recordings),
    # marsshooter-data (electronic/rock), openttd-openmsx (GM MIDI: the synthetic-render domain).
    Package("flare-game", AUDIO, VALIDATION),
    Package("marsshooter-data", AUDIO, VALIDATION),
    Package("openttd-openmsx", MIDI, VALIDATION),
    # Recorded music unlike the game packages: ufoai-music selects models, nexuiz-music only reports.
    Package("ufoai-music", AUDIO, VALIDATION_REAL),
    Package("nexuiz-music", AUDIO, VALIDATION_REAL),
)
BY_NAME: dict[str, Package] = {p.name: p for p in PACKAGES}

# Every package the corpus may hold (all splits). The name is historical: it is the allow-list.
TRAIN_PACKAGES: tuple[str, ...] = tuple(p.name for p in PACKAGES)
AUDIO_PACKAGES: tuple[str, ...] = tuple(p.name for p in PACKAGES if p.kind == AUDIO)
MIDI_PACKAGES: tuple[str, ...] = tuple(p.name for p in PACKAGES if p.kind == MIDI)
VALIDATION_PACKAGES: tuple[str, ...] = tuple(p.name for p in PACKAGES if p.split == VALIDATION)
VALIDATION_REAL_PACKAGES: tuple[str, ...] = tuple(p.name for p in PACKAGES if p.split == VALIDATION_REAL)
# Figures for reporting only: never used to choose a model, a checkpoint or a hyper-parameter.
REPORTING_ONLY_PACKAGES: tuple[str, ...] = ("nexuiz-music",)
# Real recorded music that calibrates the predicted-score intervals (data.calibration_set): fitted on
# ufoai-music, checked on nexuiz-music. They are the validation-real packages: never trained on.
CALIBRATION_PACKAGES: tuple[str, ...] = ("ufoai-music", "nexuiz-music")
# GM soundfonts (Debian packages) that render MIDI and scores; file name -> package.
SOUNDFONTS: dict[str, str] = {
    "/usr/share/sounds/sf2/FluidR3_GM.sf2": "fluid-soundfont-gm",
    "/usr/share/sounds/sf2/TimGM6mb.sf2": "timgm6mb-soundfont",
    "/usr/share/sounds/sf3/MuseScore_General_Full.sf3": "musescore-general-soundfont",
}

# Reserved for the final evaluation: never fetched, read, trained or tuned on. Glob patterns.
RESERVED_PATTERNS: tuple[str, ...] = (
    "widelands-data*",
    "openclonk-data*",
    "fretsonfire-songs-*",
    "hyperrogue-music*",
    "0ad-data*",
)


class DatasetError(HaaqiError):
    """The corpus, manifest or a dataset option is unusable; the message names the file/option."""


class ReservedPackageError(DatasetError):
    """A reserved evaluation package (or a package not on the corpus list) was requested."""


def is_reserved(name: str) -> bool:
    """True when ``name`` (a package name or a path component) matches a reserved pattern."""
    lowered = name.lower()
    return any(fnmatch.fnmatch(lowered, pattern) for pattern in RESERVED_PATTERNS)


def guard_package(name: str) -> str:
    """Return ``name`` if it is an allowed corpus package, else raise ReservedPackageError."""
    if is_reserved(name):
        raise ReservedPackageError(f"package {name!r} is reserved for evaluation and must not be used for training")
    if name not in BY_NAME:
        raise ReservedPackageError(f"package {name!r} is not on the corpus list (haaqicli.data.packages)")
    return name


def guard_path(relative: str) -> None:
    """Refuse any corpus path that has a reserved package name in one of its components."""
    for part in relative.replace("\\", "/").split("/"):
        if part and is_reserved(part):
            raise ReservedPackageError(f"path {relative!r} lies in reserved package {part!r}")


def split_of(package: str, validation: tuple[str, ...] = VALIDATION_PACKAGES) -> str:
    """'train', 'validation' (held-out game music) or 'validation-real' (held-out recorded music)."""
    guard_package(package)
    if package in validation:
        return VALIDATION
    return VALIDATION_REAL if package in VALIDATION_REAL_PACKAGES else TRAIN


def package(name: str) -> Package:
    """The registry entry of an allowed package (reserved and unknown names raise)."""
    return BY_NAME[guard_package(name)]
