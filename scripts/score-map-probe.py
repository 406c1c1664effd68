#!/usr/bin/env python3
"""Would a monotone recalibration of the predicted score help: fit a map from prediction to exact HAAQI on
ufoai-music (the package that chooses) and apply it to nexuiz-music (which only reports). Maps: one
isotonic regression for all items, one per hearing-loss grade (WHO grade of the item's audiogram, PTA
at 0.5/1/2/4 kHz), and one straight line per grade. One line per map: LCC, SRCC, MSE, within-profile
LCC, the clean/normal mean (exact beside it) and the largest family bias.
A monotone map cannot reorder items within a grade, so it can only move the scale: it is the cheap
test of whether the clean/normal gap is a matter of scale.
Needs the validation-real cache (`haaqi dataset export --split validation-real`):
    PYTHONPATH=src .venv/bin/python scripts/score-map-probe.py [MODEL ...]
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.isotonic import IsotonicRegression

from haaqicli.audiogram import severity_of
from haaqicli.models.registry import load_model
from haaqicli.training.train import evaluation_metrics, load_split, predict_with_terms

MANIFEST = "labels/manifest.parquet"
FIT, REPORT = "ufoai-music", "nexuiz-music"
PTA_COLUMNS = (1, 2, 3, 5)  # 500, 1k, 2k, 4k Hz of the 8 audiogram values


def summary(meta: pd.DataFrame) -> str:
    result = evaluation_metrics(meta)
    overall, clean = result["overall"], result["clean_normal"]
    worst = max(abs(m["bias"]) for m in result["by_degradation"].values())
    return (f"LCC {overall['lcc']:.4f}  SRCC {overall['srcc']:.4f}  MSE {overall['mse']:.5f}  "
            f"within {result['within_profile']['lcc']:.4f}  clean/normal {clean['predicted']:.3f} "
            f"(exact {clean['label']:.3f})  largest family bias {worst:.3f}")


def isotonic(x: pd.Series, y: pd.Series) -> IsotonicRegression:
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)


def per_grade(fit: pd.DataFrame, report: pd.DataFrame, make_map) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The report's predictions through a map fitted on each grade's items (a grade without fit items
    keeps its predictions)."""
    out = report["predicted"].to_numpy().copy()
    for grade, group in fit.groupby("grade"):
        chosen = (report["grade"] == grade).to_numpy()
        if chosen.any():
            out[chosen] = np.clip(make_map(group)(report["predicted"][chosen]), 0.0, 1.0)
    return out


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    data = load_split(MANIFEST, "validation-real", log=None)
    grams = np.concatenate([gram.numpy() for _, gram in data.batches(256)])
    grades = [severity_of(pta) for pta in grams[:, list(PTA_COLUMNS)].mean(axis=1)]
    for name in names:
        model, _ = load_model(name)
        predicted, _ = predict_with_terms(model, data, 32, torch.device("cpu"))
        meta = data.meta.assign(predicted=predicted, label=data.labels.numpy(), grade=grades)
        fit, report = meta[meta["package"] == FIT], meta[meta["package"] == REPORT]
        print(f"{name}: fitted on {FIT} ({len(fit)} items), reported on {REPORT} ({len(report)} items)")
        print(f"  as predicted           {summary(report)}")
        one = isotonic(fit["predicted"], fit["label"])
        print(f"  isotonic, all items    {summary(report.assign(predicted=one.predict(report['predicted'])))}")
        mapped = per_grade(fit, report, lambda g: isotonic(g["predicted"], g["label"]).predict)
        print(f"  isotonic per grade     {summary(report.assign(predicted=mapped))}")
        mapped = per_grade(fit, report, lambda g: np.poly1d(np.polyfit(g["predicted"], g["label"], 1)))
        print(f"  line per grade         {summary(report.assign(predicted=mapped))}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["distilled", "teacher"])
