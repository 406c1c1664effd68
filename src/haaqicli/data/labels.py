"""Resumable, parallel HAAQI labelling of manifest items into durable, append-only label shards.

Labels follow the team convention: ``haaqi_terms(processed, reference, sr, sr, audiogram,
equalisation=1, level1=spl - 20*log10(rms(reference)))`` with our ``haaqicli.reference``, where
``spl`` is the item's presentation level (50-85 dB SPL, drawn per item; the processed keeps its level
relative to the reference).

Labels cost CPU hours, so they are kept where git can keep them: a frozen manifest (``haaqi dataset
freeze``, e.g. ``labels/manifest.parquet``) and, beside it, ``<stem>.labels/shard-*.parquet``, each an
immutable table of (item_id, label, cep_high, bm_sync5, d_loud, d_norm, label_seconds, error) with
the clipped d_loud/d_norm that ``haaqi_terms`` returns. A run writes its results to one open shard
(``open-*.parquet``, rewritten atomically every ``flush_every`` results, so a kill loses at most that
many) and seals it into a new ``shard-*.parquet`` every ``shard_size`` results and at its end: a sealed
shard is never rewritten, so commits only ever add files. A run adopts the open shards a killed run
left behind. Re-running skips every item that has a row in any shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haaqicli.data.corpus import LABEL_COLUMNS, materialise, read_manifest
from haaqicli.data.export import SplitCache, model_input, to_int16
from haaqicli.data.packages import DatasetError
from haaqicli.reference.formula import TERMS
from haaqicli.util import allocator
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import DEFAULT_SPL, MODEL_SAMPLE_RATE
from haaqicli.util.devices import cuda_device
from haaqicli.util.executor import Executor, TaskProgress, open_executor, unreadable
from haaqicli.util.levels import reference_level1

HaaqiFn = Callable[..., Any]
SHARD_COLUMNS = ["item_id", "label", *TERMS, "label_seconds", "error"]
# Labelling order of the splits when none is named: validation first, so calibration and
# evaluation can start while the training items are still being labelled.
SPLIT_ORDER = ("validation-real", "validation", "train")
SHARD_SIZE = 2000


def shard_dir(manifest_path: Path) -> Path:
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(f"{manifest_path.stem}.labels")


def _default_haaqi() -> HaaqiFn:

    # lazy: numba, scipy only where this path runs (start-up time)
    from haaqicli.reference import haaqi_terms

    # The fast threshold-noise mode: within 2.1e-4 (max) / 3.1e-5 (mean) of pyclarity over the 52-case
    # oracle test, and ~25% cheaper per label than drawing pyclarity's exact stream (noise="pyclarity").
    return functools.partial(haaqi_terms, noise="fast")


def label_arguments(reference: np.ndarray, processed: np.ndarray, sr: int, audiogram: Any,
                    spl: float = DEFAULT_SPL) -> dict[str, Any]:
    """compute_haaqi keyword arguments of the label convention (haaqicli.util.levels): reference presented at
    ``spl`` dB SPL (the processed at its level relative to the reference), NAL-R on the reference
    (equalisation 1); the engine's default (fast) threshold-noise mode and seed."""
    return {"processed": processed, "reference": reference, "processed_sr": sr, "reference_sr": sr,
            "audiogram": np.asarray(audiogram, dtype=float), "equalisation": 1,
            "level1": reference_level1(reference, float(spl))}


def _terms(value: Any) -> dict[str, float]:
    """A HAAQI function's result as {label, sub-terms}: haaqi_terms gives a dict, a plain score function
    a number (its sub-terms are then unknown)."""
    if isinstance(value, Mapping):
        return {"label": float(value["score"]), **{t: float(value[t]) for t in TERMS}}
    return {"label": float(value), **{t: float("nan") for t in TERMS}}


def haaqi_of(haaqi_fn: HaaqiFn | None, args: Mapping[str, Any]) -> dict[str, float]:
    """haaqi_fn (default: our haaqi_terms) called as compute_haaqi(processed, reference, sr, sr,
    audiogram, equalisation=..., level1=...)."""
    fn = haaqi_fn or _default_haaqi()
    return _terms(fn(args["processed"], args["reference"], args["processed_sr"], args["reference_sr"],
                     args["audiogram"], equalisation=args["equalisation"], level1=args["level1"]))


