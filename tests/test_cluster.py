"""--scheduler: the same tasks on a Dask cluster give a local run's rows, survive a killed worker and an
interrupted client (--resume), and write the same tables and label shards. The cluster of `local:2`
(two worker processes) serves the module's tests through its address (the ADDRESS form), so its
start-up is paid once."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import interrupt_after, write_music
from test_data_corpus import _build, corpus  # noqa: F401  (the synthetic corpus fixture)

from haaqicli.cli import main
from haaqicli.output.tables import dataset_parts, read_table

distributed = pytest.importorskip("distributed")

KEY = ["file", "profile", "ear"]


@pytest.fixture(scope="module")
def cluster():
    """`--scheduler local:2`'s cluster, shared by the module's tests through its address."""
    from haaqicli.util.executor import DaskExecutor

    with DaskExecutor("local:2") as executor:
        yield executor.client


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def songs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("songs")
    for index in range(6):
        write_music(root / f"s{index}.wav", seconds=2.0 + index % 3, channels=1 + index % 2, seed=index)
    (root / "broken.wav").write_bytes(b"RIFF not really")
    return root


def same_scores(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = (frame.fillna({"ear": ""}) for frame in (a, b))  # error rows have no ear
    assert not a.duplicated(KEY).any() and not b.duplicated(KEY).any()
    merged = a.merge(b, on=KEY, suffixes=("_a", "_b"), validate="one_to_one")
    assert len(merged) == len(a) == len(b)
    assert (merged["status_a"] == merged["status_b"]).all()
    ok = merged[merged["status_a"] == "ok"]
    for column in ("score", "score_lo", "score_hi"):  # per-file vs cross-file batches: float noise only
        if f"{column}_a" in ok:
            np.testing.assert_allclose(ok[f"{column}_a"], ok[f"{column}_b"], atol=1e-5, equal_nan=True)


def test_score_and_check_on_cluster_equal_a_local_run(songs: Path, tmp_path: Path, use_tiny_weights, cluster):
    local, remote, dataset = tmp_path / "local.csv", tmp_path / "remote.csv", f"{tmp_path}/scores/"
    assert run("score", str(songs), "--profile", "mild", "--profile", "normal", "--out", str(local), "-q")[0] == 1
    code, output = run("score", str(songs), "--profile", "mild", "--profile", "normal", "--out", str(remote), "-q",
                       "--scheduler", cluster.scheduler.address)
    assert code == 1, output
    same_scores(read_table(local), read_table(remote))
    broken = read_table(remote).query("file == 'broken.wav'")
    assert len(broken) == 2 and (broken["status"] == "error").all()  # one bad file: its rows, per profile
    # a partitioned Parquet dataset; HAAQI_SCHEDULER works like --scheduler
    result = CliRunner(env={"HAAQI_SCHEDULER": cluster.scheduler.address}).invoke(
        main, ["score", str(songs), "--profile", "mild", "--profile", "normal", "--out", dataset, "-q"])
    assert result.exit_code == 1, result.output
    assert dataset_parts(dataset) and "20 rows" in result.output
    same_scores(read_table(local), read_table(dataset))
    # check on the cluster gates the same scores
    code, output = run("check", str(songs), "--profile", "mild", "--allow-errors", "--min-score", "0",
                       "--out", str(tmp_path / "check.csv"), "-q", "--scheduler", cluster.scheduler.address)
    assert code == 0, output
    same_scores(read_table(local).query("profile == 'mild'"), read_table(tmp_path / "check.csv"))


def test_a_killed_worker_loses_only_its_tasks(songs: Path, tmp_path: Path, use_tiny_weights, cluster, monkeypatch):
    from haaqicli.util.executor import TaskProgress

    original = TaskProgress.update
    killed = []

    def kill_a_worker_after_the_first_file(self, *args, **kwargs):
        if not killed:  # both workers hold tasks now: one dies with its in-flight tasks
            pids = cluster.run(os.getpid)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TaskProgress, "update", kill_a_worker_after_the_first_file)
    out = tmp_path / "scores.csv"
    code, output = run("score", str(songs), "--out", str(out), "-q", "--scheduler", cluster.scheduler.address)
    assert killed and code == 1, output
    table = read_table(out)
    assert not table.duplicated(KEY).any()
    assert sorted(table["file"].unique()) == sorted(p.name for p in songs.iterdir())
    assert (table.query("file != 'broken.wav'")["status"] == "ok").all()


@pytest.mark.parametrize("out_name", ["scores.csv", "scores/"])
def test_resume_after_an_interrupted_client(songs: Path, tmp_path: Path, use_tiny_weights, cluster, monkeypatch,
                                            out_name: str):
    from haaqicli.util.executor import TaskProgress

    address = cluster.scheduler.address
    complete = tmp_path / "complete.csv"
    assert run("score", str(songs), "--out", str(complete), "-q", "--scheduler", address)[0] == 1
    out = f"{tmp_path}/{out_name}"
    with monkeypatch.context() as patch:
        interrupt_after(patch, TaskProgress, "update", "done", 2)  # two files finished
        code, output = run("score", str(songs), "--out", out, "-q", "--scheduler", address)
    assert code == 130 and "interrupted" in output
    assert read_table(out)["file"].nunique() == 2
    code, output = run("score", str(songs), "--out", out, "--resume", "-q", "--scheduler", address)
    assert code == 1, output  # the broken file fails again
    same_scores(read_table(complete), read_table(out))  # every row once


def test_reference_on_cluster_equals_local(tmp_path: Path, cluster):
    refs, procs = tmp_path / "ref", tmp_path / "proc"
    write_music(refs / "t.wav", seconds=1.0, seed=1)
    write_music(procs / "t.wav", seconds=1.0, seed=11)
    write_music(procs / "lonely.wav", seconds=1.0, seed=5)  # no reference: an error row
    args = ["reference", "--reference", str(refs), str(procs), "--profile", "mild", "--device", "cpu", "-q"]
    assert run(*args, "--out", str(tmp_path / "local.csv"))[0] == 1
    code, output = run(*args, "--out", str(tmp_path / "remote.csv"), "--scheduler", cluster.scheduler.address)
    assert code == 1, output
    local, remote = read_table(tmp_path / "local.csv"), read_table(tmp_path / "remote.csv")
    assert list(local["processed"]) == list(remote["processed"]) and list(local["status"]) == list(remote["status"])
    np.testing.assert_allclose(local["score"], remote["score"], atol=1e-9, equal_nan=True)


def test_reference_on_cluster_streams_rows_to_the_table_as_pairs_finish(tmp_path: Path, cluster, monkeypatch):
    """An interrupted cluster run of `haaqi reference` keeps the pairs finished so far in --out."""
    from haaqicli.util.executor import TaskProgress

    refs, procs = tmp_path / "ref", tmp_path / "proc"
    for k in range(3):
        write_music(refs / f"t{k}.wav", seconds=1.0, seed=k)
        write_music(procs / f"t{k}.wav", seconds=1.0, seed=10 + k)
    out = tmp_path / "pairs.csv"
    interrupt_after(monkeypatch, TaskProgress, "update", "done", 1)  # one pair finished
    code, output = run("reference", "--reference", str(refs), str(procs), "--profile", "mild", "--device", "cpu",
                       "-q", "--out", str(out), "--scheduler", cluster.scheduler.address)
    assert code == 130 and "interrupted" in output, output
    kept = read_table(out)
    assert kept["processed"].nunique() == 1 and (kept["status"] == "ok").all()


@pytest.mark.parametrize("out_name", ["pairs.csv", "pairs/"])
def test_reference_resume_after_an_interrupted_client(tmp_path: Path, cluster, monkeypatch, out_name: str):
    """`haaqi reference --scheduler`: an interrupted client keeps its finished pairs in --out (a table or a
    dataset); --resume on the cluster scores the rest and the table equals a local run's, every row once."""
    from haaqicli.util.executor import TaskProgress

    refs, procs = tmp_path / "ref", tmp_path / "proc"
    for k in range(3):
        write_music(refs / f"t{k}.wav", seconds=1.0, channels=1 + k % 2, seed=k)
        write_music(procs / f"t{k}.wav", seconds=1.0, channels=1 + k % 2, seed=10 + k)
    write_music(procs / "lonely.wav", seconds=1.0, seed=5)  # no reference: error rows, retried and replaced
    args = ["reference", "--reference", str(refs), str(procs), "--profile", "mild", "--device", "cpu", "-q"]
    assert run(*args, "--out", str(tmp_path / "local.csv"), "--workers", "1")[0] == 1
    out = f"{tmp_path}/{out_name}"
    with monkeypatch.context() as patch:
        interrupt_after(patch, TaskProgress, "update", "done", 2)  # two pairs finished
        code, output = run(*args, "--out", out, "--scheduler", cluster.scheduler.address)
    assert code == 130 and "interrupted" in output, output
    assert read_table(out)["processed"].nunique() == 2
    code, output = run(*args, "--out", out, "--resume", "--scheduler", cluster.scheduler.address)
    assert code == 1, output
    key = ["processed", "profile", "ear"]
    local, resumed = (read_table(path).fillna({"ear": ""}) for path in (tmp_path / "local.csv", out))
    assert not resumed.duplicated(key).any()
    if out_name.endswith("/"):  # a dataset lists rows as they came
        local, resumed = (frame.sort_values(key).reset_index(drop=True) for frame in (local, resumed))
    assert resumed[[*key, "status"]].values.tolist() == local[[*key, "status"]].values.tolist()
    np.testing.assert_allclose(resumed["score"], local["score"], atol=1e-9, equal_nan=True)


