"""Corpus scanning, clip cutting and the item manifest.

Layout (all under ``data/``, git-ignored)::

    data/corpus/packages/<pkg>/...   audio files extracted from Debian packages (install-corpus.sh)
    data/corpus/rendered/<pkg>/...   MIDI, modules, raw PCM and music21 scores rendered to FLAC
                                     (haaqicli.data.install; `make corpus`)
    data/manifest.parquet            one row per (clip, augmentation, degradation, audiogram, level) item

An item is fully described by its manifest row: source file (+ sha256), offset, duration, content
augmentation JSON (see data.augment), degradation recipe JSON, audiogram and presentation level
(``spl``, dB SPL of the reference). :func:`materialise` regenerates (reference, processed, sr) from it
bit-exactly, so no processed audio is ever stored. The item id is a hash of all of it, the source
audio's sha256 included, so a label attaches to exactly the audio it was computed on.

Training items draw their audiogram, recipe, augmentation and level at random. Validation items
(every split but ``train``) follow a fixed design instead, so evaluation can compare like with like:
every clip x every profile of VALIDATION_PROFILES x the clip's variants (variant 0 is the clean clip),
no content augmentation (they are the music as released).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.data import audiograms as ag
from haaqicli.data import augment as aug
from haaqicli.data import degrade
from haaqicli.data.packages import (
    AUDIO,
    TRAIN_PACKAGES,
    DatasetError,
    guard_package,
    guard_path,
    is_reserved,
    package,
    split_of,
)
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import CLIP_SECONDS
from haaqicli.util.errors import AudioError
from haaqicli.util.hashing import content_hash as sha256_file  # one streamed sha256 for the project

log = logging.getLogger(__name__)

# Formats libsndfile decodes (1.1+ has mp3). Tracker modules and MIDI are not read directly.
SCAN_EXTENSIONS = frozenset({".ogg", ".oga", ".wav", ".flac", ".mp3", ".opus"})
# Game packages hold many short sound effects; music tracks are longer than this.
MIN_TRACK_SECONDS = 20.0

# The columns of a manifest file (what regenerates an item, and what groups it in statistics).
MANIFEST_COLUMNS: list[str] = [
    "item_id", "clip_id", "package", "split", "source", "source_sha256", "source_seconds", "offset_s",
    "duration_s", "sample_rate", "clip_rms_db", "augment", "augmentation", "recipe", "degradation",
    "audiogram", "ear", "audiogram_family", "profile", "severity", "spl", "seed",
]
# Filled from the label shards (data.labels), never stored in a frozen manifest.
LABEL_COLUMNS: list[str] = ["label", "label_seconds", "cep_high", "bm_sync5", "d_loud", "d_norm"]

# Presentation level of the reference (dB SPL), drawn per item; the processed keeps its relative level.
SPL_RANGE: tuple[float, float] = (50.0, 85.0)
# Validation items: every clip is heard by each of these profiles (built-ins, both ears alike).
VALIDATION_PROFILES: tuple[str, ...] = ("normal", "N1", "N2", "N3", "N4", "S1", "S2")


def default_data_dir() -> Path:
    """``$HAAQI_DATA_DIR`` or ``./data`` (the repository's git-ignored data folder)."""
    return Path(os.environ.get("HAAQI_DATA_DIR", "data"))


@dataclass(frozen=True)
class Track:
    package: str
    source: str  # path relative to the corpus root
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class BuildConfig:
    items: int = 30_000
    variants_per_clip: int = 8  # items (degradation x audiogram) per clip
    clips_per_track: int = 10
    max_package_share: float = 0.12  # cap of any package's share of the clips
    clip_seconds: float = CLIP_SECONDS
    seed: int = 2026
    min_active_fraction: float = 0.9
    min_clip_dbfs: float = -40.0
    recipe_weights: dict[str, float] | None = None
    packages: Sequence[str] | None = None  # restrict to these training packages
    skipped: list[str] = field(default_factory=list)
    validation_variants: int = 4  # per validation clip: the clean clip + this many - 1 degradations
    validation_clips_per_track: int = 4
    augment: bool = True  # content augmentation of training references
    band_items: int = 0  # training items beyond `items` whose reference is band-limited (`make_band_items`)
    coded_band_items: int = 0  # more beyond those, band-limited by a real encoder (stream "coded-band")


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)




