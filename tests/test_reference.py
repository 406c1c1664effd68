"""Fast tests of the exact HAAQI pieces, alignment, pair scoring and the CLI (no pyclarity needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import interrupt_after, write_music

from haaqicli.audio import synth
from haaqicli.reference import compute_haaqi, compute_haaqi_batch, haaqi_loss
from haaqicli.reference.align import _xcorr_peak, align
from haaqicli.reference.haaqi import env_smooth, haaqi_terms
from haaqicli.util.errors import AudioError, ProfileError

SR = 24000
NORMAL = np.zeros(8)
LOSS = np.array([10, 15, 20, 30, 35, 40, 50, 60.0])


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return synth.music(1.0, SR, seed=5)[0].astype(np.float64)


def _level1(x: np.ndarray) -> float:
    return 65 - 20 * np.log10(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize("noise", ["fast", "pyclarity"])
def test_thread_count_does_not_change_scores(ref: np.ndarray, noise: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # signals, bands and noise rows are split across threads; every split must be bit-identical
    processed = synth.add_noise(synth.lowpass(ref, SR, 4000), 15.0, seed=3)
    terms = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("HAAQI_THREADS", threads)
        terms.append(haaqi_terms(processed, ref, SR, SR, LOSS, 1, _level1(ref), seed=7, noise=noise))
    assert terms[0] == terms[1] == terms[2]


def test_loss_drops_3k_and_8k() -> None:
    assert np.allclose(haaqi_loss(LOSS), [10, 15, 20, 30, 40, 50])
    with pytest.raises(ProfileError):
        haaqi_loss([1, 2, 3])


def test_identical_signals_score_near_one(ref: np.ndarray) -> None:
    # equalisation=2: no NAL-R on the reference, so identical inputs are identical at the ear
    score = compute_haaqi(ref, ref, SR, SR, NORMAL, 2, _level1(ref))
    assert score > 0.98


def test_noise_lowers_score_and_more_noise_lowers_more(ref: np.ndarray) -> None:
    clean = compute_haaqi(ref, ref, SR, SR, LOSS, 2, _level1(ref))
    light = compute_haaqi(synth.add_noise(ref, 20).astype(float), ref, SR, SR, LOSS, 2, _level1(ref))
    heavy = compute_haaqi(synth.add_noise(ref, 0).astype(float), ref, SR, SR, LOSS, 2, _level1(ref))
    assert clean > light > heavy
    assert 0.0 <= heavy < 0.5


def test_deterministic_with_seed(ref: np.ndarray) -> None:
    proc = synth.lowpass(ref, SR, 3000).astype(float)
    a = compute_haaqi(proc, ref, SR, SR, LOSS, 1, _level1(ref), seed=3)
    b = compute_haaqi(proc, ref, SR, SR, LOSS, 1, _level1(ref), seed=3)
    assert a == b


def test_sample_rate_mismatch_handled(ref: np.ndarray) -> None:
    from scipy.signal import resample_poly

    ref48 = resample_poly(ref, 2, 1)  # the same music at 48 kHz, used as the reference
    same = compute_haaqi(ref, ref48, SR, 48000, NORMAL, 2, _level1(ref48))
    assert same > 0.95


def test_bad_inputs_raise(ref: np.ndarray) -> None:
    with pytest.raises(AudioError):
        compute_haaqi(ref[:100], ref, SR, SR, NORMAL)
    with pytest.raises(AudioError):
        compute_haaqi(np.stack([ref, ref]), ref, SR, SR, NORMAL)
    bad = ref.copy()
    bad[10] = np.nan
    with pytest.raises(AudioError):
        compute_haaqi(bad, ref, SR, SR, NORMAL)
    with pytest.raises(AudioError):
        compute_haaqi(ref, np.zeros_like(ref), SR, SR, NORMAL)
    with pytest.raises(ValueError):
        compute_haaqi(ref, ref, SR, SR, NORMAL, equalisation=5)


def test_env_smooth_constant_is_constant() -> None:
    out = env_smooth(np.full((3, 2400), 7.0))
    assert np.allclose(out, 7.0)


@pytest.mark.parametrize("delay", [0, 53, -311, 9000])
def test_align_recovers_delay(ref: np.ndarray, delay: int) -> None:
    proc = np.concatenate((np.zeros(delay), ref)) if delay >= 0 else ref[-delay:]
    proc = synth.add_noise(proc, 25).astype(float)
    found, r, p = align(ref, proc, SR)
    assert found == delay
    assert len(r) == len(p)
    assert np.corrcoef(r, p)[0, 1] > 0.98


@pytest.mark.parametrize(("n_ref", "n_proc", "max_lag"), [(400, 400, 50), (300, 520, 37), (520, 300, 37), (90, 60, 148)])
def test_align_correlation_equals_the_direct_sum_at_every_searched_lag(n_ref: int, n_proc: int, max_lag: int) -> None:
    # the transform is only max(len) + max_lag + 1 long: no lag of the signals' support may wrap onto a searched one
    rng = np.random.default_rng(n_ref + n_proc)
    for _ in range(20):
        a, b = rng.standard_normal(n_ref), rng.standard_normal(n_proc)
        lags = np.arange(-max_lag, max_lag + 1)
        direct = [sum(a[m] * b[m + d] for m in range(max(0, -d), min(n_ref, n_proc - d))) for d in lags]
        assert _xcorr_peak(a, b, max_lag) == lags[int(np.argmax(direct))]


def test_pairs_cli_scores_and_reports_errors(tmp_path, ref: np.ndarray) -> None:
    import pandas as pd

    from haaqicli.audio import write_audio
    from haaqicli.cli.reference import reference

    (tmp_path / "ref").mkdir()
    (tmp_path / "proc").mkdir()
    stereo = np.stack([ref, 0.8 * ref]).astype(np.float32)
    write_audio(tmp_path / "ref" / "a.wav", stereo, SR)
    write_audio(tmp_path / "proc" / "a.wav", np.concatenate((np.zeros((2, 240)), stereo), axis=1), SR)
    write_audio(tmp_path / "ref" / "lonely.wav", stereo, SR)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        reference, ["--reference", str(tmp_path / "ref"), str(tmp_path / "proc"), "--out", str(out), "-q"]
    )
    assert result.exit_code == 1, result.output  # the unmatched file failed, the pair did not
    table = pd.read_csv(out)
    ok = table[table.status == "ok"]
    assert set(ok.ear) == {"left", "right"}
    assert np.allclose(ok.delay_s, 240 / SR)
    assert (ok.score > 0.5).all()
    assert (table[table.status == "error"].error.str.contains("no matching processed")).all()

    csv = tmp_path / "pairs.csv"
    csv.write_text("reference,processed\nref/a.wav,proc/a.wav\n")
    result = CliRunner().invoke(reference, ["--pairs", str(csv), "--mix", "mono", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(out).ear) == ["both"]
    # two files: the one pair, the same score as its folder pairing
    pair_scores = table[table.status == "ok"].score.to_numpy()
    files = [str(tmp_path / "ref" / "a.wav"), str(tmp_path / "proc" / "a.wav")]
    result = CliRunner().invoke(reference, ["--reference", *files, "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(pd.read_csv(out).score.to_numpy(), pair_scores)
    result = CliRunner().invoke(reference, ["--reference", files[0], str(tmp_path / "proc"), "-q"])
    assert result.exit_code == 2 and "give two files or two folders, not a file and a folder" in result.output
    result = CliRunner().invoke(reference, ["-q"])
    assert result.exit_code == 2
    if not torch.cuda.is_available():
        result = CliRunner().invoke(reference, ["--pairs", str(csv), "--device", "cuda", "-q"])
        assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_pair_rows_from_the_batched_engine(tmp_path, ref: np.ndarray) -> None:
    """A pair's (profile, ear) clips go to the engine as one batch; rows get their own scores back."""
    from haaqicli.audio import write_audio
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference.batched import compute_haaqi_torch
    from haaqicli.reference.pairs import score_pair

    stereo = np.stack([ref, synth.lowpass(ref, SR, 3000)]).astype(np.float32)
    write_audio(tmp_path / "r.wav", stereo, SR)
    write_audio(tmp_path / "p.wav", stereo * np.array([[1.0], [0.5]], dtype=np.float32), SR)
    profiles = resolve_profiles(["N2", "asymmetric"])
    expected = score_pair(tmp_path / "r.wav", tmp_path / "p.wav", profiles)
    batched = score_pair(tmp_path / "r.wav", tmp_path / "p.wav", profiles, device="cuda",
                         score_batch=lambda items, device: compute_haaqi_torch(items, "cpu"))
    assert [(r["profile"], r["ear"]) for r in batched] == [(r["profile"], r["ear"]) for r in expected]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    assert len({round(r["score"], 4) for r in expected}) == len(expected)


