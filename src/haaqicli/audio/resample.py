"""Band-limited resampling (a Kaiser-windowed sinc, torchaudio's design), of whole signals or streams
block by block, one filter for training and inference.

The filter bank is built here in float64 (`sinc_kernel`), so resampling needs neither torch nor
torchaudio: the decoding process of `haaqi score` resamples while the main process is still importing
torch. NumPy arrays are filtered with NumPy, tensors with torch (differentiable); both apply the same
float32 filter bank at the same input positions (float32 CPU tensors without gradients take the NumPy
path, so a waveform scores as its file does)."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]

# torchaudio.transforms.Resample(lowpass_filter_width=16, rolloff=0.95, "sinc_interp_kaiser", beta=8.555)
ZERO_CROSSINGS = 16
ROLLOFF = 0.95
KAISER_BETA = 8.555
CHUNK_STEPS = 2048  # output steps (of `new` samples each) per matrix product


@functools.lru_cache(maxsize=16)
def sinc_kernel(orig_sr: int, new_sr: int) -> tuple[np.ndarray, int]:
    """The polyphase filter bank of torchaudio's Kaiser sinc resampler as a (taps, new) float32 matrix,
    and its half-width in input samples (the zero padding at the signal's start).

    Column j holds the taps of output phase j over input samples [-width, width + orig) of its step
    (rates reduced by their gcd). Computed in float64 and rounded once, where torchaudio computes in the
    signal's dtype: within 1e-5 of torchaudio's float32 kernel, the difference being its rounding (tests)."""
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    base = min(orig, new) * ROLLOFF  # the cut-off, below the lower rate's Nyquist
    width = math.ceil(ZERO_CROSSINGS * orig / base)
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new
         + np.arange(-width, width + orig, dtype=np.float64)[None] / orig) * base
    t = np.clip(t, -ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = np.i0(KAISER_BETA * np.sqrt(1.0 - (t / ZERO_CROSSINGS) ** 2)) / np.i0(KAISER_BETA)
    t *= math.pi
    sinc = np.divide(np.sin(t), t, out=np.ones_like(t), where=t != 0)
    kernel = (sinc * window * (base / orig)).astype(np.float32)
    return np.ascontiguousarray(kernel.T), width


def resample(x: ArrayLike, orig_sr: int, new_sr: int) -> ArrayLike:
    """Band-limited sinc resampling along the last axis; returns the input's type.

    Kaiser-windowed sinc with 16 zero crossings: stopband well below -80 dB, passband flat to
    ~0.95 * Nyquist of the lower rate. One function for training and inference keeps them consistent.
    Differentiable for tensors."""
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return x
    if isinstance(x, np.ndarray):
        out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
        return _resample_array(x, orig_sr, new_sr).astype(out_dtype, copy=False)
    # lazy: torch only where this path runs (start-up time)
    import torch

    if x.device.type == "cpu" and x.dtype == torch.float32 and not (x.requires_grad and torch.is_grad_enabled()):
        # the file scorer's arithmetic (NumPy's), so a waveform scores as its file does: the models'
        # level and peak descriptors count samples against thresholds, so even 1e-7 can move a score
        return torch.from_numpy(_resample_array(x.detach().numpy(), orig_sr, new_sr))
    return _resample_tensor(x, orig_sr, new_sr)


def _whole_signal_plan(n_frames: int, orig_sr: int, new_sr: int) -> tuple[np.ndarray, int, int, int]:
    """For a whole signal of ``n_frames``: the filter bank, its zero padding (``width`` on the left,
    ``width + orig`` on the right, torchaudio's), the input step ``orig`` and the number of steps."""
    kernel, width = sinc_kernel(orig_sr, new_sr)
    orig = orig_sr // math.gcd(orig_sr, new_sr)
    return kernel, width, orig, (n_frames + 2 * width + orig - kernel.shape[0]) // orig + 1


def _resample_array(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """`resample` of an array, in float32."""
    kernel, width, orig, steps = _whole_signal_plan(x.shape[-1], orig_sr, new_sr)
    padded = np.pad(np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1]), ((0, 0), (width, width + orig)))
    out = _polyphase_numpy(padded, kernel, orig, steps)[:, : resampled_length(x.shape[-1], orig_sr, new_sr)]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _resample_tensor(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """`resample` of a tensor: torchaudio's padding, kernel and length, filtered by `_polyphase_torch`
    instead of its strided conv1d."""
    # lazy: torch only where this path runs (start-up time)
    import torch

    dtype = x.dtype
    if not x.is_floating_point():
        x = x.float()
    kernel, width, orig, steps = _whole_signal_plan(x.shape[-1], orig_sr, new_sr)
    padded = torch.nn.functional.pad(x.reshape(-1, x.shape[-1]), (width, width + orig))
    out = _polyphase_torch(padded, torch.from_numpy(kernel).to(device=x.device, dtype=x.dtype), orig,
                           steps)[:, : resampled_length(x.shape[-1], orig_sr, new_sr)]
    out = out.reshape(*x.shape[:-1], out.shape[-1])
    return out.to(dtype) if dtype.is_floating_point else out


def _polyphase_torch(x: torch.Tensor, kernel: torch.Tensor, orig: int, steps: int,
                     chunk: int = CHUNK_STEPS) -> torch.Tensor:
    """(channels, n) -> (channels, steps * new): output step s, phase j is x[s*orig : s*orig + taps] . kernel[:, j].

    The sums of torchaudio's strided conv1d, as one matrix product per chunk of steps: measured 2.6x
    faster on CPU, where oneDNN's strided convolution with many one-sample outputs is slow. Chunks bound
    the unfolded copy (taps/orig ~ 1.4x the chunk's input) and keep it in cache."""
    # lazy: torch only where this path runs (start-up time)
    import torch

    taps = kernel.shape[0]
    parts = []
    for first in range(0, steps, chunk):
        n = min(chunk, steps - first)
        frames = x[:, first * orig : (first + n - 1) * orig + taps].unfold(-1, taps, orig)
        parts.append((frames @ kernel).flatten(-2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _polyphase_numpy(x: np.ndarray, kernel: np.ndarray, orig: int, steps: int,
                     chunk: int = CHUNK_STEPS) -> np.ndarray:
    """`_polyphase_torch` for float32 arrays: the same sums, each chunk's frames a strided view of x."""
    channels, taps = x.shape[0], kernel.shape[0]
    out = np.empty((channels, steps * kernel.shape[1]), dtype=np.float32)
    for first in range(0, steps, chunk):
        n = min(chunk, steps - first)
        span = x[:, first * orig : (first + n - 1) * orig + taps]
        frames = np.lib.stride_tricks.as_strided(span, shape=(channels, n, taps),
                                                 strides=(span.strides[0], orig * span.strides[1], span.strides[1]),
                                                 writeable=False)
        np.matmul(frames, kernel, out=out[:, first * kernel.shape[1] : (first + n) * kernel.shape[1]]
                  .reshape(channels, n, kernel.shape[1]))
    return out


def resampled_length(n_frames: int, orig_sr: int, new_sr: int) -> int:
    """Samples that `resample` returns for ``n_frames`` input frames."""
    g = math.gcd(int(orig_sr), int(new_sr))
    return -(-n_frames * (new_sr // g) // (orig_sr // g))


class StreamResampler:
    """`resample` of a signal that arrives block by block: the concatenated outputs equal `resample`
    of the whole signal, with no seams at block boundaries. NumPy only (no torch).

    The polyphase filter is applied at the same input positions as on the whole signal; only the
    input the next outputs still need is kept. The filter runs on a fixed number of output steps at a
    time, so every matrix product has one shape.
    """

    STEPS = CHUNK_STEPS  # output steps (of `new` samples each) per filter call

    def __init__(self, orig_sr: int, new_sr: int, channels: int) -> None:
        g = math.gcd(int(orig_sr), int(new_sr))
        self.orig, self.new = int(orig_sr) // g, int(new_sr) // g
        self.kernel, self.width = sinc_kernel(int(orig_sr), int(new_sr))  # (taps, new), taps = 2 * width + orig
        # the whole signal is zero-padded by `width` on the left, `width + orig` on the right
        self.pending = [np.zeros((channels, self.width), dtype=np.float32)]
        self.n_pending = self.width
        self.frames_in = 0
        self.frames_out = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """Resampled output that `block` (channels, n) completes; possibly empty."""
        self.frames_in += block.shape[1]
        self.pending.append(np.asarray(block, dtype=np.float32))
        self.n_pending += block.shape[1]
        span = (self.STEPS - 1) * self.orig + self.kernel.shape[0]
        if self.n_pending < span:
            return np.zeros((self.pending[0].shape[0], 0), dtype=np.float32)
        return self._run(self.STEPS * ((self.n_pending - span) // (self.STEPS * self.orig) + 1))

    def finish(self) -> np.ndarray:
        """The rest of the output; the total has `resampled_length` samples."""
        self.pending.append(np.zeros((self.pending[0].shape[0], self.width + self.orig), dtype=np.float32))
        self.n_pending += self.width + self.orig
        remaining = resampled_length(self.frames_in, self.orig, self.new) - self.frames_out
        steps = (self.n_pending - self.kernel.shape[0]) // self.orig + 1
        return self._run(steps)[:, : max(0, remaining)]

    def _run(self, steps: int) -> np.ndarray:
        """Output of the next `steps` filter positions (a multiple of STEPS, except at the end)."""
        x = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        out = _polyphase_numpy(x, self.kernel, self.orig, steps, self.STEPS)
        self.pending = [x[:, steps * self.orig :].copy()]
        self.n_pending = self.pending[0].shape[1]
        self.frames_out += out.shape[1]
        return out