def scan_corpus(corpus_dir: Path, packages: Sequence[str] | None = None,
                min_track_s: float = MIN_TRACK_SECONDS, skipped: list[str] | None = None) -> list[Track]:
    """All decodable music tracks of the training packages, sorted deterministically.

    A reserved package folder in the corpus is an error (it must not even be there).
    """
    corpus_dir = Path(corpus_dir)
    tracks: list[Track] = []
    wanted = set(packages) if packages else None
    for area in ("packages", "rendered"):
        base = corpus_dir / area
        if not base.is_dir():
            continue
        for pkg_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            name = pkg_dir.name
            if is_reserved(name):
                guard_package(name)  # raises with a clear message
            if name not in TRAIN_PACKAGES:
                log.warning("skipping %s: not a training package", pkg_dir)
                continue
            if wanted is not None and name not in wanted:
                continue
            if area == "packages" and package(name).kind != AUDIO:
                continue  # MIDI, modules, drum kits, loops: their music is what rendered/ holds
            for path in sorted(pkg_dir.rglob("*")):
                if path.suffix.lower() not in SCAN_EXTENSIONS or not path.is_file() or path.is_symlink():
                    continue
                if ".tmp." in path.name or path.name.startswith("."):
                    continue  # a render in progress (install-corpus.sh) or a hidden file
                rel = path.relative_to(corpus_dir).as_posix()
                guard_path(rel)
                try:
                    info = sf.info(str(path))
                except Exception as error:  # libsndfile raises several types for bad files
                    if skipped is not None:
                        skipped.append(f"{rel}: {str(error).splitlines()[0][:120]}")
                    continue
                if info.frames <= 0 or info.samplerate <= 0:
                    continue
                if info.frames / info.samplerate < min_track_s:
                    continue
                tracks.append(Track(name, rel, int(info.samplerate), int(info.frames), int(info.channels)))
    return tracks


def read_segment(corpus_dir: Path, source: str, offset_s: float, duration_s: float,
                 sample_rate: int | None = None, left_weight: float | None = None) -> tuple[np.ndarray, int]:
    """Mono float64 segment of a corpus file, exactly as the manifest names it: the mean of the
    channels, or ``left_weight * left + (1 - left_weight) * right`` of a stereo file."""
    guard_path(source)
    path = Path(corpus_dir) / source
    try:
        with sf.SoundFile(str(path)) as fh:
            sr = fh.samplerate
            if sample_rate is not None and sr != sample_rate:
                raise AudioError(f"{source}: sample rate {sr} differs from the manifest's {sample_rate}")
            start = int(round(offset_s * sr))
            frames = int(round(duration_s * sr))
            fh.seek(start)
            data = fh.read(frames, dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"{source}: cannot read ({str(error).splitlines()[0]})") from None
    if data.shape[0] < frames:
        raise AudioError(f"{source}: segment at {offset_s:.3f}s is shorter than {duration_s}s")
    if left_weight is not None and data.shape[1] == 2:
        w = float(left_weight)
        return w * data[:, 0] + (1.0 - w) * data[:, 1], sr
    return data.mean(axis=1), sr


def _frame_dbfs(x: np.ndarray, sr: int, frame_s: float = 0.05) -> np.ndarray:
    hop = max(1, int(frame_s * sr))
    n = len(x) // hop
    frames = x[: n * hop].reshape(n, hop)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)


