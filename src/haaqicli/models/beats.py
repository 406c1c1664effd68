"""BEATs audio encoder (Chen et al. 2022, arXiv:2212.09058), re-implemented from the paper and the
architecture of the official microsoft/unilm `beats` code, so official checkpoints load unchanged.

Faithful parts (parameter names identical to the official state dict):
kaldi fbank (128 mel, 25 ms / 10 ms, mean/std normalisation), 16x16 patch-embedding Conv2d, LayerNorm,
`post_extract_proj`, weight-normalised grouped conv positional embedding, post-LN (deep-norm) or pre-LN
transformer layers with bucketed relative position bias shared by all layers and its gated variant
(`gru_rel_pos`, "grep"). Differences that do not change the function: attention runs through
`F.scaled_dot_product_attention` (the official alpha=32 stabilisation is a softmax-invariant shift), the
fbank is computed for a whole batch at once, and the input sample rate is a config field (official: 16 kHz).
One addition: `input_patch_freq` lets a patch span more mel bins than frames (official: square 16x16); our
teacher's 16 x 128 patches make one token per 160 ms, 37 per 6-s window instead of 296.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.util.errors import ModelError

# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass
class BEATsConfig:
    """Field names and defaults follow the official `BEATsConfig`, so `BEATsConfig.from_dict(ckpt['cfg'])`
    rebuilds an official model. Extra fields (ours): sample_rate, num_mel_bins, frame_length_ms,
    frame_shift_ms, fbank_mean, fbank_std, input_patch_freq."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"

    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False

    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0

    conv_pos: int = 128
    conv_pos_groups: int = 16

    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False

    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    # Front end (official values hard-coded in BEATs.preprocess; config fields here).
    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582
    # Mel bins per patch; 0 = input_patch_size (official square patches). num_mel_bins gives one token per
    # time step (a sequence 8x shorter than square patches: the cost that decides a CPU teacher's training).
    input_patch_freq: int = 0

    @property
    def patch_shape(self) -> tuple[int, int]:
        """(fbank frames, mel bins) of one patch."""
        return self.input_patch_size, self.input_patch_freq or self.input_patch_size

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> BEATsConfig:
        """Build from an official (or our) cfg dict; keys we do not know are ignored because official
        checkpoints carry training-only options - any architectural mismatch shows up as state-dict keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Batched kaldi fbank


def _povey_window(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.hann_window(n, periodic=False, device=device, dtype=dtype).pow(0.85)


class KaldiFbank(nn.Module):
    """Batched, differentiable equivalent of `torchaudio.compliance.kaldi.fbank` with the options BEATs uses
    (povey window, preemphasis 0.97, DC removal, snip_edges, power spectrum, log mel, no dither)."""

    INFERENCE_CHUNK = 2  # windows per pass without gradients

    def __init__(self, sample_rate: int, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, low_freq: float = 20.0, high_freq: float = 0.0,
                 preemphasis: float = 0.97) -> None:
        super().__init__()
        # lazy: torchaudio only where this path runs (start-up time)
        from torchaudio.compliance.kaldi import get_mel_banks

        self.sample_rate = int(sample_rate)
        self.window_size = int(sample_rate * frame_length_ms * 0.001)
        self.window_shift = int(sample_rate * frame_shift_ms * 0.001)
        self.padded = 1 << (self.window_size - 1).bit_length()  # kaldi round_to_power_of_two
        self.preemphasis = preemphasis
        # high_freq <= 0 means "Nyquist + high_freq" in kaldi, so the upper bound follows the sample rate.
        banks, _ = get_mel_banks(num_mel_bins, self.padded, float(sample_rate), low_freq, high_freq,
                                 100.0, -500.0, 1.0)
        banks = F.pad(banks.float(), (0, 1))  # kaldi pads the Nyquist bin with a zero weight
        # Non-persistent buffers: the official state dict has no fbank tensors.
        self.register_buffer("mel_banks", banks.T.contiguous(), persistent=False)
        self.register_buffer("window", _povey_window(self.window_size, torch.device("cpu"), torch.float32),
                             persistent=False)

    def num_frames(self, n_samples: int) -> int:
        if n_samples < self.window_size:
            return 0
        return 1 + (n_samples - self.window_size) // self.window_shift

    def forward(self, wave: Tensor) -> Tensor:
        """wave (B, T) float in [-1, 1] -> log mel (B, frames, mel), as kaldi on wave * 2**15."""
        if wave.shape[-1] < self.window_size:
            raise ModelError(f"input of {wave.shape[-1]} samples is shorter than one "
                             f"{self.window_size}-sample fbank frame")
        if wave.dim() == 2 and len(wave) > self.INFERENCE_CHUNK and not torch.is_grad_enabled():
            # The intermediates (~2 MB per 6-s window) of a few windows stay in cache; a whole batch's do not
            # (measured: 2x faster per window). Rows are independent, so the result is the same.
            return torch.cat([self.forward(part) for part in wave.split(self.INFERENCE_CHUNK)])
        x = wave.float() * 32768.0
        frames = x.unfold(-1, self.window_size, self.window_shift)  # (B, M, W)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - self.preemphasis * prev) * self.window
        # Explicit zero padding to a contiguous buffer: rfft(n=...) on strided frames is several times slower.
        spec = torch.fft.rfft(F.pad(frames, (0, self.padded - self.window_size)))
        # |X|^2 via real/imag squares: same value as abs().pow(2) with a smooth gradient at 0.
        power = spec.real.square() + spec.imag.square()
        mel = power @ self.mel_banks
        return torch.clamp_min(mel, torch.finfo(mel.dtype).eps).log()


# ----------------------------------------------------------------------------------------------------------
# Transformer pieces


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class WeightNormConv1d(nn.Module):
    """Conv1d with weight norm over dim=2 stored as `weight_g`/`weight_v` (the legacy
    `nn.utils.weight_norm` names the official checkpoints use)."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        std = math.sqrt(4.0 / (kernel_size * channels))
        v = torch.randn(channels, channels // groups, kernel_size) * std
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True).detach().clone())
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        # The same convolution as a channels-last conv2d over a height of 1: oneDNN's grouped conv1d
        # kernel is about 2x slower for these wide kernels (measured: the teacher's 64-tap, 16-group
        # conv, 36 ms of a 16-window batch). The input, a transposed (B, T, C) tensor, is channels-last
        # already, so no copy is made; results agree to float rounding.
        x2 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = F.conv2d(x2, w.unsqueeze(2), self.bias, padding=(0, self.padding), groups=self.groups)
        return out.squeeze(2)


