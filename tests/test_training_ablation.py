"""The training pipeline for new models, end to end on a tiny synthetic corpus: term-head and
hearing-conditioned training from label shards (sub-terms masked where missing), checkpoint selection on
ufoai-music only, `haaqi ablate` rows and learning curve, and training inputs equal to what `haaqi score`
presents."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import tiny_student_config

from haaqicli.data import labels as lab
from haaqicli.data.arrays import load_split_arrays
from haaqicli.data.corpus import BuildConfig, build_manifest, materialise, write_manifest
from haaqicli.data.export import model_input, scoring_spl
from haaqicli.reference.formula import TERMS, combine_clipped_terms
from haaqicli.training import train
from haaqicli.util.errors import HaaqiError

SR = 16000
PACKAGES = [("naev-data", 3), ("supertux-data", 2), ("flare-game", 1), ("ufoai-music", 1), ("nexuiz-music", 1)]


def _track(seconds: float, freq: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = 0.2 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2.5 * freq * t) + 0.02 * rng.standard_normal(len(t))
    return (x * (1 + 0.3 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


def synthetic_labels(manifest: pd.DataFrame, with_terms: np.ndarray) -> list[dict]:
    """Shard rows whose sub-terms fall with the degradation and the hearing loss, and whose label is
    HAAQI's formula of them; items outside `with_terms` were 'labelled before sub-terms existed'."""
    rows = []
    for i, item in enumerate(manifest.to_dict(orient="records")):
        clean = 1.0 if json.loads(item["recipe"])["type"] == "identity" else 0.6
        hearing = 1.0 - float(np.mean(item["audiogram"])) / 150
        terms = {"cep_high": 0.95 * clean * hearing, "bm_sync5": 0.9 * clean, "d_loud": 0.8 * hearing,
                 "d_norm": 0.85 * clean}
        label = float(combine_clipped_terms(*terms.values())[0])
        known = bool(with_terms[i])
        rows.append({"item_id": item["item_id"], "label": label, "label_seconds": 0.1, "error": "",
                     **{t: (terms[t] if known else float("nan")) for t in TERMS}})
    return rows


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen manifest over training, game-validation and validation-real packages, with label shards."""
    root = tmp_path_factory.mktemp("ablation")
    corpus = root / "data" / "corpus"
    for i, (package, n) in enumerate(PACKAGES):
        folder = corpus / "packages" / package / "music"
        folder.mkdir(parents=True)
        for j in range(n):
            sf.write(folder / f"track{j}.flac", _track(21, 180 * (i + 1) + 60 * j, seed=10 * i + j), SR)
    config = BuildConfig(items=42 + 36, variants_per_clip=2, clips_per_track=2, max_package_share=0.6, seed=1,
                         recipe_weights={"identity": 1.0, "lowpass": 1.0, "noise": 1.0, "level": 1.0},
                         validation_variants=2, validation_clips_per_track=1, augment=False,
                         clip_seconds=3.0)  # short clips: a test of the plumbing, not of accuracy
    df = build_manifest(corpus, config)
    path = root / "labels" / "manifest.parquet"
    write_manifest(df, path, compact=True)
    with_terms = np.random.default_rng(0).uniform(size=len(df)) < 0.6
    lab.write_shard(lab.shard_dir(path) / "shard-test.parquet", synthetic_labels(df, with_terms))
    for split in ("train", "validation", "validation-real"):  # the split caches, in this process (no pool start)
        load_split_arrays(path, split, corpus_dir=corpus, cache_dir=root / "data" / "cache", workers=1)
    return path


@pytest.fixture()
def data_dir(labelled: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HAAQI_DATA_DIR", str(labelled.parent.parent / "data"))
    return labelled


def test_splits_carry_sub_terms_nan_where_unlabelled(data_dir: Path) -> None:
    data = train.load_split(data_dir, "train", log=None)
    assert data.terms is not None and data.terms.shape == (len(data), 4)
    known = torch.isfinite(data.terms).all(1)
    assert 0 < int(known.sum()) < len(data)
    torch.testing.assert_close(combine_clipped_terms(*data.terms[known].unbind(1))[0], data.labels[known])
    part = data.subset(np.arange(len(data)) % 2 == 0)
    torch.testing.assert_close(part.terms, data.terms[::2], equal_nan=True)


def test_selection_never_uses_reporting_packages(data_dir: Path) -> None:
    chosen = train.selection_split(data_dir, "validation-real:ufoai-music", log=None)
    assert set(chosen.meta["package"]) == {"ufoai-music"}
    for bad in ("validation-real:nexuiz-music", "validation:flare-game", "validation-real", "train:naev-data"):
        with pytest.raises(HaaqiError, match="--selection"):
            train.selection_split(data_dir, bad, log=None)
    data = train.load_split(data_dir, "train", log=None)
    small, large = train.first_items(data, 5), train.first_items(data, 9)
    assert len(small) == 5 and set(small.meta["item_id"]) < set(large.meta["item_id"])
    with pytest.raises(HaaqiError, match="--train-items"):
        train.first_items(data, len(data) + 1)


def test_dev_selection_with_train_items_loads_only_those_and_the_dev_tracks(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fixture's few tracks: hold out the first (always among what is loaded, so the same after loading)
    monkeypatch.setattr(train, "dev_mask", lambda meta: (meta["source"] == meta["source"].min()).to_numpy())
    whole_train, whole_dev = train.load_train_dev(data_dir, log=None)
    assert len(whole_dev) and len(whole_train) > 6
    config = train.TrainConfig(name="m", manifest=str(data_dir), selection="dev", train_items=6, seed=3)
    part_train, part_dev = train.load_train_selection(config, log=None)
    # the same items as drawing from the whole split, and the dev tracks whole
    expected = train.first_items(whole_train, 6, seed=3)
    assert list(part_train.meta["item_id"]) == list(expected.meta["item_id"])
    assert list(part_dev.meta["item_id"]) == list(whole_dev.meta["item_id"])
    torch.testing.assert_close(part_train.wave_batch(range(6)), expected.wave_batch(range(6)))
    loaded = train.load_split(data_dir, "train", log=None, items=6, seed=3, always=train.dev_mask)
    assert len(loaded) == 6 + len(whole_dev) < len(whole_train) + len(whole_dev)


def test_term_head_model_trains_and_reports_sub_term_errors(data_dir: Path, tmp_path: Path) -> None:
    config = train.TrainConfig(name="m", manifest=str(data_dir), run_dir=str(tmp_path / "run"),
                               weights_dir=str(tmp_path / "w"), epochs=1, batch_size=4, lr=3e-3, warmup_steps=1,
                               config=tiny_student_config(), device="cpu", arch="haaqinet-student", terms=True,
                               bands=16, rank_weight=0.5, selection="validation-real:ufoai-music")
    logs: list[str] = []
    info = train.train_teacher(config, log=logs.append)
    assert info["config"]["head"]["terms"] is True and info["config"]["head"]["bands"] == 16
    assert info["training"]["selection"] == "validation-real:ufoai-music"
    assert info["metrics"]["dev"]["n"] == 14  # the ufoai-music items: 1 clip x 7 profiles x 2 variants
    result = train.evaluate_model("m", data_dir, "validation-real", str(tmp_path / "w"), "cpu",
                                  exclude_packages=("ufoai-music",))
    assert result["packages"] == ["nexuiz-music"]
    assert set(result["term_errors"]) <= set(result["by_degradation"]) and result["term_errors"]
    assert "sub-term error" in train.format_evaluation(result)
    from haaqicli.cli import main
    from haaqicli.models.registry import get_info

    cli = CliRunner().invoke(main, ["evaluate", "--model", "m", "--manifest", str(data_dir), "--split", "validation-real",
                                    "--exclude-package", "ufoai-music", "--weights-dir", str(tmp_path / "w"),
                                    "--device", "cpu", "--record"])
    assert cli.exit_code == 0, cli.output
    assert "sub-term error" in cli.output and "package=ufoai-music" not in cli.output
    recorded = get_info("m", tmp_path / "w").metrics
    assert recorded["validation-real without ufoai-music"]["packages"] == ["nexuiz-music"]
    assert "validation-real" not in recorded  # a part's figures never stand for the whole split


def test_ablate_writes_one_table_and_a_learning_curve(data_dir: Path, tmp_path: Path) -> None:
    from haaqicli.cli import main

    out = tmp_path / "ablation"
    config = json.dumps(tiny_student_config())
    result = CliRunner().invoke(main, ["ablate", "--manifest", str(data_dir), "--out", str(out), "--config", config,
                                       "--epochs", "1", "--batch-size", "8", "--warmup-steps", "1", "--device", "cpu",
                                       "--bands", "8", "--learning-curve", "4,8,16", "--curve-row", "terms",
                                       "--select-metric", "lcc", "--release", "distilled"])
    assert result.exit_code == 0, result.output
    table = (out / "ablation.md").read_text()
    for row in ("| baseline |", "| terms |", "| conditioning |", "| ranking |", "| release:distilled |", "| 4 |",
                "| 8 |", "| 16 |"):
        assert row in table
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["config"]["select_metric"] == "lcc" and "by lcc" in table
    terms_items = next(r["items"] for r in saved["rows"] if r["row"] == "terms")
    assert terms_items > 16  # so the curve row, on every item, is the curve's largest point
    assert [p["items"] for p in saved["curve"]] == [4, 8, 16, terms_items]
    assert saved["curve"][-1]["row"] == "terms" and f"| {terms_items} (row terms) |" in table
    assert saved["curve_fit"]["points"] == 4
    weights = json.loads((out / "weights" / "manifest.json").read_text())["models"]
    assert {m["training"]["recipe"]["select_metric"] for m in weights.values()} == {"lcc"}
    # the model card takes the table from `haaqi ablate --out data/results/ablation`
    spec = importlib.util.spec_from_file_location("model_card", Path(__file__).parents[1] / "scripts" / "model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    card.RESULTS = out.parent
    section = "\n".join(card.ablation_section())
    assert "## Ablation and learning curve" in section and "| conditioning |" in section
    assert "--rows" not in section and "--arch" not in section  # the defaults are not spelled out
    # the command the card quotes names every setting that changes the rows
    teacher_rows = {**saved, "config": {**saved["config"], "rows": ["ranking", "pretraining"], "arch": "haaqinet",
                                        "pretrained": "enc.safetensors", "train_items": 500}}
    card.load = lambda name: teacher_rows
    command = "\n".join(card.ablation_section())
    assert "--rows ranking,pretraining --arch haaqinet --pretrained enc.safetensors --train-items 500" in command
    note = card.design_note(weights["ablation-ranking"])
    assert "term heads" in note and "8 auditory bands" in note and "pairwise ranking loss (weight 0.5)" in note
    assert card.design_note(weights["ablation-baseline"]) == ""
    assert "`validation-real:ufoai-music`" in card.selection_text(weights["ablation-baseline"])
    assert " LCC " in card.selection_text(weights["ablation-baseline"])
    assert [r["row"] for r in saved["rows"]] == ["baseline", "terms", "conditioning", "ranking"]
    settings = {r["row"]: r["settings"] for r in saved["rows"]}
    assert settings["baseline"] == {"terms": False, "bands": 0, "rank_weight": 0.0}
    assert settings["ranking"] == {"terms": True, "bands": 8, "rank_weight": 0.5}  # cumulative
    for row in saved["rows"]:
        assert row["report"]["validation-real"]["packages"] == ["nexuiz-music"]  # the selection package is not reported
        assert row["report"]["validation"]["packages"] == ["flare-game"]
        assert row["selection"]["n"] == 14
    assert "term_errors" not in saved["rows"][0]["report"]["validation-real"]  # the baseline has no term heads
    assert saved["rows"][1]["report"]["validation-real"]["term_errors"]  # +terms says which term carries the error
    assert saved["rows"][0]["report"]["validation"]["family_bias"]
    assert weights["ablation-conditioning"]["config"]["head"]["bands"] == 8
    assert weights["curve-4"]["training"]["items"] == 4
    bad = CliRunner().invoke(main, ["ablate", "--manifest", str(data_dir), "--out", str(out), "--rows", "baseline,magic"])
    assert bad.exit_code != 0 and "unknown row(s) magic" in bad.output
    two = CliRunner().invoke(main, ["ablate", "--manifest", str(data_dir), "--out", str(out), "--learning-curve", "4,8"])
    assert two.exit_code != 0 and "at least 3" in two.output


def test_training_input_is_what_haaqi_score_presents(data_dir: Path, tmp_path: Path) -> None:
    """Train as users score: the training row of an item (from the split cache the labeller and
    training share) equals the window `haaqi score --spl L` makes of the processed file, L being the
    item's level carried over to the processed file (`scoring_spl`): same calibration, resampling
    (16 kHz source -> 24 kHz) and windowing (a clip shorter than a window, and a full 6-s window),
    within the cache's int16 step."""
    from haaqicli.audio import InputFile, write_audio
    from haaqicli.engine import prepare_file
    from haaqicli.scoring import ScoreOptions

    data = train.load_split(data_dir, "train", log=None)
    quieter = data.meta.index[data.meta["recipe"].str.contains('"level"')].tolist()
    for i in [0, *quieter[:1]]:  # a level-changing recipe too: its processed keeps its relative level
        item = data.meta.iloc[i].to_dict()
        ref, proc, sr = materialise(item, data_dir.parent.parent / "data" / "corpus")
        assert sr == SR
        trained = data.wave_batch([i])[0].numpy()
        path = write_audio(tmp_path / f"item{i}.wav", proc, sr, subtype="FLOAT")
        spl = scoring_spl(ref, proc, item["spl"])
        prepared = prepare_file(InputFile(path, tmp_path, path.name), ScoreOptions(spl=spl))
        assert prepared.error == "" and prepared.windows.shape == (1, 1, len(trained))  # one (short) window, mono
        scored = prepared.windows[0, 0]
        step = np.max(np.abs(trained)) / 32767
        assert np.max(np.abs(scored - trained)) <= 0.51 * step + 1e-5 * np.max(np.abs(scored))
        exact = model_input(ref, proc, sr, 24000, len(trained), item["spl"])
        np.testing.assert_allclose(scored, exact, atol=1e-5 * np.max(np.abs(exact)))
    assert quieter, "the corpus should hold a level-changing item"
    # a full 6-s window (the manifest's clips are 3 s here): a quieter, darker processed at 44.1 kHz
    ref = _track(6, 330, seed=5)
    ref = np.interp(np.arange(6 * 44100) / 44100, np.arange(len(ref)) / SR, ref).astype(np.float32)
    proc = (0.3 * np.convolve(ref, np.ones(4) / 4, mode="same")).astype(np.float32)
    path = write_audio(tmp_path / "full.wav", proc, 44100, subtype="FLOAT")
    prepared = prepare_file(InputFile(path, tmp_path, path.name), ScoreOptions(spl=scoring_spl(ref, proc, 72.0)))
    exact = model_input(ref, proc, 44100, 24000, 6 * 24000, 72.0)
    assert prepared.windows.shape == (1, 1, 6 * 24000)
    np.testing.assert_allclose(prepared.windows[0, 0], exact, atol=1e-5 * np.max(np.abs(exact)))


