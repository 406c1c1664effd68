"""The model inputs of a manifest's items: one int16 memory-mapped cache per split (read into training
arrays by `haaqicli.data.arrays`).

Waves are the processed clips, mono at ``sample_rate``, presented at the item's level as `haaqi
score --spl L` presents a file: the reference at the item's ``spl`` (RMS REFERENCE_RMS * 10**((L-65)/20),
the level convention), the processed at its level relative to the reference, so the model hears
level changes the degradation made exactly as the label did. Resampling is the same torchaudio
filter `haaqi score` uses, so training and inference inputs match.

Storage: one (items, samples) int16 ``.npy`` per split and item set under ``data/cache/splits``,
holding every item of the split in the manifest (labelled or not, so it survives new labels), with
one float32 scale per row (NaN: not yet written). A row is its input divided by its own scale (the
peak over 32767), so every clip keeps the full 16-bit resolution whatever its level. There is no
second per-item copy: the labeller writes each item's row while it has the audio at hand, and
training regenerates only the rows still missing. The file is sparse until rows are written. A
manifest whose split items are a subset of a cached split's (a balanced manifest) reads that cache;
caches of other manifests are kept (they cost CPU hours), and their disk use is printed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from haaqicli.audio import presentation_gain as gain_for_rms
from haaqicli.audio import resample
from haaqicli.data.corpus import default_data_dir, materialise
from haaqicli.data.packages import DatasetError
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import DEFAULT_SPL, MODEL_SAMPLE_RATE

INT16_FULL_SCALE = 32767.0


def presentation_gain(reference: np.ndarray, spl: float = DEFAULT_SPL) -> float:
    """The gain that presents ``reference`` at ``spl`` dB SPL in the model's calibration (the one
    definition `haaqi score --spl` uses); the processed, scaled by it, keeps its relative level."""
    return gain_for_rms(float(np.sqrt(np.mean(np.square(reference, dtype=np.float64)))), float(spl))


def scoring_spl(reference: np.ndarray, processed: np.ndarray, spl: float = DEFAULT_SPL) -> float:
    """The ``haaqi score --spl`` at which the processed file reaches the model exactly as its training
    input (`model_input` at the item's ``spl``): scoring presents a file's own RMS at --spl, training
    presents the reference at ``spl`` and keeps the processed at its level relative to it."""
    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))

    return float(spl) + 20.0 * float(np.log10(rms(processed) / rms(reference)))


def model_input(reference: np.ndarray, processed: np.ndarray, sr: int, sample_rate: int = MODEL_SAMPLE_RATE,
                length: int | None = None, spl: float = DEFAULT_SPL) -> np.ndarray:
    """Processed clip at the model rate, presented as the label hears it (reference at ``spl``),
    padded/trimmed to ``length``."""
    x = processed.astype(np.float64) * presentation_gain(reference, spl)
    if sr != sample_rate:

        x = resample(x, int(sr), int(sample_rate))
    if length is not None:
        out = np.zeros(length)
        out[: min(length, len(x))] = x[:length]
        x = out
    return x.astype(np.float32)


def to_int16(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(int16 samples, scale) with ``samples * scale`` ~ ``x``: the peak maps to full scale."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    scale = peak / INT16_FULL_SCALE if peak > 0 else 1.0
    return np.round(np.asarray(x, dtype=np.float64) / scale).astype(np.int16), scale


def item_input(item: dict, corpus_dir: Path, sample_rate: int, length: int) -> tuple[np.ndarray, float]:
    """One manifest item's model input, regenerated, as (int16 row, scale)."""
    ref, proc, sr = materialise(item, corpus_dir)
    return to_int16(model_input(ref, proc, sr, sample_rate, length, float(item.get("spl", DEFAULT_SPL))))


class Int16Waves:
    """Rows of a split cache as float32 (int16 x scale), read on demand: `waves[index]` -> (k, T)."""

    def __init__(self, data: np.ndarray, scales: np.ndarray, rows: np.ndarray) -> None:
        self.data, self.scales, self.rows = data, scales, np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), int(self.data.shape[1]))

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Sequence[int] | np.ndarray | slice | int) -> np.ndarray:
        rows = self.rows[index]
        return (self.data[rows].astype(np.float32) * self.scales[rows, None] if np.ndim(rows)
                else self.data[rows].astype(np.float32) * self.scales[rows])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)


