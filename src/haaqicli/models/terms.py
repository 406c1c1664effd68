"""Term heads: the models predict HAAQI's sub-terms and combine them with HAAQI's fixed formula.

With ``head.terms`` the frame projection gives four logits per frame, one per sub-term (TERMS: the
cepstral correlation ``cep_high``, the fine-structure ``bm_sync5`` and the clipped spectrum terms
``d_loud``, ``d_norm``, all in [0, 1]). The clip's term logits are the same attention-weighted average
of frame logits as the single score of the plain head; sigmoids give the terms, and
`combine_clipped_terms` (the formula `combine_terms` uses) gives frame and clip scores. The head still
returns score logits (``logit(score)``), so the engine and every consumer of `head` are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from haaqicli.reference.formula import TERMS, combine_clipped_terms

__all__ = ["TERMS", "TermScores", "combine", "score_logit", "term_scores"]
LOGIT_EPS = 1e-6


@dataclass
class TermScores:
    clip: Tensor  # (B,) score from the clip's terms
    frames: Tensor  # (B, F)
    clip_terms: Tensor  # (B, 4) in TERMS order
    frame_terms: Tensor  # (B, F, 4)


def combine(terms: Tensor) -> Tensor:
    """(..., 4) sub-terms in TERMS order -> (...) HAAQI score, differentiably."""
    return combine_clipped_terms(*terms.unbind(-1))[0]


def term_scores(frame_term_logits: Tensor, alpha: Tensor) -> TermScores:
    """Frame term logits (B, F, 4) and pooling weights (B, F) -> terms and scores of frames and clip."""
    clip_terms = torch.sigmoid((alpha.unsqueeze(-1) * frame_term_logits).sum(1))
    frame_terms = torch.sigmoid(frame_term_logits)
    return TermScores(combine(clip_terms), combine(frame_terms), clip_terms, frame_terms)


def score_logit(score: Tensor) -> Tensor:
    """logit(score), so that sigmoid of the head's output is the combined score."""
    return torch.logit(score, eps=LOGIT_EPS)
