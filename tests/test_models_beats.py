"""BEATs encoder: fbank equivalence with kaldi, official attention math, checkpoint layout, safe loading."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

from haaqicli.models.beats import (
    BEATs,
    BEATsConfig,
    KaldiFbank,
    load_beats_checkpoint,
    relative_position_bucket,
)
from haaqicli.util.errors import ModelError


def tiny_cfg(**kw) -> BEATsConfig:
    base = dict(encoder_layers=2, embed_dim=48, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, relative_position_embedding=True,
                num_buckets=32, max_distance=64, gru_rel_pos=True, deep_norm=True, dropout=0.0,
                attention_dropout=0.0)
    base.update(kw)
    return BEATsConfig(**base)


def _music(n: int, sr: int, batch: int = 2) -> torch.Tensor:
    t = torch.arange(n) / sr
    rows = []
    for b in range(batch):
        f0 = 220.0 * (b + 1)
        x = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in (1, 2, 3, 5))
        rows.append(0.1 * x + 0.01 * torch.randn(n, generator=torch.Generator().manual_seed(b)))
    return torch.stack(rows).float()


@pytest.mark.parametrize("sr", [16000, 24000])
def test_batched_fbank_matches_kaldi(sr: int) -> None:
    x = _music(sr + 1234, sr, batch=3)
    ours = KaldiFbank(sr)(x)
    ref = torch.stack([kaldi.fbank(w[None] * 32768, num_mel_bins=128, sample_frequency=sr, frame_length=25,
                                   frame_shift=10) for w in x])
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-4)


def test_fbank_upper_band_edge_is_nyquist() -> None:
    # A 11 kHz tone exists only above the 16 kHz model's band: the 24 kHz fbank must see it in its top bins.
    sr = 24000
    t = torch.arange(sr) / sr
    tone = (0.1 * torch.sin(2 * math.pi * 11000 * t))[None]
    mel = KaldiFbank(sr)(tone).mean(1)[0]
    assert mel.argmax().item() >= 120


def test_relative_position_bucket_properties() -> None:
    rel = torch.arange(-300, 301)
    b = relative_position_bucket(rel, 320, 800)
    assert b.min() >= 0 and b.max() < 320
    assert torch.equal(b[300 - torch.arange(80)], torch.arange(80))  # exact buckets for small offsets
    assert torch.equal(b[300 + 1 : 300 + 80], torch.arange(161, 240))  # positive side offset by half
    assert (b[rel > 0] >= 160).all() and (b[rel <= 0] < 160).all()


def _official_attention(att, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The official computation written out: q scaled by head_dim**-0.5/alpha, logits shifted by their
    row max and multiplied back by alpha, gated bias from the un-scaled query, (B*H, L, L) layout."""
    b, n, d = x.shape
    h, hd, alpha = att.heads, att.head_dim, 32
    q = att.q_proj(x) * att.scaling / alpha
    k, v = att.k_proj(x), att.v_proj(x)
    q = q.transpose(0, 1).reshape(n, b * h, hd).transpose(0, 1)
    k = k.transpose(0, 1).reshape(n, b * h, hd).transpose(0, 1)
    v = v.transpose(0, 1).reshape(n, b * h, hd).transpose(0, 1)
    w = torch.bmm(q, k.transpose(1, 2))
    w = (w - w.max(dim=-1, keepdim=True)[0]) * alpha
    pos = bias.unsqueeze(0).repeat(b, 1, 1, 1).view(b * h, n, n)
    ql = q.view(b, h, n, hd) * alpha / att.scaling
    ga, gb = torch.sigmoid(att.grep_linear(ql).view(b, h, n, 2, 4).sum(-1)).chunk(2, dim=-1)
    gate = ga * (gb * att.grep_a - 1.0) + 2.0
    w = w + gate.view(b * h, n, 1) * pos
    out = torch.bmm(F.softmax(w, dim=-1), v)
    return att.out_proj(out.transpose(0, 1).reshape(n, b, d).transpose(0, 1))


def test_attention_matches_official_formulation() -> None:
    torch.manual_seed(0)
    model = BEATs(tiny_cfg()).eval()
    att = model.encoder.layers[1].self_attn
    with torch.no_grad():
        att.grep_a.uniform_(0.5, 1.5)
        x = torch.randn(2, 24, 32)
        bias = model.encoder.layers[0].self_attn.compute_bias(24, x.device)
        torch.testing.assert_close(att(x, None, bias), _official_attention(att, x, bias), atol=1e-5, rtol=1e-4)


