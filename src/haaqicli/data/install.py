"""`make corpus`: fetch the corpus packages, keep their music, render what is not audio, and prove it.

Layout under the corpus root (git-ignored)::

    packages/<pkg>/...            files kept from the extracted Debian package (audio, MIDI, modules, kits)
    packages/music21/<id>.mid     music21 scores written as MIDI (cache)
    rendered/<pkg>/...            44.1 kHz FLAC renders (see haaqicli.data.render)
    summary.json                  tracks and minutes per package (what `make corpus` printed)

Resumable: a package with a `.done` marker is not fetched again, a render whose output exists is not
redone. A package that yields no music track is a failure, never a silent skip: an installed package
is not music.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from haaqicli.data import render
from haaqicli.data.packages import (
    AUDIO,
    DRUMS,
    LOOPS,
    MIDI,
    PACKAGES,
    RAW_U8,
    SCORES,
    SOUNDFONTS,
    TRACKER,
    TRAIN,
    DatasetError,
    Package,
    guard_package,
    package,
)
from haaqicli.util.atomic import atomic_write

log = logging.getLogger(__name__)

KEEP_EXTENSIONS: dict[str, tuple[str, ...]] = {
    AUDIO: (".ogg", ".oga", ".wav", ".flac", ".mp3", ".opus"),
    MIDI: (".mid", ".midi"),
    TRACKER: (".xm", ".it", ".s3m", ".mod"),
    RAW_U8: (".raw",),
    DRUMS: (".wav", ".flac", ".aif", ".aiff", ".ogg", ".xml"),
    LOOPS: (".flac", ".wav"),
}
# Sonic Pi loops with a beat (drones and effects have no tempo to lock a score to).
LOOP_NAMES = ("loop_amen", "loop_amen_full", "loop_breakbeat", "loop_compus", "loop_electric", "loop_garzul",
              "loop_industrial", "loop_mehackit1", "loop_mehackit2", "loop_mika", "loop_perc1", "loop_perc2",
              "loop_safari", "loop_tabla")
MIN_SCORE_QUARTERS = 48  # shorter scores render below MIN_TRACK_SECONDS at usual tempi


class EmptyPackageError(DatasetError):
    """One or more packages yielded no music track (the message names them)."""


@dataclass
class InstallConfig:
    corpus_dir: Path
    packages: Sequence[str] | None = None  # None: all of haaqicli.data.packages.PACKAGES
    workers: int = 2
    seed: int = 2026
    scores: int = 120  # music21 scores rendered (a bounded, seeded subset of the corpus)
    score_variants: int = 2  # renders per score: soundfont, instruments, tempo and key differ
    loop_scores: int = 50  # scores rendered again with a Sonic Pi loop under them
    midi_variants: int = 2  # renders per game MIDI file: as written (FluidR3), then seeded variants
    max_render_s: float = 150.0  # clips need minutes of a piece, not whole movements (CPU time)
    soundfonts: tuple[str, ...] = tuple(SOUNDFONTS)


@dataclass
class PackageSummary:
    package: str
    kind: str
    split: str
    tracks: int
    minutes: float
    problems: int = 0  # files that could not be fetched/rendered (named in the log)

    @property
    def failed(self) -> bool:
        return self.tracks == 0


# ------------------------------------------------------------------------------------------
# fetch


# Leading bytes of audio files some packages ship without an extension (lincity-ng-data's music).
AUDIO_MAGIC: dict[bytes, str] = {b"OggS": ".ogg", b"fLaC": ".flac", b"RIFF": ".wav", b"ID3": ".mp3"}
ARCHIVES = (".pk3", ".zip")  # ufoai-music and nexuiz-music keep their music in Quake-style zip archives


def unpack_archives(folder: Path) -> None:
    """Extract the audio members of zip archives (.pk3) beside them, under the archive's stem; drop the
    archives."""
    keep = KEEP_EXTENSIONS[AUDIO]
    for archive in sorted(p for p in folder.rglob("*") if p.suffix.lower() in ARCHIVES and p.is_file()):
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    parts = [part for part in Path(member.filename).parts if part not in ("", ".", "..", "/")]
                    if member.is_dir() or not parts or Path(parts[-1]).suffix.lower() not in keep:
                        continue
                    target = archive.parent / archive.stem / Path(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as error:
            raise DatasetError(f"{archive.name}: not a readable zip archive ({error})") from None
        archive.unlink()


def name_by_content(folder: Path) -> None:
    """Give extensionless audio files the extension their content says (OggS -> .ogg, ...)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and not p.suffix):
        with open(path, "rb") as handle:
            head = handle.read(4)
        suffix = next((ext for magic, ext in AUDIO_MAGIC.items() if head.startswith(magic)), None)
        if suffix:
            path.rename(path.with_name(path.name + suffix))


