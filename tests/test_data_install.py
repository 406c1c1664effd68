"""`make corpus` (haaqicli.data.install / render) on tiny synthetic inputs: package registry and split,
pruning, the per-package summary and its failure on a package without music, raw PCM and tracker
conversion, MIDI variants, real drums, loops and the music21 render path. Nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from haaqicli.data import install, render
from haaqicli.data.packages import (
    DRUMS,
    LOOPS,
    MIDI,
    PACKAGES,
    REPORTING_ONLY_PACKAGES,
    VALIDATION_PACKAGES,
    VALIDATION_REAL_PACKAGES,
    ReservedPackageError,
    guard_package,
    is_reserved,
    package,
    split_of,
)

HAVE_FFMPEG = shutil.which("ffmpeg") is not None
TIMGM = "/usr/share/sounds/sf2/TimGM6mb.sf2"
HAVE_FLUIDSYNTH = shutil.which("fluidsynth") is not None and Path(TIMGM).is_file()
needs_fluidsynth = pytest.mark.skipif(not HAVE_FLUIDSYNTH, reason="needs fluidsynth and timgm6mb-soundfont")
RESERVED = ["widelands-data", "openclonk-data", "fretsonfire-songs-sectoid", "hyperrogue-music", "0ad-data"]


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


# ------------------------------------------------------------------------------------------
# registry, reserve and split


def test_reserved_packages_are_refused_everywhere(tmp_path: Path) -> None:
    for name in RESERVED:
        assert is_reserved(name)
        with pytest.raises(ReservedPackageError):
            guard_package(name)
        with pytest.raises(ReservedPackageError):  # before anything is fetched
            install.install(install.InstallConfig(tmp_path, packages=[name], soundfonts=()))
    assert not (tmp_path / "packages").exists()
    assert not any(is_reserved(p.name) for p in PACKAGES)
    # Released from the reserve for training.
    assert not is_reserved("music21") and not is_reserved("musescore-general-soundfont")
    assert split_of("music21") == "train"


def test_split_assignment() -> None:
    assert sorted(VALIDATION_PACKAGES) == ["flare-game", "marsshooter-data", "openttd-openmsx"]
    assert sorted(VALIDATION_REAL_PACKAGES) == ["nexuiz-music", "ufoai-music"]
    assert set(REPORTING_ONLY_PACKAGES) == {"nexuiz-music"}
    for pkg in PACKAGES:
        expected = ("validation" if pkg.name in VALIDATION_PACKAGES else
                    "validation-real" if pkg.name in VALIDATION_REAL_PACKAGES else "train")
        assert split_of(pkg.name) == expected
    for name in ["warzone2100-music", "fb-music-high", "pingus-data", "xblast-tnt-musics", "hydrogen-drumkits",
                 "sonic-pi-samples", "redeclipse-data", "freecol"]:
        assert split_of(name) == "train"
    # Real-drum renders re-use MIDI of training packages only: held-out music never leaks into training.
    assert "openttd-openmsx" not in install._train_names(MIDI)
    assert set(install._train_names(MIDI)) == {"simutrans-data", "freedink-data"}
    assert package("hydrogen-drumkits").kind == DRUMS and package("sonic-pi-samples").kind == LOOPS


def test_prune_keeps_the_music_of_the_package_only(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    files = ["usr/share/games/redeclipse/data/music/theme.ogg", "usr/share/games/redeclipse/data/sounds/shot.ogg",
             "usr/share/games/redeclipse/data/textures/wall.png", "usr/share/doc/redeclipse-data/copyright"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    install.prune(root, package("redeclipse-data"))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [files[0]]
    assert not (root / "usr/share/doc").exists()  # empty folders go too


def test_prune_unpacks_pk3_music_and_names_extensionless_audio(tmp_path: Path) -> None:
    import zipfile

    root = tmp_path / "pkg"
    (root / "base").mkdir(parents=True)
    with zipfile.ZipFile(root / "base" / "0music.pk3", "w") as zf:
        zf.writestr("music/theme.ogg", b"OggS....")
        zf.writestr("maps/level.bsp", b"map")
        zf.writestr("../evil.ogg", b"OggS")  # never written outside the package
    (root / "music").mkdir()
    (root / "music" / "01").write_bytes(b"OggS\0\0\0")
    (root / "music" / "default.xml").write_bytes(b"<xml/>")
    install.prune(root, package("ufoai-music"))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "base/0music/evil.ogg", "base/0music/music/theme.ogg", "music/01.ogg"]


# ------------------------------------------------------------------------------------------
# summary and failure on a package that yields no music


def _extracted(root: Path, name: str, tracks: dict[str, float]) -> None:
    folder = root / "packages" / name
    folder.mkdir(parents=True)
    (folder / ".done").write_text("1.0\n")  # as fetch() leaves it: nothing is downloaded
    rng = np.random.default_rng(0)
    for file, seconds in tracks.items():
        sf.write(folder / file, 0.1 * rng.standard_normal((int(seconds * 8000), 2)), 8000)


def test_summary_counts_tracks_and_minutes_and_an_empty_package_fails(tmp_path: Path, capsys) -> None:
    _extracted(tmp_path, "naev-data", {"a.ogg": 30.0, "b.ogg": 90.0, "click.wav": 2.0})
    _extracted(tmp_path, "supertux-data", {"jump.wav": 1.5})  # sound effects only: no music
    config = install.InstallConfig(tmp_path, packages=["naev-data", "supertux-data"], soundfonts=())
    with pytest.raises(install.EmptyPackageError, match="supertux-data"):
        install.install(config)
    printed = capsys.readouterr().out
    assert "naev-data" in printed and "FAILED: no music" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["package"]: r for r in summary["packages"]}
    assert rows["naev-data"]["tracks"] == 2 and rows["naev-data"]["minutes"] == 2.0
    assert rows["supertux-data"]["tracks"] == 0
    # With music in every package it passes, and the CLI summary agrees.
    install.install(install.InstallConfig(tmp_path, packages=["naev-data"], soundfonts=()))
    from haaqicli.cli.corpus import corpus

    result = CliRunner().invoke(corpus, ["--corpus", str(tmp_path), "--summary", "--package", "naev-data",
                                         "--package", "supertux-data"])
    assert result.exit_code == 1
    assert "supertux-data" in result.output and "2.0" in result.output


def test_fetch_reuses_a_downloaded_deb_and_is_idempotent(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "asc-music_1.3-6_all.deb").write_bytes(b"deb")

    def fake_run(cmd: list[str], **_: object):
        calls.append(cmd)
        if cmd[0] == "dpkg":  # what dpkg -x would extract
            music = Path(cmd[-1]) / "usr/share/games/asc/music"
            music.mkdir(parents=True)
            (music / "song.ogg").write_bytes(b"ogg")
            (music / "readme.txt").write_bytes(b"txt")

        class Done:
            returncode, stderr = 0, ""
        return Done()

    pkg = package("asc-music")
    assert install.fetch(pkg, tmp_path, run=fake_run) == "1.3-6"
    assert [c[0] for c in calls] == ["dpkg"]  # no apt-get download: the deb was there
    kept = [p.name for p in (tmp_path / "packages" / "asc-music").rglob("*") if p.is_file()]
    assert sorted(kept) == [".done", "song.ogg"]
    assert install.fetch(pkg, tmp_path, run=fake_run) == "1.3-6" and len(calls) == 1  # resumed: no work


# ------------------------------------------------------------------------------------------
# raw PCM and tracker modules


def test_raw_u8_stereo_22k_converts_with_channels_rate_and_length_right(tmp_path: Path) -> None:
    sr = 22_050
    t = np.arange(sr * 3) / sr
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    (tmp_path / "song.raw").write_bytes(np.clip(np.round(interleaved * 100 + 128), 0, 255).astype(np.uint8).tobytes())
    seconds = render.convert_raw_u8(tmp_path / "song.raw", tmp_path / "song.flac")
    audio, out_sr = sf.read(tmp_path / "song.flac")
    assert out_sr == 44_100 and audio.shape[1] == 2
    assert seconds == pytest.approx(6.0, abs=0.01)  # two plays of a 3 s loop
    assert _dominant_hz(audio[:, 0], out_sr) == pytest.approx(440, abs=2)
    assert _dominant_hz(audio[:, 1], out_sr) == pytest.approx(660, abs=2)
    assert np.max(np.abs(audio)) == pytest.approx(10 ** (render.PEAK_DBFS / 20), abs=1e-3)


def _tiny_mod(path: Path) -> None:
    """A 4-channel ProTracker module: one looped 32-byte square wave, one pattern of 64 rows, a note every
    4 rows (speed 6 at 125 BPM: 64 rows x 6 ticks x 20 ms = 7.68 s)."""
    header = b"tiny".ljust(20, b"\0")
    sample = b"square".ljust(22, b"\0") + struct.pack(">HbBHH", 16, 0, 64, 0, 16)
    header += sample + (b"\0" * 22 + struct.pack(">HbBHH", 0, 0, 0, 0, 1)) * 30
    header += bytes([1, 127]) + bytes(128) + b"M.K."
    rows = []
    for row in range(64):
        cell = struct.pack(">BBBB", 0x00 | (428 >> 8), 428 & 0xFF, 0x10, 0x00) if row % 4 == 0 else bytes(4)
        rows.append(cell + bytes(12))
    data = bytes((100 if i < 16 else 156) for i in range(32))  # signed 8-bit square wave
    path.write_bytes(header + b"".join(rows) + data)


@pytest.mark.skipif(not HAVE_FFMPEG, reason="needs ffmpeg")
def test_tracker_module_renders_through_libopenmpt(tmp_path: Path) -> None:
    _tiny_mod(tmp_path / "tiny.mod")
    seconds = render.render_tracker(tmp_path / "tiny.mod", tmp_path / "tiny.flac")
    audio, sr = sf.read(tmp_path / "tiny.flac")
    assert sr == 44_100 and audio.ndim == 2
    assert 6.5 < seconds < 9.0  # 7.68 s of rows (libopenmpt ends at the last row)
    assert np.sqrt(np.mean(audio**2)) > 0.05  # notes, not silence


# ------------------------------------------------------------------------------------------
# MIDI variants, real drums, loops


def _tiny_midi(path: Path, seconds_per_beat: float = 0.5) -> None:
    import mido

    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=int(seconds_per_beat * 1e6), time=0))
    track.append(mido.Message("program_change", channel=0, program=0, time=0))
    for beat in range(8):
        track.append(mido.Message("note_on", channel=0, note=60, velocity=100, time=0))
        track.append(mido.Message("note_on", channel=9, note=36 if beat % 2 == 0 else 38, velocity=100, time=0))
        track.append(mido.Message("note_off", channel=0, note=60, velocity=0, time=480))
        track.append(mido.Message("note_off", channel=9, note=36 if beat % 2 == 0 else 38, velocity=0, time=0))
    midi.save(str(path))


def test_midi_variant_transposes_melody_not_drums_and_scales_tempo(tmp_path: Path) -> None:
    import mido

    _tiny_midi(tmp_path / "in.mid")
    variant = render.MidiVariant("sf", tempo_factor=2.0, transpose=3, programs=((0, 40), (1, 41)))
    hits = render.rewrite_midi(tmp_path / "in.mid", tmp_path / "out.mid", variant)
    out = mido.MidiFile(str(tmp_path / "out.mid"))
    notes = {(m.channel, m.note) for t in out.tracks for m in t if m.type == "note_on" and m.velocity}
    assert notes == {(0, 63), (9, 36), (9, 38)}
    programs = {m.channel: m.program for t in out.tracks for m in t if m.type == "program_change"}
    assert programs == {0: 40, 1: 41}
    assert [round(t, 3) for t, _, _ in hits] == [0.25 * i for i in range(8)]  # twice as fast
    # Forcing a tempo: 120 BPM in, 150 BPM out.
    hits = render.rewrite_midi(tmp_path / "in.mid", tmp_path / "bpm.mid", render.MidiVariant("sf", bpm=150.0))
    assert hits[1][0] == pytest.approx(0.4)
    # Truncation (after a 2x tempo change, so the tempo map matters): events up to 1.1 s, then silence.
    short = render.rewrite_midi(tmp_path / "in.mid", tmp_path / "short.mid",
                                render.MidiVariant("sf", tempo_factor=2.0, max_seconds=1.1))
    assert [round(t, 3) for t, _, _ in short] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert mido.MidiFile(str(tmp_path / "short.mid")).length == pytest.approx(1.1, abs=0.01)
    silent = render.rewrite_midi(tmp_path / "in.mid", tmp_path / "nodrums.mid", variant, drop_drums=True)
    assert len(silent) == 8  # the hits are still reported, for the real kit
    played = [m for t in mido.MidiFile(str(tmp_path / "nodrums.mid")).tracks for m in t
              if m.type == "note_on" and m.channel == 9 and m.velocity > 0]
    assert played == []


def test_drawn_variants_are_seeded_and_melodic() -> None:
    a = render.draw_variant(np.random.default_rng(5), "sf")
    assert a == render.draw_variant(np.random.default_rng(5), "sf")
    assert a != render.draw_variant(np.random.default_rng(6), "sf")
    assert all(program < 112 for _, program in a.programs)
    assert render.DRUM_CHANNEL not in dict(a.programs)
    assert 0.8 <= a.tempo_factor <= 1.25 and -4 <= a.transpose <= 4
    assert render.draw_variant(np.random.default_rng(5), "sf", faithful=True) == render.MidiVariant("sf")


def test_hydrogen_kit_names_and_drum_placement(tmp_path: Path) -> None:
    names = {"Kick": "kick", "Snare Rimshot (Pearl)": "snare", "Closed HH": "hat_closed", "Open HH": "hat_open",
             "Hi-Hat Pedal": "hat_pedal", "Tom Low": "tom_low", "Tom Hi": "tom_high", "Ride Jazz": "ride",
             "Crash": "crash", "c3 - bass drum 1": "kick", "Cowbell": "perc", "Zap 1": None}
    assert {n: render.drum_category(n) for n in names} == names
    kit_dir = tmp_path / "Kit"
    kit_dir.mkdir()
    sf.write(kit_dir / "kick.wav", np.hanning(441), 44_100)
    sf.write(kit_dir / "snare.flac", -np.hanning(221), 22_050)
    (kit_dir / "drumkit.xml").write_text(
        "<drumkit_info xmlns='http://www.hydrogen-music.org/drumkit'><name>Kit</name><instrumentList>"
        "<instrument><id>0</id><name>Kick</name><layer><filename>kick.wav</filename></layer></instrument>"
        "<instrument><id>1</id><name>Snare</name><filename>snare.flac</filename></instrument>"
        "</instrumentList></drumkit_info>")
    kit = render.load_drumkit(kit_dir)
    assert set(kit.samples) == {"kick", "snare"} and len(kit.samples["snare"]) == 442  # resampled to 44.1 kHz
    assert kit.sample("tom_low") is kit.samples["snare"]  # fallback chain tom -> snare
    track = render.render_drums([(0.5, 36, 127), (1.0, 38, 127)], kit, 44_100 * 2)
    assert np.argmax(track) == 22_050 + 220 and abs(np.argmin(track) - (44_100 + 221)) <= 2


def test_loop_tempo() -> None:
    beats, bpm = render.loop_beats(1.753)  # Sonic Pi's loop_amen: one bar of 4 beats
    assert beats == 4 and bpm == pytest.approx(136.9, abs=0.1)
    with pytest.raises(render.RenderError):
        render.loop_beats(0.01, high_bpm=170)


@needs_fluidsynth
def test_real_drums_and_loops_render_through_fluidsynth(tmp_path: Path) -> None:
    _tiny_midi(tmp_path / "in.mid")
    kit_dir = tmp_path / "Kit"
    kit_dir.mkdir()
    sf.write(kit_dir / "kick.wav", np.hanning(441) * np.sin(np.arange(441) / 5), 44_100)
    (kit_dir / "drumkit.xml").write_text("<drumkit_info><instrumentList><instrument><name>Kick</name>"
                                         "<filename>kick.wav</filename></instrument></instrumentList></drumkit_info>")
    variant = render.MidiVariant(TIMGM)
    seconds = render.render_with_real_drums(tmp_path / "in.mid", tmp_path / "drums.flac", variant,
                                            render.load_drumkit(kit_dir), drums_db=0.0)
    assert 4.0 <= seconds < 9.0  # 8 beats at 120 BPM and the soundfont's release tail
    loop = np.sin(2 * np.pi * 100 * np.arange(44_100) / 44_100)  # a 1 s "loop": 4 beats at 240 -> 2 at 120
    seconds = render.render_with_loop(tmp_path / "in.mid", tmp_path / "loop.flac",
                                      render.MidiVariant(TIMGM, bpm=120.0), loop, loop_db=-6.0)
    audio, _ = sf.read(tmp_path / "loop.flac")
    assert 4.0 <= seconds < 9.0 and np.sqrt(np.mean(audio**2)) > 0.01


def _held_organ_midi(path: Path) -> None:
    """Two organ notes where the score's export put a note-off before the note-on at the same tick:
    the second note is never released (as in several music21 scores)."""
    import mido

    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    track = mido.MidiTrack([mido.Message("program_change", channel=0, program=19, time=0),
                            mido.Message("note_on", channel=0, note=60, velocity=80, time=0),
                            mido.Message("note_off", channel=0, note=62, velocity=0, time=480),
                            mido.Message("note_on", channel=0, note=62, velocity=80, time=0),
                            mido.Message("note_off", channel=0, note=60, velocity=0, time=480),
                            mido.MetaMessage("end_of_track", time=480)])
    midi.tracks.append(track)
    midi.save(str(path))


@needs_fluidsynth
def test_a_held_note_neither_runs_the_render_forever_nor_fills_the_disk(tmp_path: Path) -> None:
    """A rewritten score releases every note where its tracks end, so it renders to about its length;
    a file that still holds a note is stopped soon after its end, as a RenderError naming it."""
    _held_organ_midi(tmp_path / "held.mid")
    seconds = render.render_midi(tmp_path / "held.mid", tmp_path / "held.flac", render.MidiVariant(TIMGM))
    assert 1.4 <= seconds < 6.0  # 1.5 s of score and the organ's release
    with pytest.raises(render.RenderError, match=r"held\.mid: fluidsynth rendered over 2 s past the score's end"):
        render.fluidsynth(tmp_path / "held.mid", TIMGM, release_s=2.0)


# ------------------------------------------------------------------------------------------
# music21


def test_score_selection_is_seeded_and_round_robin_over_collections() -> None:
    paths = ([f"/x/corpus/bach/b{i}.mxl" for i in range(50)] + [f"/x/corpus/joplin/j{i}.mxl" for i in range(2)]
             + [f"/x/corpus/palestrina/p{i}.krn" for i in range(50)] + ["/x/corpus/mon/a.rntxt"])
    chosen = install.select_scores(paths, 10, seed=1)
    assert chosen == install.select_scores(list(reversed(paths)), 10, seed=1)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    assert sum("joplin" in p for p in chosen) == 2 and not any(p.endswith(".rntxt") for p in chosen)
    assert install.select_scores(paths, 10, seed=2) != chosen
    assert install.score_id(chosen[0]).startswith(Path(chosen[0]).parent.name + "-")


@needs_fluidsynth
def test_music21_score_to_midi_to_audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from music21 import corpus as m21corpus  # the dev extra installs music21, so this never skips

    path = next(str(p) for p in m21corpus.getPaths() if Path(p).name == "bwv66.6.mxl")
    monkeypatch.setattr(install, "MIN_SCORE_QUARTERS", 30)  # a short chorale keeps the test fast
    install.score_to_midi(path, tmp_path / "bwv66.mid")
    rng = np.random.default_rng(render.stable_seed(1, "score"))
    seconds = render.render_midi(tmp_path / "bwv66.mid", tmp_path / "bwv66.flac", render.draw_variant(rng, TIMGM))
    assert 10.0 < seconds < 40.0  # 36 quarter notes, tempo x0.8-1.25
    monkeypatch.setattr(install, "MIN_SCORE_QUARTERS", 1000)
    with pytest.raises(install.DatasetError, match="quarter notes"):
        install.score_to_midi(path, tmp_path / "short.mid")
