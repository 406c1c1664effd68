#!/usr/bin/env python3
"""Check the torch port of musicnn against the original (TensorFlow) package, clip by clip.

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.15.1 numpy==1.26.4 librosa==0.10.2.post1
    /tmp/tfvenv/bin/pip install --no-deps data/musicnn/musicnn-0.1.0-py3-none-any.whl
    PYTHONPATH=src .venv/bin/python scripts/check-musicnn.py --tf-python /tmp/tfvenv/bin/python \\
        --weights data/musicnn/MSD_musicnn.safetensors [AUDIO ...]

Not a test (TensorFlow is never a dependency of the tool): a throwaway environment runs musicnn's own
`extractor` (this script, `--tf-side`, in that environment) on 16-kHz WAV clips written here (synthetic
ones, plus any AUDIO given, resampled to 16 kHz once so both sides read the same samples), and
this side runs the torch port on the same clips. Two comparisons per clip:

- network: the extractor's own mel patches through the torch network (the port of the layers alone);
- end to end: the torch mel front end and network on the audio (adds the mel's differences: float
  rounding, and float16 steps where a value sits on a rounding boundary).

musicnn's extractor calls librosa.feature.melspectrogram with librosa's default padding, which was
"reflect" in the librosa of its day (0.6/0.7) and is zeros since 0.10; the TF side pins "reflect", as
the port does. Prints max |diff| of the 50 tag probabilities, of the 200-d penultimate embedding and
of the mean/max pools, relative to the largest value. `--time` only times the prior (CPU and wall ms
per 6-s window at 24 kHz, batch 16, 2 threads; no TensorFlow needed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def tf_side(model: str, clips: list[str], out: str) -> None:
    """In the TensorFlow environment: musicnn's extractor on each clip; arrays into `out` (npz)."""
    import functools

    import librosa
    import musicnn.configuration
    import musicnn.extractor as extractor

    # The extractor runs patches BATCH_SIZE (1) at a time and, after the first batch, returns the first
    # batch's penultimate again (a bug of 0.1.0); one batch per clip gives every patch its own.
    musicnn.configuration.BATCH_SIZE = 10_000
    librosa.feature.melspectrogram = functools.partial(librosa.feature.melspectrogram, pad_mode="reflect")
    arrays = {}
    for i, clip in enumerate(clips):
        taggram, _, features = extractor.extractor(clip, model=model, extract_features=True)
        batch, _ = extractor.batch_data(clip, 187, 187)
        arrays.update({f"{i}/taggram": taggram, f"{i}/mel": batch, **{
            f"{i}/{k}": np.asarray(features[k]) for k in ("penultimate", "mean_pool", "max_pool")}})
    np.savez(out, **arrays)


