"""Which device a `--device` names. For the exact HAAQI, "auto" and "cpu" are the numba engine, decided
without importing torch (seconds); the models' "auto" is CUDA where torch finds it. And the names of
the precisions a model runs at (`models.precision` runs them), here because score tables label rows
with them before torch loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from haaqicli.util.errors import ModelError

if TYPE_CHECKING:
    import torch


def cuda_device(device: str) -> str | None:
    """The CUDA device that `device` names explicitly ("cuda", "cuda:N"), or None for the numba engine on
    the CPU ("cpu", "auto"): the one place that chooses the batched torch engine for the exact HAAQI.
    "auto" means the CPU even where a GPU is present: on an H200 the batched engine ran 46x real time
    (32 clips of 10 s per batch), about what two CPU cores give (about 20x each), so a many-core GPU
    machine is faster with its CPU workers. A bad or missing device raises ModelError (one line)."""
    if device.strip().lower() in ("cpu", "auto"):
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


def model_device(device: str | torch.device = "auto", precision: str = "float32") -> torch.device:
    """The device a model runs on at `precision`: int8 kernels are CPU only, so there "auto" is the CPU
    and a CUDA device is a one-line error."""
    if precision != "int8":
        return resolve_device(device)
    if str(device).strip().lower() in ("auto", "cpu"):
        return resolve_device("cpu")
    raise ModelError(f"--device {device}: --precision int8 runs on the CPU only (use --device cpu or auto)")


PRECISIONS = ("float32", "int8")
DEFAULT_PRECISION = "float32"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ModelError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    return precision


def model_label(name: str, precision: str = DEFAULT_PRECISION) -> str:
    """The name score tables give a model run at `precision` ("teacher", "teacher:int8"): rows of
    another precision are other scores (--resume does not mix them; gates see a model change)."""
    return name if check_precision(precision) == DEFAULT_PRECISION else f"{name}:{precision}"
