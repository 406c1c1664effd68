"""The gate's verdict on a score table: one score per (file, profile), each file's gates, each profile's
gates, and the comparison with a baseline. Pure functions of their inputs (deterministic)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from haaqicli.ci.policy import Policy, Thresholds
from haaqicli.output.tables import EXACT_MODEL, prediction_notes
from haaqicli.util.errors import HaaqiError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

# Engine rows: one per (file, profile, ear); these ear labels mean "already both ears".
_BOTH_EARS = {"both", "mean", "binaural"}


def file_scores(table: pd.DataFrame, source: str = "score table") -> pd.DataFrame:
    """One row per (file, profile): score = mean over ears (Clarity convention: the listener's
    HAAQI is the mean of the left- and right-ear HAAQI); any failed ear makes the file an error.
    `source` names the table in errors (e.g. its path).

    Columns: file, profile, score, status ("ok"/"error"), error, model, model_sha256, what the score was
    made with: spl (NaN when not recorded) and audiogram_hash ('' when not recorded), and score_lo /
    score_hi (a predicted score's interval, averaged over ears like the score; NaN when absent).
    """
    columns = ["file", "profile", "score", "status", "error", "model", "model_sha256", "spl", "audiogram_hash",
               "score_lo", "score_hi"]
    if table is None or table.empty:
        return pd.DataFrame(columns=columns)
    missing = [c for c in ("file", "profile", "score") if c not in table.columns]
    if missing:
        raise HaaqiError(f"{source} lacks column(s): {', '.join(missing)} (found: {', '.join(map(str, table.columns))})")
    t = table.copy()
    t["spl"] = pd.to_numeric(t["spl"], errors="coerce") if "spl" in t.columns else np.nan
    for column, default in (("status", "ok"), ("error", ""), ("ear", ""), ("model", ""), ("model_sha256", ""),
                            ("audiogram_hash", "")):
        if column not in t.columns:
            t[column] = default
        values = t[column].astype(object)
        t[column] = values.where(values.notna(), default).astype(str)
    t["file"] = t["file"].astype(str)
    t["profile"] = t["profile"].astype(str)
    t["score"] = pd.to_numeric(t["score"], errors="coerce")
    for column in ("score_lo", "score_hi"):
        t[column] = pd.to_numeric(t[column], errors="coerce") if column in t.columns else np.nan
    t["status"] = t["status"].astype(str).str.lower()
    ok = t["status"].isin(["ok", ""]) & np.isfinite(t["score"].to_numpy(dtype=float))
    t["_ok"] = ok
    rows = []
    for (file, profile), group in t.groupby(["file", "profile"], sort=True):
        made_with = (group["model"].iloc[0], group["model_sha256"].iloc[0], float(group["spl"].iloc[0]),
                     group["audiogram_hash"].iloc[0])
        if not group["_ok"].all():
            errors = [e for e in group["error"] if e]
            rows.append((file, profile, float("nan"), "error", errors[0] if errors else "not scored", *made_with,
                         float("nan"), float("nan")))
            continue
        both = group[group["ear"].str.lower().isin(_BOTH_EARS)]
        use = both if len(both) else group
        rows.append((file, profile, float(use["score"].mean()), "ok", "", *made_with,
                     float(use["score_lo"].mean()), float(use["score_hi"].mean())))
    return pd.DataFrame(rows, columns=columns)


def model_identity(table: pd.DataFrame) -> set[tuple[str, str]]:
    """The (model, sha256) pairs a table was scored with (empty values ignored)."""
    if table is None or table.empty or "model_sha256" not in table.columns:
        return set()
    models = table["model"] if "model" in table.columns else pd.Series([""] * len(table), index=table.index)
    pairs = set()
    for name, sha in zip(models.fillna("").astype(str), table["model_sha256"].fillna("").astype(str), strict=True):
        if sha:
            pairs.add((name, sha))
    return pairs


def model_change_message(baseline: pd.DataFrame, current: pd.DataFrame, baseline_name: str = "baseline") -> str:
    """A one-line explanation when the tables were scored by different models, else ''."""
    before, now = model_identity(baseline), model_identity(current)
    if not before or not now or before == now:
        return ""

    def show(pairs: set[tuple[str, str]]) -> str:
        return ", ".join(f"{name or '?'} (sha256 {sha[:12]})" for name, sha in sorted(pairs))

    return (f"model changed: {baseline_name} was scored with {show(before)}, this run with {show(now)}; "
            "scores are not comparable across models")


# --------------------------------------------------------------------------------------------
# Gate evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """One file x profile."""

    file: str
    profile: str
    score: float | None
    baseline: float | None = None
    status: str = "pass"  # pass | fail | error | skipped
    messages: list[str] = field(default_factory=list)
    interval: tuple[float, float] | None = None  # a predicted score's calibrated interval

    @property
    def interval_text(self) -> str:
        return "" if self.interval is None else f"{self.interval[0]:.2f}–{self.interval[1]:.2f}"

    @property
    def delta(self) -> float | None:
        if self.score is None or self.baseline is None:
            return None
        return self.score - self.baseline


@dataclass
class ProfileResult:
    """Aggregate gates over the files of one profile."""

    profile: str
    thresholds: Thresholds
    n: int = 0
    mean: float | None = None
    p10: float | None = None
    minimum: float | None = None
    baseline_mean: float | None = None  # over files present in both runs
    current_mean_common: float | None = None
    status: str = "pass"
    messages: list[str] = field(default_factory=list)


@dataclass
class GateReport:
    cases: list[CaseResult]
    profiles: list[ProfileResult]
    errors: list[str] = field(default_factory=list)  # run-level problems -> exit 2
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tolerance: float = 0.0
    method: str = ""  # "exact", "predicted" or "mixed": how the scores were made (see scoring_method)

    @property
    def n_failed(self) -> int:
        return sum(c.status == "fail" for c in self.cases) + sum(p.status == "fail" for p in self.profiles)

    @property
    def n_errors(self) -> int:
        return sum(c.status == "error" for c in self.cases)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_FAIL if self.n_failed else EXIT_PASS

    @property
    def verdict(self) -> str:
        return {EXIT_PASS: "PASSED", EXIT_FAIL: "FAILED", EXIT_ERROR: "ERROR"}[self.exit_code]


NOT_COMPARED = "not compared: the baseline was scored with other audiogram values or another level"


def _same_conditions(before: tuple[float, str], now: tuple[float, str]) -> bool:
    """Same presentation level and audiogram values; a value either table did not record (tables written
    before rows carried them) does not block the comparison."""
    (spl_before, gram_before), (spl_now, gram_now) = before, now
    same_level = not (math.isfinite(spl_before) and math.isfinite(spl_now)) or abs(spl_before - spl_now) < 1e-9
    same_gram = not (gram_before and gram_now) or gram_before == gram_now
    return same_level and same_gram


METHOD_TEXT = {
    "exact": "exact HAAQI against the references",
    "predicted": "predicted by the model, without a reference (a preview: where the originals exist, "
                 "--reference gives the exact HAAQI)",
    "mixed": "partly exact HAAQI (model 'reference'), partly predicted by the model",
}


def scoring_method(table: pd.DataFrame) -> str:
    """'exact' when every row was scored against a reference, 'predicted' when none was, else 'mixed'
    ('' for a table without a model column)."""
    if table is None or table.empty or "model" not in table.columns:
        return ""
    exact = table["model"].astype(str).eq(EXACT_MODEL)
    return "exact" if exact.all() else "predicted" if not exact.any() else "mixed"


def _percentile10(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), 10))


PREDICTED_NOTE = ("scores are predicted by the model (no reference); the interval is where the exact HAAQI "
                  "lay for 80% of the calibration music (weights/MODEL_CARD.md): a file whose interval "
                  "crosses a threshold could pass or fail by the exact HAAQI (use --reference for an exact gate)")


@dataclass
class _Baseline:
    """A baseline's ok scores per (file, profile), and what each was made with (spl, audiogram hash)."""

    scores: pd.DataFrame
    lookup: dict[tuple[str, str], float] = field(default_factory=dict)
    made_with: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, table: pd.DataFrame, name: str) -> _Baseline:
        baseline = cls(file_scores(table, name))
        for row in baseline.scores.itertuples(index=False):
            if row.status == "ok":
                baseline.lookup[(row.file, row.profile)] = float(row.score)
                baseline.made_with[(row.file, row.profile)] = (float(row.spl), str(row.audiogram_hash))
        return baseline


