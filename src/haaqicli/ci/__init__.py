"""Quality checks for CI: the gate (`policy` files and thresholds, `evaluate` a score table against
them and a baseline, `render` the report as JUnit XML, Markdown or a terminal table), the codec
bitrate `sweep` and `compare` of two score tables.

The gate logic works on a score table (SCORE_COLUMNS) and never scores anything itself: the caller
passes a scoring function (dependency injection), so the same gates run on the non-intrusive model,
on exact reference HAAQI, or on a table scored earlier.

Exit-code rule (also in ``haaqi check --help`` and docs/ci.md):
  2 (error)  — a file could not be scored (unless ``--allow-errors``), nothing was scored, or the model
               differs from the baseline's (unless ``--allow-model-change``), or bad options/policy;
  1 (failed) — every file was scored but at least one gate failed;
  0 (passed) — every gate passed.
"""
