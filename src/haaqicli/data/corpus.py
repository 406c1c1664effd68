"""Corpus scanning, clip cutting and the item manifest.

Layout (all under ``data/``, git-ignored)::

    data/corpus/packages/<pkg>/...   audio files extracted from Debian packages (install-corpus.sh)
    data/corpus/rendered/<pkg>/...   MIDI packages rendered to FLAC with fluidsynth
    data/manifest.parquet            one row per (clip, degradation, audiogram) item

An item is fully described by its manifest row: source file (+ sha256), offset, duration,
recipe JSON and audiogram. :func:`materialise` regenerates (reference, processed, sr) from it
bit-exactly, so no processed audio is ever stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from haaqicli.atomic import atomic_write
from haaqicli.constants import CLIP_SECONDS
from haaqicli.data import audiograms as ag
from haaqicli.data import degrade
from haaqicli.data.packages import (
    TRAIN_PACKAGES,
    DatasetError,
    guard_package,
    guard_path,
    is_reserved,
    split_of,
)
from haaqicli.errors import AudioError
from haaqicli.tables import content_hash as sha256_file  # one streamed sha256 for the project

log = logging.getLogger(__name__)

# Formats libsndfile decodes (1.1+ has mp3). Tracker modules and MIDI are not read directly.
SCAN_EXTENSIONS = frozenset({".ogg", ".oga", ".wav", ".flac", ".mp3", ".opus"})
# Game packages hold many short sound effects; music tracks are longer than this.
MIN_TRACK_SECONDS = 20.0

MANIFEST_COLUMNS: list[str] = [
    "item_id", "clip_id", "package", "split", "source", "source_sha256", "offset_s", "duration_s",
    "sample_rate", "recipe", "degradation", "audiogram", "ear", "audiogram_family", "severity",
    "seed", "label", "label_seconds",
]


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
                 sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float64 segment of a corpus file (mean of channels), exactly as the manifest names it."""
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


