"""Intervals for predicted scores: calibrated residual quantiles, stored with the weights.

A predicted score ``p`` for an ear with pure-tone average ``pta`` gets the interval
``[p + q_lo(p), p + q_hi(p)]``, where ``q_lo``/``q_hi`` are quantiles (nominal 80%: the 10th and 90th
percentiles) of the residual ``exact - predicted`` measured on labelled music. Residuals are grouped
by the WHO severity grade of the ear (``audiogram.severity_of``) and, within a grade, by predicted
score (equal-count bins); the quantiles are interpolated linearly between bin centres, so the
interval moves smoothly with the score. A grade the fit had too few items for borrows the nearest
fitted grade. The interval always contains the prediction and stays within [0, 1].

The fit is stored as ``weights/<model>.calibration.json``, keyed by the weights' sha256 and listed
in ``weights/manifest.json`` with its own sha256: a calibration whose weights or file do not match
is ignored with a warning (the interval columns stay empty), never applied to other weights.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from haaqicli.audiogram import SEVERITY_GRADES, Audiogram
from haaqicli.models.registry import calibration_entry, default_weights_dir, get_info, record_calibration
from haaqicli.util.atomic import atomic_write
from haaqicli.util.errors import HaaqiError
from haaqicli.util.hashing import content_hash

FORMAT_VERSION = 1
DEFAULT_COVERAGE = 0.8
GRADES: tuple[str, ...] = tuple(grade for _, grade in SEVERITY_GRADES)


class CalibrationWarning(UserWarning):
    """A calibration exists but does not belong to the loaded weights (or cannot be read)."""


@dataclass(frozen=True)
class GradeFit:
    """Residual quantiles of one severity grade at predicted-score bin centres."""

    centres: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n: int


@dataclass(frozen=True)
class Calibration:
    model: str
    weights_sha256: str
    coverage: float
    grades: dict[str, GradeFit]
    fit: dict[str, Any] = field(default_factory=dict)  # what it was fitted on (and the command)
    check: dict[str, Any] = field(default_factory=dict)  # coverage measured on another split
    created: str = ""

    def _grade_for(self, grade: str) -> GradeFit:
        if grade in self.grades:
            return self.grades[grade]
        # Nearest fitted grade on the severity scale (ties: the milder one).
        index = GRADES.index(grade)
        nearest = min(self.grades, key=lambda g: (abs(GRADES.index(g) - index), GRADES.index(g)))
        return self.grades[nearest]

    def interval(self, score: Any, pta: Any) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) for predicted scores and the PTAs (dB HL) of the ears they are for (broadcast)."""
        scores, ptas = np.broadcast_arrays(np.asarray(score, dtype=float), np.asarray(pta, dtype=float))
        lo, hi = np.full(scores.shape, np.nan), np.full(scores.shape, np.nan)
        grades = _grade_index(ptas)
        for index in np.unique(grades[np.isfinite(ptas)]):
            mine = (grades == index) & np.isfinite(ptas) & np.isfinite(scores)
            fit = self._grade_for(GRADES[int(index)])
            p = scores[mine]
            lo[mine] = p + np.interp(p, fit.centres, fit.lo)
            hi[mine] = p + np.interp(p, fit.centres, fit.hi)
        # The interval contains the prediction and the HAAQI range.
        return np.clip(np.minimum(lo, scores), 0.0, 1.0), np.clip(np.maximum(hi, scores), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["format_version"] = FORMAT_VERSION
        data["grades"] = {g: asdict(f) for g, f in self.grades.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str) -> Calibration:
        try:
            if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
                raise HaaqiError(f"{origin}: calibration format {data['format_version']} is newer than this haaqi")
            grades = {str(g): GradeFit(tuple(map(float, f["centres"])), tuple(map(float, f["lo"])),
                                       tuple(map(float, f["hi"])), int(f["n"]))
                      for g, f in data["grades"].items()}
            unknown = set(grades) - set(GRADES)
            bad = [g for g, f in grades.items() if not (len(f.centres) == len(f.lo) == len(f.hi) >= 1)]
            if not grades or unknown or bad:
                raise HaaqiError(f"{origin}: calibration grades are malformed ({sorted(unknown) or bad or 'none'})")
            return cls(model=str(data["model"]), weights_sha256=str(data["weights_sha256"]),
                       coverage=float(data["coverage"]), grades=grades, fit=dict(data.get("fit", {})),
                       check=dict(data.get("check", {})), created=str(data.get("created", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise HaaqiError(f"{origin}: unreadable calibration ({type(error).__name__}: {error})") from None


_GRADE_BOUNDS = np.array([bound for bound, _ in SEVERITY_GRADES[:-1]])


def _grade_index(pta: np.ndarray) -> np.ndarray:
    """Index into GRADES of each PTA: audiogram.severity_of, vectorised (it runs once per score row)."""
    return np.searchsorted(_GRADE_BOUNDS, pta, side="right")


def _grades_of(pta: np.ndarray) -> np.ndarray:
    return np.array(GRADES)[_grade_index(np.asarray(pta, dtype=float))]


def fit_calibration(predicted: Any, exact: Any, pta: Any, *, model: str, weights_sha256: str,
                    coverage: float = DEFAULT_COVERAGE, min_per_bin: int = 60, max_bins: int = 6,
                    fit_info: Mapping[str, Any] | None = None) -> Calibration:
    """Residual quantiles per severity grade and predicted-score bin (equal-count bins of at least
    ``min_per_bin`` items, at most ``max_bins``). Grades with fewer than ``min_per_bin`` items are
    left to their nearest fitted grade."""
    if not 0.0 < coverage < 1.0:
        raise HaaqiError(f"coverage must be between 0 and 1, got {coverage}")
    predicted, exact, pta = (np.asarray(v, dtype=float).ravel() for v in (predicted, exact, pta))
    if not len(predicted) == len(exact) == len(pta):
        raise HaaqiError("predicted, exact and pta must have the same length")
    ok = np.isfinite(predicted) & np.isfinite(exact) & np.isfinite(pta)
    predicted, exact, pta = predicted[ok], exact[ok], pta[ok]
    tail = (1.0 - coverage) / 2.0
    grades = _grades_of(pta)
    fitted: dict[str, GradeFit] = {}
    for grade in GRADES:
        mine = grades == grade
        n = int(mine.sum())
        if n < min_per_bin:
            continue
        order = np.argsort(predicted[mine], kind="stable")
        p, r = predicted[mine][order], (exact[mine] - predicted[mine])[order]
        bins = np.array_split(np.arange(n), int(np.clip(n // min_per_bin, 1, max_bins)))
        centres = [float(np.median(p[b])) for b in bins]
        lo = [float(np.quantile(r[b], tail)) for b in bins]
        hi = [float(np.quantile(r[b], 1.0 - tail)) for b in bins]
        keep = np.concatenate([[True], np.diff(centres) > 0])  # np.interp needs increasing centres
        fitted[grade] = GradeFit(tuple(np.asarray(centres)[keep]), tuple(np.asarray(lo)[keep]),
                                 tuple(np.asarray(hi)[keep]), n)
    if not fitted:
        raise HaaqiError(f"too few labelled items to calibrate ({int(ok.sum())}; at least {min_per_bin} "
                         "of one severity grade are needed)")
    info = {"n": int(ok.sum()), "min_per_bin": min_per_bin, "max_bins": max_bins, **dict(fit_info or {})}
    return Calibration(model=model, weights_sha256=weights_sha256, coverage=coverage, grades=fitted, fit=info,
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _summary(inside: np.ndarray, width: np.ndarray) -> dict[str, Any]:
    return {"n": int(len(inside)), "coverage": round(float(np.mean(inside)), 4) if len(inside) else None,
            "mean_width": round(float(np.mean(width)), 4) if len(width) else None}


def measure_coverage(calibration: Calibration, predicted: Any, exact: Any, pta: Any) -> dict[str, Any]:
    """Share of exact scores inside their interval, and the mean width: overall, per severity grade
    and per predicted-score range (0.2 wide)."""
    predicted, exact, pta = (np.asarray(v, dtype=float).ravel() for v in (predicted, exact, pta))
    ok = np.isfinite(predicted) & np.isfinite(exact) & np.isfinite(pta)
    predicted, exact, pta = predicted[ok], exact[ok], pta[ok]
    lo, hi = calibration.interval(predicted, pta)
    inside, width = (exact >= lo) & (exact <= hi), hi - lo
    grades = _grades_of(pta)
    ranges = np.minimum((predicted * 5).astype(int), 4)
    return {
        **_summary(inside, width),
        "nominal": calibration.coverage,
        "grades": {g: _summary(inside[grades == g], width[grades == g]) for g in GRADES if (grades == g).any()},
        "predicted": {f"{k / 5:.1f}-{(k + 1) / 5:.1f}": _summary(inside[ranges == k], width[ranges == k])
                      for k in range(5) if (ranges == k).any()},
    }


# ------------------------------------------------------------------------------------------
# storage next to the weights


def calibration_file(model: str) -> str:
    return f"{model}.calibration.json"


def save_calibration(calibration: Calibration, weights_dir: str | Path | None = None) -> Path:
    """Write ``<weights_dir>/<model>.calibration.json`` atomically and list it (file and sha256) in
    the manifest entry of its model, whose weights must be the ones it was fitted for."""
    folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    info = get_info(calibration.model, folder)
    if info.sha256 != calibration.weights_sha256:
        raise HaaqiError(f"calibration for {calibration.model!r} was fitted on weights {calibration.weights_sha256[:12]}..., "
                         f"the manifest has {info.sha256[:12]}...")
    text = json.dumps(calibration.to_dict(), indent=2, sort_keys=True) + "\n"
    path = atomic_write(folder / calibration_file(calibration.model), lambda tmp: tmp.write_text(text))
    record_calibration(calibration.model, path.name, hashlib.sha256(text.encode()).hexdigest(), folder)
    return path


def load_calibration(model: str, weights_sha256: str, weights_dir: str | Path | None = None,
                     warn: bool = True) -> Calibration | None:
    """The calibration of ``model`` if it exists and belongs to weights ``weights_sha256``; else None,
    with a CalibrationWarning saying why (unless ``warn`` is False)."""
    folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    entry = calibration_entry(model, folder)
    path = folder / str(entry.get("file") or calibration_file(model))

    def refuse(reason: str) -> None:
        if warn:
            warnings.warn(f"{path}: {reason}; predicted scores get no interval (score_lo/score_hi empty)",
                          CalibrationWarning, stacklevel=3)

    if not path.is_file():
        refuse("no calibration for this model")
        return None
    if entry.get("sha256") and content_hash(path) != entry["sha256"]:
        refuse("sha256 differs from weights/manifest.json (the file was changed)")
        return None
    try:
        calibration = Calibration.from_dict(json.loads(path.read_text()), str(path))
    except (OSError, json.JSONDecodeError, HaaqiError) as error:
        refuse(f"unreadable ({str(error).splitlines()[0][:160]})")
        return None
    if calibration.weights_sha256 != weights_sha256:
        refuse(f"fitted for weights {calibration.weights_sha256[:12]}..., not the loaded {weights_sha256[:12]}...")
        return None
    return calibration


# ------------------------------------------------------------------------------------------
# fitting from labelled tables (`haaqi calibrate`)


def _labelled_table(path: str | Path, model: str, weights_sha256: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(predicted, exact, pta, packages) of a labelled table: columns ``label`` (exact HAAQI),
    ``pred_<model>`` (the model's score), ``pta`` (dB HL; or ``audiogram``, 8 levels) and, when
    present, ``sha256_<model>`` (the weights that predicted, which must be the loaded ones)."""
    # lazy: pandas only where this path runs (start-up time)
    import pandas as pd

    # lazy: pandas only where this path runs (start-up time)
    from haaqicli.output.tables import read_table

    path = Path(path)
    table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" and path.is_file() else read_table(path)
    column = f"pred_{model}"
    missing = [c for c in ("label", column) if c not in table.columns]
    if "pta" not in table.columns and "audiogram" not in table.columns:
        missing.append("pta (or audiogram)")
    if missing:
        raise HaaqiError(f"{path}: lacks columns {', '.join(missing)}")
    shas = set(table.get(f"sha256_{model}", pd.Series(dtype=object)).dropna())
    if shas and shas != {weights_sha256}:
        raise HaaqiError(f"{path}: {column} was predicted by other weights ({', '.join(s[:12] for s in sorted(shas))}...) "
                         f"than the {model!r} weights ({weights_sha256[:12]}...); predict again")
    pta = (table["pta"].to_numpy(dtype=float) if "pta" in table.columns
           else np.array([Audiogram(tuple(levels)).pta() for levels in table["audiogram"]]))
    packages = sorted(map(str, table["package"].unique())) if "package" in table.columns else []
    return table[column].to_numpy(dtype=float), table["label"].to_numpy(dtype=float), pta, packages


def calibrate_from_tables(model: str, weights_sha256: str, fit: str | Path, check: str | Path,
                          coverage: float = DEFAULT_COVERAGE, command: str = "") -> Calibration:
    """Fit on the labelled table ``fit``, measure coverage on ``check`` (another split: music the fit
    never saw); the result records both."""
    predicted, exact, pta, packages = _labelled_table(fit, model, weights_sha256)
    calibration = fit_calibration(predicted, exact, pta, model=model, weights_sha256=weights_sha256,
                                  coverage=coverage,
                                  fit_info={"table": Path(fit).name, "packages": packages, "command": command})
    c_predicted, c_exact, c_pta, c_packages = _labelled_table(check, model, weights_sha256)
    measured = {"table": Path(check).name, "packages": c_packages,
                **measure_coverage(calibration, c_predicted, c_exact, c_pta)}
    return Calibration(**{**calibration.__dict__, "check": measured})
