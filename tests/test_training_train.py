"""Training, distillation and evaluation plumbing on tiny models and synthetic data."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_TEACHER, tiny_student_config

from haaqicli.audio import synth
from haaqicli.models.registry import get_info, load_model
from haaqicli.training import train
from haaqicli.util.errors import HaaqiError


def synthetic_split(n: int = 24, seconds: float = 1.0, seed: int = 0) -> train.Split:
    """Clips whose 'label' is a simple function of brightness and hearing loss, so a model can learn."""
    rng = np.random.default_rng(seed)
    sr = 24000
    waves, grams, labels, rows = [], [], [], []
    for i in range(n):
        clean = synth.music(seconds, sr, seed=i)[0]
        cutoff = rng.choice([2000.0, 4000.0, 8000.0])
        waves.append(synth.lowpass(clean, sr, cutoff) * 0.1 / np.sqrt(np.mean(clean**2)))
        loss = rng.uniform(0, 60)
        grams.append(np.full(8, loss, dtype=np.float32))
        labels.append(np.clip(cutoff / 10000 - loss / 200, 0, 1))
        rows.append({"source": f"track{i % 6}", "package": "synthetic", "degradation": f"lowpass{int(cutoff)}",
                     "severity": "normal" if loss < 20 else "mild", "item_id": f"{seed}-{i}"})
    return train.Split(torch.from_numpy(np.stack(waves).astype(np.float32)),
                       torch.from_numpy(np.stack(grams)), torch.tensor(labels, dtype=torch.float32),
                       pd.DataFrame(rows))


@pytest.fixture()
def fake_data(monkeypatch, tmp_path):
    monkeypatch.setenv("HAAQI_DATA_DIR", str(tmp_path / "data"))  # caches stay in the test's folder
    data = {"train": synthetic_split(24), "validation": synthetic_split(12, seed=1)}

    def load_split(manifest, split, log=None, items=None, **options):
        assert items is None  # these tests train on every item of the fake split
        return data[split]

    monkeypatch.setattr(train, "load_split", load_split)
    monkeypatch.setattr(train, "dev_mask", lambda meta, fraction=0.06: (meta["source"] == "track0").to_numpy())
    return data


def test_metrics_match_definitions():
    pred = np.array([0.1, 0.4, 0.35, 0.8])
    target = np.array([0.0, 0.5, 0.3, 0.9])
    m = train.metrics(pred, target)
    assert m["lcc"] == pytest.approx(np.corrcoef(pred, target)[0, 1])
    assert m["srcc"] == pytest.approx(1.0)
    assert m["mse"] == pytest.approx(np.mean((pred - target) ** 2))
    assert m["bias"] == pytest.approx(np.mean(pred - target))


def test_evaluation_reports_within_profile_correlation_and_clean_normal_mean():
    """Two profiles whose labels sit at different levels: pooled LCC is high from the level gap alone,
    the within-profile LCC (mean of per-profile LCCs) shows the ranking inside each profile."""
    rng = np.random.default_rng(0)
    rows = []
    for profile, offset in (("normal", 0.5), ("N3", 0.0)):
        for k in range(10):
            label = offset + 0.04 * k
            rows.append({"profile": profile, "package": "p" if k % 2 else "q", "severity": profile,
                         "degradation": "identity" if k == 9 else "noise", "augmentation": "none",
                         "label": label, "predicted": offset + 0.2 + rng.uniform(0, 0.4) if k < 9 else 0.8})
    meta = pd.DataFrame(rows)
    result = train.evaluation_metrics(meta)
    per = result["by_profile"]
    assert set(per) == {"normal", "N3"} and set(result["by_package"]) == {"p", "q"}
    assert result["within_profile"]["lcc"] == pytest.approx((per["normal"]["lcc"] + per["N3"]["lcc"]) / 2)
    assert result["within_profile"]["lcc"] < result["overall"]["lcc"] - 0.2
    assert result["clean_normal"] == {"n": 1, "predicted": pytest.approx(0.8), "label": pytest.approx(0.86)}
    assert result["by_degradation"]["noise"]["bias"] > 0
    text = train.format_evaluation({"model": "m", "sha256": "0" * 12, "split": "validation-real",
                                    "packages": ["p", "q"], "paper": None, **result})
    assert "within-profile (mean of 2)" in text and "clean, normal hearing" in text and "profile=N3" in text


def test_split_subsets_index_one_shared_array():
    data = synthetic_split(6)
    mapped = train.Split(data.waves.numpy(), data.audiograms, data.labels, data.meta)
    inner = mapped.subset(np.array([False, True, True, False, True, True])).subset(np.array([True, False, True, True]))
    assert inner.waves is mapped.waves  # no copy of the audio
    assert list(inner.meta["item_id"]) == ["0-1", "0-4", "0-5"]
    assert torch.equal(inner.wave_batch([2, 0]), data.waves[[5, 1]])
    assert torch.equal(inner.labels, data.labels[[1, 4, 5]])


def test_epoch_order_draws_clean_items_more_often_only_when_asked():
    data = synthetic_split(40)
    data.meta.loc[:9, "degradation"] = "identity"  # 10 of 40 items clean
    plain = train.epoch_order(data, 1.0, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(40))  # a shuffle: every item once
    draws = torch.cat([train.epoch_order(data, 6.0, torch.Generator().manual_seed(seed)) for seed in range(50)])
    share = float((draws < 10).float().mean())
    assert len(draws) == 50 * 40
    assert abs(share - 60 / 90) < 0.03  # 10 x 6 of 10 x 6 + 30 x 1
    with pytest.raises(HaaqiError, match="--clean-weight"):
        train.epoch_order(data, 0.0, torch.Generator())


def test_clip_groups_keep_every_drawn_item_and_put_versions_of_one_clip_together():
    data = synthetic_split(48)
    data.meta["clip_id"] = [f"clip{i % 12}" for i in range(48)]  # 12 clips x 4 versions, interleaved
    clips = data.meta["clip_id"].to_numpy()
    plain = train.epoch_order(data, 1.0, torch.Generator().manual_seed(0))
    grouped = train.epoch_order(data, 1.0, torch.Generator().manual_seed(0), clip_group=4)
    assert sorted(grouped.tolist()) == sorted(plain.tolist()) == list(range(48))

    def runs_of_one_clip(order: torch.Tensor) -> int:
        return sum(len(set(clips[run.numpy()])) == 1 for run in order.split(4))

    assert runs_of_one_clip(grouped) == 12 and runs_of_one_clip(plain) < 4
    other_epoch = train.epoch_order(data, 1.0, torch.Generator().manual_seed(1), clip_group=4)
    assert not torch.equal(other_epoch, grouped)
    # with clean draws (replacement) every drawn item stays, in runs of the same clip where it can
    drawn = train.epoch_order(data, 3.0, torch.Generator().manual_seed(2))
    regrouped = train.epoch_order(data, 3.0, torch.Generator().manual_seed(2), clip_group=4)
    assert sorted(regrouped.tolist()) == sorted(drawn.tolist())


def test_frame_loss_produces_gradients():
    from haaqicli.models.haaqinet import haaqinet_loss
    from haaqicli.models.registry import build_model

    model = build_model("haaqinet", TINY_TEACHER)
    data = synthetic_split(2)
    out = model(data.wave_batch(range(len(data))), data.audiograms)
    loss = haaqinet_loss(out, data.labels, frame_weight=1.0) - torch.nn.functional.mse_loss(out.clip, data.labels)
    loss.backward()  # the frame term alone
    grads = [p.grad.abs().sum() for p in model.head.frame_proj.parameters()]
    assert all(g > 0 for g in grads)


def test_dropout_override_reaches_every_layer():
    from haaqicli.models.registry import build_model

    config = train.with_dropout(TINY_TEACHER, 0.0)
    assert config["encoder"]["dropout"] == config["encoder"]["attention_dropout"] == config["head"]["dropout"] == 0
    assert train.with_dropout(TINY_TEACHER, None) is TINY_TEACHER
    with pytest.raises(HaaqiError, match="--dropout"):
        train.with_dropout(TINY_TEACHER, 1.0)
    data = synthetic_split(2)
    for rate, same in ((0.0, True), (0.5, False)):
        model = build_model("haaqinet", train.with_dropout(TINY_TEACHER, rate)).train()
        waves = data.wave_batch(range(2))
        first, second = model(waves, data.audiograms).clip, model(waves, data.audiograms).clip
        assert torch.equal(first, second) == same  # in training mode only dropout is random


def test_teacher_trains_resumes_and_exports(fake_data, tmp_path):
    config = train.TrainConfig(name="teacher", run_dir=str(tmp_path / "run"), weights_dir=str(tmp_path / "w"),
                               epochs=2, batch_size=4, lr=3e-3, warmup_steps=2, config=TINY_TEACHER,
                               device="cpu")
    logs: list[str] = []
    info = train.train_teacher(config, log=logs.append)
    history = [json.loads(line) for line in logs if line.startswith("{")]
    assert [h["epoch"] for h in history] == [1, 2]
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "best.pt").exists()
    assert get_info("teacher", tmp_path / "w").sha256 == info["sha256"]
    # resume with more epochs continues from epoch 2, not from scratch
    config.epochs, config.resume = 3, True
    logs.clear()
    train.train_teacher(config, log=logs.append)
    assert any("resumed" in line and "epoch 2" in line for line in logs)
    assert [json.loads(line)["epoch"] for line in logs if line.startswith("{")] == [3]


def test_training_reduces_loss(fake_data, tmp_path):
    torch.manual_seed(0)
    config = train.TrainConfig(run_dir=str(tmp_path / "run"), weights_dir=str(tmp_path / "w"), epochs=6,
                               batch_size=4, lr=3e-3, warmup_steps=2, config=TINY_TEACHER, device="cpu")
    logs: list[str] = []
    train.train_teacher(config, log=logs.append)
    losses = [json.loads(line)["train_loss"] for line in logs if line.startswith("{")]
    assert losses[-1] < losses[0]


def test_distil_and_evaluate(fake_data, tmp_path):
    weights = str(tmp_path / "w")
    teacher_config = train.TrainConfig(run_dir=str(tmp_path / "t"), weights_dir=weights, epochs=1, batch_size=4,
                                       config=TINY_TEACHER, device="cpu")
    train.train_teacher(teacher_config, log=lambda _: None)
    student_config = train.TrainConfig(name="distilled", run_dir=str(tmp_path / "s"), weights_dir=weights,
                                       epochs=1, batch_size=4, config=tiny_student_config(), device="cpu")
    first: list[str] = []
    info = train.distill_student(student_config, log=first.append)
    assert info["training"]["teacher_sha256"] == get_info("teacher", weights).sha256
    # a second distillation from the same teacher on the same items reads the teacher's targets back
    again: list[str] = []
    repeat = train.distill_student(dataclasses.replace(student_config, run_dir=str(tmp_path / "s2"), name="distilled2"),
                                   log=again.append)
    assert any("teacher targets" in line and " in " in line for line in first)
    assert any("teacher targets" in line and "from" in line for line in again)
    assert repeat["sha256"]
    one, _ = load_model("distilled", weights_dir=weights)
    two, _ = load_model("distilled2", weights_dir=weights)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # same seed, same targets (from the cache): same student
    student, _ = load_model("distilled", weights_dir=weights)
    assert student.arch == "haaqinet-student"
    result = train.evaluate_model("distilled", "unused.parquet", "validation", weights_dir=weights, device="cpu")
    assert result["overall"]["n"] == 12
    assert set(result["by_degradation"]) == {"lowpass2000", "lowpass4000", "lowpass8000"}
    text = train.format_evaluation(result)
    assert "overall" in text and "paper" in text
    from haaqicli.models.registry import record_metrics

    record_metrics("distilled", "validation", result["overall"], weights)
    assert get_info("distilled", weights).metrics["validation"]["n"] == 12
    assert get_info("distilled", weights).sha256 == info["sha256"]  # weights untouched


def test_soft_targets_distil_the_mean_of_an_ensemble_into_the_trained_model(fake_data, tmp_path, monkeypatch):
    weights = tmp_path / "w"
    for seed, name in ((0, "a"), (1, "b")):
        train.train_teacher(train.TrainConfig(name=name, run_dir=str(tmp_path / name), weights_dir=str(weights),
                                              epochs=1, batch_size=4, config=TINY_TEACHER, device="cpu", seed=seed),
                            log=lambda _: None)
    data = fake_data["train"].subset(~train.dev_mask(fake_data["train"].meta))
    specs = (f"{weights}:a", f"{weights}:b")
    mean, record = train.ensemble_scores(train.soft_target_models(specs, torch.device("cpu")), data, torch.device("cpu"),
                                         log=lambda _: None)
    each = [train.predict(load_model(n, weights_dir=weights)[0], data) for n in ("a", "b")]
    np.testing.assert_allclose(mean.numpy(), (each[0] + each[1]) / 2, atol=1e-6)
    assert [r["sha256"] for r in record] == [get_info(n, weights).sha256 for n in ("a", "b")]
    assert not np.allclose(each[0], each[1])  # two different models: the mean is not either one

    seen: list[torch.Tensor] = []
    objective = train.label_objective
    monkeypatch.setattr(train, "label_objective", lambda out, labels, *rest: (seen.append(labels), objective(
        out, labels, *rest))[1])
    config = train.TrainConfig(name="mixed", run_dir=str(tmp_path / "m"), weights_dir=str(weights), epochs=1,
                               batch_size=len(data), config=TINY_TEACHER, device="cpu", soft_targets=specs,
                               soft_weight=0.25)
    info = train.train_teacher(config, log=lambda _: None)
    expected = 0.75 * data.labels + 0.25 * mean
    # one batch of every item, shuffled: the targets it trained on are the mix, not the labels
    torch.testing.assert_close(seen[0].sort().values, expected.sort().values)
    assert not torch.allclose(seen[0].sort().values, data.labels.sort().values)
    assert [r["model"] for r in info["training"]["soft_targets"]] == list(specs)
    with pytest.raises(HaaqiError, match="--soft-weight"):
        train.train_teacher(dataclasses.replace(config, soft_weight=1.5), log=lambda _: None)
    with pytest.raises(HaaqiError, match="--soft-target .* is not REGISTRY:NAME"):
        train.train_teacher(dataclasses.replace(config, soft_targets=(f"{weights}:",)), log=lambda _: None)


def test_warm_start_copies_matching_tensors_into_a_smaller_variant(fake_data, tmp_path):
    weights = str(tmp_path / "w")
    two_layers = copy.deepcopy(TINY_TEACHER)
    two_layers["encoder"]["encoder_layers"] = 2
    config = train.TrainConfig(run_dir=str(tmp_path / "t"), weights_dir=weights, epochs=1, batch_size=4,
                               config=two_layers, device="cpu")
    train.train_teacher(config, log=lambda _: None)
    trained, _ = load_model("teacher", weights_dir=weights)

    one_layer = copy.deepcopy(TINY_TEACHER)
    one_layer["encoder"]["encoder_layers"] = 1
    from haaqicli.models.registry import build_model

    torch.manual_seed(1)
    small = build_model("haaqinet", one_layer)
    messages: list[str] = []
    record = train.warm_start(small, "teacher", weights, messages.append)
    ours, theirs = small.state_dict(), trained.state_dict()
    copied = record["tensors_copied"]
    assert 0 < copied < len(ours) and "copied" in messages[0]
    assert record["sha256"] == get_info("teacher", weights).sha256
    layer0 = [k for k in ours if ".layers.0." in k]
    assert layer0 and all(torch.equal(ours[k], theirs[k]) for k in layer0)
    # the head's layer weights differ in shape (2 vs 3 hidden states): kept fresh, not copied
    mismatched = [k for k in ours if k in theirs and ours[k].shape != theirs[k].shape]
    assert mismatched

    with pytest.raises(HaaqiError, match="no such file"):
        train.warm_start(small, str(tmp_path / "missing.safetensors"), weights, messages.append)


def test_warm_start_widens_square_patches_to_time_patches(tmp_path):
    from safetensors.torch import save_file

    from haaqicli.models.registry import build_model

    torch.manual_seed(0)
    square = build_model("haaqinet", copy.deepcopy(TINY_TEACHER))
    init = tmp_path / "square.safetensors"
    save_file({k: v.clone() for k, v in square.state_dict().items()}, str(init))
    wide_config = copy.deepcopy(TINY_TEACHER)
    wide_config["encoder"]["input_patch_freq"] = wide_config["encoder"].get("num_mel_bins", 128)
    wide = build_model("haaqinet", wide_config)
    messages: list[str] = []
    record = train.warm_start(wide, str(init), None, messages.append)
    assert record["tensors_copied"] == record["tensors"] and "widened" in messages[0]
    kernel = square.encoder.patch_embedding.weight.detach()
    k = wide.encoder.cfg.num_mel_bins // kernel.shape[-1]
    fbank = torch.randn(2, 1, 16, wide.encoder.cfg.num_mel_bins)
    with torch.no_grad():  # a wide token is the mean of the square tokens it spans
        squares = torch.nn.functional.conv2d(fbank, kernel, stride=kernel.shape[-2:]).mean(-1)
        widened = wide.encoder.patch_embedding(fbank).squeeze(-1)
    assert k > 1
    torch.testing.assert_close(widened, squares)


def test_warm_start_from_a_grafted_file_records_what_it_was_made_of(fake_data, tmp_path):
    from haaqicli.models.registry import build_model, graft_tensors

    weights = str(tmp_path / "w")
    config = train.TrainConfig(run_dir=str(tmp_path / "t"), weights_dir=weights, epochs=1, batch_size=4,
                               config=copy.deepcopy(TINY_TEACHER), device="cpu")
    train.train_teacher(config, log=lambda _: None)
    init = tmp_path / "init.safetensors"
    graft_tensors((weights, "teacher"), (weights, "teacher"), "head.", init)
    model = build_model("haaqinet", copy.deepcopy(TINY_TEACHER))
    record = train.warm_start(model, str(init), None, lambda _: None)
    assert record["graft"]["prefix"] == "head." and record["graft"]["sha256"] == record["sha256"]
    assert record["graft"]["base"]["sha256"] == get_info("teacher", weights).sha256
    init.write_bytes(init.read_bytes())  # same bytes: the record still holds
    assert "graft" in train.warm_start(model, str(init), None, lambda _: None)
    (tmp_path / "init.safetensors.json").write_text(json.dumps({"sha256": "0" * 64, "prefix": "x"}))
    assert "graft" not in train.warm_start(model, str(init), None, lambda _: None)  # stale: not its file


def test_evaluation_reports_clean_music_by_content_bandwidth():
    """Clean items grouped by where their content ends: each group's mean prediction and label, over all
    profiles and for normal hearing; degraded items stay out of it."""
    rows = [
        {"profile": "normal", "degradation": "identity", "augmentation": "none", "content_bandwidth": 6000.0,
         "label": 0.97, "predicted": 0.40},
        {"profile": "N3", "degradation": "identity", "augmentation": "none", "content_bandwidth": 7000.0,
         "label": 0.60, "predicted": 0.30},
        {"profile": "normal", "degradation": "identity", "augmentation": "none", "content_bandwidth": 11900.0,
         "label": 0.98, "predicted": 0.90},
        {"profile": "normal", "degradation": "lowpass", "augmentation": "none", "content_bandwidth": 5000.0,
         "label": 0.50, "predicted": 0.10},
        {"profile": "normal", "degradation": "noise", "augmentation": "none", "content_bandwidth": 11900.0,
         "label": 0.30, "predicted": 0.35},
    ]
    result = train.evaluation_metrics(pd.DataFrame(rows))
    groups = result["clean_by_bandwidth"]
    assert list(groups) == ["< 8 kHz", ">= 11 kHz"]
    narrow = groups["< 8 kHz"]
    assert narrow["n"] == 2 and narrow["predicted"] == pytest.approx(0.35) and narrow["label"] == pytest.approx(0.785)
    assert narrow["normal"] == {"n": 1, "predicted": pytest.approx(0.40), "label": pytest.approx(0.97)}
    assert groups[">= 11 kHz"]["normal"]["predicted"] == pytest.approx(0.90)
    text = train.format_evaluation({"model": "m", "sha256": "0" * 12, "split": "validation-real",
                                    "packages": ["p"], "paper": None, **result})
    assert "clean, content < 8 kHz" in text and "normal hearing (1) 0.400" in text
    assert "clean_by_bandwidth" not in train.evaluation_metrics(pd.DataFrame(rows).drop(columns="content_bandwidth"))


def test_model_card_names_the_band_limited_clean_bias_only_where_it_exists():
    """scripts/model_card.py's known-limit bullet: pooled over the narrow bandwidth groups against the
    full-band ones, per model, from haaqi evaluate's clean_by_bandwidth."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("model_card", Path(__file__).parents[1] / "scripts" / "model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)

    def group(n: int, predicted: float, label: float) -> dict:
        return {"n": n, "predicted": predicted, "label": label, "normal": {"n": 0}}

    biased = {"clean_by_bandwidth": {"< 8 kHz": group(10, 0.4, 0.6), "8-10 kHz": group(30, 0.5, 0.6),
                                     ">= 11 kHz": group(60, 0.58, 0.6)}}
    fair = {"clean_by_bandwidth": {"< 8 kHz": group(10, 0.57, 0.6), ">= 11 kHz": group(60, 0.58, 0.6)}}
    bullet = card.band_limited_limit({"distilled": biased, "teacher": fair})
    assert len(bullet) == 1 and "`distilled` -0.12 on 40 such items against -0.02 on 60" in bullet[0]
    assert "teacher" not in bullet[0]
    assert card.band_limited_limit({"teacher": fair}) == [] and card.band_limited_limit({"m": {}}) == []


