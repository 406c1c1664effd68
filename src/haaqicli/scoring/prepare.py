"""Files into model-ready windows, ahead of the network: `prepare_file` decodes, calibrates,
resamples and windows one file (or records why it cannot); `prepared_stream` prepares a folder's
files in input order on a thread, a decoding process or joblib workers.

No torch here: a decoding process imports only this and the audio modules (about 0.3 s), so it
decodes while the main process imports torch and loads the model (about 2 s of start-up that would
otherwise leave the other cores idle)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from haaqicli import audio
from haaqicli.audio.bandwidth import LongTermSpectrum, frame_stride
from haaqicli.scoring.options import ScoreOptions
from haaqicli.util import allocator
from haaqicli.util.constants import MODEL_SAMPLE_RATE
from haaqicli.util.errors import HaaqiError
from haaqicli.util.hashing import content_hash


@dataclass
class PreparedFile:
    """One file decoded into model-ready windows (or the error that stopped it)."""

    input: audio.InputFile
    ears: list[str] = field(default_factory=list)  # one entry per scored channel
    windows: np.ndarray | None = None  # (channels, n_windows, window_samples) at 24 kHz, calibrated
    starts_s: np.ndarray | None = None
    ends_s: np.ndarray | None = None
    streamed: bool = False  # windows not held: `window_chunks` decodes them again, with `gain`
    gain: float = 1.0  # presentation gain (applied to held windows already)
    duration_s: float = float("nan")
    sample_rate: int = 0
    channels: int = 0
    content_hash: str = ""
    error: str = ""
    spectrum: LongTermSpectrum | None = None  # a held file's channels' long-term spectrum (`bandwidth_hz`)


def ears_for(channels: int, mix: str) -> list[str]:
    """Which ear each scored channel is heard by."""
    if mix == "mono" or channels == 1:
        return ["both"]
    return ["left", "right"]


def prepare_file(
    item: audio.InputFile, options: ScoreOptions, model_sample_rate: int = MODEL_SAMPLE_RATE
) -> PreparedFile:
    """Decode, calibrate, window and resample one file. Errors become the row's reason."""
    allocator.disable_worker_leak_check()  # in a worker process (score --workers): see there
    prepared = PreparedFile(input=item)
    # hashlib releases the GIL, so the file is hashed on another core while it is decoded
    hashing = None if item.content_hash else _hash_pool().submit(content_hash, item.path)
    prepared.content_hash = item.content_hash
    try:
        source = audio.open_audio(item.path)
        info = source.info
        prepared.duration_s = info.duration_s
        prepared.sample_rate = info.sample_rate
        prepared.channels = info.file_channels  # the file's own count, also when downmixed to stereo
        prepared.ears = ears_for(info.channels, options.mix)
        audio.require_duration(item.path, info.duration_s)
        if info.duration_s > options.hold_seconds:
            # A long file: one pass for its level now; its windows stream later (`window_chunks`).
            prepared.gain = audio.file_gain(source, options.spl)
            prepared.streamed = True
        else:
            # One decoding pass: the level is metered while the stream is resampled to the model rate
            # and cut into windows there; the presentation gain is applied afterwards (all linear).
            (held,) = audio.calibrated_windows(source, options.spl, options.window_s, options.hop_s,
                                               model_sample_rate, downmix=len(prepared.ears) == 1)
            prepared.gain, prepared.windows = held.gain, held.windows
            prepared.starts_s, prepared.ends_s = held.starts_s, held.ends_s
            prepared.spectrum = channel_spectrum(info.duration_s, model_sample_rate)
            prepared.spectrum.add(held.windows)
        if hashing is not None:
            prepared.content_hash = hashing.result()
    except HaaqiError as error:
        prepared.error = str(error)
    except Exception as error:  # a batch never dies because of one file
        prepared.error = f"{item.path}: {type(error).__name__}: {error}"
    if hashing is not None and not prepared.content_hash:
        try:
            prepared.content_hash = hashing.result()
        except OSError:
            pass  # the decoding error already names the file
    return prepared


def window_chunks(prepared: PreparedFile, options: ScoreOptions, chunk_windows: int,
                  model_sample_rate: int = MODEL_SAMPLE_RATE) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A prepared file's windows (channels, n, samples), start and end times, in chunks: held windows
    as one chunk; a streamed file's decoded again, `chunk_windows` windows at a time, calibrated with
    the gain of its first pass (the same samples as held windows: same decoder, resampler, gain)."""
    if not prepared.streamed:
        yield prepared.windows, prepared.starts_s, prepared.ends_s  # type: ignore[misc]
        return
    for chunk in audio.calibrated_windows(audio.open_audio(prepared.input.path), options.spl, options.window_s,
                                          options.hop_s, model_sample_rate, downmix=len(prepared.ears) == 1,
                                          gain=prepared.gain, chunk_windows=chunk_windows):
        yield chunk.windows, chunk.starts_s, chunk.ends_s


def channel_spectrum(duration_s: float, sample_rate: int) -> LongTermSpectrum:
    """An empty long-term spectrum for a file's scored channels, taking a fixed budget of frames."""
    duration = duration_s if math.isfinite(duration_s) else 0.0
    return LongTermSpectrum(stride=frame_stride(duration * sample_rate))


