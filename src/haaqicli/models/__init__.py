"""HAAQI-Net models: BEATs encoder, HAAQI head, distilled student, weights registry.

Heavy imports (torch) happen on first attribute access so `haaqi --help` stays fast."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "BEATs": "beats", "BEATsConfig": "beats", "load_beats_checkpoint": "beats",
    "HAAQINet": "haaqinet", "HAAQINetOutput": "haaqinet", "HeadConfig": "haaqinet", "haaqinet_loss": "haaqinet",
    "StudentNet": "student", "distillation_loss": "student",
    "TEACHER_CONFIG": "registry", "STUDENT_CONFIG": "registry", "ModelInfo": "registry",
    "build_model": "registry", "count_params": "registry", "list_models": "registry", "load_model": "registry",
    "save_model": "registry", "resolve_device": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