def test_noise_modes(ref: np.ndarray) -> None:
    proc = synth.lowpass(ref, SR, 2000).astype(float)  # silent upper bands: coherence is noise there
    fast = compute_haaqi(proc, ref, SR, SR, LOSS, 1, _level1(ref), seed=1)
    assert fast == compute_haaqi(proc, ref, SR, SR, LOSS, 1, _level1(ref), seed=1)
    exact = compute_haaqi(proc, ref, SR, SR, LOSS, 1, _level1(ref), seed=1, noise="pyclarity")
    assert fast != exact  # a different realisation of the same threshold noise...
    assert abs(fast - exact) < 2e-3  # ...with the same statistics
    with pytest.raises(ValueError):
        compute_haaqi(proc, ref, SR, SR, LOSS, noise="gaussian")


def test_seeded_threshold_noise_is_kept_for_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The held noise of a seed serves later calls with that seed: the same stream as drawing anew,
    a shorter length its prefix, a longer one drawn again; each call's array is its own."""
    from haaqicli.reference import ear

    monkeypatch.setattr(ear, "_noise_held", {})

    def drawn(n: int, seed: int | None = 7) -> np.ndarray:
        ear._noise_held.clear()
        return ear.threshold_noise((4, n), 65.0, seed)[1]

    first = ear.threshold_noise((4, 1000), 65.0, 7)[1]
    assert list(ear._noise_held) == [(8, 7)]
    again = ear.threshold_noise((4, 1000), 65.0, 7)[1]
    shorter = ear.threshold_noise((4, 600), 65.0, 7)[1]
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(shorter, drawn(600))
    np.testing.assert_array_equal(shorter, first[:, :, :600])
    again[:] = 0  # the caller's own copy: the held stream is untouched
    longer = ear.threshold_noise((4, 1500), 65.0, 7)[1]
    np.testing.assert_array_equal(longer[:, :, :1000], first)
    np.testing.assert_array_equal(ear.threshold_noise((4, 1000), 65.0, 7)[1], first)
    assert not np.array_equal(ear.threshold_noise((4, 1000), 65.0, 8)[1], first)
    ear._noise_held.clear()
    ear.threshold_noise((4, 1000), 65.0, None)
    assert ear._noise_held == {}  # an unseeded draw is never reused


