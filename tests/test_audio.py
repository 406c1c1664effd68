"""haaqicli.audio: discovery, decoding (all formats), resampling, level and windows."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from synth import HAVE_FFMPEG, chord, encode_with_ffmpeg, noise_burst, tone, write_wav

from haaqicli import audio
from haaqicli.audio import (
    ArraySource,
    AudioInfo,
    StreamResampler,
    channel_rms,
    decode,
    discover,
    iter_windows,
    open_audio,
    presentation_gain,
    resample,
    resampled_length,
    write_audio,
)
from haaqicli.constants import REFERENCE_RMS
from haaqicli.errors import AudioError, ToolMissingError

needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs ffmpeg")


# ------------------------------------------------------------------------------------ discovery


def test_discover_walks_sorted_skips_hidden_and_non_audio(tmp_path: Path) -> None:
    x = tone(sr=8000, seconds=0.2)
    for rel in ["b.wav", "a/z.flac", "a/b/c.WAV", "a/readme.txt", ".hidden.wav", ".git/x.wav", "a/.cache/y.wav"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            p.write_text("hi")
        else:
            sf.write(str(p), x.T, 8000, format="FLAC" if rel.endswith(".flac") else "WAV")
    found = discover([tmp_path])
    assert [f.relative for f in found] == ["a/b/c.WAV", "a/z.flac", "b.wav"]
    assert all(f.root == tmp_path for f in found)
    assert found[0].path == tmp_path / "a" / "b" / "c.WAV"
    # deterministic and stable
    assert discover([tmp_path]) == found


def test_discover_direct_files_keep_order_and_are_deduplicated(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "d" / "a.wav", tone(sr=8000, seconds=0.1), 8000)
    odd = tmp_path / "notes.data"  # files given explicitly are taken regardless of extension
    odd.write_bytes(b"x")
    found = discover([odd, tmp_path / "d", a])
    assert [(f.relative, f.root) for f in found] == [("notes.data", tmp_path), ("a.wav", tmp_path / "d")]


def test_discover_survives_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "music"
    write_wav(root / "album" / "t1.wav", tone(sr=8000, seconds=0.1), 8000)
    os.symlink(root, root / "album" / "loop")  # album/loop -> music (a cycle)
    os.symlink(root / "album", root / "again")  # second route to the same folder
    found = discover([root])
    names = [f.path.name for f in found]
    assert names == ["t1.wav"]


def test_discover_missing_path_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nope\.wav: no such file or directory$"):
        discover([tmp_path / "nope.wav"])


# ------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("sr,channels", [(8000, 1), (44100, 2), (192000, 2)])
def test_wav_roundtrip_rates_and_channels(tmp_path: Path, sr: int, channels: int) -> None:
    x = chord(sr=sr, seconds=0.5, channels=channels)
    path = write_wav(tmp_path / "x.wav", x, sr, subtype="FLOAT")
    source = open_audio(path)
    assert source.info == AudioInfo(sr, channels, x.shape[1], 0.5, "wav/float")
    y, rate = decode(path)
    assert rate == sr and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-7)


@needs_ffmpeg
@pytest.mark.parametrize("codec,backend", [("mp3", "soundfile"), ("opus", "soundfile"), ("vorbis", "soundfile"),
                                           ("flac", "soundfile"), ("aiff", "soundfile"), ("aac", "ffmpeg"),
                                           ("alac", "ffmpeg")])
def test_codecs_decode_with_expected_backend(tmp_path: Path, codec: str, backend: str) -> None:
    sr = 48000
    x = tone(1000, sr=sr, seconds=1.0, amplitude=0.3, channels=2)
    wav = write_wav(tmp_path / "src.wav", x, sr)
    encoded = encode_with_ffmpeg(wav, codec, "128k" if codec in {"mp3", "opus", "aac", "vorbis"} else None)
    source = open_audio(encoded)
    assert source.backend == backend
    assert source.info.sample_rate == sr and source.info.channels == 2
    assert source.info.duration_s == pytest.approx(1.0, abs=0.06)
    y = np.concatenate(list(source.blocks(4096)), axis=1)
    assert y.shape[0] == 2 and abs(y.shape[1] - sr) < 0.06 * sr
    # the right level and the right pitch came back
    rms = channel_rms(source)
    np.testing.assert_allclose(rms, [0.3 / np.sqrt(2), 0.8 * 0.3 / np.sqrt(2)], rtol=0.1)
    spectrum = np.abs(np.fft.rfft(y[0, sr // 4 : sr // 4 + sr // 2]))
    assert abs(np.argmax(spectrum) * 2 - 1000) <= 4


@needs_ffmpeg
def test_multichannel_is_downmixed_to_stereo(tmp_path: Path) -> None:
    x = np.repeat(tone(440, sr=16000, seconds=0.5, amplitude=0.2), 6, axis=0)
    path = write_wav(tmp_path / "surround.wav", x, 16000)
    source = open_audio(path)
    assert source.backend == "ffmpeg" and source.info.channels == 2 and "6 ch" in source.info.codec
    y = np.concatenate(list(source.blocks()), axis=1)
    assert y.shape == (2, 8000) and np.all(channel_rms(y) > 0.05)


def test_blocks_are_bounded_and_complete(tmp_path: Path) -> None:
    x = noise_burst(sr=8000, seconds=3.0, channels=2)
    path = write_wav(tmp_path / "n.wav", x, 8000, subtype="FLOAT")
    blocks = list(open_audio(path).blocks(1000))
    assert all(b.shape[1] <= 1000 and b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), x)


@needs_ffmpeg
def test_ffmpeg_pipe_streams_in_blocks_and_stops_early(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "c.wav", chord(sr=22050, seconds=2.0, channels=2), 22050)
    source = open_audio(encode_with_ffmpeg(wav, "aac", "96k"))
    gen = source.blocks(1024)
    first = next(gen)
    assert first.shape == (2, 1024)
    gen.close()  # must kill ffmpeg, not hang


def test_empty_corrupt_non_audio_and_silent_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file \(0 bytes\)"):
        open_audio(empty)
    zero = tmp_path / "zero.wav"
    sf.write(str(zero), np.zeros((0, 1), dtype=np.float32), 8000)
    with pytest.raises(AudioError, match=r"zero\.wav: empty audio \(0 frames\)"):
        open_audio(zero)
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.mp3: not (a decodable|an) audio file"):
        open_audio(text)
    rng = np.random.default_rng(0)
    for name, magic in [("corrupt.flac", b"fLaC"), ("corrupt.wav", b"RIFF\x10\x00\x00\x00WAVEfmt "),
                        ("corrupt.ogg", b"OggS")]:
        (tmp_path / name).write_bytes(magic + rng.bytes(3000))
        with pytest.raises(AudioError, match=rf"{name}: not a decodable audio file \(.+\)$"):
            open_audio(tmp_path / name)
    silent = write_wav(tmp_path / "silent.wav", np.zeros((2, 8000)), 8000)
    source = open_audio(silent)
    with pytest.raises(AudioError, match=r"silent\.wav: silent \(RMS -inf dBFS, below -120 dBFS\)"):
        channel_rms(source)
    assert np.all(channel_rms(source, allow_silent=True) == 0)
    for error in (AudioError,):
        with pytest.raises(error) as info:
            open_audio(tmp_path / "missing.wav")
        assert "\n" not in str(info.value)


def test_truncated_wav_still_decodes_what_is_there(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "t.wav", tone(sr=8000, seconds=1.0), 8000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    y, sr = decode(path)
    assert sr == 8000 and 3000 < y.shape[1] <= 8000


def test_low_sample_rate_rejected(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "low.wav", tone(300, sr=4000, seconds=0.5), 4000)
    with pytest.raises(AudioError, match=r"low\.wav: sample rate 4000 Hz is below"):
        open_audio(path)


def test_missing_ffmpeg_only_matters_when_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = write_wav(tmp_path / "a.wav", tone(sr=8000, seconds=0.3), 8000)
    fake_m4a = tmp_path / "a.m4a"
    fake_m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 200)
    surround = write_wav(tmp_path / "s.wav", np.repeat(tone(sr=8000, seconds=0.3), 4, axis=0), 8000)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # neither ffmpeg nor ffprobe can be found
    assert open_audio(wav).backend == "soundfile"  # no ffmpeg needed
    with pytest.raises(ToolMissingError, match=r"s\.wav: downmixing 4 channels to stereo needs ffmpeg"):
        open_audio(surround)
    with pytest.raises(ToolMissingError, match=r"a\.m4a: decoding \.m4a files needs ffmpeg"):
        open_audio(fake_m4a)


def test_write_audio_is_atomic_and_supports_ffmpeg_formats(tmp_path: Path) -> None:
    x = tone(sr=16000, seconds=0.5, channels=2)
    out = write_audio(tmp_path / "sub" / "x.flac", x, 16000)
    y, sr = decode(out)
    assert sr == 16000 and np.allclose(y, x, atol=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["x.flac"]  # no temp file left
    if HAVE_FFMPEG:
        m4a = write_audio(tmp_path / "x.m4a", x, 16000)
        assert open_audio(m4a).backend == "ffmpeg"


# ------------------------------------------------------------------------------------ resample


@pytest.mark.parametrize("orig,new", [(44100, 24000), (8000, 24000), (192000, 24000)])
def test_resample_tone_accuracy_numpy_and_torch(orig: int, new: int) -> None:
    x = tone(1000, sr=orig, seconds=0.5, amplitude=0.5)
    y = resample(x, orig, new)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == (1, int(round(0.5 * new)))
    expected = tone(1000, sr=new, seconds=0.5, amplitude=0.5)
    middle = slice(new // 20, -new // 20)  # ignore edge transients
    err = y[:, middle] - expected[:, middle]
    snr = 10 * np.log10(np.sum(expected[:, middle] ** 2) / np.sum(err**2))
    assert snr > 60
    t = resample(torch.from_numpy(x).double(), orig, new)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), y, atol=1e-5)


def test_resample_removes_content_above_new_nyquist() -> None:
    x = tone(15000, sr=48000, seconds=0.5, amplitude=0.5)  # above 12 kHz Nyquist at 24 kHz
    y = resample(x, 48000, 24000)
    assert np.sqrt(np.mean(y[:, 1000:-1000] ** 2)) < 1e-3
    assert resample(x, 48000, 48000) is x


@pytest.mark.parametrize("orig,new,block", [(44100, 24000, 65536), (48000, 24000, 777), (8000, 24000, 1000),
                                           (22050, 24000, 3), (44100, 24000, 10**6)])
def test_stream_resampler_equals_resampling_the_whole_signal(orig: int, new: int, block: int) -> None:
    x = np.random.default_rng(orig + block).normal(size=(2, 3 * orig + 17)).astype(np.float32)
    stream = StreamResampler(orig, new, channels=2)
    parts = [stream.push(x[:, i : i + block]) for i in range(0, x.shape[1], block)] + [stream.finish()]
    y = np.concatenate(parts, axis=1)
    whole = resample(x, orig, new)
    assert y.shape == whole.shape == (2, resampled_length(x.shape[1], orig, new))
    np.testing.assert_allclose(y, whole, atol=1e-6)  # no seams at block boundaries


def test_stream_resampler_short_input() -> None:
    x = np.ones((1, 5), np.float32)
    stream = StreamResampler(44100, 24000, channels=1)
    y = np.concatenate([stream.push(x), stream.finish()], axis=1)
    np.testing.assert_allclose(y, resample(x, 44100, 24000), atol=1e-6)


# ------------------------------------------------------------------------------------ level


def test_channel_rms_and_presentation_gain() -> None:
    x = tone(sr=8000, seconds=1.0, amplitude=0.2, channels=2)  # channel 1 is 0.8x channel 0
    rms = channel_rms(ArraySource(x, 8000))
    np.testing.assert_allclose(rms, [0.2 / np.sqrt(2), 0.16 / np.sqrt(2)], rtol=1e-3)
    overall = audio.overall_rms(rms)
    assert overall == pytest.approx(np.sqrt(np.mean(x.astype(np.float64) ** 2)), rel=1e-6)
    assert presentation_gain(REFERENCE_RMS, 65.0) == pytest.approx(1.0)
    assert presentation_gain(0.05, 65.0) == pytest.approx(2.0)
    assert presentation_gain(0.1, 85.0) == pytest.approx(10.0)
    gain = presentation_gain(overall, 70.0)
    scaled = x * gain
    assert 20 * np.log10(audio.overall_rms(channel_rms(scaled)) / REFERENCE_RMS) + 65 == pytest.approx(70.0)
    with pytest.raises(AudioError, match="silent"):
        presentation_gain(0.0, 65.0)


# ------------------------------------------------------------------------------------ windows


def test_windows_count_overlap_and_last_window_ends_at_the_end() -> None:
    sr = 8000
    x = np.arange(int(10.6 * sr), dtype=np.float32)[None, :] / 1e6
    windows = list(iter_windows(ArraySource(x, sr), 6.0, 4.5, block_frames=777))
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 6.0), (4.5, 10.5), (4.6, 10.6)]
    for w in windows:  # exact samples, native rate
        start = int(w.start_s * sr)
        np.testing.assert_array_equal(w.samples, x[:, start : int(round(w.end_s * sr))])
        assert w.sample_rate == sr


def test_windows_short_file_single_window_and_all_windows_full_length() -> None:
    sr = 8000
    short = ArraySource(np.ones((2, int(0.3 * sr)), np.float32), sr)
    windows = list(iter_windows(short, 6.0, 4.5))
    assert len(windows) == 1 and windows[0].samples.shape == (2, int(0.3 * sr))
    exact = ArraySource(np.ones((1, 12 * sr + int(0.2 * sr)), np.float32), sr)
    spans = [(w.start_s, w.end_s) for w in iter_windows(exact, 6.0, 6.0)]
    assert spans == [(0.0, 6.0), (6.0, 12.0), (6.2, 12.2)]  # the 0.2 s tail is covered by a full window
    gaps = [(w.start_s, w.end_s) for w in iter_windows(ArraySource(np.ones((1, 10 * sr), np.float32), sr), 2.0, 3.0)]
    assert gaps == [(0.0, 2.0), (3.0, 5.0), (6.0, 8.0), (8.0, 10.0)]


def test_windows_at_the_model_rate_are_slices_of_the_whole_resampled_signal() -> None:
    sr, model_sr = 44100, 24000
    x = np.random.default_rng(5).normal(size=(2, int(14.3 * sr))).astype(np.float32) * 0.1
    meter = audio.LevelMeter(2, "x")
    windows = list(iter_windows(ArraySource(x, sr), 6.0, 4.5, block_frames=10_000, meter=meter,
                                downmix=True, sample_rate=model_sr))
    whole = resample(x.mean(axis=0, keepdims=True), sr, model_sr)
    n = whole.shape[1]
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 6.0), (4.5, 10.5), ((n - 144000) / model_sr, n / model_sr)]
    for w in windows:
        assert w.sample_rate == model_sr and w.samples.shape == (1, 6 * model_sr)
        start = int(round(w.start_s * model_sr))
        np.testing.assert_allclose(w.samples, whole[:, start : start + 6 * model_sr], atol=1e-6)
    np.testing.assert_allclose(meter.rms(), np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1)), rtol=1e-6)


class _ShortDelivery(ArraySource):
    """Announces more frames than it delivers (a compressed container's estimate)."""

    def __init__(self, samples: np.ndarray, sample_rate: int, announced: int):
        super().__init__(samples, sample_rate)
        self.info = AudioInfo(sample_rate, self.samples.shape[0], announced, announced / sample_rate, "float32")


@pytest.mark.parametrize("model_rate", [None, 8000])
def test_windows_when_the_decoder_delivers_fewer_frames_than_announced(model_rate: int | None) -> None:
    sr = 16000
    x = np.random.default_rng(1).normal(size=(1, int(10.0 * sr))).astype(np.float32)
    source = _ShortDelivery(x, sr, announced=int(11.5 * sr))
    windows = list(iter_windows(source, 6.0, 4.5, sample_rate=model_rate))
    rate = model_rate or sr
    # the plan wanted windows at 0, 4.5 and 5.5 s (ending at 11.5 s); the last one ends at the real end
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 6.0), (4.0, 10.0)]
    assert all(w.samples.shape == (1, 6 * rate) for w in windows)
    if model_rate is None:
        np.testing.assert_array_equal(windows[-1].samples, x[:, 4 * sr :])


