"""haaqicli.audiogram: built-ins, CSV and listeners.json parsing, interpolation and errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from haaqicli.audiogram import (
    BUILTIN_PROFILES,
    Audiogram,
    Profile,
    ProfileWarning,
    load_profiles,
    packaged_profile_files,
    resolve_profiles,
    severity_of,
)
from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES
from haaqicli.util.errors import ProfileError

HEADER = "name,250,500,1000,2000,3000,4000,6000,8000\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ built-ins


def test_builtins_bisgaard_values_and_aliases() -> None:
    names = {"normal", "N1", "N2", "N3", "N4", "N5", "N6", "N7", "S1", "S2", "S3", "mild", "moderate", "severe"}
    assert set(BUILTIN_PROFILES) == names
    assert BUILTIN_PROFILES["normal"].left.levels == (0.0,) * 8
    # Bisgaard 2010 Table 2/4 at 250..6000 Hz; 8 kHz continues the 4->6 kHz step.
    assert BUILTIN_PROFILES["N3"].left.levels == (35, 35, 40, 50, 55, 60, 65, 70)
    assert BUILTIN_PROFILES["S2"].left.levels == (20, 20, 25, 55, 75, 95, 95, 95)
    assert BUILTIN_PROFILES["N7"].left.levels == (90, 95, 105, 105, 105, 105, 105, 105)
    for alias, target in [("mild", "N2"), ("moderate", "N3"), ("severe", "N5")]:
        assert BUILTIN_PROFILES[alias].left == BUILTIN_PROFILES[target].left
        assert BUILTIN_PROFILES[alias].severity == alias
    assert all(p.symmetric for p in BUILTIN_PROFILES.values())


def test_audiogram_pta_severity_and_validation() -> None:
    a = Audiogram((0, 10, 20, 30, 40, 50, 60, 70))
    assert a.pta() == pytest.approx((10 + 20 + 30 + 50) / 4)
    assert a.as_array().dtype == np.float32 and a.as_array().shape == (8,)
    assert [severity_of(x) for x in (0, 19.9, 20, 34.9, 35, 50, 65, 80, 120)] == [
        "normal", "normal", "mild", "mild", "moderate", "moderately severe", "severe", "profound", "profound"]
    with pytest.raises(ProfileError, match="needs 8 levels"):
        Audiogram((1, 2, 3))
    with pytest.raises(ProfileError, match="130 dB HL at 8000 Hz is outside -10..120"):
        Audiogram((0, 0, 0, 0, 0, 0, 0, 130))
    worse = Audiogram((60,) * 8)
    profile = Profile("p", left=worse, right=a)
    assert profile.ear("left") is worse and profile.ear("right") is a
    assert profile.severity == "mild"  # better (right) ear PTA 27.5
    with pytest.raises(ProfileError, match="unknown ear 'both'"):
        profile.ear("both")


def test_builtin_lookup_is_case_insensitive_and_unknown_names_fail() -> None:
    assert load_profiles("n5")[0].name == "N5"
    assert load_profiles("Normal")[0] is BUILTIN_PROFILES["normal"]
    with pytest.raises(ProfileError, match=r"unknown profile 'medium': not a file and not a built-in \(normal, N1"):
        load_profiles("medium")
    with pytest.raises(ProfileError, match=r"^missing\.csv: no such profile file$"):
        load_profiles("missing.csv")


# ------------------------------------------------------------------------------------ CSV


def test_csv_wide_multiple_listeners(tmp_path: Path) -> None:
    path = write(tmp_path, "clinic.csv", "# comment line\n" + HEADER + "a,10,10,10,20,30,40,50,60\n\nb,50,50,50,50,50,50,50,50\n")
    profiles = load_profiles(str(path))
    assert [p.name for p in profiles] == ["a", "b"]
    assert profiles[0].left.levels == (10, 10, 10, 20, 30, 40, 50, 60) and profiles[0].symmetric
    assert profiles[0].source == str(path)
    assert profiles[1].severity == "moderately severe"


def test_csv_ear_column_pairs_left_and_right(tmp_path: Path) -> None:
    path = write(tmp_path, "asym.csv", "name,ear,250,500,1000,2000,3000,4000,6000,8000\n"
                 "x,left,40,40,40,40,40,40,40,40\nx,RIGHT,0,0,0,0,0,0,0,0\ny,both,5,5,5,5,5,5,5,5\nz,,1,1,1,1,1,1,1,1\n")
    x, y, z = load_profiles(path)
    assert x.left.levels == (40.0,) * 8 and x.right.levels == (0.0,) * 8 and x.severity == "normal"
    assert y.symmetric and z.symmetric and z.left.levels == (1.0,) * 8


def test_csv_missing_frequencies_interpolated_on_log_frequency(tmp_path: Path) -> None:
    path = write(tmp_path, "sparse.csv", "name,250 Hz,500,1k,2000,4kHz,8000\np,10,20,30,40,60,80\n")
    with pytest.warns(ProfileWarning, match=r"sparse\.csv:2: 'p' has no value at 3000, 6000 Hz; interpolated"):
        (profile,) = load_profiles(path)
    levels = dict(zip(AUDIOGRAM_FREQUENCIES, profile.left.levels, strict=True))
    assert levels[3000] == pytest.approx(40 + 20 * np.log2(1.5), abs=0.01)  # between 2k (40) and 4k (60)
    assert levels[6000] == pytest.approx(60 + 20 * np.log2(1.5), abs=0.01)
    # an empty cell is interpolated too; beyond the measured range the edge value is held
    path = write(tmp_path, "holes.csv", HEADER + "q,,20,30,,50,60,70,\n")
    with pytest.warns(ProfileWarning, match=r"holes\.csv:2: 'q' has no value at 250, 2000, 8000 Hz"):
        (profile,) = load_profiles(path)
    assert profile.left.levels == pytest.approx((20, 20, 30, 30 + 20 * np.log2(2) / np.log2(3), 50, 60, 70, 70), abs=0.01)


def test_csv_complete_rows_do_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.csv", HEADER + "a,0,0,0,0,0,0,0,0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_profiles(path)


@pytest.mark.parametrize(
    "text,message",
    [
        (HEADER + "a,10,10,10,10,10,10,10,10\nb,10,10,abc,10,10,10,10,10\n",
         r"^bad\.csv:3: 1000 Hz value 'abc' is not a number$"),
        (HEADER + "a,10,10,10,10,10,10,10,130\n", r"^bad\.csv:2: 130 dB HL at 8000 Hz is outside -10..120 dB HL$"),
        (HEADER + "a,-20,10,10,10,10,10,10,10\n", r"^bad\.csv:2: -20 dB HL at 250 Hz is outside"),
        (HEADER + "a,1,1,1,1,1,1,1,1\nb,1,1,1,1,1,1,1,1\na,2,2,2,2,2,2,2,2\n",
         r"^bad\.csv:4: duplicate name 'a' \(first defined on line 2\)$"),
        ("patient,250,500\na,1,2\n", r"^bad\.csv:1: no 'name' column in the header$"),
        ("", r"^bad\.csv:1: empty profile file"),
        (HEADER, r"^bad\.csv:1: no profiles \(header only\)$"),
        ("name,ear,250,500\nx,left,1,2\n", r"^bad\.csv:2: 'x' has left-ear levels but no right-ear levels$"),
        ("name,ear,250,500\nx,middle,1,2\n", r"^bad\.csv:2: ear 'middle' is not left, right or both$"),
        ("name,ear,250,500\nx,both,1,2\nx,left,1,2\n", r"^bad\.csv:3: duplicate name 'x'"),
        (HEADER + ",1,1,1,1,1,1,1,1\n", r"^bad\.csv:2: empty name$"),
        (HEADER + "a,,,,,,,,\n", r"^bad\.csv:2: 'a' has no hearing levels$"),
        ("name,notes\na,x\n", r"^bad\.csv:1: no frequency columns"),
        # one row per frequency
        ("frequency,left,right\n250,1,2\nabc,1,2\n", r"^bad\.csv:3: frequency 'abc' is not a frequency in Hz"),
        ("frequency,left,right\n250,1,2\n250,3,4\n", r"^bad\.csv:3: 'bad' has a second value at 250 Hz \(left ear\)$"),
        ("frequency,left,right\n250,1,x\n", r"^bad\.csv:2: right value 'x' is not a number$"),
        ("frequency,left\n250,1\n", r"^bad\.csv:2: 'bad' has left-ear levels but no right-ear levels$"),
        ("frequency,ear,level\n250,both,1\n500,left,1\n", r"^bad\.csv:3: 'bad' mixes rows for both ears with rows"),
        ("frequency,level,threshold\n250,1,2\n", r"^bad\.csv:1: 'level' and 'threshold' are both level columns$"),
        ("frequency,ear,left,right\n250,left,1,2\n", r"^bad\.csv:1: an ear column beside left/right columns$"),
        ("frequency,notes\n250,x\n", r"^bad\.csv:1: one row per frequency needs left and right columns or a level"),
        ("frequency,left,right\n250,1,130\n", r"^bad\.csv:2: 130 dB HL at 250 Hz is outside"),
        (HEADER + "a,1,1,1,1,1,1,1,1,1,1\n", r"^bad\.csv:2: 11 fields but the header has 9$"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ProfileError, match=message):
        load_profiles(path)


def test_csv_one_row_per_frequency(tmp_path: Path) -> None:
    """The layouts audiometers and spreadsheets export: a column per ear, or an ear column and a level
    column, units in the headers; without a name column the file is one listener named after it."""
    left, right = (10, 10, 20, 30, 40, 50, 60, 70), (15, 20, 25, 35, 45, 55, 65, 75)
    rows = "".join(f"{f},{a},{b}\n" for f, a, b in zip(AUDIOGRAM_FREQUENCIES, left, right, strict=True))
    (plain,) = load_profiles(write(tmp_path, "anna.csv", "freq,left,right\n" + rows))
    assert (plain.name, plain.left.levels, plain.right.levels) == ("anna", left, right)
    units = "Frequency (Hz),Left ear (dB HL),Right ear (dB HL)\n" + rows.replace("1000,", "1 kHz,")
    (same,) = load_profiles(write(tmp_path, "units.tsv", units.replace(",", "\t")))
    assert (same.left.levels, same.right.levels) == (left, right)
    grouped = "name;ear;frequency;threshold\n" + "".join(
        f"kim;{ear};{f};{level}\n" for ear, levels in (("L", left), ("R", right))
        for f, level in zip(AUDIOGRAM_FREQUENCIES, levels, strict=True)) + "".join(
        f"lee;;{f};30\n" for f in AUDIOGRAM_FREQUENCIES)
    kim, lee = load_profiles(write(tmp_path, "clinic.csv", grouped))
    assert (kim.left.levels, kim.right.levels) == (left, right) and lee.symmetric and lee.left.levels == (30.0,) * 8
    with pytest.warns(ProfileWarning, match=r"sparse\.csv:2: 'sparse' has no value at 250, 3000, 6000, 8000 Hz"):
        (sparse,) = load_profiles(write(tmp_path, "sparse.csv", "frequency,level\n500,20\n1000,30\n2000,40\n4000,60\n"))
    assert sparse.symmetric and sparse.left.levels[0] == 20.0 and sparse.left.levels[-1] == 60.0


def test_csv_without_a_name_column_is_one_listener(tmp_path: Path) -> None:
    path = write(tmp_path, "me.csv", "ear,250,500,1000,2000,3000,4000,6000,8000\n"
                 "left,10,10,10,10,10,10,10,10\nright,20,20,20,20,20,20,20,20\n")
    (profile,) = load_profiles(path)
    assert (profile.name, profile.left.levels, profile.right.levels) == ("me", (10.0,) * 8, (20.0,) * 8)
    twice = write(tmp_path, "two.csv", HEADER.replace("name,", "") + "1,1,1,1,1,1,1,1\n2,2,2,2,2,2,2,2\n")
    with pytest.raises(ProfileError, match=r"^two\.csv:3: a second row for 'two' \(without a name column the file is one listener"):
        load_profiles(twice)


def test_semicolon_csv_and_unsupported_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "eu.csv", "name;250;500;1000;2000;3000;4000;6000;8000\nk;5;5;5;5;5;5;5;5\n")
    assert load_profiles(path)[0].left.levels == (5.0,) * 8
    odd = write(tmp_path, "p.yaml", "x")
    with pytest.raises(ProfileError, match=r"p\.yaml: unsupported profile file type \.yaml"):
        load_profiles(odd)


# ------------------------------------------------------------------------------------ JSON


def clarity_listeners() -> dict:
    return {
        "L0001": {"name": "L0001", "audiogram_cfs": list(AUDIOGRAM_FREQUENCIES),
                  "audiogram_levels_l": [10, 10, 20, 30, 40, 50, 60, 70],
                  "audiogram_levels_r": [15, 15, 25, 35, 45, 55, 65, 75]},
        "L0002": {"name": "L0002", "audiogram_cfs": [125, 250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000],
                  "audiogram_levels_l": [5, 10, 10, 15, 20, 25, 30, 40, 50, 60, 70],
                  "audiogram_levels_r": [5, 10, 10, 15, 20, 25, 30, 40, 50, 60, 70]},
    }


def test_clarity_listeners_json(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners.json", json.dumps(clarity_listeners(), indent=2))
    first, second = load_profiles(str(path))
    assert first.name == "L0001" and first.left.levels == (10, 10, 20, 30, 40, 50, 60, 70)
    assert first.right.levels == (15, 15, 25, 35, 45, 55, 65, 75)
    # extra frequencies (125, 750, 1500) are dropped: ours are all present, so no warning and no change
    assert second.left.levels == (10, 10, 20, 30, 40, 50, 60, 70)


def test_json_single_listener_object(tmp_path: Path) -> None:
    one = clarity_listeners()["L0001"]
    (named,) = load_profiles(write(tmp_path, "one.json", json.dumps(one)))
    assert named.name == "L0001" and named.right.levels == (15, 15, 25, 35, 45, 55, 65, 75)
    (unnamed,) = load_profiles(write(tmp_path, "pat.json", json.dumps({k: v for k, v in one.items() if k != "name"})))
    assert unnamed.name == "pat" and unnamed.left.levels == named.left.levels


def test_json_missing_frequencies_warn_and_errors_name_line(tmp_path: Path) -> None:
    data = clarity_listeners()
    data["L0001"]["audiogram_cfs"] = [250, 500, 1000, 2000, 4000, 8000]
    data["L0001"]["audiogram_levels_l"] = [10, 20, 30, 40, 60, 80]
    data["L0001"]["audiogram_levels_r"] = [10, 20, 30, 40, 60, 80]
    path = write(tmp_path, "l.json", json.dumps(data, indent=2))
    with pytest.warns(ProfileWarning, match=r"l\.json:2: 'L0001' has no value at 3000, 6000 Hz; interpolated on log frequency$"):
        profiles = load_profiles(path)
    assert profiles[0].left.levels[4] == pytest.approx(40 + 20 * np.log2(1.5), abs=0.01)

    data = clarity_listeners()
    data["L0002"]["audiogram_levels_r"][3] = 150
    path = write(tmp_path, "l.json", json.dumps(data, indent=2))
    line = json.dumps(data, indent=2).splitlines().index('  "L0002": {') + 1
    with pytest.raises(ProfileError, match=rf"^l\.json:{line}: 150 dB HL at 750 Hz is outside"):
        load_profiles(path)
    data = clarity_listeners()
    data["L0002"]["audiogram_levels_l"] = [1, 2]
    write(tmp_path, "l.json", json.dumps(data, indent=2))
    with pytest.raises(ProfileError, match=rf"l\.json:{line}: listener 'L0002': audiogram_levels_l has 2 values"):
        load_profiles(path)
    write(tmp_path, "l.json", '{\n  "L1": {\n    "name": "x",,\n  }\n}')
    with pytest.raises(ProfileError, match=r"^l\.json:3: invalid JSON"):
        load_profiles(path)
    data = clarity_listeners()
    data["L0002"]["name"] = "L0001"
    write(tmp_path, "l.json", json.dumps(data, indent=2))
    with pytest.raises(ProfileError, match=rf"l\.json:{line}: duplicate name 'L0001' \(first defined on line 2\)"):
        load_profiles(path)
    data = clarity_listeners()
    data["L0001"]["audiogram_levels_l"][0] = "ten"
    write(tmp_path, "l.json", json.dumps(data, indent=2))
    with pytest.raises(ProfileError, match=r"l\.json:2: listener 'L0001': audiogram_levels_l value 'ten' is not"):
        load_profiles(path)


# ------------------------------------------------------------------------------------ resolve + packaged


def test_resolve_profiles_and_duplicates_across_specs(tmp_path: Path) -> None:
    path = write(tmp_path, "one.csv", HEADER + "mild,1,1,1,1,1,1,1,1\n")
    profiles = resolve_profiles(["normal", "N3"])
    assert [p.name for p in profiles] == ["normal", "N3"]
    with pytest.raises(ProfileError, match=r"profile name 'mild' is given by both mild and .*one\.csv"):
        resolve_profiles(["mild", str(path)])
    with pytest.raises(ProfileError, match=r"profile name 'N2' is given by N2 twice"):
        resolve_profiles(["N2", "N2"])


def test_packaged_examples_load_and_match_builtins() -> None:
    files = packaged_profile_files()
    assert {"mild", "moderate", "severe", "asymmetric", "clinic"} <= set(files)
    for name in ("mild", "moderate", "severe"):
        (profile,) = load_profiles(str(files[name]))
        assert profile.left == BUILTIN_PROFILES[name].left
    (asym,) = load_profiles("asymmetric")  # bare name of a packaged example
    assert not asym.symmetric
    clinic = load_profiles("clinic.csv")
    assert len(clinic) >= 5 and len({p.name for p in clinic}) == len(clinic)
    assert not (Path(__file__).resolve().parents[1] / "profiles").exists()  # one copy: the package's
