"""The clean-music ceiling per profile: the stored built-in table, its reproduction, `haaqi profiles`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from haaqicli.audiogram import BUILTIN_PROFILES, Audiogram, Profile
from haaqicli.cli import main
from haaqicli.output.ceiling import measure_ceilings, stored_ceiling


def test_stored_table_covers_every_builtin_and_orders_the_flat_losses():
    ceilings = {name: stored_ceiling(profile) for name, profile in BUILTIN_PROFILES.items()}
    assert all(c is not None and c.low <= c.score <= c.high for c in ceilings.values())
    assert ceilings["normal"].low > 0.95
    flat = [ceilings[name].score for name in ("normal", "N1", "N2", "N3", "N4")]
    assert flat == sorted(flat, reverse=True)
    assert ceilings["mild"] == ceilings["N2"].__class__(**{**ceilings["N2"].__dict__, "profile": "mild"})


def test_stored_ceiling_applies_only_to_the_same_audiogram_and_level():
    mild = BUILTIN_PROFILES["mild"]
    assert stored_ceiling(mild) is not None and stored_ceiling(mild, spl=70.0) is None
    edited = Profile("mild", Audiogram((30,) * 8), Audiogram((30,) * 8), source="mine.csv")
    assert stored_ceiling(edited) is None


@pytest.mark.slow
def test_measuring_reproduces_a_stored_entry():
    """`haaqi profiles --measure --json src/haaqicli/output/ceilings.json` wrote the table: one entry again."""
    stored = stored_ceiling(BUILTIN_PROFILES["mild"])
    measured = measure_ceilings([BUILTIN_PROFILES["mild"]])["mild"]
    for key in ("left", "right", "low", "high"):
        assert getattr(measured, key) == pytest.approx(getattr(stored, key), abs=1e-4), key


def test_profiles_lists_the_builtin_ceilings_without_measuring():
    result = CliRunner().invoke(main, ["profiles"])
    assert result.exit_code == 0, result.output
    assert "measuring" not in result.stderr
    normal = next(line.split() for line in result.output.splitlines() if line.split()[:1] == ["normal"])
    assert normal[12:14] == ["0.97", "0.96-0.98"]
    assert "clean" not in CliRunner().invoke(main, ["profiles", "--no-ceiling"]).output


@pytest.mark.slow
def test_profiles_file_measures_its_ceiling_and_writes_json(tmp_path: Path):
    path = tmp_path / "flat.csv"
    path.write_text("name,250,500,1000,2000,3000,4000,6000,8000\nflat40,40,40,40,40,40,40,40,40\n")
    out = tmp_path / "ceilings.json"
    result = CliRunner().invoke(main, ["profiles", str(path), "normal", "--json", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "measuring the clean-music ceiling of 1 profile(s)" in result.stderr
    data = json.loads(out.read_text())["profiles"]
    flat = data["flat40"]
    assert flat["left_levels"] == [40.0] * 8 and flat["low"] <= flat["left"] <= flat["high"]
    # below normal hearing, and shown in the table
    assert data["normal"]["left"] > flat["left"]
    row = next(line.split() for line in result.output.splitlines() if line.split()[:1] == ["flat40"])
    assert row[12] == f"{(flat['left'] + flat['right']) / 2:.2f}"


@pytest.mark.slow
def test_each_ear_is_measured_with_its_own_audiogram():
    normal, n3 = BUILTIN_PROFILES["normal"], BUILTIN_PROFILES["N3"]
    asymmetric = Profile("asym", n3.left, normal.right, source="asym.csv")
    measured = measure_ceilings([asymmetric], workers=1)["asym"]
    assert measured.left == pytest.approx(stored_ceiling(n3).left, abs=1e-4)
    assert measured.right == pytest.approx(stored_ceiling(normal).right, abs=1e-4)
    assert measured.score == pytest.approx((measured.left + measured.right) / 2)


def test_csv_with_json_still_prints_the_csv_and_bad_json_paths_are_one_line(tmp_path: Path):
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["profiles", "mild", "--csv", "--json", str(out)])
    assert result.exit_code == 0 and result.output.startswith("name,ear,250,")
    assert json.loads(out.read_text())["profiles"]["mild"]["left"] == stored_ceiling(BUILTIN_PROFILES["mild"]).left
    result = CliRunner().invoke(main, ["profiles", "mild", "--json", str(tmp_path / "no" / "c.json")])
    assert result.exit_code == 2 and "no such folder" in result.stderr and "Traceback" not in result.output
