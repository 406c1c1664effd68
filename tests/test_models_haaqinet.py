"""HAAQI-Net head: shapes, trainable frame loss, audiogram conditioning, determinism."""

from __future__ import annotations

import math

import torch

from haaqicli.models.haaqinet import HAAQINet, haaqinet_loss

ENC = dict(encoder_layers=2, embed_dim=32, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
           encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, relative_position_embedding=True,
           num_buckets=32, max_distance=64, gru_rel_pos=True, deep_norm=True, sample_rate=24000)
HEAD = dict(d_adapter=24, d_audiogram=8, lstm_hidden=16, attn_heads=2, dropout=0.0)


def _wave(batch: int = 2, seconds: float = 1.0, sr: int = 24000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([0.1 * torch.sin(2 * math.pi * 330 * (b + 1) * t) for b in range(batch)]).float()


def test_forward_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    model = HAAQINet(ENC, HEAD).eval()
    ag = torch.tensor([[10.0] * 8, [60.0] * 8])
    out = model(_wave(), ag)
    frames = (1 + (24000 - 600) // 240) // 16
    assert out.clip.shape == (2,) and out.frames.shape == (2, frames)
    assert len(out.hidden) == 3 and out.hidden[0].shape == (2, frames, 32)
    assert ((out.clip > 0) & (out.clip < 1)).all() and ((out.frames > 0) & (out.frames < 1)).all()
    # A fresh pooling layer is uniform: the clip logit is the mean frame logit (paper's averaging).
    torch.testing.assert_close(out.clip_logit, out.frame_logits.mean(1))


def test_short_input_is_padded_to_one_patch() -> None:
    model = HAAQINet(ENC, HEAD).eval()
    out = model(_wave(seconds=0.05), torch.zeros(2, 8))
    assert out.frames.shape == (2, 1)


def test_frame_loss_trains_frame_scores_and_audiogram_matters() -> None:
    torch.manual_seed(0)
    model = HAAQINet(ENC, HEAD).train()
    ag = torch.tensor([[0.0] * 8, [80.0] * 8])
    out = model(_wave(), ag)
    out.frames.retain_grad()
    loss = haaqinet_loss(out, torch.tensor([0.9, 0.2]), frame_weight=1.0)
    loss.backward()
    assert out.frames.grad is not None and out.frames.grad.abs().sum() > 0
    for name in ("head.frame_proj.weight", "head.layer_weights", "head.audiogram_proj.0.weight",
                 "encoder.patch_embedding.weight", "encoder.encoder.layers.0.self_attn.grep_a"):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        w = _wave(1).expand(2, -1)
        assert (model(w, ag).clip[0] - model(w, ag).clip[1]).abs() > 0


def test_eval_is_deterministic() -> None:
    model = HAAQINet(ENC, HEAD).eval()
    w, ag = _wave(), torch.full((2, 8), 30.0)
    with torch.no_grad():
        assert torch.equal(model(w, ag).clip, model(w, ag).clip)
    assert HAAQINet.from_config(model.config).config == model.config
