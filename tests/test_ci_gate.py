"""`haaqi check`: exit codes per gate, JUnit, Markdown, baselines, policies.

Most tests inject a fake scorer *function* (scores looked up by file name, real decoding so a corrupt
file is a real decode error); one test runs the real exact-HAAQI path end to end.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from haaqicli.ci.evaluate import evaluate, file_scores
from haaqicli.ci.policy import Thresholds, load_policy
from haaqicli.ci.render import junit_xml
from haaqicli.cli import main

SR = 16000
SCORES = {  # file -> profile -> score
    "a.wav": {"normal": 0.90, "mild": 0.80},
    "b.wav": {"normal": 0.70, "mild": 0.55},
    "sub/c.wav": {"normal": 0.85, "mild": 0.75},
}


def _tone(path: Path, freq: float, seconds: float = 0.5) -> None:
    import soundfile as sf

    t = np.arange(int(SR * seconds)) / SR
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)


@pytest.fixture()
def music(tmp_path: Path) -> Path:
    root = tmp_path / "music"
    _tone(root / "a.wav", 440)
    _tone(root / "b.wav", 330)
    _tone(root / "sub" / "c.wav", 550)
    return root


def fake_scorer(scores=SCORES, model="fake", sha="f" * 64):  # type: ignore[no-untyped-def]
    """Scorer with the engine's contract: one row per (file, profile, ear); decode errors become rows."""

    def scorer(inputs, options):  # type: ignore[no-untyped-def]
        from haaqicli.audio import decode, discover
        from haaqicli.util.errors import HaaqiError

        rows = []
        for item in discover(inputs):
            try:
                x, _ = decode(item.path)
                error = ""
            except HaaqiError as err:
                x, error = None, str(err)
            for profile in options.profiles:
                base = {"file": item.relative, "profile": profile, "model": model, "model_sha256": sha,
                        "path": str(item.path)}
                if error:
                    rows.append({**base, "ear": "", "status": "error", "error": error, "score": np.nan})
                    continue
                value = scores[item.relative][profile]
                # Two ears around the value: the gate must average them.
                for ear, offset in (("left", -0.02), ("right", 0.02)):
                    rows.append({**base, "ear": ear, "status": "ok", "error": "", "score": value + offset})
                assert x.shape[1] > 0
        return pd.DataFrame(rows)

    return scorer


def run_check(args, scorer=None):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    return runner.invoke(main, ["check", *args], obj={"scorer": scorer or fake_scorer()}, catch_exceptions=False)


PROFILES = ["--profile", "normal", "--profile", "mild"]


def test_no_gate_passes_and_says_so(music: Path) -> None:
    result = run_check([str(music), *PROFILES])
    assert result.exit_code == 0, result.output
    assert "no gate configured" in result.output


@pytest.mark.parametrize(
    "args, code",
    [
        (["--min-score", "0.5"], 0),
        (["--min-score", "0.6"], 1),  # b.wav mild 0.55
        (["--min-mean", "0.70"], 0),  # mild mean 0.70
        (["--min-mean", "0.71"], 1),
        (["--min-p10", "0.5"], 0),
        (["--min-p10", "0.6"], 1),  # mild p10 = 0.59
    ],
)
def test_threshold_exit_codes(music: Path, args: list[str], code: int) -> None:
    result = run_check([str(music), *PROFILES, *args])
    assert result.exit_code == code, result.output