def is_loud_enough(x: np.ndarray, sr: int, min_active_fraction: float = 0.9, min_clip_dbfs: float = -40.0) -> bool:
    """Skip near-silent or mostly-silent clips: overall RMS and the share of active 50 ms frames."""
    rms_db = 10 * np.log10(np.mean(x**2) + 1e-20)
    if rms_db < min_clip_dbfs:
        return False
    frames = _frame_dbfs(x, sr)
    active = frames > max(-55.0, rms_db - 35.0)
    return bool(np.mean(active) >= min_active_fraction)


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def cut_clips(corpus_dir: Path, track: Track, config: BuildConfig,
              clips_per_track: int | None = None) -> list[tuple[float, float]]:
    """Seeded (offset s, RMS dBFS of the mono clip) of loud-enough clips in a track, at most
    ``clips_per_track`` (default: the config's).

    The track is split into non-overlapping slots; slots are visited in a seeded order with a
    seeded jitter, so the clips differ across tracks but a rebuild gives the same offsets.
    """
    rng = np.random.default_rng(_stable_seed(config.seed, "clips", track.source))
    clip = config.clip_seconds
    wanted = clips_per_track or config.clips_per_track
    slots = int(track.duration_s // clip)
    if slots < 1:
        return []
    offsets: list[tuple[float, float]] = []
    for slot in rng.permutation(slots)[: 3 * wanted]:
        room = track.duration_s - clip * (slot + 1)
        jitter = rng.uniform(0.0, min(clip * 0.5, max(room, 0.0)))
        # Offsets on whole frames so offset_s * sr rounds back to the same frame.
        start_frame = int(round((slot * clip + jitter) * track.sample_rate))
        offset = start_frame / track.sample_rate
        try:
            x, sr = read_segment(corpus_dir, track.source, offset, clip, track.sample_rate)
        except AudioError:
            continue
        if is_loud_enough(x, sr, config.min_active_fraction, config.min_clip_dbfs):
            offsets.append((offset, round(_rms_db(x), 4)))
        if len(offsets) >= wanted:
            break
    return sorted(offsets)


@dataclass(frozen=True)
class Clip:
    track: Track
    offset_s: float
    rms_db: float  # of the mono clip as read (a cheap regeneration check)


# Renders (fluidsynth, libopenmpt, mixes) are not bit-identical across CPUs: on a second machine 24 of
# the corpus's renders hashed differently from the machine that froze labels/manifest.parquet, their
# clips 0.0000 dB apart in RMS at the median and 0.92 dB at most, and labels recomputed on them moved by
# 0.007 at most (40 items). A rendered source therefore keeps a frozen manifest's identity (its sha256,
# and with it its items' ids, seeds and labels) when its clips sit at the frozen offsets within this
# many dB of the frozen RMS; any other source, or a render further off, is new music with new items.
RENDER_RMS_TOLERANCE_DB = 1.5


def is_rendered(source: str) -> bool:
    """Whether a corpus source was rendered here (MIDI, modules, scores, mixes) rather than unpacked."""
    return source.startswith("rendered/")


@dataclass
class FrozenSources:
    """Each source of a frozen manifest: its sha256 and its clips' RMS by offset. A build fills `adopted`,
    the renders whose bits differ here but whose frozen identity was kept (largest RMS gap, dB), and
    `refused`, the renders too far off (why)."""

    sha256: dict[str, str]
    clip_rms_db: dict[str, dict[float, float]]
    adopted: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, manifest: pd.DataFrame) -> FrozenSources:
        clips = manifest.drop_duplicates(["source", "offset_s"])
        rms: dict[str, dict[float, float]] = defaultdict(dict)
        for source, offset, db in zip(clips["source"], clips["offset_s"], clips["clip_rms_db"], strict=True):
            rms[str(source)][float(offset)] = float(db)
        return cls(dict(zip(manifest["source"].astype(str), manifest["source_sha256"].astype(str), strict=True)),
                   dict(rms))

    def identity(self, source: str, local_sha: str, local_clips: Mapping[float, float]) -> str:
        """The sha256 that identifies `source` in a build: the frozen one for a render within tolerance."""
        frozen = self.sha256.get(source)
        if frozen is None or frozen == local_sha or not is_rendered(source):
            return local_sha
        gaps = [abs(local_clips[offset] - db) if offset in local_clips else math.inf
                for offset, db in self.clip_rms_db.get(source, {}).items()]
        if gaps and max(gaps) <= RENDER_RMS_TOLERANCE_DB:
            self.adopted[source] = max(gaps)
            return frozen
        self.refused[source] = ("clips elsewhere" if math.inf in gaps else
                                f"clip RMS {max(gaps):.2f} dB from the frozen" if gaps else "no frozen clips")
        return local_sha