class _SamePad(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class GLULinear(nn.Module):
    """`activation_fn='glu'` FFN input: Linear to 2*out, first half gated by swish of the second."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_out = d_out
        self.linear = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.linear(x).split(self.d_out, dim=-1)
        return a * F.silu(b)


def _activation(name: str):
    if name == "gelu":
        return lambda x: F.gelu(x.float()).type_as(x)
    if name in ("gelu_accurate", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    if name in ("linear", "glu"):
        return lambda x: x
    raise ModelError(f"BEATs config: unsupported activation_fn {name!r}")


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5-style bidirectional log buckets (official `_relative_positions_bucket`)."""
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    is_small = rel < max_exact
    large = max_exact + (
        torch.log(rel.float().clamp_min(1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = torch.clamp_max(large, half - 1)
    return buckets + torch.where(is_small, rel, large)


class MultiheadAttention(nn.Module):
    """Self-attention with the official parameter names (q/k/v/out_proj, relative_attention_bias,
    grep_linear, grep_a)."""

    def __init__(self, dim: int, heads: int, dropout: float, has_relative_attention_bias: bool,
                 num_buckets: int, max_distance: int, gru_rel_pos: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(f"BEATs config: encoder_embed_dim {dim} not divisible by {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, heads)
            nn.init.xavier_normal_(self.relative_attention_bias.weight)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for lin in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(lin.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def compute_bias(self, length: int, device: torch.device) -> Tensor:
        """(heads, L, L) relative position bias."""
        pos = torch.arange(length, device=device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, position_bias: Tensor | None) -> Tensor:
        """x (B, L, D) batch-first; position_bias (heads, L, L) or None."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        mask: Tensor | None = None
        if position_bias is not None:
            mask = position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                # Gate from the un-scaled query (official: q * alpha / scaling undoes both scalings).
                g = torch.sigmoid(self.grep_linear(q).view(b, self.heads, n, 2, 4).sum(-1))
                gate_a, gate_b = g.chunk(2, dim=-1)
                gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0  # (B, H, L, 1)
                mask = gate * mask
        if key_padding_mask is not None:
            pad = torch.zeros(b, 1, 1, n, device=x.device, dtype=q.dtype)
            pad = pad.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             scale=self.scaling)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.dim))


class TransformerSentenceEncoderLayer(nn.Module):
    def __init__(self, cfg: BEATsConfig, has_relative_attention_bias: bool) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.activation_name = cfg.activation_fn
        self.activation = _activation(cfg.activation_fn)
        self.self_attn = MultiheadAttention(d, cfg.encoder_attention_heads, cfg.attention_dropout,
                                            has_relative_attention_bias, cfg.num_buckets, cfg.max_distance,
                                            cfg.gru_rel_pos)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(d)
        if cfg.activation_fn == "glu":
            self.fc1: nn.Module = GLULinear(d, cfg.encoder_ffn_embed_dim)
        else:
            self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.deep_norm_alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def forward(self, x: Tensor, padding_mask: Tensor | None, pos_bias: Tensor | None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), padding_mask, pos_bias))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.deep_norm_alpha
                                      + self.dropout1(self.self_attn(x, padding_mask, pos_bias)))
        return self.final_layer_norm(x * self.deep_norm_alpha + self._ffn(x))


def _init_bert_params(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.dropout = cfg.dropout
        if d % cfg.conv_pos_groups:
            raise ModelError(f"BEATs config: encoder_embed_dim {d} not divisible by conv_pos_groups")
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, cfg.conv_pos, cfg.conv_pos_groups),
                                      _SamePad(cfg.conv_pos), nn.GELU())
        self.relative_position_embedding = cfg.relative_position_embedding
        self.layers = nn.ModuleList(
            [TransformerSentenceEncoderLayer(cfg, cfg.relative_position_embedding)
             for _ in range(cfg.encoder_layers)])
        self.layer_norm_first = cfg.layer_norm_first
        self.layer_norm = nn.LayerNorm(d)
        self.layerdrop = cfg.encoder_layerdrop
        self.grad_decay = cfg.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            for m in layer.modules():
                _init_bert_params(m)
        if cfg.relative_position_embedding:
            # One bias table shared by every layer; the state dict still lists it under each layer.
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared
        if cfg.deep_norm:
            beta = math.pow(8 * cfg.encoder_layers, -0.25)
            for layer in self.layers:
                att = layer.self_attn
                nn.init.xavier_normal_(att.k_proj.weight, gain=1)
                nn.init.xavier_normal_(att.v_proj.weight, gain=beta)
                nn.init.xavier_normal_(att.q_proj.weight, gain=1)
                nn.init.xavier_normal_(att.out_proj.weight, gain=beta)
                fc1 = layer.fc1.linear if isinstance(layer.fc1, GLULinear) else layer.fc1
                nn.init.xavier_normal_(fc1.weight, gain=beta)
                nn.init.xavier_normal_(layer.fc2.weight, gain=beta)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """x (B, L, D) -> (final output, [input to layer 1, output of each layer]) all (B, L, D)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        pos_bias = None
        if self.relative_position_embedding:
            pos_bias = self.layers[0].self_attn.compute_bias(x.shape[1], x.device)
        hidden = [x]
        for layer in self.layers:
            if self.grad_decay != 1.0 and self.training:
                x = _GradMultiply.apply(x, self.grad_decay)
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                hidden.append(x)
                continue
            x = layer(x, padding_mask, pos_bias)
            hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden


# ----------------------------------------------------------------------------------------------------------
# BEATs


class BEATs(nn.Module):
    """BEATs encoder. `extract_features` returns the last layer, all layer outputs and the padding mask."""

    def __init__(self, cfg: BEATsConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(cfg, BEATsConfig):
            cfg = BEATsConfig.from_dict(cfg)
        if cfg.deep_norm and cfg.layer_norm_first:
            raise ModelError("BEATs config: deep_norm and layer_norm_first cannot both be true")
        if cfg.num_mel_bins % cfg.patch_shape[1]:
            raise ModelError(f"BEATs config: num_mel_bins {cfg.num_mel_bins} not a multiple of the patch's "
                             f"{cfg.patch_shape[1]} mel bins")
        self.cfg = cfg
        self.fbank = KaldiFbank(cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms)
        self.embed = cfg.embed_dim
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.input_patch_size = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_shape,
                                         stride=cfg.patch_shape, bias=cfg.conv_bias)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor: nn.Linear | None = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None

    # Tokens are (time patch, freq patch) in time-major order; consumers that want one vector per time
    # step average the `freq_patches` tokens of each step.
    @property
    def freq_patches(self) -> int:
        return self.cfg.num_mel_bins // self.cfg.patch_shape[1]

    @property
    def num_layers(self) -> int:
        return self.cfg.encoder_layers

    @property
    def output_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def min_samples(self) -> int:
        """Shortest input that yields one time patch."""
        fb = self.fbank
        return fb.window_size + (self.input_patch_size - 1) * fb.window_shift

    @staticmethod
    def forward_padding_mask(features: Tensor, padding_mask: Tensor) -> Tensor:
        extra = padding_mask.size(1) % features.size(1)
        if extra > 0:
            padding_mask = padding_mask[:, :-extra]
        return padding_mask.view(padding_mask.size(0), features.size(1), -1).all(-1)

    def preprocess(self, source: Tensor) -> Tensor:
        fbank = self.fbank(source)
        return (fbank - self.cfg.fbank_mean) / (2 * self.cfg.fbank_std)

    def extract_features(self, source: Tensor, padding_mask: Tensor | None = None,
                         return_all_layers: bool = True) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """source (B, T) at cfg.sample_rate -> (x (B, N, D), hidden [(B, N, D)] * (layers + 1), mask (B, N)).

        With `finetuned_model` the first element is the predictor's clip probabilities instead (official)."""
        fbank = self.preprocess(source)
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(fbank, padding_mask)
        features = self.patch_embedding(fbank.unsqueeze(1))
        features = features.reshape(features.shape[0], features.shape[1], -1).transpose(1, 2)
        features = self.layer_norm(features)
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        x, hidden = self.encoder(self.dropout_input(features), padding_mask)
        if self.predictor is not None:
            logits = self.predictor(self.predictor_dropout(x))
            if padding_mask is not None and padding_mask.any():
                keep = (~padding_mask).unsqueeze(-1).to(logits.dtype)
                logits = (logits * keep).sum(1) / keep.sum(1)
            else:
                logits = logits.mean(1)
            x = torch.sigmoid(logits)
        return x, (hidden if return_all_layers else []), padding_mask

    def forward(self, source: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.extract_features(source, padding_mask, return_all_layers=False)[0]


# ----------------------------------------------------------------------------------------------------------
# Official checkpoint layout


def load_beats_state(model: nn.Module, state: Mapping[str, Tensor], origin: str) -> None:
    """Strict load with a one-line ModelError naming the first offending keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelError(f"{origin}: state dict does not match the config: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(f"{origin}: {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def read_beats_checkpoint(path: str | Path) -> tuple[BEATsConfig, dict[str, Tensor]]:
    """Read `{'cfg': dict, 'model': state_dict}` safely (weights_only: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: BEATs checkpoint not found")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # unpickling refusals and corrupt files alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable BEATs checkpoint (weights-only load refused: "
                         f"{first[:160]})") from None
    if not isinstance(ckpt, Mapping) or "cfg" not in ckpt or "model" not in ckpt:
        raise ModelError(f"{path}: expected the official BEATs layout {{'cfg': dict, 'model': state_dict}}")
    cfg, state = ckpt["cfg"], ckpt["model"]
    if not isinstance(cfg, Mapping) or not isinstance(state, Mapping):
        raise ModelError(f"{path}: 'cfg' must be a dict and 'model' a state dict")
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path}: 'model' contains non-tensor entries")
    try:
        config = BEATsConfig.from_dict(cfg)
    except TypeError as exc:
        raise ModelError(f"{path}: bad BEATs cfg: {exc}") from None
    return config, dict(state)


def load_beats_checkpoint(path: str | Path, **overrides: Any) -> BEATs:
    """Build a BEATs model from an official checkpoint. `overrides` replace cfg fields (e.g. dropout=0)."""
    config, state = read_beats_checkpoint(path)
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise ModelError(f"load_beats_checkpoint: unknown config field {k!r}")
        setattr(config, k, v)
    model = BEATs(config)
    load_beats_state(model, state, str(path))
    return model.eval()


def save_beats_checkpoint(model: BEATs, path: str | Path) -> None:
    """Write the official layout (cfg without our front-end extras is still loadable by the official code)."""
    torch.save({"cfg": model.cfg.to_dict(), "model": model.state_dict()}, Path(path))
