"""`haaqi score` end to end, with tiny test-only models (see conftest.tiny_weights)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import write_music

from haaqicli.cli import main
from haaqicli.output.tables import SCORE_COLUMNS, read_table

pytestmark = pytest.mark.usefixtures("use_tiny_weights")

REQUIRED_COLUMNS = [
    "file", "profile", "ear", "model", "model_sha256", "score", "score_min", "score_p10", "worst_start_s",
    "duration_s", "sample_rate", "channels", "status", "error",
]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_folder_scores_every_file_for_every_profile(music_folder: Path, tmp_path: Path):
    out = tmp_path / "scores.csv"
    code, output = run("score", str(music_folder), "--profile", "mild", "--profile", "normal",
                       "--out", str(out), "--quiet")
    assert code == 0, output
    table = read_table(out)
    assert set(REQUIRED_COLUMNS) <= set(table.columns)
    # hidden file and notes.txt are skipped; relative paths are kept; deterministic order
    assert sorted(table["file"].unique()) == ["a_mono.wav", "b_stereo.flac", "sub/c_mono48k.wav"]
    assert (table["status"] == "ok").all()
    assert table["score"].between(0, 1).all()
    stereo = table[table["file"] == "b_stereo.flac"]
    assert sorted(stereo["ear"].unique()) == ["left", "right"]
    assert set(table[table["file"] == "a_mono.wav"]["ear"]) == {"both"}
    assert set(table["sample_rate"]) == {24000, 44100, 48000}
    assert set(table.loc[table["file"] == "b_stereo.flac", "channels"]) == {2}
    ok = table[table["status"] == "ok"]
    assert (ok["score_min"] <= ok["score"] + 1e-9).all() and (ok["score_p10"] <= ok["score"] + 1e-9).all()
    assert (ok["worst_start_s"] >= 0).all() and (ok["worst_start_s"] < ok["duration_s"]).all()


def test_bad_files_get_error_rows_and_exit_1(tmp_path: Path):
    root = tmp_path / "mixed"
    write_music(root / "good.wav", seconds=2.0)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (root / "empty.flac").write_bytes(b"")
    sf.write(root / "silent.wav", np.zeros(24000, dtype=np.float32), 24000)
    (root / "text.mp3").write_text("this is not audio")
    out = tmp_path / "scores.jsonl"
    code, output = run("score", str(root), "--out", str(out), "--quiet")
    assert code == 1, output
    table = read_table(out)
    status = dict(zip(table["file"], table["status"], strict=True))
    assert status == {"good.wav": "ok", "corrupt.wav": "error", "empty.flac": "error", "silent.wav": "error",
                      "text.mp3": "error"}
    errors = dict(zip(table["file"], table["error"], strict=True))
    assert "silent" in errors["silent.wav"]
    assert all(errors[name] for name in ("corrupt.wav", "empty.flac", "text.mp3"))
    assert "Traceback" not in output


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, music_folder: Path):
    bad_profile = tmp_path / "bad.csv"
    bad_profile.write_text("name,250,500,1000,2000,3000,4000,6000,8000\nx,10,20,30,40,50,60,70,200\n")
    code, output = run("score", str(music_folder), "--profile", str(bad_profile))
    assert code == 2
    assert "bad.csv:2" in output and "Traceback" not in output
    code, output = run("score", str(music_folder), "--profile", "no-such-profile")
    assert code == 2 and "no-such-profile" in output
    code, output = run("score", str(tmp_path / "missing"))
    assert code == 2 and "missing" in output
    code, output = run("score", str(music_folder), "--out", str(tmp_path / "x.xlsx"))
    assert code == 2
    code, output = run("score", str(music_folder), "--resume")
    assert code == 2 and "--resume needs --out" in output
    code, output = run("score", str(music_folder), "--device", "cuda:7")
    assert code == 2 and "Traceback" not in output


def test_same_input_same_scores(music_folder: Path, tmp_path: Path):
    first, second = tmp_path / "1.parquet", tmp_path / "2.parquet"
    assert run("score", str(music_folder), "--out", str(first), "-q")[0] == 0
    assert run("score", str(music_folder), "--out", str(second), "-q")[0] == 0
    a, b = read_table(first), read_table(second)
    pd.testing.assert_series_equal(a["score"], b["score"])
    pd.testing.assert_series_equal(a["score_min"], b["score_min"])


def test_per_ear_scoring_uses_each_ears_audiogram(tmp_path: Path):
    """The same signal in both channels, a profile with a normal left and a severe right ear:
    the left and right rows must differ, and match mono-file scores with those audiograms."""
    audio = write_music(tmp_path / "in" / "x.wav", seconds=3.0, channels=1)
    mono, sr = sf.read(audio, dtype="float32")
    sf.write(tmp_path / "in" / "x_stereo.wav", np.stack([mono, mono], axis=1), sr)
    profile = tmp_path / "asym.csv"
    profile.write_text("name,ear,250,500,1000,2000,3000,4000,6000,8000\n"
                       "p,left,0,0,0,0,0,0,0,0\np,right,60,65,70,75,80,85,90,90\n"
                       "leftonly,both,0,0,0,0,0,0,0,0\nrightonly,both,60,65,70,75,80,85,90,90\n")
    out = tmp_path / "s.csv"
    assert run("score", str(tmp_path / "in"), "--profile", str(profile), "--out", str(out), "-q")[0] == 0
    table = read_table(out).set_index(["file", "profile", "ear"])["score"]
    left, right = table[("x_stereo.wav", "p", "left")], table[("x_stereo.wav", "p", "right")]
    assert abs(left - right) > 1e-4
    assert left == pytest.approx(table[("x.wav", "leftonly", "both")], abs=1e-5)
    assert right == pytest.approx(table[("x.wav", "rightonly", "both")], abs=1e-5)
    # --mix mono: one row per profile, ear "both"
    mono_out = tmp_path / "m.csv"
    assert run("score", str(tmp_path / "in" / "x_stereo.wav"), "--profile", str(profile), "--mix", "mono",
               "--out", str(mono_out), "-q")[0] == 0
    assert set(read_table(mono_out)["ear"]) == {"both"}


def test_resume_skips_done_rows_and_keeps_them(music_folder: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "scores.csv"
    assert run("score", str(music_folder), "--out", str(out), "-q")[0] == 0
    first = read_table(out)
    write_music(music_folder / "new.wav", seconds=2.0, seed=9)
    import haaqicli.engine as engine
    import haaqicli.scoring.prepare as prepare

    prepared = []
    original = prepare.prepare_file

    def spy(item, *args, **kwargs):
        prepared.append(item.relative)
        return original(item, *args, **kwargs)

    hashed = []
    original_hash = engine.content_hash

    def hash_spy(path):
        hashed.append(Path(path).name)
        return original_hash(path)

    monkeypatch.setattr(prepare, "prepare_file", spy)
    monkeypatch.setattr(engine, "content_hash", hash_spy)
    assert run("score", str(music_folder), "--out", str(out), "--resume", "-q")[0] == 0
    assert prepared == ["new.wav"]
    assert sorted(hashed) == sorted(set(hashed))  # every file is hashed once, the new one included
    assert "new.wav" in hashed
    second = read_table(out)
    assert len(second) == len(first) + 1
    merged = second.merge(first, on=["file", "profile", "ear"], suffixes=("", "_before"))
    assert np.allclose(merged["score"], merged["score_before"])


def test_interrupt_keeps_finished_rows(music_folder: Path, tmp_path: Path, monkeypatch):
    import haaqicli.scoring.prepare as prepare

    out = tmp_path / "scores.csv"
    original = prepare.prepare_file
    calls = []

    def interrupt_on_second(item, *args, **kwargs):
        calls.append(item)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(item, *args, **kwargs)

    monkeypatch.setattr(prepare, "prepare_file", interrupt_on_second)
    code, _ = run("score", str(music_folder), "--out", str(out), "-q")
    assert code == 130
    table = read_table(out)
    assert list(table["file"].unique()) == ["a_mono.wav"]
    assert list(table.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS


def test_report_html_and_markdown(music_folder: Path, tmp_path: Path):
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    assert run("score", str(music_folder), "--report", str(html), "-q")[0] == 0
    text = html.read_text()
    assert "data:image/png;base64," in text and "b_stereo.flac" in text
    assert run("score", str(music_folder), "--report", str(md), "-q")[0] == 0
    assert "b_stereo.flac" in md.read_text()


def test_long_window_overlap_options(tmp_path: Path):
    path = write_music(tmp_path / "long.wav", seconds=20.0, sample_rate=16000)
    out = tmp_path / "s.csv"
    assert run("score", str(path), "--out", str(out), "--window", "6", "--hop", "3", "-q")[0] == 0
    row = read_table(out).iloc[0]
    assert row["duration_s"] == pytest.approx(20.0)
    assert 0 <= row["worst_start_s"] <= 14.0
    code, output = run("score", str(path), "--window", "4", "--hop", "5")
    assert code == 2


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_codec_degraded_versions_score_and_decode(tmp_path: Path):
    clean = write_music(tmp_path / "in" / "clean.wav", seconds=4.0, sample_rate=44100, channels=2)
    for codec, ext, rate in (("libmp3lame", "mp3", "32k"), ("libopus", "opus", "24k"), ("aac", "m4a", "48k"),
                             ("libvorbis", "ogg", "64k")):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clean), "-c:a", codec, "-b:a", rate,
                        str(tmp_path / "in" / f"coded.{ext}")], check=True)
    out = tmp_path / "s.csv"
    code, output = run("score", str(tmp_path / "in"), "--out", str(out), "--workers", "2", "-q")
    assert code == 0, output
    table = read_table(out)
    assert len(table["file"].unique()) == 5 and (table["status"] == "ok").all()


def test_rows_give_each_channels_content_bandwidth_and_a_note_names_band_limited_files(tmp_path: Path):
    """`bandwidth_hz`: where the scored channel's spectrum ends at the model's rate (audio.bandwidth).
    A stereo file whose right channel is low-passed at 6 kHz gets that in its right row only, and the
    run ends with one note naming one band-limited file; a full-band file raises none."""
    from haaqicli.audio import synth

    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal(48000 * 3)
    root = tmp_path / "in"
    root.mkdir()
    sf.write(root / "half.wav", np.stack([noise, synth.lowpass(noise, 48000, 6000.0)], axis=1), 48000)
    sf.write(root / "full.wav", noise, 48000)
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(main, ["score", str(root), "--profile", "normal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = read_table(out).set_index(["file", "ear"])["bandwidth_hz"]
    assert 6000.0 <= table[("half.wav", "right")] <= 6100.0
    assert table[("half.wav", "left")] > 11000.0 and table[("full.wav", "both")] > 11000.0
    assert result.stderr.count("note: 1 file's content ends below 10 kHz") == 1
    full = CliRunner().invoke(main, ["score", str(root / "full.wav"), "--profile", "normal"])
    assert full.exit_code == 0 and "content ends below" not in full.stderr


def test_a_note_names_files_shorter_than_the_models_training_clips(tmp_path: Path) -> None:
    """A file shorter than the 6-s training clips is scored, and the run says once that its score is an
    extrapolation; a longer file raises no such note, and exact-HAAQI rows (which have the original) never."""
    from haaqicli.output.tables import EXACT_MODEL, prediction_notes

    write_music(tmp_path / "in" / "short.wav", seconds=2.0)
    write_music(tmp_path / "in" / "long.wav", seconds=7.0, seed=1)
    result = CliRunner().invoke(main, ["score", str(tmp_path / "in"), "--profile", "normal"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("note: 1 file is shorter than the 6-s clips the models were trained on") == 1
    longer = CliRunner().invoke(main, ["score", str(tmp_path / "in" / "long.wav"), "--profile", "normal"])
    assert longer.exit_code == 0 and "shorter than" not in longer.stderr
    rows = pd.DataFrame({"file": ["a.wav", "b.wav", "c.wav"], "status": ["ok", "ok", "error"],
                         "model": ["distilled", EXACT_MODEL, "distilled"], "duration_s": [2.0, 2.0, 1.0],
                         "bandwidth_hz": [4000.0, 4000.0, 4000.0]})
    notes = prediction_notes(rows)
    assert len(notes) == 2 and all(note.startswith("1 file") for note in notes)  # a.wav only
    assert prediction_notes(rows[rows["file"] != "a.wav"]) == []


def test_models_reports_figures_from_music_that_never_chose_a_checkpoint() -> None:
    """`haaqi models` prefers recorded music left out of the checkpoint choice, then the game-music
    validation split, and shows the choosing items' figures last, marked optimistic."""
    from haaqicli.cli.score import reported_metrics

    chose = {"lcc": 0.84, "n": 7056}
    game = {"lcc": 0.85, "n": 9744}
    recorded = {"lcc": 0.82, "n": 2016, "packages": ["nexuiz-music"]}
    where, metrics = reported_metrics({"dev": chose, "validation": game,
                                       "validation-real without ufoai-music": recorded})
    assert metrics is recorded and where == "nexuiz-music, n=2016 (recorded music, never chose)"
    assert reported_metrics({"dev": chose, "validation": game}) == ("game-music validation packages, n=9744", game)
    assert reported_metrics({"dev": chose}) == ("checkpoint choice, n=7056 (optimistic)", chose)
    assert reported_metrics({}) == ("-", {})


def test_terminal_table_fits_80_columns_with_reasons_below(music_folder: Path, monkeypatch: pytest.MonkeyPatch):
    """Every figure of a row stays readable in an 80-column terminal (no cut names or scores); a failed
    file's row says "error" and its reason is printed once below the table, not per profile and ear."""
    monkeypatch.setenv("COLUMNS", "80")
    (music_folder / "broken.wav").write_bytes(b"RIFF....not audio")
    code, output = run("score", str(music_folder), "--profile", "mild", "--profile", "clinic")
    assert code == 1
    rows = [line for line in output.splitlines() if line.startswith(("a_mono", "b_stereo", "sub/", "broken"))]
    assert rows and all(len(line) <= 80 and "…" not in line for line in rows), "\n".join(rows)
    assert any("P01-presbycusis" in line for line in rows)  # the clinic's longest profile name, whole
    assert sum(line.startswith("error: ") and "broken.wav" in line for line in output.splitlines()) == 1
