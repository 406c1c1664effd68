"""HAAQIPredictor: differentiable end to end, resampling, level handling, windowing, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from haaqicli.api import HAAQIPredictor, haaqi_loss
from haaqicli.models.registry import ModelInfo, save_model
from haaqicli.models.student import StudentNet
from haaqicli.util.errors import ModelError

S_ENC = dict(conv_channels=[8, 16], encoder_layers=2, encoder_embed_dim=24, encoder_ffn_embed_dim=48,
             encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4)
HEAD = dict(d_adapter=24, d_audiogram=8, lstm_hidden=16, attn_heads=2, dropout=0.1)


@pytest.fixture()
def predictor(tmp_path) -> HAAQIPredictor:
    torch.manual_seed(0)
    model = StudentNet(S_ENC, HEAD, {"teacher_dim": 32, "targets": [[1, 1]]})
    with torch.no_grad():  # a non-trivial pooling so window weighting is exercised
        model.head.pool_proj.weight.normal_()
    save_model(model, ModelInfo(name="distilled", arch="", config={}, file="distilled.safetensors"), tmp_path)
    return HAAQIPredictor.from_pretrained("distilled", weights_dir=tmp_path)


def _chord(seconds: float, sr: int, batch: int = 2) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([0.1 * sum(torch.sin(2 * math.pi * f * (b + 1) * t) for f in (262, 330, 392))
                        for b in range(batch)]).float()


def test_gradients_reach_the_waveform(predictor) -> None:
    x = _chord(1.0, 44100).requires_grad_(True)
    ag = torch.tensor([[20.0] * 8, [60.0] * 8])
    loss = haaqi_loss(x, ag, 44100, predictor=predictor, spl=70.0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in predictor.parameters())


def test_eval_mode_and_deterministic(predictor) -> None:
    assert not predictor.training and not predictor.model.training
    x, ag = _chord(2.0, 16000), torch.full((8,), 35.0)
    a = predictor(x, ag, 16000)
    b = predictor(x, ag, 16000)
    assert a.shape == (2,) and torch.equal(a, b) and ((a > 0) & (a < 1)).all()
    single = predictor(x[0], ag, 16000)
    torch.testing.assert_close(single, a[:1])


def test_level_normalisation(predictor) -> None:
    x, ag = _chord(1.0, 24000), torch.zeros(2, 8)
    # With spl given, the input level does not matter (it is renormalised); without, it does.
    torch.testing.assert_close(predictor(x, ag, 24000, spl=65.0), predictor(3 * x, ag, 24000, spl=65.0))
    assert not torch.allclose(predictor(x, ag, 24000, spl=50.0), predictor(x, ag, 24000, spl=90.0))


def test_long_input_is_length_weighted_over_windows(predictor) -> None:
    sr = 24000
    x, ag = _chord(14.0, sr, batch=1), torch.zeros(1, 8)
    spans, per_window = predictor.window_scores(x, ag, sr)
    assert spans == [(0, 144000), (108000, 252000), (192000, 336000)]  # last window ends at the end
    w = torch.tensor([144000.0, 144000.0, 144000.0])
    expected = (per_window * w).sum(-1) / w.sum()
    torch.testing.assert_close(predictor(x, ag, sr), expected)
    torch.testing.assert_close(per_window[0, 0], predictor(x[:, :144000], ag, sr)[0])


def test_bad_inputs(predictor) -> None:
    with pytest.raises(ModelError, match="8 values"):
        predictor(_chord(1.0, 24000), torch.zeros(2, 6), 24000)
    with pytest.raises(ModelError, match="reduction"):
        haaqi_loss(_chord(1.0, 24000), torch.zeros(2, 8), 24000, predictor=predictor, reduction="max")


@pytest.mark.filterwarnings("ignore:presentation level 70 dB SPL")  # an extrapolation, here on purpose
def test_predict_file_gives_haaqi_score_of_the_same_file(tmp_path, monkeypatch) -> None:
    """The file entry point and `haaqi score` share the path from a file to calibrated windows
    (audio.calibrated_windows): the shipped model gives the same score per ear, stereo and downmixed."""
    import numpy as np
    import pandas as pd
    from click.testing import CliRunner

    from haaqicli.audio import synth, write_audio
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.cli import main

    monkeypatch.delenv("HAAQI_WEIGHTS", raising=False)  # the shipped weights
    music = synth.music(10.0, 44100, seed=5)[0]
    stereo = np.stack([music, synth.add_noise(music, 10.0, seed=1)]).astype(np.float32)
    path = write_audio(tmp_path / "song.wav", stereo, 44100)
    (profile,) = resolve_profiles(["asymmetric"])
    assert not profile.symmetric
    predictor = HAAQIPredictor.from_pretrained("distilled")
    for mix, ears in (("stereo", ["left", "right"]), ("mono", ["both"])):
        out = tmp_path / f"{mix}.csv"
        result = CliRunner().invoke(main, ["score", str(path), "--profile", "asymmetric", "--spl", "70",
                                           "--model", "distilled", "--device", "cpu", "--mix", mix, "-q",
                                           "--out", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out)
        cli = dict(zip(table["ear"], table["score"], strict=True))
        api = predictor.predict_file(path, profile, spl=70.0, mix=mix)
        assert sorted(api) == sorted(cli) == sorted(ears)
        for ear in ears:
            assert abs(api[ear] - cli[ear]) < 1e-6, (mix, ear, api[ear], cli[ear])
    # levels instead of a Profile: (2, 8) is (left, right); 8 levels are heard by both ears
    grams = np.stack([profile.left.as_array(), profile.right.as_array()])
    assert predictor.predict_file(path, grams, spl=70.0) == pytest.approx(api_stereo := predictor.predict_file(
        path, profile, spl=70.0), abs=1e-9)
    left_only = predictor.predict_file(path, profile.left.as_array(), spl=70.0)
    assert left_only["left"] == pytest.approx(api_stereo["left"], abs=1e-9)
    assert abs(left_only["right"] - api_stereo["right"]) > 1e-3  # the right channel now heard with the left loss


def test_predict_file_errors_name_the_problem(predictor, tmp_path) -> None:
    from haaqicli.util.errors import AudioError

    with pytest.raises(AudioError, match="missing.wav"):
        predictor.predict_file(tmp_path / "missing.wav", torch.zeros(8))
    with pytest.raises(ModelError, match="audiogram must have 8 values"):
        predictor.predict_file(tmp_path / "missing.wav", torch.zeros(5))
    with pytest.raises(ModelError, match="mix must be stereo or mono"):
        predictor.predict_file(tmp_path / "missing.wav", torch.zeros(8), mix="left")
