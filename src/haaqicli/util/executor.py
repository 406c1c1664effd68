"""Where tasks run: here (in-process or a local process pool) or on a Dask cluster (`--scheduler`).

A command hands an executor one task function and an iterable of task arguments; the executor yields
``(arguments, outcome)`` as tasks finish, the outcome being the function's result or the exception that
stopped it (the command turns it into error rows). The task functions (score one file, one pair, label
one item) are the same wherever they run, so a cluster run gives a local run's results.

On Dask, at most a few tasks per worker are submitted at a time (the client never holds every task or
result), a worker that dies loses only its in-flight tasks (the scheduler runs them again elsewhere),
and the client ships task arguments (paths), never audio. Dask is imported only when a scheduler is
given: ``pip install haaqi[dask]``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from haaqicli.util.errors import HaaqiError

SCHEDULER_ENV = "HAAQI_SCHEDULER"
TASKS_PER_WORKER = 2  # submitted per worker thread: enough to keep it busy, few enough to bound memory
SLOTS_REFRESH_S = 5.0
TASK_RETRIES = 2  # a task raising an unexpected error (not a bad file: those return error rows) runs again
WAIT_FOR_WORKERS_S = 600  # a batch system may take minutes to start the first worker


class Executor:
    """Runs tasks in this process, one after another (the base of the others)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    @property
    def in_flight(self) -> int:
        """Tasks submitted and not yet yielded."""
        return 0

    def imap_unordered(self, fn: Callable[..., Any], tasks: Iterable[tuple], **shared: Any
                       ) -> Iterator[tuple[tuple, Any]]:
        """``(args, fn(*args, **shared) or the exception it raised)`` for each task, as they finish."""
        for args in tasks:
            try:
                yield args, fn(*args, **shared)
            except Exception as error:  # the caller turns it into the task's error rows
                yield args, error

    def run_on_workers(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """``fn(*args)`` once on every worker (here: this process), by worker name."""
        return {socket.gethostname(): fn(*args)}


class DaskExecutor(Executor):
    """Tasks on a dask.distributed cluster: ``local:N`` starts a LocalCluster of N single-threaded worker
    processes on this machine; anything else is a scheduler address (``tcp://host:8786``)."""

    def __init__(self, scheduler: str) -> None:
        try:
            # lazy: dask.distributed is an optional dependency, needed on this path only
            from distributed import Client, LocalCluster
        except ImportError:
            raise HaaqiError("--scheduler needs Dask: pip install 'haaqi[dask]'") from None
        self._cluster = None
        self._pending: dict[Any, tuple] = {}
        self._slots, self._slots_at = 1, -float("inf")
        local = parse_local(scheduler)
        try:
            if local is not None:
                # one thread per worker: a task already uses its core (torch / numba run single-threaded
                # there, as Dask's nanny sets OMP_NUM_THREADS=1); the processes give the parallelism
                self._cluster = LocalCluster(n_workers=local, threads_per_worker=1, processes=True,
                                             dashboard_address=None)
                self.client = Client(self._cluster)
            else:
                self.client = Client(scheduler)  # timeout: Dask's distributed.comm.timeouts.connect
        except (OSError, TimeoutError, ValueError) as error:  # refused, unreachable, malformed
            self.close()
            raise HaaqiError(f"--scheduler {scheduler}: cannot connect ({error})") from None
        self.scheduler = scheduler

    def _task_slots(self) -> int:
        """Tasks the cluster runs at once (worker threads), looked up at most every few seconds: an
        adaptive cluster grows and shrinks while a run goes on."""
        now = time.monotonic()
        if now - self._slots_at > SLOTS_REFRESH_S:
            self._slots = max(1, sum(self.client.nthreads().values()))
            self._slots_at = now
        return self._slots

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if getattr(self, "client", None) is not None and self._pending:
            self.client.cancel(list(self._pending))
            self._pending.clear()
        for part in (getattr(self, "client", None), self._cluster):
            if part is not None:
                part.close()
        self.client = None  # type: ignore[assignment]
        self._cluster = None

    def imap_unordered(self, fn: Callable[..., Any], tasks: Iterable[tuple], **shared: Any
                       ) -> Iterator[tuple[tuple, Any]]:
        # lazy: dask.distributed is an optional dependency, needed on this path only
        from distributed import as_completed

        todo = iter(tasks)
        finished = as_completed()

        def submit_more() -> None:
            while len(self._pending) < TASKS_PER_WORKER * self._task_slots():
                args = next(todo, None)
                if args is None:
                    return
                future = self.client.submit(fn, *args, **shared, pure=False, retries=TASK_RETRIES)
                self._pending[future] = args
                finished.add(future)

        try:
            submit_more()
            for future in finished:
                args = self._pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # e.g. KilledWorker: the task took down every worker it ran on
                    outcome = error
                future.release()
                submit_more()
                yield args, outcome
        finally:  # interrupted (Ctrl-C, or the caller stopped): nothing keeps running for nobody
            if self._pending:
                self.client.cancel(list(self._pending))
                self._pending.clear()

    def run_on_workers(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        self.client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
        return self.client.run(fn, *args)


def parse_local(scheduler: str) -> int | None:
    """N for ``local:N``, None for an address."""
    if not scheduler.startswith("local"):
        return None
    count = scheduler.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise HaaqiError(f"--scheduler {scheduler}: expected local:N with N >= 1 workers, or an address")
    return int(count)


def open_executor(scheduler: str | None) -> Executor:
    """A Dask executor for a scheduler address or ``local:N``; without one, this process."""
    if not scheduler:
        return Executor()
    parse_local(scheduler)  # a malformed local:N is a usage error before anything starts
    return DaskExecutor(scheduler)


def worker_name() -> str:
    """The Dask worker this runs on (its address), else the host name: for error messages."""
    if "distributed" in sys.modules:
        # lazy: dask.distributed is an optional dependency, needed on this path only
        from distributed import get_worker

        try:
            return f"worker {get_worker().address}"
        except ValueError:  # not inside a worker
            pass
    return f"host {socket.gethostname()}"


def unreadable(path: Any, what: str = "file") -> str:
    """'' when ``path`` can be read here, else the reason, naming the worker: on a cluster the client
    ships paths, and every worker must see the same filesystem."""
    if path is None or os.access(path, os.R_OK):
        return ""
    state = "not readable" if os.path.exists(path) else "not found"
    return (f"{path}: {what} {state} on {worker_name()} (workers must see the client's files at the same "
            "paths: a shared filesystem)")


class TaskProgress:
    """Tasks done, in flight and failed, the rate and the time left: a rich bar on stderr (on a
    terminal), or nothing."""

    def __init__(self, label: str, total: int, display: bool = True) -> None:
        self.total = total
        self.done = self.failed = 0
        self.started = time.perf_counter()
        self._bar: Any = None
        if display:
            # lazy: rich only where this path runs (start-up time)
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[state]}"), console=Console(stderr=True))
            self._task = self._bar.add_task(label, total=total, state="")
            self._bar.start()

    def update(self, done: int = 0, failed: int = 0, in_flight: int = 0) -> None:
        """``done`` more tasks finished, ``failed`` of them failed; ``in_flight`` now running."""
        self.done += done
        self.failed += failed
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, state=self.state(in_flight))

    def state(self, in_flight: int) -> str:
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done
        eta = f"ETA {_clock(elapsed / self.done * left)}" if self.done and left else ""
        return f"{in_flight} in flight, {self.failed} failed, {self.done / max(elapsed, 1e-9):.2f}/s {eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
