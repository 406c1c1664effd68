"""util.allocator: glibc keeps freed large blocks on the heap; the CLI applies it, users can override."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from haaqicli.util import allocator

PROBE = """
import json, os
from haaqicli.util import allocator
applied = allocator.keep_freed_memory()
print(json.dumps({"applied": applied, "env": {k: os.environ.get(k) for k in allocator._ENVIRONMENT}}))
"""


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applied_on_glibc_and_passed_to_children() -> None:
    result = _probe(_clean_env())
    assert result["applied"] is True
    # children (joblib workers) read the same settings from the environment
    assert result["env"] == {"MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
                             "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD)}


def test_user_setting_wins() -> None:
    env = {**_clean_env(), "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = _probe(env)
    assert result["applied"] is False
    assert result["env"]["MALLOC_MMAP_THRESHOLD_"] == "131072"
    assert result["env"]["MALLOC_TRIM_THRESHOLD_"] is None


def test_cli_applies_it() -> None:
    # `haaqi profiles` runs through the group callback: the variables reach its environment
    script = ("import os, sys\nfrom haaqicli.cli import main\n"
              "try:\n    main(['profiles'], standalone_mode=False)\nfinally:\n"
              "    print('MMAP=' + str(os.environ.get('MALLOC_MMAP_THRESHOLD_')), file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", script], env=_clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = str(allocator.MMAP_THRESHOLD) if platform.libc_ver()[0] == "glibc" else "None"
    assert f"MMAP={expected}" in out.stderr


def test_children_with_default_allocator(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # our values are removed inside the block and restored after; anything else is left alone
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(allocator.MMAP_THRESHOLD))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    with allocator.children_with_default_allocator():
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
        assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)


_held: list[np.ndarray] = []


def _grow(megabytes: int, disable_check: bool) -> int:
    """A task that keeps `megabytes` resident in its worker (as the kept heap does), after the leak
    check's 1-s delay; returns the worker's pid."""
    if disable_check:
        allocator.disable_worker_leak_check()
    _held.append(np.ones(megabytes << 17))  # 8-byte items, all touched
    time.sleep(1.2)
    return os.getpid()


@pytest.mark.parametrize("disable_check", [False, True])
def test_a_worker_that_keeps_memory_is_not_restarted(disable_check: bool) -> None:
    """loky (with psutil) replaces a worker grown by 300 MB since its first task; a task that calls
    `disable_worker_leak_check` keeps its worker (and its imports) for the next task."""
    pytest.importorskip("psutil")
    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=1, reuse=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loky's "A worker stopped" warning where it restarts one
            pids = [executor.submit(_grow, megabytes, disable_check).result(timeout=120) for megabytes in (0, 400, 0)]
    finally:
        executor.shutdown(kill_workers=True)
    assert (pids[2] == pids[0]) == disable_check, pids
