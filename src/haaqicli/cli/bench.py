"""`haaqi bench`: a thin shell over :func:`haaqicli.bench.timing.run_bench`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors


@click.command()
@click.option("--files", "n_files", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--seconds", type=click.FloatRange(1, 3600), default=30.0, show_default=True, help="Per file.")
@click.option("--model", "models", multiple=True, default=("distilled", "teacher"), show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--pyclarity-seconds", type=click.FloatRange(1, 120), default=10.0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write JSON.")
@click.option("--scheduler", default=None, metavar="local:N|ADDRESS",
              help="Instead: throughput of `score --scheduler` with 1 and N workers (local:N) and the "
                   "scaling ratio, or on a running cluster (ADDRESS); first --model only.")
@click.option("--end-to-end", "e2e_dir", type=click.Path(file_okay=False), default=None,
              help="Also run the end-to-end rows (haaqi as a subprocess, inputs generated and kept in this folder).")
@click.option("--e2e-short", type=(int, float), default=(64, 10.0), show_default=True, metavar="FILES SECONDS",
              help="End to end: many short stereo files.")
@click.option("--e2e-long", type=(int, float), default=(8, 180.0), show_default=True, metavar="FILES SECONDS",
              help="End to end: a few long stereo files.")
@click.option("--e2e-pairs", type=(int, float), default=(72, 6.0), show_default=True, metavar="PAIRS SECONDS",
              help="End to end: reference pairs (44.1 kHz mono) for `haaqi reference` and pyclarity.")
@click.option("--e2e-workers", type=click.IntRange(1, 256), default=2, show_default=True,
              help="End to end: worker processes for `haaqi reference` and for pyclarity alike.")
@click.option("--e2e-warm-runs", type=click.IntRange(1, 20), default=3, show_default=True,
              help="End to end: timed invocations per row after the cold one; a row's time is their median.")
@one_line_errors
def bench(
    n_files: int,
    seconds: float,
    models: tuple[str, ...],
    batch_size: int,
    workers: int,
    repeats: int,
    pyclarity_seconds: float,
    threads: int | None,
    json_path: str | None,
    scheduler: str | None,
    e2e_dir: str | None,
    e2e_short: tuple[int, float],
    e2e_long: tuple[int, float],
    e2e_pairs: tuple[int, float],
    e2e_workers: int,
    e2e_warm_runs: int,
) -> None:
    """Time scoring of a synthetic folder and pyclarity's HAAQI, in one run; with --end-to-end, first
    the whole `haaqi` processes a user runs (start-up included), beside pyclarity."""
    from haaqicli.bench.timing import format_bench, format_cluster_bench, run_bench, run_cluster_bench

    result: dict = {}
    if e2e_dir:
        from haaqicli.bench.e2e import format_e2e, run_e2e

        result["end_to_end"] = run_e2e(Path(e2e_dir), *e2e_short, *e2e_long, *e2e_pairs, workers=e2e_workers,
                                       models=models, warm_runs=e2e_warm_runs)
        click.echo(format_e2e(result["end_to_end"]))
    with tempfile.TemporaryDirectory(prefix="haaqi-bench-") as folder:
        if scheduler:
            result.update(run_cluster_bench(Path(folder), scheduler, n_files, seconds, models[0], batch_size,
                                            repeats))
        else:
            result.update(run_bench(
                Path(folder), n_files, seconds, models, batch_size, workers, repeats, pyclarity_seconds, threads
            ))
    click.echo(format_cluster_bench(result) if scheduler else format_bench(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
