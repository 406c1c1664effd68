"""Human-readable reports of a score table: Markdown (+ PNG folder) or one self-contained HTML file.

Contents: a summary (counts, the model or exact scoring, the presentation level), one row per profile
(its clean-music ceiling, statistics over files, each ear's mean as a column), a picture of each
audiogram, a score histogram per profile, per-folder statistics, a file x profile grid (the lowest-scoring
files when there are many; the interval score_lo-score_hi where the table has one), the worst results
relative to their profile's ceiling, frame-score timelines of those (when the caller passes them) and
the failures. Plots use matplotlib's object API on an Agg canvas, so no
global pyplot state and no display are needed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haaqicli.audiogram import Profile, builtin_profile
from haaqicli.output.ceiling import stored_ceiling
from haaqicli.output.tables import prediction_notes
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES, DEFAULT_SPL, HL_MAX, HL_MIN
from haaqicli.util.errors import HaaqiError

Timelines = Mapping[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]
DEFAULT_TITLE = "HAAQI music quality report"


# --------------------------------------------------------------------------------------------
# Document model: a list of blocks rendered to Markdown or HTML.


@dataclass
class _Heading:
    text: str
    level: int = 2


@dataclass
class _Paragraph:
    text: str


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class _Image:
    name: str
    png: bytes
    alt: str


Block = _Heading | _Paragraph | _Table | _Image


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------------------------
# Statistics

INTERVAL = ("score_lo", "score_hi")  # a predicted score's interval, where the table has one


def _prepare(table: pd.DataFrame) -> pd.DataFrame:
    if "file" not in table.columns:
        raise HaaqiError("report: the score table has no 'file' column")
    df = table.copy().reset_index(drop=True)
    for column in ("profile", "ear", "status", "error", "score", "score_min", "worst_start_s", "worst_end_s"):
        if column not in df.columns:
            df[column] = None
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    status = df["status"].astype("object")
    df["_ok"] = df["score"].notna() & (status.isna() | (status == "ok"))
    df["profile"] = df["profile"].astype("object").where(df["profile"].notna(), "(none)").astype(str)
    df["file"] = df["file"].astype(str)
    df["_folder"] = [posixpath.dirname(f) or "." for f in df["file"]]
    return df


def _file_scores(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (file, profile): the mean of the ears (`gate.file_scores`, the Clarity convention), with
    the interval's bounds averaged the same way where the table has them."""
    # lazy: pandas only where this path runs (start-up time)
    from haaqicli.ci.evaluate import file_scores

    columns = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    files = file_scores(columns)
    for bound in INTERVAL:
        if bound in df.columns:
            # the same grouping and failure rules, applied to the bound instead of the score
            files[bound] = file_scores(columns.assign(score=pd.to_numeric(df[bound], errors="coerce")))["score"]
    files["_folder"] = [posixpath.dirname(f) or "." for f in files["file"]]
    return files


def _summary(scores: np.ndarray) -> list[str]:
    if not scores.size:
        return [""] * 4
    return [_fmt(v) for v in (scores.mean(), np.median(scores), np.percentile(scores, 10), scores.min())]


def _profile_table(df: pd.DataFrame, files: pd.DataFrame, order: Sequence[str],
                   profiles: Mapping[str, Profile], ceilings: Mapping[str, Any]) -> _Table:
    """One row per profile: file statistics (each file's score the mean of its ears) and the ears' means."""
    ears = [ear for ear in ("left", "right", "both") if (df["ear"] == ear).any()]
    rows = []
    for name in order:
        scores = files.loc[(files["profile"] == name) & (files["status"] == "ok"), "score"].to_numpy(dtype=float)
        failures = int(((files["profile"] == name) & (files["status"] != "ok")).sum())
        per_ear = [_fmt(df.loc[(df["profile"] == name) & (df["ear"] == ear) & df["_ok"], "score"].mean())
                   for ear in ears]
        profile = profiles.get(name)
        ceiling = ceilings.get(name)
        rows.append([name, profile.severity if profile else "", _fmt(ceiling.score, 2) if ceiling else "",
                     str(scores.size), *_summary(scores), *per_ear, str(failures)])
    ear_labels = {"left": "left ear", "right": "right ear", "both": "mono (both ears)"}
    return _Table(["profile", "severity", "clean", "files", "mean", "median", "p10", "min",
                   *(ear_labels[e] for e in ears), "failures"], rows)


def _folder_table(files: pd.DataFrame, order: Sequence[str]) -> _Table:
    rows = []
    for folder in sorted(files["_folder"].unique()):
        for name in order:
            group = files[(files["_folder"] == folder) & (files["profile"] == name)]
            if group.empty:
                continue
            scores = group.loc[group["status"] == "ok", "score"].to_numpy(dtype=float)
            rows.append([folder, name, str(scores.size), *_summary(scores), str(int((group["status"] != "ok").sum()))])
    return _Table(["folder", "profile", "files", "mean", "median", "p10", "min", "failures"], rows)


