"""Distilled student (distilBEATs / DistilHuBERT spirit): a light conv front end on a cheaper log-mel, a few
narrow BEATs-style transformer layers at the frame rate, the same HAAQI head (smaller), and projection
heads that predict chosen teacher hidden layers.

Why the front end differs from the teacher's: at 24 kHz the teacher's fbank (25 ms frames, 10 ms hop,
1024-point FFT) alone costs more than the student's whole time budget, so the student uses 20 ms frames with
a 20 ms hop (512-point FFT, 4x cheaper) and reaches the teacher's 160 ms frame rate with two strided convs
(8 fbank frames per step instead of 16). Student frame t and teacher frame t cover the same samples, so
hidden states and frame scores align one-to-one for distillation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.models.base import HAAQIModel, HAAQINetOutput
from haaqicli.models.beats import BEATsConfig, KaldiFbank, TransformerEncoder
from haaqicli.models.haaqinet import (
    HAAQIHead,
    HeadConfig,
    attach_head_inputs,
    check_known_fields,
    with_head_inputs,
)
from haaqicli.util.errors import ModelError


@dataclass
class StudentEncoderConfig:
    sample_rate: int = 24000
    num_mel_bins: int = 128
    frame_length_ms: float = 20.0
    frame_shift_ms: float = 20.0
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582
    conv_channels: tuple[int, int] = (32, 64)
    conv_time_strides: tuple[int, int] = (4, 2)
    conv_freq_strides: tuple[int, int] = (4, 4)
    encoder_layers: int = 2
    encoder_embed_dim: int = 160
    encoder_ffn_embed_dim: int = 640
    encoder_attention_heads: int = 4
    conv_pos: int = 16
    conv_pos_groups: int = 16
    num_buckets: int = 64
    max_distance: int = 128
    gru_rel_pos: bool = True
    deep_norm: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> StudentEncoderConfig:
        check_known_fields(cls, cfg, "student encoder config")
        d = dict(cfg)
        for k in ("conv_channels", "conv_time_strides", "conv_freq_strides"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def transformer_config(self) -> BEATsConfig:
        return BEATsConfig(
            encoder_layers=self.encoder_layers, encoder_embed_dim=self.encoder_embed_dim,
            embed_dim=self.encoder_embed_dim, encoder_ffn_embed_dim=self.encoder_ffn_embed_dim,
            encoder_attention_heads=self.encoder_attention_heads, conv_pos=self.conv_pos,
            conv_pos_groups=self.conv_pos_groups, relative_position_embedding=True,
            num_buckets=self.num_buckets, max_distance=self.max_distance, gru_rel_pos=self.gru_rel_pos,
            deep_norm=self.deep_norm, dropout=self.dropout, attention_dropout=self.attention_dropout)


class StudentEncoder(nn.Module):
    """fbank -> 2 strided Conv2d (+GELU) -> Linear -> LayerNorm -> transformer; one token per time step."""

    def __init__(self, cfg: StudentEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fbank = KaldiFbank(cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms)
        c1, c2 = cfg.conv_channels
        (t1, t2), (f1, f2) = cfg.conv_time_strides, cfg.conv_freq_strides
        if cfg.num_mel_bins % (f1 * f2):
            raise ModelError("student encoder config: num_mel_bins must be divisible by the freq strides")
        self.conv = nn.Sequential(nn.Conv2d(1, c1, (t1, f1), (t1, f1)), nn.GELU(),
                                  nn.Conv2d(c1, c2, (t2, f2), (t2, f2)), nn.GELU())
        self.proj = nn.Linear(c2 * cfg.num_mel_bins // (f1 * f2), cfg.encoder_embed_dim)
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)
        self.encoder = TransformerEncoder(cfg.transformer_config())
        self.time_stride = t1 * t2

    @property
    def num_layers(self) -> int:
        return self.cfg.encoder_layers

    @property
    def output_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    @property
    def min_samples(self) -> int:
        return self.fbank.window_size + (self.time_stride - 1) * self.fbank.window_shift

    def forward(self, wave: Tensor) -> list[Tensor]:
        """wave (B, T) -> [input to layer 1, each layer output], each (B, F, D)."""
        if wave.shape[-1] < self.min_samples:
            wave = F.pad(wave, (0, self.min_samples - wave.shape[-1]))
        fb = (self.fbank(wave) - self.cfg.fbank_mean) / (2 * self.cfg.fbank_std)
        x = self.conv(fb.unsqueeze(1))  # (B, C, F, mel')
        x = x.permute(0, 2, 1, 3).flatten(2)
        x = self.layer_norm(self.proj(x))
        _, hidden = self.encoder(x)
        return hidden


@dataclass
class DistillConfig:
    teacher_dim: int = 256
    # (student hidden index, teacher hidden index); index 0 = input to the first transformer layer.
    targets: list[tuple[int, int]] = field(default_factory=lambda: [(1, 2), (2, 4)])

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> DistillConfig:
        default = cls()
        return cls(teacher_dim=int(cfg.get("teacher_dim", default.teacher_dim)),
                   targets=[(int(a), int(b)) for a, b in cfg.get("targets", default.targets)])


def student_config(encoder: StudentEncoderConfig, head: HeadConfig, distill: DistillConfig) -> dict[str, Any]:
    """The config dict (as in weights/manifest.json) of a student built from these parts."""
    enc = asdict(encoder)
    for k in ("conv_channels", "conv_time_strides", "conv_freq_strides"):
        enc[k] = list(enc[k])
    return {"encoder": enc, "head": asdict(head),
            "distill": {"teacher_dim": distill.teacher_dim, "targets": [list(t) for t in distill.targets]}}


# The student as shipped, in one place (the dataclass defaults above and this head): <= 25% of the
# teacher's parameters and >= 1000x real time on 2 CPU cores (batch 16 x 6 s @ 24 kHz); its two layers
# learn the teacher's layers 2 and 4.
STUDENT_HEAD = HeadConfig(d_adapter=96, d_audiogram=16, lstm_hidden=64, attn_heads=4, dropout=0.1)
STUDENT_CONFIG: dict[str, Any] = student_config(StudentEncoderConfig(), STUDENT_HEAD, DistillConfig())


class StudentNet(HAAQIModel):
    """Student model: same inputs/outputs as `HAAQINet`, plus `predict_teacher_hidden` for distillation."""

    arch = "haaqinet-student"
    DEFAULT_CONFIG = STUDENT_CONFIG
    # 8 stereo 3-minute FLACs on 2 cores: 4.17-4.28 s with one torch thread against 4.42-4.66 s with
    # two (a decoding thread runs beside it), identical scores; the teacher needs both (24.5 s vs 16.0 s)
    LEAVES_CORE_FOR_DECODING = True

    def __init__(self, encoder_cfg: StudentEncoderConfig | Mapping[str, Any],
                 head_cfg: HeadConfig | Mapping[str, Any],
                 distill_cfg: DistillConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(encoder_cfg, StudentEncoderConfig):
            encoder_cfg = StudentEncoderConfig.from_dict(encoder_cfg)
        self.head_cfg = head_cfg if isinstance(head_cfg, HeadConfig) else HeadConfig.from_dict(head_cfg)
        if distill_cfg is None:
            distill_cfg = DistillConfig()
        elif not isinstance(distill_cfg, DistillConfig):
            distill_cfg = DistillConfig.from_dict(distill_cfg)
        self.distill_cfg = distill_cfg
        self.encoder = StudentEncoder(encoder_cfg)
        for s, _ in distill_cfg.targets:
            if not 0 <= s <= encoder_cfg.encoder_layers:
                raise ModelError(f"distill config: student layer {s} does not exist")
        self.head = HAAQIHead(encoder_cfg.encoder_layers + 1, encoder_cfg.encoder_embed_dim, self.head_cfg)
        # Prediction heads (DistilHuBERT): only used by the distillation loss, tiny at inference.
        self.distill_heads = nn.ModuleList(
            [nn.Linear(encoder_cfg.encoder_embed_dim, distill_cfg.teacher_dim) for _ in distill_cfg.targets])
        attach_head_inputs(self, encoder_cfg.sample_rate, self.head_cfg)

    @property
    def sample_rate(self) -> int:
        return self.encoder.cfg.sample_rate

    @property
    def config(self) -> dict[str, Any]:
        return student_config(self.encoder.cfg, self.head_cfg, self.distill_cfg)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StudentNet:
        return cls(config["encoder"], config["head"], config.get("distill"))

    def encode(self, wave: Tensor) -> list[Tensor]:
        return with_head_inputs(self, wave, self.encoder(wave))

    def predict_teacher_hidden(self, hidden: Sequence[Tensor]) -> list[Tensor]:
        return [head(hidden[s]) for head, (s, _) in zip(self.distill_heads, self.distill_cfg.targets, strict=True)]


def distillation_loss(student_out: HAAQINetOutput, teacher_out: HAAQINetOutput, student: StudentNet, *,
                      hidden_weight: float = 1.0, cosine_weight: float = 1.0, output_weight: float = 1.0
                      ) -> tuple[Tensor, dict[str, float]]:
    """DistilHuBERT-style loss: per target layer L1 + (1 - cosine) between the student's predicted and the
    teacher's hidden states, plus MSE between student and teacher clip and frame scores (and sub-terms,
    when both have term heads).
    Teacher tensors are detached. Returns (loss, {part: value}) for logging."""
    preds = student.predict_teacher_hidden(student_out.hidden)
    l1 = student_out.clip.new_zeros(())  # summed over targets, then averaged
    cos = student_out.clip.new_zeros(())
    for pred, (_, t) in zip(preds, student.distill_cfg.targets, strict=True):
        if t >= len(teacher_out.hidden):
            raise ModelError(f"distill config: teacher has no hidden layer {t}")
        target = teacher_out.hidden[t].detach()
        n = min(pred.shape[1], target.shape[1])  # lengths can differ by one frame at odd input lengths
        p, q = pred[:, :n], target[:, :n]
        l1 = l1 + F.l1_loss(p, q)
        cos = cos + (1 - F.cosine_similarity(p, q, dim=-1)).mean()
    k = max(len(preds), 1)
    l1, cos = l1 / k, cos / k
    n = min(student_out.frames.shape[1], teacher_out.frames.shape[1])
    out = F.mse_loss(student_out.clip, teacher_out.clip.detach()) + F.mse_loss(
        student_out.frames[:, :n], teacher_out.frames[:, :n].detach())
    if student_out.terms is not None and teacher_out.terms is not None:  # both have term heads
        out = out + F.mse_loss(student_out.terms, teacher_out.terms.detach())
    loss = hidden_weight * l1 + cosine_weight * cos + output_weight * out
    return loss, {"l1": l1.item(), "cosine": cos.item(), "output_mse": out.item()}
