"""haaqicli.audio.io: discovery, decoding (all formats, streamed, ffmpeg only where needed), writing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from synth import HAVE_FFMPEG, chord, encode_with_ffmpeg, noise_burst, tone, write_wav

from haaqicli.audio import (
    AudioInfo,
    channel_rms,
    decode,
    discover,
    open_audio,
    write_audio,
)
from haaqicli.util.errors import AudioError, ToolMissingError

needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="needs ffmpeg")



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


def test_discover_lists_a_broken_link_in_a_folder_so_that_it_fails_as_a_row(tmp_path: Path) -> None:
    root = tmp_path / "music"
    write_wav(root / "a.wav", tone(sr=8000, seconds=0.1), 8000)
    os.symlink(tmp_path / "moved.wav", root / "b.wav")  # its target is gone
    os.mkfifo(root / "c.wav")  # not a file to read: skipped
    assert [f.relative for f in discover([root])] == ["a.wav", "b.wav"]
    with pytest.raises(AudioError, match=rf"b\.wav: broken symbolic link \(its target {tmp_path}/moved\.wav does not"):
        open_audio(root / "b.wav")


def test_discover_missing_path_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nope\.wav: no such file or directory$"):
        discover([tmp_path / "nope.wav"])


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
