"""The calibration set of the predicted-score intervals: real recorded music the models never saw,
degraded by the project's own sampler, labelled with the exact HAAQI and scored by the shipped models.

Layout (under ``data/calibration/``, git-ignored)::

    debs/<pkg>_*.deb           the Debian packages as downloaded (apt-get download)
    corpus/<pkg>/...           their audio files (.ogg), also those inside Quake-style .pk3 zips
    <pkg>.parquet              one row per (clip, variant, profile): label and each model's prediction

Every clip gets ``variants`` versions: the clean clip, then recipes drawn by
:func:`haaqicli.data.degrade.sample_recipe`; every version is labelled and predicted for every
profile of ``CALIBRATION_PROFILES`` (the fixed validation-real profiles of issue 14). Predictions go
through the scorer ``haaqi score`` uses (24 kHz windows, the file's RMS presented at 65 dB SPL,
encoder once per window), labels follow the label convention (``data.labels.label_arguments``).
Everything is seeded; a rerun skips the clips already in the table.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from haaqicli.audio import presentation_gain, resample
from haaqicli.audiogram import BUILTIN_PROFILES, severity_of
from haaqicli.data import degrade
from haaqicli.data.corpus import BuildConfig, Track, cut_clips, read_segment
from haaqicli.data.labels import label_arguments
from haaqicli.data.packages import CALIBRATION_PACKAGES, DatasetError, is_reserved
from haaqicli.models.registry import load_model
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import CLIP_SECONDS, MODEL_SAMPLE_RATE

# The validation-real profiles of issue 14: normal hearing and Bisgaard N1-N4, S1-S2.
CALIBRATION_PROFILES: tuple[str, ...] = ("normal", "N1", "N2", "N3", "N4", "S1", "S2")
AUDIO_EXTENSIONS = (".ogg", ".oga", ".flac", ".wav", ".mp3", ".opus")


@dataclass(frozen=True)
class SetConfig:
    clips: int = 30  # clips per package
    variants: int = 4  # versions per clip: the clean one, then sampled recipes
    clips_per_track: int = 3
    seed: int = 2026
    workers: int = 2
    clip_seconds: float = CLIP_SECONDS


def _seed(*parts: Any) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**31 - 1)


def fetch_package(package: str, root: Path) -> Path:
    """Download (``apt-get download``) and unpack one calibration package's audio into
    ``root/corpus/<package>``; idempotent (a ``.done`` marker)."""
    if package not in CALIBRATION_PACKAGES or is_reserved(package):
        raise DatasetError(f"{package!r} is not a calibration package ({', '.join(CALIBRATION_PACKAGES)})")
    dest = root / "corpus" / package
    if (dest / ".done").is_file():
        return dest
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        if shutil.which("apt-get") is None:
            raise DatasetError(f"{package}: apt-get is needed to download it")
        subprocess.run(["apt-get", "download", "-qq", package], cwd=debs, check=True)
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    unpacked = root / "unpacked" / package
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir(parents=True)
    subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for path in sorted(unpacked.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file() and not path.is_symlink():
            target = dest / path.relative_to(unpacked)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        elif path.suffix.lower() == ".pk3":  # game archives are zips (ufoai, nexuiz keep music there)
            with zipfile.ZipFile(path) as archive:
                for name in sorted(archive.namelist()):
                    if Path(name).suffix.lower() in AUDIO_EXTENSIONS and not name.endswith("/"):
                        target = dest / path.name / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(name))
    shutil.rmtree(unpacked, ignore_errors=True)
    (dest / ".done").write_text(deb.name + "\n")
    return dest


def scan_tracks(corpus: Path, package: str, min_seconds: float = 20.0) -> list[Track]:
    """Decodable tracks of one package folder, sorted (sources relative to ``corpus``)."""
    tracks = []
    for path in sorted((corpus / package).rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        try:
            info = sf.info(str(path))
        except Exception:  # libsndfile raises several types for bad files; a bad track is skipped
            continue
        if info.samplerate > 0 and info.frames / info.samplerate >= min_seconds:
            tracks.append(Track(package, path.relative_to(corpus).as_posix(), int(info.samplerate),
                                int(info.frames), int(info.channels)))
    return tracks


def plan_clips(corpus: Path, package: str, config: SetConfig) -> list[tuple[Track, float]]:
    """``config.clips`` seeded (track, offset) pairs, spread over the package's tracks."""
    tracks = scan_tracks(corpus, package)
    if not tracks:
        raise DatasetError(f"{corpus / package}: no music tracks found")
    cut = BuildConfig(clips_per_track=config.clips_per_track, seed=config.seed, clip_seconds=config.clip_seconds)
    by_track = [[(track, offset) for offset, _ in cut_clips(corpus, track, cut)] for track in tracks]
    clips: list[tuple[Track, float]] = []
    while len(clips) < config.clips and any(by_track):  # round-robin: every track before a second clip
        for queue in by_track:
            if queue and len(clips) < config.clips:
                clips.append(queue.pop(0))
    return clips


def clip_recipes(clip_id: str, config: SetConfig, sample_rate: int) -> list[degrade.Recipe]:
    """The clean version, then ``variants - 1`` recipes drawn by the training sampler (seeded)."""
    # NAL-R is fitted to one listener; a version here is heard by every profile, so it is not drawn.
    weights = {kind: weight for kind, weight in degrade.RECIPE_WEIGHTS.items() if kind != "nalr"}
    recipes: list[degrade.Recipe] = [{"type": "identity"}]
    for variant in range(1, config.variants):
        rng = np.random.default_rng(_seed(config.seed, "calibration", clip_id, variant))
        recipes.append(degrade.sample_recipe(rng, weights, sample_rate=sample_rate))
    return recipes


