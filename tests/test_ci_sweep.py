"""`haaqi sweep`: real ffmpeg round trips on a 2 s chord, ladder logic with a fast fake scorer."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from haaqicli.ci import sweep as sweep_lib
from haaqicli.cli import main
from haaqicli.scoring import ScoreOptions

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

SR = 44100
NAME = re.compile(r"i(\d+)-(original|(\w+)-(\d+)k)\.wav$")


@pytest.fixture()
def chord(tmp_path: Path) -> Path:
    import soundfile as sf

    t = np.arange(2 * SR) / SR
    left = sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392)) * 0.05
    right = sum(np.sin(2 * np.pi * f * t) for f in (196, 247, 294)) * 0.05
    path = tmp_path / "chord.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), SR)
    return path


CURVE = {  # fake "quality" per kb/s: non-monotone at 48 so the robust rule is exercised
    32: 0.55, 48: 0.82, 64: 0.75, 128: 0.9, 192: 0.95,
}


def fake_scorer(seen: list | None = None):  # type: ignore[no-untyped-def]
    """Scores from the rung's bitrate (parsed from the decoded file name); checks the decoded WAV."""

    def scorer(inputs, settings):  # type: ignore[no-untyped-def]
        import soundfile as sf

        rows = []
        for path in map(Path, inputs):
            info = sf.info(path)
            assert info.samplerate == SR and info.channels == 2 and abs(info.duration - 2.0) < 0.1
            match = NAME.search(path.name)
            assert match, path.name
            base = 1.0 if match.group(2) == "original" else CURVE[int(match.group(4))]
            if seen is not None:
                seen.append(path.name)
            for offset, profile in enumerate(settings.profiles):
                rows.append({"file": path.name, "profile": profile, "ear": "both", "status": "ok",
                             "score": base - 0.1 * offset, "model": "fake", "model_sha256": "f" * 64})
        return pd.DataFrame(rows)

    return scorer


def invoke(args, scorer=None, exact_fn=None):  # type: ignore[no-untyped-def]
    obj = {"scorer": scorer or fake_scorer()}
    if exact_fn is not None:
        obj["exact_fn"] = exact_fn
    return CliRunner().invoke(main, ["sweep", *args], obj=obj, catch_exceptions=False)