def test_term_head_student_distils_the_teachers_sub_terms(data_dir: Path, tmp_path: Path) -> None:
    from conftest import TINY_TEACHER

    from haaqicli.models.registry import get_info

    weights = str(tmp_path / "w")
    common = {"manifest": str(data_dir), "weights_dir": weights, "epochs": 1, "batch_size": 8, "warmup_steps": 1,
              "device": "cpu", "terms": True, "selection": "validation-real:ufoai-music"}
    train.train_teacher(train.TrainConfig(name="teacher", run_dir=str(tmp_path / "t"), config=TINY_TEACHER, **common),
                        log=lambda _: None)
    logs: list[str] = []
    info = train.distill_student(train.TrainConfig(name="student", run_dir=str(tmp_path / "s"), bands=8,
                                                   config=tiny_student_config(), **common), log=logs.append)
    assert info["config"]["head"]["terms"] is True and info["config"]["head"]["bands"] == 8
    assert info["training"]["teacher_sha256"] == get_info("teacher", weights).sha256
    cached = list((data_dir.parent.parent / "data" / "cache" / "teacher-targets").glob("*.pt"))
    assert any(torch.load(path, weights_only=True).get("terms") is not None for path in cached)


def test_checkpoint_selection_metric() -> None:
    assert train.selection_key({"mse": 0.01}, "mse") < train.selection_key({"mse": 0.02}, "mse")
    assert train.selection_key({"lcc": 0.9}, "lcc") < train.selection_key({"lcc": 0.5}, "lcc")  # higher LCC wins
    assert train.selection_key({"lcc": float("nan")}, "lcc") == float("inf")  # undefined never wins
    assert train.selection_key({"mse": float("inf")}, "lcc") == float("inf")  # the initial state
    with pytest.raises(HaaqiError, match="--select-metric"):
        train.selection_key({"mse": 0.1}, "mae")


