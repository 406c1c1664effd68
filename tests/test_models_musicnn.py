"""The musicnn content prior without TensorFlow: a tiny random checkpoint in TF's own format (written by
tests/tfbundle.py) goes through the reader and `scripts/convert-musicnn.py`; the port is checked
against a numpy transcription of musicnn's TF graph (its layout: NHWC maps, HWIO kernels, the TF
layer order), and the converted file's sha256 is enforced. The real checkpoints are compared with
TensorFlow by scripts/check-musicnn.py (not here: TensorFlow is not a dependency)."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_student_config
from numpy.lib.stride_tricks import sliding_window_view
from tfbundle import write_tf_checkpoint

from haaqicli.models import musicnn
from haaqicli.models.musicnn import MusiCNN, MusicnnConfig, MusicnnMel, MusicnnPrior, load_converted
from haaqicli.models.registry import ModelInfo, build_model, load_model, save_model
from haaqicli.models.tf_checkpoint import read_tf_checkpoint
from haaqicli.util.errors import ModelError
from haaqicli.util.hashing import content_hash

TINY = MusicnnConfig(n_mels=16, timbral_filters=4, temporal_filters=3, midend_filters=5, backend_units=6, classes=7)


def tiny_tf_tensors(cfg: MusicnnConfig = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors under musicnn's TF variable names and shapes (plus optimiser slots to skip)."""
    rng = np.random.default_rng(seed)
    k4, k7 = cfg.timbral_kernels
    m = cfg.midend_filters
    convs = [(7, k4, 1, cfg.timbral_filters), (7, k7, 1, cfg.timbral_filters),
             *[(k, 1, 1, cfg.temporal_filters) for k in musicnn.TEMPORAL_KERNELS],
             (7, cfg.frontend_dim, 1, m), (7, m, 1, m), (7, m, 1, m)]
    bns = [1, cfg.timbral_filters, cfg.timbral_filters, *[cfg.temporal_filters] * 3, m, m, m,
           2 * cfg.midend_dim, cfg.backend_units]
    tensors = {}
    for i, shape in enumerate(convs):
        name = f"conv2d{'_' + str(i) if i else ''}"
        tensors[f"{name}/kernel"] = rng.normal(0, 1 / np.sqrt(np.prod(shape[:3])), shape)
        tensors[f"{name}/bias"] = rng.normal(0, 0.1, shape[3])
        tensors[f"{name}/kernel/Adam"] = rng.normal(size=shape)
    for i, n in enumerate(bns):
        name = f"batch_normalization{'_' + str(i) if i else ''}"
        tensors[f"{name}/gamma"] = rng.normal(0, 1, n)  # some negative: the max/min shortcut is exercised
        tensors[f"{name}/beta"] = rng.normal(0, 0.1, n)
        tensors[f"{name}/moving_mean"] = rng.normal(0, 0.5, n)
        tensors[f"{name}/moving_variance"] = rng.uniform(0.5, 2.0, n)
    for name, shape in (("dense", (2 * cfg.midend_dim, cfg.backend_units)), ("dense_1", (cfg.backend_units, cfg.classes))):
        tensors[f"{name}/kernel"] = rng.normal(0, 1 / np.sqrt(shape[0]), shape)
        tensors[f"{name}/bias"] = rng.normal(0, 0.1, shape[1])
    tensors["beta1_power"] = np.array(0.9)
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def tf_graph_numpy(t: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """musicnn's build_musicnn (models.py) transcribed line by line in numpy, in TF's layout:
    x (B, T, n_mels) -> (logits, penultimate)."""
    def conv(inp, name):  # tf.layers.conv2d, padding "valid", NHWC x HWIO, then ReLU
        k = t[f"{name}/kernel"]
        win = sliding_window_view(inp, k.shape[:2], axis=(1, 2))  # (B, H', W', C, kh, kw)
        return np.maximum(np.einsum("bhwcij,ijco->bhwo", win, k) + t[f"{name}/bias"], 0)

    def bn(inp, name):
        return ((inp - t[f"{name}/moving_mean"]) / np.sqrt(t[f"{name}/moving_variance"] + 1e-3)
                * t[f"{name}/gamma"] + t[f"{name}/beta"])

    def pad_time(inp, before, after):
        return np.pad(inp, [(0, 0), (before, after), (0, 0), (0, 0)])

    inp = bn(x[..., None], "batch_normalization")
    front = [bn(conv(pad_time(inp, 3, 3), "conv2d"), "batch_normalization_1").max(axis=2),
             bn(conv(pad_time(inp, 3, 3), "conv2d_1"), "batch_normalization_2").max(axis=2)]
    for i, k in enumerate((128, 64, 32)):  # "same": (k-1)//2 before, k//2 after
        front.append(bn(conv(pad_time(inp, (k - 1) // 2, k // 2), f"conv2d_{2 + i}"),
                        f"batch_normalization_{3 + i}").max(axis=2))
    front = np.concatenate(front, axis=2)[..., None]  # (B, T, 561, 1)
    c1 = bn(conv(pad_time(front, 3, 3), "conv2d_5"), "batch_normalization_6").transpose(0, 1, 3, 2)
    c2 = bn(conv(pad_time(c1, 3, 3), "conv2d_6"), "batch_normalization_7").transpose(0, 1, 3, 2) + c1
    c3 = bn(conv(pad_time(c2, 3, 3), "conv2d_7"), "batch_normalization_8").transpose(0, 1, 3, 2) + c2
    mid = np.concatenate([front, c1, c2, c3], axis=2)  # (B, T, 753, 1)
    pooled = np.concatenate([mid.max(axis=1), mid.mean(axis=1)], axis=2).reshape(len(x), -1)
    dense = np.maximum(bn(pooled, "batch_normalization_9") @ t["dense/kernel"] + t["dense/bias"], 0)
    penultimate = bn(dense, "batch_normalization_10")
    return penultimate @ t["dense_1/kernel"] + t["dense_1/bias"], penultimate


def _convert_script():
    spec = importlib.util.spec_from_file_location("convert_musicnn",
                                                  Path(__file__).parents[1] / "scripts" / "convert-musicnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, np.ndarray]]:
    """A tiny random checkpoint in the musicnn wheel's layout (musicnn/MSD_musicnn/.index, .data-...),
    converted by the script: (safetensors path, its sha256, the TF tensors)."""
    root = tmp_path_factory.mktemp("musicnn")
    folder = root / "musicnn" / "MSD_musicnn"
    folder.mkdir(parents=True)
    tensors = tiny_tf_tensors()
    write_tf_checkpoint(str(folder) + "/", tensors)
    out = root / "tiny.safetensors"
    assert _convert_script().main([str(root), "--out", str(out)]) == 0
    return out, content_hash(out), tensors


def test_reader_reads_every_tensor_and_refuses_corrupt_data(tmp_path: Path) -> None:
    tensors = tiny_tf_tensors()
    write_tf_checkpoint(tmp_path / "ck", tensors)
    read = read_tf_checkpoint(tmp_path / "ck")
    assert set(read) == set(tensors)
    assert all(np.array_equal(read[k], tensors[k]) and read[k].shape == tensors[k].shape for k in tensors)
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="crc32c mismatch"):
        read_tf_checkpoint(tmp_path / "ck")
    (tmp_path / "bad.index").write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match="bad table magic"):
        read_tf_checkpoint(tmp_path / "bad")


def test_port_matches_the_tf_graph_transcribed_in_numpy(converted) -> None:
    path, sha, tensors = converted
    cfg, state = load_converted(path, sha)
    assert cfg == TINY
    net = MusiCNN(cfg).eval()
    net.load_state_dict(state)
    x = np.random.default_rng(1).uniform(0, 3, (2, musicnn.PATCH_FRAMES, TINY.n_mels)).astype(np.float32)
    logits, penultimate = tf_graph_numpy({k: v.astype(np.float64) for k, v in tensors.items()}, x.astype(np.float64))
    with torch.no_grad():
        ours, features = net(torch.from_numpy(x))
    assert ours.shape == (2, TINY.classes) and features["penultimate"].shape == (2, TINY.backend_units)
    np.testing.assert_allclose(ours.numpy(), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features["penultimate"].numpy(), penultimate, rtol=1e-4, atol=1e-4)


def test_conversion_is_deterministic_and_the_loader_checks_sha256(converted, tmp_path: Path) -> None:
    path, sha, _ = converted
    again = tmp_path / "again.safetensors"
    assert _convert_script().main([str(path.parent / "musicnn" / "MSD_musicnn"), "--out", str(again)]) == 0
    assert content_hash(again) == sha  # same checkpoint, same bytes: a pinned sha256 can hold
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_converted(path, "0" * 64)
    with pytest.raises(ModelError, match="no known sha256"):
        load_converted(path)  # not a pinned file name, and no sha256 given
    pinned = tmp_path / "MSD_musicnn.safetensors"
    pinned.write_bytes(path.read_bytes())
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_converted(pinned)  # the real file's name, not its bytes: the pin refuses it
    assert _convert_script().main([str(tmp_path / "nowhere"), "--out", str(again)]) == 2


def test_mel_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    expected = librosa.feature.melspectrogram(y=wave, sr=16000, hop_length=256, n_fft=512, n_mels=96,
                                              pad_mode="reflect").T
    ours = MusicnnMel().power_mel(torch.from_numpy(wave)[None])[0].numpy()
    assert ours.shape == expected.shape == (1 + 16000 // 256, 96)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_prior_gives_each_frame_its_patch_and_stays_frozen(converted) -> None:
    path, sha, _ = converted
    prior = MusicnnPrior(24000, TINY)
    prior.load_converted(path, sha)
    wave = torch.from_numpy(np.random.default_rng(2).normal(0, 0.1, (2, 6 * 24000)).astype(np.float32))
    out = prior(wave, 37)
    assert out.shape == (2, 37, TINY.backend_units)
    patch_s = musicnn.PATCH_FRAMES * musicnn.HOP / musicnn.SAMPLE_RATE
    first = [f for f in range(37) if (f + 0.5) * 6 / 37 < patch_s]
    assert torch.equal(out[:, first], out[:, :1].expand(-1, len(first), -1))
    assert not torch.equal(out[:, 0], out[:, -1])  # the second patch is another embedding
    assert torch.equal(prior(wave, 37), out)  # deterministic
    assert prior(wave[:, :24000], 6).shape == (2, 6, TINY.backend_units)  # 1 s: repeat-padded to a patch
    prior.train()
    assert not prior.net.training and not any(p.requires_grad for p in prior.parameters())
    asking = wave[:1].clone().requires_grad_(True)  # frozen weights, yet a waveform's gradient passes
    prior(asking, 37).sum().backward()
    assert asking.grad is not None and asking.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())
    with pytest.raises(ModelError, match="not this model's"):
        MusicnnPrior(24000).load_converted(path, sha)


def test_head_with_prior_saves_and_loads_back(converted, tmp_path: Path) -> None:
    path, sha, _ = converted
    config = tiny_student_config()
    config["head"].update({"content_prior": "musicnn", "prior": asdict(TINY), "d_prior": 4})
    model = build_model("haaqinet-student", config)
    model.content_prior.load_converted(path, sha)
    model.train()
    assert not model.content_prior.net.training
    wave, gram = 0.1 * torch.randn(2, 3 * 24000), torch.full((2, 8), 30.0)
    assert model.head.blstm.input_size == 16 + 8 + 4  # adapter + audiogram + prior
    info = save_model(model, ModelInfo(name="prior", arch="haaqinet-student", config={}, file="prior.safetensors"),
                      tmp_path)
    assert info.config["head"]["content_prior"] == "musicnn" and info.config["head"]["prior"] == asdict(TINY)
    loaded, _ = load_model("prior", weights_dir=tmp_path)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(wave, gram).clip, model(wave, gram).clip)
    bad = tiny_student_config()
    bad["head"]["content_prior"] = "openl3"
    with pytest.raises(ModelError, match="unknown content prior"):
        build_model("haaqinet-student", bad)
