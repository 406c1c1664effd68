"""Audiograms and listener profiles: built-ins, CSV files (a row per listener or ear, or a row per
frequency) and Clarity ``listeners.json``.

Every profile is reduced to dB HL at ``AUDIOGRAM_FREQUENCIES`` (250 ... 8000 Hz) per ear. Values at
frequencies a file does not give are interpolated linearly on log frequency (held flat beyond the
measured range) and reported with a ``ProfileWarning``. Malformed input raises ``ProfileError`` with
a one-line ``file:line: reason`` message.

Severity: WHO (2021) grades of the better-ear pure-tone average over 0.5, 1, 2 and 4 kHz:
<20 normal, 20-34 mild, 35-49 moderate, 50-64 moderately severe, 65-79 severe, >=80 profound.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES, HL_MAX, HL_MIN
from haaqicli.util.errors import ProfileError

PTA_FREQUENCIES: tuple[int, ...] = (500, 1000, 2000, 4000)
EARS: tuple[str, str] = ("left", "right")
# (upper PTA bound exclusive, grade) — WHO World Report on Hearing 2021.
SEVERITY_GRADES: tuple[tuple[float, str], ...] = (
    (20.0, "normal"),
    (35.0, "mild"),
    (50.0, "moderate"),
    (65.0, "moderately severe"),
    (80.0, "severe"),
    (math.inf, "profound"),
)


class ProfileWarning(UserWarning):
    """A profile was accepted but changed (e.g. missing frequencies interpolated)."""


def _format_level(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Audiogram:
    """Hearing levels (dB HL) of one ear at AUDIOGRAM_FREQUENCIES."""

    levels: tuple[float, ...]

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.levels)
        if len(values) != len(AUDIOGRAM_FREQUENCIES):
            raise ProfileError(f"an audiogram needs {len(AUDIOGRAM_FREQUENCIES)} levels, got {len(values)}")
        for freq, value in zip(AUDIOGRAM_FREQUENCIES, values, strict=True):
            if not math.isfinite(value) or not HL_MIN <= value <= HL_MAX:
                raise ProfileError(f"{_format_level(value)} dB HL at {freq} Hz is outside {HL_MIN:g}..{HL_MAX:g} dB HL")
        object.__setattr__(self, "levels", values)

    def as_array(self) -> np.ndarray:
        return np.asarray(self.levels, dtype=np.float32)

    def pta(self) -> float:
        """Pure-tone average over 0.5, 1, 2 and 4 kHz."""
        return float(np.mean([self.levels[AUDIOGRAM_FREQUENCIES.index(f)] for f in PTA_FREQUENCIES]))


def severity_of(pta: float) -> str:
    for bound, grade in SEVERITY_GRADES:
        if pta < bound:
            return grade
    return SEVERITY_GRADES[-1][1]


@dataclass(frozen=True)
class Profile:
    name: str
    left: Audiogram
    right: Audiogram
    source: str = "builtin"
    description: str = field(default="", compare=False)

    def ear(self, name: str) -> Audiogram:
        if name == "left":
            return self.left
        if name == "right":
            return self.right
        raise ProfileError(f"unknown ear {name!r} (use left or right)")

    @property
    def symmetric(self) -> bool:
        return self.left.levels == self.right.levels

    def values_hash(self) -> str:
        """Short sha256 of both ears' hearing levels: what a score depends on, unlike the profile's name
        (an edited profile file keeps its name). Rows record it so --resume and --baseline reuse only
        scores made with the same audiogram."""
        text = ";".join(",".join(f"{v:.2f}" for v in ear.levels) for ear in (self.left, self.right))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def better_ear_pta(self) -> float:
        return min(self.left.pta(), self.right.pta())

    @property
    def severity(self) -> str:
        return severity_of(self.better_ear_pta)


def _profile(name: str, levels: Sequence[float], description: str) -> Profile:
    audiogram = Audiogram(tuple(levels))
    return Profile(name, audiogram, audiogram, "builtin", description)


# Bisgaard, Vlaming & Dahlquist (2010), "Standard audiograms for the IEC 60118-15 measurement
# procedure", Trends in Amplification 14(2): N1-N7 (flat/moderately sloping, Table 2) and S1-S3
# (steep sloping, Table 4), published at 250, 375, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000 Hz.
# We take the values at our 250, 500, 1000, 2000, 3000, 4000, 6000 Hz. The tables stop at 6 kHz, so
# 8 kHz continues the 4 -> 6 kHz step once more (6k + (6k - 4k)), capped at HL_MAX; this gives
# N2 = 55 dB HL at 8 kHz, the value pyclarity uses for its "moderate" N2-based audiogram.
_BISGAARD_TABLE: dict[str, tuple[tuple[float, ...], str]] = {
    #      250   500  1000  2000  3000  4000  6000
    "N1": ((10, 10, 10, 15, 20, 30, 40), "very mild, flat/moderately sloping"),
    "N2": ((20, 20, 25, 35, 40, 45, 50), "mild, flat/moderately sloping"),
    "N3": ((35, 35, 40, 50, 55, 60, 65), "moderate, flat/moderately sloping"),
    "N4": ((55, 55, 55, 65, 70, 75, 80), "moderate/severe, flat/moderately sloping"),
    "N5": ((65, 70, 75, 80, 80, 80, 80), "severe, flat/moderately sloping"),
    "N6": ((75, 80, 85, 90, 95, 100, 100), "severe, flat/moderately sloping"),
    "N7": ((90, 95, 105, 105, 105, 105, 105), "profound, flat/moderately sloping"),
    "S1": ((10, 10, 10, 15, 30, 55, 70), "very mild, steep sloping"),
    "S2": ((20, 20, 25, 55, 75, 95, 95), "mild, steep sloping"),
    "S3": ((30, 35, 60, 75, 80, 80, 85), "moderate, steep sloping"),
}


def _with_8k(levels: tuple[float, ...]) -> tuple[float, ...]:
    return (*levels, min(HL_MAX, levels[-1] + (levels[-1] - levels[-2])))


def _build_builtins() -> dict[str, Profile]:
    profiles = {"normal": _profile("normal", [0.0] * len(AUDIOGRAM_FREQUENCIES), "normal hearing (0 dB HL)")}
    for name, (levels, description) in _BISGAARD_TABLE.items():
        profiles[name] = _profile(name, _with_8k(levels), description)
    # Friendly aliases (WHO grade of each in brackets): mild = N2 (PTA 31 dB, mild),
    # moderate = N3 (46 dB, moderate), severe = N5 (76 dB, severe).
    for alias, target in (("mild", "N2"), ("moderate", "N3"), ("severe", "N5")):
        base = profiles[target]
        profiles[alias] = Profile(alias, base.left, base.right, "builtin", f"alias of {target}: {base.description}")
    return profiles


BUILTIN_PROFILES: dict[str, Profile] = _build_builtins()


# --------------------------------------------------------------------------------------------
# Parsing helpers


def _interpolate(freqs: Sequence[float], levels: Sequence[float]) -> tuple[tuple[float, ...], list[int]]:
    """Levels at AUDIOGRAM_FREQUENCIES from arbitrary (freq, level) points; also the filled-in freqs."""
    order = np.argsort(freqs)
    f = np.log2(np.asarray(freqs, dtype=np.float64)[order])
    v = np.asarray(levels, dtype=np.float64)[order]
    given = {float(x) for x in freqs}
    targets = np.log2(np.asarray(AUDIOGRAM_FREQUENCIES, dtype=np.float64))
    out = np.interp(targets, f, v)  # flat beyond the measured range
    missing = [freq for freq in AUDIOGRAM_FREQUENCIES if float(freq) not in given]
    return tuple(round(float(x), 2) for x in out), missing


def _parse_frequency(header: str) -> float | None:
    """'250', '250 Hz', '1k', '1.5kHz', 'f250' -> Hz; anything else -> None."""
    text = header.strip().lower().replace(" ", "")
    match = re.fullmatch(r"f?(\d+(?:\.\d+)?)(k?)(hz)?", text)
    if not match:
        return None
    value = float(match.group(1)) * (1000 if match.group(2) else 1)
    return value if 20 <= value <= 30000 else None


def _check_level(value: float, freq: float, where: str) -> float:
    if not math.isfinite(value) or not HL_MIN <= value <= HL_MAX:
        raise ProfileError(f"{where}: {_format_level(value)} dB HL at {freq:g} Hz is outside "
                           f"{HL_MIN:g}..{HL_MAX:g} dB HL")
    return value


def _to_ear_levels(points: dict[float, float], where: str, name: str, ear: str | None,
                   warn: bool = True) -> tuple[tuple[float, ...], list[int]]:
    if not points:
        raise ProfileError(f"{where}: '{name}' has no hearing levels")
    levels, missing = _interpolate(list(points), list(points.values()))
    if missing and warn:
        _warn_missing(where, name, ear, missing, resampled=any(f not in AUDIOGRAM_FREQUENCIES for f in points))
    return levels, missing


def _warn_missing(where: str, name: str, ear: str | None, missing: list[int], resampled: bool) -> None:
    ear_text = f" ({ear} ear)" if ear else ""
    note = " from the given frequencies" if resampled else ""
    warnings.warn(
        f"{where}: '{name}'{ear_text} has no value at {', '.join(str(f) for f in missing)} Hz; "
        f"interpolated on log frequency{note}",
        ProfileWarning,
        stacklevel=5,
    )


_EAR_VALUES = {"left": "left", "l": "left", "right": "right", "r": "right", "both": "both", "b": "both",
               "": "both", "binaural": "both"}


# --------------------------------------------------------------------------------------------
# CSV


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ProfileError(f"{path.name}: not a UTF-8 text file ({error.reason})") from None
    except OSError as error:
        raise ProfileError(f"{path}: cannot read ({error.strerror})") from None


def _data_rows(reader: Any, path: Path, header: list[str], name_col: int | None) -> Iterator[tuple[int, str, list[str], str]]:
    """The rows after a profile CSV's header, blank and # lines skipped: (line, "file:line", cells padded
    to the header, the listener's name; without a name column, the file's)."""
    for row in reader:
        line = reader.line_num
        if not row or not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        where = f"{path.name}:{line}"
        cells = row + [""] * (len(header) - len(row))
        if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            raise ProfileError(f"{where}: {len(row)} fields but the header has {len(header)}")
        name = cells[name_col].strip() if name_col is not None else path.stem
        if not name:
            raise ProfileError(f"{where}: empty name")
        yield line, where, cells, name


def _cell_level(cell: str, column: str, freq: float, where: str) -> float | None:
    """A cell's hearing level in dB HL, checked; None for an empty cell (interpolated later)."""
    raw = cell.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ProfileError(f"{where}: {column} value {raw!r} is not a number") from None
    return _check_level(value, freq, where)