def label_pair(reference: np.ndarray, processed: np.ndarray, sr: int, audiogram: Any,
               haaqi_fn: HaaqiFn | None = None, spl: float = DEFAULT_SPL) -> float:
    """The label of one pair (see `label_arguments`)."""
    return haaqi_of(haaqi_fn, label_arguments(reference, processed, sr, audiogram, spl))["label"]


def _cpu_seconds() -> float:
    # This process plus finished children (ffmpeg codec runs), so codec items are not under-counted.
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _nan_row(item_id: str, error: str = "") -> dict[str, Any]:
    return {"item_id": item_id, "label": float("nan"), **{t: float("nan") for t in TERMS}, "error": error}


def _materialised_arguments(item: Mapping[str, Any], corpus_dir: Path, cache_length: int | None) -> tuple[dict[str, Any], Any]:
    """The item's label arguments and, with ``cache_length``, its model input (int16 row, scale)
    made while the audio is at hand."""
    ref, proc, sr = materialise(item, corpus_dir)
    spl = float(item.get("spl", DEFAULT_SPL))
    cached = None
    if cache_length is not None:

        cached = to_int16(model_input(ref, proc, sr, MODEL_SAMPLE_RATE, cache_length, spl))
    return label_arguments(ref, proc, sr, item["audiogram"], spl), cached


def label_item(item: Mapping[str, Any], corpus_dir: Path, haaqi_fn: HaaqiFn | None = None,
               cache_length: int | None = None) -> dict[str, Any]:
    """Label one manifest row; CPU seconds cover regeneration (incl. ffmpeg) + HAAQI. With
    ``cache_length`` the row carries the item's model input (``input``: int16 row, scale) too."""
    t0 = _cpu_seconds()
    allocator.disable_worker_leak_check()  # in a worker process: see there
    row = _nan_row(item["item_id"])
    try:
        args, cached = _materialised_arguments(item, corpus_dir, cache_length)
        row.update(haaqi_of(haaqi_fn, args))
        if cached is not None:
            row["input"] = cached
    except Exception as exc:  # one bad item must not stop a day-long job; the error is recorded
        row = _nan_row(item["item_id"], _error_text(exc))
    return {**row, "label_seconds": _cpu_seconds() - t0}


def label_items_batched(items: Sequence[Mapping[str, Any]], corpus_dir: Path, device: str, batch_size: int = 8,
                        cache_length: int | None = None) -> Iterator[dict[str, Any]]:
    """Label rows `batch_size` at a time with the batched torch engine on `device` (a GPU). A batch
    that fails is retried item by item, so one bad item only costs its own label. CPU seconds
    (regeneration + this process's share of the engine) are split evenly over a batch."""
    # lazy: torch, numba, scipy only where this path runs (start-up time)
    from haaqicli.reference.batched import haaqi_terms_batch

    for start in range(0, len(items), batch_size):
        t0 = _cpu_seconds()
        chunk, rows, arguments = items[start : start + batch_size], [], []
        for item in chunk:
            try:
                args, cached = _materialised_arguments(item, corpus_dir, cache_length)
                arguments.append(args)
                rows.append({**_nan_row(item["item_id"]), **({"input": cached} if cached is not None else {})})
            except Exception as exc:
                rows.append(_nan_row(item["item_id"], _error_text(exc)))
        good = [row for row in rows if not row["error"]]
        try:
            results: list[Any] = haaqi_terms_batch(arguments, device)
        except Exception:
            results = []
            for args, row in zip(arguments, good, strict=True):
                try:
                    results += haaqi_terms_batch([args], device)
                except Exception as exc:
                    results.append(None)
                    row["error"] = _error_text(exc)
        for row, result in zip(good, results, strict=True):
            if result is not None:
                row.update(_terms(result))
        seconds = (_cpu_seconds() - t0) / max(1, len(rows))
        for row in rows:
            yield {**row, "label_seconds": seconds}


def _shard_files(directory: Path) -> list[Path]:
    if not Path(directory).is_dir():
        return []
    return sorted([*Path(directory).glob("shard-*.parquet"), *Path(directory).glob("open-*.parquet")])


