"""Regenerate the bundled example audio in examples/music/ (deterministic; run from the repo root with
`.venv/bin/python scripts/make_examples.py`).

The music is J. S. Bach's chorale "Es ist nun aus mit meinem Leben" BWV 66.6 (public domain), from the
music21 corpus (BSD licence), rendered by fluidsynth with the FluidR3_GM soundfont (MIT licence) as the
training corpus renders MIDI (`haaqicli.data.render.fluidsynth`): an excerpt of real instrument samples,
clean and in three degraded versions. (Earlier releases bundled `haaqicli.audio.synth` tones, which the
models, trained on music, scored far below their exact HAAQI even when clean.)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from haaqicli.audio import synth
from haaqicli.data.render import SR, fluidsynth

SECONDS = 12.0
RMS = 0.1  # 65 dB SPL in `haaqi score`'s calibration: the level it presents a file at
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
OUT = Path("examples/music")


def chorale() -> np.ndarray:
    """The chorale's first SECONDS as (2, samples) at 44.1 kHz, scaled to RMS."""
    import music21

    score = music21.corpus.parse("bach/bwv66.6")
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "chorale.mid"
        score.write("midi", fp=str(midi))
        audio = fluidsynth(midi, SOUNDFONT).T.astype(np.float64)
    audio = audio[:, : int(SECONDS * SR)]
    return RMS * audio / np.sqrt(np.mean(audio**2))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    clean = chorale()
    sf.write(OUT / "clean.flac", clean.T, SR)
    sf.write(OUT / "lowpass-3k5.flac", synth.lowpass(clean, SR, 3500).T, SR)
    sf.write(OUT / "noisy-10dB.flac", synth.add_noise(clean, 10.0, seed=1).T, SR)
    if shutil.which("ffmpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "clean.wav"
            sf.write(wav, clean.T, SR)
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "32k",
                 str(OUT / "mp3-32k.mp3")],
                check=True,
            )


if __name__ == "__main__":
    main()
