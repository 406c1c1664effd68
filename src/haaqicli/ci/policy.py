"""Gate thresholds and policy files (TOML or YAML): per-profile values, validated with errors that name
the file and the key. Precedence per key: command-line flag > [profiles.NAME] > [default]."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from haaqicli.util.errors import HaaqiError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class PolicyError(HaaqiError):
    """A gate policy file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Thresholds:
    """Gates for one profile. None = gate off."""

    min_score: float | None = None  # every file
    min_mean: float | None = None  # mean over files
    min_p10: float | None = None  # 10th percentile over files
    max_drop: float | None = None  # vs baseline, per file and for the mean

    def merged(self, override: Thresholds) -> Thresholds:
        """Values set in ``override`` win."""
        return replace(self, **{f.name: getattr(override, f.name) for f in fields(override)
                                if getattr(override, f.name) is not None})

    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


THRESHOLD_KEYS = tuple(f.name for f in fields(Thresholds))


@dataclass(frozen=True)
class Policy:
    """Per-profile thresholds. Precedence per key: command-line flag > [profiles.NAME] > [default]."""

    default: Thresholds = field(default_factory=Thresholds)
    profiles: Mapping[str, Thresholds] = field(default_factory=dict)
    tolerance: float | None = None
    source: str = ""

    def for_profile(self, name: str, cli: Thresholds | None = None) -> Thresholds:
        thresholds = self.default.merged(self.profiles.get(name, Thresholds()))
        return thresholds.merged(cli) if cli is not None else thresholds

    def active(self, cli: Thresholds | None = None) -> bool:
        return any(t.active() for t in [self.default, *self.profiles.values()]) or bool(cli and cli.active())


def _check_value(path: str, where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(f"{path}: {where}.{key} must be a number, got {value!r}")
    if key == "max_drop" or key == "tolerance":
        if not 0 <= value <= 1:
            raise PolicyError(f"{path}: {where}.{key} must be between 0 and 1, got {value}")
    elif not 0 <= value <= 1:
        raise PolicyError(f"{path}: {where}.{key} must be a HAAQI score between 0 and 1, got {value}")
    return float(value)


def _thresholds_from(path: str, where: str, section: Any, allow_tolerance: bool) -> tuple[Thresholds, float | None]:
    if not isinstance(section, Mapping):
        raise PolicyError(f"{path}: [{where}] must be a table of thresholds, got {type(section).__name__}")
    allowed = THRESHOLD_KEYS + (("tolerance",) if allow_tolerance else ())
    values: dict[str, float] = {}
    tolerance = None
    for key, value in section.items():
        if key not in allowed:
            raise PolicyError(f"{path}: unknown key '{key}' in [{where}] (allowed: {', '.join(allowed)})")
        number = _check_value(path, where, key, value)
        if key == "tolerance":
            tolerance = number
        else:
            values[key] = number
    return Thresholds(**values), tolerance


def parse_policy(data: Any, path: str = "<policy>") -> Policy:
    """Validate a policy mapping: ``{default: {...}, profiles: {name: {...}}}``."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"{path}: the policy must be a table/mapping at top level")
    for key in data:
        if key not in ("default", "profiles", "version"):
            raise PolicyError(f"{path}: unknown top-level key '{key}' (allowed: default, profiles, version)")
    if "version" in data and data["version"] != 1:
        raise PolicyError(f"{path}: version must be 1, got {data['version']!r}")
    default, tolerance = _thresholds_from(path, "default", data.get("default", {}), allow_tolerance=True)
    profiles_section = data.get("profiles", {})
    if not isinstance(profiles_section, Mapping):
        raise PolicyError(f"{path}: [profiles] must contain one table per profile name")
    profiles = {
        str(name): _thresholds_from(path, f"profiles.{name}", section, allow_tolerance=False)[0]
        for name, section in profiles_section.items()
    }
    return Policy(default=default, profiles=profiles, tolerance=tolerance, source=path)


def load_policy(path: str | Path) -> Policy:
    """Read a .toml, .yaml or .yml policy; errors name the file and the key."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(f"{path}: cannot read policy ({error.strerror or error})") from None
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PolicyError(f"{path}: invalid TOML: {error}") from None
    elif suffix in (".yaml", ".yml"):
        # lazy: PyYAML only where this path runs (start-up time)
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise PolicyError(f"{path}:{where} invalid YAML: {getattr(error, 'problem', error)}") from None
        data = {} if data is None else data
    else:
        raise PolicyError(f"{path}: policy must be .toml, .yaml or .yml")
    return parse_policy(data, str(path))
