"""`--precision int8`: the encoder's linear layers on int8, per window, on the CPU (models.precision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_music
from torch import nn

from haaqicli.cli import main
from haaqicli.models.precision import Int8Linear, model_label, quantize_encoder
from haaqicli.models.registry import load_model
from haaqicli.output.tables import read_table
from haaqicli.util.devices import model_device
from haaqicli.util.errors import ModelError


def test_int8_linear_tracks_float_and_is_per_window():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    quantized = Int8Linear(linear)
    x = torch.randn(4, 50, 64)
    x[3] *= 100.0  # a loud window: with one scale per batch it would coarsen its neighbours' steps
    with torch.inference_mode():
        exact, approx = linear(x), quantized(x)
        alone = quantized(x[:1])
    # int8 error: a few per cent of the output's spread, per window whatever its level
    for k in range(4):
        assert (approx[k] - exact[k]).abs().max() < 0.03 * exact[k].abs().max()
    assert torch.equal(alone[0], approx[0])  # a window's output does not depend on its batch neighbours
    assert torch.equal(quantized(x), approx)  # deterministic
    assert quantized(x[0]).shape == (50, 32)  # one window without a batch dimension


@pytest.mark.parametrize("name", ["teacher", "distilled"])
def test_int8_model_scores_close_to_float32(use_tiny_weights: Path, name: str):
    float_model, _ = load_model(name)
    int8_model, _ = load_model(name, precision="int8")
    linear = [m for m in int8_model.encoder.modules() if isinstance(m, nn.Linear)]
    assert not linear and any(isinstance(m, Int8Linear) for m in int8_model.encoder.modules())
    assert any(isinstance(m, nn.Linear) for m in int8_model.head.modules())  # the head stays float32
    generator = torch.Generator().manual_seed(1)
    waves = 0.1 * torch.randn(3, 3 * 24000, generator=generator)
    grams = torch.tensor([[10.0] * 8, [40.0] * 8, [60.0] * 8])
    with torch.inference_mode():
        exact = float_model(waves, grams).clip
        approx = int8_model(waves, grams).clip
        alone = int8_model(waves[1:2], grams[1:2]).clip
    assert (approx - exact).abs().max() < 0.01
    assert (alone[0] - approx[1]).abs() < 1e-6


def test_int8_is_cpu_only():
    assert model_device("auto", "int8").type == "cpu"
    with pytest.raises(ModelError, match="--precision int8 runs on the CPU"):
        model_device("cuda", "int8")
    assert model_label("teacher") == "teacher" and model_label("teacher", "int8") == "teacher:int8"
    with pytest.raises(ModelError, match="--precision fp16"):
        model_label("teacher", "fp16")
    with pytest.raises(ModelError, match="no encoder"):
        quantize_encoder(nn.Sequential(nn.Linear(2, 2)))


def test_cli_int8_rows_name_the_precision_and_resume_keeps_them_apart(use_tiny_weights: Path, tmp_path: Path):
    folder = tmp_path / "music"
    folder.mkdir()
    for k in range(2):
        write_music(folder / f"{k}.wav", seconds=3.0, seed=k)
    out = tmp_path / "scores.csv"

    def score(*extra: str) -> None:
        result = CliRunner().invoke(main, ["score", str(folder), "--model", "teacher", "--out", str(out), "-q",
                                           *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    score()
    float_rows = read_table(out)
    assert set(float_rows["model"]) == {"teacher"}
    score("--precision", "int8", "--resume")  # float32 rows are not int8 scores: every file is rescored
    int8_rows = read_table(out)
    assert set(int8_rows["model"]) == {"teacher:int8"} and len(int8_rows) == len(float_rows)
    assert np.allclose(int8_rows["score"], float_rows["score"], atol=0.01)
    assert (int8_rows["model_sha256"] == float_rows["model_sha256"]).all()  # the same weights
    score("--precision", "int8", "--resume")  # and int8 rows are kept by an int8 resume
    assert read_table(out)["score"].tolist() == int8_rows["score"].tolist()
    result = CliRunner().invoke(main, ["score", str(folder), "--precision", "int8", "--device", "cuda:0", "-q"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: --device cuda:0")