def _ear_of(cells: list[str], ear_col: int | None, where: str) -> str:
    """A row's ear (left, right or both; both without an ear column or with an empty cell)."""
    raw = cells[ear_col].strip() if ear_col is not None else ""
    ear = _EAR_VALUES.get(raw.lower())
    if ear is None:
        raise ProfileError(f"{where}: ear {raw!r} is not left, right or both")
    return ear


def _load_csv(path: Path) -> list[Profile]:
    text = _read_text(path)
    label = path.name
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    delimiter = "," if "," in first else ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    for row in reader:
        if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#"):
            header, header_line = [cell.strip() for cell in row], reader.line_num
            break
    if header is None:
        raise ProfileError(f"{label}:1: empty profile file (expected a header like name,250,500,...,8000)")
    roles = [_column_role(cell) for cell in header]
    _single_columns(label, header_line, header, roles, ("name", "ear"))
    name_col = roles.index("name") if "name" in roles else None
    ear_col = roles.index("ear") if "ear" in roles else None
    freq_cols: list[tuple[int, float]] = []
    for index, cell in enumerate(header):
        freq = _parse_frequency(cell)
        if freq is not None:
            if any(freq == f for _, f in freq_cols):
                raise ProfileError(f"{label}:{header_line}: frequency column {cell!r} appears twice")
            freq_cols.append((index, freq))
    if not freq_cols:
        if "frequency" in roles:
            return _load_long_csv(path, header, header_line, roles, reader)
        raise ProfileError(f"{label}:{header_line}: no frequency columns (expected name,250,500,1000,...,8000, or "
                           "one row per frequency: frequency,left,right)")
    frequency_columns = {index for index, _ in freq_cols}
    if name_col is None and any(role is None for index, role in enumerate(roles) if index not in frequency_columns):
        raise ProfileError(f"{label}:{header_line}: no 'name' column in the header")

    rows: EarPoints = {}  # in file order
    for line, where, cells, name in _data_rows(reader, path, header, name_col):
        ear = _ear_of(cells, ear_col, where)
        points: dict[float, float] = {}
        for index, freq in freq_cols:
            value = _cell_level(cells[index], f"{header[index]} Hz", freq, where)
            if value is not None:
                points[freq] = value
        entry = rows.setdefault(name, {})
        clash = "both" in entry or ear in entry or (ear == "both" and entry)
        if clash:
            first_line = min(line_ for _, line_ in entry.values())
            if name_col is None:
                raise ProfileError(f"{where}: a second row for '{name}' (without a name column the file is one "
                                   f"listener, one row per ear; the first is on line {first_line})")
            raise ProfileError(f"{where}: duplicate name '{name}' (first defined on line {first_line})")
        entry[ear] = (points, line)
    if not rows:
        raise ProfileError(f"{label}:{header_line}: no profiles (header only)")
    return _profiles_from_ears(path, rows)


