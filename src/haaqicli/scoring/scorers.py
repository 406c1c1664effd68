"""The scorers of a run (see `haaqicli.scoring.options.Scorer`): the non-intrusive model, and the exact
HAAQI of each input against its reference (a folder paired by relative path, or a pairs CSV). The CI
gate and the sweep take either, or one injected by a test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from haaqicli.audio import AUDIO_EXTENSIONS, discover
from haaqicli.audiogram import resolve_profiles
from haaqicli.engine import score_inputs
from haaqicli.output.tables import EXACT_MODEL, SCORE_COLUMNS
from haaqicli.reference import score_pairs
from haaqicli.reference.pairs import read_pairs_csv
from haaqicli.scoring.options import ScoreOptions, Scorer
from haaqicli.util.errors import HaaqiError
from haaqicli.util.interrupts import RunInterrupted


def model_scorer(inputs: Sequence[str], options: ScoreOptions) -> pd.DataFrame:
    """Non-intrusive HAAQI-Net (the engine)."""
    run = score_inputs(list(inputs), resolve_profiles(options.profiles), options, progress=options.progress,
                       scheduler=options.scheduler, keep_timelines=False)
    if run.interrupted:  # the caller decides where the finished rows go
        raise RunInterrupted(f"{len(run.table)} finished rows", rows=run.table)
    return run.table


def pair_by_relative_path(inputs: Sequence[str], reference_dir: str | Path) -> tuple[
        list[tuple[str, Path, Path]], list[tuple[str, Path, str]]]:
    """Pair each discovered input with reference_dir/<relative path>; when that file is missing,
    a reference with the same relative stem and any audio extension (song.mp3 -> song.wav).
    Returns (pairs, unpaired) with unpaired = (name, path, reason)."""
    reference_dir = Path(reference_dir)
    if not reference_dir.is_dir():
        raise HaaqiError(f"{reference_dir}: --reference must be a folder")
    pairs, unpaired = [], []
    for item in discover(inputs):
        candidate = reference_dir / item.relative
        if not candidate.is_file():
            stem = candidate.with_suffix("")
            matches = sorted(p for p in stem.parent.glob(stem.name + ".*")
                             if p.suffix.lower() in AUDIO_EXTENSIONS) if stem.parent.is_dir() else []
            candidate = matches[0] if matches else candidate
        if candidate.is_file():
            pairs.append((item.relative, item.path, candidate))
        else:
            unpaired.append((item.relative, item.path, f"no reference {reference_dir / item.relative}"))
    return pairs, unpaired


def reference_scorer(inputs: Sequence[str], options: ScoreOptions) -> pd.DataFrame:
    """Exact intrusive HAAQI against references (--reference DIR or --pairs CSV)."""
    profiles = resolve_profiles(options.profiles)
    if options.pairs:
        folder = Path(options.pairs).parent
        pairs = [(_relative_name(processed, folder), processed, reference)
                 for reference, processed in read_pairs_csv(options.pairs)]
        unpaired: list[tuple[str, Path, str]] = []
    else:
        pairs, unpaired = pair_by_relative_path(inputs, options.reference or ".")
    frames = []
    if pairs:
        try:
            table = score_pairs([(reference, processed) for _, processed, reference in pairs], profiles,
                                spl=options.spl, mix=options.mix, workers=options.workers,
                                progress=options.progress, device=options.device,
                                segment_seconds=options.segment_seconds, scheduler=options.scheduler)
        except RunInterrupted as stopped:  # the finished rows in this table's form, for the caller to keep
            rows = None if stopped.rows is None else _rename_files(stopped.rows, pairs)
            raise RunInterrupted(stopped.kept, rows=rows) from None
        frames.append(_rename_files(table, pairs))
    error_rows = [{"file": name, "path": str(path), "profile": profile.name, "ear": "", "status": "error",
                   "error": reason, "model": EXACT_MODEL, "model_sha256": "", "spl": options.spl,
                   "audiogram_hash": profile.values_hash()}
                  for name, path, reason in unpaired for profile in profiles]
    if error_rows:
        frames.append(pd.DataFrame(error_rows))
    columns = [*SCORE_COLUMNS, "segments"]  # segments: how many each pair was scored in (1 = whole)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def _relative_name(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return str(path)


def _rename_files(table: pd.DataFrame, pairs: Sequence[tuple[str, Path, Path]]) -> pd.DataFrame:
    """score_pairs names rows by the processed path; the gate keys them by the input's relative name."""
    by_path = {str(Path(processed).resolve()): name for name, processed, _ in pairs}
    table = table.copy()
    table["path"] = table["processed"]
    table["file"] = [by_path.get(str(Path(p).resolve()), str(p)) for p in table["processed"]]
    table["model"] = EXACT_MODEL
    table["model_sha256"] = ""
    return table


def default_scorer(options: ScoreOptions) -> Scorer:
    """The exact HAAQI where references are given (--reference, --pairs), else the model."""
    return reference_scorer if (options.reference or options.pairs) else model_scorer