def _score_text(row: pd.Series) -> str:
    """The score, with its interval where the table has one."""
    text = _fmt(row["score"])
    if all(bound in row.index and not pd.isna(row[bound]) for bound in INTERVAL):
        text += f" ({_fmt(row['score_lo'])}–{_fmt(row['score_hi'])})"
    return text


def _grid(files: pd.DataFrame, order: Sequence[str], limit: int) -> tuple[_Table, int]:
    """File x profile scores, the files with the lowest mean over profiles first (the `limit` worst)."""
    ok = files[files["status"] == "ok"]
    mean = ok.groupby("file")["score"].mean()
    names = sorted(files["file"].unique(), key=lambda f: (mean.get(f, math.inf), f))
    cells = {(r["file"], r["profile"]): _score_text(r) if r["status"] == "ok" else "error"
             for _, r in files.iterrows()}
    rows = [[name, *(cells.get((name, p), "") for p in order), _fmt(mean.get(name, math.nan))]
            for name in names[:limit]]
    return _Table(["file", *order, "mean"], rows), len(names)


# --------------------------------------------------------------------------------------------
# Plots


def _png(fig: Any) -> bytes:
    # lazy: matplotlib only where this path runs (start-up time)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _histograms(files: pd.DataFrame, order: Sequence[str], ceilings: Mapping[str, Any]) -> bytes | None:
    # lazy: matplotlib only where this path runs (start-up time)
    from matplotlib.figure import Figure

    groups = [(name, files.loc[(files["profile"] == name) & (files["status"] == "ok"), "score"].to_numpy(dtype=float))
              for name in order]
    groups = [(name, s) for name, s in groups if s.size]
    if not groups:
        return None
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
    bins = np.linspace(0, 1, 21)
    for index, (name, scores) in enumerate(groups):
        ax = fig.add_subplot(rows, cols, index + 1)
        ax.hist(scores, bins=bins, color="#4C72B0", edgecolor="white")
        median = float(np.median(scores))
        ax.axvline(median, color="#C44E52", linestyle="--", linewidth=1.2, label=f"median {median:.2f}")
        if name in ceilings:
            ax.axvline(ceilings[name].score, color="#55A868", linewidth=1.5, label=f"clean {ceilings[name].score:.2f}")
        ax.set_xlim(0, 1)
        ax.set_title(f"{name} (n={scores.size})", fontsize=10)
        ax.set_xlabel("HAAQI score (mean of the ears)")
        ax.set_ylabel("files")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _audiograms(profiles: Sequence[Profile]) -> bytes:
    """Clinical audiogram style: log frequency, dB HL growing downwards, right ear O (red), left X (blue)."""
    # lazy: matplotlib only where this path runs (start-up time)
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    cols = min(4, len(profiles))
    rows = math.ceil(len(profiles) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.9 * rows))
    for index, profile in enumerate(profiles):
        ax = fig.add_subplot(rows, cols, index + 1)
        for ear, color, marker in (("right", "#C44E52", "o"), ("left", "#4C72B0", "x")):
            ax.plot(AUDIOGRAM_FREQUENCIES, profile.ear(ear).levels, color=color, marker=marker,
                    markerfacecolor="none", linewidth=1.2, label=ear)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(AUDIOGRAM_FREQUENCIES, [f"{f / 1000:g}k" if f >= 1000 else str(f) for f in AUDIOGRAM_FREQUENCIES],
                      fontsize=7)
        ax.set_ylim(HL_MAX, HL_MIN)
        ax.set_title(f"{profile.name} ({profile.severity})", fontsize=9)
        ax.set_ylabel("dB HL", fontsize=8)
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def _lookup_timeline(timelines: Timelines, row: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    ear = row["ear"]
    candidates = [(row["file"], row["profile"], ear)]
    if ear is None or (isinstance(ear, float) and math.isnan(ear)):
        candidates += [(row["file"], row["profile"], None), (row["file"], row["profile"], "")]
    for key in candidates:
        if key in timelines:
            return timelines[key]
    return None


def _label(row: pd.Series) -> str:
    ear = row["ear"] if isinstance(row["ear"], str) and row["ear"] else ""
    return f"{row['profile']}, {ear} ear" if ear in ("left", "right") else str(row["profile"])


def _timelines(rows: list[tuple[pd.Series, tuple[np.ndarray, np.ndarray]]]) -> bytes:
    # lazy: matplotlib only where this path runs (start-up time)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.1 * len(rows)))
    for index, (row, (times, scores)) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, index + 1)
        times = np.asarray(times, dtype=float)
        scores = np.asarray(scores, dtype=float)
        start, end = row.get("worst_start_s"), row.get("worst_end_s")
        if start is not None and end is not None and not (pd.isna(start) or pd.isna(end)):
            ax.axvspan(float(start), float(end), color="#C44E52", alpha=0.15, label="worst window")
        ax.plot(times, scores, color="#4C72B0", linewidth=1.2, label="frame score")
        ax.axhline(float(row["score"]), color="#55A868", linestyle="--", linewidth=1, label=f"clip {row['score']:.2f}")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(float(times.min()) if times.size else 0, float(times.max()) if times.size else 1)
        label = f"{row['file']}  [{_label(row)}]"
        ax.set_title(label if len(label) < 110 else "..." + label[-107:], fontsize=9, loc="left")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=8, loc="upper right", ncol=3, framealpha=0.9)
    fig.axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Building and rendering


