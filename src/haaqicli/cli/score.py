"""`haaqi score` and `haaqi models`: thin shells over :mod:`haaqicli.engine` and the registry."""

from __future__ import annotations

import sys
from dataclasses import replace

import click

from haaqicli.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    check_table_outputs,
    compact_table,
    failure_line,
    one_line_errors,
    output_options,
    print_table_and_failures,
    quiet_option,
    resume_option,
    scheduler_option,
    scoring_options,
)
from haaqicli.scoring.options import ScoreOptions
from haaqicli.util.constants import HOP_SECONDS, WINDOW_SECONDS
from haaqicli.util.interrupts import RunInterrupted


def print_notes(table) -> None:  # type: ignore[no-untyped-def]
    """One line on stderr per known limit of predicted scores that the scored files run into
    (`output.tables.prediction_notes`)."""
    from haaqicli.output.tables import prediction_notes

    for note in prediction_notes(table):
        click.echo(f"note: {note}", err=True)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@scoring_options
@output_options
@scheduler_option
@resume_option
@click.option("--window", "window_s", type=click.FloatRange(1.0, 60.0), default=WINDOW_SECONDS, show_default=True)
@click.option("--hop", "hop_s", type=click.FloatRange(0.5, 60.0), default=HOP_SECONDS, show_default=True)
@quiet_option
@one_line_errors
def score(
    inputs: tuple[str, ...],
    options: ScoreOptions,
    out: str | None,
    report: str | None,
    scheduler: str | None,
    resume: bool,
    window_s: float,
    hop_s: float,
    quiet: bool,
) -> None:
    """Score music INPUTS (files or folders) for each --profile, without a reference.

    Level: each file's RMS is heard at --spl, as if the original had been at the same level (exact
    HAAQI against an original: `haaqi reference` or `haaqi check --reference`).

    --out FOLDER/ (ending in a slash, or an existing folder) writes a partitioned Parquet dataset.

    Exit status: 0 when every file was scored, 1 when some failed, 2 for usage errors.
    """
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.engine import score_inputs
    from haaqicli.util.errors import HaaqiError

    dataset = check_table_outputs(out, report, resume)
    if hop_s > window_s:
        raise click.UsageError("--hop must not exceed --window (windows must overlap or touch)")
    loaded = resolve_profiles(options.profiles)
    options = replace(options, window_s=window_s, hop_s=hop_s)
    run = score_inputs(inputs, loaded, options, out=out, resume=resume, progress=not quiet,
                       scheduler=scheduler, keep_timelines=bool(report))
    kept = len(run.table)
    if dataset:  # the rows are in the dataset (the run held only the failed ones)
        from haaqicli.output.tables import dataset_rows, read_table

        kept = dataset_rows(out)
        click.echo(f"{kept} rows in {out}", err=True)
        if report:
            run.table = read_table(out)
    if report:
        from haaqicli.output.report import write_report

        write_report(run.table, report, timelines=run.timelines, title="haaqi score report", profiles=loaded,
                     spl=options.spl)
    if (not quiet or not out) and not dataset:
        print_scores(run.table)
    if not quiet:
        print_notes(run.table)
    if run.interrupted:
        raise RunInterrupted(f"{kept} finished rows kept" + (f" in {out}" if out else ""))
    if run.n_failed:
        failed_files = run.table.loc[run.table["status"] != "ok", "file"].nunique()
        click.echo(f"{failed_files} file(s) failed; see the error column", err=True)
        sys.exit(EXIT_SOME_FAILED)
    if not kept:
        raise HaaqiError("no audio files found in " + ", ".join(inputs))
    sys.exit(EXIT_OK)