@pytest.mark.parametrize("max_lag_ms", [5.0, 100.0])
def test_best_lags_match_exact_search(max_lag_ms: float) -> None:
    from haaqicli.reference.ear import _best_lags, _block_plan

    rng = np.random.default_rng(3)
    n, lags = 24000, int(round(max_lag_ms * 24))
    ref = np.abs(rng.standard_normal((4, n))).cumsum(axis=1) % 7.0  # envelope-like, large DC
    out = np.roll(ref, [3, -40, 77, 0], axis=1) + 0.3 * rng.standard_normal((4, n))
    if max_lag_ms == 5.0:
        assert _block_plan(n, lags) is not None  # the overlap-block path is exercised
    expected = []
    for r, o in zip(ref, out, strict=True):  # direct float64 sums, L = -lags+1 .. lags, first maximum wins
        window = [np.dot(r[lag:], o[: n - lag]) if lag >= 0 else np.dot(r[: n + lag], o[-lag:])
                  for lag in range(-lags + 1, lags + 1)]
        expected.append(int(np.argmax(window)) - lags + 1)
    assert list(_best_lags(ref, out, max_lag_ms)) == expected


def test_segment_bounds() -> None:
    from haaqicli.reference.pairs import segment_bounds

    assert segment_bounds(1000, 100, None) == [(0, 1000)]
    assert segment_bounds(1000, 100, 4.5) == [(0, 450), (450, 1000)]  # a 1-s tail joins the segment before
    assert segment_bounds(1000, 100, 3.0) == [(0, 300), (300, 600), (600, 1000)]
    assert segment_bounds(1000, 100, 2.5) == [(0, 250), (250, 500), (500, 750), (750, 1000)]