EarPoints = dict[str, dict[str, tuple[dict[float, float], int]]]  # name -> {ear: ({Hz: dB HL}, line)}


def _profiles_from_ears(path: Path, rows: EarPoints) -> list[Profile]:
    """One profile per name (in file order) from its ears' points: "both", or "left" and "right"."""
    profiles = []
    for name, entry in rows.items():
        if "both" in entry:
            points, line = entry["both"]
            levels = Audiogram(_to_ear_levels(points, f"{path.name}:{line}", name, None)[0])
            profiles.append(Profile(name, levels, levels, str(path)))
            continue
        for needed, other in (("left", "right"), ("right", "left")):
            if needed not in entry:
                line = entry[other][1]
                raise ProfileError(f"{path.name}:{line}: '{name}' has {other}-ear levels but no {needed}-ear levels")
        ears = {ear: Audiogram(_to_ear_levels(points, f"{path.name}:{line}", name, ear)[0])
                for ear, (points, line) in entry.items()}
        profiles.append(Profile(name, ears["left"], ears["right"], str(path)))
    return profiles


# header words -> role; a header is reduced to its letters and digits with unit words taken off its end
# ("Left ear (dB HL)" -> "left", "Frequency (Hz)" -> "frequency")
_ROLE_WORDS = {"name": "name", "listener": "name", "ear": "ear", "side": "ear",
               "frequency": "frequency", "freq": "frequency", "hz": "frequency",
               "level": "level", "threshold": "level", "dbhl": "level", "hl": "level", "db": "level",
               "left": "left", "l": "left", "right": "right", "r": "right"}
