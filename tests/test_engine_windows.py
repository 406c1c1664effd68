"""Window planning, aggregation and timeline stitching of the scoring engine (no model needed)."""

import numpy as np
import pytest

from haaqicli.audio import plan_windows
from haaqicli.engine import aggregate, ears_for, stitch_timeline
from haaqicli.scoring import ScoreOptions


def test_windows_are_full_length_and_cover_the_file():
    sr = 1000
    plan = plan_windows(20_500, 6 * sr, int(4.5 * sr))
    assert plan[0][0] == 0
    assert plan[-1][1] == 20_500  # last window ends at the end of the file
    assert all(end - start == 6000 for start, end in plan)
    # consecutive windows overlap (or touch): nothing is left out
    assert all(b[0] <= a[1] for a, b in zip(plan, plan[1:], strict=False))
    assert [s for s, _ in plan[:-1]] == [0, 4500, 9000, 13500]


def test_short_file_is_one_window_and_exact_fit_is_one_window():
    assert plan_windows(2500, 6000, 4500) == [(0, 2500)]
    assert plan_windows(6000, 6000, 4500) == [(0, 6000)]
    # exactly one hop beyond: no duplicate final window
    assert plan_windows(10_500, 6000, 4500) == [(0, 6000), (4500, 10_500)]


def test_two_hour_file_plan_is_small():
    plan = plan_windows(2 * 3600 * 48_000, 6 * 48_000, int(4.5 * 48_000))
    assert len(plan) == pytest.approx(2 * 3600 / 4.5, abs=2)


def test_aggregate_length_weighted_mean_min_p10_and_worst_window():
    scores = np.array([0.9, 0.2, 0.8])
    starts = np.array([0.0, 4.5, 9.0])
    ends = np.array([6.0, 10.5, 12.0])  # last window shorter: less weight
    stats = aggregate(scores, starts, ends)
    expected = (0.9 * 6 + 0.2 * 6 + 0.8 * 3) / 15
    assert stats["score"] == pytest.approx(expected)
    assert stats["score_min"] == pytest.approx(0.2)
    assert stats["score_p10"] == pytest.approx(np.percentile(scores, 10))
    assert (stats["worst_start_s"], stats["worst_end_s"]) == (4.5, 10.5)


def test_timeline_has_no_duplicated_overlap_and_is_sorted():
    starts = np.array([0.0, 4.5, 9.0])
    ends = starts + 6.0
    frames = np.stack([np.full(60, k, dtype=np.float32) for k in range(3)])
    times, values = stitch_timeline(frames, starts, ends)
    assert np.all(np.diff(times) > 0)
    assert len(times) < frames.size  # overlapping frames were not all kept
    assert times.min() < 0.2 and times.max() > 14.8
    # each time point takes the window whose centre is nearest
    assert values[np.argmin(np.abs(times - 1.0))] == 0
    assert values[np.argmin(np.abs(times - 7.5))] == 1
    assert values[np.argmin(np.abs(times - 14.0))] == 2


def test_ears_for_channels_and_mix():
    assert ears_for(1, "stereo") == ["both"]
    assert ears_for(2, "stereo") == ["left", "right"]
    assert ears_for(2, "mono") == ["both"]


def test_windows_of_many_files_share_batches_without_changing_scores(music_folder, use_tiny_weights):
    """Cross-file batching (units spanning batches, mixed window lengths) gives each file the scores it
    gets alone, batch by batch."""
    from pathlib import Path

    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import score_inputs
    from haaqicli.scoring import ScoreOptions

    profiles = [BUILTIN_PROFILES["mild"], BUILTIN_PROFILES["N5"]]
    # the CPU's kernels: any batch shape gives the same scores (CUDA, at one --batch-size: the test below)
    together = score_inputs([music_folder], profiles, ScoreOptions(batch_size=3, device="cpu"), progress=False).table
    for path in sorted(Path(music_folder).rglob("*.*")):
        if path.name.startswith(".") or path.suffix == ".txt":
            continue
        alone = score_inputs([path], profiles, ScoreOptions(batch_size=1, device="cpu"), progress=False).table
        mine = together[together["path"] == str(path)].reset_index(drop=True)
        assert len(mine) == len(alone) > 0
        assert list(mine["ear"]) == list(alone["ear"]) and list(mine["profile"]) == list(alone["profile"])
        np.testing.assert_allclose(mine["score"], alone["score"], atol=1e-6)
        np.testing.assert_allclose(mine["score_min"], alone["score_min"], atol=1e-6)


