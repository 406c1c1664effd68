"""`haaqi compare`: deltas, ordering, files in one table only, paired test, exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from haaqicli.ci.compare import compare_tables, paired_stats
from haaqicli.cli import main


def _table(scores: dict[str, float], profile: str = "normal", sha: str = "a" * 64, ears: bool = False) -> pd.DataFrame:
    rows = []
    for file, score in scores.items():
        for ear, offset in ((("left", -0.01), ("right", 0.01)) if ears else (("both", 0.0),)):
            rows.append({"file": file, "profile": profile, "ear": ear, "model": "distilled", "model_sha256": sha,
                         "score": score + offset, "status": "ok", "error": ""})
    return pd.DataFrame(rows)


RNG = np.random.default_rng(1)
A_SCORES = {f"song{i:02d}.wav": float(s) for i, s in enumerate(RNG.uniform(0.5, 0.9, 12))}


def test_deltas_sorted_and_only_in_one() -> None:
    b_scores = {f: s - 0.05 for f, s in A_SCORES.items()}
    b_scores["song03.wav"] = A_SCORES["song03.wav"] - 0.3  # the worst regression
    del b_scores["song11.wav"]
    b_scores["new.wav"] = 0.7
    result = compare_tables(_table(A_SCORES, ears=True), _table(b_scores))
    deltas = result.deltas
    paired = deltas[deltas["status"] == "both"]
    assert len(paired) == 11
    assert paired.iloc[0]["file"] == "song03.wav" and paired.iloc[0]["delta"] == pytest.approx(-0.3)
    assert list(paired["delta"]) == sorted(paired["delta"])
    assert list(result.only_a["file"]) == ["song11.wav"]
    assert list(result.only_b["file"]) == ["new.wav"]
    profile = result.profiles.iloc[0]
    assert profile["n"] == 11 and profile["worse"] == 11
    assert profile["mean_delta"] == pytest.approx((-0.05 * 10 - 0.3) / 11)
    # 11 consistent drops: Wilcoxon's exact two-sided p = 2 / 2**11
    assert profile["wilcoxon_p"] == pytest.approx(2 / 2**11)
    assert profile["ci_low"] < profile["mean_delta"] < profile["ci_high"] < 0


def test_paired_stats_no_change_and_noise() -> None:
    assert paired_stats(np.zeros(8))["wilcoxon_p"] == 1.0
    noise = np.random.default_rng(2).normal(0, 0.01, 40)
    stats = paired_stats(noise - noise.mean())  # zero mean: no evidence of change
    assert stats["wilcoxon_p"] > 0.3 and stats["ci_low"] < 0 < stats["ci_high"]
    assert np.isnan(paired_stats(np.array([0.1]))["wilcoxon_p"])


def _write(tmp: Path, name: str, frame: pd.DataFrame) -> str:
    path = tmp / name
    frame.to_csv(path, index=False)
    return str(path)


def test_cli_exit_codes_and_out(tmp_path: Path) -> None:
    b_scores = {f: s - 0.01 for f, s in A_SCORES.items()}
    b_scores["song05.wav"] -= 0.09  # total drop 0.10
    a = _write(tmp_path, "a.csv", _table(A_SCORES))
    b = _write(tmp_path, "b.csv", _table(b_scores))
    runner = CliRunner()
    out = tmp_path / "delta.csv"
    result = runner.invoke(main, ["compare", a, b, "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "significantly worse" in result.output
    delta = pd.read_csv(out)
    assert delta.iloc[0]["file"] == "song05.wav" and delta.iloc[0]["delta"] == pytest.approx(-0.10)
    result = runner.invoke(main, ["compare", a, b, "--max-drop", "0.05"], catch_exceptions=False)
    assert result.exit_code == 1 and "song05.wav (normal): dropped 0.100" in result.output
    assert runner.invoke(main, ["compare", a, b, "--max-drop", "0.05", "--tolerance", "0.06"]).exit_code == 0
    # Mean drop gate: every file down 0.04 -> only the mean (and files) over 0.03 fail.
    c = _write(tmp_path, "c.csv", _table({f: s - 0.04 for f, s in A_SCORES.items()}))
    result = runner.invoke(main, ["compare", a, c, "--max-drop", "0.03"], catch_exceptions=False)
    assert result.exit_code == 1 and "normal: mean dropped 0.040" in result.output
    # Missing table -> exit 2, one line.
    result = runner.invoke(main, ["compare", a, str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "nope.csv" in result.output


def test_model_change_warning(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.csv", _table(A_SCORES, sha="a" * 64))
    b = _write(tmp_path, "b.csv", _table(A_SCORES, sha="b" * 64))
    result = CliRunner().invoke(main, ["compare", a, b], catch_exceptions=False)
    assert result.exit_code == 0
    assert "warning: model changed" in result.output and "aaaaaaaaaaaa" in result.output


def test_entries_only_in_one_table_are_summarised(tmp_path: Path) -> None:
    """A profile scored in one run only is named once, not file by file; single entries are capped
    at --top (the --out table lists every one)."""
    a = pd.concat([_table(A_SCORES), _table(A_SCORES, profile="mild")])
    b = _table({f: s for f, s in A_SCORES.items() if f not in ("song00.wav", "song01.wav", "song02.wav")})
    out = tmp_path / "deltas.csv"
    result = CliRunner().invoke(main, ["compare", _write(tmp_path, "a.csv", a), _write(tmp_path, "b.csv", b),
                                       "--top", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("only in")]
    assert line.endswith("a.csv: profile mild (all 12 files), song00.wav (normal), song01.wav (normal), "
                         "and 1 more (--out lists them)"), line
    assert (pd.read_csv(out)["status"] == "only_a").sum() == 15
