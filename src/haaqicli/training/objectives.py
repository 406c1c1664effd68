"""Training objectives beside HAAQI-Net's MSE: sub-term losses and terms that match the metric.

- :func:`term_loss`: MSE of a term-head model's four predicted sub-terms against the labelled ones;
  items labelled before sub-terms existed (NaN terms) drop out of it, they still train the score.
- :func:`correlation_loss` and :func:`pairwise_ranking_loss`: the metric is a correlation (LCC, SRCC,
  within-profile LCC), which MSE only approximates; these reward ranking the batch as the labels do.
- :func:`label_objective`: the score loss (clip + frames, `haaqinet_loss`) plus the weighted parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from haaqicli.models.base import HAAQINetOutput
from haaqicli.models.haaqinet import haaqinet_loss
from haaqicli.util.errors import HaaqiError

RANK_LOSSES = ("pairwise", "correlation")


def term_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the finite entries of `target` (B, 4); 0 (with a gradient path) when
    no item of the batch has sub-terms."""
    known = torch.isfinite(target)
    if not bool(known.any()):
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[known], target[known])


def correlation_loss(predicted: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation of the batch; 0 where it is undefined (< 3 items, constant labels)."""
    if len(target) < 3 or float(target.std()) < 1e-6:
        return predicted.sum() * 0.0
    p = predicted - predicted.mean()
    t = target - target.mean()
    return 1.0 - (p * t).sum() / (p.norm() * t.norm() + eps)


def pairwise_ranking_loss(predicted: Tensor, target: Tensor, min_gap: float = 0.02, scale: float = 10.0) -> Tensor:
    """RankNet-style logistic loss over the batch's pairs whose labels differ by at least `min_gap`:
    softplus(-scale * (p_i - p_j)) for every pair with t_i > t_j, weighted by the label gap so that
    clearly different items count more than near-ties. 0 when the batch has no such pair."""
    gap = target[:, None] - target[None, :]
    pairs = gap >= min_gap
    if not bool(pairs.any()):
        return predicted.sum() * 0.0
    margin = predicted[:, None] - predicted[None, :]
    weights = gap[pairs]
    return (F.softplus(-scale * margin[pairs]) * weights).sum() / weights.sum()


@dataclass
class Objective:
    frame_weight: float = 0.5  # MSE of every frame score against the clip label
    term_weight: float = 1.0  # sub-term MSE (term-head models, items with sub-terms)
    rank_weight: float = 0.0  # ranking term beside MSE; 0 = off
    rank_loss: str = "pairwise"  # one of RANK_LOSSES

    def __post_init__(self) -> None:
        if self.rank_loss not in RANK_LOSSES:
            raise HaaqiError(f"--rank-loss {self.rank_loss}: expected one of {', '.join(RANK_LOSSES)}")


def label_objective(out: HAAQINetOutput, labels: Tensor, terms: Tensor | None, objective: Objective
                    ) -> tuple[Tensor, dict[str, float]]:
    """(loss, parts) of a model output against the labels (B,) and sub-terms (B, 4) or None."""
    loss = haaqinet_loss(out, labels, frame_weight=objective.frame_weight)
    parts = {"score": float(loss.detach())}
    if out.terms is not None and terms is not None and objective.term_weight:
        term = term_loss(out.terms, terms)
        loss = loss + objective.term_weight * term
        parts["terms"] = float(term.detach())
    if objective.rank_weight:
        rank = (pairwise_ranking_loss if objective.rank_loss == "pairwise" else correlation_loss)(out.clip, labels)
        loss = loss + objective.rank_weight * rank
        parts["rank"] = float(rank.detach())
    return loss, parts
