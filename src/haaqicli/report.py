"""Human-readable reports of a score table: Markdown (+ PNG folder) or one self-contained HTML file.

Contents: a summary, per-profile and per-folder statistics (n, mean, median, p10, min, failures),
a score histogram per profile, the worst files, frame-score timelines of the worst files (when the
caller passes them) and the failures. Plots use matplotlib's object API on an Agg canvas, so no
global pyplot state and no display are needed.
"""

from __future__ import annotations

import base64
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

from haaqicli.atomic import atomic_write
from haaqicli.errors import HaaqiError

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
    df["profile"] = df["profile"].astype("object").where(df["profile"].notna(), "(none)")
    df["_folder"] = [posixpath.dirname(str(f)) or "." for f in df["file"]]
    several_ears = df["ear"].dropna().nunique() > 1
    df["_group"] = [f"{p} ({e})" if several_ears and isinstance(e, str) and e else str(p)
                    for p, e in zip(df["profile"], df["ear"], strict=True)]
    return df


def _stats(df: pd.DataFrame, by: Sequence[str], labels: Sequence[str]) -> _Table:
    rows = []
    # folders sorted by name, profiles in the order the table lists them
    order = {name: index for index, name in enumerate(dict.fromkeys(df["_group"]))}
    groups = sorted(df.groupby(list(by), sort=False, dropna=False),
                    key=lambda item: tuple(order.get(k, 0) if col == "_group" else str(k)
                                           for col, k in zip(by, item[0] if isinstance(item[0], tuple)
                                                             else (item[0],), strict=True)))
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        scores = group.loc[group["_ok"], "score"].to_numpy(dtype=float)
        failures = int((~group["_ok"]).sum())
        if scores.size:
            values = [scores.mean(), np.median(scores), np.percentile(scores, 10), scores.min()]
        else:
            values = [math.nan] * 4
        rows.append([*map(str, key), str(scores.size), *(_fmt(v) for v in values), str(failures)])
    return _Table([*labels, "n", "mean", "median", "p10", "min", "failures"], rows)


# --------------------------------------------------------------------------------------------
# Plots


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _histograms(df: pd.DataFrame) -> bytes | None:
    from matplotlib.figure import Figure

    groups = [(name, g.loc[g["_ok"], "score"].to_numpy(dtype=float)) for name, g in df.groupby("_group", sort=False)]
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
        ax.set_xlim(0, 1)
        ax.set_title(f"{name} (n={scores.size})", fontsize=10)
        ax.set_xlabel("HAAQI score")
        ax.set_ylabel("files")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
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


def _timelines(rows: list[tuple[pd.Series, tuple[np.ndarray, np.ndarray]]]) -> bytes:
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
        label = f"{row['file']}  [{row['_group']}]"
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


def _build(table: pd.DataFrame, timelines: Timelines | None, title: str, worst_n: int,
           timeline_n: int) -> list[Block]:
    df = _prepare(table)
    ok = df[df["_ok"]]
    failed = df[~df["_ok"]]
    blocks: list[Block] = [_Heading(title, 1)]
    models = ", ".join(sorted({str(m) for m in df.get("model", pd.Series(dtype=object)).dropna()})) or "n/a"
    blocks.append(_Paragraph(
        f"{df['file'].nunique()} files, {df['_group'].nunique()} profiles, {len(df)} results "
        f"({len(ok)} scored, {len(failed)} failed). Model: {models}. "
        f"Generated {datetime.now().strftime('%Y-%m-%d %H:%M')}. "
        "HAAQI runs from 0 (very poor) to 1 (indistinguishable from the reference quality)."
    ))

    blocks.append(_Heading("Per profile"))
    blocks.append(_stats(df, ["_group"], ["profile"]))
    hist = _histograms(df)
    if hist is not None:
        blocks.append(_Image("histograms.png", hist, "Score histogram per profile"))

    if df["_folder"].nunique() > 1 or (df["_folder"] != ".").any():
        blocks.append(_Heading("Per folder"))
        blocks.append(_stats(df, ["_folder", "_group"], ["folder", "profile"]))

    if len(ok):
        worst = ok.sort_values(["score", "file"], kind="stable").head(worst_n)
        blocks.append(_Heading(f"Worst {len(worst)} results"))
        rows = []
        for _, row in worst.iterrows():
            span = ""
            if not (pd.isna(row["worst_start_s"]) or pd.isna(row["worst_end_s"])):
                span = f"{float(row['worst_start_s']):.1f}–{float(row['worst_end_s']):.1f} s"
            rows.append([str(row["file"]), row["_group"], _fmt(row["score"]),
                         _fmt(pd.to_numeric(row["score_min"], errors="coerce")), span])
        blocks.append(_Table(["file", "profile", "score", "worst window score", "worst window"], rows))

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

    blocks.append(_Heading(f"Failures ({len(failed)})"))
    if len(failed):
        merged: dict[tuple[str, str], list[str]] = {}
        for _, row in failed.iterrows():
            error = row["error"] if isinstance(row["error"], str) and row["error"] else "no score"
            merged.setdefault((str(row["file"]), " ".join(error.split())), []).append(row["_group"])
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
                 title: str = DEFAULT_TITLE, worst_n: int = 10, timeline_n: int = 5) -> None:
    """Write ``path`` (.md with PNGs in ``<stem>_files/``, or self-contained .html)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".md", ".markdown", ".html", ".htm"}:
        raise HaaqiError(f"{path}: unsupported report format {suffix or '(none)'} (use .md or .html)")
    blocks = _build(table, timelines, title, worst_n, timeline_n)
    if suffix in {".html", ".htm"}:
        text = _render_html(blocks, title)
    else:
        text = _render_markdown(blocks, path.with_name(f"{path.stem}_files"))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