class _LongSynthetic:
    """A 2-hour stereo 48 kHz stream produced block by block (never materialised)."""

    def __init__(self, seconds: float, sr: int = 48000):
        self.info = AudioInfo(sr, 2, int(seconds * sr), seconds, "synthetic")
        self.path = Path("<long>")

    def blocks(self, block_frames: int = 65536):
        left = self.info.frames
        block = np.full((2, block_frames), 0.1, np.float32)
        while left > 0:
            n = min(block_frames, left)
            left -= n
            yield block[:, :n]


def test_windows_bounded_memory_on_two_hour_stream() -> None:
    source = _LongSynthetic(2 * 3600.0)
    tracemalloc.start()
    count = 0
    last = None
    for window in iter_windows(source, 6.0, 4.5, block_frames=48000):
        count += 1
        last = window
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 7200 s: 1599 windows every 4.5 s (the last ends at 7197 s) plus one ending at 7200 s.
    assert count == 1600 and last is not None and last.end_s == pytest.approx(7200.0)
    assert last.samples.shape == (2, 6 * 48000)
    window_bytes = 2 * 6 * 48000 * 4
    assert peak < 6 * window_bytes  # a few windows' worth, not 2 hours (2.7 GB)


def test_windows_stream_a_ten_minute_file(tmp_path: Path) -> None:
    sr = 8000
    path = tmp_path / "long.flac"
    with sf.SoundFile(str(path), "w", sr, 1, format="FLAC") as handle:
        for minute in range(10):
            handle.write(tone(200 + 50 * minute, sr=sr, seconds=60.0, amplitude=0.2)[0])
    source = open_audio(path)
    assert source.info.duration_s == pytest.approx(600.0)
    windows = list(iter_windows(source, 6.0, 4.5))
    assert len(windows) == 133  # full windows start at 0, 4.5, ..., 594 s; the last ends at 600 s
    assert windows[-1].end_s == pytest.approx(600.0)
    assert all(w.samples.shape == (1, 6 * sr) for w in windows)


