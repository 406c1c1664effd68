"""Finding and decoding audio files, and writing them.

Decoding is streaming: ``open_audio(path).blocks(n)`` yields (channels, n) float32 blocks, so a
two-hour file never has to fit in memory. libsndfile (via soundfile) is tried first (WAV, FLAC,
OGG/Vorbis, Opus, MP3, AIFF, ...); anything else goes through an ``ffmpeg`` pipe (m4a/AAC, WMA,
video containers...), so ffmpeg is only required for those files.

Channel policy: mono and stereo are kept as they are. Files with more than two channels are
downmixed to stereo by ffmpeg (its standard matrix, e.g. 5.1 -> L/R); without ffmpeg they are an
``AudioError``. ``AudioInfo.channels`` is the number of channels the blocks really have,
``AudioInfo.file_channels`` the file's own count (what the tables report, with a warning).

Files shorter than ``MIN_DURATION_S`` are refused (``AudioError``): no HAAQI figure means anything
for them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from haaqicli.util.atomic import atomic_write
from haaqicli.util.errors import AudioError, ToolMissingError

# Extensions picked up when walking directories (files given explicitly are always tried).
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav", ".wave", ".bwf", ".rf64", ".w64", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2",
        ".aif", ".aiff", ".aifc", ".caf", ".au", ".snd", ".m4a", ".m4b", ".mp4", ".aac", ".alac",
        ".wma", ".webm", ".mka", ".ac3", ".eac3", ".wv", ".ape", ".mpc", ".amr", ".dts",
    }
)

# Shortest file scored (seconds): HAAQI's envelope and modulation analysis needs a few hundred ms of
# music to mean anything; shorter files get an error row instead of a score.
MIN_DURATION_S: float = 0.5
# HAAQI works up to 24 kHz bandwidth; below 8 kHz sampling there is too little of the music left.
MIN_SAMPLE_RATE: int = 8_000
# Default streaming block (frames): ~1.4 s at 48 kHz, a few MB for stereo float32.
DEFAULT_BLOCK_FRAMES: int = 65_536
# Decoded by libsndfile, so ffmpeg is never "needed" for them (a failure means a broken file).
_SOUNDFILE_EXTENSIONS = frozenset(
    {".wav", ".wave", ".bwf", ".rf64", ".w64", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif",
     ".aiff", ".aifc", ".caf", ".au", ".snd"}
)


# --------------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class InputFile:
    path: Path
    root: Path
    relative: str  # posix path relative to the scanned root (the file name for a file given directly)
    content_hash: str = ""  # sha256 of the file when already known (a resumed run hashed it)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def discover(inputs: Sequence[str | Path]) -> list[InputFile]:
    """Files as given plus audio files found recursively under directories.

    Order: inputs in the order given; inside a directory, sorted by relative path. Hidden files and
    directories are skipped (so are fifos and devices; a broken symlink is listed, to fail as a row),
    directory symlinks are followed but each real directory is visited once (so symlink loops
    terminate), and the same real file is listed only once.
    """
    found: list[InputFile] = []
    seen_files: set[str] = set()

    def add(item: InputFile) -> None:
        key = os.path.realpath(item.path)
        if key not in seen_files:
            seen_files.add(key)
            found.append(item)

    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise AudioError(f"{raw}: no such file or directory")
        if path.is_file():
            add(InputFile(path=path, root=path.parent, relative=path.name))
            continue
        if not path.is_dir():
            raise AudioError(f"{raw}: not a regular file or directory")
        items: list[InputFile] = []
        visited: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited:  # symlink loop or a second link to the same directory
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            for name in filenames:
                if _hidden(name) or Path(name).suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                file_path = Path(dirpath) / name
                # a fifo or device is skipped; a broken link to an audio file is listed, so that it gets
                # an error row instead of vanishing from the table unnoticed
                if not file_path.is_file() and not file_path.is_symlink():
                    continue
                items.append(InputFile(file_path, path, file_path.relative_to(path).as_posix()))
        for item in sorted(items, key=lambda i: i.relative):
            add(item)
    return found


# --------------------------------------------------------------------------------------------
# Decoding


@dataclass
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int  # exact for libsndfile; estimated from the container duration for ffmpeg
    duration_s: float
    codec: str
    file_channels: int = 0  # channels in the file itself (more than `channels` when downmixed); 0: same

    def __post_init__(self) -> None:
        self.file_channels = self.file_channels or self.channels

    @property
    def downmixed(self) -> bool:
        return self.file_channels > self.channels


class BlockSource(Protocol):
    info: AudioInfo

    def blocks(self, block_frames: int = DEFAULT_BLOCK_FRAMES) -> Iterator[np.ndarray]: ...


def _tool(name: str) -> str | None:
    return shutil.which(name)


def _require_ffmpeg(path: Path, why: str) -> str:
    exe = _tool("ffmpeg")
    if exe is None:
        raise ToolMissingError(f"{path}: {why} needs ffmpeg, which is not installed (apt install ffmpeg)")
    return exe


class AudioSource:
    """A decodable audio file. Each ``blocks()`` call streams the file again from the start."""

    def __init__(self, path: Path, info: AudioInfo, backend: str, downmix: bool = False):
        self.path = path
        self.info = info
        self.backend = backend  # "soundfile" or "ffmpeg"
        self._downmix = downmix

    def __repr__(self) -> str:
        return f"AudioSource({str(self.path)!r}, {self.info}, backend={self.backend!r})"

    def blocks(self, block_frames: int = DEFAULT_BLOCK_FRAMES) -> Iterator[np.ndarray]:
        if block_frames <= 0:
            raise ValueError("block_frames must be positive")
        if self.backend == "soundfile":
            yield from self._sf_blocks(block_frames)
        else:
            yield from self._ffmpeg_blocks(block_frames)

    def _sf_blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        total = 0
        try:
            with sf.SoundFile(str(self.path)) as handle:
                # 16-bit PCM is read as integers and scaled here: the same values as libsndfile's own
                # float conversion (x / 32768, exact in float32), at a fraction of its cost.
                pcm16 = handle.subtype == "PCM_16"
                while True:
                    data = handle.read(block_frames, dtype="int16" if pcm16 else "float32", always_2d=True)
                    if data.shape[0] == 0:
                        break
                    total += data.shape[0]
                    if pcm16:
                        block = np.empty((data.shape[1], data.shape[0]), dtype=np.float32)
                        np.multiply(data.T, np.float32(1 / 32768), out=block)
                        yield block
                    else:
                        yield np.ascontiguousarray(data.T)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{self.path}: decoding failed after {total} frames ({_one_line(error)})") from None
        if total == 0:
            raise AudioError(f"{self.path}: no audio frames decoded (empty file)")

    def _ffmpeg_blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        exe = _require_ffmpeg(self.path, "decoding this format")
        channels = self.info.channels
        cmd = [exe, "-nostdin", "-hide_banner", "-v", "error", "-i", str(self.path), "-map", "0:a:0",
               "-vn", "-sn", "-dn", "-f", "f32le", "-acodec", "pcm_f32le"]
        if self._downmix:
            cmd += ["-ac", str(channels)]
        cmd.append("pipe:1")
        bytes_per_block = block_frames * channels * 4
        total = 0
        # stderr goes to a temp file so a chatty decoder can never block on a full pipe.
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            try:
                pending = b""
                while True:
                    chunk = proc.stdout.read(bytes_per_block - len(pending))
                    if not chunk:
                        break
                    pending += chunk
                    if len(pending) < bytes_per_block:
                        continue
                    total += block_frames
                    yield _pcm_to_block(pending, channels)
                    pending = b""
                usable = len(pending) - len(pending) % (4 * channels)
                if usable:
                    total += usable // (4 * channels)
                    yield _pcm_to_block(pending[:usable], channels)
                code = proc.wait()
            finally:
                if proc.poll() is None:  # consumer stopped early (or Ctrl-C): do not leave ffmpeg running
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            err.seek(0)
            message = _last_line(err.read().decode("utf-8", "replace"), self.path)
        if code != 0:
            raise AudioError(f"{self.path}: ffmpeg failed to decode after {total} frames ({message or f'exit {code}'})")
        if total == 0:
            raise AudioError(f"{self.path}: no audio frames decoded (empty or corrupt file)")


def _pcm_to_block(raw: bytes, channels: int) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").reshape(-1, channels).T.astype(np.float32, copy=True)


class ArraySource:
    """In-memory audio with the same interface as ``AudioSource`` (tests, already-decoded clips)."""

    def __init__(self, samples: np.ndarray, sample_rate: int, name: str = "<array>"):
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError("samples must have shape (channels, n) or (n,)")
        self.samples = x
        self.path = Path(name)
        self.backend = "array"
        self.info = AudioInfo(int(sample_rate), x.shape[0], x.shape[1], x.shape[1] / sample_rate, "float32")

    def blocks(self, block_frames: int = DEFAULT_BLOCK_FRAMES) -> Iterator[np.ndarray]:
        for start in range(0, self.samples.shape[1], block_frames):
            yield self.samples[:, start : start + block_frames]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    # libsndfile messages repeat the path; keep only the reason.
    return re.sub(r"^Error opening .*?: ", "", text) or type(error).__name__


def _last_line(text: str, path: Path | None = None) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    if path is not None and line.startswith(f"{path}: "):  # ffmpeg prefixes the path we already name
        line = line[len(str(path)) + 2 :]
    return line


def _check_info(path: Path, info: AudioInfo) -> None:
    if info.sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {info.sample_rate} Hz is below the supported {MIN_SAMPLE_RATE} Hz")
    if info.channels < 1:
        raise AudioError(f"{path}: no audio channels")


def _open_soundfile(path: Path) -> AudioSource | None:
    try:
        meta = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    if meta.frames == 0:
        raise AudioError(f"{path}: empty audio (0 frames)")
    if meta.frames < 0 or meta.samplerate <= 0:  # libsndfile could not tell: let ffmpeg try
        return None
    codec = f"{meta.format}/{meta.subtype}".lower()
    info = AudioInfo(int(meta.samplerate), int(meta.channels), int(meta.frames),
                     meta.frames / meta.samplerate, codec)
    if info.channels > 2:
        if _tool("ffmpeg") is None:
            raise ToolMissingError(f"{path}: downmixing {info.channels} channels to stereo needs ffmpeg, "
                                   "which is not installed (apt install ffmpeg)")
        return None  # downmix through ffmpeg
    return AudioSource(path, info, "soundfile")


def _probe_ffprobe(path: Path) -> dict[str, Any] | None:
    exe = _tool("ffprobe")
    if exe is None:
        return None
    cmd = [exe, "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=codec_name,sample_rate,channels,duration:format=duration", "-of", "json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AudioError(f"{path}: not a decodable audio file ({_last_line(proc.stderr, path) or 'ffprobe failed'})")
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams") or []
    if not streams:
        raise AudioError(f"{path}: not an audio file (no audio stream found)")
    stream = streams[0]

    def number(value: Any) -> float | None:
        try:
            out = float(value)
        except (TypeError, ValueError):
            return None
        return out if math.isfinite(out) else None

    duration = number(stream.get("duration")) or number((data.get("format") or {}).get("duration"))
    return {
        "codec": str(stream.get("codec_name") or "unknown"),
        "sample_rate": int(number(stream.get("sample_rate")) or 0),
        "channels": int(number(stream.get("channels")) or 0),
        "duration": duration,
    }


_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}


def _probe_ffmpeg(path: Path, exe: str) -> dict[str, Any]:
    """Fallback when ffprobe is absent: parse the banner of ``ffmpeg -i``."""
    proc = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True,
                          timeout=120)
    text = proc.stderr
    match = re.search(r"Stream #\S+.*?: Audio: (\w+)[^,]*, (\d+) Hz, ([^,]+)", text)
    if match is None:
        if "Invalid data" in text or "could not find codec" in text.lower():
            raise AudioError(f"{path}: not a decodable audio file ({_last_line(text, path)})")
        raise AudioError(f"{path}: not an audio file (no audio stream found)")
    layout = match.group(3).strip().split("(")[0]
    channels = _LAYOUTS.get(layout)
    if channels is None:
        count = re.match(r"(\d+) channels", layout)
        channels = int(count.group(1)) if count else 2
    duration = None
    dur = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if dur:
        duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3))
    return {"codec": match.group(1), "sample_rate": int(match.group(2)), "channels": channels,
            "duration": duration}


def open_audio(path: str | Path) -> AudioSource:
    """Open a file for streaming; raises ``AudioError`` for missing, empty, corrupt or non-audio files."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise AudioError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)")
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    source = _open_soundfile(path)
    if source is not None:
        _check_info(path, source.info)
        return source
    suffix = path.suffix.lower()
    exe = _tool("ffmpeg")
    if exe is None:
        if suffix in _SOUNDFILE_EXTENSIONS or suffix not in AUDIO_EXTENSIONS:
            # libsndfile should have read it: the file is broken or not audio at all.
            raise AudioError(f"{path}: not a decodable audio file (unreadable by libsndfile; ffmpeg not installed)")
        _require_ffmpeg(path, f"decoding {suffix} files")
    meta = _probe_ffprobe(path) or _probe_ffmpeg(path, exe)  # type: ignore[arg-type]
    if meta["sample_rate"] <= 0 or meta["channels"] <= 0:
        raise AudioError(f"{path}: not a decodable audio file (no sample rate or channel count)")
    original_channels = meta["channels"]
    channels = min(original_channels, 2)
    sample_rate = meta["sample_rate"]
    codec = meta["codec"] + (f" ({original_channels} ch downmixed to stereo)" if original_channels > 2 else "")
    info = AudioInfo(sample_rate, channels, 0, 0.0, codec, file_channels=original_channels)
    source = AudioSource(path, info, "ffmpeg", downmix=original_channels > 2)
    _check_info(path, info)
    duration = meta["duration"]
    if duration is None:  # raw streams without a header: count by decoding once (streaming)
        frames = sum(block.shape[1] for block in source.blocks())
        duration = frames / sample_rate
    if duration <= 0:
        raise AudioError(f"{path}: empty audio (0 frames)")
    info.frames = int(round(duration * sample_rate))
    info.duration_s = float(duration)
    return source


