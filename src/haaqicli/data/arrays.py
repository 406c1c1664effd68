"""Training arrays of a split: the labelled items of a manifest, their model inputs read from the split
cache (`haaqicli.data.export`), rows the labeller did not write regenerated into it first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from haaqicli.data.corpus import default_data_dir
from haaqicli.data.export import Int16Waves, SplitCache, cache_disk_bytes, item_input
from haaqicli.data.labels import labelled_manifest
from haaqicli.data.packages import DatasetError
from haaqicli.util import allocator
from haaqicli.util.constants import MODEL_SAMPLE_RATE


def first_of_shuffle(total: int, count: int, seed: int = 0) -> np.ndarray:
    """Mask of the first `count` of `total` items in a fixed seeded shuffle: smaller counts are subsets
    of larger ones, so a learning curve adds labels instead of drawing new ones."""
    if not 1 <= count <= total:
        raise DatasetError(f"--train-items {count}: must be between 1 and the {total} training items")
    mask = np.zeros(total, dtype=bool)
    mask[np.random.default_rng(seed).permutation(total)[:count]] = True
    return mask


def with_augmentation(meta: pd.DataFrame, key: str | None) -> np.ndarray:
    """Mask of the items whose content augmentation has `key` (e.g. "band"); none when `key` is None."""
    if not key:
        return np.zeros(len(meta), dtype=bool)
    return meta["augmentation"].astype(str).str.split("+").map(lambda keys: key in keys).to_numpy(dtype=bool)


def chosen_items(meta: pd.DataFrame, items: int, seed: int = 0, plus_augmentation: str | None = None,
                 always: np.ndarray | None = None) -> np.ndarray:
    """Mask of a run's items: the first `items` of a fixed seeded shuffle of those without
    `plus_augmentation`, and every item with it (a targeted set on top of a fixed sample); `always`
    (a mask) marks more items kept whole and left out of the shuffle (held-out dev tracks)."""
    plus = with_augmentation(meta, plus_augmentation)
    if always is not None:
        plus = plus | always
    base = np.flatnonzero(~plus)
    chosen = plus.copy()
    chosen[base[first_of_shuffle(len(base), items, seed)]] = True
    return chosen


def _regenerate(rows: list[dict], corpus: Path, sample_rate: int, length: int) -> list[tuple[str, np.ndarray, float]]:
    allocator.disable_worker_leak_check()  # in a worker process: see there
    return [(row["item_id"], *item_input(row, corpus, sample_rate, length)) for row in rows]


def load_split_arrays(
    manifest_path: str | Path,
    split: str,
    sample_rate: int = MODEL_SAMPLE_RATE,
    corpus_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 2,
    log: object = None,
    items: int | None = None,
    seed: int = 0,
    plus_augmentation: str | None = None,
    always: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> tuple[Int16Waves, np.ndarray, np.ndarray, pd.DataFrame]:
    """(waves (N, T) float32 on read, audiograms (N, 8) float32, labels (N,) float32, meta) of a split's
    labelled items. Rows the labeller did not write are regenerated (in `workers` processes) into the
    split cache first. `log(text)` (e.g. print) hears the cache's disk use. `items`: only that many
    labelled items (`first_of_shuffle`), chosen before any is regenerated; with `plus_augmentation`,
    that many of the others and every item with that augmentation (`chosen_items`); `always(meta)`, a
    mask over the labelled items, keeps those too, outside the `items` drawn."""
    data_dir = default_data_dir()
    corpus = Path(corpus_dir) if corpus_dir is not None else data_dir / "corpus"
    cache = Path(cache_dir) if cache_dir is not None else data_dir / "cache"
    manifest = labelled_manifest(Path(manifest_path))  # labels of a run still going count too
    meta = manifest[(manifest["split"] == split) & np.isfinite(manifest["label"].to_numpy(dtype=float))]
    meta = meta.sort_values("item_id").reset_index(drop=True)
    if meta.empty:
        raise DatasetError(f"{manifest_path}: no labelled items in split {split!r}")
    if items is not None:
        kept = None if always is None else always(meta)
        meta = meta[chosen_items(meta, items, seed, plus_augmentation, kept)].reset_index(drop=True)
    store = SplitCache.of_manifest(cache, manifest, split, sample_rate)
    scales = store.scales()
    rows = meta.to_dict(orient="records")
    missing = [row for row in rows if not np.isfinite(scales[store.index[row["item_id"]]])]
    # Regenerated in chunks (codec items call ffmpeg), each chunk stored as it finishes.
    chunk = 64
    for start in range(0, len(missing), chunk):
        part = missing[start : start + chunk]
        if workers > 1:
            groups = [part[i::workers] for i in range(workers)]
            results = Parallel(n_jobs=workers, prefer="processes")(
                delayed(_regenerate)(g, corpus, sample_rate, store.length) for g in groups if g)
            store.write([entry for result in results for entry in result])
        else:
            store.write(_regenerate(part, corpus, sample_rate, store.length))
    waves = store.waves(meta["item_id"].tolist())
    if callable(log):
        log(f"{split} cache: {len(meta)} labelled of {len(store.ids)} items, {store.path} takes "
            f"{store.disk_bytes() / 1e9:.2f} GB on disk (int16); all split caches in {store.folder}: "
            f"{cache_disk_bytes(cache) / 1e9:.2f} GB (caches of other manifests are kept: delete them when unused)")
    audiograms = np.stack([np.asarray(a, dtype=np.float32) for a in meta["audiogram"]])
    labels = meta["label"].to_numpy(dtype=np.float32)
    return waves, audiograms, labels, meta