def _file_case(row: Any, thresholds: Thresholds, baseline: _Baseline | None, tol: float,
               allow_errors: bool) -> tuple[CaseResult, bool]:
    """One file x profile against its gates and its baseline score: (case, compared), where compared
    is False when the baseline score exists but was made under other conditions."""
    key = (row.file, row.profile)
    base = baseline.lookup.get(key) if baseline is not None else None
    if row.status != "ok":
        return CaseResult(row.file, row.profile, None, base, status="skipped" if allow_errors else "error",
                          messages=[f"not scored: {row.error}"]), True
    score = float(row.score)
    compared = True
    if base is not None and not _same_conditions(baseline.made_with[key], (float(row.spl), str(row.audiogram_hash))):
        # another --spl or edited audiogram values: the baseline score is not a comparable figure
        base, compared = None, False
    interval = (float(row.score_lo), float(row.score_hi))
    case = CaseResult(row.file, row.profile, score, base, interval=interval if np.isfinite(interval).all() else None)
    if thresholds.min_score is not None and score < thresholds.min_score:
        case.messages.append(f"score {score:.3f} < min_score {thresholds.min_score:.3f}")
    if base is not None:
        if thresholds.max_drop is not None and base - score > thresholds.max_drop + tol:
            case.messages.append(
                f"dropped {base - score:.3f} from baseline {base:.3f} "
                f"(> max_drop {thresholds.max_drop:.3f} + tolerance {tol:.3f})"
            )
    elif not compared:
        case.messages.append(NOT_COMPARED)
    elif baseline is not None:
        case.messages.append("new file: not in baseline")
    case.status = "fail" if any(not m.startswith(("new file", NOT_COMPARED)) for m in case.messages) else "pass"
    return case, compared