def _cap_per_package(clips: list[Clip], max_share: float, total: int) -> list[Clip]:
    """Keep at most ``max_share * total`` clips per package, round-robin over tracks."""
    by_pkg: dict[str, dict[str, list[Clip]]] = defaultdict(lambda: defaultdict(list))
    for clip in clips:
        by_pkg[clip.track.package][clip.track.source].append(clip)
    cap = max(1, int(np.ceil(max_share * total)))
    kept: list[Clip] = []
    for pkg in sorted(by_pkg):
        per_track = [list(v) for _, v in sorted(by_pkg[pkg].items())]
        taken: list[Clip] = []
        while len(taken) < cap and any(per_track):
            for queue in per_track:
                if queue and len(taken) < cap:
                    taken.append(queue.pop(0))
        kept.extend(taken)
    return kept


def item_id_of(source_sha256: str, offset_s: float, duration_s: float, augment_json: str, recipe_json: str,
               audiogram: Sequence[float], spl: float) -> str:
    """The id of an item: a hash of everything that makes its audio and label (the source audio's
    sha256, the clip, augmentation, recipe, audiogram and level), so a label found under an id is a
    label of exactly this item, whatever manifest or corpus build it came from."""
    text = "|".join([source_sha256, f"{offset_s:.6f}", f"{duration_s:.6f}", augment_json, recipe_json,
                     ",".join(f"{float(v):.1f}" for v in audiogram), f"{spl:.1f}"])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _clip_id(sha: str, offset: float) -> str:
    return hashlib.sha1(f"{sha}@{offset:.6f}".encode()).hexdigest()[:12]


def _row(clip: Clip, sha: str, config: BuildConfig, augment: Mapping[str, Any], recipe: Mapping[str, Any],
         gram: ag.SampledAudiogram, spl: float, seed: int, profile: str = "") -> dict[str, Any]:
    track = clip.track
    augment_json = degrade.recipe_to_json(augment)
    recipe_json = degrade.recipe_to_json(recipe)
    return {
        "item_id": item_id_of(sha, clip.offset_s, config.clip_seconds, augment_json, recipe_json, gram.levels, spl),
        "clip_id": _clip_id(sha, clip.offset_s),
        "package": track.package,
        "split": split_of(track.package),
        "source": track.source,
        "source_sha256": sha,
        "source_seconds": round(float(track.duration_s), 3),
        "offset_s": float(clip.offset_s),
        "duration_s": float(config.clip_seconds),
        "sample_rate": int(track.sample_rate),
        "clip_rms_db": float(clip.rms_db),
        "augment": augment_json,
        "augmentation": aug.augmentation_kind(augment),
        "recipe": recipe_json,
        "degradation": degrade.recipe_kind(recipe),
        "audiogram": list(gram.levels),
        "ear": gram.ear,
        "audiogram_family": gram.family,
        "profile": profile,
        "severity": gram.severity,
        "spl": float(spl),
        "seed": int(seed),
    }


def _spl(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(*SPL_RANGE)), 1)


# Share of band-limited items left clean: the clean narrow release is what the models misread.
BAND_CLEAN_SHARE = 1 / 3
# Band-limited items' seed streams and what each adds as the ``band`` augmentation.
BAND_STREAMS: dict[str, Callable[[np.random.Generator], dict[str, Any]]] = {
    "band": aug.sample_band, "coded-band": aug.sample_coded_band}


