"""Exact, fast intrusive HAAQI (pyclarity-compatible), alignment and reference-based pair scoring."""

from haaqicli.reference.haaqi import compute_haaqi, compute_haaqi_batch, haaqi_loss, haaqi_terms

__all__ = ["compute_haaqi", "compute_haaqi_batch", "haaqi_loss", "haaqi_terms"]
