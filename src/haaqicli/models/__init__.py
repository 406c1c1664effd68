"""HAAQI-Net models: BEATs encoder, HAAQI head, distilled student, musicnn content prior, weights registry.

Heavy imports (torch) happen on first attribute access so `haaqi --help` stays fast."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BEATs": "beats", "BEATsConfig": "beats", "load_beats_checkpoint": "beats",
    "HAAQINet": "haaqinet", "HAAQINetOutput": "base", "HAAQIModel": "base", "HeadConfig": "haaqinet", "haaqinet_loss": "haaqinet",
    "StudentNet": "student", "distillation_loss": "student",
    "MusiCNN": "musicnn", "MusicnnConfig": "musicnn", "MusicnnPrior": "musicnn",
    "TEACHER_CONFIG": "haaqinet", "STUDENT_CONFIG": "student", "ModelInfo": "registry",
    "build_model": "registry", "count_params": "registry", "list_models": "registry", "load_model": "registry",
    "save_model": "registry", "resolve_device": "registry",  # re-exported from haaqicli.util.devices
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
