"""musicnn (Pons & Serra 2019) in torch: a frozen music-content prior beside our own front end.

A faithful port of the musicnn package's `build_musicnn` (musicnn 0.1.0, `models.py`, ISC licence,
Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019): the MSD_musicnn and
MTT_musicnn checkpoints, converted once by `scripts/convert-musicnn.py` (make musicnn), load here.

- Input (`MusicnnMel`): 16 kHz mono, librosa's `melspectrogram` (n_fft 512, hop 256, Hann, centred
  frames with reflect padding as the librosa of 2019 did, 96 Slaney mel bands, power 2), rounded to
  float16 as musicnn's extractor does, then log10(10000 x + 1); 187-frame (3-s) patches.
- Front end: batch norm; "timbral" convs 7 x (0.4, 0.7) of the mel bands and "temporal" convs
  128/64/32 x 1 (TF "same" padding), each ReLU -> batch norm -> max over frequency.
- Mid end: three 7-frame convs over the front end's 561 features (the last two residual);
  dense connection: [front end, mid 1, mid 2, mid 3] (753 features per frame).
- Back end: max and mean over time, interleaved per feature as TF's flatten of (753, 2) gives them,
  batch norm, dense 200 + ReLU + batch norm (the "penultimate" embedding), dense to the tags.

`MusicnnPrior` wraps it for the HAAQI head: the model's wave (at its own rate) is resampled to 16 kHz
with the project's one resampler, cut into 3-s patches, and each model frame gets the penultimate
embedding of the patch its centre falls in. Frozen: no gradients for its weights, always in inference
mode (batch norm on its stored statistics), whatever mode the model around it is in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.audio.resample import resample
from haaqicli.util.atomic import atomic_write
from haaqicli.util.errors import ModelError
from haaqicli.util.hashing import content_hash

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s) + 1, as musicnn's extractor computes it
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default
TEMPORAL_KERNELS = (128, 64, 32)

# sha256 of `scripts/convert-musicnn.py`'s output from the musicnn 0.1.0 wheel (the conversion is
# deterministic); the loader refuses any other file under these names unless told its sha256.
CONVERTED_SHA256: dict[str, str] = {
    "MSD_musicnn": "7f81f4b6bf5967bbc5ee7650f646d9cf61353a8a05116eff2437de3c1605ba27",
    "MTT_musicnn": "27c49acf470509a0c8dc728e53ca09f39efcafdb5e5b1e3785c603471739cfa5",
}


@dataclass
class MusicnnConfig:
    """The architecture of a musicnn checkpoint (defaults: MSD_musicnn / MTT_musicnn)."""

    n_mels: int = 96
    timbral_filters: int = 204  # int(1.6 * 128)
    temporal_filters: int = 51  # int(1.6 * 32)
    midend_filters: int = 64
    backend_units: int = 200
    classes: int = 50

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> MusicnnConfig:
        unknown = set(cfg) - {f.name for f in fields(cls)}
        if unknown:
            raise ModelError(f"musicnn config: unknown fields {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in cfg.items()})

    @property
    def timbral_kernels(self) -> tuple[int, int]:
        return int(0.4 * self.n_mels), int(0.7 * self.n_mels)

    @property
    def frontend_dim(self) -> int:
        return 2 * self.timbral_filters + len(TEMPORAL_KERNELS) * self.temporal_filters

    @property
    def midend_dim(self) -> int:
        return self.frontend_dim + 3 * self.midend_filters


class MusicnnMel(nn.Module):
    """wave (B, T) at 16 kHz -> musicnn's log-compressed mel (B, frames, n_mels), frames = 1 + T // 256."""

    def __init__(self, n_mels: int = 96) -> None:
        super().__init__()
        # lazy: torchaudio only where this path runs (start-up time)
        from torchaudio.functional import melscale_fbanks

        banks = melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney",
                                mel_scale="slaney")
        # Non-persistent: derived, never part of the weights.
        self.register_buffer("banks", banks.float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)

    def power_mel(self, wave: Tensor) -> Tensor:
        """librosa.feature.melspectrogram(y, sr=16000, n_fft=512, hop_length=256, n_mels=96,
        pad_mode="reflect").T, batched: (B, frames, n_mels)."""
        spec = torch.stft(wave.float(), N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        return (spec.real.square() + spec.imag.square()).transpose(1, 2) @ self.banks

    def forward(self, wave: Tensor) -> Tensor:
        # musicnn's extractor stores the mel as float16 before the log: rounding kept for faithfulness.
        return torch.log10(10000.0 * self.power_mel(wave).half().float() + 1.0)


def _bn(n: int, dims: int) -> nn.Module:
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(n, eps=BN_EPS)


def _bn_relu_max(z: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """max over frequency of bn(relu(z)) for z (B, C, T, F), in inference, without the two passes
    over the large map: batch norm is a per-channel affine map and relu is monotone, so the maximum
    is bn(relu(max z)) where the channel's scale is >= 0 and bn(relu(min z)) where it is negative."""
    if bn.training:
        return bn(F.relu(z)).amax(dim=3)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    extreme = torch.where((scale >= 0).view(1, -1, 1), z.amax(dim=3), z.amin(dim=3))
    return F.batch_norm(F.relu(extreme), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class MusiCNN(nn.Module):
    """The musicnn network: mel patches (B, frames, n_mels) -> (logits (B, classes), features)."""

    def __init__(self, cfg: MusicnnConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = cfg if isinstance(cfg, MusicnnConfig) else MusicnnConfig.from_dict(cfg or {})
        self.cfg = cfg
        self.input_bn = _bn(1, 2)
        self.timbral = nn.ModuleList([nn.Conv2d(1, cfg.timbral_filters, (7, k)) for k in cfg.timbral_kernels])
        self.timbral_bn = nn.ModuleList([_bn(cfg.timbral_filters, 2) for _ in cfg.timbral_kernels])
        self.temporal = nn.ModuleList([nn.Conv2d(1, cfg.temporal_filters, (k, 1)) for k in TEMPORAL_KERNELS])
        self.temporal_bn = nn.ModuleList([_bn(cfg.temporal_filters, 2) for _ in TEMPORAL_KERNELS])
        m = cfg.midend_filters
        self.midend = nn.ModuleList([nn.Conv1d(cfg.frontend_dim, m, 7, padding=3), nn.Conv1d(m, m, 7, padding=3),
                                     nn.Conv1d(m, m, 7, padding=3)])
        self.midend_bn = nn.ModuleList([_bn(m, 1) for _ in range(3)])
        self.pool_bn = _bn(2 * cfg.midend_dim, 1)
        self.dense = nn.Linear(2 * cfg.midend_dim, cfg.backend_units)
        self.dense_bn = _bn(cfg.backend_units, 1)
        self.classifier = nn.Linear(cfg.backend_units, cfg.classes)

    def frontend(self, mel: Tensor) -> Tensor:
        """(B, T, n_mels) -> (B, frontend_dim, T): timbral then temporal features per frame."""
        x = self.input_bn(mel.unsqueeze(1))  # (B, 1, T, n_mels)
        out = []
        padded = F.pad(x, (0, 0, 3, 3))  # time only: "valid" in frequency, then max over it
        for conv, bn in zip(self.timbral, self.timbral_bn, strict=True):
            out.append(_bn_relu_max(conv(padded), bn))
        for conv, bn, k in zip(self.temporal, self.temporal_bn, TEMPORAL_KERNELS, strict=True):
            # TF "same" for an even kernel: (k - 1) // 2 frames before, the rest after
            same = F.pad(x, (0, 0, (k - 1) // 2, k // 2))
            out.append(_bn_relu_max(conv(same), bn))
        return torch.cat(out, dim=1)

    def midend_features(self, mel: Tensor) -> Tensor:
        """(B, T, n_mels) -> the dense-connected features (B, midend_dim, T)."""
        front = self.frontend(mel)
        h1 = self.midend_bn[0](F.relu(self.midend[0](front)))
        h2 = self.midend_bn[1](F.relu(self.midend[1](h1))) + h1
        h3 = self.midend_bn[2](F.relu(self.midend[2](h2))) + h2
        return torch.cat([front, h1, h2, h3], dim=1)

    def forward(self, mel: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """mel patches (B, T, n_mels) -> tag logits (B, classes) and {"penultimate", "max_pool",
        "mean_pool"} as musicnn's extractor names them (sigmoid of the logits: its taggram)."""
        features = self.midend_features(mel)
        max_pool, mean_pool = features.amax(dim=2), features.mean(dim=2)
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # TF: flatten of (features, 2)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.classifier(penultimate), {"penultimate": penultimate, "max_pool": max_pool,
                                              "mean_pool": mean_pool}


# ----------------------------------------------------------------------------------------------
# Checkpoint conversion: TF variable names (graph creation order in build_musicnn) -> this module


def tf_variable_map() -> dict[str, tuple[str, str]]:
    """torch state-dict prefix -> (TF layer name, kind) for every layer of `build_musicnn`, in the order
    TF created (and numbered) them: input BN, timbral 7x(0.4, 0.7), temporal 128/64/32, three mid-end
    convs, the pooled BN, dense, its BN, the output dense."""
    convs = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2", "midend.0", "midend.1",
             "midend.2"]
    bns = ["input_bn", "timbral_bn.0", "timbral_bn.1", "temporal_bn.0", "temporal_bn.1", "temporal_bn.2",
           "midend_bn.0", "midend_bn.1", "midend_bn.2", "pool_bn", "dense_bn"]
    mapping = {name: (f"conv2d{'_' + str(i) if i else ''}", "conv") for i, name in enumerate(convs)}
    mapping.update({name: (f"batch_normalization{'_' + str(i) if i else ''}", "bn") for i, name in enumerate(bns)})
    mapping.update({"dense": ("dense", "dense"), "classifier": ("dense_1", "dense")})
    return mapping


def state_from_tf(tensors: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """The MusiCNN state dict from a musicnn TF checkpoint's tensors (optimiser slots ignored)."""
    out: dict[str, Tensor] = {}

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise ModelError(f"musicnn checkpoint: no tensor {name!r} (not a musicnn model?)")
        return np.asarray(tensors[name], dtype=np.float32)

    for prefix, (tf_name, kind) in tf_variable_map().items():
        if kind == "bn":
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                out[f"{prefix}.{ours}"] = torch.from_numpy(get(f"{tf_name}/{theirs}"))
            out[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
            continue
        kernel, bias = get(f"{tf_name}/kernel"), get(f"{tf_name}/bias")
        if kind == "dense":  # (in, out) -> (out, in)
            weight = kernel.T
        elif prefix.startswith("midend"):  # (7, in, 1, out) over a (time, features, 1) map -> Conv1d (out, in, 7)
            weight = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:  # HWIO -> OIHW
            weight = kernel.transpose(3, 2, 0, 1)
        out[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        out[f"{prefix}.bias"] = torch.from_numpy(bias)
    return out


def config_from_tf(tensors: Mapping[str, np.ndarray]) -> MusicnnConfig:
    """The architecture a musicnn checkpoint's tensor shapes describe."""
    try:
        return MusicnnConfig(
            n_mels=_n_mels(tensors),
            timbral_filters=int(tensors["conv2d/kernel"].shape[3]),
            temporal_filters=int(tensors["conv2d_2/kernel"].shape[3]),
            midend_filters=int(tensors["conv2d_5/kernel"].shape[3]),
            backend_units=int(tensors["dense/kernel"].shape[1]),
            classes=int(tensors["dense_1/kernel"].shape[1]))
    except KeyError as missing:
        raise ModelError(f"musicnn checkpoint: no tensor {missing} (not a musicnn model?)") from None


def _n_mels(tensors: Mapping[str, np.ndarray]) -> int:
    """The mel band count whose int(0.4 n) and int(0.7 n) are the timbral kernels' widths."""
    k4, k7 = int(tensors["conv2d/kernel"].shape[1]), int(tensors["conv2d_1/kernel"].shape[1])
    for n in range(1, 4096):
        if int(0.4 * n) == k4 and int(0.7 * n) == k7:
            return n
    raise ModelError(f"musicnn checkpoint: timbral kernels {k4}, {k7} fit no mel band count")


# ----------------------------------------------------------------------------------------------
# Converted weights (safetensors with the config in its metadata)


def save_converted(state: Mapping[str, Tensor], cfg: MusicnnConfig, path: str | Path, source: str) -> str:
    """Write converted weights (deterministically: same tensors, same bytes); returns their sha256."""
    # lazy: safetensors only where this path runs (start-up time)
    from safetensors.torch import save

    # One metadata key: safetensors writes its metadata map in no fixed order, so several keys would
    # make the bytes (and the sha256) differ from run to run.
    meta = json.dumps({"arch": "musicnn", "config": asdict(cfg), "source": source}, sort_keys=True)
    blob = save({k: v.contiguous() for k, v in sorted(state.items())}, metadata={"musicnn": meta})
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(blob), durable=True)
    return hashlib.sha256(blob).hexdigest()


def load_converted(path: str | Path, sha256: str | None = None) -> tuple[MusicnnConfig, dict[str, Tensor]]:
    """Config and state of converted musicnn weights, after checking the file's sha256: `sha256` if
    given, else the pinned sha256 of the file's name (CONVERTED_SHA256); a file with neither is refused."""
    # lazy: safetensors only where this path runs (start-up time)
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: musicnn weights missing (make musicnn converts them from the musicnn wheel)")
    expected = sha256 or CONVERTED_SHA256.get(path.stem)
    if not expected:
        raise ModelError(f"{path}: no known sha256 for these musicnn weights (pass the expected sha256)")
    actual = content_hash(path)
    if actual != expected.lower():
        raise ModelError(f"{path}: sha256 mismatch (expected {expected[:12]}..., file {actual[:12]}...); "
                         "not the converted musicnn weights")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable safetensors file ({exc})") from None
    try:
        info = json.loads(meta["musicnn"])
        cfg = MusicnnConfig.from_dict(info["config"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path}: not converted musicnn weights (no musicnn config in its metadata)") from None
    return cfg, state


# ----------------------------------------------------------------------------------------------
# The content prior of the HAAQI head


class MusicnnPrior(nn.Module):
    """wave (B, T) at the model's rate -> musicnn penultimate embeddings (B, frames, backend_units),
    one per model frame (that of the 3-s patch holding the frame's centre)."""

    def __init__(self, sample_rate: int, cfg: MusicnnConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.net = MusiCNN(cfg)
        self.mel = MusicnnMel(self.net.cfg.n_mels)
        self.requires_grad_(False)
        super().train(False)

    @property
    def dim(self) -> int:
        return self.net.cfg.backend_units

    def train(self, mode: bool = True) -> MusicnnPrior:
        return self  # frozen: batch norm keeps its stored statistics in every mode

    def load_converted(self, path: str | Path, sha256: str | None = None) -> None:
        """Load converted weights (sha256-checked) whose config is this prior's."""
        cfg, state = load_converted(path, sha256)
        if cfg != self.net.cfg:
            raise ModelError(f"{path}: musicnn config {asdict(cfg)} is not this model's {asdict(self.net.cfg)}")
        self.net.load_state_dict(state, strict=True)

    def patches(self, wave: Tensor) -> Tensor:
        """16-kHz log mel of the wave in non-overlapping 187-frame patches (B, P, 187, n_mels); a
        wave shorter than one patch is repeat-padded, as musicnn's training did ("repeat-pad")."""
        mel = self.mel(resample(wave.float(), self.sample_rate, SAMPLE_RATE))
        if mel.shape[1] < PATCH_FRAMES:
            mel = mel.repeat(1, math.ceil(PATCH_FRAMES / mel.shape[1]), 1)
        count = mel.shape[1] // PATCH_FRAMES
        return mel[:, : count * PATCH_FRAMES].reshape(len(mel), count, PATCH_FRAMES, mel.shape[2])

    def forward(self, wave: Tensor, frames: int) -> Tensor:
        # No torch.no_grad: its weights need no gradients, but a waveform that asks for them (the API's
        # differentiable loss) gets them through the prior too.
        patches = self.patches(wave)
        b, p = patches.shape[:2]
        _, features = self.net(patches.flatten(0, 1))
        embedding = features["penultimate"].reshape(b, p, -1)
        # Frame f's centre, in seconds of the input, falls in patch floor(t / patch length).
        seconds = wave.shape[-1] / self.sample_rate
        centres = (torch.arange(frames, device=wave.device, dtype=torch.float64) + 0.5) * (seconds / max(frames, 1))
        index = (centres / (PATCH_FRAMES * HOP / SAMPLE_RATE)).floor().long().clamp(0, p - 1)
        return embedding.index_select(1, index)
