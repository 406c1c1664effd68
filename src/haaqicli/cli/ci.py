"""`haaqi check`, `haaqi sweep`, `haaqi compare`: thin shells over gate.py, sweep.py, compare.py.

The scoring function can be injected through the Click context object (``obj={"scorer": fn}``;
sweep also takes ``"exact_fn"``) so gate logic is testable without a model.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path

import click

from haaqicli.ci.policy import THRESHOLD_KEYS, Thresholds
from haaqicli.cli.common import (
    DEFAULT_SEGMENT_SECONDS,
    one_line_errors,
    quiet_option,
    require_writable,
    scheduler_option,
    scoring_options,
    segment_seconds_option,
    segments_note,
)
from haaqicli.scoring.options import ScoreOptions
from haaqicli.util.interrupts import RunInterrupted

TABLE_EXTENSIONS = (".csv", ".parquet", ".jsonl")

CHECK_HELP = """CI gate: score INPUTS (files or folders) for each --profile and apply quality gates.

\b
Scoring: exact HAAQI with --reference DIR (each input paired with DIR/<same relative
path>, or the same name with another audio extension) or --pairs CSV (columns
processed,reference): the recommended mode for codec or processing outputs, as long
inputs are scored in --segment-seconds segments (default 30). Without a reference, the
non-intrusive model predicts the scores (a fallback where no original exists; the
output says which). --scores TABLE gates an existing score table without scoring.

\b
Gates (per profile; policy file keys have the same names):
  --min-score   every file's score          --min-mean  mean over files
  --min-p10     10th percentile over files  --max-drop  vs --baseline, per file and for
                                                        the mean over common files
A drop fails only when it exceeds max_drop + --tolerance. A file's score is the mean
over ears. Precedence per key: command-line flag > [profiles.NAME] > [default].

\b
Exit status:
  0  every gate passed
  1  every file was scored and at least one gate failed
  2  error: a file could not be scored (decode error, missing reference) unless
     --allow-errors (then it is reported as skipped and left out of the statistics);
     nothing scored; the model differs from the baseline's model_sha256 unless
     --allow-model-change; bad options or policy file.