_UNIT_SUFFIXES = ("dbhl", "hl", "db", "hz", "ear", "threshold", "level")


def _single_columns(label: str, header_line: int, header: list[str], roles: list[str | None],
                    used: Sequence[str]) -> None:
    """Refuse a header with two columns for one role that the layout reads (which would it be?)."""
    for role in used:
        where = [index for index, r in enumerate(roles) if r == role]
        if len(where) > 1:
            raise ProfileError(f"{label}:{header_line}: {header[where[0]]!r} and {header[where[1]]!r} are both "
                               f"{role} columns")


def _column_role(header: str) -> str | None:
    word = re.sub(r"[^a-z0-9]", "", header.lower())
    stripped = True
    while stripped and word not in _ROLE_WORDS:
        stripped = False
        for suffix in _UNIT_SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix):
                word, stripped = word[: -len(suffix)], True
                break
    return _ROLE_WORDS.get(word)


def _load_long_csv(path: Path, header: list[str], header_line: int, roles: list[str | None],
                   reader: Any) -> list[Profile]:
    """One row per frequency: `frequency,left,right`, `frequency,ear,level`, or `frequency,level` (both
    ears); an optional name column holds several listeners, else the file is one listener named after it."""
    label = path.name
    _single_columns(label, header_line, header, roles, ("name", "ear", "frequency", "level", "left", "right"))
    column = {role: index for index, role in enumerate(roles) if role is not None}
    if "level" in column:
        value_columns = [(column["level"], None)]
    elif "left" in column or "right" in column:
        if "ear" in column:
            raise ProfileError(f"{label}:{header_line}: an ear column beside left/right columns")
        value_columns = [(column[ear], ear) for ear in EARS if ear in column]
    else:
        raise ProfileError(f"{label}:{header_line}: one row per frequency needs left and right columns or a level "
                           "column (e.g. frequency,left,right)")
    rows: EarPoints = {}  # in file order
    for line, where, cells, name in _data_rows(reader, path, header, column.get("name")):
        raw_freq = cells[column["frequency"]].strip()
        freq = _parse_frequency(raw_freq)
        if freq is None:
            raise ProfileError(f"{where}: frequency {raw_freq!r} is not a frequency in Hz (20..30000)")
        row_ear = _ear_of(cells, column.get("ear"), where)
        entry = rows.setdefault(name, {})
        for index, ear in value_columns:
            value = _cell_level(cells[index], header[index], freq, where)
            if value is None:
                continue
            ear = ear or row_ear
            if ear == "both" and (set(entry) - {"both"}) or ear != "both" and "both" in entry:
                raise ProfileError(f"{where}: '{name}' mixes rows for both ears with rows for one ear")
            points, _ = entry.setdefault(ear, ({}, line))
            if freq in points:
                raise ProfileError(f"{where}: '{name}' has a second value at {freq:g} Hz"
                                   + (f" ({ear} ear)" if ear != "both" else ""))
            points[freq] = value
    if not rows:
        raise ProfileError(f"{label}:{header_line}: no profiles (header only)")
    return _profiles_from_ears(path, rows)


