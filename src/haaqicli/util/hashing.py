"""Content hashes of files (light: no pandas, no torch), for tables' resume keys and the weights check."""

from __future__ import annotations

import hashlib
from pathlib import Path


def content_hash(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex digest of the file bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