def clip_id_of(track: Track, offset: float) -> str:
    return hashlib.sha1(f"{track.source}@{offset:.6f}".encode()).hexdigest()[:12]


def _clip_rows(corpus: Path, track: Track, offset: float, config: SetConfig) -> tuple[list[dict], list[dict], list]:
    """Rows (without label/predictions), their compute_haaqi arguments and each version's model input."""
    reference, sr = read_segment(corpus, track.source, offset, config.clip_seconds, track.sample_rate)
    clip_id = clip_id_of(track, offset)
    rows, arguments, inputs = [], [], []
    for variant, recipe in enumerate(clip_recipes(clip_id, config, sr)):
        processed = degrade.apply_recipe(reference, sr, recipe, None)
        # What `haaqi score` hears for this file: its own RMS presented at 65 dB SPL, at 24 kHz.
        rms = float(np.sqrt(np.mean(np.square(processed, dtype=np.float64))))
        window = resample(processed.astype(np.float32), sr, MODEL_SAMPLE_RATE) * np.float32(presentation_gain(rms))
        inputs.append(np.asarray(window, dtype=np.float32))
        for name in CALIBRATION_PROFILES:
            audiogram = BUILTIN_PROFILES[name].left
            rows.append({"item_id": f"{clip_id}-{variant}-{name}", "clip_id": clip_id, "package": track.package,
                         "source": track.source, "offset_s": float(offset), "sample_rate": int(sr),
                         "variant": variant, "recipe": degrade.recipe_to_json(recipe),
                         "degradation": degrade.recipe_kind(recipe), "profile": name,
                         "audiogram": list(audiogram.levels), "pta": audiogram.pta(),
                         "severity": severity_of(audiogram.pta())})
            arguments.append(label_arguments(reference.astype(np.float32), processed.astype(np.float32), sr,
                                             audiogram.levels))
    return rows, arguments, inputs


def _predict(models: dict[str, Any], inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each model's score of every (version, profile): the scorer's encoder-once path."""
    grams = np.stack([BUILTIN_PROFILES[name].left.as_array() for name in CALIBRATION_PROFILES])
    windows = np.stack(inputs)
    out = {}
    for name, scorer in models.items():
        clip, _ = scorer(windows, grams)  # (profiles, versions)
        out[name] = clip.T.reshape(-1)  # row order: version-major, profile-minor
    return out


def _repredict_stale(done: pd.DataFrame, corpus: Path, clips: Sequence[tuple[Track, float]],
                     scorers: dict[str, tuple[Any, str]], config: SetConfig, out: Path) -> pd.DataFrame:
    """Predictions of finished clips made by other weights (or by no model yet) are made again with the
    current ones; the exact labels, the costly part, are kept. New weights need new intervals, never
    new labels."""
    stale = [name for name, (_, sha) in scorers.items()
             if f"sha256_{name}" not in done or bool((done[f"sha256_{name}"] != sha).any())]
    if not stale:
        return done
    done = done.set_index("item_id", drop=False)
    finished = set(done["clip_id"])
    for track, offset in clips:
        if clip_id_of(track, offset) not in finished:
            continue
        rows, _, inputs = _clip_rows(corpus, track, offset, config)
        predictions = _predict({name: scorers[name][0] for name in stale}, inputs)
        ids = [row["item_id"] for row in rows]
        for name in stale:
            done.loc[ids, f"pred_{name}"] = predictions[name].astype(float)
            done.loc[ids, f"sha256_{name}"] = scorers[name][1]
    done = done.reset_index(drop=True)
    atomic_write(out, lambda tmp: done.to_parquet(tmp, index=False))
    return done


def build_package_set(corpus: Path, package: str, out: Path, model_names: Sequence[str], config: SetConfig,
                      on_clip: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Label and predict every planned clip of one package into ``out`` (Parquet), clip by clip;
    clips already in ``out`` are kept, so an interrupted build continues where it stopped."""
    # lazy: torch, numba, scipy only where this path runs (start-up time)
    from haaqicli.reference import compute_haaqi_batch
    from haaqicli.scoring.network import WindowScorer

    scorers = {}
    for name in model_names:
        model, info = load_model(name, device="cpu")
        scorers[name] = (WindowScorer(model, next(model.parameters()).device, 16), info.sha256)
    done = pd.read_parquet(out) if out.is_file() else pd.DataFrame()
    clips = plan_clips(corpus, package, config)
    if len(done):
        done = _repredict_stale(done, corpus, clips, scorers, config, out)
    frames = [done] if len(done) else []
    finished = set(done["clip_id"]) if len(done) else set()
    for index, (track, offset) in enumerate(clips):
        if clip_id_of(track, offset) in finished:
            continue
        rows, arguments, inputs = _clip_rows(corpus, track, offset, config)
        labels = compute_haaqi_batch(arguments, workers=config.workers)
        predictions = _predict({name: scorer for name, (scorer, _) in scorers.items()}, inputs)
        frame = pd.DataFrame(rows).assign(label=np.asarray(labels, dtype=float))
        for name, (_, sha) in scorers.items():
            frame[f"pred_{name}"] = predictions[name].astype(float)
            frame[f"sha256_{name}"] = sha
        frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        atomic_write(out, lambda tmp, table=table: table.to_parquet(tmp, index=False))
        if on_clip is not None:
            on_clip(index + 1, len(clips))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