def prune(folder: Path, pkg: Package) -> None:
    """Keep the package's music sources only (game data is mostly textures and models)."""
    keep = KEEP_EXTENSIONS[pkg.kind]
    if pkg.kind == AUDIO:
        for path in folder.rglob("*"):
            if path.is_symlink():  # links into other packages (or other languages' copies) would dangle
                path.unlink()
        unpack_archives(folder)
        name_by_content(folder)
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_symlink():  # links into other packages would dangle
            path.unlink()
        elif path.is_file():
            rel = path.relative_to(folder).as_posix()
            wanted = path.suffix.lower() in keep and (not pkg.music_globs or any(fnmatch(rel, g) for g in pkg.music_globs))
            if not wanted:
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def fetch(pkg: Package, corpus_dir: Path, run: Callable[..., Any] = subprocess.run) -> str:
    """apt-get download + dpkg -x one Debian package into packages/<name> (pruned); returns its version."""
    guard_package(pkg.name)
    dest = corpus_dir / "packages" / pkg.name
    done = dest / ".done"
    if done.is_file():
        return done.read_text().strip()
    debs = corpus_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg.name}_*.deb"))
    if not found:
        result = run(["apt-get", "download", "-qq", pkg.name], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{pkg.name}_*.deb"))
        if result.returncode != 0 or not found:
            raise DatasetError(f"{pkg.name}: apt-get download failed ({(result.stderr or '').strip()[:200]})")
    deb = found[-1]
    version = unquote(deb.name.split("_")[1])  # apt writes the epoch colon as %3a
    (corpus_dir / "packages").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{pkg.name}.", dir=corpus_dir / "packages"))
    try:
        result = run(["dpkg", "-x", str(deb), str(staging)], capture_output=True, text=True)
        if result.returncode != 0:
            raise DatasetError(f"{deb.name}: dpkg -x failed ({(result.stderr or '').strip()[:200]})")
        prune(staging, pkg)
        (staging / ".done").write_text(version + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    deb.unlink()
    return version


# ------------------------------------------------------------------------------------------
# render jobs: (output path, function name, arguments); outputs that exist are skipped


Job = tuple[Path, str, tuple[Any, ...]]


def _files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    suffixes = tuple(suffixes)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _midi_sources(corpus_dir: Path, names: Iterable[str]) -> list[tuple[str, Path]]:
    return [(name, mid) for name in names for mid in _files(corpus_dir / "packages" / name, KEEP_EXTENSIONS[MIDI])]


def midi_jobs(pkg: Package, corpus_dir: Path, config: InstallConfig) -> list[Job]:
    """Each MIDI file as written with the first soundfont, then `midi_variants - 1` seeded variants with
    the others (soundfonts in a seeded rotation)."""
    src_dir = corpus_dir / "packages" / pkg.name
    jobs: list[Job] = []
    others = config.soundfonts[1:] or config.soundfonts
    for mid in _files(src_dir, KEEP_EXTENSIONS[MIDI]):
        rel = mid.relative_to(src_dir).with_suffix(".flac")
        offset = render.stable_seed(config.seed, "midi-soundfont", pkg.name, rel) % len(others)
        for k in range(config.midi_variants):
            soundfont = config.soundfonts[0] if k == 0 else others[(offset + k - 1) % len(others)]
            rng = np.random.default_rng(render.stable_seed(config.seed, "midi", pkg.name, rel, k))
            variant = replace(render.draw_variant(rng, soundfont, faithful=k == 0), max_seconds=config.max_render_s)
            out = corpus_dir / "rendered" / pkg.name / variant.tag / rel
            jobs.append((out, "render_midi", (mid, out, variant)))
    return jobs


def score_jobs(corpus_dir: Path, config: InstallConfig) -> list[Job]:
    """Each converted music21 score in `score_variants` seeded variants over the soundfonts."""
    jobs: list[Job] = []
    for mid in _files(corpus_dir / "packages" / "music21", (".mid",)):
        offset = render.stable_seed(config.seed, "score-soundfont", mid.stem) % len(config.soundfonts)
        for k in range(config.score_variants):
            soundfont = config.soundfonts[(offset + k) % len(config.soundfonts)]
            rng = np.random.default_rng(render.stable_seed(config.seed, "score", mid.stem, k))
            variant = replace(render.draw_variant(rng, soundfont), max_seconds=config.max_render_s)
            out = corpus_dir / "rendered" / "music21" / variant.tag / f"{mid.stem}-v{k}.flac"
            jobs.append((out, "render_midi", (mid, out, variant)))
    return jobs


def drum_jobs(corpus_dir: Path, config: InstallConfig) -> list[Job]:
    """Training MIDI with GM drums, re-rendered with a seeded Hydrogen kit in place of the GM drums."""
    kits_root = corpus_dir / "packages" / "hydrogen-drumkits"
    kits = sorted({p.parent for p in kits_root.rglob("drumkit.xml")})
    if not kits:
        return []
    sources = [(name, mid) for name, mid in _midi_sources(corpus_dir, _train_names(MIDI)) if _has_drums(mid)]
    jobs: list[Job] = []
    for name, mid in sources:
        rng = np.random.default_rng(render.stable_seed(config.seed, "drums", name, mid.name))
        kit = kits[int(rng.integers(len(kits)))]
        variant = replace(render.draw_variant(rng, config.soundfonts[int(rng.integers(len(config.soundfonts)))]),
                          max_seconds=config.max_render_s)
        rel = mid.relative_to(corpus_dir / "packages" / name).with_suffix("")
        out = corpus_dir / "rendered" / "hydrogen-drumkits" / name / f"{rel}-{_slug(kit.name)}.flac"
        jobs.append((out, "render_with_real_drums", (mid, out, variant, kit, float(rng.uniform(-4.0, 2.0)))))
    return jobs


def loop_jobs(corpus_dir: Path, config: InstallConfig) -> list[Job]:
    """The first `loop_scores` scores (seeded order) at the tempo of a seeded Sonic Pi loop, loop under."""
    loops_dir = corpus_dir / "packages" / "sonic-pi-samples"
    loops = [p for p in _files(loops_dir, KEEP_EXTENSIONS[LOOPS]) if p.stem in LOOP_NAMES]
    scores = _files(corpus_dir / "packages" / "music21", (".mid",))
    if not loops or not scores:
        return []
    order = np.random.default_rng(render.stable_seed(config.seed, "loop-scores")).permutation(len(scores))
    jobs: list[Job] = []
    for i in order[: config.loop_scores]:
        mid = scores[int(i)]
        rng = np.random.default_rng(render.stable_seed(config.seed, "loop", mid.stem))
        loop = loops[int(rng.integers(len(loops)))]
        variant = replace(render.draw_variant(rng, config.soundfonts[int(rng.integers(len(config.soundfonts)))]),
                          max_seconds=config.max_render_s)
        out = corpus_dir / "rendered" / "sonic-pi-samples" / "music21" / f"{mid.stem}-{loop.stem}.flac"
        jobs.append((out, "render_score_with_loop", (mid, out, variant, loop, float(rng.uniform(-9.0, -3.0)))))
    return jobs


def _train_names(kind: str) -> list[str]:
    return [p.name for p in PACKAGES if p.kind == kind and p.split == TRAIN]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _has_drums(mid: Path) -> bool:
    try:
        return any(m.type == "note_on" and m.channel == render.DRUM_CHANNEL and m.velocity > 0
                   for track in render.read_midi(mid).tracks for m in track)
    except render.RenderError:
        return False


def run_job(job: Job) -> tuple[Path, str | None]:
    """Worker entry: render one output; returns (output, error message or None)."""
    out, name, args = job
    try:
        if name == "render_midi":
            render.render_midi(*args)
        elif name == "render_with_real_drums":
            mid, out_path, variant, kit_dir, drums_db = args
            render.render_with_real_drums(mid, out_path, variant, render.load_drumkit(kit_dir), drums_db)
        elif name == "render_score_with_loop":
            mid, out_path, variant, loop_path, loop_db = args
            loop = render.read_mono(loop_path)
            _, bpm = render.loop_beats(len(loop) / render.SR)
            variant = render.MidiVariant(variant.soundfont, transpose=variant.transpose, programs=variant.programs,
                                         bpm=bpm, max_seconds=variant.max_seconds)
            render.render_with_loop(mid, out_path, variant, loop, loop_db)
        elif name == "render_tracker":
            render.render_tracker(*args)
        elif name == "convert_raw_u8":
            render.convert_raw_u8(*args)
        elif name == "score_to_midi":
            score_to_midi(*args)
        else:
            raise ValueError(f"unknown job {name}")
    except (render.RenderError, DatasetError, OSError, ValueError, RuntimeError) as error:
        return out, str(error).splitlines()[0][:300]
    return out, None


def run_jobs(jobs: list[Job], workers: int, label: str) -> list[str]:
    """Run the jobs whose output is missing (in parallel); returns one message per failure."""
    todo = [job for job in jobs if not job[0].exists() and not _failed_marker(job[0]).exists()]
    print(f"install-corpus: {label}: {len(jobs) - len(todo)} of {len(jobs)} outputs present, {len(todo)} to make",
          flush=True)
    problems: list[str] = []
    if not todo:
        return problems
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for out, error in pool.map(run_job, todo, chunksize=1):
            if error:
                # A marker, so a resumed run does not retry a source that cannot render.
                _failed_marker(out).parent.mkdir(parents=True, exist_ok=True)
                _failed_marker(out).write_text(error + "\n")
                problems.append(f"{out.name}: {error}")
    return problems


def _failed_marker(out: Path) -> Path:
    return out.with_name(f".{out.name}.failed")


# ------------------------------------------------------------------------------------------
# music21


def select_scores(paths: Sequence[str], count: int, seed: int) -> list[str]:
    """A seeded subset of music21 corpus files, round-robin over collections (composers, folk sets), so
    the few large collections (Palestrina, Ryan's Mammoth, Bach) do not crowd out the rest."""
    groups: dict[str, list[str]] = {}
    for path in sorted(paths):
        parts = Path(path).parts
        if Path(path).suffix.lower() == ".rntxt":  # harmonic analyses, not playable scores
            continue
        collection = parts[parts.index("corpus") + 1] if "corpus" in parts else Path(path).parent.name
        groups.setdefault(collection, []).append(path)
    rng = np.random.default_rng(render.stable_seed(seed, "music21-select"))
    queues = [list(np.array(groups[g])[rng.permutation(len(groups[g]))]) for g in sorted(groups)]
    chosen: list[str] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(str(queue.pop(0)))
    return chosen


def score_id(path: str) -> str:
    """A readable, stable id of a corpus file: collection + file stem (+ a short hash for uniqueness)."""
    parts = Path(path).parts
    rel = "/".join(parts[parts.index("corpus") + 1:]) if "corpus" in parts else Path(path).name
    digest = render.stable_seed(rel) % 16**6
    return f"{_slug(Path(rel).parent.name)}-{_slug(Path(rel).stem)[:40]}-{digest:06x}"


def score_to_midi(path: str, out: Path) -> None:
    """Parse a music21 corpus file (first score of an opus) and write it as MIDI; short scores fail."""
    # lazy: music21 is an optional dependency, needed on this path only
    from music21 import corpus as m21corpus

    try:
        score = m21corpus.parse(path)
        if type(score).__name__ == "Opus":
            score = score.scores[0]
        quarters = float(score.highestTime)
    except Exception as error:  # music21 raises many types for files it cannot read
        raise DatasetError(f"{Path(path).name}: music21 cannot parse it ({error})") from None
    if quarters < MIN_SCORE_QUARTERS:
        raise DatasetError(f"{Path(path).name}: only {quarters:.0f} quarter notes long")
    try:
        atomic_write(out, lambda tmp: score.write("midi", fp=str(tmp)), keep_suffix=True)
    except Exception as error:
        raise DatasetError(f"{Path(path).name}: music21 cannot write MIDI ({error})") from None


def music21_jobs(corpus_dir: Path, config: InstallConfig) -> list[Job]:
    # lazy: music21 is an optional dependency, needed on this path only
    from music21 import corpus as m21corpus

    chosen = select_scores([str(p) for p in m21corpus.getPaths()], config.scores, config.seed)
    folder = corpus_dir / "packages" / "music21"
    return [(folder / f"{score_id(p)}.mid", "score_to_midi", (p, folder / f"{score_id(p)}.mid")) for p in chosen]


# ------------------------------------------------------------------------------------------
# the whole install and its summary


def summarise(corpus_dir: Path, names: Sequence[str], problems: dict[str, list[str]] | None = None) -> list[PackageSummary]:
    """Tracks (as `haaqi dataset build` sees them) and minutes per package."""
    # lazy: scipy, pandas, soundfile only where this path runs (start-up time)
    from haaqicli.data.corpus import scan_corpus

    rows = []
    for name in names:
        pkg = package(name)
        tracks = scan_corpus(corpus_dir, [name])
        minutes = sum(t.duration_s for t in tracks) / 60.0
        rows.append(PackageSummary(name, pkg.kind, pkg.split, len(tracks), round(minutes, 1),
                                   len((problems or {}).get(name, []))))
    return rows


def format_summary(rows: Sequence[PackageSummary]) -> str:
    lines = [f"{'package':<24} {'kind':<8} {'split':<16} {'tracks':>7} {'minutes':>9}  status"]
    for r in rows:
        status = "FAILED: no music" if r.failed else "ok"
        if r.problems:
            status += f" ({r.problems} files could not be made)"
        lines.append(f"{r.package:<24} {r.kind:<8} {r.split:<16} {r.tracks:>7} {r.minutes:>9.1f}  {status}")
    lines.append(f"{'total':<24} {'':<8} {'':<16} {sum(r.tracks for r in rows):>7} "
                 f"{sum(r.minutes for r in rows):>9.1f}")
    return "\n".join(lines)


def install(config: InstallConfig) -> list[PackageSummary]:
    """Fetch, prune and render every package, print the summary; raise naming the packages with no music."""
    corpus_dir = Path(config.corpus_dir)
    names = list(config.packages) if config.packages else [p.name for p in PACKAGES]
    for name in names:
        guard_package(name)
    (corpus_dir / "packages").mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {name: [] for name in names}
    selected = [package(n) for n in names]
    # Fetch the Debian packages first: drum and loop renders need other packages' files.
    needed = set(names) | ({"simutrans-data", "freedink-data"} if "hydrogen-drumkits" in names else set())
    needed |= {"music21"} if "sonic-pi-samples" in names else set()
    for pkg in PACKAGES:
        if pkg.name in needed and pkg.debian:
            try:
                version = fetch(pkg, corpus_dir)
                print(f"install-corpus: {pkg.name}: {version}", flush=True)
            except DatasetError as error:
                problems.setdefault(pkg.name, []).append(str(error))
                print(f"install-corpus: {error}", flush=True)
    missing = [sf for sf in config.soundfonts if not Path(sf).is_file()]
    if missing:
        raise DatasetError(f"soundfont {missing[0]} is missing (scripts/install-corpus.sh installs it)")
    if "music21" in needed:
        problems["music21"] = run_jobs(music21_jobs(corpus_dir, config), config.workers, "music21 scores -> MIDI")
    jobs: list[tuple[str, Job]] = []
    for pkg in selected:
        src = corpus_dir / "packages" / pkg.name
        if pkg.kind == TRACKER:
            for module in _files(src, KEEP_EXTENSIONS[TRACKER]):
                out = corpus_dir / "rendered" / pkg.name / module.relative_to(src).with_suffix(".flac")
                jobs.append((pkg.name, (out, "render_tracker", (module, out))))
        elif pkg.kind == RAW_U8:
            for raw in _files(src, KEEP_EXTENSIONS[RAW_U8]):
                out = corpus_dir / "rendered" / pkg.name / raw.relative_to(src).with_suffix(".flac")
                jobs.append((pkg.name, (out, "convert_raw_u8", (raw, out))))
        elif pkg.kind == MIDI:
            jobs.extend((pkg.name, job) for job in midi_jobs(pkg, corpus_dir, config))
        elif pkg.kind == SCORES:
            jobs.extend((pkg.name, job) for job in score_jobs(corpus_dir, config))
        elif pkg.kind == DRUMS:
            jobs.extend((pkg.name, job) for job in drum_jobs(corpus_dir, config))
        elif pkg.kind == LOOPS:
            jobs.extend((pkg.name, job) for job in loop_jobs(corpus_dir, config))
    for name in names:
        mine = [job for owner, job in jobs if owner == name]
        if mine:
            problems[name] += run_jobs(mine, config.workers, name)
    for name, messages in problems.items():
        for message in messages[:20]:
            print(f"install-corpus: {name}: could not make {message}", flush=True)
    rows = summarise(corpus_dir, names, problems)
    print(format_summary(rows), flush=True)
    payload = {"packages": [asdict(r) for r in rows], "tracks": sum(r.tracks for r in rows),
               "minutes": round(sum(r.minutes for r in rows), 1), "config": {
                   "seed": config.seed, "scores": config.scores, "score_variants": config.score_variants,
                   "loop_scores": config.loop_scores, "midi_variants": config.midi_variants,
                   "max_render_s": config.max_render_s, "soundfonts": list(config.soundfonts)}}
    atomic_write(corpus_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=1) + "\n"))
    failed = [r.package for r in rows if r.failed]
    if failed:
        raise EmptyPackageError(f"no music from package(s) {', '.join(failed)} (see the table above)")
    return rows
