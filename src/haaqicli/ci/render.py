"""The gate report in three forms: JUnit XML (CI test results), a Markdown summary (e.g.
$GITHUB_STEP_SUMMARY) and a table on the terminal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from haaqicli.ci.evaluate import METHOD_TEXT, GateReport, ProfileResult
from haaqicli.ci.policy import THRESHOLD_KEYS, Thresholds
from haaqicli.util.atomic import atomic_write


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _threshold_text(t: Thresholds) -> str:
    parts = [f"{k}={getattr(t, k):g}" for k in THRESHOLD_KEYS if getattr(t, k) is not None]
    return ", ".join(parts) if parts else "no gate"


def profile_verdict(report: GateReport, result: ProfileResult) -> tuple[str, list[str]]:
    """A profile's row in the summaries: its aggregate gates (mean, p10, mean drop) and its files' own
    gates (min_score, max_drop per file) together, so that a row listing min_score never says "pass"
    while files of the profile fail it. (JUnit keeps the aggregate as its own testcase.)"""
    cases = [c for c in report.cases if c.profile == result.profile]
    failing = sum(c.status == "fail" for c in cases)
    unscored = sum(c.status == "error" for c in cases)
    messages = list(result.messages)
    if failing:
        messages.append(f"{failing} of {sum(c.status in ('pass', 'fail') for c in cases)} files fail their gates")
    if unscored:
        messages.append(f"{unscored} file(s) not scored")
    status = "fail" if result.status == "fail" or failing else "error" if unscored else "pass"
    return status, messages


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
            status, messages = profile_verdict(report, p)
            verdict = "✅ pass" if status == "pass" else ("❌ " if status == "fail" else "⚠️ ") + _md_escape("; ".join(messages))
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
    # lazy: rich only where this path runs (start-up time)
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
    said: set[tuple[str, str]] = set()  # (file, reason) already printed: a file that failed to decode
    for c in cases[:max_rows]:          # fails the same way for every profile
        row = [style[c.status], c.file, c.profile, _fmt(c.score)] + ([c.interval_text] if has_interval else [])
        if has_base:
            row += [_fmt(c.baseline), "" if c.delta is None else f"{c.delta:+.3f}"]
        reason = "; ".join(c.messages)
        repeated = c.status == "error" and (c.file, reason) in said
        said.add((c.file, reason))
        row.append("(as above)" if repeated else reason)
        view.add_row(*row)
    console.print(view)
    if len(cases) > max_rows:
        console.print(f"… {len(cases) - max_rows} more rows (use --junit or --summary for all)")
    summary = Table(show_edge=False, header_style="bold", title="profiles")
    for column in ("result", "profile", "files", "mean", "p10", "min", "gates", "reason"):
        summary.add_column(column)
    for p in report.profiles:
        status, messages = profile_verdict(report, p)
        summary.add_row(style[status], p.profile, str(p.n), _fmt(p.mean), _fmt(p.p10), _fmt(p.minimum),
                        _threshold_text(p.thresholds), "; ".join(messages))
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
