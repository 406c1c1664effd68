"""Term heads, hearing-loss band conditioning and the objectives beside MSE (tiny models, synthetic audio)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_TEACHER, tiny_student_config

from haaqicli.audio import synth
from haaqicli.models.haaqinet import TEACHER_CONFIG, HeadConfig
from haaqicli.models.hearing import BandConditioning, BandLevels
from haaqicli.models.registry import ModelInfo, build_model, load_model, save_model
from haaqicli.models.student import STUDENT_CONFIG
from haaqicli.models.terms import combine
from haaqicli.reference.formula import HAAQI_FREQUENCIES, center_frequencies, haaqi_loss, nalr_gain_db
from haaqicli.reference.haaqi import combine_terms
from haaqicli.training.objectives import (
    Objective,
    correlation_loss,
    label_objective,
    pairwise_ranking_loss,
    term_loss,
)

AUDIOGRAMS = torch.tensor([[0.0] * 8, [10, 15, 20, 30, 40, 50, 60, 70], [60.0] * 8])


def with_head(config: dict, **head) -> dict:  # type: ignore[no-untyped-def]
    config = copy.deepcopy(config)
    config["head"].update(head)
    return config


def waves(n: int = 3, seconds: float = 2.0) -> torch.Tensor:
    return torch.from_numpy(np.stack([synth.music(seconds, 24000, seed=i)[0] for i in range(n)]).astype(np.float32))


def test_combined_terms_are_haaqis_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        cep, sync, loud_std, norm_std = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, 3), rng.uniform(0, 30)
        exact = combine_terms(cep, sync, loud_std, norm_std)
        clipped = torch.tensor([exact["cep_high"], exact["bm_sync5"], exact["d_loud"], exact["d_norm"]],
                               dtype=torch.float64)
        assert float(combine(clipped)) == pytest.approx(exact["score"], abs=1e-12)


def test_shipped_configs_keep_the_plain_head():
    for config in (TEACHER_CONFIG, STUDENT_CONFIG):
        head = HeadConfig.from_dict(config["head"])
        assert head.terms is False and head.bands == 0
    plain = build_model("haaqinet", TINY_TEACHER)
    assert plain.head.frame_proj.out_features == 1 and plain.head.band_conditioning is None
    assert plain.band_levels is None


@pytest.mark.parametrize("arch", ["haaqinet", "haaqinet-student"])
def test_term_head_scores_are_the_formula_of_its_terms_and_the_engine_path_agrees(arch, tmp_path):
    from haaqicli.scoring.network import WindowScorer

    base = TINY_TEACHER if arch == "haaqinet" else tiny_student_config()
    torch.manual_seed(0)
    model = build_model(arch, with_head(base, terms=True, bands=32, d_bands=8)).eval()
    x = waves()
    with torch.no_grad():
        out = model(x, AUDIOGRAMS)
    assert out.terms.shape == (3, 4) and out.frame_terms.shape[-1] == 4
    torch.testing.assert_close(out.clip, combine(out.terms))
    torch.testing.assert_close(out.frames, combine(out.frame_terms))
    # the engine encodes once and runs the head per audiogram: the same scores as forward()
    clip, frames = WindowScorer(model, torch.device("cpu"), 2)(x.numpy(), AUDIOGRAMS[1:2].numpy())
    with torch.no_grad():
        same_gram = model(x, AUDIOGRAMS[1:2].expand(3, -1))
    np.testing.assert_allclose(clip[0], same_gram.clip.numpy(), atol=1e-5)
    # saved and loaded through the registry: the config carries the options, the outputs match
    info = save_model(model, ModelInfo(name="m", arch=arch, config=model.config, file="m.safetensors"), tmp_path)
    assert info.config["head"]["terms"] is True and info.config["head"]["bands"] == 32
    loaded, _ = load_model("m", weights_dir=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, AUDIOGRAMS).clip, out.clip)


def test_band_levels_are_calibrated_in_db_spl():
    """A 1 kHz tone at RMS 0.1 (65 dB SPL in the model's calibration) sums to 65 dB over the bands,
    mostly in the band around 1 kHz; 20 dB quieter reads 20 dB lower."""
    bands = BandLevels(24000, 32)
    t = np.arange(48000) / 24000
    tone = torch.from_numpy((0.1 * np.sqrt(2) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))[None]
    for gain, spl in ((1.0, 65.0), (0.1, 45.0)):
        levels = bands(tone * gain, 10)[0]  # (10 frames, 32 bands)
        total = 10 * torch.log10((10 ** (levels / 10)).sum(-1))
        assert torch.allclose(total, torch.full_like(total, spl), atol=0.5)
    centres = center_frequencies(32)
    assert abs(centres[int(levels.mean(0).argmax())] - 1000) < 150


def test_band_conditioning_hears_the_audiogram_and_nalr_per_band():
    cond = BandConditioning(32, 8)
    hl, gain = cond.hearing(AUDIOGRAMS)
    centres = center_frequencies(32)
    assert torch.all(hl[0] == 0) and torch.all(gain[0] == 0)  # normal hearing: no loss, no NAL-R gain
    expected_hl = np.interp(np.log(centres), np.log([250, 500, 1000, 2000, 3000, 4000, 6000, 8000]),
                            AUDIOGRAMS[1].numpy())
    np.testing.assert_allclose(hl[1].numpy(), expected_hl, atol=1e-4)
    expected_gain = np.interp(np.log(centres), np.log(HAAQI_FREQUENCIES), nalr_gain_db(haaqi_loss(AUDIOGRAMS[1].numpy())))
    np.testing.assert_allclose(gain[1].numpy(), expected_gain, atol=1e-4)
    assert float(gain[2].max()) > float(gain[1].max())  # more loss, more prescribed gain
    # the conditioned features change with the audiogram even when the plain audiogram input is cut
    torch.manual_seed(0)
    model = build_model("haaqinet-student", with_head(tiny_student_config(), bands=32, d_bands=8))
    torch.nn.init.zeros_(model.head.audiogram_proj[0].weight)
    torch.nn.init.zeros_(model.head.audiogram_proj[0].bias)
    x = waves(1).expand(3, -1)
    out = model(x, AUDIOGRAMS)
    assert float(out.clip.detach().std()) > 0
    out.clip.sum().backward()
    assert float(model.head.band_conditioning.film[-1].weight.grad.abs().sum()) > 0


def test_nalr_gain_matches_the_ear_models_filter():
    """The gains the conditioning uses are the prescription of HAAQI's NAL-R FIR (one formula)."""
    from haaqicli.reference.ear import nalr_filter

    loss6 = np.array([20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    fir = nalr_filter(loss6)
    response = np.abs(np.fft.rfft(fir, 48000))  # 0.25 Hz bins at 24 kHz
    measured = 20 * np.log10(response[(np.array([1000, 2000, 4000]) * 2).astype(int)])
    np.testing.assert_allclose(measured, nalr_gain_db(loss6)[[2, 3, 4]], atol=1.0)


def test_term_loss_masks_items_without_sub_terms():
    predicted = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    target = torch.tensor([[0.7, 0.5, 0.5, 0.3], [float("nan")] * 4])
    loss = term_loss(predicted, target)
    assert float(loss.detach()) == pytest.approx((0.2**2 + 0.2**2) / 4)
    loss.backward()
    assert torch.all(predicted.grad[1] == 0)
    none = term_loss(predicted, torch.full((2, 4), float("nan")))
    assert float(none) == 0.0 and none.requires_grad


def test_ranking_losses_reward_the_labels_order():
    target = torch.tensor([0.1, 0.3, 0.5, 0.9])
    ordered, reversed_ = target * 0.5 + 0.2, 1.0 - target
    for loss in (pairwise_ranking_loss, correlation_loss):
        assert float(loss(ordered, target)) < float(loss(reversed_, target))
    assert float(correlation_loss(ordered, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(correlation_loss(reversed_, target)) == pytest.approx(2.0, abs=1e-6)
    assert float(pairwise_ranking_loss(ordered, torch.full((4,), 0.5))) == 0.0  # no ordered pair: no term


def test_label_objective_adds_terms_and_ranking():
    torch.manual_seed(0)
    model = build_model("haaqinet-student", with_head(tiny_student_config(), terms=True))
    out = model(waves(4, 1.0), torch.cat([AUDIOGRAMS, AUDIOGRAMS[:1]]))
    labels = torch.tensor([0.2, 0.4, 0.6, 0.8])
    terms = torch.tensor([[0.5, 0.6, 0.7, 0.8]] * 2 + [[float("nan")] * 4] * 2)
    plain, parts = label_objective(out, labels, terms, Objective(term_weight=0.0))
    assert set(parts) == {"score"}
    full, parts = label_objective(out, labels, terms, Objective(term_weight=2.0, rank_weight=0.5))
    assert set(parts) == {"score", "terms", "rank"}
    assert float(full) == pytest.approx(float(plain) + 2.0 * parts["terms"] + 0.5 * parts["rank"], rel=1e-5)
    with pytest.raises(Exception, match="--rank-loss"):
        Objective(rank_loss="listwise")


def test_distillation_matches_the_teachers_sub_terms_when_both_have_term_heads():
    from haaqicli.models.haaqinet import HAAQINetOutput
    from haaqicli.models.student import distillation_loss

    torch.manual_seed(0)
    student = build_model("haaqinet-student", with_head(tiny_student_config(), terms=True))
    out = student(waves(2, 1.0), AUDIOGRAMS[:2])
    hidden = [torch.zeros(2, out.frames.shape[1], 32) for _ in range(3)]

    def teacher(terms):  # type: ignore[no-untyped-def]
        return HAAQINetOutput(out.clip.detach(), out.frames.detach(), hidden, terms=terms)

    same, other, plain = (float(distillation_loss(out, teacher(terms), student)[0].detach())
                          for terms in (out.terms.detach(), out.terms.detach() + 0.1, None))  # None: no term heads
    assert float(same) == pytest.approx(float(plain)) and float(other) == pytest.approx(float(plain) + 0.01, rel=1e-4)