# --------------------------------------------------------------------------------------------
# Clarity listeners.json


def _line_of(text: str, key: str) -> int:
    pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 1


def _load_json(path: Path) -> list[Profile]:
    text = _read_text(path)
    label = path.name
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProfileError(f"{label}:{error.lineno}: invalid JSON ({error.msg})") from None
    entries: list[tuple[str, Any]]
    if isinstance(data, dict) and "audiogram_cfs" in data:  # one listener's object, not a set of them
        entries = [(str(data.get("name") or path.stem), data)]
    elif isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        entries = [(str(item.get("name", i)) if isinstance(item, dict) else str(i), item)
                   for i, item in enumerate(data)]
    else:
        raise ProfileError(f"{label}:1: expected a JSON object of listeners like Clarity's listeners.json")
    if not entries:
        raise ProfileError(f"{label}:1: no listeners")
    profiles: list[Profile] = []
    seen: dict[str, int] = {}
    for key, item in entries:
        line = _line_of(text, key)
        where = f"{label}:{line}"
        if not isinstance(item, dict):
            raise ProfileError(f"{where}: listener {key!r} is not an object")
        name = str(item.get("name") or key).strip()
        if name in seen:
            raise ProfileError(f"{where}: duplicate name '{name}' (first defined on line {seen[name]})")
        seen[name] = line
        cfs = item.get("audiogram_cfs")
        if not isinstance(cfs, list) or not cfs:
            raise ProfileError(f"{where}: listener '{name}' has no audiogram_cfs list")
        try:
            freqs = [float(f) for f in cfs]
        except (TypeError, ValueError):
            raise ProfileError(f"{where}: listener '{name}': audiogram_cfs must be numbers") from None
        if len(set(freqs)) != len(freqs) or min(freqs) <= 0:
            raise ProfileError(f"{where}: listener '{name}': audiogram_cfs must be distinct positive numbers")
        ears: dict[str, Audiogram] = {}
        missing: dict[str, list[int]] = {}
        for ear, field_name in (("left", "audiogram_levels_l"), ("right", "audiogram_levels_r")):
            values = item.get(field_name)
            if not isinstance(values, list):
                raise ProfileError(f"{where}: listener '{name}' has no {field_name} list")
            if len(values) != len(freqs):
                raise ProfileError(f"{where}: listener '{name}': {field_name} has {len(values)} values "
                                   f"for {len(freqs)} audiogram_cfs")
            points: dict[float, float] = {}
            for freq, value in zip(freqs, values, strict=True):
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ProfileError(f"{where}: listener '{name}': {field_name} value {value!r} is not a number")
                points[freq] = _check_level(float(value), freq, where)
            levels, missing[ear] = _to_ear_levels(points, where, name, ear, warn=False)
            ears[ear] = Audiogram(levels)
        resampled = any(f not in AUDIOGRAM_FREQUENCIES for f in freqs)
        if missing["left"] and missing["left"] == missing["right"]:  # one warning when both ears lack the same
            _warn_missing(where, name, None, missing["left"], resampled)
        else:
            for ear in EARS:
                if missing[ear]:
                    _warn_missing(where, name, ear, missing[ear], resampled)
        profiles.append(Profile(name, ears["left"], ears["right"], str(path)))
    return profiles


