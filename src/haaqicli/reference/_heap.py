"""Keep freed large buffers in the process heap (glibc), so repeated HAAQI calls reuse them.

A 10-s clip needs dozens of (32 bands x samples) float64 arrays of ~60 MB. glibc serves every
allocation above 32 MB with a fresh mmap and unmaps it on free, so each call pays a page fault per
4 KiB of every array again (measured: ~25% of the CPU time of a call). Serving large blocks from the
heap, and trimming the heap only once more than `TRIM_BYTES` are free at its top, removes that
cost; the price is that up to TRIM_BYTES of freed memory stays with the process.

It is applied once, on the first HAAQI call (process-wide, glibc only, harmless elsewhere); set
HAAQI_KEEP_HEAP=0 to opt out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
TRIM_BYTES = 1 << 30
TOP_PAD_BYTES = 64 << 20

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc once (see module docstring); returns True when the tuning is in effect."""
    global _done
    if _done:
        return True
    _done = True
    if os.environ.get("HAAQI_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) and mallopt(M_TOP_PAD, TOP_PAD_BYTES)
    return bool(ok and mallopt(M_MMAP_MAX, 0))
