"""`haaqi dataset verify`: do the corpus and the code still make the items the manifest and the
committed labels describe?

For a seeded sample of items (labelled ones first) it checks the source audio's sha256 (and the mix
partner's), the RMS of the clip as read against the manifest's ``clip_rms_db``, and for labelled
items regenerates the pair and recomputes HAAQI and its sub-terms against the shard row.

Tolerances: on one machine regeneration is bit-exact. Across CPUs, float decoders (Vorbis, Opus,
MP3, AAC inside ffmpeg, libsndfile's Vorbis/MP3 readers) and synthesisers may differ in the last
bits, and numba may fuse multiply-adds differently; such differences move a clip's RMS by far less
than CLIP_RMS_TOLERANCE_DB and HAAQI's terms by far less than TERM_TOLERANCE. A changed source file
fails the sha256 check outright, except a render (fluidsynth, libopenmpt, mixes), whose bits differ
across CPUs: it is checked within RENDER_RMS_TOLERANCE_DB and RENDER_TERM_TOLERANCE instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haaqicli.data.corpus import (
    RENDER_RMS_TOLERANCE_DB,
    is_rendered,
    json_field,
    materialise,
    read_segment,
    sha256_file,
)
from haaqicli.data.labels import TERMS, HaaqiFn, haaqi_of, label_arguments

CLIP_RMS_TOLERANCE_DB = 0.01
TERM_TOLERANCE = 1e-3
# A render made on another CPU (see corpus.RENDER_RMS_TOLERANCE_DB): labels recomputed on such renders
# moved by 0.007 at most (40 items of the 24 renders that differ between two machines).
RENDER_TERM_TOLERANCE = 0.02


def sample_items(manifest: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` items, labelled ones first, seeded."""
    rng = np.random.default_rng(seed)
    labelled = np.isfinite(manifest["label"].to_numpy(dtype=float))
    order = np.concatenate([rng.permutation(np.flatnonzero(labelled)), rng.permutation(np.flatnonzero(~labelled))])
    return manifest.iloc[order[:n]]


def verify_item(item: dict[str, Any], corpus_dir: Path, haaqi_fn: HaaqiFn | None = None,
                hashes: dict[str, str] | None = None, rerendered: set[str] | None = None) -> list[str]:
    """The problems found with one item (empty: it regenerates as recorded). Renders whose bits differ
    from the manifest's are checked within the render tolerances and collected in `rerendered`."""
    hashes = {} if hashes is None else hashes
    problems: list[str] = []
    sources = [(str(item["source"]), str(item["source_sha256"]))]
    mix = json_field(item.get("augment", "")).get("mix")
    if mix:
        sources.append((str(mix["source"]), str(mix["source_sha256"])))
    rms_tolerance, term_tolerance = CLIP_RMS_TOLERANCE_DB, TERM_TOLERANCE
    for source, expected in sources:
        path = Path(corpus_dir) / source
        if not path.is_file():
            return [f"{source}: missing from the corpus"]
        if source not in hashes:
            hashes[source] = sha256_file(path)
        if hashes[source] != expected:
            if not is_rendered(source):
                return [f"{source}: sha256 differs from the manifest"]
            # a render made on another CPU: the same music within the render tolerances (see corpus)
            rms_tolerance, term_tolerance = RENDER_RMS_TOLERANCE_DB, RENDER_TERM_TOLERANCE
            if rerendered is not None:
                rerendered.add(source)
    clip, _ = read_segment(corpus_dir, str(item["source"]), float(item["offset_s"]), float(item["duration_s"]),
                           int(item["sample_rate"]))
    rms_db = float(10 * np.log10(np.mean(np.square(clip, dtype=np.float64)) + 1e-20))
    if abs(rms_db - float(item["clip_rms_db"])) > rms_tolerance:
        problems.append(f"clip RMS {rms_db:.4f} dBFS, manifest {float(item['clip_rms_db']):.4f}")
    label = float(item.get("label", float("nan")))
    if math.isfinite(label):
        ref, proc, sr = materialise(item, corpus_dir)
        got = haaqi_of(haaqi_fn, label_arguments(ref, proc, sr, item["audiogram"], float(item["spl"])))
        for name in ("label", *TERMS):
            want = float(item.get(name, float("nan")))
            if math.isfinite(want) and abs(got[name] - want) > term_tolerance:
                problems.append(f"{name} {got[name]:.5f}, shard {want:.5f}")
    return problems


def verify(manifest: pd.DataFrame, corpus_dir: Path, n: int, seed: int = 0, haaqi_fn: HaaqiFn | None = None,
           on_item: Callable[[str, list[str]], None] | None = None) -> dict[str, Any]:
    """Verify a sample of ``n`` items; returns counts and the problems per item id."""
    hashes: dict[str, str] = {}
    rerendered: set[str] = set()
    problems: dict[str, list[str]] = {}
    checked = relabelled = 0
    for item in sample_items(manifest, n, seed).to_dict(orient="records"):
        try:
            found = verify_item(item, corpus_dir, haaqi_fn, hashes, rerendered)
        except Exception as error:  # a broken item is a finding, not a crash
            found = [f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
        checked += 1
        relabelled += int(math.isfinite(float(item.get("label", float("nan")))))
        if found:
            problems[str(item["item_id"])] = found
        if on_item is not None:
            on_item(str(item["item_id"]), found)
    return {"checked": checked, "relabelled": relabelled, "failed": len(problems), "problems": problems,
            "rerendered_sources": sorted(rerendered)}


def compare_manifests(built: pd.DataFrame, frozen: pd.DataFrame) -> dict[str, int]:
    """How a rebuilt manifest's items compare with a frozen one's (by id: an id fixes the content)."""
    a, b = set(built["item_id"]), set(frozen["item_id"])
    return {"same": len(a & b), "only_built": len(a - b), "only_frozen": len(b - a)}
