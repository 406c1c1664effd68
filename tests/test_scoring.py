"""haaqicli.scoring: one ScoreOptions from the command line's shared options, and the scorers' pairing."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
import numpy as np
import soundfile as sf
from click.testing import CliRunner

from haaqicli.cli.common import SCORING_PARAMETERS, scoring_options
from haaqicli.scoring import ScoreOptions
from haaqicli.scoring.scorers import default_scorer, model_scorer, pair_by_relative_path, reference_scorer


def _command() -> tuple[click.Command, list[ScoreOptions]]:
    seen: list[ScoreOptions] = []

    @click.command()
    @scoring_options
    def command(options: ScoreOptions) -> None:
        seen.append(options)

    return command, seen


def test_the_shared_options_arrive_as_one_score_options() -> None:
    command, seen = _command()
    result = CliRunner().invoke(command, ["--profile", "mild", "--profile", "N3", "--spl", "70", "--model",
                                          "teacher", "--device", "cpu", "--batch-size", "4", "--workers", "3",
                                          "--mix", "mono"])
    assert result.exit_code == 0, result.output
    assert seen == [ScoreOptions(profiles=("mild", "N3"), spl=70.0, model="teacher", device="cpu", batch_size=4,
                                 workers=3, mix="mono", decode_process=True)]


def test_command_line_defaults_are_the_library_defaults() -> None:
    """No second copy of a default (the level, the model, the batch size) can drift from ScoreOptions. The
    command line only adds that files may decode in a process (its main module is a guarded script)."""
    command, seen = _command()
    assert CliRunner().invoke(command, []).exit_code == 0
    assert seen == [ScoreOptions(decode_process=True)]
    assert set(SCORING_PARAMETERS) <= {f.name for f in fields(ScoreOptions)}


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    return path


def test_pair_by_relative_path(tmp_path: Path) -> None:
    """Same relative path first, then the same stem with another audio extension; the rest unpaired."""
    _wav(tmp_path / "out" / "a.wav")
    _wav(tmp_path / "out" / "sub" / "b.wav")
    _wav(tmp_path / "out" / "c.wav")
    _wav(tmp_path / "ref" / "a.wav")
    _wav(tmp_path / "ref" / "sub" / "b.flac")
    pairs, unpaired = pair_by_relative_path([str(tmp_path / "out")], tmp_path / "ref")
    assert [(name, reference.relative_to(tmp_path).as_posix()) for name, _, reference in pairs] == [
        ("a.wav", "ref/a.wav"), ("sub/b.wav", "ref/sub/b.flac")]
    assert [(name, reason.startswith("no reference")) for name, _, reason in unpaired] == [("c.wav", True)]


def test_default_scorer_is_exact_where_references_are_given() -> None:
    assert default_scorer(ScoreOptions()) is model_scorer
    assert default_scorer(ScoreOptions(reference="refs")) is reference_scorer
    assert default_scorer(ScoreOptions(pairs="pairs.csv")) is reference_scorer
