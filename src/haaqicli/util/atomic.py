"""Atomic file writes: every output of the tool (tables, reports, manifests, label shards, caches,
weights) is written to a temporary file beside its path and moved into place with ``os.replace``, so a
reader, a crash or a Ctrl-C never sees a half-written file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None], *, keep_suffix: bool = False,
                 durable: bool = False) -> Path:
    """`write(tmp)` to a temporary file beside `path`, then move it into place; a failed write leaves
    no temporary behind. `keep_suffix`: the temporary name ends in the path's suffix, for writers that
    choose the format by it (soundfile, ffmpeg, np.save). `durable`: fsync before the move (weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix if keep_suffix else ''}")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def unwritable_reason(path: str | Path) -> str:
    """Why `path` cannot be written (as `atomic_write` would: missing folders are created), or '' when it
    can. Checked before a long run starts, so a typo costs seconds, not the run."""
    path = Path(path)
    if path.is_dir():
        return "is a folder"
    folder = path.parent
    while not folder.exists():  # atomic_write creates the missing folders: the nearest existing one decides
        if folder == folder.parent:
            break
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to write in {folder}"
    if path.exists() and not os.access(path, os.W_OK):
        return "no permission to write the file"
    return ""
