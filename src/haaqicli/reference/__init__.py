"""Exact, fast intrusive HAAQI (pyclarity-compatible), alignment and reference-based pair scoring.

Submodules are imported on first attribute access: a process that only hands pairs to worker
processes does not pay for scipy.signal and the compiled engine."""

from __future__ import annotations

import importlib
from typing import Any

# bound now (it is light): the submodule of the same name would otherwise shadow the function
from haaqicli.reference.align import align as align

_EXPORTS = {
    "compute_haaqi": "haaqi", "compute_haaqi_batch": "dispatch", "haaqi_loss": "haaqi",
    "haaqi_terms": "haaqi", "score_pairs": "pairs",
}

__all__ = sorted([*_EXPORTS, "align"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
