"""``haaqi profiles``: list the built-in audiograms, or show what a profile file parses to."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors
from haaqicli.util.constants import DEFAULT_SPL


@click.command("profiles")
@click.argument("specs", nargs=-1, metavar="[PATH_OR_NAME]...")
@click.option("--csv", "as_csv", is_flag=True, help="Print the profiles as a wide CSV (one row per ear).")
@click.option("--ceiling/--no-ceiling", default=True, show_default=True,
              help="Show the clean-music ceiling: the exact HAAQI of clean music against itself for the "
                   "profile, what unprocessed music scores (stored for built-ins, measured for files).")
@click.option("--measure", is_flag=True,
              help="Measure the ceiling of built-in profiles too, instead of reading the stored table.")
@click.option("--spl", type=click.FloatRange(0, 130), default=DEFAULT_SPL, show_default=True,
              help="Ceiling: the level (dB SPL) the clean music is presented at (other than the default: "
                   "measured).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the ceilings (per ear, clip range, audiograms) as JSON.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Processes measuring ceilings (0: one per CPU core).")
@one_line_errors
def profiles(specs: tuple[str, ...], as_csv: bool, ceiling: bool, measure: bool, spl: float,
             json_path: str | None, workers: int) -> None:
    """List built-in audiogram profiles, or show the profiles in CSV / listeners.json files.

    Levels are dB HL at 250, 500, 1000, 2000, 3000, 4000, 6000 and 8000 Hz. Severity is the WHO grade
    of the better-ear pure-tone average (0.5, 1, 2, 4 kHz). The `clean` column is the profile's ceiling:
    HAAQI compares with normal hearing, so even the clean original scores below 1 with hearing loss.
    The built-ins' table is `haaqi profiles --measure --json src/haaqicli/output/ceilings.json`.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from haaqicli.audiogram import BUILTIN_PROFILES, EARS, ProfileWarning, resolve_profiles
    from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProfileWarning)
        chosen = resolve_profiles(specs) if specs else list(BUILTIN_PROFILES.values())
    for warning in caught:
        if issubclass(warning.category, ProfileWarning):
            click.echo(f"warning: {warning.message}", err=True)

    if json_path and not Path(json_path).resolve().parent.is_dir():  # before the work, not after it
        raise click.UsageError(f"--json {json_path}: no such folder {Path(json_path).parent}")
    ceilings = {}
    if json_path or (ceiling and not as_csv):  # the CSV carries audiograms only
        from haaqicli.output.ceiling import (
            CLEAN_CLIPS,
            CLIP_SECONDS,
            ceilings_for,
            stored_ceiling,
            write_ceilings,
        )

        unknown = [p for p in chosen if measure or stored_ceiling(p, spl) is None]
        if unknown:
            click.echo(f"measuring the clean-music ceiling of {len(unknown)} profile(s): exact HAAQI of "
                       f"{len(CLEAN_CLIPS)} synthetic {CLIP_SECONDS:g}-s clips per ear ...", err=True)
        ceilings = ceilings_for(chosen, spl, measure=measure, workers=workers)
        if json_path:
            write_ceilings(ceilings, json_path)
    if as_csv:
        click.echo("name,ear," + ",".join(str(f) for f in AUDIOGRAM_FREQUENCIES))
        for profile in chosen:
            for ear in EARS if not profile.symmetric else ("both",):
                levels = profile.ear("left" if ear == "both" else ear).levels
                click.echo(f"{profile.name},{ear}," + ",".join(f"{v:g}" for v in levels))
        return

    title = "Built-in profiles" if not specs else f"Profiles from {', '.join(specs)}"
    caption = "Levels in dB HL. PTA: mean of 0.5, 1, 2, 4 kHz; severity: WHO grade of the better ear."
    if not specs:
        caption += " N1-N7, S1-S3: Bisgaard et al. (2010) standard audiograms (8 kHz extrapolated)."
    if ceilings:
        caption += (f" clean: the ceiling, exact HAAQI of clean music against itself at {spl:g} dB SPL (mean of "
                    "the ears; range over 4 synthetic clips): what perfect, unamplified audio scores.")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("PTA", justify="right", no_wrap=True)
    table.add_column("ear", no_wrap=True)
    for freq in AUDIOGRAM_FREQUENCIES:
        table.add_column(f"{freq // 1000}k" if freq >= 1000 else str(freq), justify="right", no_wrap=True)
    if ceilings:
        table.add_column("clean", justify="right", no_wrap=True)
        table.add_column("range", no_wrap=True)
    table.add_column("source" if specs else "description", overflow="fold")
    for profile in chosen:
        info = profile.description if not specs else Path(profile.source).name
        ears = ("both",) if profile.symmetric else EARS
        for index, ear in enumerate(ears):
            audiogram = profile.ear("left" if ear == "both" else ear)
            first = index == 0
            clean = []
            if ceilings:
                top = ceilings[profile.name]
                clean = [f"{top.score:.2f}", f"{top.low:.2f}-{top.high:.2f}"] if first else ["", ""]
            table.add_row(profile.name if first else "", profile.severity if first else "",
                          f"{audiogram.pta():.1f}", ear, *(f"{v:g}" for v in audiogram.levels), *clean,
                          info if first else "")
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table to 80 columns
        console = Console(width=160)
    console.print(table)
