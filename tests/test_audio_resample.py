"""haaqicli.audio.resample: the sinc filter on whole signals and on streams block by block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synth import tone

from haaqicli.audio import (
    StreamResampler,
    resample,
    resampled_length,
)


@pytest.mark.parametrize("orig,new", [(44100, 24000), (8000, 24000), (192000, 24000)])
def test_resample_tone_accuracy_numpy_and_torch(orig: int, new: int) -> None:
    x = tone(1000, sr=orig, seconds=0.5, amplitude=0.5)
    y = resample(x, orig, new)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == (1, int(round(0.5 * new)))
    expected = tone(1000, sr=new, seconds=0.5, amplitude=0.5)
    middle = slice(new // 20, -new // 20)  # ignore edge transients
    err = y[:, middle] - expected[:, middle]
    snr = 10 * np.log10(np.sum(expected[:, middle] ** 2) / np.sum(err**2))
    assert snr > 60
    t = resample(torch.from_numpy(x).double(), orig, new)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), y, atol=1e-5)


def test_resample_removes_content_above_new_nyquist() -> None:
    x = tone(15000, sr=48000, seconds=0.5, amplitude=0.5)  # above 12 kHz Nyquist at 24 kHz
    y = resample(x, 48000, 24000)
    assert np.sqrt(np.mean(y[:, 1000:-1000] ** 2)) < 1e-3
    assert resample(x, 48000, 48000) is x


@pytest.mark.parametrize("orig,new,block", [(44100, 24000, 65536), (48000, 24000, 777), (8000, 24000, 1000),
                                           (22050, 24000, 3), (44100, 24000, 10**6)])
def test_stream_resampler_equals_resampling_the_whole_signal(orig: int, new: int, block: int) -> None:
    x = np.random.default_rng(orig + block).normal(size=(2, 3 * orig + 17)).astype(np.float32)
    stream = StreamResampler(orig, new, channels=2)
    parts = [stream.push(x[:, i : i + block]) for i in range(0, x.shape[1], block)] + [stream.finish()]
    y = np.concatenate(parts, axis=1)
    whole = resample(x, orig, new)
    assert y.shape == whole.shape == (2, resampled_length(x.shape[1], orig, new))
    np.testing.assert_allclose(y, whole, atol=1e-6)  # no seams at block boundaries


def test_stream_resampler_short_input() -> None:
    x = np.ones((1, 5), np.float32)
    stream = StreamResampler(44100, 24000, channels=1)
    y = np.concatenate([stream.push(x), stream.finish()], axis=1)
    np.testing.assert_allclose(y, resample(x, 44100, 24000), atol=1e-6)


@pytest.mark.parametrize("orig,new", [(44100, 24000), (48000, 24000), (22050, 24000), (8000, 24000)])
def test_filter_bank_is_torchaudio_s_kaiser_sinc(orig: int, new: int) -> None:
    """`sinc_kernel` (NumPy, float64, rounded once) against torchaudio's own bank (float32 arithmetic)."""
    import torchaudio.transforms as tat

    from haaqicli.audio.resample import sinc_kernel

    kernel, width = sinc_kernel(orig, new)
    theirs = tat.Resample(orig, new, lowpass_filter_width=16, rolloff=0.95, resampling_method="sinc_interp_kaiser",
                          beta=8.555, dtype=torch.float32)
    assert width == theirs.width and kernel.dtype == np.float32
    np.testing.assert_allclose(kernel, theirs.kernel[:, 0, :].T.numpy(), atol=1e-5)  # their float32 rounding


def test_resampling_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom haaqicli.audio import StreamResampler, resample\n"
            "s = StreamResampler(44100, 24000, 2); s.push(np.zeros((2, 99999), np.float32)); s.finish()\n"
            "resample(np.zeros((1, 4410), np.float32), 44100, 24000)\nprint('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