@functools.lru_cache(maxsize=1)
def _hash_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="haaqi-hash")


# Files a decoding thread prepares while the model scores the one before (each held file is a few MB).
DECODE_AHEAD = 2


def _decoded_ahead(
    items: Sequence[audio.InputFile], options: ScoreOptions, sample_rate: int
) -> Iterator[PreparedFile]:
    """Prepared files in input order, decoded on a thread ahead of the caller: decoding (libsndfile,
    ffmpeg), resampling and the network all release the GIL, so decoding the next file overlaps
    scoring this one. Files are prepared independently, so scores do not change."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="haaqi-decode")
    pending = iter(items)
    ahead: deque = deque()
    try:
        for item in itertools.islice(pending, DECODE_AHEAD):
            ahead.append(pool.submit(prepare_file, item, options, sample_rate))
        while ahead:
            prepared = ahead.popleft().result()
            following = next(pending, None)
            if following is not None:
                ahead.append(pool.submit(prepare_file, following, options, sample_rate))
            yield prepared
    finally:  # on Ctrl-C: the file being decoded finishes, the queued ones never start
        pool.shutdown(wait=True, cancel_futures=True)


class DecodingProcess:
    """Prepared files in input order from a spawned process, which starts preparing at once.

    Started before the model loads, it decodes, resamples and windows while this process imports
    torch, so a folder's preparation overlaps that start-up instead of the network. It imports no torch
    and runs its BLAS on one thread. Prepared files wait in the process (up to `AHEAD_FILES` files and
    `AHEAD_BYTES` of windows) until this one asks for them: a transfer needs this process's
    interpreter, which the import of torch holds for seconds at a time, so pushing them would stall the
    decoding. Their windows come through a file in shared memory that this process maps
    (`_decoding_loop`). It ignores Ctrl-C: this process stops it (the file being prepared finishes). A
    file that kills it (a crashing decoder) is tried once more in a new process, then gets an error row,
    and a new process prepares the rest. Files are prepared independently, so scores do not change."""

    AHEAD_FILES = 256  # the bytes bound memory; this bounds the bookkeeping of many tiny files
    AHEAD_BYTES = 256 << 20

    def __init__(self, items: Sequence[audio.InputFile], options: ScoreOptions, sample_rate: int) -> None:
        self.items, self.options, self.sample_rate = list(items), options, sample_rate
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="haaqi-decode-", dir=_window_folder(self.AHEAD_BYTES)))
        try:
            self._start(0)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _start(self, first: int) -> None:
        """A new process preparing the files from index ``first`` on."""
        self._stop()
        if first >= len(self.items):
            return
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_decoding_loop, name="haaqi-decode", daemon=True,
                                  args=(theirs, self.items[first:], first, self.options, self.sample_rate,
                                        self.folder, self.AHEAD_FILES, self.AHEAD_BYTES))
        try:
            with _single_threaded_children():
                process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.process, self.connection = process, ours

    def _fetch(self, index: int) -> PreparedFile | None:
        """File ``index`` from the process, or None where the process died first."""
        if self.connection is None:
            try:
                self._start(index)
            except OSError:  # no process can start (a process limit): this one prepares the file
                return prepare_file(self.items[index], self.options, self.sample_rate)
        try:
            self.connection.send(index)  # type: ignore[union-attr]
            prepared, windows = self.connection.recv()  # type: ignore[union-attr]
        except (EOFError, OSError):
            self._stop()
            return None
        if windows is not None:  # mapped, not copied; the name goes at once, the pages with the array
            path, shape = windows
            prepared.windows = np.asarray(np.memmap(path, dtype=np.float32, mode="r", shape=shape))
            os.unlink(path)
        return prepared

    def __iter__(self) -> Iterator[PreparedFile]:
        """Each file once, in input order; the process stops when the iteration ends or is closed."""
        try:
            for index, item in enumerate(self.items):
                prepared = self._fetch(index)
                if prepared is None:  # the first file of a new process is the one asked for
                    prepared = self._fetch(index) or PreparedFile(
                        input=item, error=f"{item.path}: the decoding process died on this file")
                yield prepared
        finally:
            self.close()

    def close(self) -> None:
        """Stop the process (the file it is preparing finishes, nothing after it starts) and remove the
        windows it left."""
        self._stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _stop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(OSError):
                self.connection.send(None)
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.join(timeout=60)
            if self.process.is_alive():  # a decoder that hangs
                self.process.terminate()
                self.process.join()
            self.process = None


def _window_folder(ahead_bytes: int) -> str | None:
    """Where prepared windows wait for the scorer: shared memory where it has room (a container's
    /dev/shm is often 64 MB), else the temporary folder (its pages are read back before they reach the
    disk)."""
    try:
        free = os.statvfs("/dev/shm")
        if free.f_bavail * free.f_frsize >= 4 * ahead_bytes:
            return "/dev/shm"
    except (OSError, AttributeError):  # no /dev/shm (macOS), no statvfs (Windows)
        pass
    return None


def _decoding_loop(connection: Connection, items: Sequence[audio.InputFile], first: int, options: ScoreOptions,
                   sample_rate: int, folder: Path, ahead_files: int, ahead_bytes: int) -> None:
    """The decoding process: prepares files in order while there is room, and hands each over when asked
    (by index, in order; None ends it). Windows go through a file in ``folder`` that the parent maps:
    through the pipe (where the file cannot be written), a 3-minute stereo file's 46 MB cost about 0.1 s
    of copying on each side."""
    for handled in (signal.SIGINT, getattr(signal, "SIGHUP", None)):  # the parent stops this process
        if handled is not None:
            signal.signal(handled, signal.SIG_IGN)
    ready: dict[int, PreparedFile] = {}
    following = first  # the next file to prepare

    def held() -> int:
        return sum(p.windows.nbytes for p in ready.values() if p.windows is not None)

    def prepare_next() -> None:
        nonlocal following
        ready[following] = prepare_file(items[following - first], options, sample_rate)
        following += 1

    while True:
        if (following < first + len(items) and len(ready) < ahead_files and held() < ahead_bytes
                and not connection.poll()):
            prepare_next()
            continue
        try:
            wanted = connection.recv()
            if wanted is None:
                return
            while wanted >= following:
                prepare_next()
            prepared = ready.pop(wanted)
            windows = None
            if prepared.windows is not None:
                path = folder / f"{wanted}.f32"
                try:
                    np.ascontiguousarray(prepared.windows, dtype=np.float32).tofile(path)
                    windows, prepared.windows = (str(path), prepared.windows.shape), None
                except OSError:  # no room (a full /dev/shm) or no folder: through the pipe, slower
                    path.unlink(missing_ok=True)
            connection.send((prepared, windows))
        except (EOFError, OSError):  # the parent stopped (Ctrl-C, a signal) or is gone: nothing to say
            return


# Set for a decoding process where the user has not: its matrix products (resampling) stay on one core.
_CHILD_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_environment_lock = threading.Lock()


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    with _environment_lock:
        added = {name: value for name, value in _CHILD_THREADS.items() if name not in os.environ}
        os.environ.update(added)
        try:
            yield
        finally:
            for name in added:
                os.environ.pop(name, None)


def decode_in_process(options: ScoreOptions) -> bool:
    """Whether `prepared_stream` decodes in a process: where asked for (`ScoreOptions.decode_process`)
    and torch is not imported yet, so the process overlaps its import (about 2 s). Where torch is
    loaded (a caller that scored before, the tests) a thread starts faster."""
    return options.decode_process and "torch" not in sys.modules


def prepared_stream(
    items: Sequence[audio.InputFile], options: ScoreOptions, sample_rate: int, in_process: bool | None = None
) -> Iterable[PreparedFile]:
    """Prepared files in input order, started at once (before the caller asks for the first):
    joblib workers where `options.workers` asks for them, else a `DecodingProcess` (``in_process``, by
    default `decode_in_process(options)`), else a thread (`_decoded_ahead`). A long file's windows
    stream later in the caller's process (`window_chunks`). Iterate it once; `close_stream` stops it,
    iterated or not."""
    workers = options.workers or 1
    if workers > 1:
        # lazy: joblib only where this path runs (start-up time)
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers, return_as="generator", prefer="processes")
        return parallel(delayed(prepare_file)(item, options, sample_rate) for item in items)
    if decode_in_process(options) if in_process is None else in_process:
        try:
            return DecodingProcess(items, options, sample_rate)
        except OSError:  # no process can start (a process limit, no temporary folder): a thread decodes
            pass
    return _decoded_ahead(items, options, sample_rate)


def close_stream(stream: Iterable[PreparedFile]) -> None:
    """Stop a `prepared_stream`: whatever it still decodes finishes, nothing queued starts."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()
