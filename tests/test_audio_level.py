"""haaqicli.audio.level: metering and the one calibration (engine gain, HAAQIPredictor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synth import chord, tone

from haaqicli import audio
from haaqicli.audio import (
    ArraySource,
    channel_rms,
    presentation_gain,
)
from haaqicli.util.constants import REFERENCE_RMS
from haaqicli.util.errors import AudioError


def test_channel_rms_and_presentation_gain() -> None:
    x = tone(sr=8000, seconds=1.0, amplitude=0.2, channels=2)  # channel 1 is 0.8x channel 0
    rms = channel_rms(ArraySource(x, 8000))
    np.testing.assert_allclose(rms, [0.2 / np.sqrt(2), 0.16 / np.sqrt(2)], rtol=1e-3)
    overall = audio.overall_rms(rms)
    assert overall == pytest.approx(np.sqrt(np.mean(x.astype(np.float64) ** 2)), rel=1e-6)
    assert presentation_gain(REFERENCE_RMS, 65.0) == pytest.approx(1.0)
    assert presentation_gain(0.05, 65.0) == pytest.approx(2.0)
    assert presentation_gain(0.1, 85.0) == pytest.approx(10.0)
    gain = presentation_gain(overall, 70.0)
    scaled = x * gain
    assert 20 * np.log10(audio.overall_rms(channel_rms(scaled)) / REFERENCE_RMS) + 65 == pytest.approx(70.0)
    with pytest.raises(AudioError, match="silent"):
        presentation_gain(0.0, 65.0)


def test_the_api_calibrates_as_the_engine_does() -> None:
    """HAAQIPredictor's differentiable level and the engine's gain are one definition (target_rms)."""
    from haaqicli.api import HAAQIPredictor

    class Identity(torch.nn.Module):
        sample_rate = 16000

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    x = torch.from_numpy(0.05 * chord(sr=16000, seconds=2.0, channels=1)[0]).float()
    calibrated, _ = HAAQIPredictor(Identity()).prepare(x, torch.zeros(8), 16000, spl=72.0)
    gain = audio.presentation_gain(float(x.double().pow(2).mean().sqrt()), 72.0)
    np.testing.assert_allclose(calibrated[0].numpy(), x.numpy() * gain, rtol=1e-5)
