"""Issue 13's sharp edges: short and surround files, unwritable outputs, signals, resume and baselines
keyed by what was scored, one level definition, compare's missing columns, check's scoring label."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import write_music

import haaqicli
from haaqicli.audio import MIN_DURATION_S, DownmixWarning
from haaqicli.ci.evaluate import METHOD_TEXT, NOT_COMPARED, evaluate
from haaqicli.ci.policy import Thresholds
from haaqicli.cli import main
from haaqicli.output.tables import read_table

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def run(*args: str, obj: dict | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), obj=obj, catch_exceptions=False)
    return result.exit_code, result.output


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def write_surround(path: Path, seconds: float = 1.0, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    channels = [0.05 * np.sin(2 * np.pi * f * t) for f in (220, 277, 330, 440, 554, 660)]  # 5.1: six
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack(channels, axis=1).astype(np.float32), sr)
    return path


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["score", "x.wav", "--out", "s.json"], "error: Invalid value for --out: s.json: extension must be one of"),
    (["score", "x.wav", "--spl", "loud"], "error: Invalid value for '--spl': 'loud' is not a valid float range."),
    (["score"], "error: Missing argument 'INPUTS...'."),
    (["score", "x.wav", "--bogus"], "error: No such option '--bogus'"),
    (["scor"], "error: No such command 'scor'."),
])
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    """Click's usage block is not printed before a usage error: one line, as every other error."""
    code, output = run(*args)
    line = one_line(output)
    assert code == 2 and line.startswith(message) and line.endswith("--help')"), output


