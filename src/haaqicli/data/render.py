"""Turn non-audio corpus sources into 44.1 kHz FLAC music: tracker modules, raw PCM, MIDI with several
soundfonts and seeded variations, MIDI with real (Hydrogen) drums, and real (Sonic Pi) loops under
rendered scores.

Every render is a pure function of its inputs and a seed, written atomically, and skipped when its
output exists (``make corpus`` is resumable). Outputs are peak-normalised to -1 dBFS: the dataset
samples presentation levels itself, and a fixed peak keeps soundfonts with very different gains
from clipping or vanishing.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from haaqicli.util.atomic import atomic_write

SR = 44_100
PEAK_DBFS = -1.0
# GM program families (8 programs each) that sound like music when swapped for each other; sound
# effects (120-127) and percussive effects (112-119) never replace a melodic part.
MELODIC_PROGRAMS = tuple(range(0, 112))
DRUM_CHANNEL = 9  # MIDI channel 10
FLUIDSYNTH_TIMEOUT_S = 900


class RenderError(RuntimeError):
    """A source could not be rendered; the message names the file."""


def stable_seed(*parts: object) -> int:
    """A seed that depends only on its parts (not on Python's hash randomisation)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def write_flac(path: Path, audio: np.ndarray, sr: int = SR) -> float:
    """Peak-normalise to PEAK_DBFS and write 16-bit FLAC atomically; returns the duration (s)."""
    audio = np.asarray(audio, dtype=np.float64)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 1e-6:
        raise RenderError(f"{path.name}: render is silent")
    audio = audio * (10 ** (PEAK_DBFS / 20) / peak)
    atomic_write(Path(path), lambda tmp: sf.write(str(tmp), audio, sr, format="FLAC", subtype="PCM_16"))
    return len(audio) / sr


# ------------------------------------------------------------------------------------------
# tracker modules and raw PCM


def render_tracker(module: Path, out: Path) -> float:
    """A tracker module (.xm/.it/.s3m/.mod) played once through ffmpeg's libopenmpt, as FLAC."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "module.wav"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(module), "-ar", str(SR), "-ac", "2",
               "-c:a", "pcm_f32le", str(wav)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not wav.is_file():
            raise RenderError(f"{module.name}: ffmpeg/libopenmpt failed ({result.stderr.strip()[:200]})")
        audio, sr = sf.read(str(wav), dtype="float32")
    return write_flac(out, audio, sr)


def decode_raw_u8(data: bytes, channels: int = 2) -> np.ndarray:
    """Headerless unsigned 8-bit PCM (silence = 0x80), interleaved, as float in [-1, 1)."""
    samples = np.frombuffer(data, dtype=np.uint8)
    samples = samples[: len(samples) - len(samples) % channels]
    return ((samples.astype(np.float64) - 128.0) / 128.0).reshape(-1, channels)


def convert_raw_u8(raw: Path, out: Path, sample_rate: int = 22_050, channels: int = 2, plays: int = 2) -> float:
    """xblast-tnt-musics songs: u8 stereo at 22,050 Hz (xbsndsrv.c: SAMPLE_RATE 22050, 8-bit, and the
    songs are flagged stereo), upsampled 2x to 44.1 kHz. The game loops its songs (repeat flag), so the
    render plays each `plays` times: the shortest songs (19 s) then reach the corpus' track length."""
    audio = np.tile(decode_raw_u8(raw.read_bytes(), channels), (plays, 1))
    if SR % sample_rate:
        raise RenderError(f"{raw.name}: {sample_rate} Hz is not a divisor of {SR}")
    return write_flac(out, resample_poly(audio, SR // sample_rate, 1, axis=0))


# ------------------------------------------------------------------------------------------
# MIDI: seeded variations and fluidsynth


@dataclass(frozen=True)
class MidiVariant:
    """How one render departs from the MIDI file: soundfont, instruments, tempo and key."""

    soundfont: str
    tempo_factor: float = 1.0  # >1 is faster
    transpose: int = 0  # semitones, melodic channels only
    programs: tuple[tuple[int, int], ...] = ()  # (channel, GM program) overrides
    bpm: float | None = None  # force this tempo (quarter notes per minute) instead of tempo_factor
    max_seconds: float | None = None  # end the render here (clips need minutes, not whole movements)

    @property
    def tag(self) -> str:
        return Path(self.soundfont).stem


def draw_variant(rng: np.random.Generator, soundfont: str, faithful: bool = False) -> MidiVariant:
    """A seeded variant: each melodic channel keeps its GM family (60%) or takes any melodic program;
    tempo x0.8-1.25, transposition -4..+4 semitones. `faithful`: the file as written."""
    if faithful:
        return MidiVariant(soundfont)
    programs = []
    for channel in range(16):
        if channel == DRUM_CHANNEL:
            continue
        if rng.random() < 0.6:
            family = int(rng.integers(0, 14))
            programs.append((channel, family * 8 + int(rng.integers(0, 8))))
        else:
            programs.append((channel, int(rng.choice(MELODIC_PROGRAMS))))
    return MidiVariant(soundfont, tempo_factor=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
                       transpose=int(rng.integers(-4, 5)), programs=tuple(programs))


def read_midi(path: Path) -> Any:
    """A mido.MidiFile; key signatures outside the standard (game MIDI has some) are read as C major."""
    import mido

    data = path.read_bytes()
    for attempt in range(2):
        try:
            return mido.MidiFile(file=io.BytesIO(data), clip=True)
        except mido.midifiles.meta.KeySignatureError:
            if attempt:
                break
            data = re.sub(rb"\xff\x59\x02..", b"\xff\x59\x02\x00\x00", data, flags=re.DOTALL)
        except Exception as error:  # mido raises many types for damaged files
            raise RenderError(f"{path.name}: unreadable MIDI ({str(error).splitlines()[0][:120]})") from None
    raise RenderError(f"{path.name}: unreadable MIDI (key signature)")


def rewrite_midi(src: Path, dst: Path, variant: MidiVariant, drop_drums: bool = False) -> list[tuple[float, int, int]]:
    """Write `src` with the variant applied to `dst`; return the drum hits (time s, note, velocity)
    of the rewritten file, so real drums can be laid on exactly where the GM drums were."""
    import mido

    midi = read_midi(src)
    overrides = dict(variant.programs)
    first_tempo = next((m.tempo for track in midi.tracks for m in track if m.type == "set_tempo"), 500_000)
    if variant.bpm is not None:
        factor = variant.bpm / (60e6 / first_tempo)
    else:
        factor = variant.tempo_factor
    for track in midi.tracks:
        for i, msg in enumerate(track):
            channel = getattr(msg, "channel", None)
            if msg.type == "set_tempo":
                track[i] = msg.copy(tempo=max(1, min(16_777_215, int(round(msg.tempo / factor)))))
            elif channel is None:
                continue
            elif channel == DRUM_CHANNEL:
                continue
            elif msg.type in ("note_on", "note_off", "polytouch") and variant.transpose:
                track[i] = msg.copy(note=int(np.clip(msg.note + variant.transpose, 0, 127)))
            elif msg.type == "program_change" and channel in overrides:
                track[i] = msg.copy(program=overrides[channel])
    if factor != 1.0 and not any(m.type == "set_tempo" for track in midi.tracks for m in track):
        midi.tracks[0].insert(0, mido.MetaMessage("set_tempo", tempo=int(round(500_000 / factor)), time=0))
    # Channels with notes but no program change play program 0: give them the variant's program too.
    programmed = {m.channel for t in midi.tracks for m in t if m.type == "program_change"}
    missing = [c for c, _ in variant.programs if c not in programmed]
    if missing:
        midi.tracks[0][0:0] = [mido.Message("program_change", channel=c, program=overrides[c], time=0)
                               for c in missing]
    if variant.max_seconds is not None:
        _truncate(midi, variant.max_seconds)
    _release_at_track_ends(midi)
    hits: list[tuple[float, int, int]] = []
    now = 0.0
    for msg in midi:  # iteration yields seconds, tempo changes applied
        now += msg.time
        if msg.type == "note_on" and getattr(msg, "channel", None) == DRUM_CHANNEL and msg.velocity > 0:
            hits.append((now, msg.note, msg.velocity))
    if drop_drums:  # silence the GM drums (keeping every event's timing)
        for track in midi.tracks:
            for i, msg in enumerate(track):
                if msg.type == "note_on" and getattr(msg, "channel", None) == DRUM_CHANNEL:
                    track[i] = msg.copy(velocity=0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(dst))
    return hits


def _truncate(midi: Any, seconds: float) -> None:
    """Drop every event after `seconds` (tempo map applied) and silence all channels there."""
    import mido

    tempo_map: list[tuple[int, int]] = [(0, 500_000)]  # (tick, tempo), from all tracks (type 1 files)
    for track in midi.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "set_tempo":
                tempo_map.append((tick, msg.tempo))
    tempo_map.sort(key=lambda item: item[0])
    # The tick where `seconds` is reached.
    elapsed, limit_tick = 0.0, None
    for (tick, tempo), (next_tick, _) in zip(tempo_map, tempo_map[1:] + [(None, None)], strict=True):
        span = None if next_tick is None else mido.tick2second(next_tick - tick, midi.ticks_per_beat, tempo)
        if span is None or elapsed + span >= seconds:
            limit_tick = tick + int(mido.second2tick(seconds - elapsed, midi.ticks_per_beat, tempo))
            break
        elapsed += span
    for track in midi.tracks:
        kept, tick, last = [], 0, 0
        for msg in track:
            tick += msg.time
            if tick > limit_tick:
                break
            kept.append(msg)
            last = tick
        else:
            continue  # the track ends before the limit
        channels = sorted({m.channel for m in kept if hasattr(m, "channel")})
        stop = [mido.Message("control_change", channel=c, control=123, value=0, time=0) for c in channels]
        if stop:
            stop[0] = stop[0].copy(time=limit_tick - last)
        track[:] = [m for m in kept if m.type != "end_of_track"] + stop + [mido.MetaMessage("end_of_track", time=0)]


def _release_at_track_ends(midi: Any) -> None:
    """Sustain pedal up and all notes off on every channel of a track where the track ends.

    Scores exported with a note-off sorted before its note-on at the same tick leave notes held; with
    a sustaining program (organ, strings) fluidsynth's file render never ends: it renders until every
    voice is silent (seen: 26 GB of WAV from one 88-s music21 score). A well-formed file has nothing
    sounding at its end, so its render is unchanged."""
    import mido

    for track in midi.tracks:
        channels = sorted({m.channel for m in track if hasattr(m, "channel")})
        if not channels:
            continue
        end = [m for m in track if m.type == "end_of_track"]
        body = [m for m in track if m.type != "end_of_track"]
        tail = end[0].time if end else 0  # the end's delta goes to the release, the end follows at once
        release = [mido.Message("control_change", channel=c, control=control, value=0, time=0)
                   for c in channels for control in (64, 123)]
        release[0] = release[0].copy(time=tail)
        track[:] = body + release + [mido.MetaMessage("end_of_track", time=0)]


def midi_seconds(midi: Path) -> float:
    """Playing time of a MIDI file (tempo map applied)."""
    import mido

    return float(mido.MidiFile(str(midi)).length)


def fluidsynth(midi: Path, soundfont: str, gain: float = 0.5, release_s: float = 30.0) -> np.ndarray:
    """Render a MIDI file to float stereo at 44.1 kHz. Dynamic sample loading: MuseScore_General's
    sf3 would otherwise decode every sample (15 s) per file; the output is identical.

    The render is stopped, as a RenderError, once it runs ``release_s`` past the file's playing time
    (a held note that never ends), so a bad score costs seconds and no disk, not the timeout."""
    limit_bytes = int((midi_seconds(midi) + release_s) * SR * 2 * 4) + 4096  # float32 stereo + header
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "render.wav"
        cmd = ["fluidsynth", "-ni", "-q", "-g", str(gain), "-r", str(SR), "-O", "float", "-T", "wav",
               "-o", "synth.dynamic-sample-loading=1", "-F", str(wav), soundfont, str(midi)]
        # stderr to a file: an unread pipe that fills would stall fluidsynth until the timeout.
        log = Path(tmp) / "stderr.txt"
        with open(log, "w") as errors, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors) as process:
            started = time.monotonic()
            while process.poll() is None:
                too_long = wav.is_file() and wav.stat().st_size > limit_bytes
                if too_long or time.monotonic() - started > FLUIDSYNTH_TIMEOUT_S:
                    process.kill()
                    process.wait()
                    reason = (f"rendered over {release_s:.0f} s past the score's end (held notes)" if too_long
                              else f"ran over {FLUIDSYNTH_TIMEOUT_S} s")
                    raise RenderError(f"{midi.name}: fluidsynth {reason}")
                time.sleep(0.2)
        stderr = log.read_text(errors="replace")
        if process.returncode != 0 or not wav.is_file() or wav.stat().st_size == 0:
            raise RenderError(f"{midi.name}: fluidsynth failed ({stderr.strip()[:200]})")
        audio, _ = sf.read(str(wav), dtype="float32", always_2d=True)
    return audio


def render_midi(src: Path, out: Path, variant: MidiVariant) -> float:
    """One variant of a MIDI file through fluidsynth, as FLAC."""
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "variant.mid"
        rewrite_midi(src, midi, variant)
        return write_flac(out, fluidsynth(midi, variant.soundfont))


# ------------------------------------------------------------------------------------------
# real drums (Hydrogen kits)

# GM percussion notes -> drum category (GM Level 1 percussion key map).
GM_DRUM_CATEGORY: dict[int, str] = {
    35: "kick", 36: "kick", 37: "stick", 38: "snare", 39: "clap", 40: "snare", 41: "tom_low", 42: "hat_closed",
    43: "tom_low", 44: "hat_pedal", 45: "tom_mid", 46: "hat_open", 47: "tom_mid", 48: "tom_high", 49: "crash",
    50: "tom_high", 51: "ride", 52: "crash", 53: "ride", 54: "perc", 55: "crash", 56: "perc", 57: "crash",
    59: "ride",
}
for _note in range(60, 82):
    GM_DRUM_CATEGORY.setdefault(_note, "perc")
# Fallbacks when a kit lacks a category.
CATEGORY_FALLBACK = {"stick": "snare", "clap": "snare", "hat_pedal": "hat_closed", "hat_open": "hat_closed",
                     "tom_low": "tom_mid", "tom_high": "tom_mid", "tom_mid": "snare", "ride": "crash",
                     "crash": "hat_open", "perc": "stick"}


def drum_category(name: str) -> str | None:
    """Category of a Hydrogen kit instrument from its name (kits name instruments, not GM notes)."""
    n = name.lower()
    words = set(re.split(r"[^a-z0-9]+", n))
    if "kick" in n or "bass drum" in n or "bassdrum" in n or "bd" in words:
        return "kick"
    if "clap" in n:
        return "clap"
    if "snare" in n:  # before stick/rim: "Snare Rimshot" is a snare
        return "snare"
    if "stick" in n or "rim" in words:
        return "stick"
    if "hat" in n or words & {"hh", "ohh", "hihat"}:
        if "pedal" in n:
            return "hat_pedal"
        return "hat_open" if "open" in n or "ohh" in words else "hat_closed"
    if "tom" in n:
        if "floor" in n or "low" in n or "lo" in words:
            return "tom_low"
        return "tom_high" if "high" in n or "hi" in words else "tom_mid"
    if "ride" in n:
        return "ride"
    if any(k in n for k in ("crash", "china", "splash", "cymbal")):
        return "crash"
    if any(k in n for k in ("cowbell", "tamb", "shake", "conga", "bongo", "clave", "block", "djembe", "cajon")):
        return "perc"
    return None


@dataclass
class DrumKit:
    name: str
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # category -> mono float at SR

    def sample(self, category: str) -> np.ndarray | None:
        seen = set()
        while category not in self.samples and category in CATEGORY_FALLBACK and category not in seen:
            seen.add(category)
            category = CATEGORY_FALLBACK[category]
        return self.samples.get(category)


def load_drumkit(folder: Path) -> DrumKit:
    """A Hydrogen kit (drumkit.xml + samples): per category, the first instrument's loudest layer."""
    tree = ET.parse(folder / "drumkit.xml")
    kit = DrumKit(folder.name)
    for instrument in tree.iter():
        if instrument.tag.split("}")[-1] != "instrument":
            continue
        fields = {child.tag.split("}")[-1]: child for child in instrument}
        name = (fields["name"].text or "") if "name" in fields else ""
        category = drum_category(name)
        if category is None or category in kit.samples:
            continue
        files = [e.text for e in instrument.iter() if e.tag.split("}")[-1] == "filename" and e.text]
        if not files:
            continue
        path = folder / files[-1]  # layers are listed soft to hard; take the hardest
        try:
            audio, sr = sf.read(str(path), dtype="float64", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue
        mono = audio.mean(axis=1)
        if sr != SR:
            mono = resample_poly(mono, SR, sr)
        peak = np.max(np.abs(mono)) if mono.size else 0.0
        if peak > 1e-4:
            kit.samples[category] = mono / peak
    return kit


def render_drums(hits: list[tuple[float, int, int]], kit: DrumKit, frames: int) -> np.ndarray:
    """Mono drum track: each GM hit plays the kit's sample of its category, scaled by velocity."""
    out = np.zeros(frames)
    for time_s, note, velocity in hits:
        category = GM_DRUM_CATEGORY.get(note)
        sample = kit.sample(category) if category else None
        start = int(round(time_s * SR))
        if sample is None or start >= frames:
            continue
        piece = sample[: frames - start]
        out[start:start + len(piece)] += piece * (velocity / 127.0) ** 1.5
    return out


def mix(parts: np.ndarray, layer: np.ndarray, layer_db: float) -> np.ndarray:
    """Add a mono layer under stereo parts at `layer_db` relative to the parts' RMS."""
    rms_parts = np.sqrt(np.mean(parts**2)) + 1e-12
    rms_layer = np.sqrt(np.mean(layer**2)) + 1e-12
    gain = rms_parts / rms_layer * 10 ** (layer_db / 20)
    return parts + gain * layer[: len(parts), None]


def render_with_real_drums(src: Path, out: Path, variant: MidiVariant, kit: DrumKit, drums_db: float) -> float:
    """GM drums replaced by a Hydrogen kit: the melodic parts through fluidsynth, drums from samples."""
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "variant.mid"
        hits = rewrite_midi(src, midi, variant, drop_drums=True)
        if not hits:
            raise RenderError(f"{src.name}: no GM drum notes to replace")
        parts = fluidsynth(midi, variant.soundfont)
    drums = render_drums(hits, kit, len(parts))
    return write_flac(out, mix(parts, drums, drums_db))


# ------------------------------------------------------------------------------------------
# real loops (Sonic Pi) under rendered scores


def loop_beats(seconds: float, low_bpm: float = 70.0, high_bpm: float = 170.0) -> tuple[int, float]:
    """(beats, bpm) for a loop: the power-of-two beat count whose tempo is closest to 115 BPM within
    [low, high] (Sonic Pi loops are whole bars; their tempo is not stored)."""
    best: tuple[float, int, float] | None = None
    for beats in (1, 2, 4, 8, 16, 32):
        bpm = 60.0 * beats / seconds
        if low_bpm <= bpm <= high_bpm and (best is None or abs(bpm - 115) < best[0]):
            best = (abs(bpm - 115), beats, bpm)
    if best is None:
        raise RenderError(f"a {seconds:.2f} s loop has no tempo in {low_bpm:.0f}-{high_bpm:.0f} BPM")
    return best[1], best[2]


def render_with_loop(src: Path, out: Path, variant: MidiVariant, loop: np.ndarray, loop_db: float) -> float:
    """A score rendered at the loop's tempo (variant.bpm) with the loop tiled under it from bar one."""
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "variant.mid"
        rewrite_midi(src, midi, variant)
        parts = fluidsynth(midi, variant.soundfont)
    reps = int(np.ceil(len(parts) / len(loop)))
    return write_flac(out, mix(parts, np.tile(loop, reps), loop_db))


def read_mono(path: Path) -> np.ndarray:
    """A sample file as mono float at 44.1 kHz."""
    audio, sr = sf.read(str(path), dtype="float64", always_2d=True)
    mono = audio.mean(axis=1)
    return resample_poly(mono, SR, sr) if sr != SR else mono
