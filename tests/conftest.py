"""Shared fixtures: synthetic audio and a tiny model registry for engine tests.

Engine and CLI tests use small, randomly initialised models saved to a temporary weights folder
(HAAQI_WEIGHTS), so they test the plumbing quickly. The shipped, trained weights are tested by
test_shipped_models.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from haaqicli.audio import synth

torch.set_num_threads(2)

TINY_TEACHER = {
    "encoder": {
        "input_patch_size": 16, "embed_dim": 32, "conv_bias": False,
        "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 2, "activation_fn": "gelu", "layer_norm_first": False, "deep_norm": True,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
        "dropout_input": 0.0, "conv_pos": 16, "conv_pos_groups": 4, "relative_position_embedding": True,
        "num_buckets": 32, "max_distance": 64, "gru_rel_pos": True, "sample_rate": 24000,
        "num_mel_bins": 128, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
        "fbank_mean": 15.41663, "fbank_std": 6.55582,
    },
    "head": {"d_adapter": 16, "d_audiogram": 8, "lstm_hidden": 8, "attn_heads": 2, "dropout": 0.0},
}


def tiny_student_config() -> dict:
    from haaqicli.models.student import STUDENT_CONFIG

    config = copy.deepcopy(STUDENT_CONFIG)
    config["encoder"].update(
        {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2,
         "conv_pos_groups": 4, "dropout": 0.0, "attention_dropout": 0.0}
    )
    config["head"].update({"d_adapter": 16, "d_audiogram": 8, "lstm_hidden": 8, "attn_heads": 2, "dropout": 0.0})
    config["distill"] = {"teacher_dim": 32, "targets": [[1, 2]]}
    return config


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with tiny random 'teacher' and 'distilled' models (tests only, never shipped)."""
    from haaqicli.models.registry import ModelInfo, build_model, save_model

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for name, arch, config in (
        ("teacher", "haaqinet", TINY_TEACHER),
        ("distilled", "haaqinet-student", tiny_student_config()),
    ):
        model = build_model(arch, config)
        info = save_model(model, ModelInfo(name=name, arch=arch, config=config, file=f"{name}.safetensors"), folder)
        save_synthetic_calibration(name, info.sha256, folder)
    return folder


def synthetic_residuals(n: int = 3000, seed: int = 0, spread: float = 0.1) -> tuple[np.ndarray, ...]:
    """(predicted, exact, pta) with exact = predicted + N(0, spread * (1 + pta / 60)): known quantiles
    that widen with the hearing loss."""
    gen = np.random.default_rng(seed)
    predicted = gen.uniform(0.0, 1.0, n)
    pta = gen.choice([0.0, 25.0, 45.0, 70.0], n)
    exact = predicted + gen.normal(0.0, spread * (1 + pta / 60), n)
    return predicted, exact, pta


def save_synthetic_calibration(model: str, sha256: str, folder: Path) -> None:
    """A calibration of the tiny test models fitted on synthetic residuals (tests only, never shipped)."""
    from haaqicli.models.calibration import fit_calibration, save_calibration

    predicted, exact, pta = synthetic_residuals()
    save_calibration(fit_calibration(predicted, exact, pta, model=model, weights_sha256=sha256), folder)


@pytest.fixture()
def use_tiny_weights(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HAAQI_WEIGHTS", str(tiny_weights))
    return tiny_weights


def write_music(path: Path, seconds: float = 3.0, sample_rate: int = 24000, channels: int = 1, seed: int = 0,
                **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = synth.music(seconds, sample_rate, channels=channels, seed=seed)
    sf.write(path, audio.T, sample_rate, **kwargs)
    return path


def interrupt_after(patch: pytest.MonkeyPatch, cls: type, method: str, counter: str, n: int) -> None:
    """Ctrl-C once a progress object's ``counter`` reaches ``n``: ``cls.method`` (e.g. TaskProgress.update,
    called as each file or pair finishes) runs, then raises KeyboardInterrupt."""
    original = getattr(cls, method)

    def interrupting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        if getattr(self, counter) == n:
            raise KeyboardInterrupt

    patch.setattr(cls, method, interrupting)


@pytest.fixture()
def music_folder(tmp_path: Path) -> Path:
    """A small folder: mono and stereo music, a nested file, a hidden file and a non-audio file."""
    root = tmp_path / "music"
    write_music(root / "a_mono.wav", seconds=3.0, channels=1, seed=1)
    write_music(root / "b_stereo.flac", seconds=8.0, sample_rate=44100, channels=2, seed=2)
    write_music(root / "sub" / "c_mono48k.wav", seconds=2.0, sample_rate=48000, seed=3)
    write_music(root / ".hidden.wav", seconds=1.0)
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
