"""Options and error handling shared by every subcommand."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from haaqicli.scoring.options import ScoreOptions
from haaqicli.util import interrupts
from haaqicli.util.atomic import unwritable_reason
from haaqicli.util.constants import DEFAULT_SPL
from haaqicli.util.errors import HaaqiError
from haaqicli.util.interrupts import RunInterrupted
from haaqicli.util.levels import REFERENCE_SPL_HELP, SCORE_SPL_HELP

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes used by every command.
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # some files failed, or a gate failed
EXIT_USAGE = 2  # bad options, unreadable profile, ...


def one_line_errors(func: F) -> F:
    """Turn library errors into a one-line message and exit code 2, never a traceback; an interruption
    (Ctrl-C, SIGTERM, SIGHUP: see haaqicli.util.interrupts) into one line and 128 + the signal number."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HaaqiError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(EXIT_USAGE)
        except OSError as error:  # a disk filled up or a path vanished while writing an output
            click.echo(f"error: {error.filename or ''}{': ' if error.filename else ''}"
                       f"{error.strerror or error}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt as error:
            if isinstance(error, RunInterrupted):  # rows still attached: no command saved them
                kept = error.kept + (" not kept" if error.rows is not None else "")
            else:
                kept = "nothing finished was kept"
            click.echo(f"interrupted: {kept}", err=True)
            sys.exit(interrupts.exit_code())

    return wrapper  # type: ignore[return-value]


def require_writable(**paths: str | None) -> None:
    """Fail before any work when an output path (keyword = option name, e.g. junit=...) cannot be
    written: exit 2 with one line naming the option and the path."""
    for option, path in paths.items():
        reason = unwritable_reason(path) if path else ""
        if reason:
            raise HaaqiError(f"--{option.replace('_', '-')} {path}: cannot write there ({reason})")


def resume_option(func: F) -> F:
    return click.option("--resume", is_flag=True, help="Keep finished rows of --out and score only the rest.")(func)


def check_table_outputs(out: str | None, report: str | None, resume: bool = False) -> bool:
    """--out (a table file, or a FOLDER/: a partitioned Parquet dataset), --report and --resume, checked
    before any work; True when --out is a dataset."""
    # lazy: haaqicli.output.tables imports pandas, which --help never needs
    from haaqicli.output.tables import is_dataset

    if resume and not out:
        raise click.UsageError("--resume needs --out (the table to continue)")
    dataset = bool(out) and is_dataset(out)  # type: ignore[arg-type]
    if out and not dataset:
        check_extension(out, (".csv", ".parquet", ".jsonl"), "--out")
    if report:
        check_extension(report, (".md", ".html"), "--report")
    # a dataset's parts go inside the folder: the folder must take new files
    require_writable(out=str(Path(out) / "part.parquet") if dataset else out, report=report)  # type: ignore[arg-type]
    return dataset


def check_extension(path: str, allowed: tuple[str, ...], option: str) -> None:
    if not path.lower().endswith(allowed):
        raise click.BadParameter(f"{path}: extension must be one of {', '.join(allowed)}", param_hint=option)


def profile_option(func: F) -> F:
    return click.option(
        "--profile",
        "profiles",
        multiple=True,
        default=("normal",),
        show_default=True,
        help="Audiogram profile: a built-in name or a file (CSV/TSV, a row per listener or per frequency; "
        "Clarity listeners.json) (repeatable).",
    )(func)


def spl_option(func: F, help_text: str = SCORE_SPL_HELP) -> F:
    """--spl with the shared level definition (haaqicli.util.levels)."""
    return click.option(
        "--spl",
        type=click.FloatRange(0, 130),
        default=DEFAULT_SPL,
        show_default=True,
        help=help_text,
    )(func)


def reference_spl_option(func: F) -> F:
    return spl_option(func, REFERENCE_SPL_HELP)


def output_options(func: F) -> F:
    func = click.option(
        "--report",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write a report (.md or .html).",
    )(func)
    func = click.option(
        "--out",
        type=click.Path(),
        default=None,
        help="Write the score table (.csv, .parquet or .jsonl; a FOLDER/ is a partitioned Parquet dataset).",
    )(func)
    return func


# Default segment length where exact HAAQI runs on users' whole songs (`check --reference`, `sweep`): a
# segment of up to 1.5 x 30 s needs about 4 GB (BYTES_PER_MODEL_SAMPLE), a whole 5-minute song 25 GB.
DEFAULT_SEGMENT_SECONDS = 30.0


def segment_seconds_option(default: float | None = None) -> Callable[[F], F]:
    """Exact-HAAQI segmenting of long pairs (`haaqi reference`, `check --reference`, `sweep`);
    0 scores each whole pair at once (the value is None then)."""
    whole = "the default: each whole pair at once" if default is None else "0: each whole pair at once"

    def decorate(func: F) -> F:
        return click.option(
            "--segment-seconds", type=click.FloatRange(0.0), default=default, show_default=default is not None,
            callback=lambda ctx, param, value: value or None,
            help="Exact HAAQI: score consecutive segments of this length (length-weighted mean in `score`, "
                 f"minimum in `score_min`) with bounded memory; a pair shorter than 1.5 segments is scored "
                 f"whole ({whole}).")(func)

    return decorate


def segments_note(table: Any, segment_seconds: float | None) -> str:
    """One line saying which files were scored in segments (from a table's `segments` column), or ''."""
    if not segment_seconds or table is None or "segments" not in getattr(table, "columns", ()):
        return ""
    segmented = table.loc[table["segments"].fillna(1) > 1]
    key = "file" if "file" in segmented.columns else "processed"
    n = segmented[key].nunique() if len(segmented) else 0
    if not n:
        return ""
    return (f"{n} file(s) longer than {1.5 * segment_seconds:g} s were scored in {segment_seconds:g}-s segments: "
            "their score is the segments' length-weighted mean, score_min the worst segment "
            "(--segment-seconds 0 scores whole files)")


def scheduler_option(func: F) -> F:
    """Run the tasks on a Dask cluster (`haaqi[dask]`): `score`, `check`, `reference`, `dataset label`."""
    return click.option(
        "--scheduler", envvar="HAAQI_SCHEDULER", default=None, metavar="ADDRESS",
        help="Dask scheduler address (tcp://host:8786) or local:N (N worker processes here): each file, "
             "pair or item is a task on that cluster [env HAAQI_SCHEDULER].")(func)


def quiet_option(func: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(func)


def model_options(func):  # type: ignore[no-untyped-def]
    """Model choice and execution options, shared by `score`, `check` and `sweep`."""
    for decorator in reversed(
        [
            click.option("--model", default="distilled", show_default=True, help="teacher or distilled."),
            click.option("--device", default="auto", show_default=True,
                         help="auto, cpu, cuda or cuda:N. auto: the models on CUDA where present; the exact HAAQI "
                              "(--reference) on the CPU, faster than its CUDA engine (README)."),
            click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True),
            click.option("--precision", type=click.Choice(["float32", "int8"]), default="float32",
                         show_default=True,
                         help="int8: the encoder's linear layers on int8, CPU only (the teacher about 1.15x faster end to end; "
                              "scores 0.001 from float32 on average, at most 0.02: README). Rows name the model "
                              "'teacher:int8'."),
            click.option(
                "--workers",
                type=click.IntRange(1, 256),
                default=None,
                help="Processes decoding and resampling ahead of the model (joblib; default 1). With the "
                     "exact HAAQI (--reference, --pairs): pairs scored at once (default one per core).",
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


# The parameters `scoring_options` gathers into one ScoreOptions (click parameter name = field name).
SCORING_PARAMETERS = ("profiles", "spl", "model", "device", "batch_size", "precision", "workers", "mix",
                      "beats_checkpoint")


def scoring_options(func: F) -> F:
    """--profile, --spl and the model options, shared by `score`, `check` and `sweep`: the command
    receives them as one `options: ScoreOptions` instead of eight parameters."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in SCORING_PARAMETERS}
        # `haaqi` runs from a console script (its main module is guarded), so files may decode in a
        # spawned process while torch loads
        kwargs["options"] = ScoreOptions(**{**given, "profiles": tuple(given["profiles"])}, decode_process=True)
        return func(*args, **kwargs)

    return profile_option(spl_option(model_options(command)))  # type: ignore[return-value]


def compact_table() -> Any:
    """A rich Table for result rows on the terminal: no borders and one space between columns, so that
    a row of names and figures fits 80 columns whole (`score`, `reference`, `models`)."""
    # lazy: rich only where a table is printed (start-up time)
    from rich import box
    from rich.table import Table

    return Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))


def failure_line(message: str, *paths: str) -> str:
    """A failed row's reason as printed below a table: as it is where it names one of its files (the
    audio layer's errors do), else after the first file given."""
    named = [path for path in paths if path]
    if not named or any(path in message for path in named):
        return message
    return f"{named[0]}: {message}"


def print_table_and_failures(console: Any, table: Any, failures: list[str]) -> None:
    """A result table, then each distinct failure reason once (a file fails the same way for every
    profile and ear), as `error: ...` lines."""
    console.print(table)
    for line in dict.fromkeys(failures):
        console.print(f"error: {line}", markup=False)
