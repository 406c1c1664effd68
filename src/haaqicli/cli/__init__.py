"""The ``haaqi`` command: a thin Click shell over the library.

Subcommands are imported lazily, so ``haaqi profiles`` does not pay for importing torch.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
import warnings
from typing import Any

import click

from haaqicli import __version__
from haaqicli.util import allocator, interrupts

# command name -> ("module:attribute" relative to haaqicli.cli, one-line help shown by `haaqi --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("score:score", "Score music files and folders for each hearing profile (no reference needed)."),
    "profiles": ("profiles:profiles", "List built-in audiogram profiles or show a profile file."),
    "models": ("score:models", "List the shipped models with their size and measured accuracy."),
    "reference": ("reference:reference", "Exact intrusive HAAQI of processed audio against references."),
    "corpus": ("corpus:corpus", "Fetch and render the training corpus; tracks and minutes per package."),
    "dataset": ("dataset:dataset", "Build, label and inspect the training corpus."),
    "train": ("training:train", "Train the teacher model on labelled data."),
    "distill": ("training:distill", "Distil the student model from the teacher."),
    "pretrain": ("training:pretrain", "Pre-train the teacher's encoder on a damage pretext (no HAAQI labels)."),
    "correct": ("training:correct", "Fit a signal-descriptor corrector onto a trained model (network frozen)."),
    "evaluate": ("training:evaluate", "LCC/SRCC/MSE of a model on the validation packages."),
    "ablate": ("training:ablate", "Ablation table and learning curve of the model changes."),
    "calibrate": ("calibrate:calibrate", "Fit and check the intervals of predicted scores on labelled music."),
    "bench": ("bench:bench", "Time scoring against pyclarity's HAAQI in the same run."),
    "check": ("ci:check", "CI gate: fail when quality drops below thresholds or a baseline."),
    "sweep": ("ci:sweep", "Score a codec bitrate ladder and find the lowest bitrate meeting a target."),
    "compare": ("ci:compare", "Compare two score tables: deltas, worst regressions, paired test."),
}


class LazyGroup(click.Group):
    """Click group that imports a subcommand's module only when it is used (see Click docs)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Static help text, so `haaqi --help` imports no subcommand (and no torch).
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        """Click's own main, except that a usage error (a bad option value, a missing argument) is one
        line, `error: ...` and where to find help, as every other error of the tool, not the usage
        block Click prints before it. Exit statuses are Click's (2 for usage errors)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            outcome = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:  # `haaqi` alone: the help, as Click shows it
            error.show()
            sys.exit(error.exit_code)
        except click.UsageError as error:
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            click.echo(f"error: {error.format_message()}{where}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # a command that returns normally, --help and --version (their exit status) end the process here
        sys.exit(outcome if isinstance(outcome, int) else 0)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target[0].split(":")
        module = importlib.import_module(f"haaqicli.cli.{module_name}")
        return getattr(module, attribute)


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """Library warnings (a downmixed file, interpolated audiogram frequencies) as one line each, without
    the source line Python prints: what a user reads is the message."""
    return f"warning: {message}\n"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="haaqi")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Predict HAAQI music quality for listeners with hearing loss."""
    # SIGTERM and SIGHUP stop a run like Ctrl-C: finished rows kept, exit 128 + signal number
    ctx.with_resource(interrupts.handled())
    # large tensors reused batch after batch stay on the heap, not faulted in again (util.allocator)
    allocator.keep_freed_memory()
    # every command's library warnings as one line each (the library's own callers keep Python's format)
    warnings.formatwarning = format_warning


def entry() -> None:
    """The console script: `main`, then the process ends without Python's teardown of its modules.

    Tearing down torch's modules took 0.5-0.7 s of every run that loaded a model (`python -c "import
    torch"` against the same with `os._exit`), after the work was done: every table is written and
    closed by then. The exit handlers still run (threads, child processes, logging) and the streams are
    flushed."""
    try:
        main()  # standalone mode: always ends in SystemExit
        code: int | str | None = 0
    except SystemExit as finished:
        code = finished.code
    _stop_idle_worker_processes()
    # What the interpreter's own exit does first: threading's exit callbacks (joblib's loky executor
    # tells its worker processes to stop there) and the join of non-daemon threads. Without it,
    # multiprocessing's exit handler below waited on the idle loky workers until their 300-s timeout.
    shutdown_threads = getattr(threading, "_shutdown", None)
    if shutdown_threads is not None:
        shutdown_threads()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (haaqi ... | head): nothing more to say
            pass
    os._exit(code or 0)


def _stop_idle_worker_processes() -> None:
    """Stop the worker processes of joblib's reusable executor, if this run started one, without waiting
    for each to tear down its interpreter: every result is in by now, and that wait (their exit once
    told to stop) added 0.3-0.6 s to each run with workers. Uses loky's module-level executor; where a
    joblib release names it otherwise, nothing happens here and the exit below stops them as before."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    shutdown = getattr(executor, "shutdown", None)
    if shutdown is None:
        return
    try:
        shutdown(wait=False, kill_workers=True)
    except Exception:  # noqa: BLE001 - an exit path: the interpreter's own shutdown still stops them
        pass