def test_content_prior_trains_distils_ablates_and_scores(data_dir: Path, tmp_path: Path) -> None:
    """--content-prior musicnn end to end, with a tiny converted musicnn: haaqi train (teacher), haaqi
    distill (student), haaqi ablate's musicnn row; the exported models load back with their prior and
    score a file through `haaqi score` (HAAQI_WEIGHTS); a missing or altered prior file is refused."""
    from conftest import TINY_TEACHER
    from test_models_musicnn import TINY, _convert_script, tiny_tf_tensors
    from tfbundle import write_tf_checkpoint

    from haaqicli.cli import main
    from haaqicli.util.hashing import content_hash

    write_tf_checkpoint(tmp_path / "ck", tiny_tf_tensors())
    prior = tmp_path / "tiny-musicnn.safetensors"
    assert _convert_script().main([str(tmp_path / "ck"), "--out", str(prior)]) == 0
    sha, weights = content_hash(prior), tmp_path / "w"
    common = ["--manifest", str(data_dir), "--weights-dir", str(weights), "--epochs", "1", "--batch-size", "8",
              "--device", "cpu", "--selection", "validation-real:ufoai-music"]
    with_prior = ["--content-prior", "musicnn", "--content-prior-weights", str(prior), "--content-prior-sha256", sha]
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--name", "t", "--run-dir", str(tmp_path / "t"), "--config",
                                  json.dumps(TINY_TEACHER), *common, *with_prior])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["distill", "--name", "s", "--teacher", "t", "--run-dir", str(tmp_path / "s"),
                                  "--config", json.dumps(tiny_student_config()), *common, *with_prior])
    assert result.exit_code == 0, result.output
    models = json.loads((weights / "manifest.json").read_text())["models"]
    for name in ("t", "s"):
        assert models[name]["config"]["head"]["content_prior"] == "musicnn"
        assert models[name]["config"]["head"]["prior"]["n_mels"] == TINY.n_mels
        assert models[name]["training"]["content_prior"]["sha256"] == sha
    music = tmp_path / "music.wav"
    sf.write(music, _track(7, 300, seed=3), SR)
    for name in ("t", "s"):
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(main, ["score", str(music), "--model", name, "--out", str(out), "--quiet"],
                               env={"HAAQI_WEIGHTS": str(weights)})
        assert result.exit_code == 0, result.output
        table = pd.read_csv(out)
        assert table["status"].eq("ok").all() and table["score"].between(0, 1).all()
    # a missing file and a file that is not the one named are refused in one line
    missing = runner.invoke(main, ["train", "--name", "x", "--run-dir", str(tmp_path / "x"), "--config",
                                   json.dumps(TINY_TEACHER), *common, "--content-prior", "musicnn",
                                   "--content-prior-weights", str(tmp_path / "none.safetensors")])
    assert missing.exit_code != 0 and "missing" in missing.output and "Traceback" not in missing.output
    altered = runner.invoke(main, ["train", "--name", "x", "--run-dir", str(tmp_path / "x"), "--config",
                                   json.dumps(TINY_TEACHER), *common, *with_prior[:-1], "0" * 64])
    assert altered.exit_code != 0 and "sha256 mismatch" in altered.output
    out = tmp_path / "ablation"
    result = runner.invoke(main, ["ablate", "--manifest", str(data_dir), "--out", str(out), "--rows", "musicnn",
                                  "--config", json.dumps(tiny_student_config()), "--epochs", "1", "--batch-size", "8",
                                  "--warmup-steps", "1", "--device", "cpu", "--content-prior-weights", str(prior),
                                  "--content-prior-sha256", sha])
    assert result.exit_code == 0, result.output
    assert "| musicnn |" in (out / "ablation.md").read_text()
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["rows"][0]["settings"]["content_prior"] == "musicnn"