def read_shards(directory: Path) -> pd.DataFrame:
    """Every label row of a shard folder (sealed and open shards), one per item (the last wins)."""
    files = _shard_files(directory)
    if not files:
        return pd.DataFrame(columns=SHARD_COLUMNS)
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f))
        except Exception as error:
            raise DatasetError(f"{f}: unreadable label shard ({str(error).splitlines()[0]})") from None
    df = pd.concat(frames, ignore_index=True)
    for column in SHARD_COLUMNS:
        if column not in df.columns:
            df[column] = np.nan if column != "error" else ""
    return df[SHARD_COLUMNS].drop_duplicates("item_id", keep="last")


def _shard_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {c: row.get(c, "" if c in ("item_id", "error") else float("nan")) for c in SHARD_COLUMNS}


def _shard_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Compact types: float32 scores and terms (HAAQI agrees with pyclarity to ~1e-4; float32 keeps
    ~1e-7), float16 CPU seconds."""
    df = pd.DataFrame([_shard_row(r) for r in rows], columns=SHARD_COLUMNS)
    for column in ("label", *TERMS):
        df[column] = df[column].astype(np.float32)
    df["label_seconds"] = df["label_seconds"].astype(np.float16)
    df["error"] = df["error"].fillna("").astype(str)
    return df


def write_shard(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One shard file, written atomically, zstd-compressed."""
    table = _shard_table(rows)
    return atomic_write(Path(path), lambda tmp: table.to_parquet(tmp, index=False, compression="zstd",
                                                                 compression_level=19))


def shard_bytes_per_label(directory: Path) -> float | None:
    """Bytes of the sealed shards per label row (the tracked cost of a label)."""
    files = list(Path(directory).glob("shard-*.parquet")) if Path(directory).is_dir() else []
    rows = sum(len(pd.read_parquet(f, columns=["item_id"])) for f in files)
    return sum(f.stat().st_size for f in files) / rows if rows else None


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One labelling run per shard folder: a second would adopt the first one's open shard."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatasetError(f"{directory}: another labelling run is writing here; wait for it or stop it") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ShardWriter:
    """Results of one run: an open shard rewritten every flush, sealed every ``shard_size`` rows."""

    def __init__(self, directory: Path, shard_size: int = SHARD_SIZE) -> None:
        self.directory, self.shard_size = Path(directory), shard_size
        # Microseconds in the stamp: two runs of one process within a second must not share shard names
        # (a sealed shard is never overwritten); names still sort in time order, which read_shards relies on.
        now = time.time()
        self.stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now % 1 * 1e6):06d}-{os.getpid()}"
        self.count = 0
        self.rows: list[dict[str, Any]] = []
        # Open shards of killed runs: their rows join this run's first shard, their files go after it is written.
        self.adopted = sorted(self.directory.glob("open-*.parquet"))
        for path in self.adopted:
            self.rows += pd.read_parquet(path).to_dict(orient="records")

    def _path(self, kind: str) -> Path:
        while kind == "shard" and (self.directory / f"shard-{self.stamp}-{self.count:04d}.parquet").exists():
            self.count += 1  # never overwrite a sealed shard
        return self.directory / f"{kind}-{self.stamp}-{self.count:04d}.parquet"

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(_shard_row(row))

    def flush(self, seal: bool = False) -> None:
        if not self.rows:
            return
        open_path = self._path("open")
        if seal or len(self.rows) >= self.shard_size:
            write_shard(self._path("shard"), self.rows)
            open_path.unlink(missing_ok=True)
            self.count += 1
            self.rows = []
        else:
            write_shard(open_path, self.rows)
        for path in self.adopted:
            path.unlink(missing_ok=True)
        self.adopted = []


def apply_labels(manifest: pd.DataFrame, shards: pd.DataFrame) -> pd.DataFrame:
    """Manifest with labels, sub-terms and CPU seconds from shard rows (error rows stay unlabelled)."""
    out = manifest.copy()
    for column in LABEL_COLUMNS:
        if column not in out.columns:
            out[column] = np.nan
    if shards.empty:
        return out
    table = shards.set_index("item_id")
    ids = out["item_id"]
    found = ids.isin(table.index).to_numpy()
    for column in ("label", *TERMS, "label_seconds"):
        if column in table.columns:
            out.loc[found, column] = table.loc[ids[found], column].to_numpy(dtype=float)
    return out


