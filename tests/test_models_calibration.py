"""Intervals of predicted scores: the fit, storage keyed by the weights, and the score columns."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import synthetic_residuals, write_music
from scipy.stats import norm

from haaqicli.models.calibration import (
    CalibrationWarning,
    fit_calibration,
    load_calibration,
    measure_coverage,
    save_calibration,
)
from haaqicli.util.errors import HaaqiError

SHA = "ab" * 32


def test_fit_recovers_known_residual_quantiles_per_grade():
    predicted, exact, pta = synthetic_residuals(n=40_000, seed=1)
    calibration = fit_calibration(predicted, exact, pta, model="m", weights_sha256=SHA, min_per_bin=500)
    z = norm.ppf(0.9)  # the 90th percentile of N(0, 1)
    for grade, loss in (("normal", 0.0), ("mild", 25.0), ("moderate", 45.0), ("severe", 70.0)):
        fit = calibration.grades[grade]
        sigma = 0.1 * (1 + loss / 60)
        assert len(fit.centres) == 6 and list(fit.centres) == sorted(fit.centres)
        assert np.allclose(fit.lo, -z * sigma, atol=0.15 * sigma), grade
        assert np.allclose(fit.hi, z * sigma, atol=0.15 * sigma), grade
    # grades the data did not reach borrow the nearest fitted one
    assert calibration.interval(0.5, 55.0) == calibration.interval(0.5, 45.0)  # moderately severe -> moderate
    assert calibration.interval(0.5, 95.0) == calibration.interval(0.5, 70.0)  # profound -> severe


def test_nominal_coverage_holds_on_fresh_data_and_widths_follow_the_loss():
    predicted, exact, pta = synthetic_residuals(n=6000, seed=2)
    calibration = fit_calibration(predicted, exact, pta, model="m", weights_sha256=SHA)
    p2, e2, a2 = synthetic_residuals(n=6000, seed=3)
    inner = (p2 > 0.3) & (p2 < 0.7)  # away from the [0, 1] clipping
    measured = measure_coverage(calibration, p2[inner], e2[inner], a2[inner])
    assert measured["coverage"] == pytest.approx(0.8, abs=0.03)
    widths = [measured["grades"][g]["mean_width"] for g in ("normal", "mild", "moderate", "severe")]
    assert widths == sorted(widths) and widths[-1] > 1.8 * widths[0]


def test_interval_contains_the_score_stays_in_range_and_is_deterministic():
    predicted, exact, pta = synthetic_residuals(n=3000, seed=4)
    exact = exact + 0.3  # residuals all far above: the fitted lower bound would exceed the score
    first = fit_calibration(predicted, exact, pta, model="m", weights_sha256=SHA)
    again = fit_calibration(predicted, exact, pta, model="m", weights_sha256=SHA)
    assert {**first.to_dict(), "created": ""} == {**again.to_dict(), "created": ""}
    scores = np.linspace(0.0, 1.0, 101)
    for loss in (0.0, 30.0, 100.0):
        lo, hi = first.interval(scores, loss)
        assert ((lo <= scores) & (scores <= hi)).all()
        assert ((0 <= lo) & (hi <= 1)).all()
        assert np.array_equal(lo, again.interval(scores, loss)[0])
    lo, hi = first.interval([np.nan, 0.5], [20.0, np.nan])
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_fit_refuses_too_few_items():
    with pytest.raises(HaaqiError, match="too few"):
        fit_calibration([0.5] * 10, [0.6] * 10, [30.0] * 10, model="m", weights_sha256=SHA)


@pytest.fixture()
def weights(tiny_weights: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    return folder


def _sha(folder: Path, model: str) -> str:
    return json.loads((folder / "manifest.json").read_text())["models"][model]["sha256"]


def test_saved_calibration_is_listed_in_the_manifest_and_loads_for_its_weights(weights: Path):
    sha = _sha(weights, "distilled")
    calibration = fit_calibration(*synthetic_residuals(seed=5), model="distilled", weights_sha256=sha)
    path = save_calibration(calibration, weights)
    entry = json.loads((weights / "manifest.json").read_text())["models"]["distilled"]["calibration"]
    assert entry["file"] == path.name == "distilled.calibration.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_calibration("distilled", sha, weights)
    assert loaded is not None and loaded.interval(0.4, 30.0) == calibration.interval(0.4, 30.0)
    with pytest.raises(HaaqiError, match="fitted on weights"):
        save_calibration(fit_calibration(*synthetic_residuals(), model="distilled", weights_sha256=SHA), weights)


def test_calibration_of_other_weights_or_a_changed_file_is_ignored_with_a_warning(weights: Path):
    sha = _sha(weights, "distilled")
    with pytest.warns(CalibrationWarning, match="not the loaded"):
        assert load_calibration("distilled", SHA, weights) is None
    path = weights / "distilled.calibration.json"
    path.write_text(path.read_text().replace('"coverage": 0.8', '"coverage": 0.9'))
    with pytest.warns(CalibrationWarning, match="sha256 differs"):
        assert load_calibration("distilled", sha, weights) is None
    path.unlink()
    with pytest.warns(CalibrationWarning, match="no calibration"):
        assert load_calibration("distilled", sha, weights) is None


def test_score_rows_carry_ordered_intervals(use_tiny_weights: Path, tmp_path: Path):
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.engine import score_inputs
    from haaqicli.scoring import ScoreOptions

    write_music(tmp_path / "in" / "mono.wav", seconds=7.0, seed=1)
    write_music(tmp_path / "in" / "stereo.flac", seconds=4.0, sample_rate=44100, channels=2, seed=2)
    profiles = resolve_profiles(["normal", "N3", "asymmetric"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        first = score_inputs([tmp_path / "in"], profiles, ScoreOptions(device="cpu"), progress=False).table
    again = score_inputs([tmp_path / "in"], profiles, ScoreOptions(device="cpu"), progress=False).table
    columns = list(first.columns)
    assert columns.index("score_lo") == columns.index("score") + 1 and columns.index("score_hi") == columns.index("score") + 2
    assert len(first) == 3 + 6 and first["score_lo"].notna().all()
    assert ((first["score_lo"] <= first["score"]) & (first["score"] <= first["score_hi"])).all()
    assert (first["score_hi"] > first["score_lo"]).all()
    pd.testing.assert_frame_equal(first, again)
    # a mono file is heard by both ears: the mean of the two ears' intervals
    from haaqicli.models.calibration import load_calibration as load

    calibration = load("distilled", first["model_sha256"].iloc[0])
    row = first[(first["file"] == "mono.wav") & (first["profile"] == "asymmetric")].iloc[0]
    profile = profiles[2]
    lo_l, hi_l = calibration.interval(row["score"], profile.left.pta())
    lo_r, hi_r = calibration.interval(row["score"], profile.right.pta())
    assert profile.left.pta() != profile.right.pta()
    assert row["score_lo"] == pytest.approx((lo_l + lo_r) / 2, abs=0.05)


def test_no_calibration_leaves_the_interval_empty_with_one_warning(use_tiny_weights: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.engine import score_inputs
    from haaqicli.scoring import ScoreOptions

    folder = tmp_path / "weights"
    shutil.copytree(use_tiny_weights, folder)
    (folder / "distilled.calibration.json").unlink()
    monkeypatch.setenv("HAAQI_WEIGHTS", str(folder))
    write_music(tmp_path / "a.wav", seconds=3.0)
    with pytest.warns(CalibrationWarning, match="no calibration"):
        table = score_inputs([tmp_path / "a.wav"], resolve_profiles(["N2"]), ScoreOptions(device="cpu"),
                             progress=False).table
    assert table["score"].notna().all() and table["score_lo"].isna().all() and table["score_hi"].isna().all()


def test_calibrate_command_fits_checks_and_writes(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from haaqicli.cli import main

    monkeypatch.setenv("HAAQI_WEIGHTS", str(weights))
    sha = _sha(weights, "distilled")
    tables = []
    for seed in (6, 7):
        predicted, exact, pta = synthetic_residuals(seed=seed)
        path = tmp_path / f"set{seed}.parquet"
        pd.DataFrame({"label": exact, "pred_distilled": predicted, "pta": pta, "sha256_distilled": sha,
                      "package": f"pkg{seed}"}).to_parquet(path)
        tables.append(str(path))
    result = CliRunner().invoke(main, ["calibrate", "--model", "distilled", "--fit", tables[0], "--check", tables[1],
                                       "--write", "--json", str(tmp_path / "figures.json")])
    assert result.exit_code == 0, result.output
    assert "pkg7: coverage 0.7" in result.output or "pkg7: coverage 0.8" in result.output
    stored = json.loads((weights / "distilled.calibration.json").read_text())
    assert stored["check"]["packages"] == ["pkg7"] and stored["fit"]["packages"] == ["pkg6"]
    assert stored["fit"]["command"].startswith("haaqi calibrate --model distilled")
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["distilled"]["check"]["n"] == 3000
    # predictions of other weights are refused, one line
    pd.read_parquet(tables[1]).assign(sha256_distilled=SHA).to_parquet(tables[1])
    result = CliRunner().invoke(main, ["calibrate", "--model", "distilled", "--fit", tables[0], "--check", tables[1]])
    assert result.exit_code == 2 and "other weights" in result.output and "Traceback" not in result.output


def _ladder(scores: list[float], half_width: float = 0.1) -> pd.DataFrame:
    kbps = [32, 64, 128, 256][: len(scores)]
    return pd.DataFrame({"codec": "mp3", "profile": "N2", "bitrate_kbps": kbps, "score": scores,
                         "score_lo": [s - half_width for s in scores], "score_hi": [s + half_width for s in scores],
                         "status": "ok"})


def test_fast_sweep_warns_when_the_curve_is_flat_or_not_monotonic_within_the_interval():
    from haaqicli.ci.sweep import curve_warnings

    assert curve_warnings(_ladder([0.40, 0.60, 0.80, 0.90])) == []  # rises well beyond the interval
    flat = curve_warnings(_ladder([0.88, 0.89, 0.89, 0.90]))
    assert len(flat) == 1 and "mp3, N2" in flat[0] and "flat within the interval" in flat[0]
    bumpy = curve_warnings(_ladder([0.40, 0.70, 0.66, 0.90]))
    assert len(bumpy) == 1 and "not monotonic (0.700 at 64 kb/s, 0.660 at 128 kb/s, within the interval)" in bumpy[0]
    assert "flat" not in bumpy[0]
    # without intervals only the monotonicity test applies; several inputs are averaged per rung
    two = pd.concat([_ladder([0.4, 0.7, 0.6, 0.9]), _ladder([0.4, 0.7, 0.8, 0.9])]).drop(columns=["score_lo", "score_hi"])
    assert curve_warnings(two) == []
    assert "not monotonic" in curve_warnings(_ladder([0.4, 0.7, 0.5, 0.9]).drop(columns=["score_lo", "score_hi"]))[0]


def test_api_predictor_gives_the_same_interval_as_the_scorer(use_tiny_weights: Path):
    import torch

    from haaqicli.api import HAAQIPredictor

    predictor = HAAQIPredictor.from_pretrained("distilled")
    wave = torch.from_numpy(np.random.default_rng(0).normal(0, 0.05, (2, 24000 * 3)).astype(np.float32))
    grams = torch.tensor([[0.0] * 8, [35, 35, 40, 50, 55, 60, 65, 70.0]])
    score, lo, hi = predictor.predict_with_interval(wave, grams, 24000, spl=65)
    assert torch.equal(score, predictor(wave, grams, 24000, spl=65))
    assert ((lo <= score) & (score <= hi) & (lo < hi)).all()
    expected = predictor.calibration.interval(score.numpy(), [0.0, 46.25])
    assert np.allclose(lo.numpy(), expected[0]) and np.allclose(hi.numpy(), expected[1])


def test_grades_match_the_audiogram_severity():
    from haaqicli.audiogram import severity_of
    from haaqicli.models.calibration import _grades_of

    ptas = np.array([-5.0, 0.0, 19.9, 20.0, 34.9, 35.0, 49.9, 50.0, 64.9, 65.0, 79.9, 80.0, 119.0])
    assert list(_grades_of(ptas)) == [severity_of(p) for p in ptas]


def test_check_shows_the_interval_of_predicted_scores():
    import io

    from rich.console import Console

    from haaqicli.ci.evaluate import evaluate, file_scores
    from haaqicli.ci.policy import Thresholds
    from haaqicli.ci.render import junit_xml, markdown_summary, print_report

    table = pd.DataFrame({"file": ["a.wav", "a.wav", "b.wav"], "profile": "N2", "ear": ["left", "right", "both"],
                          "score": [0.50, 0.60, 0.80], "score_lo": [0.40, 0.44, 0.70], "score_hi": [0.62, 0.70, 0.90],
                          "status": "ok", "model": "distilled", "model_sha256": "x"})
    scores = file_scores(table)
    first = scores[scores["file"] == "a.wav"].iloc[0]
    assert (first["score"], first["score_lo"], first["score_hi"]) == pytest.approx((0.55, 0.42, 0.66))
    report = evaluate(table, cli=Thresholds(min_score=0.6))
    case = next(c for c in report.cases if c.file == "a.wav")
    assert case.status == "fail" and case.interval_text == "0.42–0.66"
    assert any("predicted" in note and "interval" in note for note in report.notes)
    out = io.StringIO()
    print_report(report, console=Console(file=out, width=200))
    assert "interval" in out.getvalue() and "0.42–0.66" in out.getvalue()
    assert "0.550 (0.42–0.66)" in markdown_summary(report)
    xml = junit_xml(report)
    assert any("interval=0.42–0.66" in (e.text or "") for e in xml.iter("system-out"))
    # exact scores (no interval columns) show none
    exact = evaluate(table.drop(columns=["score_lo", "score_hi"]), cli=Thresholds(min_score=0.6))
    assert all(c.interval is None for c in exact.cases) and not any("interval" in n for n in exact.notes)


@pytest.mark.parametrize("name", ["teacher", "distilled"])
def test_shipped_calibration_belongs_to_the_shipped_weights(name: str, monkeypatch: pytest.MonkeyPatch):
    from haaqicli.models.registry import get_info

    monkeypatch.delenv("HAAQI_WEIGHTS", raising=False)
    info = get_info(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)  # new weights need `haaqi calibrate --write` (model card)
        calibration = load_calibration(name, info.sha256)
    assert calibration is not None and calibration.model == name
    check = calibration.check
    assert check["packages"] == ["nexuiz-music"] and calibration.fit["packages"] == ["ufoai-music"]
    assert 0.75 <= check["coverage"] <= 0.85 and check["n"] >= 500
    lo, hi = calibration.interval(np.linspace(0, 1, 11), 30.0)
    assert ((hi - lo) > 0.05).all()


def test_calibration_set_is_seeded_resumable_and_labelled(use_tiny_weights: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    from haaqicli.data import calibration_set as cs
    from haaqicli.data.packages import split_of

    for package in cs.CALIBRATION_PACKAGES:  # calibration music is never training music
        assert split_of(package) == "validation-real"
    with pytest.raises(HaaqiError, match="not a calibration package"):
        cs.fetch_package("flare-game", tmp_path)
    corpus = tmp_path / "corpus"
    write_music(corpus / "nexuiz-music" / "track.flac", seconds=25.0, sample_rate=44100, channels=2, seed=4)
    config = cs.SetConfig(clips=1, variants=2, workers=1)
    assert cs.clip_recipes("abc", config, 44100) == cs.clip_recipes("abc", config, 44100)
    assert cs.clip_recipes("abc", config, 44100)[0] == {"type": "identity"}
    out = tmp_path / "set.parquet"
    table = cs.build_package_set(corpus, "nexuiz-music", out, ["distilled"], config)
    assert len(table) == 1 * 2 * len(cs.CALIBRATION_PROFILES)
    assert table["label"].between(0, 1).all() and table["pred_distilled"].between(0, 1).all()
    clean = table[(table["variant"] == 0) & (table["profile"] == "normal")]["label"].iloc[0]
    assert clean > 0.9  # the clean clip against itself, normal hearing
    assert set(table["severity"]) >= {"normal", "mild", "moderate"}

    def no_labelling(*args, **kwargs):
        raise AssertionError("a finished clip was labelled again")

    monkeypatch.setattr("haaqicli.reference.compute_haaqi_batch", no_labelling)
    again = cs.build_package_set(corpus, "nexuiz-music", out, ["distilled"], config)
    pd.testing.assert_frame_equal(again, table)
    # new weights: the finished clips are predicted again, with their labels kept (no labelling allowed)
    older = table.assign(pred_distilled=0.0, sha256_distilled="weights-of-a-previous-release")
    older.to_parquet(out, index=False)
    renewed = cs.build_package_set(corpus, "nexuiz-music", out, ["distilled"], config)
    pd.testing.assert_frame_equal(renewed, table, check_exact=False, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(out), renewed)


def test_report_shows_the_interval(tmp_path: Path):
    from haaqicli.output.report import write_report
    from haaqicli.output.tables import SCORE_COLUMNS

    row = {c: None for c in SCORE_COLUMNS} | {"file": "a.wav", "profile": "N2", "ear": "both", "model": "distilled",
                                              "score": 0.5, "score_lo": 0.41, "score_hi": 0.63, "score_min": 0.4,
                                              "score_p10": 0.45, "status": "ok", "error": ""}
    write_report(pd.DataFrame([row], columns=SCORE_COLUMNS), tmp_path / "r.md")
    import re

    assert re.search(r"0\.410?–0\.630?", (tmp_path / "r.md").read_text())