def _profile_result(profile: str, thresholds: Thresholds, cases: Sequence[CaseResult], tol: float) -> ProfileResult:
    """The aggregate gates of one profile over its scored files (mean, p10, the mean drop over the
    files the baseline has too)."""
    result = ProfileResult(profile=profile, thresholds=thresholds)
    ok_values = [c.score for c in cases if c.score is not None]
    common = [(c.score, c.baseline) for c in cases if c.score is not None and c.baseline is not None]
    result.n = len(ok_values)
    if ok_values:
        result.mean = float(np.mean(ok_values))
        result.p10 = _percentile10(ok_values)
        result.minimum = float(np.min(ok_values))
        if thresholds.min_mean is not None and result.mean < thresholds.min_mean:
            result.messages.append(f"mean {result.mean:.3f} < min_mean {thresholds.min_mean:.3f}")
        if thresholds.min_p10 is not None and result.p10 < thresholds.min_p10:
            result.messages.append(f"p10 {result.p10:.3f} < min_p10 {thresholds.min_p10:.3f}")
    elif thresholds.min_mean is not None or thresholds.min_p10 is not None:
        result.messages.append("no file scored, so the mean/p10 gates cannot pass")
    if common:
        result.current_mean_common = float(np.mean([now for now, _ in common]))
        result.baseline_mean = float(np.mean([base for _, base in common]))
        drop = result.baseline_mean - result.current_mean_common
        if thresholds.max_drop is not None and drop > thresholds.max_drop + tol:
            result.messages.append(
                f"mean over {len(common)} common files dropped {drop:.3f} "
                f"(> max_drop {thresholds.max_drop:.3f} + tolerance {tol:.3f})"
            )
    result.status = "fail" if result.messages else "pass"
    return result


