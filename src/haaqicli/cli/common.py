"""Options and error handling shared by every subcommand."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from haaqicli.constants import DEFAULT_SPL
from haaqicli.errors import HaaqiError

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes used by every command.
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # some files failed, or a gate failed
EXIT_USAGE = 2  # bad options, unreadable profile, ...


def one_line_errors(func: F) -> F:
    """Turn library errors into a one-line message and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HaaqiError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def profile_option(func: F) -> F:
    return click.option(
        "--profile",
        "profiles",
        multiple=True,
        default=("normal",),
        show_default=True,
        help="Audiogram profile: a CSV/JSON path or a built-in name (repeatable).",
    )(func)


def spl_option(func: F) -> F:
    return click.option(
        "--spl",
        type=click.FloatRange(0, 130),
        default=DEFAULT_SPL,
        show_default=True,
        help="Presentation level in dB SPL that the file's RMS is mapped to.",
    )(func)


def output_options(func: F) -> F:
    func = click.option(
        "--report",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write a report (.md or .html).",
    )(func)
    func = click.option(
        "--out",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write the score table (.csv, .parquet or .jsonl).",
    )(func)
    return func


def segment_seconds_option(func: F) -> F:
    """Exact-HAAQI segmenting of long pairs (`haaqi reference`, `haaqi check --reference`)."""
    return click.option(
        "--segment-seconds", type=click.FloatRange(1.0), default=None,
        help="Exact HAAQI: score consecutive segments of this length (length-weighted mean in `score`, "
             "minimum in `score_min`) with bounded memory, instead of each whole pair at once.")(func)


def quiet_option(func: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(func)


def model_options(func):  # type: ignore[no-untyped-def]
    """Model choice and execution options, shared by `score`, `check` and `sweep`."""
    for decorator in reversed(
        [
            click.option("--model", default="distilled", show_default=True, help="teacher or distilled."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
            click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True),
            click.option(
                "--workers",
                type=click.IntRange(1, 256),
                default=1,
                show_default=True,
                help="Processes decoding and resampling ahead of the model (joblib).",
            ),
            click.option(
                "--mix",
                type=click.Choice(["stereo", "mono"]),
                default="stereo",
                show_default=True,
                help="stereo: left channel with the left audiogram, right with the right; mono: downmix.",
            ),
            click.option(
                "--beats-checkpoint",
                type=click.Path(exists=True, dir_okay=False),
                default=None,
                help="Official BEATs checkpoint ({'cfg','model'}) for the teacher's encoder.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def show_warnings(func):  # type: ignore[no-untyped-def]
    """Print library warnings (e.g. interpolated audiogram frequencies) as one line each."""

    def format_warning(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        return f"warning: {message}\n"

    warnings.formatwarning = format_warning
    return func
