"""Regenerate the bundled example audio in examples/music/ (deterministic; run from the repo root).

The files are synthetic (no licence questions): a clean excerpt and degraded versions of it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

from haaqicli.audio import synth

SAMPLE_RATE = 44100
SECONDS = 12.0
OUT = Path("examples/music")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    clean = synth.music(SECONDS, SAMPLE_RATE, channels=2, seed=7)
    sf.write(OUT / "clean.flac", clean.T, SAMPLE_RATE)
    sf.write(OUT / "lowpass-3k5.flac", synth.lowpass(clean, SAMPLE_RATE, 3500).T, SAMPLE_RATE)
    sf.write(OUT / "noisy-10dB.flac", synth.add_noise(clean, 10.0, seed=1).T, SAMPLE_RATE)
    if shutil.which("ffmpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "clean.wav"
            sf.write(wav, clean.T, SAMPLE_RATE)
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "32k",
                 str(OUT / "mp3-32k.mp3")],
                check=True,
            )


if __name__ == "__main__":
    main()
