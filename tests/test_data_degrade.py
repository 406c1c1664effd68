"""Degradations: each changes the signal the way it should, deterministically (synthetic audio only)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from haaqicli.data import audiograms as ag
from haaqicli.data import degrade as d

SR = 44100


def _music(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A chord with harmonics plus a little broadband noise, so high bands hold energy."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = sum(0.1 / k * np.sin(2 * np.pi * f * k * t) for f in (220.0, 277.2, 329.6) for k in range(1, 30) if f * k < 20000)
    return np.asarray(x + 0.02 * rng.standard_normal(len(t)), dtype=np.float64)


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


def _snr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2)))


@pytest.mark.parametrize("cutoff", [3500.0, 5000.0, 7500.0, 9000.0])
def test_lowpass_removes_energy_above_cutoff(cutoff: float) -> None:
    x = _music()
    y = d.apply_recipe(x, SR, {"type": "lowpass", "cutoff_hz": cutoff})
    assert _band_energy(y, cutoff * 1.5, SR / 2) < 1e-3 * _band_energy(x, cutoff * 1.5, SR / 2)
    assert _band_energy(y, 100, cutoff * 0.7) > 0.9 * _band_energy(x, 100, cutoff * 0.7)


def test_highpass_removes_lows() -> None:
    x = _music()
    y = d.apply_recipe(x, SR, {"type": "highpass", "cutoff_hz": 1000.0})
    assert _band_energy(y, 0, 400) < 0.01 * _band_energy(x, 0, 400)


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
def test_noise_hits_requested_snr(kind: str) -> None:
    x = _music()
    y = d.apply_recipe(x, SR, {"type": "noise", "kind": kind, "snr_db": 10.0, "seed": 3})
    assert _snr(x, y) == pytest.approx(10.0, abs=0.01)


def test_pink_noise_is_tilted() -> None:
    n = d._shaped_noise(np.random.default_rng(0), SR, SR, "pink")
    # -3 dB/octave: 1-2 kHz holds about as much power as 8-16 kHz (equal-octave power).
    assert _band_energy(n, 1000, 2000) == pytest.approx(_band_energy(n, 8000, 16000), rel=0.2)


def test_clipping_bitdepth_and_level() -> None:
    x = _music()
    peak = np.max(np.abs(x))
    y = d.apply_recipe(x, SR, {"type": "clipping", "threshold": 0.3, "mode": "hard"})
    assert np.max(np.abs(y)) == pytest.approx(0.3 * peak)
    soft = d.apply_recipe(x, SR, {"type": "clipping", "threshold": 0.3, "mode": "soft"})
    assert np.max(np.abs(soft)) < 0.3 * peak
    q = d.apply_recipe(x, SR, {"type": "bitdepth", "bits": 4})
    assert len(np.unique(q)) <= 2**4 + 1
    assert 15 < _snr(x, q) < 35
    g = d.apply_recipe(x, SR, {"type": "level", "gain_db": -6.0})
    assert np.allclose(g, x * 10 ** (-6 / 20))


def test_samplerate_reduction_bands_and_aliases() -> None:
    x = _music()
    y = d.apply_recipe(x, SR, {"type": "samplerate", "rate_hz": 8000})
    assert _band_energy(y, 4500, SR / 2) < 1e-3 * _band_energy(x, 4500, SR / 2)
    alias = d.apply_recipe(x, SR, {"type": "samplerate", "rate_hz": 8000, "alias": True})
    assert _band_energy(alias, 4500, SR / 2) > 0.01 * _band_energy(x, 4500, SR / 2)


def test_compressor_reduces_crest_keeps_rms() -> None:
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 440 * t) * np.where(t < 0.5, 0.05, 0.8)
    y = d.apply_recipe(x, SR, {"type": "compressor", "threshold_db": -10.0, "ratio": 8.0, "time_ms": 5.0})
    ratio_in = np.std(x[int(0.7 * SR):]) / np.std(x[: int(0.3 * SR)])
    ratio_out = np.std(y[int(0.7 * SR):]) / np.std(y[: int(0.3 * SR)])
    assert ratio_out < 0.5 * ratio_in
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-6)


def test_tilt_resonance_reverb_dropouts() -> None:
    x = _music()
    up = d.apply_recipe(x, SR, {"type": "tilt", "db_per_octave": 6.0})
    ratio = lambda s: _band_energy(s, 4000, 8000) / _band_energy(s, 200, 400)  # noqa: E731
    assert ratio(up) > 100 * ratio(x)
    res = d.apply_recipe(x, SR, {"type": "resonance", "peaks": [[3000.0, 15.0, 4.0]]})
    assert _band_energy(res, 2900, 3100) > 10 * _band_energy(x, 2900, 3100)
    # A click reverberates: energy long after the impulse.
    click = np.zeros(SR)
    click[100] = 1.0
    wet = d.apply_recipe(click, SR, {"type": "reverb", "rt60_s": 1.5, "drr_db": 0.0, "seed": 1})
    assert np.sum(wet[int(0.2 * SR):] ** 2) > 0.03 * np.sum(wet**2)
    gaps = d.apply_recipe(x, SR, {"type": "dropouts", "count": 3, "min_ms": 20.0, "max_ms": 50.0, "seed": 2})
    zeros = np.sum(gaps == 0.0)
    assert 3 * 0.015 * SR < zeros <= 3 * 0.05 * SR + 10


def test_nalr_boosts_highs_for_sloping_loss() -> None:
    x = _music()
    hl = np.asarray(ag.BISGAARD["S2"])
    gains = d.nalr_gains(hl)
    assert gains[-1] > gains[0] and np.all(gains >= 0)
    y = d.apply_recipe(x, SR, {"type": "nalr", "amount": 1.0}, hl)
    boost_hi = _band_energy(y, 3500, 4500) / _band_energy(x, 3500, 4500)
    boost_lo = _band_energy(y, 200, 300) / _band_energy(x, 200, 300)
    assert 10 * np.log10(boost_hi) == pytest.approx(gains[5], abs=1.5)
    assert boost_hi > 10 * boost_lo
    with pytest.raises(ValueError):
        d.apply_recipe(x, SR, {"type": "nalr"})


def test_identity_and_cascade() -> None:
    x = _music()
    assert np.array_equal(d.apply_recipe(x, SR, {"type": "identity"}), x)
    steps = [{"type": "lowpass", "cutoff_hz": 5000.0}, {"type": "level", "gain_db": 6.0}]
    y = d.apply_recipe(x, SR, {"type": "cascade", "steps": steps})
    z = d.apply_recipe(d.apply_recipe(x, SR, steps[0]), SR, steps[1])
    assert np.array_equal(y, z)


def test_sampled_recipes_are_deterministic_and_valid() -> None:
    x = _music(0.5)
    hl = np.full(8, 40.0)
    recipes_a = [d.sample_recipe(np.random.default_rng(s), has_ffmpeg=False) for s in range(60)]
    recipes_b = [d.sample_recipe(np.random.default_rng(s), has_ffmpeg=False) for s in range(60)]
    assert recipes_a == recipes_b
    kinds = {d.recipe_kind(r).split(":")[0] for r in recipes_a}
    assert len(kinds) >= 8 and "codec" not in kinds
    for recipe in recipes_a:
        again = d.recipe_from_json(d.recipe_to_json(recipe))
        y1 = d.apply_recipe(x, SR, recipe, hl)
        y2 = d.apply_recipe(x, SR, again, hl)
        assert y1.shape == x.shape and np.array_equal(y1, y2)


def test_align_to_recovers_shift() -> None:
    x = _music(0.5)
    late = np.concatenate([np.zeros(37), x])
    aligned, lag = d.align_to(x, late, 200)
    assert lag == 37 and np.array_equal(aligned, x)
    early = x[25:]
    aligned, lag = d.align_to(x, early, 200)
    assert lag == -25 and np.array_equal(aligned[25:], x[25:])


@pytest.mark.ffmpeg
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing")
@pytest.mark.parametrize("codec", sorted(d.CODECS))
def test_codec_round_trip_is_aligned(codec: str) -> None:
    x = _music(1.0)
    low, high = d.CODECS[codec][3][0], d.CODECS[codec][3][-1]
    y_high = d.apply_recipe(x, SR, {"type": "codec", "codec": codec, "bitrate": high})
    y_low = d.apply_recipe(x, SR, {"type": "codec", "codec": codec, "bitrate": low})
    # Delay/padding removed: residual misalignment within a few samples, same length.
    for y in (y_high, y_low):
        assert y.shape == x.shape
        assert abs(d.align_to(x, y, 64)[1]) <= 2
    assert _snr(x, y_high) > 8
    assert _snr(x, y_high) > _snr(x, y_low)
    again = d.apply_recipe(x, SR, {"type": "codec", "codec": codec, "bitrate": low})
    assert np.array_equal(again, y_low)


def test_fit_recipe_weights_prefers_kinds_that_fill_gaps() -> None:
    rng = np.random.default_rng(0)
    kinds = ["identity"] * 200 + ["noise"] * 200 + ["codec"] * 200
    labels = np.concatenate([rng.uniform(0.9, 1.0, 200), rng.uniform(0.0, 0.5, 200), rng.uniform(0.5, 0.9, 200)])
    w = d.fit_recipe_weights(kinds, labels, prior={"identity": 1.0, "noise": 1.0, "codec": 1.0}, strength=0.01)
    assert set(w) == {"identity", "noise", "codec"}
    assert w["noise"] > w["codec"] > w["identity"]
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-3)


def test_audiogram_sampler_families_and_range() -> None:
    rng = np.random.default_rng(5)
    draws = [ag.sample_audiogram(rng) for _ in range(400)]
    families = {g.family.split(":")[0] for g in draws}
    assert families == set(ag.FAMILY_WEIGHTS)
    arr = np.stack([g.as_array() for g in draws])
    assert arr.shape == (400, 8) and arr.min() >= -10 and arr.max() <= 120
    notch = ag.sample_audiogram(np.random.default_rng(1), "notched").as_array()
    assert notch[5] > notch[2]  # 4 kHz worse than 1 kHz
    left, right = ag.sample_asymmetric_pair(np.random.default_rng(2))
    assert abs(left.pta - right.pta) >= 8
    a = ag.sample_audiogram(np.random.default_rng(9))
    b = ag.sample_audiogram(np.random.default_rng(9))
    assert a == b
    assert ag.severity_of(10) == "normal" and ag.severity_of(50) == "moderate"


@pytest.mark.ffmpeg
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing")
@pytest.mark.parametrize(("codec", "bitrate"), [("mp3", 8), ("mp3", 16), ("mp3", 24), ("mp3", 32), ("opus", 6),
                                                ("opus", 12), ("aac", 16)])
def test_lowest_codec_bitrates_are_really_coded_at_that_bitrate(codec: str, bitrate: int) -> None:
    """libmp3lame codes `-b:a 8k` at 44.1 kHz as 32 kb/s: the encode rate of a recipe allows its bitrate."""
    x = _music(3.0)
    recipe = d.sample_recipe(np.random.default_rng(0), {"codec": 1.0}, has_ffmpeg=True, sample_rate=SR)
    recipe.update(codec=codec, bitrate=bitrate, rate_hz=d.encode_rate(codec, bitrate, SR))
    y, actual = d._codec_round_trip(x, SR, recipe)
    assert y.shape == x.shape
    # Container overhead and rate control put the real bitrate within 25% of the asked one (opus 6 -> ~5).
    assert actual == pytest.approx(bitrate, rel=0.25)
    if codec == "mp3" and bitrate < 32:
        assert recipe["rate_hz"] < 32000


def test_sampled_codecs_record_their_encode_rate_and_ladders_reach_the_lowest_bitrates() -> None:
    assert d.CODECS["opus"][3][0] == 6 and d.CODECS["aac"][3][0] == 16 and d.CODECS["mp3"][3][0] == 8
    recipes = [d.sample_recipe(np.random.default_rng(s), {"codec": 1.0}, has_ffmpeg=True, sample_rate=44100)
               for s in range(40)]
    for r in recipes:
        assert r["rate_hz"] == d.encode_rate(r["codec"], r["bitrate"], 44100)
    assert d.encode_rate("mp3", 8, 44100) == 8000 and d.encode_rate("mp3", 128, 44100) == 44100
    assert d.encode_rate("opus", 64, 44100) == 48000


def test_strong_degradation_ranges_and_cascades_of_three() -> None:
    rng = np.random.default_rng(3)
    draws = [d._draw(rng, kind, False) for kind in ("reverb", "clipping") for _ in range(300)]
    rt60 = [r["rt60_s"] for r in draws if r["type"] == "reverb"]
    drr = [r["drr_db"] for r in draws if r["type"] == "reverb"]
    clip = [r["threshold"] for r in draws if r["type"] == "clipping"]
    assert 0.3 <= min(rt60) < 0.5 and 2.3 < max(rt60) <= 2.5
    assert -5 <= min(drr) < -3 and 13 < max(drr) <= 15
    assert 0.1 <= min(clip) < 0.12 and max(clip) <= 0.9
    cascades = [d.sample_recipe(np.random.default_rng(s), {"cascade": 1.0, "noise": 1.0, "lowpass": 1.0,
                                                           "clipping": 1.0}, has_ffmpeg=False) for s in range(60)]
    lengths = {len(r["steps"]) for r in cascades if r["type"] == "cascade"}
    assert lengths == {2, 3}


def test_packet_loss_loses_the_asked_share_in_bursts() -> None:
    x = _music(4.0) + 0.5
    recipe = {"type": "packet_loss", "packet_ms": 20.0, "loss_rate": 0.1, "burst": 3.0, "conceal": "zero", "seed": 1}
    y = d.apply_recipe(x, SR, recipe)
    size = int(0.02 * SR)
    lost = np.array([np.all(y[i : i + size] == 0) for i in range(0, len(y) - size, size)])
    assert 0.04 < lost.mean() < 0.2
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], lost.astype(int), [0]]))))[::2]
    assert runs.mean() > 1.5  # bursts, not isolated packets
    repeat = d.apply_recipe(x, SR, {**recipe, "conceal": "repeat"})
    assert not np.any([np.all(repeat[i : i + size] == 0) for i in range(size, len(y) - size, size)])
    assert np.array_equal(repeat, d.apply_recipe(x, SR, {**recipe, "conceal": "repeat"}))


def test_limiter_holds_the_ceiling_and_raises_density() -> None:
    x = _music(1.0)
    y = d.apply_recipe(x, SR, {"type": "limiter", "drive_db": 9.0, "release_ms": 100.0})
    crest = lambda s: np.max(np.abs(s)) / np.sqrt(np.mean(s**2))  # noqa: E731
    assert crest(y) < crest(x) - 0.5
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-6)


@pytest.mark.ffmpeg
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing")
def test_codec_retries_a_failed_ffmpeg_run_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient ffmpeg failure is retried; a persistent one is a one-line AudioError."""
    import subprocess

    from haaqicli.util.errors import AudioError

    x = np.sin(2 * np.pi * 440 * np.arange(SR) / SR) * 0.3
    real_run, calls = subprocess.run, []

    def flaky(cmd, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(cmd)
        if len(calls) == 2:  # the first decode fails, as a truncated encoded file does
            raise subprocess.CalledProcessError(1, cmd, stderr=b"enc.aac: End of file")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(d.subprocess, "run", flaky)
    y = d.codec(x, SR, {"type": "codec", "codec": "aac", "bitrate": 32})
    assert len(calls) == 4 and y.shape == x.shape and np.isfinite(y).all()

    def broken(cmd, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise subprocess.CalledProcessError(1, cmd, stderr=b"enc.aac: End of file")

    monkeypatch.setattr(d.subprocess, "run", broken)
    with pytest.raises(AudioError, match="ffmpeg aac at 32 kb/s failed: enc.aac: End of file"):
        d.codec(x, SR, {"type": "codec", "codec": "aac", "bitrate": 32})
