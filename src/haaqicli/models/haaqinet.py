"""HAAQI-Net (Wisnu et al. 2024): encoder layers -> softmax-weighted sum -> adapter -> audiogram concat ->
BLSTM -> multi-head self-attention -> frame scores + clip score.

Clip score design (documented choice): the clip logit is an attention-weighted average of the frame logits,
`clip = sigmoid(sum_t a_t * frame_logit_t)` with `a = softmax(w . h_t)`. The pooling projection starts at
zero, so a fresh model averages frame logits exactly like the paper; training may learn to weight the frames
that matter (e.g. a short codec artefact). Frame and clip scores therefore stay on the same scale, and the
frame loss (every frame score vs the clip label, as in MOSNet/HAAQI-Net) trains the same logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.models.base import HAAQIModel, HAAQINetOutput
from haaqicli.models.beats import BEATs, BEATsConfig
from haaqicli.models.hearing import BandConditioning, BandLevels, FramePower
from haaqicli.models.musicnn import MusicnnConfig, MusicnnPrior
from haaqicli.models.signal import ScoreCorrector, SignalFeatures
from haaqicli.models.terms import score_logit, term_scores
from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES, MODEL_SAMPLE_RATE
from haaqicli.util.errors import ModelError

# The teacher as shipped (sized for >= 100x real time on 2 CPU cores, batch 16 x 6 s @ 24 kHz).
TEACHER_CONFIG: dict[str, Any] = {
    "encoder": {
        "input_patch_size": 16, "embed_dim": 256, "conv_bias": False,
        "encoder_layers": 4, "encoder_embed_dim": 256, "encoder_ffn_embed_dim": 1024,
        "encoder_attention_heads": 4, "activation_fn": "gelu",
        "layer_norm_first": False, "deep_norm": True,
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "dropout_input": 0.0,
        "conv_pos": 64, "conv_pos_groups": 16,
        "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True,
        "sample_rate": MODEL_SAMPLE_RATE, "num_mel_bins": 128, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
        "fbank_mean": 15.41663, "fbank_std": 6.55582,
    },
    "head": {"d_adapter": 256, "d_audiogram": 32, "lstm_hidden": 128, "attn_heads": 4, "dropout": 0.1},
}

# Content priors the head can take (frozen pretrained music encoders; see models.musicnn).
CONTENT_PRIORS = ("musicnn",)

# Audiogram input scaling: dB HL / 100 keeps -10..120 dB HL within about [-0.1, 1.2].
AUDIOGRAM_SCALE = 100.0


def check_known_fields(cls: type, cfg: Mapping[str, Any], what: str) -> None:
    """Our own configs are strict: a field this version does not know is an error, not ignored."""
    unknown = set(cfg) - {f.name for f in fields(cls)}
    if unknown:
        raise ModelError(f"{what}: unknown fields {sorted(unknown)}")


@dataclass
class HeadConfig:
    d_adapter: int = 256
    d_audiogram: int = 32
    lstm_hidden: int = 128
    attn_heads: int = 4
    dropout: float = 0.1
    # Off in the shipped models; new models turn them on (see models.terms and models.hearing).
    terms: bool = False  # predict HAAQI's four sub-terms and combine them with its formula
    bands: int = 0  # > 0: hearing-loss conditioning on this many auditory band levels
    d_bands: int = 32  # width of the band-conditioning features joining the BLSTM input
    content_prior: str = ""  # "musicnn": frozen musicnn embeddings join the BLSTM input; "" = off
    prior: dict[str, Any] = field(default_factory=dict)  # the prior's MusicnnConfig ({} = MSD_musicnn's)
    d_prior: int = 32  # width of the projected prior features joining the BLSTM input
    signal_corrector: int = 0  # > 0: hidden width of a corrector of the score from signal descriptors (models.signal)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> HeadConfig:
        check_known_fields(cls, cfg, "head config")
        head = cls(**dict(cfg))
        if head.content_prior not in ("", *CONTENT_PRIORS):
            raise ModelError(f"head config: unknown content prior {head.content_prior!r} "
                             f"(known: {', '.join(CONTENT_PRIORS)})")
        return head

    def prior_config(self) -> MusicnnConfig | None:
        return MusicnnConfig.from_dict(self.prior) if self.content_prior else None


@dataclass
class HeadScores:
    clip_logit: Tensor  # (B,)
    frame_logits: Tensor  # (B, F)
    clip: Tensor  # (B,) in [0, 1]
    frames: Tensor  # (B, F)
    terms: Tensor | None = None
    frame_terms: Tensor | None = None


class HAAQIHead(nn.Module):
    """Everything after the encoder. Input: a list of frame-level hidden states (B, F, D), followed,
    with `cfg.bands`, by the band levels (B, F, bands) of `hearing.BandLevels`, then, with
    `cfg.content_prior`, by the prior's embeddings (B, F, E) of `musicnn.MusicnnPrior`, then, with
    `cfg.signal_corrector`, by the window's descriptors (B, N) of `signal.SignalFeatures`."""

    def __init__(self, n_layers: int, d_in: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_ag = len(AUDIOGRAM_FREQUENCIES)
        self.layer_weights = nn.Parameter(torch.zeros(n_layers))
        self.adapter = nn.Sequential(nn.Linear(d_in, cfg.d_adapter), nn.GELU(), nn.Dropout(cfg.dropout),
                                     nn.Linear(cfg.d_adapter, cfg.d_adapter))
        self.audiogram_proj = nn.Sequential(nn.Linear(n_ag, cfg.d_audiogram), nn.GELU())
        self.band_conditioning = None
        if cfg.bands:
            self.band_conditioning = BandConditioning(cfg.bands, cfg.d_bands)
        d_bands = cfg.d_bands if cfg.bands else 0
        self.prior_proj = None
        prior = cfg.prior_config()
        if prior is not None:  # normalised first: the frozen embeddings' scales are not ours to choose
            self.prior_proj = nn.Sequential(nn.LayerNorm(prior.backend_units),
                                            nn.Linear(prior.backend_units, cfg.d_prior), nn.GELU())
        d_prior = cfg.d_prior if prior is not None else 0
        self.blstm = nn.LSTM(cfg.d_adapter + cfg.d_audiogram + d_bands + d_prior, cfg.lstm_hidden,
                             batch_first=True, bidirectional=True)
        d = 2 * cfg.lstm_hidden
        self.attn = nn.MultiheadAttention(d, cfg.attn_heads, dropout=cfg.dropout, batch_first=True)
        self.attn_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.frame_proj = nn.Linear(d, 4 if cfg.terms else 1)  # 4: one logit per HAAQI sub-term
        self.pool_proj = nn.Linear(d, 1)
        nn.init.zeros_(self.pool_proj.weight)
        nn.init.zeros_(self.pool_proj.bias)
        self.corrector = ScoreCorrector(hidden=cfg.signal_corrector) if cfg.signal_corrector else None

    def forward(self, hidden: list[Tensor], audiogram: Tensor) -> tuple[Tensor, Tensor]:
        """-> (clip_logit (B,), frame_logits (B, F)): sigmoid gives the scores."""
        scores = self.scores(hidden, audiogram)
        return scores.clip_logit, scores.frame_logits

    def scores(self, hidden: list[Tensor], audiogram: Tensor) -> HeadScores:
        """Scores (and, with `cfg.terms`, sub-terms) of the clip and of every frame; with a corrector,
        its change of the clip's logit applies to every frame's too (the sub-terms stay the network's)."""
        if self.corrector is None:
            return self.network_scores(hidden, audiogram)
        s = self.network_scores(hidden[:-1], audiogram)
        change = self.corrector(hidden[-1], audiogram, s.clip_logit)
        clip_logit, frame_logits = s.clip_logit + change, s.frame_logits + change.unsqueeze(-1)
        return HeadScores(clip_logit, frame_logits, torch.sigmoid(clip_logit), torch.sigmoid(frame_logits),
                          s.terms, s.frame_terms)

    def network_scores(self, hidden: list[Tensor], audiogram: Tensor) -> HeadScores:
        """The scores before any corrector."""
        levels = prior = None
        if self.prior_proj is not None:
            hidden, prior = hidden[:-1], hidden[-1]
        if self.band_conditioning is not None:
            hidden, levels = hidden[:-1], hidden[-1]
        if len(hidden) != self.layer_weights.numel():
            raise ModelError(f"head expects {self.layer_weights.numel()} encoder layers, got {len(hidden)}")
        w = torch.softmax(self.layer_weights, dim=0)
        # Per-layer normalisation (SUPERB-style) so the weights compare layers, not their scales.
        x = sum(w[i] * F.layer_norm(h, h.shape[-1:]) for i, h in enumerate(hidden))
        x = self.adapter(x)
        ag = self.audiogram_proj(audiogram.to(x.dtype) / AUDIOGRAM_SCALE)
        parts = [x, ag.unsqueeze(1).expand(-1, x.shape[1], -1)]
        if levels is not None:
            parts.append(self.band_conditioning(levels[:, : x.shape[1]], audiogram).to(x.dtype))
        if prior is not None:
            parts.append(self.prior_proj(prior[:, : x.shape[1]].to(x.dtype)))
        x, _ = self.blstm(torch.cat(parts, dim=-1))
        a, _ = self.attn(x, x, x, need_weights=False)
        x = self.attn_norm(x + self.dropout(a))
        alpha = torch.softmax(self.pool_proj(x).squeeze(-1), dim=-1)
        if self.cfg.terms:
            t = term_scores(self.frame_proj(x), alpha)
            return HeadScores(score_logit(t.clip), score_logit(t.frames), t.clip, t.frames, t.clip_terms,
                              t.frame_terms)
        frame_logits = self.frame_proj(x).squeeze(-1)
        clip_logit = (alpha * frame_logits).sum(-1)
        return HeadScores(clip_logit, frame_logits, torch.sigmoid(clip_logit), torch.sigmoid(frame_logits))

    def output(self, hidden: list[Tensor], features: list[Tensor], audiogram: Tensor) -> HAAQINetOutput:
        """The model output for encoder `hidden` states and the head's `features` (hidden, then any
        band levels)."""
        s = self.scores(features, audiogram)
        return HAAQINetOutput(s.clip, s.frames, hidden, s.clip_logit, s.frame_logits, s.terms, s.frame_terms)


def with_head_inputs(model: nn.Module, wave: Tensor, hidden: list[Tensor]) -> list[Tensor]:
    """`hidden`, followed by what else the model's head takes, at the hidden states' frame rate: the
    wave's band levels, then the content prior's embeddings, then the window's signal descriptors (the
    encode() contract: the engine hands the list to the head as is)."""
    frames = hidden[0].shape[1]
    spectra: dict[tuple[int, int], Tensor] = {}  # one framed spectrum per framing, shared by its readers
    extra = []
    for module in (getattr(model, "band_levels", None), getattr(model, "content_prior", None),
                   getattr(model, "signal_features", None)):
        if isinstance(module, FramePower):
            if module.frame_key not in spectra:
                spectra[module.frame_key] = module.power(wave)
            extra.append(module(wave, frames, power=spectra[module.frame_key]))
        elif module is not None:
            extra.append(module(wave, frames))
    return [*hidden, *extra]


def attach_head_inputs(model: nn.Module, sample_rate: int, head_cfg: HeadConfig) -> None:
    """Give a model the front ends its head's options need: band levels for hearing-loss conditioning,
    the frozen content prior (its weights: `MusicnnPrior.load_converted`, or the model's own file)."""
    model.band_levels = None
    if head_cfg.bands:
        model.band_levels = BandLevels(sample_rate, head_cfg.bands)
    model.content_prior = None
    prior = head_cfg.prior_config()
    if prior is not None:
        model.content_prior = MusicnnPrior(sample_rate, prior)
    model.signal_features = SignalFeatures(sample_rate) if head_cfg.signal_corrector else None


def beats_frame_hidden(encoder: BEATs, wave: Tensor) -> list[Tensor]:
    """BEATs hidden states averaged over the frequency patches of each time step -> (B, F, D) each."""
    if wave.shape[-1] < encoder.min_samples:
        wave = F.pad(wave, (0, encoder.min_samples - wave.shape[-1]))
    _, hidden, _ = encoder.extract_features(wave, return_all_layers=True)
    fp = encoder.freq_patches
    return [h.reshape(h.shape[0], h.shape[1] // fp, fp, h.shape[2]).mean(2) for h in hidden]


class HAAQINet(HAAQIModel):
    """Teacher: BEATs encoder + HAAQI head. Config: {"encoder": BEATsConfig dict, "head": HeadConfig dict}."""

    arch = "haaqinet"
    DEFAULT_CONFIG = TEACHER_CONFIG

    def __init__(self, encoder_cfg: BEATsConfig | Mapping[str, Any], head_cfg: HeadConfig | Mapping[str, Any]
                 ) -> None:
        super().__init__()
        self.encoder = BEATs(encoder_cfg)
        if self.encoder.predictor is not None:
            raise ModelError("HAAQINet needs a pre-trained (not fine-tuned classifier) BEATs encoder")
        self.head_cfg = head_cfg if isinstance(head_cfg, HeadConfig) else HeadConfig.from_dict(head_cfg)
        self.head = HAAQIHead(self.encoder.num_layers + 1, self.encoder.output_dim, self.head_cfg)
        attach_head_inputs(self, self.encoder.sample_rate, self.head_cfg)

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def config(self) -> dict[str, Any]:
        return {"encoder": self.encoder.cfg.to_dict(), "head": asdict(self.head_cfg)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HAAQINet:
        return cls(config["encoder"], config["head"])

    def encode(self, wave: Tensor) -> list[Tensor]:
        return with_head_inputs(self, wave, beats_frame_hidden(self.encoder, wave))


def haaqinet_loss(out: HAAQINetOutput, target: Tensor, frame_weight: float = 1.0) -> Tensor:
    """HAAQI-Net objective: MSE(clip, label) + frame_weight * MSE(every frame, label)."""
    clip = F.mse_loss(out.clip, target)
    frames = F.mse_loss(out.frames, target.unsqueeze(1).expand_as(out.frames))
    return clip + frame_weight * frames
