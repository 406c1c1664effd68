"""Score tables: one schema, atomic writes in CSV / Parquet / JSON Lines, incremental saving for resume.

Every write goes to a temporary file in the same folder and is moved into place with ``os.replace``,
so a reader (or a Ctrl-C) never sees a half-written table. A folder path (``scores/``) is a Parquet
dataset: part files written as rows finish, so millions of rows never sit in memory together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haaqicli.audio.bandwidth import BAND_LIMITED_HZ
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import WINDOW_SECONDS
from haaqicli.util.errors import HaaqiError

SCORE_COLUMNS: list[str] = [
    "file", "profile", "ear", "model", "model_sha256", "score", "score_lo", "score_hi", "score_min", "score_p10",
    "worst_start_s", "worst_end_s", "duration_s", "sample_rate", "channels", "bandwidth_hz", "status", "error",
    "content_hash", "path", "spl", "audiogram_hash",
]
EXACT_MODEL = "reference"  # the `model` column of rows scored with the exact HAAQI against a reference
STATUS_OK = "ok"
STATUS_ERROR = "error"
TABLE_FORMATS = (".csv", ".parquet", ".jsonl")

# Columns that stay text even when every value looks numeric or is empty (CSV/JSONL round trip).
# `processed` and `reference`: the paths of `haaqi reference`'s pair tables (resume keys).
_TEXT_COLUMNS = ("file", "profile", "ear", "model", "model_sha256", "status", "error", "content_hash", "path",
                 "audiogram_hash", "processed", "reference")


def is_dataset(path: str | Path) -> bool:
    """A folder (an existing one, or a path ending in a slash): a partitioned Parquet dataset."""
    return str(path).endswith(("/", os.sep)) or Path(path).is_dir()


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise HaaqiError(f"{path}: unsupported table format {suffix or '(none)'} (use .csv, .parquet or .jsonl)")
    return suffix


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` atomically; the format follows the extension (.csv, .parquet, .jsonl)."""
    if is_dataset(path):
        with PartitionedTable(path, list(df.columns)) as dataset:
            dataset.add(df)
        return Path(path)
    path = Path(path)
    fmt = _format_of(path)

    def write(tmp: Path) -> None:
        if fmt == ".csv":
            df.to_csv(tmp, index=False)
        elif fmt == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True, force_ascii=False, double_precision=15)

    try:
        return atomic_write(path, write)
    except OSError as error:
        raise HaaqiError(f"{path}: cannot write table ({error.strerror or error})") from None


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A table file, or every part of a dataset folder; ``columns``: only those (datasets)."""
    if is_dataset(path):
        parts = dataset_parts(path)
        if not parts:
            raise HaaqiError(f"{path}: no such table (a dataset folder without part files)")
        return pd.concat([_read_part(part, columns) for part in parts], ignore_index=True)
    path = Path(path)
    fmt = _format_of(path)
    if not path.exists():
        raise HaaqiError(f"{path}: no such table")
    text_dtypes = {name: "string" for name in _TEXT_COLUMNS}
    try:
        if fmt == ".csv":
            if path.stat().st_size == 0:
                return pd.DataFrame()
            df = pd.read_csv(path, dtype=text_dtypes, keep_default_na=True)
        elif fmt == ".parquet":
            df = pd.read_parquet(path)
        else:
            if path.stat().st_size == 0:
                return pd.DataFrame()
            df = pd.read_json(path, orient="records", lines=True, dtype=False)
    except Exception as error:  # pandas/pyarrow raise many types for a damaged file
        reason = " ".join(str(error).split())[:200]
        raise HaaqiError(f"{path}: cannot read table ({reason})") from None
    for name in _TEXT_COLUMNS:  # same dtypes whatever the format
        if name in df.columns:
            df[name] = df[name].astype("object").where(df[name].notna(), None)
    return df


def dataset_parts(directory: str | Path) -> list[Path]:
    """The part files of a dataset folder, oldest first (hidden temporaries excluded)."""
    return sorted(Path(directory).glob("part-*.parquet")) if Path(directory).is_dir() else []


def dataset_rows(directory: str | Path) -> int:
    """Rows in a dataset folder, from the part files' metadata (nothing is loaded)."""
    # lazy: pyarrow only where this path runs (start-up time)
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(part).metadata.num_rows for part in dataset_parts(directory))


def _read_part(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path, columns=list(columns) if columns else None)
    except Exception as error:  # pyarrow raises many types for a damaged file
        raise HaaqiError(f"{path}: cannot read table part ({' '.join(str(error).split())[:200]})") from None
    for name in _TEXT_COLUMNS:
        if name in df.columns:
            df[name] = df[name].astype("object").where(df[name].notna(), None)
    return df


def previous_rows(out: str | Path | None, columns: Sequence[str]) -> pd.DataFrame | None:
    """For ``--resume``: the ``columns`` of the rows an earlier run left in ``out`` (a dataset folder's
    parts are read for those columns only). None when there is no such table, or it lacks one of the
    columns (a table of another kind or an older version: its rows are not reused)."""
    if not out or not Path(out).exists() or (is_dataset(out) and not dataset_parts(out)):
        return None
    previous = read_table(out, columns) if is_dataset(out) else read_table(out)
    if not set(columns) <= set(previous.columns):
        return None
    return previous[list(columns)]


