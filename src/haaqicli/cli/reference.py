"""`haaqi reference`: exact (intrusive) HAAQI of processed audio against references."""

from __future__ import annotations

import sys

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
    profile_option,
    quiet_option,
    reference_spl_option,
    resume_option,
    scheduler_option,
    segment_seconds_option,
    segments_note,
)


@click.command()
@click.option("--pairs", "pairs_csv", type=click.Path(dir_okay=False), default=None,
              help="CSV with columns reference,processed (paths relative to the CSV).")
@click.option("--reference", "dirs", nargs=2, type=click.Path(), default=None, metavar="REF PROCESSED",
              help="The reference and the processed file, or two folders whose files pair by relative path.")
@profile_option
@reference_spl_option
@click.option("--mix", type=click.Choice(["stereo", "mono"]), default="stereo", show_default=True,
              help="stereo: left channel with left audiogram, right with right; mono: downmix.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Pairs scored at once on the CPU, one single-threaded process each (default: one per core). "
                   "A single pair uses every core in one process.")
@click.option("--device", default="auto", show_default=True,
              help="auto (the CPU: faster than the batched CUDA engine, see README), cpu, cuda or cuda:N. "
                   "On CUDA the clips of a pair are batched.")
@segment_seconds_option()
@output_options
@scheduler_option
@resume_option
@quiet_option
@one_line_errors
def reference(pairs_csv: str | None, dirs: tuple[str, str] | None, profiles: tuple[str, ...], spl: float,
              mix: str, workers: int | None, device: str, segment_seconds: float | None, out: str | None,
              report: str | None, scheduler: str | None, resume: bool, quiet: bool) -> None:
    """Exact HAAQI for (reference, processed) pairs, per profile and ear.

    Level: the reference is heard at --spl and the processed file keeps its level relative to it.

    --out FOLDER/ (ending in a slash, or an existing folder) writes a partitioned Parquet dataset.
    --resume keeps the ok rows of --out for the same pair, profile and --spl and scores the rest.

    Exit status: 0 all pairs scored, 1 some failed, 2 usage errors.
    """
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference.pairs import pair_paths, read_pairs_csv, score_pairs

    if (pairs_csv is None) == (dirs is None):
        raise click.UsageError("give exactly one of --pairs CSV or --reference REF PROCESSED")
    dataset = check_table_outputs(out, report, resume)
    loaded = resolve_profiles(profiles)
    pairs = read_pairs_csv(pairs_csv) if pairs_csv else pair_paths(*dirs)  # type: ignore[misc]
    from haaqicli.util.interrupts import RunInterrupted

    try:  # rows go to --out as pairs finish
        table = score_pairs(pairs, loaded, spl=spl, mix=mix, workers=workers, progress=not quiet,
                            device=device, segment_seconds=segment_seconds, out=out,
                            scheduler=scheduler, resume=resume)
    except RunInterrupted as stopped:
        if out:
            raise RunInterrupted(f"{stopped.kept} kept in {out}") from None
        raise
    failed = (table["status"] != "ok").any()
    if dataset:  # the rows are in the dataset (the run held only the failed ones)
        from haaqicli.output.tables import dataset_rows, read_table

        click.echo(f"{dataset_rows(out)} rows in {out}", err=True)  # type: ignore[arg-type]
        if report or segment_seconds:  # every row, or the columns the segments note needs
            table = read_table(out, None if report else ["processed", "segments"])  # type: ignore[arg-type]
    if report:
        from haaqicli.output.report import write_report

        write_report(table.rename(columns={"processed": "file"}), report, title="haaqi reference report",
                     profiles=loaded, spl=spl)
    note = segments_note(table, segment_seconds)
    if note:
        click.echo(f"note: {note}", err=True)
    if (not quiet or not out) and not dataset:
        print_pair_scores(table)
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def print_pair_scores(table) -> None:  # type: ignore[no-untyped-def]
    """The pair table on the terminal (stdout) in the style of `haaqi score`: one line per pair x
    profile x ear."""
    from rich.console import Console

    segmented = bool((table["segments"].fillna(1) > 1).any())
    # as `haaqi score` prints its table: a failed pair's score says "error", its reason below
    view = compact_table()
    columns = ["processed", "profile", "ear", "score"] + (["min"] if segmented else []) + ["delay"]
    for column in columns:
        view.add_column(column, justify="right" if column in ("score", "min", "delay") else "left", no_wrap=True)
    failures: list[str] = []
    for row in table.itertuples(index=False):
        if row.status == "ok":
            cells = [row.processed, row.profile, row.ear, f"{row.score:.3f}"]
            cells += [f"{row.score_min:.3f}"] if segmented else []
            view.add_row(*cells, f"{row.delay_s * 1000:.1f} ms")
        else:
            view.add_row(row.processed, row.profile, row.ear, "[red]error[/]", *([""] if segmented else []), "")
            paths = [path for path in (row.processed, row.reference) if isinstance(path, str)]  # NaN: none
            failures.append(failure_line(str(row.error), *paths))
    print_table_and_failures(Console(soft_wrap=True), view, failures)
