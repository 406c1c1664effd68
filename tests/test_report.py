"""haaqicli.report: Markdown + PNG folder and self-contained HTML reports."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from haaqicli.errors import HaaqiError
from haaqicli.report import write_report
from haaqicli.tables import SCORE_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_table() -> tuple[pd.DataFrame, dict]:
    rows, timelines = [], {}
    scores = {"normal": [0.91, 0.85, 0.78, 0.66], "N3": [0.52, 0.31, 0.12, 0.44]}
    files = ["jazz/a.flac", "jazz/b.flac", "rock/live/c.mp3", "d.wav"]
    for profile, values in scores.items():
        for file, score in zip(files, values, strict=True):
            rows.append({"file": file, "profile": profile, "ear": "left", "model": "distilled", "score": score,
                         "score_min": score - 0.1, "worst_start_s": 4.5, "worst_end_s": 10.5, "status": "ok",
                         "error": None, "path": f"/m/{file}"})
            times = np.arange(0, 20, 0.5)
            timelines[(file, profile, "left")] = (times, np.clip(score + 0.05 * np.sin(times), 0, 1))
    rows.append({"file": "rock/broken.mp3", "profile": "normal", "ear": "left", "status": "error",
                 "error": "rock/broken.mp3: not a decodable audio file (Invalid data | bad)"})
    rows.append({"file": "rock/broken.mp3", "profile": "N3", "ear": "left", "status": "error",
                 "error": "rock/broken.mp3: not a decodable audio file (Invalid data | bad)"})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS), timelines


def test_markdown_report_has_stats_worst_files_failures_and_linked_pngs(tmp_path: Path) -> None:
    table, timelines = make_table()
    path = tmp_path / "out" / "report.md"
    write_report(table, path, timelines, title="My library")
    text = path.read_text()
    assert text.startswith("# My library")
    assert "5 files, 2 profiles, 10 results (8 scored, 2 failed)" in text
    # per-profile stats in table order: normal first; N3 values computed from the four scores
    n3 = np.array([0.52, 0.31, 0.12, 0.44])
    line = next(row for row in text.splitlines() if row.startswith("| N3 | 4 |"))
    assert line == (f"| N3 | 4 | {n3.mean():.3f} | {np.median(n3):.3f} | {np.percentile(n3, 10):.3f} | "
                    f"{n3.min():.3f} | 1 |")
    assert text.index("| normal | 4 |") < text.index("| N3 | 4 |")
    assert "| rock/live | N3 | 1 | 0.120 |" in text  # per-folder statistics
    worst = text[text.index("## Worst"):]
    assert worst.index("rock/live/c.mp3") < worst.index("jazz/b.flac")  # 0.12 before 0.31
    assert "4.5–10.5 s" in worst
    # failures merged across profiles, pipes escaped so the table stays intact
    assert "| rock/broken.mp3 | normal, N3 | rock/broken.mp3: not a decodable audio file (Invalid data \\| bad) |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["report_files/histograms.png", "report_files/timelines.png"]
    for image in images:
        assert (path.parent / image).read_bytes().startswith(PNG_MAGIC)


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    table, timelines = make_table()
    path = tmp_path / "report.html"
    write_report(table, path, timelines)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert "Invalid data | bad" in text and "<script" not in text
    assert not (tmp_path / "report_files").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_with_only_failures_and_no_timelines(tmp_path: Path) -> None:
    table = pd.DataFrame([{"file": "x.wav", "profile": "normal", "status": "error", "error": "x.wav: silent"}])
    write_report(table, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "1 files, 1 profiles, 1 results (0 scored, 1 failed)" in text
    assert "| normal | 0 |  |  |  |  | 1 |" in text
    assert "## Failures (1)" in text and "x.wav: silent" in text
    assert "![" not in text and not (tmp_path / "r_files").exists()
    write_report(table, tmp_path / "r.html")
    assert "x.wav: silent" in (tmp_path / "r.html").read_text()


def test_report_ears_and_missing_timeline_keys(tmp_path: Path) -> None:
    table, _ = make_table()
    right = table[table["status"] == "ok"].assign(ear="right", score=lambda d: d["score"] * 0.9)
    both = pd.concat([table, right], ignore_index=True)
    write_report(both, tmp_path / "r.md", timelines={("nope.wav", "N3", "left"): (np.arange(3), np.ones(3))})
    text = (tmp_path / "r.md").read_text()
    assert "| N3 (left) | 4 |" in text and "| N3 (right) | 4 |" in text
    assert "Frame scores" not in text  # no timeline matched any worst file


def test_report_rejects_unknown_format_and_tables_without_file(tmp_path: Path) -> None:
    table, _ = make_table()
    with pytest.raises(HaaqiError, match=r"r\.pdf: unsupported report format \.pdf"):
        write_report(table, tmp_path / "r.pdf")
    with pytest.raises(HaaqiError, match="no 'file' column"):
        write_report(pd.DataFrame({"score": [0.5]}), tmp_path / "r.md")