class SplitCache:
    """The int16 model inputs of every manifest item of one split (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, split: str, item_ids: Iterable[str], length: int,
                 sample_rate: int = MODEL_SAMPLE_RATE) -> None:
        self.ids = sorted(str(i) for i in item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}
        self.length, self.sample_rate, self.split = int(length), int(sample_rate), split
        key = hashlib.sha256("|".join([str(sample_rate), str(length), *self.ids]).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / "splits"
        self._at(self.folder / f"{split}-{sample_rate}-{key}.npy")

    def _at(self, path: Path) -> None:
        self.path = path
        self.scale_path = path.with_suffix(".scale.npy")
        self.ids_path = path.with_suffix(".ids.npy")

    @classmethod
    def of_manifest(cls, cache_dir: str | Path, manifest: pd.DataFrame, split: str,
                    sample_rate: int = MODEL_SAMPLE_RATE) -> SplitCache:
        """The cache of a manifest's split: an existing cache of this split that holds all its items
        (e.g. the full manifest's, for a balanced subset of it), else its own."""
        items = manifest[manifest["split"] == split]
        length = int(round(float(items["duration_s"].max()) * sample_rate)) if len(items) else 0
        own = cls(cache_dir, split, items["item_id"], length, sample_rate)
        if own.path.is_file():
            return own
        wanted = set(own.ids)
        for path in sorted(own.folder.glob(f"{split}-{sample_rate}-*.ids.npy")):
            ids = np.load(path).tolist()
            data = path.with_name(path.name.replace(".ids.npy", ".npy"))
            if wanted <= set(ids) and data.is_file() and np.load(data, mmap_mode="r").shape[1] == length:
                found = cls(cache_dir, split, ids, length, sample_rate)
                found._at(data)
                return found
        return own

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f".{self.path.stem}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # labeller and training may both write rows
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _create(self) -> None:
        def write(tmp: Path) -> None:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(len(self.ids), self.length)).flush()

        atomic_write(self.path, write, keep_suffix=True)
        atomic_write(self.scale_path, lambda tmp: np.save(tmp, np.full(len(self.ids), np.nan, np.float32)),
                     keep_suffix=True)
        atomic_write(self.ids_path, lambda tmp: np.save(tmp, np.asarray(self.ids, dtype=str)), keep_suffix=True)

    def scales(self) -> np.ndarray:
        """Per-row scales; NaN where a row is not written yet."""
        if not self.scale_path.is_file():
            return np.full(len(self.ids), np.nan, np.float32)
        return np.load(self.scale_path)

    def write(self, entries: Sequence[tuple[str, np.ndarray, float]]) -> None:
        """Store (item_id, int16 row, scale) entries: the rows first, then their scales (a crash in
        between leaves rows that count as missing, never a scale without its row)."""
        entries = [e for e in entries if e[0] in self.index]
        if not entries:
            return
        with self._locked():
            if not self.path.is_file():
                self._create()
            data = np.load(self.path, mmap_mode="r+")
            for item_id, row, _ in entries:
                data[self.index[item_id], : min(self.length, len(row))] = row[: self.length]
            data.flush()
            del data
            scales = self.scales()
            for item_id, _, scale in entries:
                scales[self.index[item_id]] = scale
            atomic_write(self.scale_path, lambda tmp: np.save(tmp, scales), keep_suffix=True)

    def waves(self, item_ids: Sequence[str]) -> Int16Waves:
        scales = self.scales()
        rows = np.asarray([self.index[i] for i in item_ids], dtype=np.int64)
        if len(rows) and not np.all(np.isfinite(scales[rows])):
            raise DatasetError(f"{self.path}: {int((~np.isfinite(scales[rows])).sum())} rows not written")
        return Int16Waves(np.load(self.path, mmap_mode="r"), scales, rows)

    def disk_bytes(self) -> int:
        """Bytes the cache takes on disk (the array file is sparse until its rows are written)."""
        return sum(p.stat().st_blocks * 512 for p in (self.path, self.scale_path, self.ids_path) if p.is_file())


def cache_disk_bytes(cache_dir: str | Path | None = None) -> int:
    """Bytes all split caches take on disk."""
    folder = Path(cache_dir if cache_dir is not None else default_data_dir() / "cache") / "splits"
    return sum(p.stat().st_blocks * 512 for p in folder.glob("*.npy")) if folder.is_dir() else 0

