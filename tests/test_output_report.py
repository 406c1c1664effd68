"""haaqicli.output.report: Markdown + PNG folder and self-contained HTML reports."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from haaqicli.audiogram import BUILTIN_PROFILES, Audiogram, Profile
from haaqicli.output.ceiling import stored_ceiling
from haaqicli.output.report import write_report
from haaqicli.output.tables import SCORE_COLUMNS
from haaqicli.util.errors import HaaqiError

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


def test_markdown_report_has_stats_grid_worst_files_failures_and_linked_pngs(tmp_path: Path) -> None:
    table, timelines = make_table()
    path = tmp_path / "out" / "report.md"
    write_report(table, path, timelines, title="My library", spl=65)
    text = path.read_text()
    assert text.startswith("# My library")
    assert "5 files, 2 profiles, 10 results (8 scored, 2 failed;" in text
    assert "Scores: predicted by the model distilled. Presentation level: 65 dB SPL." in text
    # one row per profile: severity, clean-music ceiling (stored for built-ins), file statistics, ears
    n3 = np.array([0.52, 0.31, 0.12, 0.44])
    ceiling = stored_ceiling(BUILTIN_PROFILES["N3"]).score
    line = next(row for row in text.splitlines() if row.startswith("| N3 |"))
    assert line == (f"| N3 | moderate | {ceiling:.2f} | 4 | {n3.mean():.3f} | {np.median(n3):.3f} | "
                    f"{np.percentile(n3, 10):.3f} | {n3.min():.3f} | {n3.mean():.3f} | 1 |")
    assert "| profile | severity | clean | files | mean | median | p10 | min | left ear | failures |" in text
    assert text.index("| normal | normal |") < text.index("| N3 | moderate |")
    assert "| rock/live | N3 | 1 | 0.120 |" in text  # per-folder statistics
    # file x profile grid, the lowest mean first, failed files last
    grid = text[text.index("| file | normal | N3 | mean |"):].split("\n\n")[0].splitlines()[2:]
    assert [row.split(" | ")[0][2:] for row in grid] == ["rock/live/c.mp3", "d.wav", "jazz/b.flac", "jazz/a.flac",
                                                         "rock/broken.mp3"]
    assert grid[0] == "| rock/live/c.mp3 | 0.780 | 0.120 | 0.450 |" and grid[-1] == "| rock/broken.mp3 | error | error |  |"
    worst = text[text.index("## Worst"):]
    assert worst.index("rock/live/c.mp3") < worst.index("jazz/b.flac")  # 0.12 before 0.31
    assert f"| rock/live/c.mp3 | N3, left ear | 0.120 | {0.12 / ceiling:.0%} |" in worst and "4.5–10.5 s" in worst
    # failures merged across profiles, pipes escaped so the table stays intact
    assert "## Failures (1 files)" in text
    assert "| rock/broken.mp3 | normal, N3 | rock/broken.mp3: not a decodable audio file (Invalid data \\| bad) |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["report_files/audiograms.png", "report_files/histograms.png", "report_files/timelines.png"]
    for image in images:
        assert (path.parent / image).read_bytes().startswith(PNG_MAGIC)


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    table, timelines = make_table()
    path = tmp_path / "report.html"
    write_report(table, path, timelines)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert "Invalid data | bad" in text and "<script" not in text
    assert "Presentation level: not recorded" in text
    assert "content ends below" not in text  # no bandwidth_hz recorded: no note
    narrow = table.assign(bandwidth_hz=np.where(table["file"] == "d.wav", 7800.0, 16000.0))
    write_report(narrow, path, timelines)
    assert re.search(r"Note: 1 file(&#x27;|')s content ends below 10 kHz", path.read_text())
    assert not (tmp_path / "report_files").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_with_only_failures_and_no_timelines(tmp_path: Path) -> None:
    table = pd.DataFrame([{"file": "x.wav", "profile": "normal", "status": "error", "error": "x.wav: silent"}])
    write_report(table, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "1 files, 1 profiles, 1 results (0 scored, 1 failed;" in text
    assert "Scores: exact HAAQI against the reference." in text
    assert "| normal | normal | 0.97 | 0 |  |  |  |  | 1 |" in text
    assert "## Failures (1 files)" in text and "x.wav: silent" in text
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == ["r_files/audiograms.png"]  # no scores to plot
    write_report(table, tmp_path / "r.html")
    assert "x.wav: silent" in (tmp_path / "r.html").read_text()


def test_counts_profiles_not_profile_ears_and_puts_ears_in_columns(tmp_path: Path) -> None:
    """Stereo files (left, right) and a mono file (both) for 7 profiles: 7 rows, not 14 or 21."""
    names = ["normal", "N1", "N2", "N3", "N4", "mine", "S1"]
    rows = []
    for index, name in enumerate(names):
        for ear, score in (("left", 0.6), ("right", 0.4)):
            rows.append({"file": "stereo.wav", "profile": name, "ear": ear, "score": score - index / 100,
                         "status": "ok"})
        rows.append({"file": "mono.wav", "profile": name, "ear": "both", "score": 0.7, "status": "ok"})
    mine = Profile("mine", Audiogram((30,) * 8), Audiogram((50,) * 8), source="mine.csv")
    write_report(pd.DataFrame(rows), tmp_path / "r.md", profiles=[mine])
    text = (tmp_path / "r.md").read_text()
    assert "2 files, 7 profiles, 21 results (21 scored, 0 failed;" in text
    header = "| profile | severity | clean | files | mean | median | p10 | min | left ear | right ear | mono (both ears) |"
    assert header in text
    profile_rows = [r for r in text[text.index(header):].split("\n\n")[0].splitlines()[2:]]
    assert [r.split(" | ")[0][2:] for r in profile_rows] == names
    # files: the stereo file's score is the mean of its ears (0.5 for normal), the mono file's 0.7
    assert profile_rows[0] == "| normal | normal | 0.97 | 2 | 0.600 | 0.600 | 0.520 | 0.500 | 0.600 | 0.400 | 0.700 | 0 |"
    assert profile_rows[5].startswith("| mine | mild |  | 2 |")  # a profile file (better ear 30 dB): no ceiling
    assert "(left)" not in text and "(both)" not in text


def test_grid_shows_the_interval_and_only_the_worst_files_when_there_are_many(tmp_path: Path) -> None:
    rows = [{"file": f"f{i}.wav", "profile": "mild", "ear": "both", "score": 0.1 * i, "score_lo": 0.1 * i - 0.05,
             "score_hi": 0.1 * i + 0.05, "status": "ok", "model": "distilled", "model_sha256": "ab" * 32}
            for i in range(1, 6)]
    write_report(pd.DataFrame(rows), tmp_path / "r.md", grid_n=2)
    text = (tmp_path / "r.md").read_text()
    assert "Rows: the 2 with the lowest mean of 5 files." in text
    assert "| f1.wav | 0.100 (0.050–0.150) | 0.100 |" in text and "| f2.wav | 0.200 (0.150–0.250) | 0.200 |" in text
    assert "| f3.wav | 0.300" not in text.split("## Worst")[0]
    assert "| f1.wav | mild | 0.100 (0.050–0.150) |" in text  # and among the worst results
    assert "interval (score_lo–score_hi)" in text and f"distilled (sha256 {'ab' * 6}…)" in text


def test_report_rejects_unknown_format_and_tables_without_file(tmp_path: Path) -> None:
    table, _ = make_table()
    with pytest.raises(HaaqiError, match=r"r\.pdf: unsupported report format \.pdf"):
        write_report(table, tmp_path / "r.pdf")
    with pytest.raises(HaaqiError, match="no 'file' column"):
        write_report(pd.DataFrame({"score": [0.5]}), tmp_path / "r.md")
