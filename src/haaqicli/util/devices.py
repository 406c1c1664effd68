"""Which engine a `--device` names, decided without importing torch where no GPU can exist.

Importing torch costs seconds; the exact HAAQI on the CPU (numba) does not need it. On a machine
without an NVIDIA (or WSL GPU) driver, "auto" is the CPU at once; elsewhere torch decides.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from haaqicli.util.errors import ModelError

if TYPE_CHECKING:
    import torch

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
    resolved = resolve_device(device)
    return str(resolved) if resolved.type == "cuda" else None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda"/"cuda:N" must exist (else ModelError, one line)."""
    # lazy: torch costs seconds to import, and the numba engine never needs it
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
        idx = int(d.split(":")[1]) if ":" in d and d.split(":")[1].isdigit() else 0
        if ":" in d and not d.split(":")[1].isdigit():
            raise ModelError(f"--device {device}: expected cuda:N")
        if idx >= torch.cuda.device_count():
            raise ModelError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device(f"cuda:{idx}")
    raise ModelError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