def _known_profiles(order: Sequence[str], given: Sequence[Profile] | None) -> dict[str, Profile]:
    """The scored profiles' audiograms: as given by the caller, else the built-ins of the same name."""
    found = {p.name: p for p in given or ()}
    for name in order:
        if name not in found and builtin_profile(name) is not None:
            found[name] = dataclasses.replace(builtin_profile(name), name=name)  # type: ignore[arg-type]
    return {name: found[name] for name in order if name in found}


def _level(df: pd.DataFrame, spl: float | None) -> str:
    if spl is None and "spl" in df.columns and df["spl"].notna().any() and df["spl"].nunique() == 1:
        spl = float(df["spl"].dropna().iloc[0])
    return f"{spl:g} dB SPL" if spl is not None else "not recorded"


def _build(table: pd.DataFrame, timelines: Timelines | None, title: str, worst_n: int, timeline_n: int,
           profiles: Sequence[Profile] | None = None, spl: float | None = None,
           ceilings: Mapping[str, Any] | None = None, grid_n: int = 30) -> list[Block]:

    df = _prepare(table)
    ok = df[df["_ok"]]
    failed = df[~df["_ok"]]
    order = list(dict.fromkeys(df["profile"]))  # profiles in the order the table lists them
    known = _known_profiles(order, profiles)
    level = spl if spl is not None else DEFAULT_SPL
    if ceilings is None:
        ceilings = {n: c for n, p in known.items() if (c := stored_ceiling(p, level)) is not None}
    files = _file_scores(df)
    blocks: list[Block] = [_Heading(title, 1)]
    models = sorted({(str(m), str(s)[:12]) for m, s in zip(df.get("model", pd.Series(dtype=object)),
                                                              df.get("model_sha256", pd.Series(dtype=object)),
                                                              strict=False) if isinstance(m, str) and m})
    scoring = ("predicted by the model " + ", ".join(f"{m} (sha256 {s}…)" if s and s != "nan" else m
                                                     for m, s in models)
               if models else "exact HAAQI against the reference")
    blocks.append(_Paragraph(
        f"{df['file'].nunique()} files, {len(order)} profiles, {len(df)} results ({len(ok)} scored, "
        f"{len(failed)} failed; a result is one file, profile and ear). Scores: {scoring}. "
        f"Presentation level: {_level(df, spl)}. Generated {datetime.now().strftime('%Y-%m-%d %H:%M')}."))
    blocks.append(_Paragraph(
        "HAAQI runs from 0 (very poor) to 1 (the music sounds to this listener as the clean original sounds "
        "to normal hearing). With hearing loss even clean music scores below 1: `clean` is each profile's "
        "ceiling (the exact HAAQI of clean music against itself; `haaqi profiles FILE` measures it for a "
        "profile file, where it is blank here), so read a score against it. A file's score is the mean of its "
        "ears."
        + (" Predicted scores carry an interval (score_lo–score_hi) in brackets." if INTERVAL[0] in df.columns
           else "")))
    for note in prediction_notes(table) if models else ():  # the exact HAAQI has the original
        blocks.append(_Paragraph(f"Note: {note}"))

    blocks.append(_Heading("Per profile"))
    blocks.append(_profile_table(df, files, order, known, ceilings))
    if known:
        blocks.append(_Image("audiograms.png", _audiograms(list(known.values())), "Audiogram of each profile"))
    hist = _histograms(files, order, ceilings)
    if hist is not None:
        blocks.append(_Image("histograms.png", hist, "Score histogram per profile"))

    if files["_folder"].nunique() > 1 or (files["_folder"] != ".").any():
        blocks.append(_Heading("Per folder"))
        blocks.append(_folder_table(files, order))

    if len(ok):
        grid, n_files = _grid(files, order, grid_n)
        shown = f"the {len(grid.rows)} with the lowest mean of {n_files} files" if n_files > len(grid.rows) else \
            "every file, the lowest mean first"
        blocks.append(_Heading("Scores per file and profile"))
        blocks.append(_Paragraph(f"Rows: {shown}."))
        blocks.append(grid)

        # Worst results, each against its profile's top (the ceiling, else the profile's best file), so
        # that a profile with a low ceiling does not fill the list with clean files.
        top = {name: (ceilings[name].score if name in ceilings else
                      ok.loc[ok["profile"] == name, "score"].max()) for name in order}
        ranked = ok.assign(_relative=ok["score"] / ok["profile"].map(top).clip(lower=1e-6))
        worst = ranked.sort_values(["_relative", "file"], kind="stable").head(worst_n)
        blocks.append(_Heading(f"Worst {len(worst)} results"))
        blocks.append(_Paragraph("Ranked by the score as a fraction of the profile's clean ceiling (of its best "
                                 "file where the ceiling is unknown)."))
        rows = []
        for _, row in worst.iterrows():
            span = ""
            if not (pd.isna(row["worst_start_s"]) or pd.isna(row["worst_end_s"])):
                span = f"{float(row['worst_start_s']):.1f}–{float(row['worst_end_s']):.1f} s"
            rows.append([row["file"], _label(row), _score_text(row), f"{row['_relative']:.0%}",
                         _fmt(pd.to_numeric(row["score_min"], errors="coerce")), span])
        blocks.append(_Table(["file", "profile", "score", "of top", "worst window score", "worst window"], rows))

        if timelines:
            chosen = []
            for _, row in worst.iterrows():
                found = _lookup_timeline(timelines, row)
                if found is not None and len(found[0]):
                    chosen.append((row, found))
                if len(chosen) >= timeline_n:
                    break
            if chosen:
                blocks.append(_Heading("Frame scores of the worst results"))
                blocks.append(_Paragraph("Shaded: the worst window. Dashed: the clip score."))
                blocks.append(_Image("timelines.png", _timelines(chosen), "Frame-score timelines"))

    failed_files = files[files["status"] != "ok"]
    blocks.append(_Heading(f"Failures ({failed_files['file'].nunique()} files)"))
    if len(failed):
        merged: dict[tuple[str, str], list[str]] = {}
        for _, row in failed.iterrows():
            error = row["error"] if isinstance(row["error"], str) and row["error"] else "no score"
            merged.setdefault((row["file"], " ".join(error.split())), []).append(row["profile"])
        rows = [[file, ", ".join(dict.fromkeys(groups)), error] for (file, error), groups in merged.items()]
        blocks.append(_Table(["file", "profiles", "error"], rows))
    else:
        blocks.append(_Paragraph("None: every file was scored."))
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _render_markdown(blocks: list[Block], files_dir: Path) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, _Paragraph):
            out.append(block.text + "\n")
        elif isinstance(block, _Table):
            out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            out.append("|" + "|".join("---" for _ in block.headers) + "|")
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows)
            out.append("")
        else:
            files_dir.mkdir(parents=True, exist_ok=True)
            (files_dir / block.name).write_bytes(block.png)
            out.append(f"![{block.alt}]({files_dir.name}/{block.name})\n")
    return "\n".join(out)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #4C72B0; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; }
