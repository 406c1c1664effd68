"""Stopping a run early the same way whatever stopped it: Ctrl-C (SIGINT), a scheduler or `timeout`
(SIGTERM) or a closed terminal (SIGHUP).

While `handled()` is active, each of these signals raises `Interrupted` (a KeyboardInterrupt), so
every place that keeps finished rows on Ctrl-C keeps them on SIGTERM and SIGHUP too, and the command
exits with the shell's code for that signal: 128 + the signal number (130, 143, 129).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

HANDLED_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """Raised by a handled signal; `signum` says which one."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` inside the block; the previous handlers come back
    afterwards. Outside the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _raise) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code() -> int:
    """The exit status for the interruption: 128 + the first signal received (SIGINT when none was
    recorded, e.g. a KeyboardInterrupt raised by Python's own handler)."""
    return 128 + (_received[0] if _received else int(signal.SIGINT))


class RunInterrupted(KeyboardInterrupt):
    """A command stopped early after saving what it had; `kept` says what, e.g. '12 finished rows kept
    in scores.csv'. The CLI prints 'interrupted: <kept>' and exits with `exit_code()`."""

    def __init__(self, kept: str, rows: Any = None) -> None:
        super().__init__(kept)
        self.kept = kept
        self.rows = rows  # the finished rows (a DataFrame) when the raiser did not save them itself