def test_long_pairs_segmented_or_refused_without_killing_the_batch(tmp_path, ref: np.ndarray,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair too long for the memory is an error row (running out of memory would kill the whole
    batch); --segment-seconds scores it in segments: length-weighted mean and minimum."""
    from haaqicli.audio import decode, write_audio
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference import haaqi
    from haaqicli.reference.pairs import score_pair, score_pairs

    long_ref = np.concatenate((ref, 0.5 * ref)).astype(np.float32)
    write_audio(tmp_path / "r.wav", long_ref, SR)
    write_audio(tmp_path / "p.wav", synth.lowpass(long_ref, SR, 3000).astype(np.float32), SR)
    profiles = resolve_profiles(["N2"])
    whole = score_pair(tmp_path / "r.wav", tmp_path / "p.wav", profiles)[0]
    assert whole["status"] == "ok" and whole["segments"] == 1 and whole["score_min"] == whole["score"]

    rows = score_pair(tmp_path / "r.wav", tmp_path / "p.wav", profiles, segment_seconds=1.0)
    r, p = (decode(tmp_path / name)[0][0].astype(np.float64) for name in ("r.wav", "p.wav"))
    halves = [compute_haaqi(p[a:b], r[a:b], SR, SR, profiles[0].ear("left"), 1, _level1(r))
              for a, b in [(0, SR), (SR, 2 * SR)]]
    assert rows[0]["segments"] == 2
    assert rows[0]["score"] == pytest.approx(np.mean(halves), abs=1e-9)
    assert rows[0]["score_min"] == pytest.approx(min(halves), abs=1e-9)

    monkeypatch.setattr(haaqi, "available_memory_bytes", lambda: 10**6)
    table = score_pairs([(tmp_path / "r.wav", tmp_path / "p.wav")], profiles, device="cpu")
    assert (table.status == "error").all() and table.error.str.contains("too long for the exact HAAQI").all()
    table = score_pairs([(tmp_path / "r.wav", tmp_path / "p.wav")], profiles, device="cpu", segment_seconds=1.0)
    assert (table.status == "error").all()  # 1-s segments do not fit in 1 MB either: still refused, clearly
    monkeypatch.setattr(haaqi, "available_memory_bytes", lambda: 10**9)
    table = score_pairs([(tmp_path / "r.wav", tmp_path / "p.wav")], profiles, device="cpu", segment_seconds=1.0)
    assert (table.status == "ok").all() and (table.segments == 2).all()


@pytest.mark.parametrize("case", ["delay", "periodic"])
def test_input_align_matches_exact_search(case: str) -> None:
    """The broadband alignment (float32 FFT, near-maximal lags re-checked in float64) picks the lag
    of a direct float64 search (the first maximum of |c|), also for a periodic signal whose lags a
    period apart correlate nearly equally."""
    from haaqicli.reference.ear import FS, input_align

    rng = np.random.default_rng(7)
    n = 3000
    x = rng.standard_normal(n)
    if case == "delay":
        y = np.concatenate((np.zeros(37), x[:-37])) + 0.5 * rng.standard_normal(n)
    else:  # period 100: the lags 100 samples apart differ only by their overlap
        x = np.tile(rng.standard_normal(100), n // 100)
        y = np.roll(x, 30)
    a, b = x - x.mean(), y - y.mean()
    c = [abs(np.dot(a[max(0, j - n + 1) : n + min(0, j - n + 1)], b[max(0, n - 1 - j) : n + min(0, n - 1 - j)]))
         for j in range(2 * n - 1)]
    delay = int(np.rint((n - 1) - int(np.argmax(c)) - 2 * FS / 1000.0))
    expected_y = np.concatenate((y[delay:], np.zeros(delay))) if delay > 0 else np.concatenate((np.zeros(-delay), y[: n + delay]))
    _, aligned = input_align(x, y)
    ax = np.abs(x)
    above = np.nonzero(ax > 0.001 * ax.max())[0]
    np.testing.assert_array_equal(aligned, expected_y[above[0] : above[-1] + 1])


def test_nested_parallel_calls_run_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    # a task on the pool that itself asks for threads must not wait on the (busy) pool: no deadlock
    from haaqicli.reference.parallel import map_rows, run_all

    monkeypatch.setenv("HAAQI_THREADS", "2")
    nested = run_all(lambda: run_all(lambda: 1, lambda: 2), lambda: map_rows(lambda a, b: (a, b), 4))
    assert nested == [[1, 2], [(0, 2), (2, 4)]]


def test_ears_with_one_audiogram_share_one_computation(tmp_path, ref: np.ndarray,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A mono pair for a symmetric profile is one exact-HAAQI call, not one per ear; an asymmetric
    profile still gets both; two profiles with the same audiogram share theirs. Scores are those of
    one call per ear."""
    from haaqicli.audio import decode, write_audio
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference.pairs import score_pair

    write_audio(tmp_path / "r.wav", ref.astype(np.float32), SR)
    write_audio(tmp_path / "p.wav", synth.lowpass(ref, SR, 3000).astype(np.float32), SR)
    calls: list[int] = []

    def counting(items, device):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return compute_haaqi_batch(items, device=device)

    from dataclasses import replace

    profiles = resolve_profiles(["N2", "asymmetric"])
    profiles.append(replace(profiles[0], name="N2 again"))
    assert profiles[0].symmetric and not profiles[1].symmetric
    rows = score_pair(tmp_path / "r.wav", tmp_path / "p.wav", profiles, score_batch=counting)
    assert calls == [1 + 2]  # N2 once for both ears and both N2 profiles; asymmetric: left and right
    r, p = (decode(tmp_path / name)[0][0].astype(np.float64) for name in ("r.wav", "p.wav"))
    level1 = _level1(r)
    per_ear = [compute_haaqi(p, r, SR, SR, profiles[1].ear(side), 1, level1) for side in ("left", "right")]
    assert rows[1]["score"] == pytest.approx(np.mean(per_ear), abs=1e-12)
    assert rows[0]["score"] == rows[2]["score"] == pytest.approx(
        compute_haaqi(p, r, SR, SR, profiles[0].ear("left"), 1, level1), abs=1e-12)


def test_pairs_in_worker_processes_match_one_process(tmp_path, ref: np.ndarray) -> None:
    """Pairs spread over worker processes give the rows of the one-process path, in input order, and
    stream them to --out; each worker gets its share of the memory guard."""
    import pandas as pd

    from haaqicli.audio import write_audio
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference.pairs import score_pairs

    pairs = []
    for i in range(3):
        write_audio(tmp_path / f"r{i}.wav", ref.astype(np.float32), SR)
        write_audio(tmp_path / f"p{i}.wav", synth.lowpass(ref, SR, 2000 + 1000 * i).astype(np.float32), SR)
        pairs.append((tmp_path / f"r{i}.wav", tmp_path / f"p{i}.wav"))
    pairs.append((tmp_path / "r0.wav", None))
    profiles = resolve_profiles(["N2"])
    seen: list[tuple[float, int]] = []
    alone = score_pairs(pairs, profiles, workers=1, device="cpu")
    together = score_pairs(pairs, profiles, workers=2, device="cpu", out=tmp_path / "rows.csv",
                           progress=lambda seconds, total, files, n: seen.append((seconds, files)))
    pd.testing.assert_frame_equal(alone, together)
    assert list(together.processed[:3]) == [str(p) for _, p in pairs[:3]]
    assert pd.read_csv(tmp_path / "rows.csv").score.tolist()[:3] == pytest.approx(together.score.tolist()[:3])
    assert seen[-2] == (pytest.approx(3.0), 4) and seen[-1][0] == -1  # 3 s of audio in 4 pairs, then closed


def test_memory_guard_divides_by_the_workers(tmp_path, ref: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from haaqicli.audio import write_audio
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.reference import haaqi
    from haaqicli.reference.pairs import score_pair

    write_audio(tmp_path / "r.wav", ref.astype(np.float32), SR)
    need = haaqi.estimated_peak_bytes(len(ref), SR)
    monkeypatch.setattr(haaqi, "available_memory_bytes", lambda: int(need * 1.5))
    profiles = resolve_profiles(["N2"])
    assert score_pair(tmp_path / "r.wav", tmp_path / "r.wav", profiles)[0]["status"] == "ok"
    shared = score_pair(tmp_path / "r.wav", tmp_path / "r.wav", profiles, memory_share=2)[0]
    assert shared["status"] == "error" and "for each of 2 workers" in shared["error"]


# ------------------------------------------------------------------------------------------ --resume, datasets


def _pair_folders(tmp_path):  # type: ignore[no-untyped-def]
    """Three pairs of 1-s clips (one stereo: two ears) and a processed file without a reference."""
    refs, procs = tmp_path / "ref", tmp_path / "proc"
    write_music(refs / "a.wav", seconds=1.0, channels=2, seed=1)
    write_music(procs / "a.wav", seconds=1.0, channels=2, seed=11)
    for seed, name in ((2, "b"), (3, "c")):
        write_music(refs / f"{name}.wav", seconds=1.0, seed=seed)
        write_music(procs / f"{name}.wav", seconds=1.0, seed=10 + seed)
    write_music(procs / "lonely.wav", seconds=1.0, seed=5)  # no reference: error rows in every run
    return ["reference", "--reference", str(refs), str(procs), "--profile", "mild", "--profile", "normal",
            "--device", "cpu", "--workers", "1", "-q"]


def _run(*args: str) -> tuple[int, str]:
    from haaqicli.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _same_rows(expected, actual, ordered: bool = True) -> None:  # type: ignore[no-untyped-def]
    key = ["processed", "profile", "ear"]
    if not ordered:
        expected, actual = (frame.sort_values(key).reset_index(drop=True) for frame in (expected, actual))
    assert not actual.fillna({"ear": ""}).duplicated(key).any()  # every row once
    assert actual[[*key, "status"]].fillna("").values.tolist() == expected[[*key, "status"]].fillna("").values.tolist()
    np.testing.assert_allclose(actual["score"], expected["score"], atol=1e-9, equal_nan=True)


def test_reference_resume_scores_only_the_missing_rows(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume keeps the ok rows of --out, scores each pair for the profiles it lacks, and scores error
    rows again (the new rows replace them); the table equals an uninterrupted run's, in input order."""
    import pandas as pd

    from haaqicli.output.tables import read_table, write_table
    from haaqicli.reference import pairs as pair_scoring

    args = _pair_folders(tmp_path)
    complete = tmp_path / "complete.csv"
    assert _run(*args, "--out", str(complete))[0] == 1  # the lonely file fails
    expected = read_table(complete)
    name = expected["processed"].map(lambda path: Path(path).name)
    # an earlier, stopped run: a complete, b for mild only, c one error row
    earlier = pd.concat([expected[name == "a.wav"], expected[(name == "b.wav") & (expected["profile"] == "mild")],
                         expected[name == "c.wav"].head(1).assign(status="error", error="killed", score=np.nan, ear="")])
    out = tmp_path / "resumed.csv"
    write_table(earlier, out)
    scored: list[tuple[str, list[str]]] = []
    original = pair_scoring.score_pair

    def counted(reference, processed, profiles, *args, **kwargs):  # type: ignore[no-untyped-def]
        scored.append((Path(processed).name, [p.name for p in profiles]))
        return original(reference, processed, profiles, *args, **kwargs)

    monkeypatch.setattr(pair_scoring, "score_pair", counted)
    code, output = _run(*args, "--out", str(out), "--resume")
    assert code == 1, output
    assert scored == [("b.wav", ["normal"]), ("c.wav", ["mild", "normal"]), ("lonely.wav", ["mild", "normal"])]
    _same_rows(expected, read_table(out))
    scored.clear()  # a finished table: only the failed pair again, nothing duplicated
    assert _run(*args, "--out", str(out), "--resume")[0] == 1
    assert scored == [("lonely.wav", ["mild", "normal"])]
    _same_rows(expected, read_table(out))
    # another level is another score: nothing kept
    assert _run(*args, "--out", str(out), "--resume", "--spl", "70")[0] == 1
    assert len(scored) == 5 and (read_table(out)["spl"] == 70).all()


@pytest.mark.parametrize("out_name", ["pairs.parquet", "pairs/"])
def test_reference_resume_after_an_interrupted_run(tmp_path, monkeypatch: pytest.MonkeyPatch, out_name: str) -> None:
    """Ctrl-C keeps the finished pairs in --out (a table or a partitioned dataset); --resume completes it
    with every row once."""
    from haaqicli.output.tables import dataset_parts, read_table
    from haaqicli.util.progress import AudioProgress

    args = _pair_folders(tmp_path)
    complete = tmp_path / "complete.csv"
    assert _run(*args, "--out", str(complete))[0] == 1
    out = f"{tmp_path}/{out_name}"
    with monkeypatch.context() as patch:
        interrupt_after(patch, AudioProgress, "advance", "files", 2)  # two pairs finished
        code, output = _run(*args, "--out", out)
    assert code == 130 and "interrupted: 6 finished rows kept in" in output, output  # a: 2 ears x 2, b: 2
    assert read_table(out)["processed"].nunique() == 2
    code, output = _run(*args, "--out", out, "--resume")
    assert code == 1, output
    dataset = out.endswith("/")
    _same_rows(read_table(complete), read_table(out), ordered=not dataset)
    if dataset:
        assert "10 rows in" in output and len(dataset_parts(out)) >= 2  # the kept part and the new rows


def test_reference_dataset_holds_only_failed_rows(tmp_path) -> None:
    """With a dataset --out the rows leave the client: score_pairs returns only the failed ones."""
    from haaqicli.audiogram import resolve_profiles
    from haaqicli.output.tables import read_table
    from haaqicli.reference.pairs import pair_directories, score_pairs

    _pair_folders(tmp_path)
    pairs = pair_directories(tmp_path / "ref", tmp_path / "proc")
    returned = score_pairs(pairs, resolve_profiles(["mild"]), device="cpu", workers=1, out=f"{tmp_path}/rows/")
    assert list(returned["status"]) == ["error"] and returned["processed"].str.endswith("lonely.wav").all()
    assert len(read_table(tmp_path / "rows")) == 5  # a: two ears, b, c, lonely


def test_reference_resume_needs_out(tmp_path) -> None:
    code, output = _run(*_pair_folders(tmp_path), "--resume")
    assert code == 2 and "--resume needs --out" in output and "Traceback" not in output
