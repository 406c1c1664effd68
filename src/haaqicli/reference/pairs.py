"""Score (reference, processed) file pairs with the exact HAAQI, one row per pair x profile x ear."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from haaqicli.audio import (
    DownmixWarning,
    decode,
    decode_with_info,
    discover,
    downmix_message,
    open_audio,
    require_duration,
    resample,
)
from haaqicli.reference.align import align
from haaqicli.reference.parallel import thread_count
from haaqicli.util import allocator
from haaqicli.util.devices import cuda_device, resolve_device
from haaqicli.util.errors import AudioError, HaaqiError
from haaqicli.util.executor import TaskProgress, open_executor, unreadable
from haaqicli.util.interrupts import RunInterrupted
from haaqicli.util.levels import reference_level1
from haaqicli.util.progress import AudioProgress, ProgressCallback

if TYPE_CHECKING:
    import pandas as pd

PAIR_COLUMNS = [
    "processed", "reference", "profile", "ear", "score", "status", "error",
    "delay_s", "duration_s", "sample_rate", "segments", "score_min", "channels", "spl", "audiogram_hash",
]


def read_pairs_csv(path: str | Path) -> list[tuple[Path, Path]]:
    """Pairs from a CSV with `reference` and `processed` columns (paths relative to the CSV's folder)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "reference" not in fields or "processed" not in fields:
                raise HaaqiError(f"{path}: needs columns 'reference' and 'processed', found {fields}")
            pairs = []
            for line, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                if not row["reference"] or not row["processed"]:
                    raise HaaqiError(f"{path}:{line}: empty reference or processed path")
                pairs.append((path.parent / row["reference"], path.parent / row["processed"]))
    except OSError as error:
        raise HaaqiError(f"{path}: cannot read pairs CSV ({error.strerror})") from error
    if not pairs:
        raise HaaqiError(f"{path}: no pairs listed")
    return pairs


def pair_paths(reference: str | Path, processed: str | Path) -> list[tuple[Path | None, Path | None]]:
    """`--reference REF PROCESSED`: two files (one pair) or two folders (`pair_directories`)."""
    kinds = ["folder" if Path(p).is_dir() else "file" if Path(p).exists() else None for p in (reference, processed)]
    for path, kind in zip((reference, processed), kinds, strict=True):
        if kind is None:
            raise HaaqiError(f"{path}: no such file or directory")
    if kinds[0] != kinds[1]:
        raise HaaqiError(f"--reference {reference} {processed}: give two files or two folders, not a {kinds[0]} "
                         f"and a {kinds[1]}")
    if kinds[0] == "file":
        return [(Path(reference), Path(processed))]
    return pair_directories(reference, processed)


def pair_directories(reference_dir: str | Path, processed_dir: str | Path) -> list[tuple[Path | None, Path | None]]:
    """Pair files by relative path (extension ignored); an unmatched file pairs with None."""
    def index(root: str | Path) -> dict[str, Path]:
        if not Path(root).is_dir():
            raise HaaqiError(f"{root}: not a directory")
        return {str(Path(f.relative).with_suffix("")): f.path for f in discover([root])}

    refs, procs = index(reference_dir), index(processed_dir)
    keys = sorted(set(refs) | set(procs))
    return [(refs.get(k), procs.get(k)) for k in keys]


def segment_bounds(n: int, sr: int, segment_seconds: float | None) -> list[tuple[int, int]]:
    """Consecutive [start, stop) segments of `segment_seconds` covering n samples; a last piece shorter
    than half a segment joins the one before. None: one segment, the whole signal."""
    if not segment_seconds:
        return [(0, n)]
    length = max(1, int(round(segment_seconds * sr)))
    starts = list(range(0, n, length))
    if len(starts) > 1 and n - starts[-1] < length / 2:
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [n], strict=True)]