def test_file_scores_equal_the_api_on_the_same_waveform_at_44k(tmp_path, use_tiny_weights):
    """The engine resamples the decoded stream and cuts windows at the model rate, exactly as
    HAAQIPredictor does with a whole waveform: the same file gives the same score both ways."""
    import soundfile as sf
    import torch

    from haaqicli import audio
    from haaqicli.api import HAAQIPredictor
    from haaqicli.audio import synth
    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import prepare_file, score_inputs
    from haaqicli.scoring import ScoreOptions

    sr = 44100
    x = synth.music(14.2, sr, seed=4)[0].astype(np.float32)
    path = tmp_path / "song.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    # both on the CPU: this compares resampling and windowing, not devices (CUDA: test_cuda_scores_...)
    row = score_inputs([path], [BUILTIN_PROFILES["normal"]], ScoreOptions(device="cpu"), progress=False).table.iloc[0]
    predictor = HAAQIPredictor.from_pretrained("distilled", weights_dir=use_tiny_weights)
    gain = audio.presentation_gain(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 65.0)  # the file's level
    with torch.inference_mode():
        expected = predictor(torch.from_numpy(x * np.float32(gain))[None], torch.zeros(1, 8), sr)
    assert row["status"] == "ok"
    assert row["score"] == pytest.approx(float(expected[0]), abs=2e-6)
    # and the very samples each window holds (a window resampled on its own differs at its edges)
    prepared = prepare_file(audio.discover([path])[0], ScoreOptions(device="cpu"))
    wave, _ = predictor.prepare(torch.from_numpy(x * np.float32(gain))[None], torch.zeros(1, 8), sr, None)
    spans = audio.plan_windows(wave.shape[-1], 144000, 108000)
    assert [(round(a * 24000), round(b * 24000)) for a, b in zip(prepared.starts_s, prepared.ends_s, strict=True)] == spans
    for window, (start, end) in zip(prepared.windows[0], spans, strict=True):
        np.testing.assert_allclose(window, wave[0, start:end].numpy(), atol=1e-6)


def test_one_head_pass_per_batch_gives_each_audiogram_its_own_scores(use_tiny_weights):
    """Units with repeated and distinct audiograms share one head pass; every (audiogram, window) score
    equals the model run on that pair alone."""
    import torch

    from haaqicli.models.registry import load_model
    from haaqicli.scoring.network import WindowScorer

    model, _ = load_model("distilled", device="cpu", weights_dir=use_tiny_weights)
    rng = np.random.default_rng(0)
    waves = [rng.normal(size=(n, 24000)).astype(np.float32) * 0.1 for n in (3, 2)]
    grams = [np.array([[0.0] * 8, [40.0] * 8, [0.0] * 8]), np.array([[10.0, 20, 30, 40, 50, 60, 70, 80]])]
    results = WindowScorer(model, torch.device("cpu"), batch_size=4).score_units(list(zip(waves, grams, strict=True)))
    with torch.inference_mode():
        for (clip, frames), wave, gram in zip(results, waves, grams, strict=True):
            assert clip.shape == (len(gram), len(wave)) and frames.shape[:2] == (len(gram), len(wave))
            for p, levels in enumerate(gram):
                for w in range(len(wave)):
                    out = model(torch.from_numpy(wave[w : w + 1]), torch.tensor(levels, dtype=torch.float32)[None])
                    assert clip[p, w] == pytest.approx(float(out.clip[0]), abs=1e-5)
                    np.testing.assert_allclose(frames[p, w], out.frames[0].numpy(), atol=1e-5)
    assert not np.allclose(results[0][0][0], results[0][0][1])  # the audiograms matter
    np.testing.assert_array_equal(results[0][0][0], results[0][0][2])  # equal audiograms, equal scores


def test_fixed_shape_batches_give_the_scores_of_unpadded_ones(use_tiny_weights):
    """The padding used on CUDA (every encoder batch and head chunk batch_size rows) leaves each
    window's scores as they are: checked on the CPU, where both forms run."""
    import torch

    from haaqicli.models.registry import load_model
    from haaqicli.scoring.network import WindowScorer

    model, _ = load_model("distilled", device="cpu", weights_dir=use_tiny_weights)
    rng = np.random.default_rng(1)
    units = [(rng.normal(size=(n, 24000)).astype(np.float32) * 0.1, rng.uniform(0, 80, size=(p, 8)))
             for n, p in ((5, 2), (1, 3), (2, 1))]
    plain = WindowScorer(model, torch.device("cpu"), batch_size=4)
    padded = WindowScorer(model, torch.device("cpu"), batch_size=4)
    padded.fixed_shapes = True
    for (clip, frames), (clip_p, frames_p) in zip(plain.score_units(units), padded.score_units(units), strict=True):
        np.testing.assert_allclose(clip_p, clip, atol=1e-6)
        np.testing.assert_allclose(frames_p, frames, atol=1e-6)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_cuda_scores_of_a_file_alone_equal_its_scores_in_a_folder(music_folder, use_tiny_weights):
    """On CUDA (fixed batch shapes) a file's scores do not depend on its batch neighbours, and they
    agree with the CPU's (2e-5 apart for the shipped models on an H200)."""
    from pathlib import Path

    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import score_inputs
    from haaqicli.scoring import ScoreOptions

    profiles = [BUILTIN_PROFILES["mild"], BUILTIN_PROFILES["N5"]]
    options = ScoreOptions(batch_size=3, device="cuda")
    together = score_inputs([music_folder], profiles, options, progress=False).table
    on_cpu = score_inputs([music_folder], profiles, ScoreOptions(batch_size=3, device="cpu"), progress=False).table
    np.testing.assert_allclose(together["score"], on_cpu["score"], atol=1e-4)
    for path in sorted(Path(music_folder).rglob("*.*")):
        if path.name.startswith(".") or path.suffix == ".txt":
            continue
        alone = score_inputs([path], profiles, options, progress=False).table
        mine = together[together["path"] == str(path)].reset_index(drop=True)
        np.testing.assert_allclose(mine["score"], alone["score"], atol=1e-6)
        np.testing.assert_allclose(mine["score_min"], alone["score_min"], atol=1e-6)


