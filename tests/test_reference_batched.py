"""The batched torch engine (haaqicli.reference.batched) against the numba engine and pyclarity.

Both engines share the front end and the threshold noise, so they differ only by summation order and
by the numba engine's float32 BM coherence: every term must agree to 1e-6. The batch mixes lengths,
sample rates, delays, losses and both equalisation settings, so padding and per-clip parameters are
exercised; scores must not depend on which other clips share the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from haaqicli.audio import synth
from haaqicli.reference import compute_haaqi_batch
from haaqicli.reference.batched import _ihc_filter, _lfilter, compute_haaqi_torch, haaqi_terms_batch
from haaqicli.reference.ear import _ihc_step
from haaqicli.reference.haaqi import haaqi_terms
from haaqicli.util.errors import AudioError, ModelError

LOSS = np.array([10, 15, 20, 30, 35, 40, 50, 60.0])
SEVERE = np.array([55, 60, 65, 70, 80, 85, 90, 95.0])


def _item(seconds: float, sr: int, kind: str, audiogram: np.ndarray, seed: int, **extra) -> dict:
    ref = synth.music(seconds, sr, seed=seed)[0].astype(np.float64)
    if kind == "lowpass":
        proc = synth.lowpass(ref, sr, 3500).astype(np.float64)
    elif kind == "noise":
        proc = synth.add_noise(ref, 8.0, seed=seed).astype(np.float64)
    elif kind == "delay":  # codec-like delay
        d = int(0.011 * sr)
        proc = np.concatenate((np.zeros(d), ref[:-d])) * 0.7
    else:
        proc = np.clip(ref, -0.3 * np.abs(ref).max(), 0.3 * np.abs(ref).max())
    level1 = 65 - 20 * np.log10(np.sqrt(np.mean(ref**2)))
    return {"processed": proc, "reference": ref, "processed_sr": sr, "reference_sr": sr, "audiogram": audiogram,
            "equalisation": 1, "level1": level1, "seed": seed, **extra}


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return [
        _item(0.8, 24000, "lowpass", LOSS, 1),
        _item(1.1, 44100, "noise", np.zeros(8), 2),
        _item(0.6, 16000, "delay", SEVERE, 3, equalisation=0),
        _item(0.9, 48000, "clip", LOSS, 4, noise="pyclarity"),
    ]


@pytest.fixture(scope="module")
def batched(items: list[dict]) -> list[dict]:
    return haaqi_terms_batch(items, "cpu")


def test_batch_agrees_with_numba_engine_term_by_term(items: list[dict], batched: list[dict]) -> None:
    for item, terms in zip(items, batched, strict=True):
        expected = haaqi_terms(**item)
        for name, value in expected.items():
            assert terms[name] == pytest.approx(value, abs=1e-6), name


def test_scores_do_not_depend_on_batch_company(items: list[dict], batched: list[dict]) -> None:
    alone = haaqi_terms_batch([items[2]], "cpu")[0]
    assert alone["score"] == pytest.approx(batched[2]["score"], abs=1e-10)
    pair = compute_haaqi_torch([items[1], items[0]], "cpu", batch_size=2)
    assert pair == pytest.approx([batched[1]["score"], batched[0]["score"]], abs=1e-10)


def test_deterministic(items: list[dict]) -> None:
    assert compute_haaqi_torch(items[:2], "cpu") == compute_haaqi_torch(items[:2], "cpu")


def test_scores_are_discriminative(batched: list[dict]) -> None:
    # a sanity floor, so that agreement with the numba engine is not agreement on a constant
    scores = [t["score"] for t in batched]
    assert len({round(s, 3) for s in scores}) == len(scores)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_ihc_filter_equals_the_adaptation_recursion() -> None:
    rng = np.random.default_rng(0)
    level = np.maximum(rng.normal(30, 20, 5000).cumsum() / 50 + 40, 0)
    expected = np.empty_like(level)
    v1 = v2 = 0.0
    for i, v0 in enumerate(level):
        expected[i], _, v1, v2 = _ihc_step(v0, 1.0, 0.0, v1, v2)
    b, a, r1 = _ihc_filter()
    signal = torch.as_tensor(level)[None]
    state = _lfilter(signal, torch.tensor([b], dtype=torch.float64), torch.tensor([a], dtype=torch.float64))
    got = torch.clamp((signal - state) / r1, min=0.0)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_bad_item_raises_naming_the_problem(items: list[dict]) -> None:
    bad = dict(items[0], reference=np.zeros(24000))
    with pytest.raises(AudioError, match="silent"):
        haaqi_terms_batch([items[1], bad], "cpu")
    with pytest.raises(TypeError):
        haaqi_terms_batch([dict(items[0], colour="blue")], "cpu")


def test_compute_haaqi_batch_device_choice(items: list[dict]) -> None:
    # on a CPU the numba engine scores (it is the faster one there); a missing GPU is a clear error
    assert compute_haaqi_batch(items[:1], device="cpu") == [haaqi_terms(**items[0])["score"]]
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            compute_haaqi_batch(items[:1], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_agrees_with_cpu(items: list[dict], batched: list[dict]) -> None:
    scores = compute_haaqi_batch(items, device="cuda")
    assert scores == pytest.approx([t["score"] for t in batched], abs=1e-6)


@pytest.mark.oracle
def test_batch_agrees_with_pyclarity() -> None:
    clarity = pytest.importorskip("clarity.evaluator.haaqi", reason="pyclarity (oracle) not installed")
    from clarity.utils.audiogram import Audiogram

    cases = [_item(1.0, sr, kind, gram, 10 + i, noise="pyclarity")
             for i, (sr, kind, gram) in enumerate([(24000, "noise", LOSS), (44100, "lowpass", SEVERE),
                                                   (48000, "delay", np.zeros(8))])]
    ours = compute_haaqi_torch(cases, "cpu")
    for case, score in zip(cases, ours, strict=True):
        np.random.seed(case["seed"])
        expected = clarity.compute_haaqi(case["processed"], case["reference"], case["processed_sr"],
                                         case["reference_sr"], Audiogram(levels=case["audiogram"]), 1, case["level1"])
        assert score == pytest.approx(expected, abs=1e-6)


def test_engine_choice_follows_the_device(monkeypatch):
    from haaqicli.util.devices import cuda_device

    assert cuda_device("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_device("auto") is None  # no CUDA: the numba engine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # a GPU is present, yet "auto" keeps the CPU engine (faster: see cuda_device); CUDA when named
    assert cuda_device("auto") is None
    assert cuda_device("cuda") == "cuda:0" and cuda_device("cuda:1") == "cuda:1"
