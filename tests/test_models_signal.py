"""haaqicli.models.signal: descriptors that move the way each damage should move them, and a corrector
that leaves a model unchanged until it is fitted."""

from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_student_config
from synth import chord

from haaqicli.models.registry import build_model
from haaqicli.models.signal import N_SIGNAL_FEATURES, SIGNAL_BANDS, ScoreCorrector, SignalFeatures

SR = 24000
DYNAMIC = slice(SIGNAL_BANDS, 2 * SIGNAL_BANDS)
DECAY = slice(3 * SIGNAL_BANDS, 4 * SIGNAL_BANDS)
PEAK_99, CREST, FLAT_MEDIAN = 4 * SIGNAL_BANDS, 4 * SIGNAL_BANDS + 2, 4 * SIGNAL_BANDS + 4


def _notes(seconds: float = 3.0) -> np.ndarray:
    """Chords that stop dead every 250 ms: a signal with clear offsets and gaps."""
    x = chord(220.0, sr=SR, seconds=seconds, amplitude=0.3)[0]
    gate = (np.arange(len(x)) // (SR // 8)) % 2 == 0
    return (x * gate).astype(np.float32)


def _features(*waves: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return SignalFeatures(SR)(torch.from_numpy(np.stack(waves)))


def test_descriptors_move_with_reverb_clipping_and_noise() -> None:
    dry = _notes()
    rng = np.random.default_rng(0)
    tail = rng.standard_normal(SR) * np.exp(-np.arange(SR) / (0.15 * SR))  # RT60 ~ 1 s
    wet = np.convolve(dry, tail)[: len(dry)].astype(np.float32)
    wet *= np.sqrt(np.mean(dry**2) / np.mean(wet**2))
    clipped = np.clip(dry, -0.1, 0.1).astype(np.float32)
    noisy = (dry + 0.05 * rng.standard_normal(len(dry))).astype(np.float32)
    f = _features(dry, wet, clipped, noisy)
    assert f.shape == (4, N_SIGNAL_FEATURES) and torch.isfinite(f).all()
    # reverberation fills the gaps and slows the decays
    assert f[1, DYNAMIC].mean() < f[0, DYNAMIC].mean() - 10
    assert f[1, DECAY].mean() > f[0, DECAY].mean() + 3
    # clipping puts many samples on the peak and lowers the crest factor
    assert f[2, PEAK_99] > 0.05 > f[0, PEAK_99]
    assert f[2, CREST] < f[0, CREST] - 3
    # noise whitens the spectrum
    assert f[3, FLAT_MEDIAN] > f[0, FLAT_MEDIAN]


def test_descriptors_are_per_window_and_batch_independent() -> None:
    a, b = _notes(), _notes()[::-1].copy()
    together = _features(a, b)
    torch.testing.assert_close(together[1], _features(b)[0], rtol=1e-5, atol=1e-5)


def test_a_fresh_corrector_leaves_the_model_unchanged_and_a_fitted_one_moves_it() -> None:
    torch.manual_seed(0)
    config = tiny_student_config()
    base = build_model("haaqinet-student", config).eval()
    config["head"]["signal_corrector"] = 8
    corrected = build_model("haaqinet-student", config).eval()
    result = corrected.load_state_dict(base.state_dict(), strict=False)
    assert result.missing_keys and all(k.startswith("head.corrector.") for k in result.missing_keys)
    wave = torch.from_numpy(np.stack([_notes(), np.clip(_notes(), -0.1, 0.1)]))
    grams = torch.tensor([[0.0] * 8, [40.0] * 8])
    with torch.inference_mode():
        torch.testing.assert_close(corrected(wave, grams).clip, base(wave, grams).clip)
        features = corrected.encode(wave)
        assert features[-1].shape == (2, N_SIGNAL_FEATURES)
    with torch.no_grad():
        torch.nn.init.normal_(corrected.head.corrector.net[-1].weight)
    with torch.inference_mode():
        out = corrected(wave, grams)
        assert not torch.allclose(out.clip, base(wave, grams).clip)
        # the clip's change of logit applies to every frame
        change = out.clip_logit - base(wave, grams).clip_logit
        torch.testing.assert_close(out.frame_logits - base(wave, grams).frame_logits,
                                   change[:, None].expand_as(out.frame_logits), rtol=1e-4, atol=1e-4)


def test_corrector_statistics_standardise_its_inputs() -> None:
    corrector = ScoreCorrector(n_features=3, hidden=4)
    features = torch.tensor([[1.0, 10.0, -5.0], [3.0, 30.0, -5.0]])
    corrector.set_statistics(features)
    torch.testing.assert_close(corrector.feature_mean, torch.tensor([2.0, 20.0, -5.0]))
    assert corrector.feature_std[2] > 0  # a constant descriptor never divides by zero
    assert set(corrector.state_dict()) >= {"feature_mean", "feature_std"}  # shipped with the weights


def test_peak_shares_equal_the_plain_per_sample_count() -> None:
    from haaqicli.models.signal import PEAK_SHARES, peak_shares

    rng = np.random.default_rng(1)
    noise = rng.standard_normal((3, 5000)).astype(np.float32)
    cases = [noise, np.clip(noise, -0.5, 0.5), np.zeros((2, 5000), np.float32), noise[:, :700],
             noise[:, :4096], -np.abs(noise)]  # a tail, clipping, silence, under one block, whole blocks, negatives
    for case in cases:
        x = torch.from_numpy(np.ascontiguousarray(case))
        peak, shares = peak_shares(x)
        plain_peak = x.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        assert torch.equal(peak, plain_peak.squeeze(-1))
        for share, got in zip(PEAK_SHARES, shares, strict=True):
            plain = (x.abs() >= share * plain_peak).sum(-1, dtype=torch.int32) / x.shape[-1]
            assert torch.equal(got, plain)
    # the clipped rows put many samples on the peak: the test sees that case, not only the sparse one
    assert (peak_shares(torch.from_numpy(cases[1]))[1][0] > 0.3).all()