def _draw_item(clip: Clip, sha: str, config: BuildConfig, seed: int, has_ffmpeg: bool | None,
               partners: Sequence[Mapping[str, Any]],
               band: Callable[[np.random.Generator], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One training item's row from its seed: recipe, audiogram, level, then the content augmentation;
    a band-limited item (`band`: one of BAND_STREAMS' samplers) is clean with BAND_CLEAN_SHARE and adds
    what `band` draws last."""
    rng = np.random.default_rng(seed)
    recipe = ({"type": "identity"} if band is not None and rng.random() < BAND_CLEAN_SHARE else
              degrade.sample_recipe(rng, config.recipe_weights, has_ffmpeg=has_ffmpeg,
                                    sample_rate=clip.track.sample_rate))
    gram = ag.sample_audiogram(rng)
    spl = _spl(rng)
    augment: dict[str, Any] = {}
    if config.augment:
        partner = partners[int(rng.integers(len(partners)))] if partners else None
        augment = aug.sample_augmentation(rng, clip.track.channels == 2, partner)
    if band is not None:
        augment["band"] = band(rng)
    return _row(clip, sha, config, augment, recipe, gram, spl, seed)


def make_items(clip: Clip, sha: str, config: BuildConfig, n_variants: int, has_ffmpeg: bool | None = None,
               partners: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Manifest rows of one training clip: each variant draws its own augmentation, recipe, audiogram
    and level from a seed of (build seed, clip, variant), so more variants keep the earlier ones.
    ``partners``: clips of the same split and rate a mix may add (the clip itself excluded)."""
    clip_id = _clip_id(sha, clip.offset_s)
    return [_draw_item(clip, sha, config, _stable_seed(config.seed, "item", clip_id, variant) & (2**31 - 1),
                       has_ffmpeg, partners) for variant in range(n_variants)]


def make_band_items(clip: Clip, sha: str, config: BuildConfig, indices: Sequence[int], has_ffmpeg: bool | None = None,
                    partners: Sequence[Mapping[str, Any]] = (), stream: str = "band") -> list[dict[str, Any]]:
    """Band-limited training items of one clip, from seeds of (build seed, `stream` (a key of
    BAND_STREAMS), clip, index): their own stream, so adding them leaves every other item as it was."""
    clip_id = _clip_id(sha, clip.offset_s)
    return [_draw_item(clip, sha, config, _stable_seed(config.seed, stream, clip_id, index) & (2**31 - 1),
                       has_ffmpeg, partners, band=BAND_STREAMS[stream]) for index in indices]


def profile_audiogram(name: str) -> ag.SampledAudiogram:
    """A built-in profile as a validation listener (left ear; the built-ins are symmetric)."""
    levels = tuple(float(v) for v in BUILTIN_PROFILES[name].left.levels)
    return ag.SampledAudiogram(levels, "normal" if name == "normal" else f"bisgaard:{name}", "left")


def make_validation_items(clip: Clip, sha: str, config: BuildConfig, has_ffmpeg: bool | None = None) -> list[dict[str, Any]]:
    """Every profile x every variant of one validation clip: variant 0 is the clean clip, the others
    draw a recipe; a variant's level is drawn once, so all profiles hear the same pair at the same level."""
    clip_id = _clip_id(sha, clip.offset_s)
    grams = [(name, profile_audiogram(name)) for name in VALIDATION_PROFILES]
    # Variant 0 is the clean clip; the others are degraded (no second clean variant).
    degraded = {k: v for k, v in (config.recipe_weights or degrade.RECIPE_WEIGHTS).items() if k != "identity"}
    rows = []
    for variant in range(config.validation_variants):
        seed = _stable_seed(config.seed, "validation", clip_id, variant) & (2**31 - 1)
        rng = np.random.default_rng(seed)
        recipe = ({"type": "identity"} if variant == 0 else
                  degrade.sample_recipe(rng, degraded, has_ffmpeg=has_ffmpeg, sample_rate=clip.track.sample_rate))
        spl = _spl(rng)
        rows.extend(_row(clip, sha, config, {}, recipe, gram, spl, seed, profile=name) for name, gram in grams)
    return rows


def build_manifest(corpus_dir: Path, config: BuildConfig, progress: bool = False,
                   frozen: FrozenSources | None = None) -> pd.DataFrame:
    """Scan, cut clips, draw items: the validation splits' fixed design first, then training items
    up to ``config.items`` in all. Deterministic for a given corpus and config. With ``frozen`` (the
    sources of a frozen manifest), a render whose bits differ from the frozen one's but whose clips
    agree within RENDER_RMS_TOLERANCE_DB keeps its frozen identity, so its items are the frozen ones."""
    tracks = scan_corpus(corpus_dir, config.packages, skipped=config.skipped)
    if not tracks:
        raise DatasetError(f"{corpus_dir}: no training music found (run `make corpus` first)")
    train_clips: list[Clip] = []
    validation_clips: list[Clip] = []
    iterator: Any = tracks
    if progress:
        # lazy: rich only where this path runs (start-up time)
        from rich.progress import track as rich_track

        iterator = rich_track(tracks, description="cutting clips")
    for tr in iterator:
        if split_of(tr.package) == "train":
            train_clips.extend(Clip(tr, off, db) for off, db in cut_clips(corpus_dir, tr, config))
        else:
            validation_clips.extend(Clip(tr, off, db) for off, db in
                                    cut_clips(corpus_dir, tr, config, config.validation_clips_per_track))
    hashes: dict[str, str] = {}
    clip_rms: dict[str, dict[float, float]] = defaultdict(dict)  # what a frozen identity is checked against
    for clip in (*train_clips, *validation_clips) if frozen is not None else ():
        clip_rms[clip.track.source][clip.offset_s] = clip.rms_db

    def sha(clip: Clip) -> str:
        source = clip.track.source
        if source not in hashes:
            hashes[source] = sha256_file(Path(corpus_dir) / source)
            if frozen is not None:
                hashes[source] = frozen.identity(source, hashes[source], clip_rms[source])
        return hashes[source]

    rows: list[dict[str, Any]] = []
    for clip in validation_clips:
        rows.extend(make_validation_items(clip, sha(clip), config))
    n_train = max(0, config.items - len(rows))
    n_clips = int(np.ceil(n_train / config.variants_per_clip))
    train_clips = _cap_per_package(train_clips, config.max_package_share, n_clips)
    rng = np.random.default_rng(_stable_seed(config.seed, "select"))
    if len(train_clips) > n_clips:
        keep = np.sort(rng.choice(len(train_clips), size=n_clips, replace=False))
        train_clips = [train_clips[i] for i in keep]
    # More variants per clip when the corpus has fewer clips than asked for.
    variants = max(config.variants_per_clip, int(np.ceil(n_train / max(len(train_clips), 1))))
    by_rate: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for clip in train_clips:
        by_rate[clip.track.sample_rate].append({"source": clip.track.source, "source_sha256": sha(clip),
                                                "offset_s": clip.offset_s})
    train_rows: list[dict[str, Any]] = []
    for clip in train_clips if n_train else []:
        partners = [p for p in by_rate[clip.track.sample_rate] if p["source"] != clip.track.source]
        train_rows.extend(make_items(clip, sha(clip), config, variants, partners=partners))
    if len(train_rows) > n_train:
        train_rows = [train_rows[i] for i in np.sort(rng.choice(len(train_rows), size=n_train, replace=False))]
    for stream, n_items in (("band", config.band_items), ("coded-band", config.coded_band_items)):
        if not (n_items and train_clips):
            continue
        # Own streams: the band-limited items come on top, every other item stays as it was.
        picks = np.random.default_rng(_stable_seed(config.seed, f"{stream}-select")).choice(
            len(train_clips), size=n_items, replace=len(train_clips) < n_items)
        for i, count in zip(*np.unique(picks, return_counts=True), strict=True):
            clip = train_clips[int(i)]
            partners = [p for p in by_rate[clip.track.sample_rate] if p["source"] != clip.track.source]
            train_rows.extend(make_band_items(clip, sha(clip), config, range(int(count)), partners=partners,
                                              stream=stream))
    df = pd.DataFrame(rows + train_rows, columns=MANIFEST_COLUMNS)
    return df.drop_duplicates("item_id").reset_index(drop=True)


# ------------------------------------------------------------------------------------------
# manifest I/O and regeneration


def write_manifest(df: pd.DataFrame, path: Path, compact: bool = False) -> None:
    """Atomic Parquet write (tmp + os.replace), so a crash never leaves half a manifest. ``compact``:
    the items only (no label columns), zstd-compressed, as a frozen manifest is committed."""
    if compact:
        df = df[[c for c in MANIFEST_COLUMNS if c in df.columns]]
        atomic_write(Path(path), lambda tmp: df.to_parquet(tmp, index=False, compression="zstd",
                                                           compression_level=19))
        return
    atomic_write(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest's items, with empty label columns where the file has none (labels live in shards)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found (run `haaqi dataset build`)")
    try:
        df = pd.read_parquet(path)
    except Exception as error:
        raise DatasetError(f"{path}: unreadable manifest ({str(error).splitlines()[0]})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: manifest lacks columns {missing} (built by an older version: rebuild it "
                           "with `make dataset`)")
    for column in LABEL_COLUMNS:
        if column not in df.columns:
            df[column] = np.nan
    for pkg in df["package"].unique():
        guard_package(str(pkg))
    return df


def json_field(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return json.loads(value) if value else {}
    return dict(value or {})


def read_reference(item: Mapping[str, Any], corpus_dir: Path) -> tuple[np.ndarray, int]:
    """The item's clean reference: the clip folded to mono, then its content augmentation."""
    augment = json_field(item.get("augment", ""))
    sr_expected = int(item["sample_rate"])
    clip, sr = read_segment(corpus_dir, str(item["source"]), float(item["offset_s"]), float(item["duration_s"]),
                            sr_expected, left_weight=augment.get("downmix"))

    def partner(mix: Mapping[str, Any]) -> np.ndarray:
        guard_path(str(mix["source"]))
        return read_segment(corpus_dir, str(mix["source"]), float(mix["offset_s"]), float(item["duration_s"]),
                            sr_expected)[0]

    return aug.apply_augmentation(clip, sr, augment, partner), sr


def materialise(item: Mapping[str, Any], corpus_dir: Path, verify_sha: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Regenerate (reference, processed, sr) of a manifest row, bit-exactly, as float32 arrays.

    The reference is the augmented mono clip at the source level and rate; processed is the degraded
    reference. Levels are digital: the item's ``spl`` says how loud the reference is presented.
    """
    guard_package(str(item["package"]))
    if verify_sha:
        sources = [(str(item["source"]), str(item["source_sha256"]))]
        mix = json_field(item.get("augment", "")).get("mix")
        if mix:
            sources.append((str(mix["source"]), str(mix["source_sha256"])))
        for source, expected in sources:
            guard_path(source)
            if sha256_file(Path(corpus_dir) / source) != expected:
                raise DatasetError(f"{source}: sha256 differs from the manifest (corpus changed)")
    ref, sr = read_reference(item, corpus_dir)
    recipe = item["recipe"]
    if isinstance(recipe, str):
        recipe = json.loads(recipe)
    processed = degrade.apply_recipe(ref, sr, recipe, np.asarray(item["audiogram"], dtype=float))
    return ref.astype(np.float32), processed.astype(np.float32), sr


def iter_items(manifest: pd.DataFrame, split: str | None = None, labelled_only: bool = False) -> Iterator[dict[str, Any]]:
    """Manifest rows as dicts, optionally one split and/or labelled items only."""
    df = manifest
    if split is not None:
        df = df[df["split"] == split]
    if labelled_only:
        df = df[np.isfinite(df["label"].to_numpy(dtype=float))]
    yield from df.to_dict(orient="records")
