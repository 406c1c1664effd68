"""haaqi: non-intrusive prediction of HAAQI (Hearing-Aid Audio Quality Index) for music.

Library first; the ``haaqi`` command is a thin Click shell over these modules:

- :mod:`haaqicli.api`        HAAQIPredictor and haaqi_loss: the model inside PyTorch code
- :mod:`haaqicli.engine`     the scoring engine (files x profiles -> rows)
- :mod:`haaqicli.audiogram`  listener profiles (CSV, Clarity JSON, built-ins)
- :mod:`haaqicli.audio`      discovery, decoding, resampling, level, windowing; synthetic test music
- :mod:`haaqicli.scoring`    ScoreOptions, the Scorer contract, the model and reference scorers
- :mod:`haaqicli.models`     BEATs encoder, HAAQI-Net head, distilled student, registry, intervals
- :mod:`haaqicli.reference`  exact, fast intrusive HAAQI (pyclarity-compatible)
- :mod:`haaqicli.output`     score tables (atomic CSV/Parquet/JSONL, resume), reports, profile ceilings
- :mod:`haaqicli.ci`         CI gate (policy, evaluate, render), codec sweep, table comparison
- :mod:`haaqicli.bench`      `haaqi bench`
- :mod:`haaqicli.data`       corpus, degradations, labels
- :mod:`haaqicli.training`   training, distillation, evaluation, objectives, ablations
- :mod:`haaqicli.util`       constants, errors, atomic writes, hashes, devices, executors, progress
"""

__version__ = "0.1.0"
