"""Signal descriptors of damage, and a small corrector that adds them to a trained model's score.

Why: the trained networks under-use evidence that is plain in the signal. On their own training items
the shipped student leaves added reverb +0.24 too high, NAL-R -0.19 too low and clipping +0.12 too
high, and a gradient-boosted model of a few such descriptors alone, without the network, reached LCC
0.76 on ufoai-music. Each descriptor is measured per window, so the engine's encode-once contract holds:

- per ERB band (HAAQI's spacing, 80 Hz - 8 kHz), over the window's ~11-ms frames of band level in dB
  SPL: the median level; the dynamic range (95th - 5th percentile) and the floor (median - 5th
  percentile), which reverberation and noise fill in; the fastest decays (10th percentile of the
  frame-to-frame change), which reverberation slows;
- the share of samples within 1% and 5% of the window's peak, and the crest factor: clipping flattens
  peaks onto a plateau;
- spectral flatness (10th, 50th, 90th percentile over frames): noise and coding artefacts whiten it.

:class:`ScoreCorrector` (head side) maps the standardised descriptors, the audiogram and the network's
score logit to a change of that logit (zero-initialised: a fresh corrector leaves the model as it was).
It is fitted after the network, with the network frozen (`training.corrector`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.models.hearing import FULL_SCALE_SPL, LEVEL_FLOOR_DB, FramePower

SIGNAL_BANDS = 16
PEAK_SHARES = (0.99, 0.95)
LEVEL_QUANTILES = (0.05, 0.5, 0.95)
FLATNESS_QUANTILES = (0.1, 0.5, 0.9)
DECAY_QUANTILE = 0.1
N_SIGNAL_FEATURES = 4 * SIGNAL_BANDS + len(PEAK_SHARES) + 1 + len(FLATNESS_QUANTILES)


class SignalFeatures(FramePower):
    """wave (B, T) calibrated -> (B, N_SIGNAL_FEATURES) descriptors of the window (see the module
    docstring), in dB SPL of the model's calibration where they are levels."""

    def __init__(self, sample_rate: int, frame_ms: float = 40.0, overlap: int = 1) -> None:
        super().__init__(sample_rate, SIGNAL_BANDS, frame_ms, overlap)
        self.register_buffer("level_q", torch.tensor(LEVEL_QUANTILES), persistent=False)
        self.register_buffer("flat_q", torch.tensor(FLATNESS_QUANTILES), persistent=False)

    def forward(self, wave: Tensor, frames: int | None = None, power: Tensor | None = None) -> Tensor:
        # `frames` is the encode() contract's; these descriptors are per window, not per frame.
        x = wave.float()
        if x.shape[-1] < self.n_fft:  # the level and peak descriptors see the padded frame too
            x = F.pad(x, (0, self.n_fft - x.shape[-1]))
        power = self.power(x) if power is None else power
        levels = (10.0 * torch.log10((power @ self.bank).clamp_min(1e-30)) + FULL_SCALE_SPL).clamp_min(LEVEL_FLOOR_DB)
        low, median, high = torch.quantile(levels, self.level_q, dim=1)  # each (B, bands)
        if levels.shape[1] > 1:
            decay = torch.quantile(torch.diff(levels, dim=1), DECAY_QUANTILE, dim=1)
        else:
            decay = torch.zeros_like(median)
        peak, shares = peak_shares(x)
        # x * x, not x.square(): the same values, ~8x faster on a contiguous CPU tensor (torch 2.11)
        rms = (x * x).mean(dim=-1).clamp_min(1e-24).sqrt()
        crest = 20.0 * torch.log10(peak / rms)
        # Flatness of the power spectrum: geometric over arithmetic mean, per frame.
        flat = torch.exp(torch.log(power + 1e-20).mean(-1)) / (power.mean(-1) + 1e-20)
        flatness = torch.quantile(flat, self.flat_q, dim=1).T
        return torch.cat([median, high - low, median - low, decay, torch.stack([*shares, crest], dim=-1),
                          flatness], dim=-1)


def peak_shares(x: Tensor, block: int = 1024) -> tuple[Tensor, list[Tensor]]:
    """(peak |x| (B,) floored at 1e-12, [share of samples with |x| >= s * peak for s in PEAK_SHARES]).

    Exactly the plain per-sample count, without a full-size |x| or mask: the peak of each block of
    samples comes from its max and min, and only blocks whose peak reaches the lowest threshold are
    counted sample by sample (few, except in clipped audio). Measured on 32 6-s windows: ~8x faster."""
    n = x.shape[-1]
    whole = n // block * block
    blocks = x[..., :whole].unfold(-1, block, block) if whole else x.new_zeros(x.shape[0], 0, block)  # a view
    tail = x[..., whole:].unsqueeze(1)
    parts = [blocks, tail] if whole < n else [blocks]
    block_peak = torch.cat([torch.maximum(p.amax(-1), -p.amin(-1)) for p in parts if p.shape[1]], dim=1)
    peak = block_peak.amax(-1).clamp_min(1e-12)
    counts = torch.zeros(len(PEAK_SHARES), x.shape[0], dtype=torch.int32, device=x.device)
    hot_rows, hot_blocks = torch.nonzero(block_peak >= min(PEAK_SHARES) * peak[:, None], as_tuple=True)
    full = hot_blocks < blocks.shape[1]
    for rows, samples in ((hot_rows[full], blocks[hot_rows[full], hot_blocks[full]]),
                          (hot_rows[~full], tail[hot_rows[~full], 0])):
        if not len(rows):
            continue
        for i, share in enumerate(PEAK_SHARES):
            limit = (share * peak[rows])[:, None]
            hits = ((samples >= limit) | (samples <= -limit)).sum(-1, dtype=torch.int32)
            counts[i].index_add_(0, rows, hits)
    return peak, [c / n for c in counts]


class ScoreCorrector(nn.Module):
    """(descriptors (B, N), audiogram (B, 8) dB HL, score logit (B,)) -> change of the logit (B,).

    The descriptors are standardised by statistics of the training items (`feature_mean`,
    `feature_std`, stored with the weights), so the small network sees comparable scales."""

    def __init__(self, n_features: int = N_SIGNAL_FEATURES, hidden: int = 32, audiogram_scale: float = 100.0) -> None:
        super().__init__()
        self.audiogram_scale = audiogram_scale
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features + 8 + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def set_statistics(self, features: Tensor) -> None:
        """Standardise by these descriptors' mean and standard deviation (of the training items)."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: Tensor, audiogram: Tensor, logit: Tensor) -> Tensor:
        z = (features.to(logit.dtype) - self.feature_mean) / self.feature_std
        x = torch.cat([z, audiogram.to(logit.dtype) / self.audiogram_scale, logit.unsqueeze(-1)], dim=-1)
        return self.net(x).squeeze(-1)
