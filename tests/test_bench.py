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
                 "distilled, int8 (cpu, model only)", "teacher, int8 (cpu, model only)", "pyclarity HAAQI (cpu)"):
        assert rows[name]["x_realtime"] > 0
    ours = next(row for name, row in rows.items() if name.startswith("exact HAAQI, ours"))
    assert ours["x_pyclarity"] > 1  # ours must be faster than the oracle even on a 1-s clip
    batch = next(row for name, row in rows.items() if name.startswith("exact HAAQI, ours, 8 clips (cpu"))
    assert batch["audio_seconds"] == pytest.approx(8.0) and batch["x_pyclarity"] > 1
    assert rows["pyclarity HAAQI (cpu)"]["x_pyclarity"] == pytest.approx(1.0)
    reference = json.loads(out.read_text())["reference"]
    assert reference["abs_diff"] < 0.01  # same clip, same rate: the scores agree
    assert "x wall" in result.output


def test_end_to_end_rows_time_whole_processes_beside_pyclarity(use_tiny_weights: Path, tmp_path: Path) -> None:
    """Every end-to-end row runs `haaqi` as a subprocess, cold, then timed (the median of the warm runs),
    and says how loaded the machine was; the reference row is compared with pyclarity on the same pairs."""
    from haaqicli.bench.e2e import format_e2e, run_e2e

    pytest.importorskip("clarity")
    result = run_e2e(tmp_path, short_files=2, short_seconds=2.0, long_files=1, long_seconds=3.0, pairs=2,
                     pair_seconds=1.0, workers=2, models=("distilled",), warm_runs=1)
    rows = {row["name"]: row for row in result["rows"]}
    assert {"start-up: haaqi --help", "start-up: haaqi models",
            "start-up: first row, score 1 short file (distilled)"} <= set(rows)
    for row in result["rows"]:
        assert row["wall_seconds"] > 0 and "load1" in row["load"] and "busy" in row["load"]
    score = rows["score 2 stereo files of 2 s (distilled)"]
    assert score["cold_seconds"] > 0 and score["x_realtime"] == pytest.approx(4.0 / score["wall_seconds"])
    for name in ("score 2 stereo files of 2 s (distilled, int8)", "score 1 stereo files of 3 s (distilled, int8)"):
        assert rows[name]["x_realtime"] > 0
    assert set((tmp_path / "s8.csv").read_text().splitlines()[1].split(",")) >= {"distilled:int8", "ok"}
    reference = next(row for name, row in rows.items() if name.startswith("reference 2 pairs"))
    assert reference["x_pyclarity"] == pytest.approx(reference["baseline_seconds"] / reference["wall_seconds"])
    assert (tmp_path / "r.csv").read_text().count(",ok,") == 2
    assert "x pyclarity" in format_e2e(result) and result["warm_runs"] == 1


def test_busy_cores_sees_other_work_not_the_load_average() -> None:
    import subprocess
    import sys

    from haaqicli.bench.e2e import busy_cores

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        spinning = busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert spinning is not None and spinning >= 0.7  # one core spun the whole time (others may add)


def test_marginal_rate_takes_the_first_rows_process_out() -> None:
    from haaqicli.bench.e2e import Row, marginal_row

    first = Row("first row", "haaqi score one", 6.0, 3.0, 4.0)
    folder = Row("64 files", "haaqi score short", 640.0, 4.0, 5.0, load={"load1": 0.1})
    marginal = marginal_row(folder, first, "distilled")
    assert marginal.audio_seconds == 634.0 and marginal.wall_seconds == 1.0
    assert marginal.x_realtime == 634.0 and marginal.load == {"load1": 0.1}


@pytest.mark.parametrize(("cmdline", "jobs"), [
    (".venv/bin/python .venv/bin/haaqi dataset label --manifest m.parquet --split train", {"labelling"}),
    (".venv/bin/python .venv/bin/haaqi train --manifest m.parquet --epochs 3", {"training"}),
    ("python -m haaqicli.cli distill --teacher t.safetensors", {"training"}),
    (".venv/bin/python .venv/bin/haaqi pretrain --train-items 20000 --max-minutes 50", {"training"}),
    (".venv/bin/haaqi correct --model distilled --train-items 8000", {"training"}),
    ("bash scripts/train-models.sh", {"training"}),
    (".venv/bin/python scripts/calibration-set.py --package ufoai-music", {"labelling"}),
    ("/usr/bin/make ablation", set()),
    ("python -m pytest -q tests", {"tests"}),
    ("python -c from haaqicli.bench.e2e import x; haaqi train", set()),
    ("haaqi score music/ --profile mild", set()),
    (".venv/bin/python3 .venv/bin/haaqi corpus --corpus data/corpus --workers 2", {"rendering"}),
    (".venv/bin/python3 .venv/bin/haaqi dataset export --split validation", {"data preparation"}),
    ("haaqi dataset build --manifest data/manifest.parquet --items 125000", {"data preparation"}),
    ("haaqi dataset stats --json", set()),
])
def test_heavy_jobs_are_named_by_their_command_line(cmdline: str, jobs: set[str]) -> None:
    from haaqicli.bench.e2e import heavy_jobs_in

    assert heavy_jobs_in(cmdline) == jobs


def test_machine_load_names_heavy_jobs() -> None:
    import subprocess
    import sys
    import time

    from haaqicli.bench.e2e import machine_load

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "haaqi", "dataset label"])
    try:
        deadline = time.monotonic() + 10  # a loaded machine may show the new process's command line late
        load = machine_load()
        while "labelling" not in load["heavy_jobs"] and time.monotonic() < deadline:
            time.sleep(0.2)
            load = machine_load()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "labelling" in load["heavy_jobs"] and load["busy"]


def test_a_paused_heavy_job_is_not_counted() -> None:
    """A job paused with SIGSTOP for a measurement (README) takes no CPU, so it does not mark rows."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from haaqicli.bench.e2e import _stopped, process_heavy_jobs

    assert _stopped("12 (my prog) x) T 1 2") and not _stopped("12 (haaqi) S 1 2")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "haaqi", "dataset label"])
    proc = Path(f"/proc/{sleeper.pid}")
    try:
        deadline = time.monotonic() + 10  # a loaded machine may show the new process's command line late
        while "labelling" not in process_heavy_jobs(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        running = process_heavy_jobs(proc)
        sleeper.send_signal(signal.SIGSTOP)
        while not _stopped((proc / "stat").read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        paused = process_heavy_jobs(proc)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert running == {"labelling"} and paused == set()


def test_a_rows_time_is_the_median_of_its_warm_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cold invocation is kept apart; the warm ones give their median, so one slow run moves nothing."""
    from haaqicli.bench import e2e

    times = iter([9.0, 2.0, 5.0, 2.2])
    monkeypatch.setattr(e2e, "timed", lambda args: next(times))
    assert e2e.cold_and_warm(["score"], warm_runs=3) == (9.0, 2.2)