def labelled_manifest(manifest_path: Path, labels_dir: Path | None = None) -> pd.DataFrame:
    """The manifest with every label found so far in its shard folder (a labelling run may still be
    going: nothing is written)."""
    manifest_path = Path(manifest_path)
    return apply_labels(read_manifest(manifest_path), read_shards(labels_dir or shard_dir(manifest_path)))


def pending_items(manifest: pd.DataFrame, shards: pd.DataFrame, split: str | Sequence[str] | None = None,
                  limit: int | None = None, order_seed: int | None = 0, retry_errors: bool = False) -> pd.DataFrame:
    """Items with no shard row yet, split by split in the given order (default SPLIT_ORDER, then any
    other split), each shuffled (seeded) so a partial run is unbiased. With ``retry_errors``, also the
    items whose latest row is an error (a full disk, a killed encoder): the new row, in a later shard,
    supersedes it."""
    if not shards.empty and retry_errors:
        latest = shards.drop_duplicates("item_id", keep="last")
        shards = latest[latest["error"].fillna("").astype(str) == ""]
    done = set(shards["item_id"]) if not shards.empty else set()
    todo = manifest[~manifest["item_id"].isin(done) & ~np.isfinite(manifest["label"].to_numpy(dtype=float))]
    if split is None:
        present = list(dict.fromkeys(todo["split"]))
        splits = [s for s in SPLIT_ORDER if s in present] + sorted(s for s in present if s not in SPLIT_ORDER)
    else:
        splits = [split] if isinstance(split, str) else list(split)
    parts = []
    for i, name in enumerate(splits):
        part = todo[todo["split"] == name]
        if order_seed is not None and len(part):
            part = part.iloc[np.random.default_rng([order_seed, i]).permutation(len(part))]
        parts.append(part)
    todo = pd.concat(parts) if parts else todo.iloc[:0]
    if limit is not None:
        todo = todo.iloc[:limit]
    return todo


def label_item_task(item: Mapping[str, Any], corpus_dir: Path, haaqi_fn: HaaqiFn | None = None,
                    cache_length: int | None = None) -> dict[str, Any]:
    """One item as one task (on a cluster worker): the corpus is read there, from the client's path; the
    label and the model input come back to the client, which writes the shards and caches."""
    reason = unreadable(corpus_dir, "corpus folder")
    if reason:
        return {**_nan_row(item["item_id"], reason), "label_seconds": 0.0}
    return label_item(item, corpus_dir, haaqi_fn, cache_length)


def _run_on_executor(executor: Any, items: list[dict[str, Any]], corpus_dir: Path, haaqi_fn: HaaqiFn | None,
                     cache_length: int | None) -> Iterator[dict[str, Any]]:
    """Each item one task on the executor's cluster, in any order; a task that failed is an error row."""
    for (item,), outcome in executor.imap_unordered(label_item_task, ((item,) for item in items),
                                                    corpus_dir=Path(corpus_dir).absolute(), haaqi_fn=haaqi_fn,
                                                    cache_length=cache_length):
        if isinstance(outcome, BaseException):
            outcome = {**_nan_row(item["item_id"], _error_text(outcome)), "label_seconds": 0.0}
        yield outcome


def _run(items: list[dict[str, Any]], corpus_dir: Path, workers: int, haaqi_fn: HaaqiFn | None,
         cache_length: int | None = None, device: str = "cpu", batch_size: int = 8) -> Iterator[dict[str, Any]]:

    cuda = cuda_device(device) if haaqi_fn is None else None
    if cuda is not None:
        yield from label_items_batched(items, corpus_dir, cuda, batch_size, cache_length)
        return
    if workers <= 1:
        for item in items:
            yield label_item(item, corpus_dir, haaqi_fn, cache_length)
        return
    # lazy: joblib only where this path runs (start-up time)
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers, return_as="generator_unordered", batch_size=1)
    yield from parallel(delayed(label_item)(item, corpus_dir, haaqi_fn, cache_length) for item in items)


