"""util.allocator: glibc keeps freed large blocks on the heap; the CLI applies it, users can override."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

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
