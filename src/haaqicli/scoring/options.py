"""`ScoreOptions`, the one description of how to score, and the `Scorer` contract (light: no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from haaqicli.util.constants import DEFAULT_SPL, HOP_SECONDS, WINDOW_SECONDS

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class ScoreOptions:
    """The model and how it runs (the engine's part), the listeners and the level, and what a whole run
    scores against (the scorers' part). The command line builds one from its shared options."""

    model: str = "distilled"
    device: str = "auto"
    batch_size: int = 16
    precision: str = "float32"  # "int8": the encoder's linear layers on int8 (models.precision; CPU only)
    workers: int | None = None  # None: 1 decoding process for the model; one per core for exact HAAQI pairs
    spl: float = DEFAULT_SPL
    mix: str = "stereo"  # "stereo": channel i scored with ear i; "mono": downmix first
    window_s: float = WINDOW_SECONDS
    hop_s: float = HOP_SECONDS
    beats_checkpoint: str | None = None
    weights_dir: str | None = None
    # Longer files are scored as they stream (two decoding passes) instead of held in memory.
    hold_seconds: float = 300.0
    profiles: tuple[str, ...] = ("normal",)  # specs (names or files), resolved by the scorer
    progress: bool = True
    reference: str | None = None  # folder of references, paired by relative path
    pairs: str | None = None  # CSV with columns processed, reference
    segment_seconds: float | None = None  # exact HAAQI of long pairs in segments
    scheduler: str | None = None  # Dask scheduler address or local:N: files / pairs as cluster tasks
    # Prepare files in a spawned process that starts before the model loads, so decoding overlaps
    # torch's import (`scoring.prepare.DecodingProcess`). The command line sets it; a library caller
    # may, from a script guarded by `if __name__ == "__main__":` (spawn imports the main module again).
    decode_process: bool = False


class Scorer(Protocol):
    """Scores inputs (files or folders) for `options.profiles`: one row per (file, profile, ear) with
    the score table's columns (haaqicli.output.tables.SCORE_COLUMNS)."""

    def __call__(self, inputs: Sequence[str], options: ScoreOptions) -> pd.DataFrame: ...