def test_dataset_label_on_cluster_writes_the_same_shards(tmp_path: Path, corpus: Path, cluster):  # noqa: F811
    """A cluster run writes the label shards (and split caches) of a local run."""
    from haaqicli.data import labels as lab
    from haaqicli.data.corpus import write_manifest

    manifest = _build(corpus, items=16, clip_seconds=1.0)
    local, remote = tmp_path / "local" / "m.parquet", tmp_path / "remote" / "m.parquet"
    for path in (local, remote):
        write_manifest(manifest, path, compact=True)
    lab.label_manifest(local, corpus, workers=1, limit=3, progress=False, cache_dir=tmp_path / "lc")
    summary = lab.label_manifest(remote, corpus, limit=3, progress=False, scheduler=cluster.scheduler.address,
                                 shard_size=2, cache_dir=tmp_path / "rc")
    errors = lab.read_shards(lab.shard_dir(remote))["error"].tolist()
    assert summary["labelled"] == 3 and summary["errors"] == 0, (errors, summary)
    assert len(list(lab.shard_dir(remote).glob("shard-*.parquet"))) == 2  # sealed every 2 rows, and at the end
    a, b = (lab.read_shards(lab.shard_dir(path)).set_index("item_id").sort_index() for path in (local, remote))
    assert list(a.index) == list(b.index)
    terms = [c for c in lab.SHARD_COLUMNS if c not in ("item_id", "label_seconds", "error")]
    np.testing.assert_allclose(a[terms].to_numpy(float), b[terms].to_numpy(float), atol=1e-9)
    caches = [sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) for root in (tmp_path / "lc",
                                                                                             tmp_path / "rc")]
    assert caches[0] and caches[0] == caches[1]