def test_sweep_ladder_table_answer_plot(chord: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    seen: list[str] = []
    out, answer, plot = tmp_path / "ladder.csv", tmp_path / "answer.csv", tmp_path / "ladder.png"
    result = invoke([str(chord), "--fast", "--codec", "mp3,opus", "--bitrates", "32,128", "--target", "0.8",
                     "--profile", "normal", "--profile", "mild", "--out", str(out), "--answer", str(answer),
                     "--plot", str(plot)], scorer=fake_scorer(seen))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    # original + 2 codecs x 2 rungs, x 2 profiles
    assert len(table) == 5 * 2
    assert set(table["status"]) == {"ok"}
    assert sorted(seen) == sorted(["i0000-original.wav", "i0000-mp3-32k.wav", "i0000-mp3-128k.wav",
                                   "i0000-opus-32k.wav", "i0000-opus-128k.wav"])
    coded = table[table["codec"] != "original"]
    # Real encodes: the measured bitrate is near the requested one.
    assert np.all(np.abs(coded["actual_kbps"] / coded["bitrate_kbps"] - 1) < 0.5)
    best = pd.read_csv(answer).set_index(["codec", "profile"])
    assert best.loc[("mp3", "normal"), "lowest_kbps"] == 128  # 0.9 >= 0.8, 32 kb/s 0.55 fails
    assert best.loc[("opus", "mild"), "lowest_kbps"] == 128  # 0.8 >= 0.8
    marked = table[table["lowest"]]
    assert set(zip(marked["codec"], marked["bitrate_kbps"], strict=True)) == {("mp3", 128), ("opus", 128)}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lowest bitrate meeting target 0.8" in result.output
    # the model's scores are labelled a preview in the tables and the answer
    assert "predicted (preview)" in result.output and "preview:" in result.output
    assert set(table["method"]) == {"predicted"} and set(pd.read_csv(answer)["method"]) == {"predicted"}
    assert np.allclose(table["score"], table["score_predicted"]) and table["score_exact"].isna().all()
    # Temp files are cleaned up.
    assert list((tmp_path / "tmp").iterdir()) == []


def test_unsupported_rungs_are_reported(chord: Path, tmp_path: Path) -> None:
    out = tmp_path / "ladder.csv"
    # mp3 24 kb/s is outside MPEG-1 Layer III (skipped before encoding);
    # libvorbis rejects 32 kb/s for 44.1 kHz stereo at run time.
    result = invoke([str(chord), "--fast", "--codec", "mp3,vorbis", "--bitrates", "24,32,128", "--target", "0.5",
                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mp3 24 kb/s" in result.output and "not tried" in result.output
    table = pd.read_csv(out)
    vorbis32 = table[(table["codec"] == "vorbis") & (table["bitrate_kbps"] == 32)]
    assert list(vorbis32["status"]) == ["unsupported"]
    assert "libvorbis rejected 32 kb/s" in vorbis32["error"].iloc[0]
    assert 24 not in set(table.loc[table["codec"] == "mp3", "bitrate_kbps"])


def test_lowest_bitrate_is_robust_to_a_lucky_rung() -> None:
    rows = []
    for kbps, score in CURVE.items():
        for name, shift in (("x.wav", 0.0), ("y.wav", -0.01)):
            rows.append({"input": name, "codec": "aac", "bitrate_kbps": kbps, "profile": "normal",
                         "score": score + shift, "score_exact": np.nan, "status": "ok"})
    table = pd.DataFrame(rows)
    answer = sweep_lib.lowest_bitrates(table, target=0.8).iloc[0]
    # 48 kb/s meets 0.8 but 64 does not: the answer is 128, not 48.
    assert answer["lowest_kbps"] == 128 and answer["score_at_lowest"] == pytest.approx(0.89)
    # min over inputs vs mean over inputs
    assert sweep_lib.lowest_bitrates(table, target=0.895, criterion="min").iloc[0]["lowest_kbps"] == 192
    assert sweep_lib.lowest_bitrates(table, target=0.895, criterion="mean").iloc[0]["lowest_kbps"] == 128
    assert np.isnan(sweep_lib.lowest_bitrates(table, target=0.99).iloc[0]["lowest_kbps"])


def test_codec_limits() -> None:
    assert sweep_lib.CODECS["opus"].accepts(320, channels=2)
    assert not sweep_lib.CODECS["opus"].accepts(320, channels=1)
    assert not sweep_lib.CODECS["mp2"].accepts(24, channels=2)
    assert sweep_lib.parse_bitrates("128k, 64") == (64, 128)
    with pytest.raises(Exception, match="unknown codec 'flac'"):
        sweep_lib.parse_codecs("mp3,flac")


def test_missing_ffmpeg_is_one_line(chord: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_lib.shutil, "which", lambda name: None)
    result = invoke([str(chord), "--codec", "mp3"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ffmpeg not found"), result.output


def rms_exact(calls: list):  # type: ignore[no-untyped-def]
    """An injected exact scorer: 1 - RMS difference between the decoded original and the decoded rung."""

    def exact_fn(pairs, settings):  # type: ignore[no-untyped-def]
        import soundfile as sf

        rows = []
        for reference, processed in pairs:
            calls.append(Path(processed).name)
            original, decoded = sf.read(reference, always_2d=True)[0].T, sf.read(processed, always_2d=True)[0].T
            assert original.shape[0] == decoded.shape[0] == 2
            n = min(original.shape[1], decoded.shape[1])
            error = float(np.sqrt(np.mean((original[:, :n] - decoded[:, :n]) ** 2)))
            rows += [{"processed": str(processed), "profile": p, "ear": "both", "score": 1.0 - error,
                      "status": "ok", "error": ""} for p in settings.profiles]
        return pd.DataFrame(rows)

    return exact_fn


def test_exact_by_default_decides_the_answer(chord: Path, tmp_path: Path) -> None:
    """Without --fast the model is not run: every rung, the original included (its ceiling), gets the
    exact score, and the answer, table and plot use it."""
    calls: list[str] = []
    out, answer, plot = tmp_path / "ladder.csv", tmp_path / "answer.csv", tmp_path / "ladder.png"

    def no_model(inputs, settings):  # type: ignore[no-untyped-def]
        raise AssertionError("the model must not score a default (exact) sweep")

    result = invoke([str(chord), "--codec", "aac", "--bitrates", "32,128", "--target", "0.9", "--out", str(out),
                     "--answer", str(answer), "--plot", str(plot)], scorer=no_model, exact_fn=rms_exact(calls))
    assert result.exit_code == 0, result.output
    assert sorted(calls) == ["i0000-aac-128k.wav", "i0000-aac-32k.wav", "i0000-original.wav"]
    table = pd.read_csv(out)
    assert set(table["method"]) == {"exact"} and table["score_predicted"].isna().all()
    assert np.allclose(table["score"], table["score_exact"])
    assert table.loc[table["codec"] == "original", "score"].iloc[0] == pytest.approx(1.0)
    best = pd.read_csv(answer).iloc[0]
    expected = 32 if table.loc[table["bitrate_kbps"] == 32, "score"].iloc[0] >= 0.9 else 128
    assert best["method"] == "exact" and best["lowest_kbps"] == expected
    assert "exact HAAQI" in result.output and "preview" not in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fast_with_exact_keeps_both_columns(chord: Path, tmp_path: Path) -> None:
    calls: list[str] = []
    out = tmp_path / "ladder.csv"
    result = invoke([str(chord), "--fast", "--codec", "aac", "--bitrates", "64", "--exact", "--out", str(out)],
                    exact_fn=rms_exact(calls))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert sorted(calls) == ["i0000-aac-64k.wav", "i0000-original.wav"]
    assert table["score_exact"].notna().all() and set(table["method"]) == {"predicted"}
    assert np.allclose(table["score"], table["score_predicted"])
    assert "exact" in result.output and "preview" in result.output


def test_real_exact_haaqi_round_trip(chord: Path) -> None:
    """End to end through the real reference HAAQI (alignment + compute_haaqi) on one rung."""
    settings = ScoreOptions(profiles=("normal",))
    result = sweep_lib.run_sweep([chord], [sweep_lib.CODECS["mp3"]], [32, 192], settings, target=0.5,
                                 scorer=fake_scorer())
    exact = result.table[result.table["codec"] == "mp3"].set_index("bitrate_kbps")["score_exact"]
    assert 0 < exact[32] < exact[192] <= 1.0
    assert result.method == "exact" and result.table["score"].equals(result.table["score_exact"])


def test_real_engine_scores_the_ladder(use_tiny_weights: Path, tmp_path: Path) -> None:
    """End to end through the real engine (tiny test weights) on one ffmpeg rung."""
    import soundfile as sf

    t = np.arange(SR) / SR
    path = tmp_path / "tone.wav"
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    settings = ScoreOptions(profiles=("normal",), progress=False)
    result = sweep_lib.run_sweep([path], [sweep_lib.CODECS["aac"]], [64], settings, target=0.0, fast=True)
    table = result.table
    assert list(table["codec"]) == ["original", "aac"]
    assert (table["status"] == "ok").all() and table["score"].between(0, 1).all()
    assert result.answer.iloc[0]["lowest_kbps"] == 64  # target 0 is always met


def test_empty_ladder_exits_2_with_one_line(tmp_path: Path) -> None:
    import soundfile as sf

    mono = tmp_path / "mono.wav"
    sf.write(mono, (0.1 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32), SR)
    # mp3 stops at 320, aac at 320, opus at 256 kb/s for one channel: the default codecs have no rung
    result = invoke([str(mono), "--bitrates", "500"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: empty ladder"), result.output


def test_unwritable_outputs_are_refused_before_encoding(chord: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    def no_model(inputs, settings):  # type: ignore[no-untyped-def]
        raise AssertionError("nothing may be scored")

    for option in ("--out", "--answer", "--plot"):
        path = blocker / ("x.png" if option == "--plot" else "x.csv")
        result = invoke([str(chord), "--codec", "aac", "--bitrates", "64", option, str(path)], scorer=no_model,
                        exact_fn=no_model)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {option} {path}: cannot write"), result.output


def test_fast_sweep_warns_when_its_preview_cannot_rank_the_rungs(chord: Path) -> None:
    def flat_scorer(inputs, settings):  # type: ignore[no-untyped-def]
        rows = [{"file": Path(path).name, "profile": "normal", "ear": "both", "status": "ok", "score": 0.89,
                 "score_lo": 0.7, "score_hi": 0.95, "model": "fake", "model_sha256": "f" * 64} for path in inputs]
        return pd.DataFrame(rows)

    result = invoke([str(chord), "--fast", "--codec", "opus", "--bitrates", "32,128"], scorer=flat_scorer)
    assert result.exit_code == 0, result.output
    assert "warning: opus, normal: the predicted curve is flat within the interval" in result.output
    rising = invoke([str(chord), "--fast", "--codec", "opus", "--bitrates", "32,128"], scorer=fake_scorer())
    assert "predicted curve" not in rising.output