def test_short_files_get_an_error_row_not_a_score(use_tiny_weights: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_music(root / "good.wav", seconds=2.0)
    sf.write(root / "one_sample.wav", np.array([0.1], dtype=np.float32), 24000)
    write_music(root / "short.wav", seconds=MIN_DURATION_S * 0.8)
    out = tmp_path / "s.csv"
    code, output = run("score", str(root), "--out", str(out), "-q")
    assert code == 1, output
    table = read_table(out).set_index("file")
    assert table.loc["good.wav", "status"] == "ok"
    for name in ("one_sample.wav", "short.wav"):
        assert table.loc[name, "status"] == "error" and np.isnan(table.loc[name, "score"])
        assert f"shorter than the {MIN_DURATION_S:g} s minimum" in table.loc[name, "error"]


def test_short_pair_gets_an_error_row(tmp_path: Path) -> None:
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference import score_pairs

    write_music(tmp_path / "ref.wav", seconds=1.0, sample_rate=16000)
    write_music(tmp_path / "proc.wav", seconds=0.1, sample_rate=16000)
    table = score_pairs([(tmp_path / "ref.wav", tmp_path / "proc.wav")], resolve_profiles(["normal"]), device="cpu")
    row = table.iloc[0]
    assert row["status"] == "error" and "minimum" in row["error"] and "proc.wav" in row["error"]


@needs_ffmpeg
def test_surround_is_downmixed_with_a_warning_and_its_true_channel_count(use_tiny_weights: Path,
                                                                         tmp_path: Path) -> None:
    surround = write_surround(tmp_path / "in" / "surround.wav")
    out = tmp_path / "s.csv"
    with pytest.warns(DownmixWarning, match=r"surround.wav: 6 channels downmixed to stereo"):
        code, output = run("score", str(surround), "--out", str(out), "-q")
    assert code == 0, output
    table = read_table(out)
    assert list(table["channels"]) == [6, 6] and list(table["ear"]) == ["left", "right"]


@needs_ffmpeg
def test_surround_pair_records_its_channel_count(tmp_path: Path) -> None:
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference import score_pairs

    surround = write_surround(tmp_path / "surround.wav")
    with pytest.warns(DownmixWarning, match="6 channels downmixed"):
        table = score_pairs([(surround, surround)], resolve_profiles(["normal"]), device="cpu")
    assert (table["status"] == "ok").all() and (table["channels"] == 6).all()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path: Path, music_folder: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import haaqicli.engine as engine

    def nothing_may_be_scored(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("scoring started before the outputs were checked")

    monkeypatch.setattr(engine, "score_inputs", nothing_may_be_scored)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        ("score", "--out", blocker / "x.csv"), ("score", "--report", blocker / "sub" / "r.html"),
        ("check", "--junit", blocker / "j.xml"), ("check", "--summary", blocker / "s.md"),
        ("check", "--out", blocker / "x.csv"),
    ]
    for command, option, path in cases:
        code, output = run(command, str(music_folder), option, str(path),
                           obj={"scorer": nothing_may_be_scored})
        assert code == 2, (command, option, output)
        line = one_line(output)
        assert line.startswith(f"error: {option} {path}: cannot write there"), line
    code, output = run("reference", "--reference", str(music_folder), str(music_folder), "--out",
                       str(blocker / "x.csv"))
    assert code == 2 and "is not a folder" in one_line(output)


# ---------------------------------------------------------------------------------------------- signals


@needs_ffmpeg
def test_reference_prints_the_downmix_warning_as_one_line(tmp_path: Path) -> None:
    """A real process (pytest replaces how warnings are shown in this one): every command, not only
    `score`, prints a library warning as one `warning: ...` line, without Python's source line."""
    for folder in ("ref", "proc"):
        write_surround(tmp_path / folder / "surround.wav")
    env = {"PYTHONPATH": str(Path(haaqicli.__file__).parents[1]), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from haaqicli.cli import main; main()", "reference", "--reference",
           str(tmp_path / "ref"), str(tmp_path / "proc"), "--profile", "normal", "--workers", "1", "-q",
           "--out", str(tmp_path / "r.csv")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"warning: {tmp_path / 'proc' / 'surround.wav'}: 6 channels downmixed to stereo (ffmpeg's "
                     "standard matrix) for scoring; its rows keep channels=6"], done.stderr


@needs_ffmpeg
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_keeps_rows_finished_before_the_first_flush(signum: int, code: int, tiny_weights: Path,
                                                           tmp_path: Path) -> None:
    """A real process: the 5.1 file's rows are finished (its downmix warning is printed once they exist)
    well before the table's first periodic flush; the signal comes while the long file is scored."""
    surround = write_surround(tmp_path / "in" / "a_surround.wav")
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "in" / "b_long.wav", (0.05 * rng.standard_normal(8000 * 600)).astype(np.float32), 8000)
    out = tmp_path / "scores.csv"
    env = {"HAAQI_WEIGHTS": str(tiny_weights), "PYTHONPATH": str(Path(haaqicli.__file__).parents[1]),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from haaqicli.cli import main; main()", "score", str(surround),
           str(tmp_path / "in" / "b_long.wav"), "--out", str(out), "--batch-size", "1", "-q"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        seen = []
        while time.monotonic() < deadline:
            line = process.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            seen.append(line)
            if "downmixed" in line:
                break
        assert any("downmixed" in line for line in seen), "".join(seen)
        process.send_signal(signum)
        rest = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, rest
    assert f"interrupted: 2 finished rows kept in {out}" in rest and "Traceback" not in rest, rest
    table = read_table(out)
    assert list(table["file"]) == ["a_surround.wav", "a_surround.wav"] and (table["status"] == "ok").all()


# ---------------------------------------------------------------------------------------------- resume, baselines


def test_resume_rescores_an_edited_profile_and_another_level(use_tiny_weights: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import haaqicli.scoring.prepare as prepare

    write_music(tmp_path / "in" / "a.wav", seconds=1.5)
    profile = tmp_path / "clinic.csv"
    profile.write_text("name,250,500,1000,2000,3000,4000,6000,8000\npat,10,10,20,30,40,50,60,60\n")
    out = tmp_path / "s.csv"
    assert run("score", str(tmp_path / "in"), "--profile", str(profile), "--out", str(out), "-q")[0] == 0
    first = read_table(out)
    assert first["spl"].tolist() == [65.0] and len(first["audiogram_hash"].iloc[0]) == 16

    prepared: list[str] = []
    original = prepare.prepare_file

    def spy(item, *args, **kwargs):  # type: ignore[no-untyped-def]
        prepared.append(item.relative)
        return original(item, *args, **kwargs)

    monkeypatch.setattr(prepare, "prepare_file", spy)
    assert run("score", str(tmp_path / "in"), "--profile", str(profile), "--out", str(out), "--resume", "-q")[0] == 0
    assert prepared == []  # same file, profile values, level and model: reused
    # the same name with other values: rescored, and the row records the new values
    profile.write_text("name,250,500,1000,2000,3000,4000,6000,8000\npat,40,40,50,60,70,80,90,90\n")
    assert run("score", str(tmp_path / "in"), "--profile", str(profile), "--out", str(out), "--resume", "-q")[0] == 0
    assert prepared == ["a.wav"]
    second = read_table(out)
    assert len(second) == 1 and second["audiogram_hash"].iloc[0] != first["audiogram_hash"].iloc[0]
    # another --spl: rescored
    code, output = run("score", str(tmp_path / "in"), "--profile", str(profile), "--out", str(out), "--resume",
                       "--spl", "75", "-q")
    assert code == 0, output
    assert prepared == ["a.wav", "a.wav"]
    assert read_table(out)["spl"].tolist() == [75.0]


def _rows(score: float, spl: float, gram: str) -> pd.DataFrame:
    return pd.DataFrame([{"file": "a.wav", "profile": "mild", "ear": "both", "model": "m", "model_sha256": "s" * 64,
                          "score": score, "status": "ok", "error": "", "spl": spl, "audiogram_hash": gram}])


def test_baseline_matches_on_level_and_audiogram_values() -> None:
    thresholds = Thresholds(max_drop=0.01)
    baseline = _rows(0.9, 65.0, "aaaa")
    same = evaluate(_rows(0.8, 65.0, "aaaa"), cli=thresholds, baseline=baseline)
    assert same.exit_code == 1 and same.cases[0].baseline == pytest.approx(0.9)
    for now in (_rows(0.8, 80.0, "aaaa"), _rows(0.8, 65.0, "bbbb")):
        report = evaluate(now, cli=thresholds, baseline=baseline)
        assert report.exit_code == 0 and report.cases[0].baseline is None
        assert report.cases[0].messages == [NOT_COMPARED]
        assert any("not compared" in w and "'mild'" in w for w in report.warnings)
    # tables written before rows recorded them still compare
    old = baseline.drop(columns=["spl", "audiogram_hash"])
    assert evaluate(_rows(0.8, 65.0, "aaaa"), cli=thresholds, baseline=old).exit_code == 1


# ---------------------------------------------------------------------------------------------- levels


def test_level_outside_the_trained_range_warns(use_tiny_weights: Path, tmp_path: Path) -> None:
    from haaqicli.util.levels import LevelWarning, trained_spl_range, untrained_level_message

    path = write_music(tmp_path / "a.wav", seconds=1.0)
    with pytest.warns(LevelWarning, match=r"level 85 dB SPL \(--spl\): the distilled model was trained on labels at 65 dB SPL only"):
        assert run("score", str(path), "--spl", "85", "-q")[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", LevelWarning)
        assert run("score", str(path), "--spl", "65", "-q")[0] == 0
    # the range comes from the model's metadata where it is recorded, so it widens with the training data
    assert trained_spl_range({}) == (65.0, 65.0)
    assert trained_spl_range({"spl_range": [55, 85]}) == (55.0, 85.0)
    assert untrained_level_message(80, "m", {"spl_range": [55, 85]}) == ""
    assert "55-85 dB SPL" in untrained_level_message(90, "m", {"spl_range": [55, 85]})


def test_api_uses_the_same_level_and_warns_the_same(use_tiny_weights: Path) -> None:
    import torch

    from haaqicli.api import HAAQIPredictor
    from haaqicli.util.levels import LevelWarning

    predictor = HAAQIPredictor.from_pretrained("distilled")
    wave = torch.from_numpy(haaqicli.audio.synth.music(1.0, 24000, channels=1, seed=0)[0]).float()[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LevelWarning)
        predictor(wave, torch.zeros(1, 8), 24000, spl=65)
    with pytest.warns(LevelWarning, match="level 80 dB SPL"):
        predictor(wave, torch.zeros(1, 8), 24000, spl=80)


def test_shipped_models_record_their_trained_levels() -> None:
    """The shipped weights were trained on labels whose reference levels were drawn from 50-85 dB SPL
    (`data.corpus.SPL_RANGE`), so --spl inside that range is no extrapolation and outside it warns."""
    from haaqicli.models.registry import list_models
    from haaqicli.util.levels import untrained_level_message

    for info in list_models(Path(haaqicli.__file__).parents[2] / "weights"):
        assert info.training["spl_range"] == [50.0, 85.0]
        for inside in (50, 65, 85):
            assert untrained_level_message(inside, info.name, info.training) == ""
        for outside in (40, 95):
            assert untrained_level_message(outside, info.name, info.training)


def test_label_and_exact_level_share_one_definition() -> None:
    from haaqicli.data.labels import label_arguments
    from haaqicli.util.levels import reference_level1

    x = haaqicli.audio.synth.music(1.0, 16000, channels=2, seed=3)
    assert label_arguments(x[0], x[0], 16000, [0] * 8)["level1"] == reference_level1(x[0], 65.0)
    assert reference_level1(x * 2, 65.0) == pytest.approx(reference_level1(x, 65.0) - 20 * np.log10(2))


# ---------------------------------------------------------------------------------------------- compare, check


def test_compare_names_the_table_that_lacks_columns(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    _rows(0.9, 65, "a").to_csv(good, index=False)
    pd.DataFrame({"file": ["a.wav"], "value": [0.9]}).to_csv(bad, index=False)
    code, output = run("compare", str(good), str(bad))
    assert code == 2
    line = one_line(output)
    assert line.startswith(f"error: {bad} lacks column(s): profile, score"), line
    code, output = run("compare", str(bad), str(good))
    assert code == 2 and str(bad) in one_line(output)


def test_check_says_whether_scores_are_exact_or_predicted(tmp_path: Path) -> None:
    predicted, exact = tmp_path / "p.csv", tmp_path / "e.csv"
    _rows(0.9, 65, "a").to_csv(predicted, index=False)
    _rows(0.9, 65, "a").assign(model="reference", model_sha256="").to_csv(exact, index=False)
    for table, method in ((predicted, "predicted"), (exact, "exact")):
        junit = tmp_path / f"{method}.xml"
        code, output = run("check", "--scores", str(table), "--min-score", "0.5", "--junit", str(junit))
        assert code == 0, output
        assert f"scores: {METHOD_TEXT[method]}" in output.replace("\n", " ") or "scores: " in output
        root = ET.parse(junit).getroot()
        assert root.find(".//property[@name='scoring']").get("value") == METHOD_TEXT[method]
        assert f"({method})" in root.find(".//testcase/system-out").text


def test_check_reference_segments_long_inputs_by_default_and_says_so(tmp_path: Path) -> None:
    from haaqicli.cli.ci import check

    default = next(p for p in check.params if p.name == "segment_seconds").default
    assert default == 30.0
    refs, proc = tmp_path / "refs", tmp_path / "proc"
    write_music(refs / "song.wav", seconds=2.0, sample_rate=16000)
    write_music(proc / "song.wav", seconds=2.0, sample_rate=16000)
    code, output = run("check", str(proc), "--reference", str(refs), "--segment-seconds", "1", "-q")
    assert code == 0, output
    assert "1 file(s) longer than 1.5 s were scored in 1-s segments" in output.replace("\n", " ")


def test_interrupted_check_writes_the_finished_rows_and_evaluates_no_gate(tmp_path: Path,
                                                                         music_folder: Path) -> None:
    from haaqicli.util.interrupts import RunInterrupted

    def interrupted_scorer(inputs, settings):  # type: ignore[no-untyped-def]
        raise RunInterrupted("2 finished rows", rows=_rows(0.9, 65, "a").assign(file=["x.wav"]))

    out = tmp_path / "partial.csv"
    code, output = run("check", str(music_folder), "--min-score", "0.5", "--out", str(out),
                       obj={"scorer": interrupted_scorer})
    assert code == 130
    assert one_line(output) == f"interrupted: 2 finished rows kept in {out}; no gate was evaluated"
    assert list(read_table(out)["file"]) == ["x.wav"]


def test_interrupted_reference_keeps_the_finished_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import haaqicli.reference.pairs as pairs_module

    refs, proc = tmp_path / "refs", tmp_path / "proc"
    for name in ("a.wav", "b.wav"):
        write_music(refs / name, seconds=1.0, sample_rate=16000)
        write_music(proc / name, seconds=1.0, sample_rate=16000)
    original = pairs_module.score_pair
    calls = []

    def interrupt_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pairs_module, "score_pair", interrupt_second)
    out = tmp_path / "exact.csv"
    # one process (--workers 1): the patched score_pair is this process's (pairs run in workers by default)
    code, output = run("reference", "--reference", str(refs), str(proc), "--out", str(out), "--device", "cpu", "-q",
                       "--workers", "1")
    assert code == 130 and one_line(output) == f"interrupted: 1 finished rows kept in {out}", output
    table = read_table(out)
    assert [Path(p).name for p in table["processed"]] == ["a.wav"] and (table["status"] == "ok").all()
    calls.clear()
    code, output = run("check", str(proc), "--reference", str(refs), "--out", str(out), "--device", "cpu", "-q",
                       "--workers", "1")
    assert code == 130, output
    assert one_line(output) == f"interrupted: 1 finished rows kept in {out}; no gate was evaluated"
    assert list(read_table(out)["file"]) == ["a.wav"]


def test_exported_models_record_the_levels_they_were_trained_at() -> None:
    """Items with a per-item level widen the recorded range, so the warning's range widens with them."""
    from haaqicli.training.train import _label_levels
    from haaqicli.util.levels import untrained_level_message

    assert _label_levels(pd.DataFrame({"spl": [50.0, 72.5, 85.0]})) == [50.0, 85.0]
    assert _label_levels(pd.DataFrame({"package": ["x"]})) == [65.0, 65.0]
    assert untrained_level_message(80, "m", {"spl_range": _label_levels(pd.DataFrame({"spl": [50.0, 85.0]}))}) == ""
