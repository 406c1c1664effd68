"""Registry: manifest round trip, sha256 verification, device resolution, --beats-checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from haaqicli.models.haaqinet import HAAQINet
from haaqicli.models.registry import (
    ModelInfo,
    average_models,
    get_info,
    list_models,
    load_model,
    promote_model,
    resolve_device,
    save_model,
    sha256_file,
)
from haaqicli.models.student import StudentNet
from haaqicli.util.errors import ModelError

ENC = dict(encoder_layers=2, embed_dim=32, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
           encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, relative_position_embedding=True,
           num_buckets=32, max_distance=64, gru_rel_pos=True, deep_norm=True, sample_rate=24000)
HEAD = dict(d_adapter=24, d_audiogram=8, lstm_hidden=16, attn_heads=2, dropout=0.0)
S_ENC = dict(conv_channels=[8, 16], encoder_layers=2, encoder_embed_dim=24, encoder_ffn_embed_dim=48,
             encoder_attention_heads=2, conv_pos=8, conv_pos_groups=4)


def _save_teacher(tmp_path) -> tuple[HAAQINet, ModelInfo]:
    torch.manual_seed(0)
    model = HAAQINet(ENC, HEAD).eval()
    info = ModelInfo(name="teacher", arch="haaqinet", config={}, file="teacher.safetensors",
                     training={"clips": 10}, metrics={"val_lcc": 0.5})
    return model, save_model(model, info, tmp_path)


def test_manifest_round_trip(tmp_path) -> None:
    model, info = _save_teacher(tmp_path)
    student = StudentNet(S_ENC, HEAD, {"teacher_dim": 32, "targets": [[1, 1], [2, 2]]})
    save_model(student, ModelInfo(name="distilled", arch="", config={}, file="distilled.safetensors"), tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["models"]) == {"teacher", "distilled"} and manifest["format_version"] == 1
    assert info.sha256 == sha256_file(tmp_path / "teacher.safetensors")
    assert info.n_params == sum(p.numel() for p in model.parameters()) and info.created
    assert [m.name for m in list_models(tmp_path)] == ["distilled", "teacher"]
    assert get_info("distilled", tmp_path).arch == "haaqinet-student"
    loaded, linfo = load_model("teacher", weights_dir=tmp_path)
    assert not loaded.training and linfo.metrics == {"val_lcc": 0.5}
    w, ag = 0.1 * torch.randn(2, 24000), torch.full((2, 8), 40.0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(w, ag).clip, model(w, ag).clip)
    # Shared relative-bias table is tied again after loading.
    layers = loaded.encoder.encoder.layers
    assert layers[0].self_attn.relative_attention_bias is layers[1].self_attn.relative_attention_bias
    s_loaded, _ = load_model("distilled", weights_dir=tmp_path)
    assert isinstance(s_loaded, StudentNet)


def test_sha256_mismatch_and_missing_file(tmp_path) -> None:
    _save_teacher(tmp_path)
    path = tmp_path / "teacher.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="teacher.safetensors: sha256 mismatch") as e:
        load_model("teacher", weights_dir=tmp_path)
    assert "\n" not in str(e.value)
    path.unlink()
    with pytest.raises(ModelError, match="weights file missing"):
        load_model("teacher", weights_dir=tmp_path)
    with pytest.raises(ModelError, match="no model named 'nope'"):
        load_model("nope", weights_dir=tmp_path)


def test_bad_manifest_is_one_line_error(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        list_models(tmp_path)
    assert list_models(tmp_path / "empty") == []


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ModelError, match="--device tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_beats_checkpoint_option(tmp_path) -> None:
    model, _ = _save_teacher(tmp_path)
    # An "official" checkpoint whose shapes fit our head: encoder weights come from it, head from ours.
    ckpt_model = HAAQINet(ENC, HEAD).encoder
    torch.save({"cfg": ckpt_model.cfg.to_dict(), "model": ckpt_model.state_dict()}, tmp_path / "beats.pt")
    loaded, info = load_model("teacher", weights_dir=tmp_path, beats_checkpoint=tmp_path / "beats.pt")
    torch.testing.assert_close(loaded.head.frame_proj.weight, model.head.frame_proj.weight)
    torch.testing.assert_close(loaded.encoder.patch_embedding.weight, ckpt_model.patch_embedding.weight)
    assert "beats.pt" in info.name
    # A checkpoint of another size needs its own head.
    other = HAAQINet({**ENC, "encoder_layers": 3}, HEAD).encoder
    torch.save({"cfg": other.cfg.to_dict(), "model": other.state_dict()}, tmp_path / "big.pt")
    with pytest.raises(ModelError, match="train a head for it"):
        load_model("teacher", weights_dir=tmp_path, beats_checkpoint=tmp_path / "big.pt")


def test_measure_throughput_restores_threads() -> None:
    from haaqicli.models.registry import measure_throughput

    before = torch.get_num_threads()
    r = measure_throughput(HAAQINet(ENC, HEAD), batch=2, window_s=0.5, threads=1, repeats=1)
    assert r["ms_per_window"] > 0 and r["realtime_factor"] > 0
    assert torch.get_num_threads() == before


def test_saving_the_same_weights_gives_the_same_bytes(tmp_path) -> None:
    """safetensors writes a metadata map in no fixed order; the registry's file (and so its sha256) must
    not depend on it."""
    torch.manual_seed(0)
    model = HAAQINet(ENC, HEAD).eval()
    digests = set()
    for attempt in range(8):
        info = ModelInfo(name="teacher", arch="haaqinet", config={}, file="teacher.safetensors")
        digests.add(save_model(model, info, tmp_path / str(attempt)).sha256)
    assert len(digests) == 1


def test_average_registers_the_mean_of_two_models_with_their_provenance(tmp_path) -> None:
    _, first = _save_teacher(tmp_path / "a")
    torch.manual_seed(1)
    other = HAAQINet(ENC, HEAD).eval()
    second = save_model(other, ModelInfo(name="teacher", arch="haaqinet", config={}, file="teacher.safetensors",
                                         training={"items": 7}), tmp_path / "b")
    info = average_models([(tmp_path / "a", "teacher"), (tmp_path / "b", "teacher")], "soup", tmp_path / "out")
    mean, _ = load_model("soup", weights_dir=tmp_path / "out")
    a = load_model("teacher", weights_dir=tmp_path / "a")[0].state_dict()
    b = other.state_dict()
    for key, value in mean.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2)
    assert [s["sha256"] for s in info.training["average_of"]] == [first.sha256, second.sha256]
    assert info.training["items"] == 7
    student = StudentNet(S_ENC, HEAD, {"teacher_dim": 32, "targets": [[1, 1], [2, 2]]})
    save_model(student, ModelInfo(name="teacher", arch="", config={}, file="teacher.safetensors"), tmp_path / "c")
    with pytest.raises(ModelError, match="another architecture"):
        average_models([(tmp_path / "a", "teacher"), (tmp_path / "c", "teacher")], "bad", tmp_path / "out")
    with pytest.raises(ModelError, match="two or more"):
        average_models([(tmp_path / "a", "teacher")], "one", tmp_path / "out")


def test_promote_registers_an_experiment_model_under_a_release_name(tmp_path) -> None:
    model, info = _save_teacher(tmp_path / "experiment")
    shipped = promote_model("teacher", tmp_path / "experiment", "release", tmp_path / "weights")
    assert shipped.file == "release.safetensors" and shipped.sha256 != info.sha256  # the name is in the bytes
    assert shipped.training["promoted_from"] == {"name": "teacher", "sha256": info.sha256}
    assert shipped.training["clips"] == 10 and shipped.metrics == {"val_lcc": 0.5} and shipped.created == info.created
    loaded, _ = load_model("release", weights_dir=tmp_path / "weights")
    w, ag = 0.1 * torch.randn(2, 24000), torch.full((2, 8), 40.0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(w, ag).clip, model(w, ag).clip, rtol=0, atol=0)  # the same weights
    (tmp_path / "experiment" / "teacher.safetensors").write_bytes(b"tampered")
    with pytest.raises(ModelError):
        promote_model("teacher", tmp_path / "experiment", "again", tmp_path / "weights")


def test_graft_takes_the_prefixed_tensors_from_the_donor_and_keeps_the_rest(tmp_path) -> None:
    from safetensors.torch import load_file

    from haaqicli.models.registry import graft_tensors

    base, _ = _save_teacher(tmp_path / "a")
    torch.manual_seed(1)
    donor = HAAQINet(ENC, HEAD).eval()
    save_model(donor, ModelInfo(name="teacher", arch="haaqinet", config={}, file="teacher.safetensors"), tmp_path / "b")
    counts = graft_tensors((tmp_path / "a", "teacher"), (tmp_path / "b", "teacher"), "head.", tmp_path / "init.safetensors")
    written = load_file(str(tmp_path / "init.safetensors"))
    ours, theirs = base.state_dict(), donor.state_dict()
    assert counts == {"tensors": len(ours), "grafted": sum(k.startswith("head.") for k in ours)} and counts["grafted"]
    for key, value in written.items():
        torch.testing.assert_close(value, (theirs if key.startswith("head.") else ours)[key], rtol=0, atol=0)
    record = json.loads((tmp_path / "init.safetensors.json").read_text())
    assert record["prefix"] == "head." and record["sha256"] == sha256_file(tmp_path / "init.safetensors")
    assert record["base"]["sha256"] == sha256_file(tmp_path / "a" / "teacher.safetensors")
    with pytest.raises(ModelError, match="no tensor under"):
        graft_tensors((tmp_path / "a", "teacher"), (tmp_path / "b", "teacher"), "nothing.", tmp_path / "x.safetensors")
    student = StudentNet(S_ENC, HEAD, {"teacher_dim": 32, "targets": [[1, 1], [2, 2]]})
    save_model(student, ModelInfo(name="teacher", arch="", config={}, file="teacher.safetensors"), tmp_path / "c")
    with pytest.raises(ModelError, match="another shape"):
        graft_tensors((tmp_path / "a", "teacher"), (tmp_path / "c", "teacher"), "encoder.", tmp_path / "y.safetensors")


def test_registry_source_splits_folder_and_name_at_the_last_colon() -> None:
    from haaqicli.models.registry import registry_source

    assert registry_source("data/exp/s60w:distilled") == ("data/exp/s60w", "distilled")
    for bad in ("weights", "weights:", ":teacher"):
        with pytest.raises(ValueError, match="REGISTRY:NAME"):
            registry_source(bad)
