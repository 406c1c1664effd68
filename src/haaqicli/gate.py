"""Quality gates for CI: thresholds, policy files, baselines, JUnit XML and Markdown summaries.

The gate logic works on a score table (SCORE_COLUMNS) and never scores anything itself: the caller
passes a scoring function (dependency injection), so the same gates run on the non-intrusive model,
on exact reference HAAQI, or on a table scored earlier.

Exit-code rule (also in ``haaqi check --help`` and docs/ci.md):
  2 (error)  — a file could not be scored (unless ``--allow-errors``), nothing was scored, or the model
               differs from the baseline's (unless ``--allow-model-change``), or bad options/policy;
  1 (failed) — every file was scored but at least one gate failed;
  0 (passed) — every gate passed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd

from haaqicli.atomic import atomic_write
from haaqicli.errors import HaaqiError
from haaqicli.interrupts import RunInterrupted

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

# Engine rows: one per (file, profile, ear); these ear labels mean "already both ears".
_BOTH_EARS = {"both", "mean", "binaural"}


class PolicyError(HaaqiError):
    """A gate policy file is malformed; the message names the file and the key."""


# --------------------------------------------------------------------------------------------
# Thresholds and policy
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Score tables -> one score per (file, profile)
# --------------------------------------------------------------------------------------------


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


EXACT_MODEL = "reference"  # the `model` column of rows scored with the exact HAAQI against a reference
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
    """Apply every gate to a score table. Pure function of its inputs (deterministic)."""
    policy = policy or Policy()
    tol = tolerance if tolerance is not None else (policy.tolerance or 0.0)
    scores = file_scores(table, table_name)
    base_scores = file_scores(baseline, baseline_name) if baseline is not None else None
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

    base_lookup: dict[tuple[str, str], float] = {}
    base_made_with: dict[tuple[str, str], tuple[float, str]] = {}
    if base_scores is not None:
        for row in base_scores.itertuples(index=False):
            if row.status == "ok":
                base_lookup[(row.file, row.profile)] = float(row.score)
                base_made_with[(row.file, row.profile)] = (float(row.spl), str(row.audiogram_hash))
    not_compared: dict[str, int] = {}

    for profile in sorted(scores["profile"].unique()) if not scores.empty else []:
        thresholds = policy.for_profile(profile, cli)
        result = ProfileResult(profile=profile, thresholds=thresholds)
        group = scores[scores["profile"] == profile]
        ok_values: list[float] = []
        common_now: list[float] = []
        common_base: list[float] = []
        for row in group.itertuples(index=False):
            base = base_lookup.get((row.file, profile))
            if row.status != "ok":
                case = CaseResult(row.file, profile, None, base,
                                  status="skipped" if allow_errors else "error",
                                  messages=[f"not scored: {row.error}"])
                report.cases.append(case)
                continue
            score = float(row.score)
            if base is not None and not _same_conditions(base_made_with[(row.file, profile)],
                                                         (float(row.spl), str(row.audiogram_hash))):
                # another --spl or edited audiogram values: the baseline score is not a comparable figure
                base = None
                not_compared[profile] = not_compared.get(profile, 0) + 1
            interval = (float(row.score_lo), float(row.score_hi))
            case = CaseResult(row.file, profile, score, base,
                              interval=interval if np.isfinite(interval).all() else None)
            ok_values.append(score)
            if thresholds.min_score is not None and score < thresholds.min_score:
                case.messages.append(f"score {score:.3f} < min_score {thresholds.min_score:.3f}")
            if base is not None:
                common_now.append(score)
                common_base.append(base)
                if thresholds.max_drop is not None and base - score > thresholds.max_drop + tol:
                    case.messages.append(
                        f"dropped {base - score:.3f} from baseline {base:.3f} "
                        f"(> max_drop {thresholds.max_drop:.3f} + tolerance {tol:.3f})"
                    )
            elif (row.file, profile) in base_lookup:
                case.messages.append(NOT_COMPARED)
            elif base_scores is not None:
                case.messages.append("new file: not in baseline")
            case.status = "fail" if any(not m.startswith(("new file", NOT_COMPARED)) for m in case.messages) \
                else "pass"
            report.cases.append(case)

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
        if common_base:
            result.baseline_mean = float(np.mean(common_base))
            result.current_mean_common = float(np.mean(common_now))
            drop = result.baseline_mean - result.current_mean_common
            if thresholds.max_drop is not None and drop > thresholds.max_drop + tol:
                result.messages.append(
                    f"mean over {len(common_base)} common files dropped {drop:.3f} "
                    f"(> max_drop {thresholds.max_drop:.3f} + tolerance {tol:.3f})"
                )
        result.status = "fail" if result.messages else "pass"
        report.profiles.append(result)

    # Files in the baseline but not in this run: listed (skipped testcases), not a failure.
    if base_scores is not None and not scores.empty:
        now_keys = set(zip(scores["file"], scores["profile"], strict=True))
        run_profiles = set(scores["profile"])
        for row in base_scores.itertuples(index=False):
            if (row.file, row.profile) not in now_keys and row.profile in run_profiles:
                report.cases.append(CaseResult(row.file, row.profile, None,
                                               None if row.status != "ok" else float(row.score),
                                               status="skipped",
                                               messages=["missing: in baseline but not in this run"]))
        n_missing = sum(c.messages == ["missing: in baseline but not in this run"] for c in report.cases)
        if n_missing:
            report.warnings.append(f"{n_missing} baseline file x profile entries are missing from this run")
        n_new = sum("new file: not in baseline" in c.messages for c in report.cases)
        if n_new:
            report.notes.append(f"{n_new} file x profile entries are new (no baseline to compare with)")

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
    if not scores.empty and not policy.active(cli):
        report.notes.append("no gate configured (use --min-score, --min-mean, --min-p10, --max-drop or --policy)")
    return report


# --------------------------------------------------------------------------------------------
# Outputs: JUnit XML, Markdown summary, terminal table
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _threshold_text(t: Thresholds) -> str:
    parts = [f"{k}={getattr(t, k):g}" for k in THRESHOLD_KEYS if getattr(t, k) is not None]
    return ", ".join(parts) if parts else "no gate"


def junit_xml(report: GateReport, suite_name: str = "haaqi") -> ET.ElementTree:
    """JUnit XML: one <testsuite> per profile, one <testcase> per file x profile plus one aggregate
    testcase per profile ("[profile mean/p10]"). Failures carry a one-line message and details."""
    root = ET.Element("testsuites", name=suite_name)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    names = sorted({c.profile for c in report.cases} | {p.profile for p in report.profiles})
    by_profile = {p.profile: p for p in report.profiles}
    label = f" ({report.method})" if report.method else ""
    for profile in names:
        suite = ET.SubElement(root, "testsuite", name=f"{suite_name}.{profile}")
        if report.method:
            properties = ET.SubElement(suite, "properties")
            ET.SubElement(properties, "property", name="scoring", value=METHOD_TEXT[report.method])
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        classname = f"{suite_name}.{profile}"
        for case in [c for c in report.cases if c.profile == profile]:
            element = ET.SubElement(suite, "testcase", classname=classname, name=case.file, time="0")
            counts["tests"] += 1
            detail = "\n".join(case.messages)
            if case.score is not None:
                detail = f"score={case.score:.4f}{label}" + (f" interval={case.interval_text}" if case.interval else "") \
                    + (f" baseline={case.baseline:.4f}" if case.baseline is not None else "") \
                    + ("\n" + detail if detail else "")
            if case.status == "fail":
                counts["failures"] += 1
                failure = ET.SubElement(element, "failure", message="; ".join(case.messages), type="QualityGate")
                failure.text = detail
            elif case.status == "error":
                counts["errors"] += 1
                error = ET.SubElement(element, "error", message="; ".join(case.messages), type="ScoringError")
                error.text = detail
            elif case.status == "skipped":
                counts["skipped"] += 1
                ET.SubElement(element, "skipped", message="; ".join(case.messages))
            if detail:
                ET.SubElement(element, "system-out").text = detail
        result = by_profile.get(profile)
        if result is not None:
            element = ET.SubElement(suite, "testcase", classname=classname, name=f"[{profile} mean/p10]", time="0")
            counts["tests"] += 1
            detail = (f"n={result.n} mean={_fmt(result.mean, 4)} p10={_fmt(result.p10, 4)} "
                      f"min={_fmt(result.minimum, 4)} gates: {_threshold_text(result.thresholds)}")
            if result.status == "fail":
                counts["failures"] += 1
                failure = ET.SubElement(element, "failure", message="; ".join(result.messages), type="QualityGate")
                failure.text = detail + "\n" + "\n".join(result.messages)
            ET.SubElement(element, "system-out").text = detail
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", "0")
    for key, value in totals.items():
        root.set(key, str(value))
    if report.errors:
        # Run-level errors (e.g. model change) as their own failing suite so CI shows them.
        suite = ET.SubElement(root, "testsuite", name=f"{suite_name}.run", tests=str(len(report.errors)),
                              failures="0", errors=str(len(report.errors)), skipped="0", time="0")
        for index, message in enumerate(report.errors):
            element = ET.SubElement(suite, "testcase", classname=f"{suite_name}.run", name=f"run-error-{index + 1}",
                                    time="0")
            ET.SubElement(element, "error", message=message, type="RunError").text = message
        root.set("tests", str(totals["tests"] + len(report.errors)))
        root.set("errors", str(totals["errors"] + len(report.errors)))
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(report: GateReport, path: str | Path, suite_name: str = "haaqi") -> None:
    atomic_write(Path(path), lambda tmp: junit_xml(report, suite_name).write(tmp, encoding="utf-8",
                                                                             xml_declaration=True))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(report: GateReport, title: str = "HAAQI quality gate", max_rows: int = 50) -> str:
    """Markdown for $GITHUB_STEP_SUMMARY / GitLab MR notes."""
    icon = {"PASSED": "✅", "FAILED": "❌", "ERROR": "⚠️"}[report.verdict]
    lines = [f"## {icon} {title}: {report.verdict}", ""]
    n_cases = sum(c.status != "skipped" or c.messages[0].startswith("not scored") for c in report.cases)
    lines.append(f"{n_cases} file × profile checks, {sum(c.status == 'fail' for c in report.cases)} failed, "
                 f"{report.n_errors} errors"
                 + (f"; baseline tolerance {report.tolerance:g}" if report.tolerance else "") + ".")
    if report.method:
        lines.append(f"Scores: {METHOD_TEXT[report.method]}.")
    lines.append("")
    for message in report.errors:
        lines.append(f"> **Error:** {_md_escape(message)}")
    for message in report.warnings:
        lines.append(f"> **Warning:** {_md_escape(message)}")
    for message in report.notes:
        lines.append(f"> {_md_escape(message)}")
    if report.errors or report.warnings or report.notes:
        lines.append("")
    if report.profiles:
        has_base = any(p.baseline_mean is not None for p in report.profiles)
        header = "| profile | files | mean | p10 | min |" + (" baseline mean | Δ mean |" if has_base else "") \
            + " gates | result |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for p in report.profiles:
            row = f"| {p.profile} | {p.n} | {_fmt(p.mean)} | {_fmt(p.p10)} | {_fmt(p.minimum)} |"
            if has_base:
                delta = (p.current_mean_common - p.baseline_mean) if p.baseline_mean is not None else None
                row += f" {_fmt(p.baseline_mean)} | {_fmt(delta, 3) if delta is None else f'{delta:+.3f}'} |"
            verdict = "✅ pass" if p.status == "pass" else "❌ " + _md_escape("; ".join(p.messages))
            row += f" {_threshold_text(p.thresholds)} | {verdict} |"
            lines.append(row)
        lines.append("")
    bad = [c for c in report.cases if c.status in ("fail", "error")]
    bad.sort(key=lambda c: (c.status != "error", c.score if c.score is not None else -1.0))
    if bad:
        lines += ["### Failing files", "", "| file | profile | score | baseline | reason |", "|---|---|---|---|---|"]
        for c in bad[:max_rows]:
            shown = _fmt(c.score) + (f" ({c.interval_text})" if c.interval else "")
            lines.append(f"| `{_md_escape(c.file)}` | {c.profile} | {shown} | {_fmt(c.baseline)} | "
                         f"{_md_escape('; '.join(c.messages))} |")
        if len(bad) > max_rows:
            lines.append(f"\n… and {len(bad) - max_rows} more (see the JUnit report or --out table).")
        lines.append("")
    skipped = [c for c in report.cases if c.status == "skipped"]
    if skipped:
        lines += [f"<details><summary>{len(skipped)} skipped</summary>", ""]
        lines += [f"- `{_md_escape(c.file)}` ({c.profile}): {_md_escape('; '.join(c.messages))}"
                  for c in skipped[:max_rows]]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def write_summary(report: GateReport, path: str | Path, title: str = "HAAQI quality gate") -> None:
    """Append when the file exists (GitHub's step summary is shared by all steps), else create."""
    path = Path(path)
    text = markdown_summary(report, title)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text + "\n")


