"""The wheel works where CI installs it: not editable, outside the checkout, with the shipped weights.

Builds the wheel from the working tree's files (offline: `--no-build-isolation`, the venv's setuptools),
installs it into a fresh venv that borrows this venv's dependencies (a .pth line, so torch is not
downloaded again) and runs `haaqi models` and `haaqi score` from a folder outside the checkout.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_music

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result


# What the build reads (a clone's other folders, e.g. committed label shards, only cost copying time)
BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md", "src/", "weights/")


def _source_copy(dest: Path) -> Path:
    """Tracked and not-ignored build inputs of the checkout, as a clone would have them (no build/)."""
    listed = _run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file() and name.startswith(BUILD_INPUTS):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the checkout's files")
def test_wheel_carries_the_weights_and_scores_outside_the_checkout(tmp_path: Path):
    source = _source_copy(tmp_path / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist"), str(source)])
    wheel = next((tmp_path / "dist").glob("haaqi-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                      .stdout.strip())
    # dependencies from this venv, after the fresh venv's own site-packages (where the wheel goes)
    (fresh_site / "borrowed_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)])

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HAAQI_WEIGHTS"}} | {"COLUMNS": "200"}
    work = tmp_path / "ci"
    work.mkdir()
    where = _run([str(python), "-c", "import haaqicli; from haaqicli.models.registry import default_weights_dir;"
                  " print(haaqicli.__file__); print(default_weights_dir())"], cwd=work, env=env).stdout.split()
    assert where[0].startswith(str(fresh_site)) and where[1] == str(fresh_site / "haaqicli" / "weights")

    haaqi = str(venv / "bin" / "haaqi")
    models = _run([haaqi, "models"], cwd=work, env=env).stdout
    assert "teacher" in models and "distilled" in models
    profiles = _run([haaqi, "profiles"], cwd=work, env=env)  # the stored ceilings travel too
    assert "measuring" not in profiles.stderr and "0.96-0.98" in profiles.stdout
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())

    write_music(work / "renders" / "mix.wav", seconds=4.0, sample_rate=44100, channels=2)
    _run([haaqi, "score", "renders", "--profile", "mild", "--out", "scores.csv", "-q"], cwd=work, env=env)
    rows = list(csv.DictReader((work / "scores.csv").open()))
    assert {row["ear"] for row in rows} == {"left", "right"}
    assert all(row["status"] == "ok" and 0.0 <= float(row["score"]) <= 1.0 for row in rows)
    assert {row["model_sha256"] for row in rows} == {manifest["models"]["distilled"]["sha256"]}
    # the interval calibration travels with the weights
    assert all(float(row["score_lo"]) <= float(row["score"]) <= float(row["score_hi"]) for row in rows)