def test_junit_valid_and_counts(music: Path, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    result = run_check([str(music), *PROFILES, "--min-score", "0.72", "--min-mean", "0.8", "--junit", str(junit)])
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    cases = root.findall(".//testcase")
    # 3 files x 2 profiles + 1 aggregate per profile
    assert len(cases) == 3 * 2 + 2
    assert int(root.get("tests")) == len(cases)
    failures = root.findall(".//testcase/failure")
    # files: b/normal 0.70, b/mild 0.55 below 0.72; aggregates: mild mean 0.70 < 0.8
    assert int(root.get("failures")) == len(failures) == 3
    names = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    assert ("haaqi.mild", "b.wav") in names and ("haaqi.normal", "b.wav") in names
    assert ("haaqi.mild", "[mild mean/p10]") in names
    message = next(c for c in cases if c.get("name") == "b.wav" and c.get("classname") == "haaqi.mild").find(
        "failure").get("message")
    assert "0.550 < min_score 0.720" in message
    for suite in root.findall("testsuite"):
        assert int(suite.get("tests")) == len(suite.findall("testcase"))


def test_ears_are_averaged(music: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    junit = tmp_path / "r.xml"
    result = run_check([str(music), "--profile", "normal", "--out", str(out), "--junit", str(junit)])
    assert result.exit_code == 0
    table = pd.read_csv(out)
    assert len(table) == 3 * 2  # engine rows kept as they are (per ear)
    scores = file_scores(table)
    assert scores.set_index("file").loc["b.wav", "score"] == pytest.approx(0.70)


def test_unreadable_file_is_error_unless_allowed(music: Path, tmp_path: Path) -> None:
    (music / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    junit = tmp_path / "r.xml"
    result = run_check([str(music), *PROFILES, "--min-score", "0.5", "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    assert "could not be scored" in result.output
    # the reason once, not once per profile
    assert result.output.count("broken.wav: ") == 1 and "(as above)" in result.output, result.output
    root = ET.parse(junit).getroot()
    assert len(root.findall(".//testcase/error")) >= 2  # broken.wav x 2 profiles (+ run error)

    result = run_check([str(music), *PROFILES, "--min-score", "0.5", "--allow-errors", "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    root = ET.parse(junit).getroot()
    skipped = [c for c in root.findall(".//testcase") if c.find("skipped") is not None]
    assert {c.get("name") for c in skipped} == {"broken.wav"}
    # With errors allowed, gates still fail normally.
    result = run_check([str(music), *PROFILES, "--min-score", "0.6", "--allow-errors"])
    assert result.exit_code == 1


def _baseline(path: Path, scores: dict, sha: str = "f" * 64) -> Path:
    rows = [{"file": f, "profile": p, "ear": "both", "model": "fake", "model_sha256": sha, "score": s,
             "status": "ok", "error": ""} for f, per in scores.items() for p, s in per.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _shift(scores: dict, file: str, profile: str, delta: float) -> dict:
    copy = {f: dict(per) for f, per in scores.items()}
    copy[file][profile] += delta
    return copy


def test_baseline_drop_and_tolerance(music: Path, tmp_path: Path) -> None:
    # Baseline had b.wav/mild 0.05 higher: today it dropped by 0.05.
    base = _baseline(tmp_path / "base.csv", _shift(SCORES, "b.wav", "mild", 0.05))
    args = [str(music), *PROFILES, "--baseline", str(base)]
    assert run_check([*args, "--max-drop", "0.1"]).exit_code == 0
    result = run_check([*args, "--max-drop", "0.03"])
    assert result.exit_code == 1
    assert "dropped 0.050" in result.output
    # Inside the tolerance band: drop must exceed max_drop + tolerance.
    assert run_check([*args, "--max-drop", "0.03", "--tolerance", "0.03"]).exit_code == 0
    # Per-profile mean gate: the same drop in every file also fails the mean.
    small = {f: {p: s + 0.02 for p, s in per.items()} for f, per in SCORES.items()}
    base2 = _baseline(tmp_path / "base2.csv", small)
    junit = tmp_path / "r.xml"
    result = run_check([str(music), *PROFILES, "--baseline", str(base2), "--max-drop", "0.019", "--junit", str(junit)])
    assert result.exit_code == 1
    aggregate = ET.parse(junit).getroot().find(".//testcase[@name='[mild mean/p10]']/failure")
    assert "mean over 3 common files dropped 0.020" in aggregate.get("message")
    assert run_check([str(music), *PROFILES, "--baseline", str(base2), "--max-drop", "0.021"]).exit_code == 0


def test_baseline_model_change(music: Path, tmp_path: Path) -> None:
    base = _baseline(tmp_path / "base.csv", SCORES, sha="0" * 64)
    args = [str(music), *PROFILES, "--baseline", str(base), "--max-drop", "0.05"]
    result = run_check(args)
    assert result.exit_code == 2
    assert "model changed" in result.output and "--allow-model-change" in result.output
    result = run_check([*args, "--allow-model-change"])
    assert result.exit_code == 0, result.output
    assert "model changed" in result.output


def test_baseline_new_and_missing_files(music: Path, tmp_path: Path) -> None:
    scores = {f: per for f, per in SCORES.items() if f != "sub/c.wav"}
    scores["gone.wav"] = {"normal": 0.9, "mild": 0.9}
    base = _baseline(tmp_path / "base.csv", scores)
    junit = tmp_path / "r.xml"
    summary = tmp_path / "summary.md"
    result = run_check([str(music), *PROFILES, "--baseline", str(base), "--max-drop", "0.05", "--junit", str(junit),
                        "--summary", str(summary)])
    assert result.exit_code == 0, result.output
    assert "missing from this run" in result.output
    assert "new (no baseline" in result.output
    root = ET.parse(junit).getroot()
    skipped = {c.get("name") for c in root.findall(".//testcase") if c.find("skipped") is not None}
    assert skipped == {"gone.wav"}
    text = summary.read_text()
    assert "gone.wav" in text and "PASSED" in text


def test_max_drop_needs_baseline(music: Path) -> None:
    result = run_check([str(music), "--max-drop", "0.1"])
    assert result.exit_code == 2
    assert "--max-drop needs --baseline" in result.output


POLICY_TOML = """
[default]
min_score = 0.5
tolerance = 0.01

[profiles.mild]
min_score = 0.6
min_mean = 0.65
"""

POLICY_YAML = """
default:
  min_score: 0.5
profiles:
  mild:
    min_score: 0.6
    min_mean: 0.65
"""


@pytest.mark.parametrize("name, text", [("policy.toml", POLICY_TOML), ("policy.yaml", POLICY_YAML)])
def test_policy_per_profile(music: Path, tmp_path: Path, name: str, text: str) -> None:
    policy = tmp_path / name
    policy.write_text(text)
    loaded = load_policy(policy)
    assert loaded.for_profile("mild").min_score == 0.6
    assert loaded.for_profile("normal").min_score == 0.5
    assert loaded.for_profile("normal").min_mean is None
    # b.wav mild 0.55 < 0.6 fails; normal 0.70 >= 0.5 passes.
    result = run_check([str(music), *PROFILES, "--policy", str(policy)])
    assert result.exit_code == 1
    assert "0.550 < min_score 0.600" in result.output
    # The command-line flag wins over the policy for every profile.
    result = run_check([str(music), *PROFILES, "--policy", str(policy), "--min-score", "0.5"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bad.toml", "[profiles.mild]\nmin_scor = 0.6\n", "bad.toml: unknown key 'min_scor' in [profiles.mild]"),
        ("bad.yaml", "default:\n  min_mean: high\n", "bad.yaml: default.min_mean must be a number"),
        ("bad.toml", "[default]\nmin_score = 1.5\n", "default.min_score must be a HAAQI score between 0 and 1"),
        ("bad.toml", "[defaults]\nmin_score = 0.5\n", "unknown top-level key 'defaults'"),
        ("bad.toml", "[default\n", "bad.toml: invalid TOML"),
        ("bad.yaml", "default: [1, 2\n", "bad.yaml: line"),
        ("bad.json", "{}", "policy must be .toml, .yaml or .yml"),
    ],
)
def test_policy_errors_are_one_line(music: Path, tmp_path: Path, name: str, text: str, expected: str) -> None:
    policy = tmp_path / name
    policy.write_text(text)
    result = run_check([str(music), "--policy", str(policy)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_example_policies_are_valid() -> None:
    examples = Path(__file__).resolve().parents[1] / "examples"
    toml, yaml = load_policy(examples / "policy.toml"), load_policy(examples / "policy.yaml")
    assert toml.default == yaml.default and dict(toml.profiles) == dict(yaml.profiles)


def test_summary_markdown_appends(music: Path, tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("# earlier step\n")
    result = run_check([str(music), *PROFILES, "--min-score", "0.6", "--summary", str(summary)])
    assert result.exit_code == 1
    text = summary.read_text()
    assert text.startswith("# earlier step\n")
    assert "FAILED" in text and "| profile | files | mean | p10 | min |" in text
    assert "`b.wav`" in text and "0.550 < min_score 0.600" in text


def test_profile_rows_count_their_failing_files(music: Path, tmp_path: Path) -> None:
    """A profile row lists min_score among its gates: it fails when a file of the profile does, in the
    terminal and the Markdown summary alike, while the aggregate gates keep their own JUnit testcase."""
    summary, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    result = run_check([str(music), *PROFILES, "--min-score", "0.6", "--summary", str(summary), "--junit", str(junit)])
    assert result.exit_code == 1
    rows = {line.split("|")[1].strip(): line for line in summary.read_text().splitlines() if line.startswith("| ")}
    assert "❌ 1 of 3 files fail their gates" in rows["mild"] and "✅ pass" in rows["normal"]
    printed = [line for line in result.output.splitlines() if " mild " in line and "files fail" in line]
    assert printed and "FAIL" in printed[0], result.output
    aggregate = ET.parse(junit).getroot().find(".//testcase[@name='[mild mean/p10]']")
    assert aggregate is not None and aggregate.find("failure") is None  # mean 0.70 and p10 pass: no gate on them


def test_scores_table_mode(music: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    assert run_check([str(music), *PROFILES, "--out", str(out)]).exit_code == 0
    # Gate the saved table without scoring (e.g. after `haaqi score --out`).
    result = run_check(["--scores", str(out), "--min-score", "0.6"], scorer=lambda *a: pytest.fail("scored"))
    assert result.exit_code == 1
    result = run_check(["--scores", str(out), "--baseline", str(out), "--max-drop", "0"])
    assert result.exit_code == 0, result.output


def test_evaluate_is_deterministic() -> None:
    frame = pd.DataFrame([{"file": f"f{i}.wav", "profile": "normal", "score": s, "status": "ok"}
                          for i, s in enumerate([0.2, 0.4, 0.6, 0.8, 1.0])])
    first = evaluate(frame, cli=Thresholds(min_p10=0.3))
    second = evaluate(frame, cli=Thresholds(min_p10=0.3))
    assert first.profiles[0].p10 == pytest.approx(0.28) == second.profiles[0].p10
    assert first.exit_code == second.exit_code == 1
    assert ET.tostring(junit_xml(first).getroot()) == ET.tostring(junit_xml(second).getroot())


def test_exact_reference_end_to_end(tmp_path: Path) -> None:
    """Real path: --reference pairs by relative path and the reference HAAQI scores the pairs."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    chord = sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392)).astype(np.float32) * 0.05
    refs, proc = tmp_path / "refs", tmp_path / "proc"
    refs.mkdir(), proc.mkdir()
    sf.write(refs / "clean.wav", chord, SR)
    sf.write(proc / "clean.wav", chord, SR)
    noisy = chord + 0.05 * rng.standard_normal(len(chord)).astype(np.float32)
    sf.write(refs / "noisy.wav", chord, SR)
    sf.write(proc / "noisy.wav", noisy, SR)
    _tone(proc / "orphan.wav", 440)
    out = tmp_path / "exact.csv"
    runner = CliRunner()
    result = runner.invoke(main, ["check", str(proc), "--reference", str(refs), "--min-score", "0.9",
                                  "--out", str(out), "-q", "--allow-errors"], catch_exceptions=False)
    scores = file_scores(pd.read_csv(out)).set_index("file")
    # HAAQI (equalisation=1) of an unprocessed sparse chord is well below 1 (pyclarity agrees);
    # noise pulls it clearly lower.
    clean, noisy = scores.loc["clean.wav", "score"], scores.loc["noisy.wav", "score"]
    assert noisy < clean - 0.1
    assert scores.loc["orphan.wav", "status"] == "error"
    assert result.exit_code == 1, result.output  # below 0.9; orphan skipped by --allow-errors
    # a threshold between the two: only noisy.wav fails
    threshold = f"{(clean + noisy) / 2:.3f}"
    result = runner.invoke(main, ["check", str(proc), "--reference", str(refs), "--min-score", threshold,
                                  "--out", str(out), "-q", "--allow-errors"], catch_exceptions=False)
    assert result.exit_code == 1
    table = pd.read_csv(out)
    assert set(table.loc[table["status"] == "ok", "file"]) == {"clean.wav", "noisy.wav"}
    # --segment-seconds: a 2-s pair in two 1-s segments; the table keeps their minimum in score_min
    long_refs, long_proc = tmp_path / "long_refs", tmp_path / "long_proc"
    long_refs.mkdir(), long_proc.mkdir()
    two = np.concatenate((chord, chord))
    sf.write(long_refs / "song.wav", two, SR)
    hiss = 0.05 * rng.standard_normal(SR).astype(np.float32)
    sf.write(long_proc / "song.wav", two + np.concatenate((np.zeros(SR, np.float32), hiss)), SR)  # 2nd s noisy
    result = runner.invoke(main, ["check", str(long_proc), "--reference", str(long_refs), "--segment-seconds", "1",
                                  "--out", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out).iloc[0]
    assert row["status"] == "ok" and row["score_min"] < row["score"] - 0.01, row.to_dict()


def test_real_engine_end_to_end_is_deterministic(use_tiny_weights: Path, tmp_path: Path) -> None:
    """Through the real engine (tiny test weights): scoring twice gives identical scores, so a
    baseline from the first run passes --max-drop 0 in the second; the sha256 is recorded."""
    music_folder = tmp_path / "music"
    _tone(music_folder / "a.wav", 440, seconds=1.5)
    _tone(music_folder / "sub" / "b.wav", 660, seconds=1.0)
    (music_folder / "notes.txt").write_text("not audio")
    runner = CliRunner()
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    junit = tmp_path / "r.xml"
    result = runner.invoke(main, ["check", str(music_folder), "--profile", "mild", "--out", str(first), "-q"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(first)
    assert table["model_sha256"].str.len().eq(64).all() and (table["status"] == "ok").all()
    # Tones end far below 10 kHz: the report says that predicted scores of such sources read them as damage.
    assert "2 files' content ends below 10 kHz" in " ".join(result.output.split())
    result = runner.invoke(main, ["check", str(music_folder), "--profile", "mild", "--out", str(second), "-q",
                                  "--baseline", str(first), "--max-drop", "0", "--junit", str(junit)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert np.array_equal(pd.read_csv(second)["score"], table["score"])
    assert len(ET.parse(junit).getroot().findall(".//testcase")) == 2 + 1
    # A threshold above every score fails with exit 1.
    top = float(table["score"].max())
    result = runner.invoke(main, ["check", "--scores", str(second), "--min-score", f"{min(1.0, top + 0.001):.4f}"])
    assert result.exit_code == 1


def _table(scores: dict[str, float], profile: str = "normal") -> pd.DataFrame:
    return pd.DataFrame([{"file": f, "profile": profile, "ear": "both", "score": s, "status": "ok", "error": ""}
                         for f, s in scores.items()])


def test_evaluate_against_a_baseline_directly() -> None:
    """The gate's steps on tables, without the command line: a file's drop, the profile mean's drop
    over common files only, a new file noted, a missing one listed as skipped."""
    baseline = _table({"a.wav": 0.82, "b.wav": 0.70, "gone.wav": 0.90})
    now = _table({"a.wav": 0.70, "b.wav": 0.70, "new.wav": 0.20})
    report = evaluate(now, cli=Thresholds(max_drop=0.05), baseline=baseline)
    by_file = {c.file: c for c in report.cases}
    assert by_file["a.wav"].status == "fail" and by_file["a.wav"].delta == pytest.approx(-0.12)
    assert by_file["b.wav"].status == "pass"
    assert by_file["new.wav"].status == "pass" and by_file["new.wav"].messages == ["new file: not in baseline"]
    assert by_file["gone.wav"].status == "skipped" and by_file["gone.wav"].baseline == pytest.approx(0.90)
    (profile,) = report.profiles
    assert profile.baseline_mean == pytest.approx(0.76) and profile.current_mean_common == pytest.approx(0.70)
    assert profile.status == "fail" and profile.messages[0].startswith("mean over 2 common files dropped 0.060")
    assert profile.mean == pytest.approx(np.mean([0.70, 0.70, 0.20]))
    assert report.exit_code == 1
    assert any("missing from this run" in w for w in report.warnings)
    assert any("1 file x profile entries are new" in n for n in report.notes)


def test_evaluate_errors_and_allow_errors_directly() -> None:
    table = pd.concat([_table({"a.wav": 0.9}), pd.DataFrame([{"file": "bad.wav", "profile": "normal", "ear": "",
                                                              "score": np.nan, "status": "error",
                                                              "error": "cannot decode"}])])
    strict = evaluate(table, cli=Thresholds(min_mean=0.5))
    assert strict.exit_code == 2 and [c.status for c in strict.cases] == ["pass", "error"]
    lenient = evaluate(table, cli=Thresholds(min_mean=0.5), allow_errors=True)
    assert lenient.exit_code == 0 and lenient.profiles[0].n == 1
    assert lenient.cases[1].messages == ["not scored: cannot decode"]