def test_plus_augmentation_adds_every_item_with_the_key_on_top_of_a_fixed_sample() -> None:
    from haaqicli.data.arrays import chosen_items, first_of_shuffle

    kinds = ["none", "mix+band", "eq", "band", "master", "eq+master", "none", "room+band", "downmix", "none"]
    meta = pd.DataFrame({"augmentation": kinds * 3})
    plus = meta["augmentation"].str.contains("band").to_numpy()
    chosen = chosen_items(meta, 5, seed=3, plus_augmentation="band")
    assert chosen[plus].all() and chosen[~plus].sum() == 5
    # The others are the same sample whether or not the key's items are there.
    others = np.flatnonzero(~plus)
    np.testing.assert_array_equal(np.flatnonzero(chosen & ~plus), others[first_of_shuffle(len(others), 5, 3)])
    # Without the key it is the plain shuffle; "band" does not match "bandpass"-like substrings of other keys.
    np.testing.assert_array_equal(chosen_items(meta, 5, seed=3), first_of_shuffle(len(meta), 5, 3))
    assert chosen_items(pd.DataFrame({"augmentation": ["bands", "x"]}), 1, 0, "band").sum() == 1
    with pytest.raises(HaaqiError, match="needs --train-items"):
        train.load_train_selection(train.TrainConfig(manifest="none.parquet", plus_augmentation="band",
                                                     selection="validation-real:ufoai-music"), log=None)
