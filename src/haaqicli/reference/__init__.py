"""Exact, fast intrusive HAAQI (pyclarity-compatible), alignment and reference-based pair scoring."""

from haaqicli.reference.align import align
from haaqicli.reference.haaqi import compute_haaqi, compute_haaqi_batch, haaqi_loss, haaqi_terms
from haaqicli.reference.pairs import score_pairs

__all__ = ["align", "compute_haaqi", "compute_haaqi_batch", "haaqi_loss", "haaqi_terms", "score_pairs"]