@needs_ffmpeg
def test_ffmpeg_banner_probe_when_ffprobe_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = write_wav(tmp_path / "a.wav", chord(sr=32000, seconds=1.5, channels=2), 32000)
    m4a = encode_with_ffmpeg(wav, "aac", "96k")
    tools = tmp_path / "tools"  # ffmpeg without ffprobe
    tools.mkdir()
    (tools / "ffmpeg").symlink_to(shutil.which("ffmpeg"))
    monkeypatch.setenv("PATH", str(tools))
    source = open_audio(m4a)
    assert (source.info.sample_rate, source.info.channels, source.info.codec) == (32000, 2, "aac")
    assert source.info.duration_s == pytest.approx(1.5, abs=0.05)
    text = tmp_path / "x.m4a"
    text.write_text("not audio")
    with pytest.raises(AudioError, match=r"x\.m4a: not (a decodable|an) audio file"):
        open_audio(text)


def test_calibrated_windows_held_and_streamed_are_the_same_samples() -> None:
    """The one call from a stream to model-ready windows: metered in the same pass (held) or with the gain
    of an earlier pass (streamed in chunks), the windows are the same, scaled to the level's target RMS."""
    sr, model_rate = 16000, 24000
    x = (0.05 * chord(sr=sr, seconds=20.0, channels=2)).astype(np.float32)
    (held,) = audio.calibrated_windows(ArraySource(x, sr), 70.0, 6.0, 3.0, model_rate, downmix=False)
    gain = audio.file_gain(ArraySource(x, sr), 70.0)
    assert held.gain == pytest.approx(gain, rel=1e-12)
    assert gain == pytest.approx(audio.target_rms(70.0) / np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    chunks = list(audio.calibrated_windows(ArraySource(x, sr), 70.0, 6.0, 3.0, model_rate, downmix=False,
                                           gain=gain, chunk_windows=2))
    assert [c.windows.shape[1] for c in chunks] == [2, 2, 2]
    np.testing.assert_array_equal(np.concatenate([c.windows for c in chunks], axis=1), held.windows)
    np.testing.assert_array_equal(np.concatenate([c.starts_s for c in chunks]), held.starts_s)
    assert held.windows.shape == (2, 6, 6 * model_rate)
    (mono,) = audio.calibrated_windows(ArraySource(x, sr), 70.0, 6.0, 3.0, model_rate, downmix=True)
    assert mono.windows.shape == (1, 6, 6 * model_rate)


def test_the_api_calibrates_as_the_engine_does() -> None:
    """HAAQIPredictor's differentiable level and the engine's gain are one definition (target_rms)."""
    from haaqicli.api import HAAQIPredictor

    class Identity(torch.nn.Module):
        sample_rate = 16000

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    x = torch.from_numpy(0.05 * chord(sr=16000, seconds=2.0, channels=1)[0]).float()
    calibrated, _ = HAAQIPredictor(Identity()).prepare(x, torch.zeros(8), 16000, spl=72.0)
    gain = audio.presentation_gain(float(x.double().pow(2).mean().sqrt()), 72.0)
    np.testing.assert_allclose(calibrated[0].numpy(), x.numpy() * gain, rtol=1e-5)