def synthetic_clips(folder: Path, seconds: float = 7.0, rate: int = 16000) -> list[Path]:
    """Music-like test signals: a chord with vibrato, a drum pattern over a bass line, a chirp in noise."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    chord = sum(0.15 * np.sin(2 * np.pi * f * t * (1 + 0.003 * np.sin(2 * np.pi * 5 * t)))
                for f in (220.0, 277.2, 329.6, 440.0))
    beats = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.25):
        n = int(start * rate)
        hit = rng.standard_normal(1200) * np.exp(-np.arange(1200) / 200)
        beats[n:n + 1200] += 0.4 * hit[: len(beats) - n]
    drums = beats + 0.2 * np.sin(2 * np.pi * 55 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + 500 * t**2)) + 0.05 * rng.standard_normal(len(t))
    paths = []
    for name, wave in (("chord", chord), ("drums", drums), ("chirp", chirp)):
        paths.append(folder / f"{name}.wav")
        sf.write(paths[-1], wave.astype(np.float32), rate, subtype="FLOAT")
    return paths


def real_clip(source: Path, folder: Path, seconds: float = 9.0) -> Path:
    """`source` decoded, mixed to mono and resampled to 16 kHz once (both sides read this file)."""
    import soundfile as sf

    from haaqicli.audio.resample import resample

    wave, rate = sf.read(source, dtype="float32", always_2d=True, frames=int(seconds * 48000))
    mono = resample(wave.mean(axis=1), rate, 16000)[: int(seconds * 16000)]
    path = folder / f"{source.stem}.wav"
    sf.write(path, mono.astype(np.float32), 16000, subtype="FLOAT")
    return path


def relative(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    return diff, diff / max(float(np.max(np.abs(b))), 1e-12)


def torch_side(args: argparse.Namespace) -> int:
    import soundfile as sf
    import torch

    from haaqicli.models.musicnn import PATCH_FRAMES, MusicnnMel, MusicnnPrior

    torch.set_num_threads(2)
    prior = MusicnnPrior(16000)
    prior.load_converted(args.weights, args.sha256)
    net, mel = prior.net.eval(), MusicnnMel()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        clips = synthetic_clips(folder) + [real_clip(Path(a), folder) for a in args.audio]
        npz = folder / "tf.npz"
        subprocess.run([args.tf_python, __file__, "--tf-side", "--model", args.model, "--out", str(npz),
                        *map(str, clips)], check=True)
        ref = dict(np.load(npz))
        report = []
        with torch.no_grad():
            for i, clip in enumerate(clips):
                wave, _ = sf.read(clip, dtype="float32")
                tf_mel = ref[f"{i}/mel"]
                ours_mel = mel(torch.from_numpy(wave)[None])[0].numpy()
                count = len(tf_mel)
                patches = torch.from_numpy(ours_mel[: count * PATCH_FRAMES].reshape(count, PATCH_FRAMES, -1))
                row = {"clip": clip.name, "patches": count,
                       "mel_log": relative(ours_mel[: count * PATCH_FRAMES], tf_mel.reshape(-1, tf_mel.shape[-1]))}
                for label, inputs in (("network", torch.from_numpy(tf_mel.astype(np.float32))),
                                      ("end_to_end", patches)):
                    logits, features = net(inputs)
                    row[label] = {"tags": relative(torch.sigmoid(logits).numpy(), ref[f"{i}/taggram"]),
                                  **{k: relative(features[k].numpy(), ref[f"{i}/{k}"])
                                     for k in ("penultimate", "mean_pool", "max_pool")}}
                report.append(row)
    for row in report:
        print(f"{row['clip']:>16s} ({row['patches']} patches)  log-mel max|diff| {row['mel_log'][0]:.2e} "
              f"(rel {row['mel_log'][1]:.1e})")
        for label in ("network", "end_to_end"):
            print(f"{'':18s}{label:>11s}: " + ", ".join(
                f"{k} {v[0]:.2e} (rel {v[1]:.1e})" for k, v in row[label].items()))
    worst = {label: max(max(v[1] for v in row[label].values()) for row in report) for label in ("network", "end_to_end")}
    print(json.dumps({"worst_relative": worst}))
    return 0 if worst["network"] < args.tolerance else 1


def time_prior(args: argparse.Namespace) -> int:
    """CPU and wall time per 6-s window at 24 kHz (batch 16, 2 threads) of the content prior (resampling,
    mel and network: what it adds to a model's encoder pass), beside the shipped models' whole
    forward pass timed the same way in the same run (the machine's load affects them alike)."""
    import time

    import torch

    from haaqicli.models.musicnn import MusicnnPrior
    from haaqicli.models.registry import load_model

    torch.set_num_threads(2)
    prior = MusicnnPrior(24000)
    prior.load_converted(args.weights, args.sha256)
    wave = 0.1 * torch.randn(16, 6 * 24000, generator=torch.Generator().manual_seed(0))
    gram = torch.full((16, 8), 30.0)
    runs = {"musicnn prior": lambda: prior(wave, 37)}
    for name in ("distilled", "teacher"):
        model = load_model(name)[0]
        runs[f"{name} (shipped, whole model)"] = lambda model=model: model(wave, gram)
    with torch.inference_mode():
        for name, run in runs.items():
            run()
            best_cpu = best_wall = float("inf")
            for _ in range(args.repeats):
                cpu, wall = time.process_time(), time.perf_counter()
                run()
                best_cpu = min(best_cpu, time.process_time() - cpu)
                best_wall = min(best_wall, time.perf_counter() - wall)
            print(json.dumps({"what": name, "ms_per_window_cpu": round(best_cpu / 16 * 1e3, 1),
                              "ms_per_window_wall": round(best_wall / 16 * 1e3, 1)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("audio", nargs="*", help="extra audio files (first 9 s, mono, at 16 kHz)")
    parser.add_argument("--tf-python", default="/tmp/tfvenv/bin/python")
    parser.add_argument("--weights", default="data/musicnn/MSD_musicnn.safetensors")
    parser.add_argument("--sha256", default=None, help="expected sha256 of --weights [the pinned one]")
    parser.add_argument("--model", default="MSD_musicnn")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative network difference")
    parser.add_argument("--time", action="store_true", help="only time the prior per 6-s window (no TF)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tf-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tf_side:
        tf_side(args.model, args.audio, args.out)
        return 0
    return time_prior(args) if args.time else torch_side(args)


if __name__ == "__main__":
    sys.exit(main())
