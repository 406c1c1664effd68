"""How a run scores audio: `ScoreOptions` (one object for the model, the listeners, the level and the
execution), the `Scorer` contract, and the two scorers behind `score`, `check` and `sweep`: the
non-intrusive model (`scorers.model_scorer`) and the exact HAAQI against references
(`scorers.reference_scorer`)."""

from __future__ import annotations

from haaqicli.scoring.options import ScoreOptions, Scorer

__all__ = ["ScoreOptions", "Scorer"]