class DownmixWarning(UserWarning):
    """A file with more than two channels was downmixed to stereo for scoring."""


def downmix_message(path: str | Path, file_channels: int) -> str:
    return (f"{path}: {file_channels} channels downmixed to stereo (ffmpeg's standard matrix) for scoring; "
            f"its rows keep channels={file_channels}")


def require_duration(path: str | Path, duration_s: float) -> None:
    """AudioError when a file is shorter than MIN_DURATION_S (see the module docstring)."""
    if duration_s < MIN_DURATION_S:
        raise AudioError(f"{path}: {duration_s:.3g} s of audio is shorter than the {MIN_DURATION_S:g} s minimum "
                         "this tool scores")


def as_source(source: BlockSource | str | Path) -> BlockSource:
    if isinstance(source, (str, Path)):
        return open_audio(source)
    return source


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Whole file as float32 (channels, n) and its sample rate. For short files; no silence check."""
    samples, info = decode_with_info(path)
    return samples, info.sample_rate


def decode_with_info(path: str | Path) -> tuple[np.ndarray, AudioInfo]:
    """Whole file as float32 (channels, n) and its AudioInfo (file channels, codec...)."""
    source = open_audio(path)
    blocks = list(source.blocks())
    return np.concatenate(blocks, axis=1), source.info


def write_audio(path: str | Path, x: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Write (channels, n) or (n,) audio atomically. Formats libsndfile cannot write go through ffmpeg."""
    path = Path(path)
    data = np.asarray(x, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF", ".w64": "W64",
           ".caf": "CAF", ".au": "AU"}.get(path.suffix.lower())

    def write(tmp: Path) -> None:
        if fmt is not None:
            sf.write(str(tmp), data.T, sr, format=fmt, subtype=subtype)
            return
        exe = _require_ffmpeg(path, f"writing {path.suffix} files")
        with tempfile.TemporaryDirectory() as tmpdir:
            wav = Path(tmpdir) / "in.wav"
            sf.write(str(wav), data.T, sr, subtype="FLOAT")
            proc = subprocess.run([exe, "-nostdin", "-v", "error", "-y", "-i", str(wav), str(tmp)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise AudioError(f"{path}: ffmpeg could not encode ({_last_line(proc.stderr)})")

    return atomic_write(path, write, keep_suffix=True)
