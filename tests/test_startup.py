"""Start-up cost: the command line imports heavy libraries only where a command needs them.

Each check runs in a fresh interpreter (a subprocess), since this test process has imported them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

HEAVY = ("torch", "numba", "pandas", "matplotlib", "scipy.signal")

# Runs the CLI in-process with argv, then prints which heavy modules got imported (JSON list).
RUN_CLI = """
import json, sys
from haaqicli.cli import main
try:
    main(sys.argv[1:], prog_name="haaqi")
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)), file=sys.stderr)
"""


def _heavy_after(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    return json.loads(result.stderr.strip().splitlines()[-1])


def test_importing_the_cli_imports_nothing_heavy() -> None:
    code = f"import json, sys, haaqicli.cli\nprint(json.dumps([m for m in {HEAVY} if m in sys.modules]), file=sys.stderr)"
    assert _heavy_after(code) == []


def test_help_and_models_import_nothing_heavy() -> None:
    assert _heavy_after(RUN_CLI.format(heavy=HEAVY), "--help") == []
    assert _heavy_after(RUN_CLI.format(heavy=HEAVY), "score", "--help") == []
    assert _heavy_after(RUN_CLI.format(heavy=HEAVY), "models") == []
    assert _heavy_after(RUN_CLI.format(heavy=HEAVY), "profiles") == []


def _two_pairs(folder) -> None:  # type: ignore[no-untyped-def]
    from haaqicli.audio import synth, write_audio

    ref = synth.music(1.0, 24000, seed=2)[0]
    for name, signal in (("r", ref), ("p", 0.5 * ref)):
        write_audio(folder / f"{name}.wav", signal.astype(np.float32), 24000)
    (folder / "pairs.csv").write_text("reference,processed\nr.wav,p.wav\nr.wav,r.wav\n")


def test_reference_main_process_leaves_the_engine_to_its_workers(tmp_path) -> None:
    """`haaqi reference` with worker processes imports neither torch (no GPU to ask about) nor the
    compiled engine (numba, scipy.signal) in the main process: the workers do."""
    _two_pairs(tmp_path)
    heavy = _heavy_after(RUN_CLI.format(heavy=HEAVY), "reference", "--pairs", str(tmp_path / "pairs.csv"),
                         "--workers", "2", "-q", "--out", str(tmp_path / "out.csv"),
                         env={"CUDA_VISIBLE_DEVICES": ""})
    assert "torch" not in heavy and "numba" not in heavy and "scipy.signal" not in heavy
    assert (tmp_path / "out.csv").read_text().count(",ok,") == 2


def test_auto_device_of_the_exact_haaqi_needs_no_torch() -> None:
    code = ("import json, sys\nfrom haaqicli.util import devices\n"
            "assert devices.cuda_device('auto') is None and devices.cuda_device('cpu') is None\n"
            f"print(json.dumps([m for m in {HEAVY} if m in sys.modules]), file=sys.stderr)")
    assert _heavy_after(code) == []


def test_numba_kernels_are_cached_on_disk() -> None:
    """A second process loads the compiled kernels from numba's cache instead of compiling them."""
    code = ("import numpy as np\nfrom haaqicli.reference.haaqi import compute_haaqi\n"
            "x = np.random.default_rng(0).standard_normal(4800) * 0.1\n"
            "compute_haaqi(0.9 * x, x, 24000, 24000, np.zeros(8), 1, 80.0)\n"
            "from haaqicli.reference import dsp, ear, haaqi\n"
            "kernels = [f for m in (dsp, ear, haaqi) for f in vars(m).values() if hasattr(f, 'stats')]\n"
            "import json, sys\n"
            "print(json.dumps([sum(len(f.stats.cache_hits) for f in kernels), "
            "sum(len(f.stats.cache_misses) for f in kernels)]), file=sys.stderr)")
    _heavy_after(code)  # fills the cache where it was empty
    hits, misses = _heavy_after(code)
    assert hits > 0 and misses == 0


def test_the_console_script_ends_when_its_worker_processes_are_idle(tmp_path) -> None:
    """The installed `haaqi` (`cli.entry`, which skips the interpreter's teardown) stops joblib's worker
    processes on the way out: it once waited on them, idle, until their 300-s timeout."""
    _two_pairs(tmp_path)
    workers_before = _orphaned_workers()
    args = ["reference", "--pairs", str(tmp_path / "pairs.csv"), "--workers", "2", "-q", "--out", str(tmp_path / "out.csv")]
    for _ in range(2):  # the second run: the compiled engine cached on disk, the exit is what is left
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from haaqicli.cli import entry; entry()", *args],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        seconds = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.csv").read_text().count(",ok,") == 2
    assert seconds < 120  # about 5 s on 2 cores; the hang took 300 s more
    assert _orphaned_workers() <= workers_before  # its workers were stopped, not left to their timeout


def _orphaned_workers() -> set[int]:
    """Loky worker processes that are not descended from this test process (other tests may keep a pool)."""
    parent: dict[int, int] = {}
    workers = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                parent[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
                if b"popen_loky_posix" in cmdline.read():
                    workers.add(int(entry))
        except (OSError, ValueError, IndexError):  # a process that ended meanwhile
            continue

    def mine(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parent.get(pid, 0)
        return False

    return {pid for pid in workers if not mine(pid)}


def test_python_dash_m_runs_the_command() -> None:
    """`python -m haaqicli` where the console script is not on PATH: the same command, the same exits."""
    done = subprocess.run([sys.executable, "-m", "haaqicli", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("haaqi, version"), done.stderr
    bad = subprocess.run([sys.executable, "-m", "haaqicli", "score", "--bogus"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: No such option '--bogus'"), bad.stderr