def test_ablate_init_warm_starts_every_row_from_one_model(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from haaqicli.cli import main

    monkeypatch.chdir(Path(__file__).parents[1])  # the checkout, whose weights/ a registered --init names

    config = json.dumps(tiny_student_config())
    common = ["--manifest", str(data_dir), "--config", config, "--epochs", "1", "--batch-size", "8",
              "--warmup-steps", "1", "--device", "cpu", "--bands", "8"]
    first = CliRunner().invoke(main, ["ablate", "--out", str(tmp_path / "a"), "--rows", "baseline", *common])
    assert first.exit_code == 0, first.output
    start = tmp_path / "a" / "weights" / "ablation-baseline.safetensors"
    second = CliRunner().invoke(main, ["ablate", "--out", str(tmp_path / "b"), "--rows", "baseline,terms",
                                       "--init", str(start), *common])
    assert second.exit_code == 0, second.output
    copied = [line for line in second.output.splitlines() if line.startswith(f"warm start from {start}")]
    assert len(copied) == 2  # one warm start per row
    total = int(copied[0].split(" of ")[1].split()[0])
    assert copied[0].endswith(f"{total} of {total} tensors copied")  # the same design: every tensor
    recipe = json.loads((tmp_path / "b" / "weights" / "manifest.json").read_text())["models"]["ablation-terms"]
    assert recipe["training"]["recipe"]["init_weights_dir"] == "weights"  # portable: no checkout path
    missing = CliRunner().invoke(main, ["ablate", "--out", str(tmp_path / "c"), "--rows", "baseline",
                                        "--init", str(tmp_path / "none.safetensors"), *common])
    assert missing.exit_code != 0 and "--init" in missing.output and "Traceback" not in missing.output


def test_correct_fits_a_corrector_onto_a_frozen_model_and_exports_one_model(data_dir: Path, tmp_path: Path) -> None:
    from haaqicli.cli import main
    from haaqicli.models.registry import load_model

    config = train.TrainConfig(name="base", manifest=str(data_dir), run_dir=str(tmp_path / "run"),
                               weights_dir=str(tmp_path / "w"), epochs=1, batch_size=4, lr=3e-3, warmup_steps=1,
                               config=tiny_student_config(), device="cpu", arch="haaqinet-student",
                               selection="validation-real:ufoai-music")
    train.train_teacher(config, log=lambda _: None)
    cli = CliRunner().invoke(main, ["correct", "--model", "base", "--manifest", str(data_dir), "--name", "fixed",
                                    "--source-dir", str(tmp_path / "w"), "--weights-dir", str(tmp_path / "out"),
                                    "--hidden", "8", "--epochs", "30", "--batch-size", "16", "--lr", "1e-2"])
    assert cli.exit_code == 0, cli.output
    model, info = load_model("fixed", weights_dir=tmp_path / "out")
    base, base_info = load_model("base", weights_dir=tmp_path / "w")
    record = info.training["corrector"]
    assert info.config["head"]["signal_corrector"] == 8
    assert record["base"] == {"name": "base", "sha256": base_info.sha256, "promoted_from": None}  # trained here
    assert record["recipe"]["selection"] == "validation-real:ufoai-music"
    # chosen on the selection items: never worse there than the network alone
    assert record["selection_after"]["lcc"] >= record["selection_before"]["lcc"]
    assert record["selection_after"]["n"] == 14
    # the network is the base model's, untouched
    for key, value in base.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert torch.count_nonzero(model.head.corrector.feature_std != 1) > 0  # statistics of the training items
    bad = CliRunner().invoke(main, ["correct", "--model", "base", "--manifest", str(data_dir), "--source-dir",
                                    str(tmp_path / "w"), "--selection", "validation-real:nexuiz-music"])
    assert bad.exit_code != 0 and "--selection" in bad.output and "Traceback" not in bad.output


def test_pretrain_learns_the_damage_pretext_and_a_teacher_starts_from_it(data_dir: Path, tmp_path: Path) -> None:
    """`haaqi pretrain` trains the teacher's encoder to name the processes of each training clip (no
    HAAQI labels), writes only the encoder's tensors, and `haaqi train --init` starts a teacher from them."""
    from conftest import TINY_TEACHER
    from safetensors.torch import load_file

    from haaqicli.cli import main
    from haaqicli.training.pretrain import DAMAGE, damage_targets, recipe_damage
    from haaqicli.util.hashing import content_hash

    assert recipe_damage('{"type": "identity"}') == set()
    nested = {"type": "cascade", "steps": [{"type": "codec", "codec": "opus", "bitrate": 12},
                                           {"type": "cascade", "steps": [{"type": "noise"}, {"type": "reverb"}]}]}
    assert recipe_damage(nested) == {"codec", "noise", "reverb"}
    targets = damage_targets([nested, {"type": "identity"}])
    assert targets.shape == (2, len(DAMAGE)) and targets[0].sum() == 3 and targets[1].sum() == 0

    out = tmp_path / "pretrain" / "encoder.safetensors"
    common = ["--manifest", str(data_dir), "--config", json.dumps(TINY_TEACHER), "--batch-size", "8",
              "--device", "cpu", "--seed", "0"]
    result = CliRunner().invoke(main, ["pretrain", *common, "--epochs", "6", "--lr", "3e-3", "--warmup-steps", "1",
                                       "--run-dir", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    epochs = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(epochs) == 6 and epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]  # the pretext is learned
    assert "held-out pretext" in result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == content_hash(out) and record["processes"] == list(DAMAGE)
    tensors = load_file(str(out))
    assert tensors and all(name.startswith("encoder.") for name in tensors)  # the pretext probe is not kept
    trained = CliRunner().invoke(main, ["train", *common, "--epochs", "1", "--init", str(out),
                                        "--run-dir", str(tmp_path / "t"), "--weights-dir", str(tmp_path / "w")])
    assert trained.exit_code == 0, trained.output
    assert f"warm start from {out}: {len(tensors)} of " in trained.output
    # another run's checkpoints are never mistaken for this one's; the output must be .safetensors
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "best.pt").write_bytes(b"")
    again = CliRunner().invoke(main, ["pretrain", *common, "--run-dir", str(tmp_path / "other"), "--out", str(out)])
    assert again.exit_code != 0 and "best.pt" in again.output and "Traceback" not in again.output
    wrong = CliRunner().invoke(main, ["pretrain", *common, "--out", str(tmp_path / "e.pt")])
    assert wrong.exit_code != 0 and ".safetensors" in wrong.output
    # --train-items: only those items are loaded (and regenerated), the held-out tracks' clips among them
    few = CliRunner().invoke(main, ["pretrain", *common, "--epochs", "1", "--train-items", "8",
                                    "--run-dir", str(tmp_path / "few"), "--out", str(tmp_path / "few.safetensors")])
    assert few.exit_code == 0, few.output
    counts = re.search(r"pretext: (\d+) training clips, (\d+) held-out clips", few.output)
    assert counts and int(counts[1]) + int(counts[2]) == 8 and int(counts[1]) > 0


def test_the_pretraining_row_starts_from_the_pretrained_encoder(tmp_path: Path) -> None:
    from haaqicli.training.ablation import AblationConfig, _train_config, row_settings

    settings = row_settings(["baseline", "ranking", "pretraining", "musicnn"], pretrained="enc.safetensors")
    assert "init" not in settings["baseline"] and "init" not in settings["ranking"]
    assert settings["pretraining"]["init"] == "enc.safetensors" and settings["pretraining"]["rank_weight"] == 0.5
    assert settings["musicnn"]["init"] == "enc.safetensors"  # cumulative, as every row
    config = AblationConfig(manifest="m.parquet", out_dir=str(tmp_path), arch="haaqinet", init="teacher",
                            pretrained="enc.safetensors")
    assert _train_config(config, "p", settings["pretraining"]).init == "enc.safetensors"
    assert _train_config(config, "b", settings["baseline"]).init == "teacher"  # the rows before it: --init's
    assert settings["pretraining"]["init"] == "enc.safetensors"  # the settings are not consumed
    # --train-items limits every row; a learning-curve point trains on its own count
    limited = AblationConfig(manifest="m.parquet", out_dir=str(tmp_path), train_items=500)
    assert _train_config(limited, "r", settings["ranking"]).train_items == 500
    assert _train_config(limited, "c", settings["ranking"], train_items=80).train_items == 80
    assert _train_config(config, "r", settings["ranking"]).train_items is None
    with pytest.raises(HaaqiError, match="--pretrained"):
        row_settings(["pretraining"])


def test_pretext_figures_rank_each_process() -> None:
    from haaqicli.training.pretrain import DAMAGE, pretext_figures, ranking_auc

    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.8])
    # pairs (positive, negative): 4 won, 1 lost, 1 tied -> 4.5 / 6
    assert ranking_auc(scores, torch.tensor([False, True, False, True, False])) == pytest.approx(0.75)
    assert ranking_auc(scores, torch.ones(5, dtype=torch.bool)) is None
    targets = (torch.arange(40)[:, None] % (torch.arange(len(DAMAGE)) + 2) == 0).float()
    rates = targets.mean(0)
    perfect = pretext_figures(20 * (targets - 0.5), targets, rates)
    assert perfect["bce"] < 1e-3 < perfect["base_rate_bce"]
    assert all(p["auc"] == 1.0 for p in perfect["processes"].values())
    blind = pretext_figures(torch.logit(rates).expand_as(targets), targets, rates)
    assert blind["bce"] == pytest.approx(blind["base_rate_bce"]) and blind["processes"]["clipping"]["auc"] == 0.5


