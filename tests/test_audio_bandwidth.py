"""haaqicli.audio.bandwidth: where a signal's content ends, and its named bins."""

from __future__ import annotations

import numpy as np
import pytest

from haaqicli.audio import synth
from haaqicli.audio.bandwidth import BANDWIDTH_GROUPS, bandwidth_group, content_bandwidth

SR = 24000


@pytest.mark.parametrize("cutoff", [3000.0, 6000.0, 9000.0])
def test_bandwidth_follows_a_lowpass_of_white_noise(cutoff: float) -> None:
    """White noise low-passed at `cutoff` (brick-wall): the -50 dB point lies within a few bins of it (the Hann
    window's leakage), while the unfiltered noise reaches the top of the band."""
    noise = np.random.default_rng(0).standard_normal(SR * 4) * 0.1
    filtered = synth.lowpass(noise, SR, cutoff)
    measured = content_bandwidth(np.stack([filtered, noise]), SR)
    assert cutoff <= measured[0] <= cutoff + 4 * SR / 2048
    assert measured[1] >= 0.98 * SR / 2


def test_bandwidth_of_a_tone_silence_and_a_short_row() -> None:
    tone = 0.1 * np.sin(2 * np.pi * 1000.0 * np.arange(SR) / SR)
    assert 1000.0 <= content_bandwidth(tone, SR)[0] < 1200.0  # one row for a 1-D input
    assert np.isnan(content_bandwidth(np.zeros(SR), SR)[0])
    assert content_bandwidth(tone[:500], SR).shape == (1,)  # shorter than a frame: padded, measured


def test_bandwidth_groups_are_ordered_bins() -> None:
    assert [bandwidth_group(hz) for hz in (500.0, 8000.0, 10999.0, 11000.0, 12000.0, float("nan"))] == [
        "< 8 kHz", "8-10 kHz", "10-11 kHz", ">= 11 kHz", ">= 11 kHz", "unknown"]
    assert BANDWIDTH_GROUPS[0] == "< 8 kHz" and BANDWIDTH_GROUPS[-1] == "unknown"
