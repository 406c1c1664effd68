"""haaqi: non-intrusive prediction of HAAQI (Hearing-Aid Audio Quality Index) for music.

Library first; the ``haaqi`` command is a thin Click shell over these modules:

- :mod:`haaqicli.audio`      discovery, decoding, resampling, level and windowing
- :mod:`haaqicli.audiogram`  listener profiles (CSV, Clarity JSON, built-ins)
- :mod:`haaqicli.models`     BEATs encoder, HAAQI-Net head, distilled student, registry
- :mod:`haaqicli.scoring`    ScoreOptions, the Scorer contract, the model and reference scorers
- :mod:`haaqicli.engine`     the scoring engine (files x profiles -> rows)
- :mod:`haaqicli.reference`  exact, fast intrusive HAAQI (pyclarity-compatible)
- :mod:`haaqicli.data`       corpus, degradations, labels
- :mod:`haaqicli.train`      training, distillation, evaluation
- :mod:`haaqicli.tables`     atomic CSV/Parquet/JSONL tables and resume
- :mod:`haaqicli.report`     Markdown/HTML reports
- :mod:`haaqicli.ci`         CI gate (policy, evaluate, render), codec sweep, table comparison
"""

__version__ = "0.1.0"
