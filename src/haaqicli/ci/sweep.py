"""Codec bitrate sweep: encode + decode each input along a bitrate ladder with ffmpeg, score every
rung for every profile, and find the lowest bitrate per codec that meets a target score.

Ladder: Kasperuk & Zielinski's rungs 24 ... 320 kb/s, each codec restricted to the bitrates its ffmpeg
encoder accepts (see CODECS). A rung the encoder still rejects at run time (libvorbis' limits depend on
sample rate and channel count) is kept in the table with status "unsupported" and never scored.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from haaqicli.audio import DownmixWarning, discover, downmix_message, open_audio
from haaqicli.audiogram import resolve_profiles
from haaqicli.ci.evaluate import file_scores
from haaqicli.reference import score_pairs
from haaqicli.scoring import ScoreOptions, Scorer
from haaqicli.scoring.scorers import model_scorer
from haaqicli.util.errors import HaaqiError, ToolMissingError

DEFAULT_LADDER: tuple[int, ...] = (24, 32, 48, 64, 96, 128, 160, 192, 256, 320)

# MPEG-1 (32/44.1/48 kHz) bitrate tables: the encoders refuse (mp2) or silently round (lame) others.
_MP3_RATES = frozenset({32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320})
_MP2_RATES = frozenset({32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384})


@dataclass(frozen=True)
class Codec:
    name: str
    encoder: str  # ffmpeg encoder
    ext: str  # container extension
    min_kbps: int
    max_kbps: int  # total, or per channel when per_channel
    per_channel: bool = False
    allowed: frozenset[int] | None = None  # exact set of valid bitrates, if the format has one
    extra: tuple[str, ...] = ()

    def accepts(self, kbps: int, channels: int) -> bool:
        top = self.max_kbps * (channels if self.per_channel else 1)
        if not self.min_kbps <= kbps <= top:
            return False
        return self.allowed is None or kbps in self.allowed


CODECS: dict[str, Codec] = {
    # libmp3lame rounds anything below 32 kb/s up to 32 at 44.1/48 kHz (MPEG-1 Layer III).
    "mp3": Codec("mp3", "libmp3lame", "mp3", 32, 320, allowed=_MP3_RATES),
    # ffmpeg's native AAC-LC in MP4 (priming delay recorded in the edit list).
    "aac": Codec("aac", "aac", "m4a", 16, 320),
    # libopus: 6 ... 256 kb/s per channel; encodes at 48 kHz (ffmpeg resamples).
    "opus": Codec("opus", "libopus", "opus", 6, 256, per_channel=True),
    # libvorbis' managed bitrate range depends on rate and channels (44.1 kHz stereo: ~45-450,
    # mono: ~32-240); rungs outside it are reported as unsupported at run time.
    "vorbis": Codec("vorbis", "libvorbis", "ogg", 32, 500),
    "mp2": Codec("mp2", "mp2", "mp2", 32, 384, allowed=_MP2_RATES),
}

# score: what decides (`method`: exact HAAQI by default, the model's prediction with --fast)
SWEEP_COLUMNS = ["input", "codec", "bitrate_kbps", "actual_kbps", "profile", "score", "score_exact",
                 "meets_target", "lowest", "status", "error", "score_predicted", "score_lo", "score_hi", "method"]
ANSWER_COLUMNS = ["codec", "profile", "criterion", "target", "lowest_kbps", "score_at_lowest",
                  "lowest_kbps_exact", "score_exact_at_lowest", "method"]


def require_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise ToolMissingError("ffmpeg not found on PATH: haaqi sweep needs it to encode and decode "
                               "(install it, e.g. apt-get install ffmpeg)")
    return exe


def parse_codecs(text: str) -> list[Codec]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise HaaqiError("--codec: give at least one codec")
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise HaaqiError(f"--codec: unknown codec '{unknown[0]}' (choose from {', '.join(CODECS)})")
    return [CODECS[n] for n in dict.fromkeys(names)]


def parse_bitrates(text: str | None) -> tuple[int, ...]:
    if not text:
        return DEFAULT_LADDER
    values = []
    for part in text.split(","):
        part = part.strip().lower().removesuffix("k")
        try:
            value = int(part)
        except ValueError:
            raise HaaqiError(f"--bitrates: '{part}' is not a bitrate in kb/s (e.g. 64,128,192)") from None
        if not 1 <= value <= 1024:
            raise HaaqiError(f"--bitrates: {value} kb/s is outside 1-1024")
        values.append(value)
    return tuple(sorted(set(values)))


@dataclass
class Rung:
    index: int  # input index
    input: str  # input name shown in tables
    source: Path
    codec: str  # codec name, or "original"
    kbps: int | None
    decoded: Path
    actual_kbps: float = math.nan
    status: str = "pending"  # ok | unsupported | error
    error: str = ""


def _first_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    useful = [line for line in lines if "Error" not in line[:30] or "bit rate" in line] or lines
    return useful[0][:200] if useful else "ffmpeg failed"


def encode_decode(rung: Rung, codec: Codec | None, sample_rate: int, channels: int, duration_s: float,
                  ffmpeg: str) -> Rung:
    """Encode to ``codec`` at ``rung.kbps`` then decode to float WAV at the input's rate and channels.
    For the "original" rung, decode only (so every scored file goes through the same path)."""
    rung.decoded.parent.mkdir(parents=True, exist_ok=True)
    source = rung.source
    if codec is not None:
        encoded = rung.decoded.with_suffix("." + codec.ext)
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(source), "-map", "0:a:0", "-vn",
               "-c:a", codec.encoder, "-b:a", f"{rung.kbps}k", *codec.extra, str(encoded)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not encoded.is_file() or encoded.stat().st_size == 0:
            rung.status, rung.error = "unsupported", f"{codec.encoder} rejected {rung.kbps} kb/s: " \
                f"{_first_error_line(proc.stderr)}"
            return rung
        if duration_s > 0:
            rung.actual_kbps = encoded.stat().st_size * 8 / duration_s / 1000
        source = encoded
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(source), "-map", "0:a:0", "-vn",
           "-ar", str(sample_rate), "-ac", str(channels), "-c:a", "pcm_f32le", str(rung.decoded)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        rung.status, rung.error = "error", f"ffmpeg could not decode {source.name}: {_first_error_line(proc.stderr)}"
        return rung
    if codec is not None:
        source.unlink(missing_ok=True)  # keep the temp dir small
    rung.status = "ok"
    return rung


# ([(reference, processed)], options) -> one row per processed x profile x ear with the columns
# processed, profile, ear, score, status, error (and segments): haaqicli.reference.score_pairs' contract
ExactFn = Callable[[Sequence[tuple[Path, Path]], ScoreOptions], pd.DataFrame]

METHOD_EXACT = "exact"
METHOD_PREDICTED = "predicted"


def exact_pairs(pairs: Sequence[tuple[Path, Path]], options: ScoreOptions) -> pd.DataFrame:
    """Exact HAAQI of each decoded rung against the decoded original: the codec delay removed by
    alignment, each channel heard by its ear (a mono file by both), the original presented at --spl and
    the rung keeping its level relative to it (haaqicli.util.levels), long inputs in segments."""

    return score_pairs(pairs, resolve_profiles(options.profiles), spl=options.spl, mix=options.mix,
                       workers=options.workers, progress=options.progress, device=options.device,
                       segment_seconds=options.segment_seconds)


@dataclass
class SweepResult:
    table: pd.DataFrame  # SWEEP_COLUMNS
    answer: pd.DataFrame  # ANSWER_COLUMNS
    skipped: list[str] = field(default_factory=list)  # ladder rungs outside an encoder's range
    target: float = 0.0
    codecs: list[str] = field(default_factory=list)  # in the order asked for
    profiles: list[str] = field(default_factory=list)
    method: str = METHOD_EXACT  # what `score` (and the answer) is: exact HAAQI, or the model's preview
    notes: list[str] = field(default_factory=list)  # one line each, for the terminal
    warnings: list[str] = field(default_factory=list)  # a --fast preview that cannot rank its rungs


def plan_ladder(codecs: Sequence[Codec], bitrates: Sequence[int], channels: int) -> tuple[
        list[tuple[Codec, int]], list[str]]:
    plan, skipped = [], []
    for codec in codecs:
        for kbps in bitrates:
            if codec.accepts(kbps, min(channels, 2)):
                plan.append((codec, kbps))
            else:
                skipped.append(f"{codec.name} {kbps} kb/s")
    return plan, skipped


def _per_file(table: pd.DataFrame | None, key: str) -> dict[str, dict[str, tuple[float, str]]]:
    """{file name: {profile: (score over ears, error)}} from a per-ear table keyed by path column `key`."""
    return {name: {profile: values[:2] for profile, values in scores.items()}
            for name, scores in _per_file_with_interval(table, key).items()}


def _per_file_with_interval(table: pd.DataFrame | None, key: str
                            ) -> dict[str, dict[str, tuple[float, str, float, float]]]:
    """{file name: {profile: (score over ears, error, score_lo, score_hi)}} (the interval: a prediction's)."""
    if table is None or table.empty:
        return {}
    renamed = table.rename(columns={key: "file"}) if key != "file" else table
    by_name: dict[str, dict[str, tuple[float, str, float, float]]] = {}
    for row in file_scores(renamed).itertuples(index=False):
        by_name.setdefault(Path(str(row.file)).name, {})[row.profile] = (row.score, row.error, row.score_lo,
                                                                         row.score_hi)
    return by_name


def run_sweep(
    inputs: Sequence[str | Path],
    codecs: Sequence[Codec],
    bitrates: Sequence[int],
    options: ScoreOptions,
    target: float,
    scorer: Scorer | None = None,
    exact: bool = False,
    exact_fn: ExactFn | None = None,
    criterion: str = "min",
    workers: int = 1,
    keep_dir: str | Path | None = None,
    fast: bool = False,
) -> SweepResult:
    """Encode/decode/score the ladder. By default every rung gets the exact HAAQI against the decoded
    original and `score` is that; with ``fast`` the model predicts `score` instead (a preview), and
    ``exact`` then adds the exact HAAQI in `score_exact`. ``scorer`` (the model) and ``exact_fn`` are
    injectable (tests, other models)."""
    # lazy: joblib only where this path runs (start-up time)
    from joblib import Parallel, delayed

    ffmpeg = require_ffmpeg()
    scorer = scorer or model_scorer
    exact_fn = exact_fn or exact_pairs
    want_exact = exact or not fast
    items = discover(inputs)
    if not items:
        raise HaaqiError("no audio files found in " + ", ".join(map(str, inputs)))
    names = _unique_names([item.relative for item in items])

    with tempfile.TemporaryDirectory(prefix="haaqi-sweep-") as tmp_name:
        tmp = Path(keep_dir) if keep_dir else Path(tmp_name)
        jobs: list[tuple[Rung, Codec | None, int, int, float]] = []
        skipped: set[str] = set()
        for index, item in enumerate(items):
            info = open_audio(item.path).info  # AudioError names the file
            if info.downmixed:
                warnings.warn(downmix_message(item.path, info.file_channels), DownmixWarning, stacklevel=2)
            plan, skip = plan_ladder(codecs, bitrates, info.channels)
            skipped.update(skip)
            rungs = [(None, None)] + [(c, k) for c, k in plan]
            for codec, kbps in rungs:
                label = "original" if codec is None else f"{codec.name}-{kbps}k"
                rung = Rung(index, names[index], item.path, codec.name if codec else "original", kbps,
                            tmp / f"i{index:04d}-{label}.wav")
                jobs.append((rung, codec, info.sample_rate, info.channels, info.duration_s))
        if all(codec is None for _, codec, *_ in jobs):
            raise HaaqiError(f"empty ladder: none of {', '.join(f'{b}' for b in bitrates)} kb/s is within what "
                             f"{', '.join(c.name for c in codecs)} accept (see haaqi sweep --help)")
        done: list[Rung] = Parallel(n_jobs=workers, prefer="threads")(
            delayed(encode_decode)(rung, codec, sr, ch, dur, ffmpeg) for rung, codec, sr, ch, dur in jobs
        )
        if all(r.status == "unsupported" for r in done if r.codec != "original"):
            raise HaaqiError("empty ladder: the encoders rejected every rung (" +
                             "; ".join(r.error for r in done if r.codec != "original")[:300] + ")")
        ok = [r for r in done if r.status == "ok"]
        predicted = _per_file_with_interval(scorer([str(r.decoded) for r in ok], options) if fast and ok else None,
                                            "file")
        exact_table = None
        if want_exact:
            originals = {r.index: r.decoded for r in ok if r.codec == "original"}
            # the original against itself too: the ceiling that no bitrate can pass for this listener
            pairs = [(originals[r.index], r.decoded) for r in ok if r.index in originals]
            exact_table = exact_fn(pairs, options) if pairs else None
        exact_scores = _per_file(exact_table, "processed")

    seen = [profile for by_name in (predicted, exact_scores) for scores in by_name.values() for profile in scores]
    profile_names = _profile_names(pd.DataFrame({"profile": seen}), options)
    method = METHOD_PREDICTED if fast else METHOD_EXACT
    rows = []
    for r in done:
        for profile in profile_names:
            row = {"input": r.input, "codec": r.codec, "bitrate_kbps": r.kbps if r.kbps is not None else np.nan,
                   "actual_kbps": r.actual_kbps, "profile": profile, "score": np.nan, "score_exact": np.nan,
                   "score_predicted": np.nan, "score_lo": np.nan, "score_hi": np.nan, "method": method,
                   "status": r.status, "error": r.error}
            if r.status == "ok":
                missing = (np.nan, "not scored")
                guess, guess_error, row["score_lo"], row["score_hi"] = (
                    predicted.get(r.decoded.name, {}).get(profile, (*missing, np.nan, np.nan)) if fast
                    else (*missing, np.nan, np.nan))
                exact_score, exact_error = (exact_scores.get(r.decoded.name, {}).get(profile, missing)
                                            if want_exact else missing)
                row["score_predicted"] = guess if fast else np.nan
                row["score_exact"] = exact_score if want_exact else np.nan
                row["score"] = row["score_predicted"] if fast else row["score_exact"]
                if not np.isfinite(row["score"]):
                    row["status"], row["error"] = "error", (guess_error if fast else exact_error) or "not scored"
                elif want_exact and not np.isfinite(exact_score):
                    row["error"] = "exact: " + (exact_error or "not scored")
            rows.append(row)
    table = pd.DataFrame(rows)
    table["meets_target"] = table["score"] >= target
    table["lowest"] = False
    answer = lowest_bitrates(table, target, criterion, want_exact)
    answer["method"] = method
    codec_order = [c.name for c in codecs]
    answer = answer.sort_values(
        ["codec", "profile"], key=lambda col: col.map({n: i for i, n in enumerate(
            codec_order if col.name == "codec" else profile_names)}), kind="stable").reset_index(drop=True)
    for a in answer.itertuples(index=False):
        if not pd.isna(a.lowest_kbps):
            hit = (table["codec"] == a.codec) & (table["profile"] == a.profile) & (table["bitrate_kbps"] == a.lowest_kbps)
            table.loc[hit, "lowest"] = True
    table = table.reindex(columns=SWEEP_COLUMNS)
    rank = {name: i for i, name in enumerate(["original", *codec_order, *profile_names])}
    table = table.sort_values(["input", "codec", "bitrate_kbps", "profile"], kind="stable", na_position="first",
                              key=lambda col: col.map(rank) if col.name in ("codec", "profile") else col)
    notes = _ceiling_notes(table, target, criterion) if want_exact else []
    if exact_table is not None and options.segment_seconds and "segments" in exact_table.columns:
        n = exact_table.loc[exact_table["segments"].fillna(1) > 1, "processed"].nunique()
        if n:
            notes.append(f"{n} decoded file(s) longer than {1.5 * options.segment_seconds:g} s were scored in "
                         f"{options.segment_seconds:g}-s segments (length-weighted mean; --segment-seconds 0: whole)")
    return SweepResult(table=table.reset_index(drop=True), answer=answer, skipped=sorted(skipped), target=target,
                       codecs=codec_order, profiles=profile_names, method=method, notes=notes,
                       warnings=curve_warnings(table) if fast else [])


def _ceiling_notes(table: pd.DataFrame, target: float, criterion: str) -> list[str]:
    """Profiles for which even the original (exact HAAQI against itself) misses the target: HAAQI compares
    with normal hearing, so no bitrate can reach it for that listener."""
    originals = table[(table["codec"] == "original") & (table["status"] == "ok")]
    notes = []
    for profile, group in originals.groupby("profile", sort=False):
        values = group["score_exact"].to_numpy(dtype=float)
        if not len(values) or not np.all(np.isfinite(values)):
            continue
        ceiling = float(values.min() if criterion == "min" else values.mean())
        if ceiling < target:
            notes.append(f"{profile}: the original itself scores {ceiling:.3f} (exact HAAQI against itself), below "
                         f"the target {target:g}: no bitrate can reach it for this profile")
    return notes

def _unique_names(relatives: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for rel in relatives:
        seen[rel] = seen.get(rel, 0) + 1
        names.append(rel if seen[rel] == 1 else f"{rel}#{seen[rel]}")
    return names


def _profile_names(scored: pd.DataFrame, options: ScoreOptions) -> list[str]:
    if not scored.empty:
        asked = {name: i for i, name in enumerate(options.profiles)}  # keep the user's order when we can
        names = list(dict.fromkeys(scored["profile"]))
        return sorted(names, key=lambda n: (asked.get(n, len(asked)), names.index(n)))
    return list(options.profiles)


def lowest_bitrates(table: pd.DataFrame, target: float, criterion: str = "min", exact: bool = False) -> pd.DataFrame:
    """Per codec and profile: the lowest bitrate from which every higher rung also meets ``target``
    (so one lucky rung below a failing one is not chosen). Scores are combined over inputs with
    ``criterion`` ("min": every input must meet the target; "mean": the average must). A rung where
    any input could not be scored is ignored. NaN when even the top rung misses the target."""
    if criterion not in ("min", "mean"):
        raise HaaqiError(f"--criterion must be min or mean, got {criterion!r}")
    rows = []
    coded = table[table["codec"] != "original"]
    for (codec, profile), group in coded.groupby(["codec", "profile"], sort=False):
        row = {"codec": codec, "profile": profile, "criterion": criterion, "target": target}
        for column, suffix in (("score", ""), ("score_exact", "_exact")):
            lowest, value = _lowest(group, column, target, criterion) if (column == "score" or exact) else (
                np.nan, np.nan)
            row[f"lowest_kbps{suffix}"] = lowest
            row["score_at_lowest" if not suffix else "score_exact_at_lowest"] = value
        rows.append(row)
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def _lowest(group: pd.DataFrame, column: str, target: float, criterion: str) -> tuple[float, float]:
    per_rung = []
    for kbps, rung in group.groupby("bitrate_kbps", sort=True):
        values = rung[column].to_numpy(dtype=float)
        if rung["status"].ne("ok").any() or not np.all(np.isfinite(values)):
            continue
        per_rung.append((float(kbps), float(values.min() if criterion == "min" else values.mean())))
    lowest, value = np.nan, np.nan
    for kbps, score in reversed(per_rung):
        if score < target:
            break
        lowest, value = kbps, score
    return lowest, value


def plot_sweep(result: SweepResult, path: str | Path) -> None:
    """Quality vs bitrate: one panel per codec, one line per profile (mean over inputs) of `score` (exact
    HAAQI, or the model's preview with --fast, as the axis says); dashed = exact HAAQI next to a preview;
    dotted = the undecoded original (exact: the profile's ceiling); grey line = target."""
    # lazy: matplotlib only where this path runs (start-up time)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib only where this path runs (start-up time)
    import matplotlib.pyplot as plt

    table = result.table
    coded = table[(table["codec"] != "original") & (table["status"] == "ok")]
    present = set(coded["codec"])
    codecs = [c for c in result.codecs if c in present] or sorted(present) or ["(none)"]
    profiles = result.profiles or list(dict.fromkeys(table["profile"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_cols = min(3, len(codecs))
    n_rows = math.ceil(len(codecs) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.6 * n_rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(codecs):]:
        ax.set_visible(False)
    originals = table[(table["codec"] == "original") & (table["status"] == "ok")].groupby("profile")["score"].mean()
    for ax, codec in zip(axes.flat, codecs, strict=False):
        part = coded[coded["codec"] == codec]
        for i, profile in enumerate(profiles):
            colour = colours[i % len(colours)]
            line = part[part["profile"] == profile].groupby("bitrate_kbps")[["score", "score_exact"]].mean()
            if len(line):
                ax.plot(line.index, line["score"], marker="o", color=colour, label=profile)
                if result.method == METHOD_PREDICTED and line["score_exact"].notna().any():
                    ax.plot(line.index, line["score_exact"], marker="x", linestyle="--", color=colour,
                            label=f"{profile} (exact)")
            if profile in originals.index:
                ax.axhline(originals[profile], color=colour, linestyle=":", linewidth=1)
        ax.axhline(result.target, color="grey", linewidth=1)
        ax.set_xscale("log", base=2)
        ticks = sorted(part["bitrate_kbps"].dropna().unique())
        if ticks:
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(int(t)) for t in ticks], rotation=45)
        ax.set_title(codec)
        ax.set_xlabel("bitrate (kb/s)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("HAAQI (exact)" if result.method == METHOD_EXACT else "HAAQI (predicted: --fast preview)")
    axes[0][0].set_ylim(0, 1.02)
    axes.flat[len(codecs) - 1].legend(fontsize=7, loc="lower right")
    if result.method == METHOD_PREDICTED:
        fig.suptitle("preview: scores predicted by the model (--fast), not exact HAAQI", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_warnings(table: pd.DataFrame, tolerance: float = 0.002) -> list[str]:
    """Warnings about a predicted (--fast) ladder that cannot rank its bitrates: per codec and profile
    (rungs averaged over inputs), a curve whose top rung scores inside the bottom rung's interval (flat
    within the interval), and a curve that drops as the bitrate rises (not monotonic; the largest drop,
    said to be within the interval when it is). Needs columns codec, bitrate_kbps, profile, score and,
    for the flat test, score_lo/score_hi."""
    if table is None or table.empty:
        return []
    ok = table[(table["status"] == "ok") & (table["codec"] != "original")]
    ok = ok.assign(**{c: pd.to_numeric(ok[c], errors="coerce") if c in ok.columns else np.nan
                      for c in ("score", "score_lo", "score_hi")})
    messages = []
    for (codec, profile), group in ok.groupby(["codec", "profile"], sort=True):
        curve = group.groupby("bitrate_kbps")[["score", "score_lo", "score_hi"]].mean().sort_index()
        if len(curve) < 2:
            continue
        kbps, score = curve.index.to_numpy(), curve["score"].to_numpy(dtype=float)
        lo, hi = curve["score_lo"].to_numpy(dtype=float), curve["score_hi"].to_numpy(dtype=float)
        problems = []
        if np.isfinite(hi[0]) and score[-1] <= hi[0]:
            problems.append(f"flat within the interval ({score[0]:.3f} at {kbps[0]:g} kb/s, interval "
                            f"{lo[0]:.2f}–{hi[0]:.2f}; {score[-1]:.3f} at {kbps[-1]:g} kb/s)")
        best_before = np.maximum.accumulate(score)
        drops = best_before - score
        worst = int(np.argmax(drops))
        if drops[worst] > tolerance:
            high = int(np.argmax(score[:worst]))
            inside = np.isfinite(lo[high]) and lo[high] <= score[worst] <= hi[high]
            problems.append(f"not monotonic ({score[high]:.3f} at {kbps[high]:g} kb/s, {score[worst]:.3f} at "
                            f"{kbps[worst]:g} kb/s" + (", within the interval" if inside else "") + ")")
        if problems:
            messages.append(f"{codec}, {profile}: the predicted curve is " + " and ".join(problems)
                            + "; the model cannot rank these bitrates: use the exact HAAQI (without --fast)")
    return messages