def resumable_rows(previous: pd.DataFrame, profiles: Sequence[Any], spl: float) -> np.ndarray:
    """Rows an earlier run left that a resumed run may keep: ok, for a requested profile with the same
    audiogram values (``profile``, ``audiogram_hash``), at the same level. Error rows are scored again
    (and so replaced)."""
    wanted = {(p.name, p.values_hash()) for p in profiles}
    level = pd.to_numeric(previous["spl"], errors="coerce")
    mask = np.array((previous["status"] == "ok") & np.isclose(level, spl, rtol=0, atol=1e-9), dtype=bool)
    return mask & np.array([(name, gram) in wanted for name, gram in
                            zip(previous["profile"], previous["audiogram_hash"], strict=True)], dtype=bool)


def open_table(out: str | Path, columns: Sequence[str], keep: Callable[[pd.DataFrame], Any] | None = None
               ) -> IncrementalTable | PartitionedTable:
    """The table a run streams its rows into: a file, or a partitioned dataset for a folder. ``keep``
    (``--resume``) selects the earlier rows that stay (a boolean mask of a DataFrame of them); without
    it, the run replaces whatever ``out`` held."""
    if is_dataset(out):
        return PartitionedTable(out, columns, keep=keep)
    table = IncrementalTable(out, columns)
    if keep is not None and Path(out).exists():
        previous = read_table(out)
        if len(previous):
            table.add(previous[_selected(previous, keep)])
    return table


def _selected(frame: pd.DataFrame, keep: Callable[[pd.DataFrame], Any]) -> pd.Series:
    return pd.Series(keep(frame), index=frame.index).fillna(False).astype(bool)


def _key(value: Any) -> Any:
    # NaN/None compare unequal to themselves; normalise so keys from a re-read file still match.
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return value