def print_report(report: GateReport, console: Any = None, max_rows: int = 200) -> None:
    """Readable pass/fail table on the terminal (failures first)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console(soft_wrap=True)
        if not console.is_terminal:  # CI logs: wide lines instead of wrapped table cells
            console.width = max(console.width, 160)
    order = {"error": 0, "fail": 1, "skipped": 2, "pass": 3}
    cases = sorted(report.cases, key=lambda c: (order[c.status], c.profile, c.file))
    has_base = any(c.baseline is not None for c in cases)
    has_interval = any(c.interval is not None for c in cases)
    view = Table(show_edge=False, header_style="bold", title="files")
    for column in ("result", "file", "profile", "score") + (("interval",) if has_interval else ()) \
            + (("baseline", "Δ") if has_base else ()) + ("reason",):
        view.add_column(column, justify="right" if column in ("score", "interval", "baseline", "Δ") else "left")
    style = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "error": "[red]ERROR[/]", "skipped": "[yellow]skip[/]"}
    for c in cases[:max_rows]:
        row = [style[c.status], c.file, c.profile, _fmt(c.score)] + ([c.interval_text] if has_interval else [])
        if has_base:
            row += [_fmt(c.baseline), "" if c.delta is None else f"{c.delta:+.3f}"]
        row.append("; ".join(c.messages))
        view.add_row(*row)
    console.print(view)
    if len(cases) > max_rows:
        console.print(f"… {len(cases) - max_rows} more rows (use --junit or --summary for all)")
    summary = Table(show_edge=False, header_style="bold", title="profiles")
    for column in ("result", "profile", "files", "mean", "p10", "min", "gates", "reason"):
        summary.add_column(column)
    for p in report.profiles:
        summary.add_row(style[p.status], p.profile, str(p.n), _fmt(p.mean), _fmt(p.p10), _fmt(p.minimum),
                        _threshold_text(p.thresholds), "; ".join(p.messages))
    console.print(summary)
    if report.method:
        console.print(f"scores: {METHOD_TEXT[report.method]}", markup=False)
    for message in report.notes:
        console.print(f"note: {message}", markup=False)
    for message in report.warnings:
        console.print(f"warning: {message}", markup=False)
    for message in report.errors:
        console.print(f"error: {message}", markup=False)
    colour = {"PASSED": "green", "FAILED": "red", "ERROR": "red"}[report.verdict]
    console.print(f"[bold {colour}]{report.verdict}[/]: {report.n_failed} gate failure(s), "
                  f"{report.n_errors} error(s)")


# --------------------------------------------------------------------------------------------
# Scoring (dependency-injected)
# --------------------------------------------------------------------------------------------


@dataclass
class ScoreSettings:
    """Everything a scorer needs; profiles are specs (names or files) resolved by the scorer."""

    profiles: tuple[str, ...] = ("normal",)
    spl: float = 65.0
    mix: str = "stereo"
    model: str = "distilled"
    device: str = "auto"
    batch_size: int = 16
    workers: int | None = None  # None: 1 decoding process for the model; one per core for pairs
    beats_checkpoint: str | None = None
    progress: bool = True
    reference: str | None = None  # folder of references, paired by relative path
    pairs: str | None = None  # CSV with columns processed, reference
    segment_seconds: float | None = None  # exact HAAQI of long pairs in segments
    scheduler: str | None = None  # Dask scheduler address or local:N: files / pairs as cluster tasks


# (inputs, settings) -> score table with SCORE_COLUMNS
Scorer = Callable[[Sequence[str], ScoreSettings], pd.DataFrame]


def model_scorer(inputs: Sequence[str], settings: ScoreSettings) -> pd.DataFrame:
    """Non-intrusive HAAQI-Net (the engine)."""
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.engine import ScoreOptions, score_inputs

    options = ScoreOptions(model=settings.model, device=settings.device, batch_size=settings.batch_size,
                           workers=settings.workers or 1, spl=settings.spl, mix=settings.mix,
                           beats_checkpoint=settings.beats_checkpoint)
    run = score_inputs(list(inputs), resolve_profiles(settings.profiles), options, progress=settings.progress,
                       scheduler=settings.scheduler, keep_timelines=False)
    if run.interrupted:  # the caller decides where the finished rows go
        raise RunInterrupted(f"{len(run.table)} finished rows", rows=run.table)
    return run.table


def pair_by_relative_path(inputs: Sequence[str], reference_dir: str | Path) -> tuple[
        list[tuple[str, Path, Path]], list[tuple[str, Path, str]]]:
    """Pair each discovered input with reference_dir/<relative path>; when that file is missing,
    a reference with the same relative stem and any audio extension (song.mp3 -> song.wav).
    Returns (pairs, unpaired) with unpaired = (name, path, reason)."""
    from haaqicli.audio import AUDIO_EXTENSIONS, discover

    reference_dir = Path(reference_dir)
    if not reference_dir.is_dir():
        raise HaaqiError(f"{reference_dir}: --reference must be a folder")
    pairs, unpaired = [], []
    for item in discover(inputs):
        candidate = reference_dir / item.relative
        if not candidate.is_file():
            stem = candidate.with_suffix("")
            matches = sorted(p for p in stem.parent.glob(stem.name + ".*")
                             if p.suffix.lower() in AUDIO_EXTENSIONS) if stem.parent.is_dir() else []
            candidate = matches[0] if matches else candidate
        if candidate.is_file():
            pairs.append((item.relative, item.path, candidate))
        else:
            unpaired.append((item.relative, item.path, f"no reference {reference_dir / item.relative}"))
    return pairs, unpaired


def reference_scorer(inputs: Sequence[str], settings: ScoreSettings) -> pd.DataFrame:
    """Exact intrusive HAAQI against references (--reference DIR or --pairs CSV)."""
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference import score_pairs
    from haaqicli.reference.pairs import read_pairs_csv
    from haaqicli.tables import SCORE_COLUMNS

    profiles = resolve_profiles(settings.profiles)
    if settings.pairs:
        folder = Path(settings.pairs).parent
        pairs = [(_relative_name(processed, folder), processed, reference)
                 for reference, processed in read_pairs_csv(settings.pairs)]
        unpaired: list[tuple[str, Path, str]] = []
    else:
        pairs, unpaired = pair_by_relative_path(inputs, settings.reference or ".")
    frames = []
    if pairs:
        try:
            table = score_pairs([(reference, processed) for _, processed, reference in pairs], profiles,
                                spl=settings.spl, mix=settings.mix, workers=settings.workers,
                                progress=settings.progress, device=settings.device,
                                segment_seconds=settings.segment_seconds, scheduler=settings.scheduler)
        except RunInterrupted as stopped:  # the finished rows in this table's form, for the caller to keep
            rows = None if stopped.rows is None else _rename_files(stopped.rows, pairs)
            raise RunInterrupted(stopped.kept, rows=rows) from None
        frames.append(_rename_files(table, pairs))
    error_rows = [{"file": name, "path": str(path), "profile": profile.name, "ear": "", "status": "error",
                   "error": reason, "model": EXACT_MODEL, "model_sha256": "", "spl": settings.spl,
                   "audiogram_hash": profile.values_hash()}
                  for name, path, reason in unpaired for profile in profiles]
    if error_rows:
        frames.append(pd.DataFrame(error_rows))
    columns = [*SCORE_COLUMNS, "segments"]  # segments: how many each pair was scored in (1 = whole)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def _relative_name(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return str(path)


def _rename_files(table: pd.DataFrame, pairs: Sequence[tuple[str, Path, Path]]) -> pd.DataFrame:
    """score_pairs names rows by the processed path; the gate keys them by the input's relative name."""
    by_path = {str(Path(processed).resolve()): name for name, processed, _ in pairs}
    table = table.copy()
    table["path"] = table["processed"]
    table["file"] = [by_path.get(str(Path(p).resolve()), str(p)) for p in table["processed"]]
    table["model"] = EXACT_MODEL
    table["model_sha256"] = ""
    return table


def default_scorer(settings: ScoreSettings) -> Scorer:
    return reference_scorer if (settings.reference or settings.pairs) else model_scorer
