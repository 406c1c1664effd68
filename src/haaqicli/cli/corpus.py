"""`haaqi corpus`: fetch and render the training corpus (what `make corpus` runs), or print its summary."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from haaqicli.cli.common import EXIT_SOME_FAILED, one_line_errors


@click.command()
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="Corpus root [default: data/corpus, or $HAAQI_DATA_DIR/corpus].")
@click.option("--package", "packages", multiple=True, help="Only these packages (repeatable).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Render processes.")
@click.option("--scores", type=click.IntRange(0), default=120, show_default=True,
              help="music21 scores to render (a seeded subset of its corpus).")
@click.option("--score-variants", type=click.IntRange(1), default=2, show_default=True,
              help="Renders per score (soundfont, instruments, tempo and key differ).")
@click.option("--loop-scores", type=click.IntRange(0), default=50, show_default=True,
              help="Scores rendered again over a Sonic Pi loop.")
@click.option("--seed", type=int, default=2026, show_default=True)
@click.option("--summary", "summary_only", is_flag=True, help="Only print tracks and minutes per package.")
@one_line_errors
def corpus(corpus: str | None, packages: tuple[str, ...], workers: int, scores: int, score_variants: int,
           loop_scores: int, seed: int, summary_only: bool) -> None:
    """Fetch the corpus packages, keep their music, render MIDI/modules/scores; print tracks and minutes.

    Exits 1 naming every package that yields no music track.
    """
    from haaqicli.data.corpus import default_data_dir
    from haaqicli.data.install import EmptyPackageError, InstallConfig, format_summary, install, summarise
    from haaqicli.data.packages import PACKAGES

    root = Path(corpus) if corpus else default_data_dir() / "corpus"
    if summary_only:
        rows = summarise(root, list(packages) or [p.name for p in PACKAGES])
        click.echo(format_summary(rows))
        failed = [r.package for r in rows if r.failed]
        if failed:
            click.echo(f"error: no music from package(s) {', '.join(failed)}", err=True)
            sys.exit(EXIT_SOME_FAILED)
        return
    config = InstallConfig(root, packages or None, workers, seed, scores, score_variants, loop_scores)
    try:
        install(config)
    except EmptyPackageError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_SOME_FAILED)