def test_workers_refuse_another_model_and_name_unreadable_paths(tmp_path: Path, use_tiny_weights):
    from haaqicli.audio import InputFile
    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import score_file, worker_scorer
    from haaqicli.models.registry import get_info
    from haaqicli.scoring import ScoreOptions
    from haaqicli.util.errors import ModelError
    from haaqicli.util.executor import unreadable

    options = ScoreOptions(weights_dir=str(use_tiny_weights))
    with pytest.raises(ModelError, match="install the same weights on every worker"):
        worker_scorer(options, "0" * 64)
    missing = tmp_path / "gone.wav"
    rows, _, seconds = score_file(InputFile(path=missing, relative="gone.wav", root=tmp_path), [BUILTIN_PROFILES["mild"]], options,
                                  get_info("distilled", use_tiny_weights).sha256)
    assert rows[0]["status"] == "error" and seconds == 0.0
    assert re.search(r"gone\.wav: file not found on host .*shared filesystem", rows[0]["error"])
    assert unreadable(tmp_path) == ""


def test_bad_scheduler_is_a_one_line_usage_error(music_folder: Path, use_tiny_weights):
    code, output = run("score", str(music_folder), "--scheduler", "local:zero")
    assert code == 2 and "expected local:N" in output and "Traceback" not in output
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, output = run("score", str(music_folder), "--scheduler", "tcp://127.0.0.1:9", "-q")
    assert code == 2 and "cannot connect" in output.lower(), output


def test_slurm_job_script_from_the_documented_settings():
    """docs/cluster.md's SLURM example renders a job script with its settings (nothing is submitted)."""
    pytest.importorskip("dask_jobqueue")
    text = (Path(__file__).parents[1] / "docs" / "cluster.md").read_text()
    code = re.search(r"<!-- slurm-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    setup = code.split("cluster.scale")[0]  # construct the cluster, do not submit jobs
    namespace: dict = {}
    exec(setup, namespace)
    cluster = namespace["cluster"]
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH" in script and "--cpus-per-task=" in script and "--mem=" in script
    assert "-p cpu" in script or "--partition" in script or "partition" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 1" in script
    assert "haaqi" in script  # the environment with haaqi[dask] is activated before the worker starts


def test_dask_is_not_imported_without_a_scheduler(tiny_weights: Path, tmp_path: Path):
    """The default install stays lean: a local run of every --scheduler command's code imports no Dask."""
    import subprocess
    import sys

    write_music(tmp_path / "music" / "a.wav", seconds=1.0)
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from haaqicli.cli import main\n"
        f"result = CliRunner().invoke(main, ['score', {str(tmp_path / 'music')!r}, '-q', '--out', {str(tmp_path / 's')!r} + '/'])\n"
        "assert result.exit_code == 0, result.output\n"
        "import haaqicli.cli.ci, haaqicli.cli.reference, haaqicli.cli.dataset, haaqicli.data.labels\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'dask_jobqueue'}))\n"
    )
    env = {**os.environ, "HAAQI_WEIGHTS": str(tiny_weights)}
    env.pop("HAAQI_SCHEDULER", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
