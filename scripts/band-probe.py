#!/usr/bin/env python3
"""Where a band-limited file's low predicted score comes from: the band or its edge.

    PYTHONPATH=src .venv/bin/python scripts/band-probe.py FILE [FILE ...] --weights weights \\
        --weights data/exp/s90w --out data/band-probe

Each FILE gives 30 s (from --start) folded to mono in three versions: as it is, low-passed below its
band edge (Butterworth order 16 at --cutoff Hz) and re-encoded as MP3 at 48 kb/s (ffmpeg). Every
version is scored with `haaqi score --profile normal --model distilled` for each --weights folder
(`HAAQI_WEIGHTS`), and one line per file and version prints `bandwidth_hz` and each folder's score.
A clean narrow release that scores low as it is and high once low-passed is penalised for its band
edge (a codec's artefacts there), not for the band it lacks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import soundfile as sf
from scipy import signal


def versions(path: Path, out: Path, start_s: float, cutoff_hz: float) -> None:
    audio, sr = sf.read(path, always_2d=True)
    clip = audio[int(start_s * sr): int((start_s + 30.0) * sr)].mean(axis=1)
    if not len(clip):
        raise SystemExit(f"error: {path}: shorter than --start {start_s:g} s")
    stem = path.stem
    sf.write(out / f"{stem}.wav", clip, sr)
    sos = signal.butter(16, min(cutoff_hz, 0.45 * sr), fs=sr, output="sos")
    sf.write(out / f"{stem}-butter.wav", signal.sosfilt(sos, clip), sr)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(out / f"{stem}.wav"), "-c:a", "libmp3lame",
                    "-b:a", "48k", str(out / f"{stem}-mp3-48k.mp3")], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--weights", action="append", required=True, help="weights folder (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("data/band-probe"))
    parser.add_argument("--start", type=float, default=30.0, help="where the 30 s begin")
    parser.add_argument("--cutoff", type=float, default=8000.0, help="the low-pass version's cutoff (Hz)")
    args = parser.parse_args(argv)
    audio_dir = args.out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        if not path.is_file():
            raise SystemExit(f"error: {path}: not a file")
        versions(path, audio_dir, args.start, args.cutoff)
    haaqi = Path(sys.executable).with_name("haaqi")
    columns = {}
    for folder in args.weights:
        table = args.out / f"scores-{Path(folder).name}.csv"
        subprocess.run([str(haaqi), "score", str(audio_dir), "--profile", "normal", "--model", "distilled",
                        "--out", str(table), "-q"], check=True, env={**os.environ, "HAAQI_WEIGHTS": folder})
        scores = pd.read_csv(table).set_index("file")
        columns.setdefault("bandwidth_hz", scores["bandwidth_hz"].round(0))
        columns[folder] = scores["score"].round(3)
    print(pd.DataFrame(columns).sort_index().to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
