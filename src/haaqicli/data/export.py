"""Training arrays from a labelled manifest (cached as .npy under data/cache/).

Waves are the processed clips, mono float32 at ``sample_rate``, scaled by the level convention
(processed * REFERENCE_RMS / rms(reference)), so the model hears level changes the degradation
made exactly as the label did (reference at 65 dB SPL).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import signal

from haaqicli.constants import MODEL_SAMPLE_RATE, REFERENCE_RMS
from haaqicli.data.corpus import default_data_dir, materialise, read_manifest
from haaqicli.data.packages import DatasetError


def model_input(reference: np.ndarray, processed: np.ndarray, sr: int, sample_rate: int = MODEL_SAMPLE_RATE,
                length: int | None = None) -> np.ndarray:
    """Processed clip at the model rate and level convention, padded/trimmed to ``length``."""
    rms = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    x = processed.astype(np.float64) * (REFERENCE_RMS / max(rms, 1e-12))
    if sr != sample_rate:
        g = np.gcd(int(sr), int(sample_rate))
        x = signal.resample_poly(x, sample_rate // g, int(sr) // g)
    if length is not None:
        out = np.zeros(length)
        out[: min(length, len(x))] = x[:length]
        x = out
    return x.astype(np.float32)


def _cache_key(ids: list[str], sample_rate: int, length: int) -> str:
    h = hashlib.sha256(json.dumps([ids, sample_rate, length]).encode()).hexdigest()
    return h[:16]


def load_split_arrays(
    manifest_path: str | Path,
    split: str,
    sample_rate: int = MODEL_SAMPLE_RATE,
    corpus_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """(waves (N, T) float32, audiograms (N, 8) float32, labels (N,) float32, meta) for a split.

    Only labelled items are used. Results are cached by the item list, rate and length, so a
    second call (or another process) is a memory-mapped load.
    """
    data_dir = default_data_dir()
    corpus = Path(corpus_dir) if corpus_dir is not None else data_dir / "corpus"
    cache = Path(cache_dir) if cache_dir is not None else data_dir / "cache"
    manifest = read_manifest(Path(manifest_path))
    meta = manifest[(manifest["split"] == split) & np.isfinite(manifest["label"].to_numpy(dtype=float))]
    meta = meta.sort_values("item_id").reset_index(drop=True)
    if meta.empty:
        raise DatasetError(f"{manifest_path}: no labelled items in split {split!r}")
    length = int(round(float(meta["duration_s"].max()) * sample_rate))
    key = _cache_key(meta["item_id"].tolist(), sample_rate, length)
    wave_path = cache / f"{split}-{key}-waves.npy"
    if wave_path.is_file():
        waves = np.load(wave_path, mmap_mode="r")
    else:
        waves = np.zeros((len(meta), length), dtype=np.float32)
        for i, row in enumerate(meta.to_dict(orient="records")):
            ref, proc, sr = materialise(row, corpus)
            waves[i] = model_input(ref, proc, sr, sample_rate, length)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = wave_path.with_name(f".{wave_path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, waves)
        os.replace(tmp, wave_path)
    audiograms = np.stack([np.asarray(a, dtype=np.float32) for a in meta["audiogram"]])
    labels = meta["label"].to_numpy(dtype=np.float32)
    return waves, audiograms, labels, meta
