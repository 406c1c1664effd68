"""Training arrays from a labelled manifest (cached per item as .npy under data/cache/items/).

Waves are the processed clips, mono float32 at ``sample_rate``, scaled by the level convention
(processed * REFERENCE_RMS / rms(reference)), so the model hears level changes the degradation
made exactly as the label did (reference at 65 dB SPL). Resampling is the same torchaudio filter
`haaqi score` uses, so training and inference inputs match.

The labeller writes each item's model input while it has the audio at hand (`save_item_input`),
so building the training arrays later costs no second regeneration (codecs are slow).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from haaqicli.atomic import atomic_write
from haaqicli.constants import MODEL_SAMPLE_RATE, REFERENCE_RMS
from haaqicli.data.corpus import default_data_dir, materialise
from haaqicli.data.packages import DatasetError


def model_input(reference: np.ndarray, processed: np.ndarray, sr: int, sample_rate: int = MODEL_SAMPLE_RATE,
                length: int | None = None) -> np.ndarray:
    """Processed clip at the model rate and level convention, padded/trimmed to ``length``."""
    rms = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    x = processed.astype(np.float64) * (REFERENCE_RMS / max(rms, 1e-12))
    if sr != sample_rate:
        from haaqicli.audio import resample

        x = resample(x, int(sr), int(sample_rate))
    if length is not None:
        out = np.zeros(length)
        out[: min(length, len(x))] = x[:length]
        x = out
    return x.astype(np.float32)


def item_cache_path(cache_dir: str | Path, item_id: str, sample_rate: int = MODEL_SAMPLE_RATE) -> Path:
    return Path(cache_dir) / "items" / str(sample_rate) / f"{item_id}.npy"


def save_item_input(cache_dir: str | Path, item_id: str, reference: np.ndarray, processed: np.ndarray, sr: int,
                    sample_rate: int = MODEL_SAMPLE_RATE) -> Path:
    """Write one item's model input atomically (safe with several labelling processes)."""
    data = model_input(reference, processed, sr, sample_rate)
    return atomic_write(item_cache_path(cache_dir, item_id, sample_rate), lambda tmp: np.save(tmp, data),
                        keep_suffix=True)


def _ensure_cached(row: dict, corpus: Path, cache: Path, sample_rate: int) -> None:
    if not item_cache_path(cache, row["item_id"], sample_rate).is_file():
        ref, proc, sr = materialise(row, corpus)
        save_item_input(cache, row["item_id"], ref, proc, sr, sample_rate)


def _split_waves(rows: list[dict], cache: Path, sample_rate: int, length: int, split: str) -> np.ndarray:
    """All item inputs of a split as one read-only memory-mapped (N, length) float32 array.

    A split of 30,000 clips is ~17 GB: as a memory map the page cache holds it and the kernel can
    evict it, where an in-memory copy would leave no room for training on a 24 GB machine. The file is
    keyed by the items and rate, so training, distillation and evaluation on the same labels share it;
    older files of the same split (fewer labels) are removed when a new one is written.
    """
    key = hashlib.sha256("|".join([str(sample_rate), str(length), *(r["item_id"] for r in rows)]).encode())
    folder = cache / "splits"
    path = folder / f"{split}-{sample_rate}-{key.hexdigest()[:16]}.npy"
    if not path.is_file():
        def write(tmp: Path) -> None:
            waves = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows), length))
            for i, row in enumerate(rows):
                x = np.load(item_cache_path(cache, row["item_id"], sample_rate))
                waves[i, : min(length, len(x))] = x[:length]
            waves.flush()
            del waves

        atomic_write(path, write, keep_suffix=True)
        for stale in folder.glob(f"{split}-{sample_rate}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def load_split_arrays(
    manifest_path: str | Path,
    split: str,
    sample_rate: int = MODEL_SAMPLE_RATE,
    corpus_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """(waves (N, T) float32, audiograms (N, 8) float32, labels (N,) float32, meta) for a split.

    Only labelled items are used. Each item's input comes from the per-item cache, regenerated
    (in `workers` processes) where the labeller did not write it. `waves` is a read-only memory map
    of one .npy file per split and item set (see `_split_waves`).
    """
    data_dir = default_data_dir()
    corpus = Path(corpus_dir) if corpus_dir is not None else data_dir / "corpus"
    cache = Path(cache_dir) if cache_dir is not None else data_dir / "cache"
    from haaqicli.data.labels import labelled_manifest

    manifest = labelled_manifest(Path(manifest_path))  # labels of a run still going count too
    meta = manifest[(manifest["split"] == split) & np.isfinite(manifest["label"].to_numpy(dtype=float))]
    meta = meta.sort_values("item_id").reset_index(drop=True)
    if meta.empty:
        raise DatasetError(f"{manifest_path}: no labelled items in split {split!r}")
    length = int(round(float(meta["duration_s"].max()) * sample_rate))
    rows = meta.to_dict(orient="records")
    # Items the labeller did not cache are regenerated first, in parallel (codec items call ffmpeg);
    # then every input is gathered into one array file.
    missing = [row for row in rows if not item_cache_path(cache, row["item_id"], sample_rate).is_file()]
    if missing and workers > 1:
        Parallel(n_jobs=workers, prefer="processes")(
            delayed(_ensure_cached)(row, corpus, cache, sample_rate) for row in missing)
    for row in missing:
        _ensure_cached(row, corpus, cache, sample_rate)  # no-op for items the workers wrote
    waves = _split_waves(rows, cache, sample_rate, length, split)
    audiograms = np.stack([np.asarray(a, dtype=np.float32) for a in meta["audiogram"]])
    labels = meta["label"].to_numpy(dtype=np.float32)
    return waves, audiograms, labels, meta
