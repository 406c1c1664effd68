"""``haaqi profiles``: list built-ins, show files, CSV export, warnings and one-line errors."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from haaqicli.cli import main


def run(*args: str):
    return CliRunner().invoke(main, ["profiles", *args])


def test_lists_builtins_with_severity_pta_and_levels() -> None:
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    n3 = next(line for line in lines if line.split()[:1] == ["N3"])
    assert n3.split()[:12] == ["N3", "moderate", "46.2", "both", "35", "35", "40", "50", "55", "60", "65", "70"]
    for name in ("normal", "N1", "N7", "S1", "S3", "mild", "moderate", "severe"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "Bisgaard" in result.output


def test_shows_files_and_asymmetric_ears(tmp_path: Path) -> None:
    path = tmp_path / "two.csv"
    path.write_text("name,ear,250,500,1000,2000,3000,4000,6000,8000\n"
                    "pat,left,60,60,60,60,60,60,60,60\npat,right,10,10,10,10,10,10,10,10\n")
    result = run(str(path), "N2", "--no-ceiling")  # ceilings: test_output_ceiling.py
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["pat", "normal", "60.0", "left"] == next(r for r in rows if r[:1] == ["pat"])[:4]
    assert any(r[:2] == ["10.0", "right"] for r in rows)
    assert any(r[:2] == ["N2", "mild"] for r in rows)


def test_csv_export_round_trips(tmp_path: Path) -> None:
    result = run("--csv", "clinic")
    assert result.exit_code == 0
    out = tmp_path / "again.csv"
    out.write_text(result.output)
    again = run("--csv", str(out))
    assert again.exit_code == 0 and again.output == result.output
    assert "P05-asymmetric,left," in result.output and "P05-asymmetric,right," in result.output


def test_interpolation_warning_goes_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "sparse.csv"
    path.write_text("name,250,500,1000,2000,4000,8000\nx,10,10,20,30,40,50\n")
    result = CliRunner().invoke(main, ["profiles", str(path), "--no-ceiling"])
    assert result.exit_code == 0
    assert "warning: sparse.csv:2: 'x' has no value at 3000, 6000 Hz; interpolated on log frequency" in result.stderr
    assert "warning:" not in result.stdout and "35.85" in result.stdout  # interpolated 3 kHz value shown


def test_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "mild.csv"
    bad.write_text("name,250,500,1000,2000,3000,4000,6000,8000\na,1,1,1,1,1,1,1,1\nb,1,1,1,1,1,1,1,130\n")
    result = run(str(bad))
    assert result.exit_code == 2
    assert result.stderr == "error: mild.csv:3: 130 dB HL at 8000 Hz is outside -10..120 dB HL\n"
    result = run("medium")
    assert result.exit_code == 2 and result.stderr.startswith("error: unknown profile 'medium'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    result = run("N3", "moderate", "N3")
    assert result.exit_code == 2 and "profile name 'N3' is given by N3 twice" in result.stderr