def label_manifest(
    manifest_path: Path,
    corpus_dir: Path,
    workers: int = 1,
    flush_every: int = 20,
    limit: int | None = None,
    split: str | Sequence[str] | None = None,
    haaqi_fn: HaaqiFn | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    cache_dir: Path | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    labels_dir: Path | None = None,
    shard_size: int = SHARD_SIZE,
    scheduler: str | None = None,
    retry_errors: bool = False,
) -> dict[str, Any]:
    """Label pending items into the shard folder (``labels_dir``, default beside the manifest),
    flushing the open shard every ``flush_every`` results and sealing one every ``shard_size``. With
    ``cache_dir`` each item's model input goes into its split's int16 cache (see data.export). On a CUDA
    ``device`` (named explicitly: "auto" is the CPU) items go through the batched torch engine
    ``batch_size`` at a time; on the CPU, through ``workers`` processes of the numba engine. With a
    ``scheduler`` (Dask address or local:N) each item is one task on that cluster (numba engine, one
    thread per task); the shards and caches are written here, as results come back.

    Returns a summary: labelled, errors, cpu_seconds (sum), wall_seconds, pending_before.
    """
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    directory = Path(labels_dir or shard_dir(manifest_path))
    with _exclusive(directory):
        writer = ShardWriter(directory, shard_size)
        done = pd.concat([read_shards(directory), pd.DataFrame(writer.rows, columns=SHARD_COLUMNS)])
        todo = pending_items(manifest, done, split=split, limit=limit, retry_errors=retry_errors)
        return _label_items(todo.to_dict(orient="records"), manifest, corpus_dir, writer, workers, flush_every,
                            haaqi_fn, progress, on_result, cache_dir, device, batch_size, scheduler)


def _label_items(items: list[dict[str, Any]], manifest: pd.DataFrame, corpus_dir: Path, writer: ShardWriter,
                 workers: int, flush_every: int, haaqi_fn: HaaqiFn | None, progress: bool,
                 on_result: Callable[[dict[str, Any]], None] | None, cache_dir: Path | None, device: str,
                 batch_size: int, scheduler: str | None = None) -> dict[str, Any]:
    summary = {"pending_before": int(len(items)), "labelled": 0, "errors": 0, "cpu_seconds": 0.0}
    t0 = time.time()
    caches: dict[str, Any] = {}
    inputs: list[tuple[str, str, np.ndarray, float]] = []
    split_of_item = {item["item_id"]: item["split"] for item in items}
    cache_length = None
    if cache_dir is not None and items:

        for name in dict.fromkeys(split_of_item.values()):
            caches[name] = SplitCache.of_manifest(cache_dir, manifest, name, MODEL_SAMPLE_RATE)
        cache_length = max(c.length for c in caches.values())

    def flush(seal: bool = False) -> None:
        # Model inputs first: a label whose input is lost only costs a regeneration later.
        for name, cache in caches.items():
            cache.write([(i, row, scale) for s, i, row, scale in inputs if s == name])
        inputs.clear()
        writer.flush(seal)

    executor = open_executor(scheduler) if scheduler and items else Executor()
    results: Iterable[dict[str, Any]] = (
        _run_on_executor(executor, items, corpus_dir, haaqi_fn, cache_length) if scheduler
        else _run(items, corpus_dir, workers, haaqi_fn, cache_length, device, batch_size))
    bar = TaskProgress("labelling", len(items), display=progress and bool(items))
    pending = 0
    try:
        for result in results:
            cached = result.pop("input", None)
            if cached is not None:
                inputs.append((split_of_item[result["item_id"]], result["item_id"], *cached))
            writer.add(result)
            pending += 1
            summary["labelled"] += int(not result["error"])
            summary["errors"] += int(bool(result["error"]))
            summary["cpu_seconds"] += float(result["label_seconds"])
            if on_result is not None:
                on_result(result)
            bar.update(done=1, failed=int(bool(result["error"])), in_flight=executor.in_flight)
            if pending >= flush_every or len(writer.rows) >= writer.shard_size:
                flush()
                pending = 0
    finally:
        flush(seal=True)
        bar.close()
        executor.close()
    summary["wall_seconds"] = time.time() - t0
    return summary


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return [int(c) for c in np.histogram(np.clip(values, 0.0, 1.0), bins=edges)[0]]