def test_clean_weight_pulls_the_corrector_toward_clean_items() -> None:
    from haaqicli.models.signal import N_SIGNAL_FEATURES, ScoreCorrector
    from haaqicli.training.corrector import CorrectorConfig, Inputs, train_corrector

    generator = torch.Generator().manual_seed(0)
    n = 400
    clean = torch.arange(n) < n // 10
    labels = torch.where(clean, 0.95, 0.1 + 0.8 * torch.rand(n, generator=generator))
    items = Inputs(logit=torch.zeros(n), signal=torch.randn(n, N_SIGNAL_FEATURES, generator=generator),
                   audiograms=torch.zeros(n, 8), labels=labels, clean=clean)
    only_clean = Inputs(items.logit[clean], items.signal[clean], items.audiograms[clean], labels[clean], clean[clean])

    def clean_mean(weight: float) -> float:
        torch.manual_seed(0)
        corrector = ScoreCorrector(hidden=8)
        config = CorrectorConfig(clean_weight=weight, epochs=20, batch_size=64, lr=1e-2, rank_weight=0.0,
                                 select_metric="mse")
        train_corrector(corrector, items, only_clean, config, log=lambda _: None)
        with torch.no_grad():
            logit = only_clean.logit + corrector.eval()(only_clean.signal, only_clean.audiograms, only_clean.logit)
        return float(torch.sigmoid(logit).mean())

    # weighted 9x, the clean items hold half the loss (1/10 of the items): their scores rise toward 0.95
    assert clean_mean(9.0) > clean_mean(1.0) + 0.05
