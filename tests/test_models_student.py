"""Student: shapes, frame alignment with the teacher, distillation loss, size and relative speed."""

from __future__ import annotations

import math
import time

import torch

from haaqicli.models.haaqinet import TEACHER_CONFIG, HAAQINet
from haaqicli.models.registry import build_model, count_params
from haaqicli.models.student import STUDENT_CONFIG, StudentNet, distillation_loss

T_ENC = dict(encoder_layers=2, embed_dim=32, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
             encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, relative_position_embedding=True,
             num_buckets=32, max_distance=64, gru_rel_pos=True, deep_norm=True, sample_rate=24000)
HEAD = dict(d_adapter=24, d_audiogram=8, lstm_hidden=16, attn_heads=2, dropout=0.0)
S_ENC = dict(conv_channels=[8, 16], encoder_layers=2, encoder_embed_dim=24, encoder_ffn_embed_dim=48,
             encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4, dropout=0.0, attention_dropout=0.0)
DISTILL = dict(teacher_dim=32, targets=[[1, 1], [2, 2]])


def _wave(batch: int, seconds: float, sr: int = 24000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([0.1 * torch.sin(2 * math.pi * 440 * (b + 1) * t) for b in range(batch)]).float()


def test_student_frames_align_with_teacher() -> None:
    teacher = HAAQINet(T_ENC, HEAD).eval()
    student = StudentNet(S_ENC, HEAD, DISTILL).eval()
    ag = torch.zeros(2, 8)
    for seconds in (3.0, 1.3):
        with torch.no_grad():
            s, t = student(_wave(2, seconds), ag), teacher(_wave(2, seconds), ag)
        assert abs(s.frames.shape[1] - t.frames.shape[1]) <= 1
    assert s.clip.shape == (2,) and len(s.hidden) == 3 and s.hidden[0].shape[-1] == 24


def test_distillation_loss_trains_student_only() -> None:
    torch.manual_seed(0)
    teacher = HAAQINet(T_ENC, HEAD).eval()
    student = StudentNet(S_ENC, HEAD, DISTILL).train()
    w, ag = _wave(2, 1.5), torch.tensor([[0.0] * 8, [70.0] * 8])
    with torch.no_grad():
        t_out = teacher(w, ag)
    loss, parts = distillation_loss(student(w, ag), t_out, student)
    assert torch.isfinite(loss) and set(parts) == {"l1", "cosine", "output_mse"}
    loss.backward()
    for name in ("distill_heads.0.weight", "distill_heads.1.weight", "head.frame_proj.weight",
                 "encoder.conv.0.weight", "encoder.encoder.layers.0.self_attn.q_proj.weight"):
        g = dict(student.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())


def test_student_config_round_trip() -> None:
    student = StudentNet(S_ENC, HEAD, DISTILL)
    again = StudentNet.from_config(student.config)
    assert again.config == student.config
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in student.parameters())


def _best_ms(model: torch.nn.Module, x: torch.Tensor, ag: torch.Tensor, reps: int = 3) -> float:
    best = math.inf
    with torch.inference_mode():
        model(x, ag)
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x, ag)
            best = min(best, time.perf_counter() - t0)
    return best


def test_default_configs_size_and_relative_speed() -> None:
    teacher = build_model("haaqinet", TEACHER_CONFIG).eval()
    student = build_model("haaqinet-student", STUDENT_CONFIG).eval()
    n_t, n_s = count_params(teacher), count_params(student)
    assert n_s <= 0.25 * n_t, (n_s, n_t)
    assert STUDENT_CONFIG["distill"]["teacher_dim"] == TEACHER_CONFIG["encoder"]["encoder_embed_dim"]
    assert max(t for _, t in STUDENT_CONFIG["distill"]["targets"]) <= TEACHER_CONFIG["encoder"]["encoder_layers"]
    # One thread: a shared, busy CPU distorts multi-thread timings far more than single-thread ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, ag = torch.randn(4, 144000) * 0.1, torch.full((4, 8), 30.0)
        ratio = _best_ms(teacher, x, ag) / _best_ms(student, x, ag)
    finally:
        torch.set_num_threads(threads)
    assert ratio >= 5.0, ratio


def test_the_student_default_config_lives_in_one_place() -> None:
    """The dataclass defaults, the shipped head and STUDENT_CONFIG are one description of the student
    (they once disagreed on the layer count)."""
    from haaqicli.models.student import STUDENT_HEAD, DistillConfig, StudentEncoderConfig, StudentNet

    built = StudentNet(StudentEncoderConfig(), STUDENT_HEAD)
    assert built.config == STUDENT_CONFIG == StudentNet.default_config()
    assert StudentEncoderConfig().encoder_layers == 2 == len(DistillConfig().targets)
    assert StudentNet.default_config() is not StudentNet.default_config()  # a copy callers may edit


def test_architectures_share_the_model_contract() -> None:
    """Both architectures are HAAQIModels: registered by arch, one shared forward (encode then head)."""
    from haaqicli.models.base import HAAQIModel
    from haaqicli.models.haaqinet import HAAQINet
    from haaqicli.models.registry import architectures
    from haaqicli.models.student import StudentNet

    assert architectures() == {"haaqinet": HAAQINet, "haaqinet-student": StudentNet}
    for cls in (HAAQINet, StudentNet):
        assert issubclass(cls, HAAQIModel) and cls.forward is HAAQIModel.forward
    model = build_model("haaqinet-student", STUDENT_CONFIG).eval()
    wave, gram = torch.randn(2, 24000), torch.full((2, 8), 30.0)
    with torch.no_grad():
        out = model(wave, gram)
        clip_logit, _ = model.head(model.encode(wave), gram)
    assert torch.equal(out.clip, torch.sigmoid(clip_logit))
