"""`haaqi bench` runs end to end on a tiny setup and reports every row it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from haaqicli.cli import main


def test_bench_reports_models_and_reference_against_pyclarity(use_tiny_weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("clarity")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["bench", "--files", "1", "--seconds", "3", "--repeats", "1", "--pyclarity-seconds", "1",
         "--batch-size", "2", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    for name in ("distilled (cpu)", "teacher (cpu)", "distilled (cpu, model only)", "teacher (cpu, model only)",
                 "pyclarity HAAQI (cpu)"):
        assert rows[name]["x_realtime"] > 0
    ours = next(row for name, row in rows.items() if name.startswith("exact HAAQI, ours"))
    assert ours["x_pyclarity"] > 1  # ours must be faster than the oracle even on a 1-s clip
    batch = next(row for name, row in rows.items() if name.startswith("exact HAAQI, ours, 8 clips (cpu"))
    assert batch["audio_seconds"] == pytest.approx(8.0) and batch["x_pyclarity"] > 1
    assert rows["pyclarity HAAQI (cpu)"]["x_pyclarity"] == pytest.approx(1.0)
    reference = json.loads(out.read_text())["reference"]
    assert reference["abs_diff"] < 0.01  # same clip, same rate: the scores agree
    assert "x wall" in result.output
