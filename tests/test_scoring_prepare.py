"""scoring.prepare: files prepared in a decoding process equal the same files prepared in this one,
come in input order, survive a file that kills the process, and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_music

from haaqicli import audio
from haaqicli.scoring import ScoreOptions
from haaqicli.scoring.prepare import DecodingProcess, PreparedFile, close_stream, prepared_stream


class KillsTheProcess(os.PathLike):
    """A path whose use ends the process using it (a decoder that crashes on one file)."""

    def __fspath__(self) -> str:
        os._exit(3)

    def __str__(self) -> str:
        return "killer.wav"


def _folder(tmp_path: Path) -> list[audio.InputFile]:
    write_music(tmp_path / "a_stereo_44k.wav", seconds=7.5, sample_rate=44100, channels=2, seed=1)
    write_music(tmp_path / "b_mono.flac", seconds=2.0, sample_rate=24000, seed=2)
    (tmp_path / "c_broken.wav").write_bytes(b"RIFF not really a wave file")
    return audio.discover([tmp_path])


def _same(a: PreparedFile, b: PreparedFile) -> None:
    assert (a.input.relative, a.error, a.ears, a.gain, a.content_hash) == \
           (b.input.relative, b.error, b.ears, b.gain, b.content_hash)
    if a.windows is None:
        assert b.windows is None
    else:
        np.testing.assert_array_equal(a.windows, b.windows)
        np.testing.assert_array_equal(a.starts_s, b.starts_s)


def test_decoding_process_prepares_what_a_thread_prepares_in_input_order(tmp_path: Path) -> None:
    items = _folder(tmp_path / "in")
    options = ScoreOptions()
    in_thread = list(prepared_stream(items, options, 24000, in_process=False))
    stream = prepared_stream(items, options, 24000, in_process=True)
    assert isinstance(stream, DecodingProcess)
    in_process = list(stream)
    assert [p.input.relative for p in in_process] == ["a_stereo_44k.wav", "b_mono.flac", "c_broken.wav"]
    assert in_process[2].error and "c_broken.wav" in in_process[2].error
    for a, b in zip(in_thread, in_process, strict=True):
        _same(a, b)
    assert not stream.folder.exists() and stream.process is None  # windows and process gone


def test_a_file_that_kills_the_decoding_process_gets_an_error_row_and_the_rest_is_prepared(tmp_path: Path) -> None:
    items = _folder(tmp_path / "in")
    killer = audio.InputFile(path=KillsTheProcess(), root=str(tmp_path), relative="killer.wav")  # type: ignore[arg-type]
    stream = DecodingProcess([items[0], killer, items[1]], ScoreOptions(), 24000)
    prepared = list(stream)
    assert [p.input.relative for p in prepared] == ["a_stereo_44k.wav", "killer.wav", "b_mono.flac"]
    assert prepared[1].error == "killer.wav: the decoding process died on this file"
    assert not prepared[0].error and not prepared[2].error and prepared[2].windows is not None


def test_windows_come_through_the_pipe_where_their_file_cannot_be_written(tmp_path: Path) -> None:
    import shutil

    items = _folder(tmp_path / "in")
    in_thread = list(prepared_stream(items, ScoreOptions(), 24000, in_process=False))
    stream = DecodingProcess(items, ScoreOptions(), 24000)
    shutil.rmtree(stream.folder)  # as a full /dev/shm would: every write fails
    for a, b in zip(in_thread, stream, strict=True):
        _same(a, b)


def test_where_no_process_can_start_this_one_prepares_the_files(tmp_path: Path, monkeypatch) -> None:
    """A process limit: the stream is a thread from the start, and a process that dies when no other
    can start leaves its files to this process; either way every file is prepared as a thread would."""
    from multiprocessing.context import SpawnProcess

    import haaqicli.scoring.prepare as prepare

    (tmp_path / "shm").mkdir()
    monkeypatch.setattr(prepare, "_window_folder", lambda ahead_bytes: str(tmp_path / "shm"))
    items = _folder(tmp_path / "in")
    in_thread = list(prepared_stream(items, ScoreOptions(), 24000, in_process=False))
    stream = DecodingProcess(items, ScoreOptions(), 24000)
    stream.process.kill()  # type: ignore[union-attr]

    def refuse(self) -> None:  # type: ignore[no-untyped-def]
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(SpawnProcess, "start", refuse)
    for a, b in zip(in_thread, stream, strict=True):
        _same(a, b)
    assert not stream.folder.exists()
    fallback = prepared_stream(items, ScoreOptions(), 24000, in_process=True)
    assert not isinstance(fallback, DecodingProcess)
    for a, b in zip(in_thread, fallback, strict=True):
        _same(a, b)
    assert not list((tmp_path / "shm").iterdir())  # no folder left by the process that never started


def test_closing_a_stream_that_was_never_read_stops_its_process(tmp_path: Path) -> None:
    stream = prepared_stream(_folder(tmp_path / "in"), ScoreOptions(), 24000, in_process=True)
    process = stream.process  # type: ignore[attr-defined]
    close_stream(stream)
    assert not process.is_alive() and not stream.folder.exists()  # type: ignore[attr-defined]


def test_the_command_line_scores_as_the_library_does(tmp_path: Path, use_tiny_weights: Path) -> None:
    """`haaqi score` in a fresh process (torch not imported: files decode in a process while it loads)
    gives the rows that `score_inputs` gives in this one (a thread decodes)."""
    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import score_inputs

    _folder(tmp_path / "in")
    out = tmp_path / "s.csv"
    # the console script's own code path (`entry`), as the installed `haaqi` runs it
    result = subprocess.run([sys.executable, "-c", "from haaqicli.cli import entry; entry()", "score",
                             str(tmp_path / "in"), "--profile", "mild", "-q", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 1, result.stderr  # one file failed: exit 1, rows for all
    cli = pd.read_csv(out)
    library = score_inputs([tmp_path / "in"], [BUILTIN_PROFILES["mild"]], ScoreOptions(), progress=False).table
    assert list(cli["file"]) == list(library["file"]) and list(cli["status"]) == list(library["status"])
    ok = cli["status"] == "ok"
    np.testing.assert_allclose(cli.loc[ok, "score"], library.loc[ok.to_numpy(), "score"], atol=1e-6)
    assert not list(Path(tmp_path).glob("**/haaqi-decode-*"))


def test_a_run_that_fails_before_scoring_stops_its_decoding_process(tmp_path: Path, use_tiny_weights: Path,
                                                                     monkeypatch) -> None:
    """The decoding starts before the table opens; a table that cannot open leaves no process or windows."""
    import multiprocessing

    import haaqicli.scoring.prepare as prepare
    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import score_inputs
    from haaqicli.util.errors import HaaqiError

    (tmp_path / "shm").mkdir()
    monkeypatch.setattr(prepare, "_window_folder", lambda ahead_bytes: str(tmp_path / "shm"))
    monkeypatch.setattr(prepare, "decode_in_process", lambda options: True)
    _folder(tmp_path / "in")
    with pytest.raises(HaaqiError, match="unsupported table format"):
        score_inputs([tmp_path / "in"], [BUILTIN_PROFILES["mild"]], ScoreOptions(), out=tmp_path / "s.xyz",
                     progress=False)
    # other tests' worker pools (loky) may still be alive in this process: only ours must be gone
    assert not [p for p in multiprocessing.active_children() if p.name == "haaqi-decode"]
    assert not list((tmp_path / "shm").iterdir())