MISSING = "missing: in baseline but not in this run"


def _compare_file_sets(report: GateReport, scores: pd.DataFrame, baseline: _Baseline) -> None:
    """Files in the baseline but not in this run are listed (skipped testcases), new files noted;
    neither fails the gate."""
    now_keys = set(zip(scores["file"], scores["profile"], strict=True))
    run_profiles = set(scores["profile"])
    for row in baseline.scores.itertuples(index=False):
        if (row.file, row.profile) not in now_keys and row.profile in run_profiles:
            report.cases.append(CaseResult(row.file, row.profile, None,
                                           None if row.status != "ok" else float(row.score),
                                           status="skipped", messages=[MISSING]))
    n_missing = sum(c.messages == [MISSING] for c in report.cases)
    if n_missing:
        report.warnings.append(f"{n_missing} baseline file x profile entries are missing from this run")
    n_new = sum("new file: not in baseline" in c.messages for c in report.cases)
    if n_new:
        report.notes.append(f"{n_new} file x profile entries are new (no baseline to compare with)")


def evaluate(
    table: pd.DataFrame,
    policy: Policy | None = None,
    cli: Thresholds | None = None,
    baseline: pd.DataFrame | None = None,
    tolerance: float | None = None,
    allow_errors: bool = False,
    allow_model_change: bool = False,
    baseline_name: str = "baseline",
    table_name: str = "score table",
) -> GateReport:
    """Apply every gate to a score table: per file, per profile, then against the baseline's file set.
    Pure function of its inputs (deterministic)."""
    policy = policy or Policy()
    tol = tolerance if tolerance is not None else (policy.tolerance or 0.0)
    scores = file_scores(table, table_name)
    base = _Baseline.of(baseline, baseline_name) if baseline is not None else None
    report = GateReport(cases=[], profiles=[], tolerance=tol, method=scoring_method(table))

    if scores.empty:
        report.errors.append("nothing was scored (no audio files found?)")
    if baseline is not None:
        message = model_change_message(baseline, table, baseline_name)
        if message:
            if allow_model_change:
                report.warnings.append(message + " (allowed by --allow-model-change)")
            else:
                report.errors.append(message + "; re-create the baseline or pass --allow-model-change")

    not_compared: dict[str, int] = {}
    for profile in sorted(scores["profile"].unique()) if not scores.empty else []:
        thresholds = policy.for_profile(profile, cli)
        cases = []
        for row in scores[scores["profile"] == profile].itertuples(index=False):
            case, compared = _file_case(row, thresholds, base, tol, allow_errors)
            cases.append(case)
            if not compared:
                not_compared[profile] = not_compared.get(profile, 0) + 1
        report.cases.extend(cases)
        report.profiles.append(_profile_result(profile, thresholds, cases, tol))

    if base is not None and not scores.empty:
        _compare_file_sets(report, scores, base)
    for profile, count in not_compared.items():
        report.warnings.append(f"{count} baseline file(s) of profile '{profile}' were scored with other audiogram "
                               "values or another presentation level (--spl), so they are not compared; "
                               "re-create the baseline")
    n_errors = report.n_errors
    n_skipped_errors = sum(c.status == "skipped" and c.messages[0].startswith("not scored") for c in report.cases)
    if n_errors:
        report.errors.append(f"{n_errors} file x profile entries could not be scored (pass --allow-errors to skip them)")
    elif n_skipped_errors:
        report.warnings.append(f"{n_skipped_errors} file x profile entries could not be scored and were skipped")
    if any(case.interval is not None for case in report.cases):
        report.notes.append(PREDICTED_NOTE)
        report.notes.extend(prediction_notes(table))  # predicted scores only: the exact HAAQI has the original
    if not scores.empty and not policy.active(cli):
        report.notes.append("no gate configured (use --min-score, --min-mean, --min-p10, --max-drop or --policy)")
    return report