# --------------------------------------------------------------------------------------------
# Public loaders


def packaged_profile_files() -> dict[str, Path]:
    """Example CSVs shipped inside the package (``clinic``, ``asymmetric``, ...), by stem."""
    folder = resources.files("haaqicli") / "profiles"
    out = {}
    try:
        for item in folder.iterdir():
            if item.name.endswith(".csv"):
                out[item.name[:-4]] = Path(str(item))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return dict(sorted(out.items()))


def builtin_profile(name: str) -> Profile | None:
    lookup = {key.lower(): profile for key, profile in BUILTIN_PROFILES.items()}
    return lookup.get(name.strip().lower())


def load_profiles(spec: str | Path) -> list[Profile]:
    """Profiles from a CSV / listeners.json path, a built-in name, or a packaged example name.

    An existing path wins over a built-in of the same name; a built-in wins over a packaged example.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        raise ProfileError(f"{text}: is a directory, expected a profile CSV or listeners.json")
    if not path.exists():
        builtin = builtin_profile(text)
        if builtin is not None:
            return [builtin]
        # bare "clinic" or "clinic.csv" (no folder) falls back to the packaged examples
        stem = text.strip().lower()
        stem = stem[:-4] if stem.endswith(".csv") and "/" not in stem and "\\" not in stem else stem
        packaged = packaged_profile_files().get(stem)
        if packaged is not None:
            return _load_file(packaged)
        if path.suffix.lower() in {".csv", ".tsv", ".json"} or "/" in text or "\\" in text:
            raise ProfileError(f"{text}: no such profile file")
        names = ", ".join(BUILTIN_PROFILES)
        raise ProfileError(f"unknown profile {text!r}: not a file and not a built-in ({names})")
    return _load_file(path)


def _load_file(path: Path) -> list[Profile]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _load_json(path)
    if suffix in {".csv", ".tsv", ".txt"}:
        return _load_csv(path)
    raise ProfileError(f"{path}: unsupported profile file type {suffix or '(none)'} (use .csv or .json)")


def resolve_profiles(specs: Iterable[str | Path]) -> list[Profile]:
    """Load every spec; the same profile name from two specs is an error (results would collide)."""
    profiles: list[Profile] = []
    origin: dict[str, str] = {}
    for spec in specs:
        for profile in load_profiles(spec):
            if profile.name in origin:
                first = origin[profile.name]
                where = f"both {first} and {spec}" if first != str(spec) else f"{spec} twice"
                raise ProfileError(f"profile name '{profile.name}' is given by {where}")
            origin[profile.name] = str(spec)
            profiles.append(profile)
    return profiles


def profile_table_row(profile: Profile) -> dict[str, Any]:
    """Flat dict for display/export: name, severity, PTA and levels per ear."""
    row: dict[str, Any] = {"name": profile.name, "severity": profile.severity,
                           "pta": round(profile.better_ear_pta, 1), "source": profile.source}
    for ear in EARS:
        for freq, value in zip(AUDIOGRAM_FREQUENCIES, profile.ear(ear).levels, strict=True):
            row[f"{ear}_{freq}"] = value
    return row
