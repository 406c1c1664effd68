"""Band-limited resampling (torchaudio's Kaiser sinc), of whole signals or streams block by block,
one filter for training and inference. Torch is imported on first use, so listing profiles stays fast."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]


def resample(x: ArrayLike, orig_sr: int, new_sr: int) -> ArrayLike:
    """Band-limited sinc resampling along the last axis (torchaudio); returns the input's type.

    Kaiser-windowed sinc with 16 zero crossings: stopband well below -80 dB, passband flat to
    ~0.95 * Nyquist of the lower rate. One function for training and inference keeps them consistent.
    Differentiable for tensors. The filter bank is built once per (rates, dtype, device) and reused.
    """
    # lazy: torch only where this path runs (start-up time)
    import torch

    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return x
    is_numpy = isinstance(x, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(x)) if is_numpy else x
    dtype = tensor.dtype
    if not tensor.is_floating_point():
        tensor = tensor.float()
    out = _resample_tensor(tensor, orig_sr, new_sr)
    if is_numpy:
        return out.numpy().astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32, copy=False)
    return out.to(dtype) if dtype.is_floating_point else out


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int, dtype: torch.dtype, device: str) -> torch.nn.Module:
    # lazy: torchaudio only where this path runs (start-up time)
    import torchaudio.transforms as tat

    return tat.Resample(orig_sr, new_sr, lowpass_filter_width=16, rolloff=0.95,
                        resampling_method="sinc_interp_kaiser", beta=8.555, dtype=dtype).to(device)


def _resample_tensor(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """torchaudio's `_apply_sinc_resample_kernel` (same padding, kernel and length), filtered by
    `_polyphase` instead of its strided conv1d."""
    # lazy: torch only where this path runs (start-up time)
    import torch

    module = _resampler(orig_sr, new_sr, x.dtype, str(x.device))
    g = math.gcd(orig_sr, new_sr)
    orig = orig_sr // g
    flat = torch.nn.functional.pad(x.reshape(-1, x.shape[-1]), (module.width, module.width + orig))
    steps = (flat.shape[-1] - module.kernel.shape[-1]) // orig + 1
    out = _polyphase(flat, _kernel_matrix(module), orig, steps)[:, : resampled_length(x.shape[-1], orig_sr, new_sr)]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _kernel_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The filter bank (new, 1, taps) as a (taps, new) matrix for `_polyphase`."""
    return module.kernel[:, 0, :].T


def _polyphase(x: torch.Tensor, kernel: torch.Tensor, orig: int, steps: int, chunk: int = 2048) -> torch.Tensor:
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


def resampled_length(n_frames: int, orig_sr: int, new_sr: int) -> int:
    """Samples that `resample` returns for ``n_frames`` input frames."""
    g = math.gcd(int(orig_sr), int(new_sr))
    return -(-n_frames * (new_sr // g) // (orig_sr // g))


class StreamResampler:
    """`resample` of a signal that arrives block by block: the concatenated outputs equal `resample`
    of the whole signal, with no seams at block boundaries.

    The polyphase filter (torchaudio's kernel, width and padding) is applied at the same input
    positions as on the whole signal; only the input the next outputs still need is kept. The
    filter runs on a fixed number of output steps at a time, so every matrix product has one shape.
    """

    STEPS = 2048  # output steps (of `new` samples each) per filter call

    def __init__(self, orig_sr: int, new_sr: int, channels: int) -> None:
        # lazy: torch only where this path runs (start-up time)
        import torch

        module = _resampler(int(orig_sr), int(new_sr), torch.float32, "cpu")
        g = math.gcd(int(orig_sr), int(new_sr))
        self.orig, self.new = int(orig_sr) // g, int(new_sr) // g
        self.width: int = module.width
        self.kernel: torch.Tensor = _kernel_matrix(module)  # (taps, new), taps = 2 * width + orig
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
        # lazy: torch only where this path runs (start-up time)
        import torch

        x = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        with torch.inference_mode():
            out = _polyphase(torch.from_numpy(x), self.kernel, self.orig, steps, self.STEPS).numpy()
        self.pending = [x[:, steps * self.orig :].copy()]
        self.n_pending = self.pending[0].shape[1]
        self.frames_out += out.shape[1]
        return out