class IncrementalTable:
    """Rows added while a long run goes on, saved atomically every ``flush_every_s`` seconds and on close.

    With ``resume=True`` rows already in ``path`` are loaded first; with ``key_columns`` a newly added
    row replaces an earlier one with the same key (so a retried failure overwrites its error row).
    """

    def __init__(self, path: str | Path, columns: Sequence[str] = SCORE_COLUMNS, *, resume: bool = False,
                 key_columns: Sequence[str] | None = None, flush_every_s: float = 5.0):
        self.path = Path(path)
        _format_of(self.path)
        self.columns = list(columns)
        self.key_columns = list(key_columns) if key_columns else None
        self.flush_every_s = flush_every_s
        self._rows: list[dict[str, Any]] = []
        self._dirty = True  # the first close writes the file even with no rows (a fresh run replaces an old one)
        self._last_flush = time.monotonic()
        self.closed = False
        if resume and self.path.exists():
            existing = read_table(self.path)
            self._rows = [{k: (None if pd.isna(v) else v) if not isinstance(v, (list, dict)) else v
                           for k, v in row.items()} for row in existing.to_dict("records")]
            self._dirty = False

    def __enter__(self) -> IncrementalTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.frame())

    def add(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]] | pd.DataFrame) -> None:
        if self.closed:
            raise HaaqiError(f"{self.path}: table already closed")
        if isinstance(rows, pd.DataFrame):
            new = rows.to_dict("records")
        elif isinstance(rows, Mapping):
            new = [dict(rows)]
        else:
            new = [dict(row) for row in rows]
        self._rows.extend(new)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def reorder(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The same rows in another order (e.g. input order once results that came in any order are all
        in); written at the next flush or close."""
        self._rows = [dict(row) for row in rows]
        self._dirty = True

    def frame(self) -> pd.DataFrame:
        extra = [c for row in self._rows for c in row if c not in self.columns]
        columns = self.columns + list(dict.fromkeys(extra))
        df = pd.DataFrame(self._rows, columns=columns)
        if self.key_columns and len(df):
            keys = [tuple(_key(row.get(c)) for c in self.key_columns) for row in self._rows]
            last = {key: index for index, key in enumerate(keys)}
            df = df.iloc[sorted(last.values())].reset_index(drop=True)
        return df

    def flush(self) -> None:
        write_table(self.frame(), self.path)
        self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.closed:
            return
        if self._dirty:
            self.flush()
        self.closed = True

    def done_keys(self, key_columns: Sequence[str], only_ok: bool = False) -> set[tuple]:
        """Keys of rows already present (optionally only ``status == "ok"``), for ``--resume``."""
        keys = set()
        for row in self._rows:
            if only_ok and row.get("status") != STATUS_OK:
                continue
            keys.add(tuple(_key(row.get(c)) for c in key_columns))
        return keys


class PartitionedTable:
    """A Parquet dataset written as rows finish: buffered rows go to a new part file (atomically) every
    ``flush_every_s`` seconds or ``rows_per_part`` rows and then leave memory. Rows added together stay
    in one part, so a killed run never leaves half of a file's rows.

    A fresh table replaces the parts of an earlier run at its first write; ``keep`` (resume) instead
    keeps, part by part, the earlier rows it selects (a function of a part's DataFrame giving a boolean
    mask), so rows that are scored again are not there twice.
    """

    def __init__(self, directory: str | Path, columns: Sequence[str] = SCORE_COLUMNS, *,
                 keep: Callable[[pd.DataFrame], Any] | None = None, rows_per_part: int = 100_000,
                 flush_every_s: float = 5.0):
        self.path = Path(directory)
        if self.path.exists() and not self.path.is_dir():
            raise HaaqiError(f"{self.path}: not a folder (a dataset --out ends with /)")
        self.columns = list(columns)
        self.rows_per_part = rows_per_part
        self.flush_every_s = flush_every_s
        self.rows_written = 0
        self._rows: list[dict[str, Any]] = []
        self._old = dataset_parts(self.path)
        self._counter = 0
        self._last_flush = time.monotonic()
        self.closed = False
        if keep is not None:
            for part in self._old:
                self._retain(part, keep)
            self._old = []

    def __enter__(self) -> PartitionedTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retain(self, part: Path, keep: Callable[[pd.DataFrame], Any]) -> None:
        df = _read_part(part)
        mask = _selected(df, keep)
        if mask.all():
            self.rows_written += len(df)
        elif not mask.any():
            part.unlink()
        else:
            kept = df[mask].reset_index(drop=True)
            atomic_write(part, lambda tmp: kept.to_parquet(tmp, index=False))
            self.rows_written += len(kept)

    def add(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]] | pd.DataFrame) -> None:
        if self.closed:
            raise HaaqiError(f"{self.path}: table already closed")
        if isinstance(rows, pd.DataFrame):
            self._rows.extend(rows.to_dict("records"))
        elif isinstance(rows, Mapping):
            self._rows.append(dict(rows))
        else:
            self._rows.extend(dict(row) for row in rows)
        if len(self._rows) >= self.rows_per_part or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows and not self._old:
            return
        if self._rows:
            extra = [c for row in self._rows for c in row if c not in self.columns]
            self._write_part(pd.DataFrame(self._rows, columns=self.columns + list(dict.fromkeys(extra))))
            self.rows_written += len(self._rows)
            self._rows = []
        for part in self._old:  # a fresh run replaces the earlier run's parts once it has its own
            part.unlink(missing_ok=True)
        self._old = []

    def _write_part(self, frame: pd.DataFrame) -> None:
        for name in _TEXT_COLUMNS:  # one type per column in every part, even an all-empty one
            if name in frame.columns:
                frame[name] = frame[name].astype("string")
        name = f"part-{int(time.time() * 1000):015d}-{os.getpid()}-{self._counter:06d}.parquet"
        try:
            atomic_write(self.path / name, lambda tmp: frame.to_parquet(tmp, index=False))
        except OSError as error:
            raise HaaqiError(f"{self.path}: cannot write table part ({error.strerror or error})") from None
        self._counter += 1

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if not dataset_parts(self.path):  # a run with no rows still leaves a readable (empty) table
            self._write_part(pd.DataFrame(columns=self.columns))
        self.closed = True

    def __len__(self) -> int:
        return self.rows_written + len(self._rows)


def prediction_notes(table: pd.DataFrame) -> list[str]:
    """One line for each known limit of predicted scores that some scored file runs into (the exact
    HAAQI, which has the original, has none of them): content ending below BAND_LIMITED_HZ
    (`bandwidth_hz`), which the models read as low-pass damage, and files shorter than the models'
    WINDOW_SECONDS training clips (weights/MODEL_CARD.md, Known limits). `haaqi score` prints them;
    `haaqi check` and the reports add them to their notes."""
    if "status" not in table:
        return []
    scored = table[table["status"] == "ok"]
    if "model" in scored:
        scored = scored[scored["model"] != EXACT_MODEL]
    # (column, the value below which the limit applies, the note given how many files it applies to)
    limits = (
        ("bandwidth_hz", BAND_LIMITED_HZ, lambda n: (
            _counted(n, "1 file's", "{} files'") + f" content ends below {BAND_LIMITED_HZ / 1000:g} kHz "
            "(bandwidth_hz): without the original, a model cannot tell such a source from low-pass damage and "
            "scores clean music like it low")),
        ("duration_s", WINDOW_SECONDS, lambda n: (
            _counted(n, "1 file is", "{} files are") + f" shorter than the {WINDOW_SECONDS:g}-s clips the models "
            "were trained on (duration_s): their scores, and the intervals fitted on such clips, are extrapolations")),
    )
    notes = []
    for column, limit, note in limits:
        if column in scored:
            files = scored.loc[pd.to_numeric(scored[column], errors="coerce") < limit, "file"].nunique()
            if files:
                notes.append(note(files) + " (weights/MODEL_CARD.md, Known limits); where the original exists, "
                             "`haaqi reference` gives the exact HAAQI.")
    return notes


def _counted(count: int, one: str, many: str) -> str:
    """`one` for a single item, else `many` with the count in its braces."""
    return one if count == 1 else many.format(count)
