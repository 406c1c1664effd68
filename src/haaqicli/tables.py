"""Score tables: one schema, atomic writes in CSV / Parquet / JSON Lines, incremental saving for resume.

Every write goes to a temporary file in the same folder and is moved into place with ``os.replace``,
so a reader (or a Ctrl-C) never sees a half-written table.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from haaqicli.atomic import atomic_write
from haaqicli.errors import HaaqiError

SCORE_COLUMNS: list[str] = [
    "file", "profile", "ear", "model", "model_sha256", "score", "score_lo", "score_hi", "score_min", "score_p10",
    "worst_start_s", "worst_end_s", "duration_s", "sample_rate", "channels", "status", "error",
    "content_hash", "path", "spl", "audiogram_hash",
]
STATUS_OK = "ok"
STATUS_ERROR = "error"
TABLE_FORMATS = (".csv", ".parquet", ".jsonl")

# Columns that stay text even when every value looks numeric or is empty (CSV/JSONL round trip).
_TEXT_COLUMNS = ("file", "profile", "ear", "model", "model_sha256", "status", "error", "content_hash", "path",
                 "audiogram_hash")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise HaaqiError(f"{path}: unsupported table format {suffix or '(none)'} (use .csv, .parquet or .jsonl)")
    return suffix


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` atomically; the format follows the extension (.csv, .parquet, .jsonl)."""
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


def read_table(path: str | Path) -> pd.DataFrame:
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


def content_hash(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex digest of the file bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


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
