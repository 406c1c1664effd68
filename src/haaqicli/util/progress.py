"""One progress display for the scoring commands (`score`, `reference`, `check`): seconds of audio done
out of the total, files done, the rate in x real time and the time left.

Counted in seconds of audio, not files, so a long file moves the bar while it is scored. On a terminal
it is a live rich bar on stderr; in a log (not a terminal) rich prints only the final state, one line,
never carriage-return updates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# (seconds of audio done, total seconds, files done, total files); seconds_done == -1 closes the display
ProgressCallback = Callable[[float, float, int, int], None]


class AudioProgress:
    """Progress in seconds of audio. `total_seconds` may grow while files are probed (`add_total`)."""

    def __init__(self, label: str, total_files: int, total_seconds: float = 0.0,
                 callback: ProgressCallback | None = None, display: bool = True) -> None:
        self.label = label
        self.total_files = total_files
        self.total_seconds = total_seconds
        self.seconds = 0.0
        self.files = 0
        self.started = time.perf_counter()
        self.callback = callback
        self._lock = threading.Lock()  # the total may grow from a probing thread
        self._bar: Any = None
        if display and callback is None:
            self._bar, self._task = _rich_bar(label)
        self._show()

    def add_total(self, seconds: float) -> None:
        """More audio to expect (a file's duration, once known)."""
        with self._lock:
            self.total_seconds += max(0.0, float(seconds))
            self._show()

    def advance(self, seconds: float = 0.0, files: int = 0) -> None:
        """`seconds` more audio done; `files` more files finished."""
        with self._lock:
            self.seconds += max(0.0, float(seconds))
            self.files += files
            self._show()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.callback is not None:
            self.callback(-1, self.total_seconds, self.files, self.total_files)
        if self._bar is not None:
            self._show()
            self._bar.stop()
            self._bar = None

    def rate(self) -> float:
        """Seconds of audio per second of wall time so far (x real time)."""
        return self.seconds / max(time.perf_counter() - self.started, 1e-9)

    def _show(self) -> None:
        if self.callback is not None:
            self.callback(self.seconds, self.total_seconds, self.files, self.total_files)
        if self._bar is None:
            return
        total = max(self.total_seconds, self.seconds)
        self._bar.update(self._task, total=total or None, completed=self.seconds,
                         audio=f"{_clock(self.seconds)}/{_clock(total)} audio",
                         files=f"{self.files}/{self.total_files} files",
                         rate=f"{self.rate():.1f}x real time" if self.seconds else "")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _rich_bar(label: str) -> tuple[Any, Any]:
    # lazy: rich only where this path runs (start-up time)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    # On stderr, so stdout keeps only the results. Not a terminal: rich prints the final state once.
    bar = Progress(TextColumn(label), BarColumn(), TextColumn("{task.fields[audio]}"),
                   TextColumn("{task.fields[files]}"), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    task = bar.add_task(label, total=None, audio="", files="", rate="")
    bar.start()
    return bar, task
