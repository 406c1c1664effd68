"""`haaqi bench`: a thin shell over :func:`haaqicli.bench.run_bench`."""

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
) -> None:
    """Time end-to-end scoring of a synthetic folder and pyclarity's HAAQI, in one run."""
    from haaqicli.bench import format_bench, format_cluster_bench, run_bench, run_cluster_bench

    with tempfile.TemporaryDirectory(prefix="haaqi-bench-") as folder:
        if scheduler:
            result = run_cluster_bench(Path(folder), scheduler, n_files, seconds, models[0], batch_size, repeats)
        else:
            result = run_bench(
                Path(folder), n_files, seconds, models, batch_size, workers, repeats, pyclarity_seconds, threads
            )
    click.echo(format_cluster_bench(result) if scheduler else format_bench(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