def pair_error_rows(reference: Path | None, processed: Path | None, profiles: Sequence[Any], message: str,
                    base: dict[str, Any] | None = None, spl: float = float("nan")) -> list[dict[str, Any]]:
    """One error row per profile for a pair that could not be scored."""
    base = base or {"processed": str(processed) if processed else "", "reference": str(reference) if reference else "",
                    "delay_s": np.nan, "duration_s": np.nan, "sample_rate": np.nan, "segments": np.nan,
                    "score_min": np.nan, "channels": np.nan, "spl": spl}
    return [{**base, "profile": p.name, "ear": "", "score": np.nan, "status": "error", "error": message,
             "audiogram_hash": p.values_hash()} for p in profiles]


def score_pair(reference: Path | None, processed: Path | None, profiles: Sequence[Any], spl: float = 65.0,
               mix: str = "stereo", seed: int = 0, device: str = "cpu",
               segment_seconds: float | None = None, memory_share: int = 1,
               score_batch: Callable[..., list[float]] | None = None) -> list[dict[str, Any]]:
    """Rows for one pair; any failure becomes error rows (the batch goes on). The distinct clips of
    the pair, one per (channel, segment, audiogram), are scored in one `compute_haaqi_batch` call (one
    batch of clips on a GPU): ears or profiles with the same audiogram hearing the same channel share
    one computation, so a mono file for a symmetric profile costs one call, not one per ear.

    `segment_seconds`: score consecutive segments of the aligned pair and report their length-weighted
    mean (`score`) and minimum (`score_min`), with bounded memory; None scores the whole pair at once,
    the exact HAAQI, and refuses (error rows) a pair whose estimated memory exceeds what is available.
    `memory_share`: how many pairs are scored at once (worker processes); each may use that share of
    the available memory. `score_batch` scores the items (default: `compute_haaqi_batch`)."""
    # lazy: numba, scipy, soundfile only where this path runs (start-up time)
    from haaqicli.reference.dispatch import compute_haaqi_batch
    from haaqicli.reference.haaqi import available_memory_bytes, estimated_peak_bytes

    score_batch = score_batch or compute_haaqi_batch

    base = {"processed": str(processed) if processed else "", "reference": str(reference) if reference else "",
            "delay_s": np.nan, "duration_s": np.nan, "sample_rate": np.nan, "segments": np.nan, "score_min": np.nan,
            "channels": np.nan, "spl": spl}

    def failed(message: str) -> list[dict[str, Any]]:
        return pair_error_rows(reference, processed, profiles, message, base)

    if reference is None:
        return failed("no matching reference file")
    if processed is None:
        return failed("no matching processed file")
    try:
        ref, sr = decode(reference)
        proc, proc_info = decode_with_info(processed)
        proc_sr = proc_info.sample_rate
        base["channels"] = proc_info.file_channels
        require_duration(reference, ref.shape[1] / sr)
        require_duration(processed, proc.shape[1] / proc_sr)
        if proc_sr != sr:
            proc = resample(proc, proc_sr, sr)
        base["sample_rate"] = sr
        if mix == "mono" or ref.shape[0] == 1 or proc.shape[0] == 1:
            ref_ch, proc_ch = [ref.mean(axis=0)], [proc.mean(axis=0)]
        else:
            ref_ch, proc_ch = [ref[0], ref[1]], [proc[0], proc[1]]
        ears = ["both"] if len(ref_ch) == 1 else ["left", "right"]
        # one delay for the pair, estimated on the channel mix
        delay, _, _ = align(ref.mean(axis=0), proc.mean(axis=0), sr)
        base["delay_s"] = delay / sr
        level1 = reference_level1(ref, spl)  # haaqicli.util.levels: the one definition of the level
        items: list[dict[str, Any]] = []
        item_of: dict[tuple[int, int, int, tuple[float, ...]], int] = {}  # (channel, segment, audiogram) -> item
        rows, row_items = [], []  # row_items: per row, the item of each (side, segment)
        for channel, (ear, r, p) in enumerate(zip(ears, ref_ch, proc_ch, strict=True)):
            r = np.asarray(r, dtype=np.float64)
            p = np.asarray(p, dtype=np.float64)
            if delay >= 0:
                r, p = r, p[delay:]
            else:
                r, p = r[-delay:], p
            n = min(len(r), len(p))
            r, p = r[:n], p[:n]
            base["duration_s"] = n / sr
            segments = segment_bounds(n, sr, segment_seconds)
            base["segments"] = len(segments)
            longest = max(b - a for a, b in segments)
            need, free = estimated_peak_bytes(longest, sr), available_memory_bytes()
            if free is not None:
                free //= max(1, memory_share)
            if device == "cpu" and free is not None and need > free:
                # refused up front: running out of memory would kill the whole batch, not just this pair
                share = f" for each of {memory_share} workers" if memory_share > 1 else ""
                return failed(f"{processed.name}: {longest / sr:.0f} s is too long for the exact HAAQI in "
                              f"this memory (needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB available{share}); "
                              "use --segment-seconds" + (" or fewer --workers" if memory_share > 1 else ""))
            for profile in profiles:
                sides = ["left", "right"] if ear == "both" else [ear]
                indices = []
                for side in sides:
                    gram = profile.ear(side)
                    for index, (a, b) in enumerate(segments):
                        key = (channel, index, tuple(gram.levels))
                        if key not in item_of:
                            item_of[key] = len(items)
                            items.append({"processed": p[a:b], "reference": r[a:b], "processed_sr": sr,
                                          "reference_sr": sr, "audiogram": gram, "equalisation": 1,
                                          "level1": level1, "seed": seed})
                        indices.append(item_of[key])
                row_items.append(np.reshape(indices, (len(sides), len(segments))))
                rows.append({**base, "profile": profile.name, "ear": ear, "status": "ok", "error": "",
                             "audiogram_hash": profile.values_hash()})
        scores = np.asarray(score_batch(items, device=device), dtype=float)
        weights = np.array([b - a for a, b in segments], dtype=float)
        for row, indices in zip(rows, row_items, strict=True):
            # per segment: the ears' mean; per row: the segments' length-weighted mean and their minimum
            per_segment = np.mean(scores[indices], axis=0)
            row["score"] = float(np.average(per_segment, weights=weights))
            row["score_min"] = float(per_segment.min())
        return rows
    except MemoryError:
        return failed(f"{processed.name if processed else ''}: out of memory; use --segment-seconds")
    except (HaaqiError, ValueError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not isinstance(error, AudioError) or str(processed) not in message and str(reference) not in message:
            message = f"{processed.name if processed else ''}: {message}"
        return failed(message)


def default_workers() -> int:
    """One worker per core this process may use."""
    return thread_count()


def _score_pair_alone(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """score_pair in a worker process, single-threaded: the processes already use every core, and
    threads inside each would only contend for them."""
    os.environ["HAAQI_THREADS"] = "1"  # read by reference.parallel at each call
    allocator.disable_worker_leak_check()
    try:
        # lazy: threadpoolctl is an optional dependency, needed on this path only
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: joblib's loky workers already cap native threads
        return score_pair(*args, **kwargs)
    with threadpool_limits(limits=1):
        return score_pair(*args, **kwargs)


def iter_pair_rows(pairs: Sequence[tuple[Path | None, Path | None]], profiles: Sequence[Any], spl: float = 65.0,
                   mix: str = "stereo", workers: int | None = None, device: str = "auto",
                   segment_seconds: float | None = None) -> Iterator[list[dict[str, Any]]]:
    """The rows of each pair, in input order, as soon as they are done (errors as rows, never raised).
    Worker processes start on the call, before the first row is asked for.

    On the CPU, several pairs run at once in `workers` single-threaded processes (None: one per core),
    each allowed its share of the available memory; a single pair (or `workers=1`) runs in this
    process with the threaded engine. On CUDA (named explicitly: "auto" is the CPU) pairs go one after
    another through the batched torch engine."""
    return _task_rows([(reference, processed, profiles) for reference, processed in pairs], spl, mix, workers,
                      device, segment_seconds)


PairTask = tuple[Path | None, Path | None, Sequence[Any]]  # reference, processed, the profiles to score it for


def _task_rows(tasks: Sequence[PairTask], spl: float, mix: str, workers: int | None, device: str,
               segment_seconds: float | None) -> Iterator[list[dict[str, Any]]]:
    """iter_pair_rows with each pair's own profiles (a resumed run scores a pair for the missing ones)."""
    if mix not in ("stereo", "mono"):
        raise HaaqiError(f"--mix must be stereo or mono, got {mix!r}")
    device = cuda_device(device) or "cpu"  # a bad or missing device is one error, not one per pair
    n_workers = min(workers or default_workers(), len(tasks))
    if n_workers > 1 and device == "cpu":
        # lazy: joblib only where this path runs (start-up time)
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=n_workers, return_as="generator", batch_size=1, pre_dispatch="2*n_jobs")
        return parallel(delayed(_score_pair_alone)(r, p, profiles, spl, mix, segment_seconds=segment_seconds,
                                                   memory_share=n_workers) for r, p, profiles in tasks)
    return (score_pair(r, p, profiles, spl, mix, device=device, segment_seconds=segment_seconds)
            for r, p, profiles in tasks)


# The columns that decide whether a previous row is kept by --resume (with the pair's paths as given).
PAIR_RESUME_COLUMNS = ["processed", "reference", "profile", "audiogram_hash", "spl", "status"]


def _pair_key(reference: Path | str | None, processed: Path | str | None) -> tuple[str, str]:
    """A pair as its rows name it: the paths as given ('' for a missing file)."""
    return (str(processed) if processed else "", str(reference) if reference else "")


def _finished_pair_profiles(previous: pd.DataFrame | None, profiles: Sequence[Any], spl: float
                            ) -> set[tuple[str, str, str, str]]:
    """(processed, reference, profile, audiogram hash) of the rows a resumed run keeps."""
    if previous is None:
        return set()
    # lazy: pandas (through the tables) only where this path runs (start-up time)
    from haaqicli.output.tables import resumable_rows

    kept = previous[resumable_rows(previous, profiles, spl)]
    return {(processed or "", reference or "", profile, gram) for processed, reference, profile, gram in
            kept[["processed", "reference", "profile", "audiogram_hash"]].itertuples(index=False, name=None)}


def _pair_tasks(jobs: Sequence[tuple[Path | None, Path | None]], profiles: Sequence[Any],
                finished: set[tuple[str, str, str, str]]) -> tuple[list[PairTask], list[int]]:
    """Each pair with the profiles it still lacks, and its index in ``jobs`` (a pair with none left out)."""
    if not finished:  # a fresh run: every pair shares the one list of profiles
        return [(reference, processed, profiles) for reference, processed in jobs], list(range(len(jobs)))
    keys = [(p.name, p.values_hash()) for p in profiles]
    tasks: list[PairTask] = []
    task_index: list[int] = []
    for index, (reference, processed) in enumerate(jobs):
        pair = _pair_key(reference, processed)
        todo = [p for p, key in zip(profiles, keys, strict=True) if (*pair, *key) not in finished]
        if todo:
            tasks.append((reference, processed, todo))
            task_index.append(index)
    return tasks, task_index


def _row_order(profiles: Sequence[Any]) -> Callable[[dict[str, Any]], tuple[int, int]]:
    """Within a pair, rows as score_pair makes them: ear by ear, profiles in the order given."""
    rank = {(p.name, p.values_hash()): index for index, p in enumerate(profiles)}
    ears = {"left": 0, "right": 1}
    return lambda row: (ears.get(row["ear"], 0), rank.get((row["profile"], row["audiogram_hash"]), len(rank)))


def score_pairs(pairs: Sequence[tuple[Path | None, Path | None]], profiles: Sequence[Any], spl: float = 65.0,
                mix: str = "stereo", workers: int | None = None, progress: bool | ProgressCallback = False,
                device: str = "auto", segment_seconds: float | None = None,
                out: str | Path | None = None, scheduler: str | None = None, resume: bool = False) -> pd.DataFrame:
    """Score every pair for every profile; returns PAIR_COLUMNS rows in input order (errors as rows,
    never raised). With `out`, rows are written to that table (atomically, every few seconds) as pairs
    finish, so an interrupted run keeps them (RunInterrupted is raised after the table is saved); a
    folder `out` (`scores/`) is a partitioned Parquet dataset: rows leave memory part by part and only
    the failed rows are returned. `resume`: the ok rows of `out` for the same pair (paths as given),
    profile (name and audiogram values) and level stay, and each pair is scored only for the profiles
    it lacks; error rows are scored again and replaced.
    `progress`: a progress bar in seconds of audio, or a callback (see haaqicli.util.progress).
    See `iter_pair_rows` for `workers` and `device`. `scheduler` (a Dask address or local:N): each pair
    is one task on that cluster, on the device `device` picks there (with the cluster's own progress)."""
    # lazy: pandas only where this path runs (start-up time)
    import pandas as pd

    # lazy: pandas only where this path runs (start-up time)
    from haaqicli.output.tables import (
        IncrementalTable,
        PartitionedTable,
        open_table,
        previous_rows,
        resumable_rows,
    )

    jobs = pairs if isinstance(pairs, list) else list(pairs)
    previous = previous_rows(out, PAIR_RESUME_COLUMNS) if resume else None
    finished_profiles = _finished_pair_profiles(previous, profiles, spl)
    del previous
    tasks, task_index = _pair_tasks(jobs, profiles, finished_profiles)
    keep = None if not finished_profiles else (lambda rows: resumable_rows(rows, profiles, spl))
    table = open_table(out, PAIR_COLUMNS, keep=keep) if out else None
    hold_all = not isinstance(table, PartitionedTable)  # a dataset's rows leave memory: keep the failed ones
    kept = table.frame().to_dict("records") if isinstance(table, IncrementalTable) else []
    results: Iterator[tuple[int, list[dict[str, Any]]]]
    if scheduler:  # pairs come back as they finish, in any order
        results = _cluster_results(tasks, spl, mix, device, segment_seconds, scheduler, bool(progress))
        progress = False
    else:  # workers start now
        results = enumerate(_task_rows(tasks, spl, mix, workers, device, segment_seconds))

    bar = AudioProgress("exact HAAQI", len(tasks), callback=progress if callable(progress) else None,
                        display=bool(progress))
    if progress:  # probe durations while the workers start
        bar.add_total(sum(_duration(p) for _, p, _ in tasks))
    held: list[tuple[int, list[dict[str, Any]]]] = []  # (index in `jobs`, rows)
    downmixed: set[str] = set()

    def in_input_order() -> list[dict[str, Any]]:
        """The kept and new rows by their pair's place in the input (kept rows of other pairs last)."""
        first: dict[tuple[str, str], int] = {}
        for index, (reference, processed) in enumerate(jobs if kept else ()):
            first.setdefault(_pair_key(reference, processed), index)
        order = _row_order(profiles)
        tagged = [(first.get(_pair_key(row["reference"], row["processed"]), len(jobs)), row) for row in kept]
        tagged += [(index, row) for index, rows in held for row in rows]
        return [row for _, row in sorted(tagged, key=lambda item: (item[0], *order(item[1])))]

    try:
        for position, result in results:
            if table is not None:
                table.add(result)  # as the pair finishes: a killed run keeps it
            if hold_all or any(row["status"] != "ok" for row in result):
                held.append((task_index[position], result))
            for row in result:  # said once per file, here (not in a worker's log)
                if row["channels"] > 2 and row["processed"] not in downmixed:
                    downmixed.add(row["processed"])
                    warnings.warn(downmix_message(row["processed"], int(row["channels"])), DownmixWarning,
                                  stacklevel=2)
            seconds = result[0]["duration_s"] if result else 0.0
            bar.advance(seconds if np.isfinite(seconds) else 0.0, files=1)
        if isinstance(table, IncrementalTable):
            table.reorder(in_input_order())  # a finished table lists pairs as given, wherever they ran
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the caller keeps the pairs finished so far
        rows = in_input_order()
        count = len(table) if table is not None else len(rows)
        raise RunInterrupted(f"{count} finished rows", rows=pd.DataFrame(rows, columns=PAIR_COLUMNS)) from None
    finally:
        bar.close()
        if table is not None:
            table.close()
    return pd.DataFrame(in_input_order(), columns=PAIR_COLUMNS)


def _duration(path: Path | None) -> float:
    """A file's duration for the progress total (0 where it cannot be read: its pair will say why)."""
    if path is None:
        return 0.0
    try:
        return float(open_audio(path).info.duration_s)
    except (HaaqiError, OSError):
        return 0.0


def score_pair_task(reference: Path | None, processed: Path | None, profiles: Sequence[Any], spl: float,
                    mix: str, device: str, segment_seconds: float | None) -> list[dict[str, Any]]:
    """One pair as one task (on a cluster worker): its files are read there, on the device chosen there."""
    reason = unreadable(reference, "reference") or unreadable(processed, "processed file")
    if reason:
        return pair_error_rows(reference, processed, profiles, reason, spl=spl)
    return score_pair(reference, processed, profiles, spl, mix, device=str(resolve_device(device)),
                      segment_seconds=segment_seconds)


def _cluster_results(tasks: Sequence[PairTask], spl: float, mix: str, device: str, segment_seconds: float | None,
                     scheduler: str, progress: bool) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(index in ``tasks``, the pair's rows) as each pair finishes on the cluster, naming the pair's paths
    as given (workers get absolute paths)."""
    for indices, rows in _pairs_on_cluster(tasks, spl, mix, device, segment_seconds, scheduler, progress):
        for index in indices:  # a pair listed twice is scored once
            reference, processed, _ = tasks[index]
            yield index, [{**row, "reference": str(reference) if reference else "",
                           "processed": str(processed) if processed else ""} for row in rows]


def _pairs_on_cluster(tasks: Sequence[PairTask], spl: float, mix: str, device: str, segment_seconds: float | None,
                      scheduler: str, progress: bool) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """(indices of the pair in ``tasks``, its rows) as each task finishes on the cluster (a task that
    failed: error rows)."""
    index_of: dict[tuple[str | None, ...], list[int]] = {}  # text keys: lighter than Path objects
    for index, (reference, processed, _) in enumerate(tasks):
        index_of.setdefault(_absolute(reference, processed), []).append(index)
    submitted = ((*(Path(path) if path else None for path in pair), tasks[indices[0]][2])
                 for pair, indices in index_of.items())
    bar = TaskProgress("exact HAAQI", len(index_of), display=bool(progress))
    try:
        with open_executor(scheduler if index_of else None) as executor:  # nothing to do: no cluster
            for (reference, processed, profiles), outcome in executor.imap_unordered(
                    score_pair_task, submitted, spl=spl, mix=mix, device=device, segment_seconds=segment_seconds):
                if isinstance(outcome, BaseException):
                    outcome = pair_error_rows(reference, processed, profiles,
                                              f"{processed}: {type(outcome).__name__}: {outcome}", spl=spl)
                yield index_of[_absolute(reference, processed)], outcome  # to the table first, then the bar
                bar.update(done=1, failed=int(any(row["status"] != "ok" for row in outcome)),
                           in_flight=executor.in_flight)
    finally:
        bar.close()


def _absolute(*paths: Path | None) -> tuple[str | None, ...]:
    """Workers start in other folders: they get absolute paths."""
    return tuple(str(Path(path).absolute()) if path is not None else None for path in paths)
