"""Regression test: the shipped weights give the pinned scores on fixed synthetic inputs.

The pins live in tests/shipped_scores.json and are rewritten only together with new weights:
    .venv/bin/python tests/test_shipped_models.py --pin
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from haaqicli import synth
from haaqicli.audiogram import BUILTIN_PROFILES
from haaqicli.models.registry import default_weights_dir, list_models, load_model, sha256_file

PINS = Path(__file__).with_name("shipped_scores.json")
SAMPLE_RATE = 24000


def cases() -> dict[str, tuple[np.ndarray, str]]:
    clean = synth.music(6.0, SAMPLE_RATE, seed=11)[0]
    calibrated = clean * 0.1 / np.sqrt(np.mean(clean**2))
    return {
        "clean-normal": (calibrated, "normal"),
        "clean-moderate": (calibrated, "moderate"),
        "lowpass2k-normal": (synth.lowpass(calibrated, SAMPLE_RATE, 2000), "normal"),
        "noise5dB-mild": (synth.add_noise(calibrated, 5.0, seed=3), "mild"),
    }


def predict_cases(name: str) -> dict[str, float]:
    model, _ = load_model(name, device="cpu")
    out = {}
    with torch.inference_mode():
        for case, (wave, profile) in cases().items():
            gram = torch.tensor(BUILTIN_PROFILES[profile].left.as_array(), dtype=torch.float32)[None]
            out[case] = float(model(torch.from_numpy(wave.astype(np.float32))[None], gram).clip[0])
    return out


def shipped() -> list[str]:
    try:
        return [info.name for info in list_models(default_weights_dir())]
    except Exception:
        return []


@pytest.mark.parametrize("name", ["teacher", "distilled"])
def test_shipped_weights_match_manifest_and_pinned_scores(name: str):
    if name not in shipped():
        pytest.fail(f"weights/{name} is not shipped (weights/manifest.json)")
    info = next(i for i in list_models(default_weights_dir()) if i.name == name)
    assert sha256_file(default_weights_dir() / info.file) == info.sha256
    pins = json.loads(PINS.read_text())
    assert pins[name]["sha256"] == info.sha256, "weights changed: re-pin with --pin"
    scores = predict_cases(name)
    for case, expected in pins[name]["scores"].items():
        assert scores[case] == pytest.approx(expected, abs=1e-4), case


if __name__ == "__main__" and "--pin" in sys.argv:
    torch.set_num_threads(1)
    result = {}
    for model_name in shipped():
        info = next(i for i in list_models(default_weights_dir()) if i.name == model_name)
        result[model_name] = {"sha256": info.sha256, "scores": predict_cases(model_name)}
    PINS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