def cut_clips(corpus_dir: Path, track: Track, config: BuildConfig) -> list[float]:
    """Seeded offsets (s) of loud-enough clips in a track, at most ``clips_per_track``.

    The track is split into non-overlapping slots; slots are visited in a seeded order with a
    seeded jitter, so the clips differ across tracks but a rebuild gives the same offsets.
    """
    rng = np.random.default_rng(_stable_seed(config.seed, "clips", track.source))
    clip = config.clip_seconds
    slots = int(track.duration_s // clip)
    if slots < 1:
        return []
    offsets: list[float] = []
    for slot in rng.permutation(slots)[: 3 * config.clips_per_track]:
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
            offsets.append(offset)
        if len(offsets) >= config.clips_per_track:
            break
    return sorted(offsets)


def _cap_per_package(clips: list[tuple[Track, float]], max_share: float, total: int) -> list[tuple[Track, float]]:
    """Keep at most ``max_share * total`` clips per package, round-robin over tracks."""
    by_pkg: dict[str, dict[str, list[tuple[Track, float]]]] = defaultdict(lambda: defaultdict(list))
    for track, offset in clips:
        by_pkg[track.package][track.source].append((track, offset))
    cap = max(1, int(np.ceil(max_share * total)))
    kept: list[tuple[Track, float]] = []
    for pkg in sorted(by_pkg):
        per_track = [list(v) for _, v in sorted(by_pkg[pkg].items())]
        taken: list[tuple[Track, float]] = []
        while len(taken) < cap and any(per_track):
            for queue in per_track:
                if queue and len(taken) < cap:
                    taken.append(queue.pop(0))
        kept.extend(taken)
    return kept


def make_items(track: Track, offset: float, sha: str, config: BuildConfig, n_variants: int,
               has_ffmpeg: bool | None = None) -> list[dict[str, Any]]:
    """Manifest rows for one clip: each variant draws its own recipe and audiogram."""
    clip_id = hashlib.sha1(f"{track.source}@{offset:.6f}".encode()).hexdigest()[:12]
    rows = []
    for variant in range(n_variants):
        seed = _stable_seed(config.seed, "item", clip_id, variant) & (2**31 - 1)
        rng = np.random.default_rng(seed)
        recipe = degrade.sample_recipe(rng, config.recipe_weights, has_ffmpeg=has_ffmpeg)
        gram = ag.sample_audiogram(rng)
        recipe_json = degrade.recipe_to_json(recipe)
        # The id fingerprints recipe + audiogram, so label shards stay valid across rebuilds
        # (same id <=> same clip, degradation and listener) even if weights or the corpus change.
        fingerprint = hashlib.sha1(f"{recipe_json}|{gram.levels}".encode()).hexdigest()[:6]
        rows.append({
            "item_id": f"{clip_id}-{variant:02d}-{fingerprint}",
            "clip_id": clip_id,
            "package": track.package,
            "split": split_of(track.package),
            "source": track.source,
            "source_sha256": sha,
            "offset_s": float(offset),
            "duration_s": float(config.clip_seconds),
            "sample_rate": int(track.sample_rate),
            "recipe": recipe_json,
            "degradation": degrade.recipe_kind(recipe),
            "audiogram": list(gram.levels),
            "ear": gram.ear,
            "audiogram_family": gram.family,
            "severity": gram.severity,
            "seed": int(seed),
            "label": float("nan"),
            "label_seconds": float("nan"),
        })
    return rows


def build_manifest(corpus_dir: Path, config: BuildConfig, progress: bool = False) -> pd.DataFrame:
    """Scan, cut clips, cap per package, draw items. Deterministic for a given corpus and config."""
    tracks = scan_corpus(corpus_dir, config.packages, skipped=config.skipped)
    if not tracks:
        raise DatasetError(f"{corpus_dir}: no training music found (run `make corpus` first)")
    n_clips = int(np.ceil(config.items / config.variants_per_clip))
    clips: list[tuple[Track, float]] = []
    iterator: Any = tracks
    if progress:
        from rich.progress import track as rich_track

        iterator = rich_track(tracks, description="cutting clips")
    for tr in iterator:
        clips.extend((tr, off) for off in cut_clips(corpus_dir, tr, config))
    clips = _cap_per_package(clips, config.max_package_share, n_clips)
    rng = np.random.default_rng(_stable_seed(config.seed, "select"))
    if len(clips) > n_clips:
        keep = np.sort(rng.choice(len(clips), size=n_clips, replace=False))
        clips = [clips[i] for i in keep]
    # More variants per clip when the corpus has fewer clips than asked for.
    variants = max(config.variants_per_clip, int(np.ceil(config.items / max(len(clips), 1))))
    hashes: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for tr, off in clips:
        if tr.source not in hashes:
            hashes[tr.source] = sha256_file(Path(corpus_dir) / tr.source)
        rows.extend(make_items(tr, off, hashes[tr.source], config, variants))
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(df) > config.items:
        df = df.iloc[np.sort(rng.choice(len(df), size=config.items, replace=False))]
    return df.reset_index(drop=True)


# ------------------------------------------------------------------------------------------
# manifest I/O and regeneration


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Atomic Parquet write (tmp + os.replace), so a crash never leaves half a manifest."""
    atomic_write(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def read_manifest(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found (run `haaqi dataset build`)")
    try:
        df = pd.read_parquet(path)
    except Exception as error:
        raise DatasetError(f"{path}: unreadable manifest ({str(error).splitlines()[0]})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: manifest lacks columns {missing}")
    for pkg in df["package"].unique():
        guard_package(str(pkg))
    return df


def materialise(item: Mapping[str, Any], corpus_dir: Path, verify_sha: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Regenerate (reference, processed, sr) of a manifest row, bit-exactly, as float32 arrays.

    The reference is the mono clip at the source level and rate; processed is the degraded clip.
    """
    guard_package(str(item["package"]))
    if verify_sha:
        actual = sha256_file(Path(corpus_dir) / str(item["source"]))
        if actual != item["source_sha256"]:
            raise DatasetError(f"{item['source']}: sha256 differs from the manifest (corpus changed)")
    ref, sr = read_segment(corpus_dir, str(item["source"]), float(item["offset_s"]), float(item["duration_s"]),
                           int(item["sample_rate"]))
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
