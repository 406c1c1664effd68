#!/usr/bin/env python3
"""Would a scoring-time guard help: low-pass each validation-real clip's model input below where its own
content ends (`audio.bandwidth`), then score it, against scoring it as it is. Per package, one line per
setting (no guard; edge below 10 or 11 kHz cut at 0.8 or 0.9 of the edge, Butterworth order 16): LCC,
SRCC, MSE, within-profile LCC, clean/normal mean, each family's bias and the clean items by bandwidth.
Needs the validation-real cache (`haaqi dataset export --split validation-real`):
    PYTHONPATH=src .venv/bin/python scripts/edge-guard-probe.py [MODEL ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy import signal

from haaqicli.models.registry import load_model
from haaqicli.training.train import (
    Split,
    evaluation_metrics,
    evaluation_split,
    predict_with_terms,
    split_bandwidths,
)
from haaqicli.util.constants import MODEL_SAMPLE_RATE

MANIFEST = "labels/manifest.parquet"
SETTINGS = [(0.0, 1.0), (10000.0, 0.9), (11000.0, 0.9), (11000.0, 0.8), (10000.0, 0.8)]  # (edge below, cut at)


def guarded(waves: np.ndarray, edges: np.ndarray, max_edge: float, factor: float, order: int = 16) -> np.ndarray:
    """The waves whose content ends below `max_edge`, low-passed at `factor` times their edge."""
    out = waves.copy()
    for i in np.flatnonzero(edges < max_edge):
        cutoff = min(factor * edges[i], 0.45 * MODEL_SAMPLE_RATE)
        sos = signal.butter(order, cutoff, fs=MODEL_SAMPLE_RATE, output="sos")
        out[i] = signal.sosfilt(sos, waves[i]).astype(np.float32)
    return out


def main() -> None:
    torch.set_num_threads(2)
    data = evaluation_split(MANIFEST, "validation-real")
    edges = split_bandwidths(data)
    print(f"items {len(data)}, content ending below 11 kHz {(edges < 11000).sum()}", flush=True)
    waves = np.stack([data.wave_batch([i])[0].numpy() for i in range(len(data))])
    for name in sys.argv[1:] or ["distilled"]:
        model, _ = load_model(name, device=torch.device("cpu"))
        for max_edge, factor in SETTINGS:
            w = guarded(waves, edges, max_edge, factor) if max_edge else waves
            split = Split(torch.from_numpy(w), data.audiograms, data.labels, data.meta, None, data.terms)
            started = time.time()
            predicted, _ = predict_with_terms(model, split, 32)
            meta = data.meta.assign(predicted=predicted, label=data.labels.numpy(), content_bandwidth=edges)
            for package in sorted(meta["package"].unique()):
                m = evaluation_metrics(meta[meta["package"] == package].reset_index(drop=True))
                o = m["overall"]
                bias = {k: round(v["bias"], 3) for k, v in m.get("by_degradation", {}).items()}
                by_band = {g: (round(v["predicted"], 3), round(v["label"], 3))
                           for g, v in m.get("clean_by_bandwidth", {}).items()}
                print(name, max_edge, factor, package,
                      f"LCC {o['lcc']:.4f} SRCC {o['srcc']:.4f} MSE {o['mse']:.5f} "
                      f"within {m['within_profile']['lcc']:.4f} clean/normal {m['clean_normal']['predicted']:.3f}",
                      "bias", bias, "clean by bandwidth", by_band, f"{time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