def print_scores(table) -> None:  # type: ignore[no-untyped-def]
    """The score table on the terminal (stdout), one line per file x profile x ear, each predicted
    score with its calibrated interval."""
    import math

    from rich.console import Console

    # a failed file's score says "error"; its reason is printed below the table, once
    view = compact_table()
    for column in ("file", "profile", "ear", "score", "interval", "min", "p10", "worst at"):
        view.add_column(column, justify="right" if column in ("score", "interval", "min", "p10", "worst at") else "left",
                        no_wrap=True)
    failures: list[str] = []
    for row in table.itertuples(index=False):
        if row.status == "ok":
            lo, hi = getattr(row, "score_lo", math.nan), getattr(row, "score_hi", math.nan)
            view.add_row(
                row.file,
                row.profile,
                row.ear,
                f"{row.score:.3f}",
                f"{lo:.2f}–{hi:.2f}" if math.isfinite(lo) and math.isfinite(hi) else "-",
                f"{row.score_min:.3f}",
                f"{row.score_p10:.3f}",
                f"{row.worst_start_s:.1f}s",
            )
        else:  # the reason is printed below the table
            view.add_row(row.file, row.profile, row.ear, "[red]error[/]", "", "", "", "")
            failures.append(failure_line(str(row.error), str(row.file)))
    console = Console(soft_wrap=True)
    print_table_and_failures(console, view, failures)
    models = ", ".join(sorted({str(m) for m in table.get("model", []) if isinstance(m, str) and m}))
    if models:
        console.print(f"Predicted by the {models} model (no reference). Interval: where the exact HAAQI lay for "
                      "80% of the calibration music (weights/MODEL_CARD.md).", markup=False)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@one_line_errors
def models(as_json: bool) -> None:
    """List the shipped models with their size and measured accuracy."""
    import json

    from rich.console import Console

    from haaqicli.models.registry import default_weights_dir, list_models

    infos = list_models()
    folder = default_weights_dir()
    if not infos and not as_json:
        click.echo(f"no models registered in {folder / 'manifest.json'}")
        return
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    view = compact_table()
    for column in ("model", "arch", "params", "MB", "LCC", "SRCC", "MSE", "sha256"):
        view.add_column(column, no_wrap=True)
    measured_on: dict[str, str] = {}
    for info in infos:
        where, metrics = reported_metrics(info.metrics)
        measured_on[info.name] = where
        view.add_row(
            info.name,
            info.arch,
            f"{info.n_params / 1e6:.2f} M",
            f"{(folder / info.file).stat().st_size / 1e6:.1f}" if (folder / info.file).exists() else "missing",
            _metric(metrics, "lcc"),
            _metric(metrics, "srcc"),
            _metric(metrics, "mse", ".4f"),
            info.sha256[:12],
        )
    console = Console()
    console.print(view)
    places = set(measured_on.values())
    where_text = places.pop() if len(places) == 1 else "; ".join(f"{n}: {w}" for n, w in measured_on.items())
    console.print(f"LCC, SRCC, MSE against the exact HAAQI on {where_text} (weights/MODEL_CARD.md has every "
                  "split and degradation family).", markup=False)


def reported_metrics(recorded: dict[str, dict]) -> tuple[str, dict]:
    """The figures `haaqi models` shows and where they were measured: first recorded music that never
    chose a checkpoint (`haaqi evaluate --split validation-real --exclude-package P --record`), then the
    game-music validation split, and last the items that chose the checkpoint (optimistic, and said so)."""
    for key in sorted(recorded):
        if key.startswith("validation-real without"):
            metrics = recorded[key]
            packages = ", ".join(metrics.get("packages", [])) or key
            return f"{packages}, n={metrics.get('n', '?')} (recorded music, never chose)", metrics
    for key, label in (("validation-real", "validation-real"), ("validation", "game-music validation packages")):
        if key in recorded:
            return f"{label}, n={recorded[key].get('n', '?')}", recorded[key]
    if "dev" in recorded:
        return f"checkpoint choice, n={recorded['dev'].get('n', '?')} (optimistic)", recorded["dev"]
    return "-", {}


def _metric(metrics: dict, key: str, fmt: str = ".3f") -> str:
    value = metrics.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) else "-"
