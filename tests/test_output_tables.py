"""haaqicli.output.tables: schema, atomic CSV/Parquet/JSONL round trips, incremental saving and resume keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from haaqicli.output import tables
from haaqicli.output.tables import SCORE_COLUMNS, IncrementalTable, read_table, write_table
from haaqicli.util.errors import HaaqiError
from haaqicli.util.hashing import content_hash


def sample_rows(n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        ok = i != 1
        rows.append({
            "file": f"album/{i:02d}.flac", "profile": "N3", "ear": "left", "model": "distilled",
            "model_sha256": "ab" * 32, "score": 0.5 + 0.1 * i if ok else None, "score_min": 0.3 if ok else None,
            "score_p10": 0.35 if ok else None, "worst_start_s": 1.5 if ok else None,
            "worst_end_s": 7.5 if ok else None, "duration_s": 12.25, "sample_rate": 44100, "channels": 2,
            "bandwidth_hz": 15800.0 if ok else None,
            "status": "ok" if ok else "error", "error": None if ok else "x.flac: silent (RMS -inf dBFS)",
            "content_hash": "0123", "path": f"/music/album/{i:02d}.flac",
        })
    return rows


def test_schema() -> None:
    assert SCORE_COLUMNS[:6] == ["file", "profile", "ear", "model", "model_sha256", "score"]
    assert len(SCORE_COLUMNS) == 22 and len(set(SCORE_COLUMNS)) == 22
    assert SCORE_COLUMNS[SCORE_COLUMNS.index("channels") + 1] == "bandwidth_hz"  # where the content ends
    assert SCORE_COLUMNS[-2:] == ["spl", "audiogram_hash"]  # what a score was made with (resume, baselines)


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_round_trip_every_format(tmp_path: Path, ext: str) -> None:
    df = pd.DataFrame(sample_rows(), columns=SCORE_COLUMNS)
    path = write_table(df, tmp_path / "out" / f"scores{ext}")
    back = read_table(path)
    assert list(back.columns) == SCORE_COLUMNS
    assert back["file"].tolist() == df["file"].tolist()
    np.testing.assert_allclose(back["score"].astype(float), df["score"].astype(float))
    assert back.loc[1, "error"] == "x.flac: silent (RMS -inf dBFS)" and back.loc[0, "error"] is None
    assert back.loc[0, "content_hash"] == "0123"  # stays text, not the number 123
    assert int(back.loc[2, "sample_rate"]) == 44100
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_write_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_table(pd.DataFrame(sample_rows(2)), tmp_path / "s.csv")
    before = path.read_bytes()

    def boom(self: pd.DataFrame, target: object, **kwargs: object) -> None:
        Path(str(target)).write_text("file,prof")  # half a table...
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(HaaqiError, match=r"s\.csv: cannot write table \(No space left on device\)"):
        write_table(pd.DataFrame(sample_rows(3)), path)
    assert path.read_bytes() == before  # ... never replaces the good one
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_bad_format_and_missing_and_damaged_tables(tmp_path: Path) -> None:
    with pytest.raises(HaaqiError, match=r"x\.xlsx: unsupported table format \.xlsx"):
        write_table(pd.DataFrame(), tmp_path / "x.xlsx")
    with pytest.raises(HaaqiError, match=r"nope\.csv: no such table"):
        read_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(HaaqiError, match=r"bad\.parquet: cannot read table"):
        read_table(bad)


def test_content_hash_streams(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 + 17)
    path.write_bytes(data)
    assert content_hash(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_incremental_flushes_periodically_and_resumes(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"run{ext}"
    rows = sample_rows(4)
    table = IncrementalTable(path, SCORE_COLUMNS, flush_every_s=0.0)  # flush on every add
    table.add(rows[0])
    table.add(rows[1:2])
    # a crash now (no close) still leaves the finished rows on disk
    assert read_table(path)["file"].tolist() == ["album/00.flac", "album/01.flac"]
    del table

    slow = IncrementalTable(path, SCORE_COLUMNS, resume=True, flush_every_s=3600)
    assert slow.done_keys(["file", "profile", "ear"]) == {("album/00.flac", "N3", "left"),
                                                         ("album/01.flac", "N3", "left")}
    assert slow.done_keys(["file", "profile", "ear"], only_ok=True) == {("album/00.flac", "N3", "left")}
    slow.add(pd.DataFrame(rows[2:]))
    assert len(read_table(path)) == 2  # not yet flushed (interval not reached)
    slow.close()
    assert read_table(path)["file"].tolist() == [r["file"] for r in rows]
    with pytest.raises(HaaqiError, match="already closed"):
        slow.add(rows[0])


def test_incremental_key_columns_replace_retried_rows(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    rows = sample_rows(3)
    with IncrementalTable(path, SCORE_COLUMNS, key_columns=["file", "profile", "ear"]) as table:
        table.add(rows)
    retried = dict(rows[1], status="ok", error=None, score=0.42)
    with IncrementalTable(path, SCORE_COLUMNS, resume=True, key_columns=["file", "profile", "ear"]) as table:
        table.add(retried)
        assert len(table) == 3
    back = read_table(path)
    assert back["status"].tolist() == ["ok", "ok", "ok"]
    assert float(back.loc[back["file"] == "album/01.flac", "score"].iloc[0]) == pytest.approx(0.42)


def test_incremental_without_resume_starts_fresh_and_close_writes_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    write_table(pd.DataFrame(sample_rows(2)), path)
    IncrementalTable(path, SCORE_COLUMNS).close()
    back = read_table(path)
    assert len(back) == 0 and list(back.columns) == SCORE_COLUMNS
    with pytest.raises(HaaqiError, match="unsupported table format"):
        IncrementalTable(tmp_path / "x.txt")
    assert tables.STATUS_OK == "ok"


def test_partitioned_dataset_writes_parts_and_resume_keeps_selected_rows(tmp_path: Path) -> None:
    from haaqicli.output.tables import PartitionedTable, dataset_parts, dataset_rows

    folder = f"{tmp_path}/scores/"
    rows = sample_rows(3)
    with PartitionedTable(folder, SCORE_COLUMNS, rows_per_part=2) as table:
        table.add(rows[:2])  # a full part: written, and out of memory
        assert len(dataset_parts(folder)) == 1 and table._rows == []
        table.add(rows[2])
    assert len(dataset_parts(folder)) == 2 and dataset_rows(folder) == 3
    back = read_table(folder)
    assert back["file"].tolist() == [r["file"] for r in rows] and list(back.columns) == SCORE_COLUMNS
    assert read_table(folder, ["file"]).columns.tolist() == ["file"]
    # resume: the rows `keep` rejects leave their parts; the rest stay where they are
    with PartitionedTable(folder, SCORE_COLUMNS, keep=lambda part: part["status"] == "ok") as table:
        table.add(dict(rows[1], status="ok", error=None, score=0.5))
    back = read_table(folder)
    assert sorted(back["file"]) == sorted(r["file"] for r in rows) and (back["status"] == "ok").all()
    # a fresh run replaces the earlier parts (at its first write), and write_table writes a dataset too
    write_table(pd.DataFrame(rows[:1]), folder)
    assert dataset_rows(folder) == 1 and read_table(folder)["file"].tolist() == [rows[0]["file"]]
    PartitionedTable(folder, SCORE_COLUMNS).close()
    assert dataset_rows(folder) == 0 and list(read_table(folder).columns) == SCORE_COLUMNS
