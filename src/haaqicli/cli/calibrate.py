"""`haaqi calibrate`: fit the intervals of predicted scores on one labelled split, check them on another."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors


@click.command()
@click.option("--model", "models", multiple=True, default=("distilled", "teacher"), show_default=True,
              help="Model whose intervals to fit (repeatable).")
@click.option("--fit", "fit_table", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled table to fit on (columns label, pred_<model>, pta or audiogram).")
@click.option("--check", "check_table", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled table of other music to measure the coverage on.")
@click.option("--coverage", type=click.FloatRange(0.5, 0.99), default=0.8, show_default=True,
              help="Nominal coverage of the interval.")
@click.option("--write", is_flag=True, help="Store the calibration with the weights (and in the manifest).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the figures here.")
@one_line_errors
def calibrate(models: tuple[str, ...], fit_table: str, check_table: str, coverage: float, write: bool,
              json_out: str | None) -> None:
    """Fit score_lo/score_hi (residual quantiles per severity grade and predicted score) on --fit and
    print their coverage on --check; --write stores them next to the weights, keyed by their sha256."""
    import json

    from haaqicli.models.calibration import calibrate_from_tables, save_calibration
    from haaqicli.models.registry import get_info
    from haaqicli.util.atomic import atomic_write

    # The command that reproduces this fit, recorded in the calibration file.
    words = [word for model in models for word in ("--model", model)]
    words += ["--fit", fit_table, "--check", check_table, "--coverage", f"{coverage:g}"]
    command = "haaqi calibrate " + " ".join(shlex.quote(word) for word in words)
    figures = {}
    for model in dict.fromkeys(models):
        info = get_info(model)
        calibration = calibrate_from_tables(model, info.sha256, fit_table, check_table, coverage, command)
        check = calibration.check
        figures[model] = {"fit_n": calibration.fit["n"], "check": check}
        click.echo(f"{model}: fitted on {calibration.fit['n']} items ({', '.join(calibration.fit['packages']) or fit_table}); "
                   f"on {check['n']} items of {', '.join(check['packages']) or check_table}: "
                   f"coverage {check['coverage']:.3f} (nominal {coverage:.2f}), mean width {check['mean_width']:.3f}")
        for name, part in [*check["grades"].items(), *check["predicted"].items()]:
            label = f"predicted {name}" if name[0].isdigit() else name
            click.echo(f"  {label:<26} n={part['n']:<5} coverage {part['coverage']:.3f}  width {part['mean_width']:.3f}")
        if write:
            click.echo(f"  written to {save_calibration(calibration)}")
    if json_out:
        text = json.dumps(figures, indent=2) + "\n"
        atomic_write(Path(json_out), lambda tmp: tmp.write_text(text))
