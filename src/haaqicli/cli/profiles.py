"""``haaqi profiles``: list the built-in audiograms, or show what a profile file parses to."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors


@click.command("profiles")
@click.argument("specs", nargs=-1, metavar="[PATH_OR_NAME]...")
@click.option("--csv", "as_csv", is_flag=True, help="Print the profiles as a wide CSV (one row per ear).")
@one_line_errors
def profiles(specs: tuple[str, ...], as_csv: bool) -> None:
    """List built-in audiogram profiles, or show the profiles in CSV / listeners.json files.

    Levels are dB HL at 250, 500, 1000, 2000, 3000, 4000, 6000 and 8000 Hz. Severity is the WHO grade
    of the better-ear pure-tone average (0.5, 1, 2, 4 kHz).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from haaqicli.audiogram import BUILTIN_PROFILES, EARS, ProfileWarning, resolve_profiles
    from haaqicli.constants import AUDIOGRAM_FREQUENCIES

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProfileWarning)
        chosen = resolve_profiles(specs) if specs else list(BUILTIN_PROFILES.values())
    for warning in caught:
        if issubclass(warning.category, ProfileWarning):
            click.echo(f"warning: {warning.message}", err=True)

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
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("PTA", justify="right", no_wrap=True)
    table.add_column("ear", no_wrap=True)
    for freq in AUDIOGRAM_FREQUENCIES:
        table.add_column(f"{freq // 1000}k" if freq >= 1000 else str(freq), justify="right", no_wrap=True)
    table.add_column("source" if specs else "description", overflow="fold")
    for profile in chosen:
        info = profile.description if not specs else Path(profile.source).name
        ears = ("both",) if profile.symmetric else EARS
        for index, ear in enumerate(ears):
            audiogram = profile.ear("left" if ear == "both" else ear)
            first = index == 0
            table.add_row(profile.name if first else "", profile.severity if first else "",
                          f"{audiogram.pta():.1f}", ear, *(f"{v:g}" for v in audiogram.levels),
                          info if first else "")
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table to 80 columns
        console = Console(width=160)
    console.print(table)