def test_long_files_stream_with_the_scores_of_held_windows(tmp_path, use_tiny_weights):
    """A file longer than hold_seconds is decoded twice (level, then windows scored as they stream):
    same rows and timelines as holding its windows, and the progress moves within the file."""
    import soundfile as sf

    from haaqicli.audio import synth
    from haaqicli.audiogram import BUILTIN_PROFILES
    from haaqicli.engine import score_inputs
    from haaqicli.scoring import ScoreOptions

    sf.write(tmp_path / "long.flac", synth.music(40.0, 44100, channels=2, seed=5).T, 44100)
    sf.write(tmp_path / "short.wav", synth.music(3.0, 24000, seed=6)[0], 24000)
    profiles = [BUILTIN_PROFILES["mild"], BUILTIN_PROFILES["N5"]]
    held = score_inputs([tmp_path], profiles, ScoreOptions(batch_size=4), progress=False)
    seen: list[tuple[float, int]] = []
    streamed = score_inputs([tmp_path], profiles, ScoreOptions(batch_size=4, hold_seconds=10.0),
                            progress=lambda seconds, total, files, n: seen.append((seconds, files)))
    columns = ["file", "profile", "ear", "score", "score_min", "score_p10", "worst_start_s", "status"]
    assert list(streamed.table["status"]) == ["ok"] * 6
    np.testing.assert_allclose(streamed.table["score"], held.table["score"], atol=1e-6)
    assert streamed.table[columns].drop(columns=["score", "score_min", "score_p10"]).equals(
        held.table[columns].drop(columns=["score", "score_min", "score_p10"]))
    np.testing.assert_allclose(streamed.table["score_min"], held.table["score_min"], atol=1e-6)
    for key, (times, values) in held.timelines.items():
        np.testing.assert_array_equal(streamed.timelines[key][0], times)
        np.testing.assert_allclose(streamed.timelines[key][1], values, atol=1e-6)
    within = [seconds for seconds, files in seen if files == 0 and 0 < seconds < 40]
    assert len(set(within)) >= 2  # steps inside the long file before it was done
    assert seen[-1][0] == -1 and seen[-2][1] == 2
    assert seen[-2][0] == pytest.approx(43.0, abs=0.01)


def test_streamed_files_keep_memory_flat(tmp_path, use_tiny_weights):
    """What a streamed file holds does not grow with its length: the chunks handed to the scorer
    have at most a batch of windows."""
    import soundfile as sf

    from haaqicli import engine
    from haaqicli.audio import synth
    from haaqicli.audiogram import BUILTIN_PROFILES

    sf.write(tmp_path / "long.wav", synth.music(60.0, 24000, seed=1)[0], 24000)
    largest = []
    original = engine.window_chunks

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        for chunk in original(*args, **kwargs):
            largest.append(chunk[0].shape[1])
            yield chunk

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "window_chunks", spy)
        run = engine.score_inputs([tmp_path], [BUILTIN_PROFILES["mild"]],
                                  ScoreOptions(batch_size=3, hold_seconds=10.0), progress=False)
    assert run.table["status"].tolist() == ["ok"]
    assert len(largest) >= 4 and max(largest) == 3


def test_files_decoded_ahead_come_in_input_order_and_stop_on_interrupt(monkeypatch):
    """The decoding thread runs ahead of the model, yet files come in input order (a slow first file
    does not let the next overtake it), and after Ctrl-C no queued file starts decoding."""
    import time

    import haaqicli.scoring.prepare as prepare
    from haaqicli.audio import InputFile

    started: list[str] = []

    def slow_prepare(item, options, sample_rate):
        started.append(item.path)
        time.sleep(0.2 if item.path == "a" else 0.0)
        if item.path == "c":
            raise KeyboardInterrupt
        return prepare.PreparedFile(input=item)

    monkeypatch.setattr(prepare, "prepare_file", slow_prepare)
    items = [InputFile(path=name, root=".", relative=name) for name in "abcdef"]
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for prepared in prepare._decoded_ahead(items, ScoreOptions(), 16000):
            seen.append(prepared.input.path)
    assert seen == ["a", "b"]
    assert len(started) <= 2 + prepare.DECODE_AHEAD  # c raised; at most the look-ahead beyond it started
    assert "f" not in started
