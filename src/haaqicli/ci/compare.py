"""Compare two score tables (A = before, B = after): per-file and per-profile deltas (B - A),
largest regressions first, and a paired test over files per profile."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from haaqicli.ci.evaluate import file_scores, model_change_message

DELTA_COLUMNS = ["file", "profile", "score_a", "score_b", "delta", "status"]
PROFILE_COLUMNS = ["profile", "n", "mean_a", "mean_b", "mean_delta", "ci_low", "ci_high", "worse", "better",
                   "wilcoxon_p", "worst_delta", "status"]


@dataclass
class Comparison:
    deltas: pd.DataFrame  # DELTA_COLUMNS; status: both | only_a | only_b | error
    profiles: pd.DataFrame  # PROFILE_COLUMNS
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def only_a(self) -> pd.DataFrame:
        return self.deltas[self.deltas["status"] == "only_a"]

    @property
    def only_b(self) -> pd.DataFrame:
        return self.deltas[self.deltas["status"] == "only_b"]


def paired_stats(delta: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean delta with a Student-t confidence interval and the Wilcoxon signed-rank p-value
    (two-sided; NaN when fewer than 2 pairs, 1.0 when every delta is zero)."""
    # lazy: scipy only where this path runs (start-up time)
    from scipy import stats

    delta = np.asarray(delta, dtype=float)
    n = len(delta)
    out = {"mean_delta": float(np.mean(delta)) if n else math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "wilcoxon_p": math.nan}
    if n >= 2:
        sem = float(np.std(delta, ddof=1) / math.sqrt(n))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
        out["ci_low"], out["ci_high"] = out["mean_delta"] - half, out["mean_delta"] + half
        if np.all(delta == 0):
            out["wilcoxon_p"] = 1.0
        else:
            out["wilcoxon_p"] = float(stats.wilcoxon(delta, zero_method="wilcox").pvalue)
    return out


def compare_tables(
    a: pd.DataFrame,
    b: pd.DataFrame,
    max_drop: float | None = None,
    tolerance: float = 0.0,
    names: tuple[str, str] = ("A", "B"),
) -> Comparison:
    """Deltas B - A per (file, profile) and per profile. With ``max_drop``, a file or profile mean
    that dropped by more than max_drop + tolerance is listed in ``failures``."""
    fa, fb = file_scores(a, names[0]), file_scores(b, names[1])
    merged = fa[["file", "profile", "score", "status"]].merge(
        fb[["file", "profile", "score", "status"]], on=["file", "profile"], how="outer", suffixes=("_a", "_b"),
        indicator=True,
    )
    status = np.where(merged["_merge"] == "left_only", "only_a",
                      np.where(merged["_merge"] == "right_only", "only_b", "both"))
    errored = (merged["_merge"] == "both") & ((merged["status_a"] != "ok") | (merged["status_b"] != "ok"))
    status = np.where(errored, "error", status)
    deltas = pd.DataFrame({
        "file": merged["file"],
        "profile": merged["profile"],
        "score_a": merged["score_a"],
        "score_b": merged["score_b"],
        "delta": merged["score_b"] - merged["score_a"],
        "status": status,
    })
    deltas.loc[deltas["status"] != "both", "delta"] = np.nan
    # Largest regressions first; rows without a delta at the end.
    deltas = deltas.sort_values(["delta", "profile", "file"], na_position="last", kind="stable").reset_index(drop=True)

    comparison = Comparison(deltas=deltas, profiles=pd.DataFrame(columns=PROFILE_COLUMNS))
    message = model_change_message(a, b, names[0])
    if message:
        comparison.warnings.append(message.replace("this run", names[1]))
    rows = []
    for profile, group in deltas[deltas["status"] == "both"].groupby("profile", sort=True):
        d = group["delta"].to_numpy(dtype=float)
        stats_ = paired_stats(d)
        row = {"profile": profile, "n": len(d), "mean_a": float(group["score_a"].mean()),
               "mean_b": float(group["score_b"].mean()), **stats_,
               "worse": int((d < 0).sum()), "better": int((d > 0).sum()), "worst_delta": float(d.min()),
               "status": "ok"}
        if max_drop is not None and -stats_["mean_delta"] > max_drop + tolerance:
            row["status"] = "fail"
            comparison.failures.append(
                f"{profile}: mean dropped {-stats_['mean_delta']:.3f} (> max_drop {max_drop:g} + tolerance {tolerance:g})")
        rows.append(row)
    if rows:
        comparison.profiles = pd.DataFrame(rows, columns=PROFILE_COLUMNS)
    if max_drop is not None:
        bad = deltas[(deltas["status"] == "both") & (-deltas["delta"] > max_drop + tolerance)]
        for row in bad.itertuples(index=False):
            comparison.failures.append(
                f"{row.file} ({row.profile}): dropped {-row.delta:.3f} from {row.score_a:.3f} to {row.score_b:.3f}")
    n_only_a, n_only_b = len(comparison.only_a), len(comparison.only_b)
    if n_only_a:
        comparison.warnings.append(f"{n_only_a} file x profile entries only in {names[0]}")
    if n_only_b:
        comparison.warnings.append(f"{n_only_b} file x profile entries only in {names[1]}")
    n_err = int((deltas["status"] == "error").sum())
    if n_err:
        comparison.warnings.append(f"{n_err} file x profile entries failed to score in one of the tables")
    return comparison


def significance_note(row: pd.Series, alpha: float = 0.05) -> str:
    """One sentence a reviewer can read: is the change likely real?"""
    n, p = int(row["n"]), row["wilcoxon_p"]
    if n < 2 or (isinstance(p, float) and math.isnan(p)):
        return "too few paired files for a test"
    if n < 6:
        note = f" (n={n}: Wilcoxon cannot reach p<0.05 below 6 files)"
    else:
        note = ""
    direction = "worse" if row["mean_delta"] < 0 else "better"
    if p < alpha:
        return f"significantly {direction} (Wilcoxon p={p:.3g}){note}"
    return f"no significant change (Wilcoxon p={p:.3g}){note}"