def test_state_dict_uses_official_names_and_shares_bias() -> None:
    model = BEATs(tiny_cfg())
    keys = set(model.state_dict())
    for k in ("patch_embedding.weight", "layer_norm.weight", "post_extract_proj.weight",
              "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias",
              "encoder.layer_norm.weight", "encoder.layers.0.self_attn.grep_linear.weight",
              "encoder.layers.1.self_attn.grep_a", "encoder.layers.1.self_attn.relative_attention_bias.weight",
              "encoder.layers.0.fc1.weight", "encoder.layers.0.final_layer_norm.bias"):
        assert k in keys, k
    assert not any("fbank" in k or "mel_banks" in k for k in keys)
    enc = model.encoder.layers
    assert enc[0].self_attn.relative_attention_bias is enc[1].self_attn.relative_attention_bias
    assert model.encoder.pos_conv[0].weight_g.shape == (1, 1, 16)


def test_extract_features_shapes_and_padding_mask() -> None:
    cfg = tiny_cfg(sample_rate=24000)
    model = BEATs(cfg).eval()
    x = _music(24000 * 2, 24000)
    pad = torch.zeros_like(x, dtype=torch.bool)
    pad[1, 24000:] = True
    with torch.no_grad():
        out, hidden, mask = model.extract_features(x, padding_mask=pad)
    frames = 1 + (48000 - 600) // 240  # 198 fbank frames -> 12 time patches x 8 freq patches
    assert out.shape == (2, (frames // 16) * 8, 32)
    assert len(hidden) == cfg.encoder_layers + 1
    assert mask is not None and mask.shape == out.shape[:2]
    assert not mask[0].any() and mask[1, -8:].all() and not mask[1, :8].any()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kw", [dict(), dict(deep_norm=False, layer_norm_first=True, gru_rel_pos=False),
                                dict(relative_position_embedding=False, activation_fn="glu")])
def test_checkpoint_round_trip(tmp_path, kw) -> None:
    torch.manual_seed(1)
    model = BEATs(tiny_cfg(**kw)).eval()
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k not in ("sample_rate",)}
    cfg["some_training_option"] = 3  # official cfgs carry fields we do not use
    path = tmp_path / "beats.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    loaded = load_beats_checkpoint(path)
    x = _music(16000, 16000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_finetuned_checkpoint_predictor(tmp_path) -> None:
    model = BEATs(tiny_cfg(finetuned_model=True, predictor_class=5)).eval()
    torch.save({"cfg": model.cfg.to_dict(), "model": model.state_dict()}, tmp_path / "ft.pt")
    probs = load_beats_checkpoint(tmp_path / "ft.pt")(_music(16000, 16000))
    assert probs.shape == (2, 5) and ((probs >= 0) & (probs <= 1)).all()


def test_checkpoint_key_mismatch_is_one_line_error(tmp_path) -> None:
    model = BEATs(tiny_cfg())
    state = model.state_dict()
    state.pop("encoder.layer_norm.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"cfg": model.cfg.to_dict(), "model": state}, tmp_path / "bad.pt")
    with pytest.raises(ModelError) as e:
        load_beats_checkpoint(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "\n" not in msg and "bad.pt" in msg and "encoder.layer_norm.bias" in msg and "extra.weight" in msg


def test_checkpoint_shape_mismatch_and_bad_layout(tmp_path) -> None:
    model = BEATs(tiny_cfg())
    cfg = model.cfg.to_dict()
    cfg["encoder_ffn_embed_dim"] = 96
    torch.save({"cfg": cfg, "model": model.state_dict()}, tmp_path / "shape.pt")
    with pytest.raises(ModelError, match="shape"):
        load_beats_checkpoint(tmp_path / "shape.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="official BEATs layout"):
        load_beats_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="not found"):
        load_beats_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """Anything that is not plain tensors/containers must be refused without running code."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"cfg": {}, "model": _Payload()}, fh, protocol=2)
    with pytest.raises(ModelError) as e:
        load_beats_checkpoint(path)
    assert "\n" not in str(e.value) and "weights-only" in str(e.value)
    assert "pwned" not in capsys.readouterr().out


def test_time_patches_give_one_token_per_time_step_and_keep_official_loading(tmp_path) -> None:
    torch.manual_seed(3)
    wide = BEATs(tiny_cfg(sample_rate=24000, input_patch_freq=128)).eval()
    assert wide.freq_patches == 1 and wide.patch_embedding.kernel_size == (16, 128)
    x = _music(24000 * 2, 24000)
    with torch.no_grad():
        out, hidden, _ = wide.extract_features(x)
    assert out.shape == (2, (1 + (48000 - 600) // 240) // 16, 32) and len(hidden) == 3
    # an official cfg has no input_patch_freq: square patches, as before
    square = BEATs(tiny_cfg()).eval()
    cfg = {k: v for k, v in square.cfg.to_dict().items() if k != "input_patch_freq"}
    torch.save({"cfg": cfg, "model": square.state_dict()}, tmp_path / "b.pt")
    loaded = load_beats_checkpoint(tmp_path / "b.pt")
    assert loaded.cfg.patch_shape == (16, 16) and loaded.freq_patches == 8
    with pytest.raises(ModelError, match="mel bins"):
        BEATs(tiny_cfg(input_patch_freq=48))