Files in the baseline but missing now are listed (skipped), new files are noted; neither fails.
"""


def _table_path(value: str | None, option: str) -> None:
    if value and not value.lower().endswith(TABLE_EXTENSIONS):
        raise click.BadParameter(f"{value}: extension must be one of {', '.join(TABLE_EXTENSIONS)}",
                                 param_hint=option)


def _scorer_from_context(name: str = "scorer"):  # type: ignore[no-untyped-def]
    ctx = click.get_current_context()
    obj = ctx.find_object(dict)
    return obj.get(name) if obj else None


score_range = click.FloatRange(0.0, 1.0)


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:  # CI logs: wide lines instead of wrapped table cells
        console.width = max(console.width, 160)
    return console


def gate_options(func):  # type: ignore[no-untyped-def]
    """The gate's thresholds (--min-score, --min-mean, --min-p10, --max-drop), passed to the command as
    one `thresholds: Thresholds`, with --baseline and --tolerance beside them."""

    @functools.wraps(func)
    def command(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["thresholds"] = Thresholds(**{key: kwargs.pop(key) for key in THRESHOLD_KEYS})
        return func(*args, **kwargs)

    for decorator in reversed([
        click.option("--min-score", type=score_range, default=None, help="Fail a file scoring below this."),
        click.option("--min-mean", type=score_range, default=None, help="Fail a profile whose mean is below this."),
        click.option("--min-p10", type=score_range, default=None,
                     help="Fail a profile whose 10th percentile over files is below this."),
        click.option("--baseline", type=click.Path(dir_okay=False), default=None,
                     help="Score table of an accepted run (e.g. main branch)."),
        click.option("--max-drop", type=score_range, default=None,
                     help="Fail a file or profile mean that dropped more than this below --baseline."),
        click.option("--tolerance", type=score_range, default=None,
                     help="Noise band added to --max-drop (default 0, or the policy's default.tolerance)."),
    ]):
        command = decorator(command)
    return command


@click.command(help=CHECK_HELP)
@click.argument("inputs", nargs=-1, type=click.Path())
@scoring_options
@click.option("--reference", "reference_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of references paired by relative path: exact HAAQI instead of the model.")
@click.option("--pairs", type=click.Path(dir_okay=False), default=None,
              help="CSV with columns processed,reference: exact HAAQI of each pair.")
@segment_seconds_option(DEFAULT_SEGMENT_SECONDS)
@click.option("--scores", "scores_path", type=click.Path(dir_okay=False), default=None,
              help="Gate this existing score table instead of scoring INPUTS.")
@gate_options
@click.option("--policy", type=click.Path(dir_okay=False), default=None,
              help="TOML/YAML file with [default] and [profiles.NAME] thresholds.")
@click.option("--allow-errors", is_flag=True, help="Skip files that cannot be scored instead of exit 2.")
@click.option("--allow-model-change", is_flag=True,
              help="Compare with a baseline scored by another model (warning instead of exit 2).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the score table.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML.")
@click.option("--summary", type=click.Path(dir_okay=False), default=None,
              help="Append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).")
@scheduler_option
@quiet_option
@one_line_errors
def check(
    inputs: tuple[str, ...],
    options: ScoreOptions,
    reference_dir: str | None,
    pairs: str | None,
    segment_seconds: float | None,
    scores_path: str | None,
    thresholds: Thresholds,
    baseline: str | None,
    tolerance: float | None,
    policy: str | None,
    allow_errors: bool,
    allow_model_change: bool,
    out: str | None,
    junit: str | None,
    summary: str | None,
    scheduler: str | None,
    quiet: bool,
) -> None:
    from haaqicli.ci.evaluate import evaluate
    from haaqicli.ci.policy import Policy, load_policy
    from haaqicli.ci.render import print_report, write_junit, write_summary
    from haaqicli.util.errors import HaaqiError

    if reference_dir and pairs:
        raise click.UsageError("use either --reference or --pairs, not both")
    if scores_path and (reference_dir or pairs or inputs):
        raise click.UsageError("--scores gates an existing table: give no INPUTS, --reference or --pairs")
    if not inputs and not pairs and not scores_path:
        raise click.UsageError("give INPUTS to score, --pairs CSV, or --scores TABLE")
    if thresholds.max_drop is not None and not baseline:
        raise click.UsageError("--max-drop needs --baseline")
    _table_path(out, "--out")
    require_writable(out=out, junit=junit, summary=summary)
    loaded_policy = load_policy(policy) if policy else Policy()
    if baseline is None and any(t.max_drop is not None for t in [loaded_policy.default,
                                                                 *loaded_policy.profiles.values()]):
        click.echo("warning: the policy sets max_drop but no --baseline was given; max_drop is ignored", err=True)

    from haaqicli.output.tables import read_table, write_table

    baseline_table = None
    if baseline:
        if not Path(baseline).is_file():
            raise HaaqiError(f"{baseline}: baseline table not found")
        baseline_table = read_table(baseline)
    if scores_path:
        if not Path(scores_path).is_file():
            raise HaaqiError(f"{scores_path}: score table not found")
        table = read_table(scores_path)
    else:
        # lazy: the scorers import pandas and the audio decoders, which --help never needs
        from haaqicli.scoring.scorers import default_scorer

        options = replace(options, progress=not quiet, reference=reference_dir, pairs=pairs,
                          segment_seconds=segment_seconds, scheduler=scheduler)
        scorer = _scorer_from_context() or default_scorer(options)
        try:
            table = scorer(list(inputs), options)
        except RunInterrupted as stopped:
            if out and stopped.rows is not None:
                write_table(stopped.rows, out)
                raise RunInterrupted(f"{stopped.kept} kept in {out}; no gate was evaluated") from None
            raise RunInterrupted(f"{stopped.kept} not kept (no --out); no gate was evaluated") from None
    if out:
        write_table(table, out)
    report = evaluate(table, loaded_policy, thresholds, baseline=baseline_table, tolerance=tolerance,
                           allow_errors=allow_errors, allow_model_change=allow_model_change,
                           baseline_name=f"baseline {baseline}" if baseline else "baseline",
                           table_name=scores_path or "score table")
    note = segments_note(table, segment_seconds) if (reference_dir or pairs) else ""
    if note:
        report.notes.append(note)
    print_report(report)
    if junit:
        write_junit(report, junit)
    if summary:
        write_summary(report, summary)
    sys.exit(report.exit_code)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--codec", "codecs", default="mp3,aac,opus", show_default=True,
              help="Comma-separated: mp3, aac, opus, vorbis, mp2.")
@click.option("--bitrates", default=None,
              help="Comma-separated kb/s ladder [default: 24,32,48,64,96,128,160,192,256,320, "
                   "each codec limited to what its encoder accepts].")
@click.option("--target", type=click.FloatRange(0.0, 1.0), default=0.8, show_default=True,
              help="Score the lowest bitrate must reach.")
@click.option("--criterion", type=click.Choice(["min", "mean"]), default="min", show_default=True,
              help="Over several inputs: every input must meet --target (min) or their mean must.")
@scoring_options
@click.option("--fast", is_flag=True,
              help="Preview: the model predicts every rung instead of the exact HAAQI (much faster, less "
                   "accurate; table, answer and plot say so).")
@click.option("--exact", is_flag=True,
              help="With --fast: also the exact HAAQI next to the preview (without --fast, exact is what "
                   "is scored anyway).")
@segment_seconds_option(DEFAULT_SEGMENT_SECONDS)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the ladder table.")
@click.option("--answer", type=click.Path(dir_okay=False), default=None,
              help="Write the lowest-bitrate table (.csv/.parquet/.jsonl).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Quality vs bitrate plot (.png).")
@click.option("--keep-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the decoded rungs in this folder (default: a temp dir, removed).")
@quiet_option
@one_line_errors
def sweep(
    inputs: tuple[str, ...],
    codecs: str,
    bitrates: str | None,
    target: float,
    criterion: str,
    options: ScoreOptions,
    fast: bool,
    exact: bool,
    segment_seconds: float | None,
    out: str | None,
    answer: str | None,
    plot: str | None,
    keep_dir: str | None,
    quiet: bool,
) -> None:
    """Encode and decode INPUTS along a codec bitrate ladder with ffmpeg, score every rung for each
    --profile with the exact HAAQI against the input (--fast: the model's prediction, a preview), and
    print the lowest bitrate per codec that meets --target.

    The lowest bitrate is the lowest rung from which every higher rung also meets the target. The
    original is scored against itself too: the ceiling for each profile.
    --workers runs that many ffmpeg encodes (and exact-HAAQI processes) at once.
    Exit status: 0 done (even if a codec never reaches the target), 2 error (e.g. no ffmpeg, an
    empty ladder).
    """
    from haaqicli.ci import sweep as sweep_lib

    _table_path(out, "--out")
    _table_path(answer, "--answer")
    if plot and not plot.lower().endswith(".png"):
        raise click.BadParameter(f"{plot}: the plot is written as .png", param_hint="--plot")
    require_writable(out=out, answer=answer, plot=plot)
    sweep_lib.require_ffmpeg()
    options = replace(options, progress=not quiet, segment_seconds=segment_seconds)
    result = sweep_lib.run_sweep(
        inputs, sweep_lib.parse_codecs(codecs), sweep_lib.parse_bitrates(bitrates), options, target,
        scorer=_scorer_from_context(), exact=exact, exact_fn=_scorer_from_context("exact_fn"),
        criterion=criterion, workers=options.workers or 1, keep_dir=keep_dir, fast=fast,
    )
    from haaqicli.output.tables import write_table

    if out:
        write_table(result.table, out)
    if answer:
        write_table(result.answer, answer)
    if plot:
        sweep_lib.plot_sweep(result, plot)
    _print_sweep(result, quiet)
    sys.exit(0)


def _fmt(value: object, spec: str = ".3f") -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return "" if number != number else format(number, spec)


def _print_sweep(result, quiet: bool) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    from haaqicli.ci.sweep import METHOD_PREDICTED

    console = _console()
    table = result.table
    preview = result.method == METHOD_PREDICTED
    both = preview and table["score_exact"].notna().any()  # --fast --exact: the preview and the exact HAAQI
    label = "predicted (preview)" if preview else "exact"
    if not quiet:
        ladder = Table(show_edge=False, header_style="bold", title=f"ladder (mean over inputs), {label} HAAQI")
        for column in ["codec", "kb/s", "actual kb/s", "profile", f"score ({label})"] + (["exact"] if both else []) \
                + ["status"]:
            ladder.add_column(column)
        grouped = table.groupby(["codec", "bitrate_kbps", "profile"], dropna=False, sort=False)
        for (codec, kbps, profile), g in grouped:
            bad = g[g["status"] != "ok"]
            status = "ok" if bad.empty else f"{bad['status'].iloc[0]}: {bad['error'].iloc[0]}"
            row = [codec, _fmt(kbps, ".0f"), _fmt(g["actual_kbps"].mean(), ".0f"), profile, _fmt(g["score"].mean())]
            if both:
                row.append(_fmt(g["score_exact"].mean()))
            ladder.add_row(*row, status)
        console.print(ladder)
    criterion = result.answer["criterion"].iloc[0] if len(result.answer) else "min"
    view = Table(show_edge=False, header_style="bold",
                 title=f"lowest bitrate meeting target {result.target:g} ({criterion} over inputs), {label} HAAQI")
    for column in ["codec", "profile", "lowest kb/s", f"score ({label})"] + (
            ["lowest kb/s (exact)", "exact"] if both else []):
        view.add_column(column)
    for a in result.answer.itertuples(index=False):
        row = [a.codec, a.profile, _fmt(a.lowest_kbps, ".0f") or "not reached", _fmt(a.score_at_lowest)]
        if both:
            row += [_fmt(a.lowest_kbps_exact, ".0f") or "not reached", _fmt(a.score_exact_at_lowest)]
        view.add_row(*row)
    console.print(view)
    if preview:
        console.print("preview: these scores are the model's prediction (--fast), not the exact HAAQI; "
                      "run without --fast before choosing a bitrate", markup=False)
    else:
        console.print("scores: exact HAAQI of each decoded rung against the input (codec delay removed)",
                      markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    for warning in result.warnings:
        console.print(f"warning: {warning}", markup=False)
    if result.skipped:
        console.print("outside encoder range, not tried: " + ", ".join(result.skipped), markup=False)


def only_in_one_line(deltas, status: str, top: int) -> str:  # type: ignore[no-untyped-def]
    """The entries of one table missing from the other, short: a profile missing for every file is
    named once, and at most `top` single entries are listed (all of them are in --out)."""
    rows = deltas[deltas["status"] == status]
    if not len(rows):
        return ""
    files_per_profile = deltas.groupby("profile")["file"].nunique()
    missing_per_profile = rows.groupby("profile")["file"].nunique()
    whole = [profile for profile, n in missing_per_profile.items() if n == files_per_profile[profile]]
    parts = [f"profile {profile} (all {files_per_profile[profile]} files)" for profile in whole]
    single = rows[~rows["profile"].isin(whole)]
    parts += [f"{r.file} ({r.profile})" for r in single.head(top).itertuples()]
    if len(single) > top:
        parts.append(f"and {len(single) - top} more (--out lists them)")
    return ", ".join(parts)


@click.command()
@click.argument("table_a", type=click.Path(dir_okay=False))
@click.argument("table_b", type=click.Path(dir_okay=False))
@click.option("--max-drop", type=score_range, default=None,
              help="Exit 1 when a file or a profile mean dropped more than this (B below A).")
@click.option("--tolerance", type=score_range, default=0.0, show_default=True, help="Noise band added to --max-drop.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the per-file delta table.")
@click.option("--top", type=click.IntRange(1, 100000), default=20, show_default=True,
              help="Rows of the largest regressions to print.")
@one_line_errors
def compare(table_a: str, table_b: str, max_drop: float | None, tolerance: float, out: str | None, top: int) -> None:
    """Compare score tables A (before) and B (after): deltas B - A per file and profile, largest
    regressions first, files only in one table, and per profile the mean delta with a 95% t
    confidence interval and a Wilcoxon signed-rank test over the paired files.

    Exit status: 0 ok, 1 a drop exceeded --max-drop (+ --tolerance), 2 error (unreadable table).
    """
    from rich.table import Table

    from haaqicli.ci.compare import compare_tables, significance_note
    from haaqicli.output.tables import read_table, write_table
    from haaqicli.util.errors import HaaqiError

    _table_path(out, "--out")
    for path in (table_a, table_b):
        if not Path(path).is_file():
            raise HaaqiError(f"{path}: score table not found")
    result = compare_tables(read_table(table_a), read_table(table_b), max_drop=max_drop, tolerance=tolerance,
                            names=(table_a, table_b))
    if out:
        write_table(result.deltas, out)
    console = _console()
    paired = result.deltas[result.deltas["status"] == "both"]
    view = Table(show_edge=False, header_style="bold", title=f"largest regressions (B - A), top {top}")
    for column in ("file", "profile", "A", "B", "delta"):
        view.add_column(column, justify="left" if column in ("file", "profile") else "right")
    for row in paired.head(top).itertuples(index=False):
        colour = "red" if row.delta < 0 else "green" if row.delta > 0 else "default"
        view.add_row(row.file, row.profile, f"{row.score_a:.3f}", f"{row.score_b:.3f}", f"[{colour}]{row.delta:+.3f}[/]")
    console.print(view)
    per_profile = Table(show_edge=False, header_style="bold", title="per profile")
    for column in ("profile", "n", "mean A", "mean B", "mean delta", "95% CI", "worse/better", "Wilcoxon p", "note"):
        per_profile.add_column(column)
    for _, p in result.profiles.iterrows():
        per_profile.add_row(p["profile"], str(p["n"]), f"{p['mean_a']:.3f}", f"{p['mean_b']:.3f}",
                            f"{p['mean_delta']:+.4f}", f"[{_fmt(p['ci_low'], '+.4f')}, {_fmt(p['ci_high'], '+.4f')}]",
                            f"{p['worse']}/{p['better']}", _fmt(p["wilcoxon_p"], ".3g"), significance_note(p))
    console.print(per_profile)
    for _, p in result.profiles.iterrows():
        console.print(f"{p['profile']}: mean delta {p['mean_delta']:+.4f} over {p['n']} files; "
                      f"{significance_note(p)}", markup=False)
    for status, label in (("only_a", table_a), ("only_b", table_b)):
        line = only_in_one_line(result.deltas, status, top)
        if line:
            console.print(f"only in {label}: {line}", markup=False)
    for message in result.warnings:
        console.print(f"warning: {message}", markup=False)
    for message in result.failures:
        console.print(f"FAIL: {message}", markup=False)
    sys.exit(1 if result.failures else 0)
