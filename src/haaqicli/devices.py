"""Which engine a `--device` names, decided without importing torch where no GPU can exist.

Importing torch costs seconds; the exact HAAQI on the CPU (numba) does not need it. On a machine
without an NVIDIA (or WSL GPU) driver, "auto" is the CPU at once; elsewhere torch decides.
"""

from __future__ import annotations

import os
import sys

# What an NVIDIA driver exposes on Linux (also inside containers given a GPU), and WSL's GPU device.
DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def cuda_driver_present() -> bool:
    """False when CUDA certainly cannot work here (checked without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not sys.platform.startswith("linux"):
        return sys.platform == "win32"  # macOS has no CUDA; on Windows let torch decide
    return any(os.path.exists(path) for path in DRIVER_PATHS)


def cuda_device(device: str) -> str | None:
    """The CUDA device that `device` names ("auto" where CUDA is present, "cuda", "cuda:N"), or None
    for the CPU: the one place that chooses the batched torch engine over the numba engine.
    A bad or missing device raises ModelError (one line)."""
    if device == "cpu" or (device.strip().lower() == "auto" and not cuda_driver_present()):
        return None
    from haaqicli.models.registry import resolve_device

    resolved = resolve_device(device)
    return str(resolved) if resolved.type == "cuda" else None