def stats(manifest: pd.DataFrame, n_bins: int = 10) -> dict[str, Any]:
    """Sizes, per-package tracks/minutes/items, labels with sub-terms, the label histogram overall and
    per severity, per degradation kind and augmentation, and CPU time per label."""
    labels = manifest["label"].to_numpy(dtype=float)
    labelled = np.isfinite(labels)
    with_terms = labelled & np.all([np.isfinite(manifest[t].to_numpy(dtype=float)) for t in TERMS], axis=0) \
        if all(t in manifest for t in TERMS) else np.zeros(len(manifest), dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    df = manifest.assign(labelled=labelled, label_f=labels)
    tracks = df.drop_duplicates("source")
    minutes = tracks.groupby(["split", "package"])["source_seconds"].sum() / 60.0
    per_pkg = (df.groupby(["split", "package"])
               .agg(tracks=("source", "nunique"), clips=("clip_id", "nunique"), items=("item_id", "size"),
                    labelled=("labelled", "sum"))
               .reset_index())
    per_pkg["minutes"] = [round(float(minutes.loc[(r.split, r.package)]), 1) for r in per_pkg.itertuples()]
    per_severity = {}
    for severity, group in df[labelled].groupby("severity"):
        values = group["label_f"].to_numpy()
        per_severity[str(severity)] = {"labelled": int(len(values)), "mean": round(float(values.mean()), 4),
                                       "p95": round(float(np.percentile(values, 95)), 4),
                                       "counts": _histogram(values, edges)}

    def summary(kind: str, g: pd.DataFrame) -> dict[str, Any]:
        return {"kind": kind, "items": int(len(g)), "labelled": int(g["labelled"].sum()),
                "mean_label": None if not g["labelled"].any() else round(float(g["label_f"].mean()), 4)}

    def by(column: str) -> list[dict[str, Any]]:
        groups = df.assign(key=df[column].astype(str).str.split(":").str[0]).groupby("key")
        return [summary(str(k), g) for k, g in groups]

    def by_augmentation() -> list[dict[str, Any]]:
        # Per augmentation (an item with "mix+eq" counts under both): combinations are too many to list.
        keys = df["augmentation"].astype(str).str.split("+")
        names = sorted({k for parts in keys for k in parts})
        return [summary(name, df[keys.map(lambda parts, n=name: n in parts)]) for name in names]

    cpu = manifest["label_seconds"].to_numpy(dtype=float)
    return {
        "items": int(len(manifest)),
        "clips": int(manifest["clip_id"].nunique()),
        "sources": int(manifest["source"].nunique()),
        "minutes": round(float(tracks["source_seconds"].sum() / 60.0), 1),
        "labelled": int(labelled.sum()),
        "labelled_with_terms": int(with_terms.sum()),
        "splits": {str(k): int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "labelled_per_split": {str(k): int(v) for k, v in df[labelled]["split"].value_counts().sort_index().items()},
        "packages": [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in per_pkg.to_dict("records")
        ],
        "label_histogram": {"edges": [round(float(e), 2) for e in edges], "counts": _histogram(labels[labelled], edges)},
        "label_histogram_by_severity": per_severity,
        "label_mean": float(np.mean(labels[labelled])) if labelled.any() else None,
        "terms_mean": {t: round(float(np.mean(manifest[t].to_numpy(dtype=float)[with_terms])), 4)
                       for t in TERMS} if with_terms.any() else None,
        "cpu_seconds_per_label": float(np.mean(cpu[labelled])) if labelled.any() else None,
        "degradations": by("degradation"),
        "augmentations": by_augmentation(),
    }


def balance_by_label(manifest: pd.DataFrame, per_bin: int, n_bins: int = 10, seed: int = 0) -> pd.DataFrame:
    """Kasperuk & Zielinski-style re-sampling: at most ``per_bin`` labelled items per label bin."""
    labels = manifest["label"].to_numpy(dtype=float)
    ok = np.isfinite(labels)
    bins = np.minimum((np.clip(labels[ok], 0, 1) * n_bins).astype(int), n_bins - 1)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(ok)
    keep: list[int] = []
    for b in range(n_bins):
        members = rows[bins == b]
        if len(members) > per_bin:
            members = rng.choice(members, size=per_bin, replace=False)
        keep.extend(members.tolist())
    return manifest.iloc[np.sort(np.asarray(keep, dtype=int))].reset_index(drop=True)