th { background: #f0f3f8; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _render_html(blocks: list[Block], title: str) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, _Table):
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                       + "</tr></thead><tbody>")
            for row in block.rows:
                cells = "".join(f"<td class=\"num\">{html.escape(c)}</td>" if _is_number(c)
                                else f"<td>{html.escape(c)}</td>" for c in row)
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(block.alt)}\" src=\"data:image/png;base64,{data}\"></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(table: pd.DataFrame, path: str | Path, timelines: Timelines | None = None,
                 title: str = DEFAULT_TITLE, worst_n: int = 10, timeline_n: int = 5,
                 profiles: Sequence[Profile] | None = None, spl: float | None = None,
                 ceilings: Mapping[str, Any] | None = None, grid_n: int = 30) -> None:
    """Write ``path`` (.md with PNGs in ``<stem>_files/``, or self-contained .html).

    `profiles`: the scored profiles' audiograms (built-in names are found without them); `spl`: the
    presentation level to state (else a single `spl` column's value); `ceilings`: `haaqicli.output.ceiling.Ceiling`
    by profile name (default: the stored ones of built-in profiles); `grid_n`: files in the file x profile
    grid (the lowest means)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".md", ".markdown", ".html", ".htm"}:
        raise HaaqiError(f"{path}: unsupported report format {suffix or '(none)'} (use .md or .html)")
    blocks = _build(table, timelines, title, worst_n, timeline_n, profiles, spl, ceilings, grid_n)
    if suffix in {".html", ".htm"}:
        text = _render_html(blocks, title)
    else:
        text = _render_markdown(blocks, path.with_name(f"{path.stem}_files"))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
