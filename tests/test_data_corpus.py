"""Corpus manifest, package guard/split, bit-exact regeneration and resumable labelling on a tiny
synthetic corpus (written by the test; the real corpus is never read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from haaqicli.data import labels as lab
from haaqicli.data.corpus import (
    BuildConfig,
    build_manifest,
    is_loud_enough,
    iter_items,
    materialise,
    read_manifest,
    scan_corpus,
    write_manifest,
)
from haaqicli.data.export import load_split_arrays, model_input
from haaqicli.data.packages import (
    RESERVED_PATTERNS,
    TRAIN_PACKAGES,
    VALIDATION_PACKAGES,
    ReservedPackageError,
    guard_package,
    guard_path,
    split_of,
)

SR = 16000
NO_CODEC = {"identity": 1.0, "lowpass": 1.0, "noise": 1.0, "nalr": 1.0, "level": 1.0, "cascade": 0.5}


def _tone(seconds: float, freq: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.2 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2.5 * freq * t) + 0.01 * rng.standard_normal(len(t))
    return x * (1 + 0.3 * np.sin(2 * np.pi * 2 * t))


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """Four packages (one held out for validation), a silent track, a short SFX and a junk file."""
    root = tmp_path / "corpus"
    specs = [("packages", "naev-data", 2), ("packages", "supertux-data", 1),
             ("rendered", "simutrans-data", 1), ("packages", VALIDATION_PACKAGES[0], 1)]
    for i, (area, pkg, n) in enumerate(specs):
        folder = root / area / pkg / "music"
        folder.mkdir(parents=True)
        for j in range(n):
            stereo = np.stack([_tone(25, 220 * (i + 1) + 50 * j, seed=j), _tone(25, 330, seed=j + 7)], axis=1)
            sf.write(folder / f"track{j}.{'flac' if area == 'rendered' else 'ogg'}", stereo * 0.8, SR)
    sf.write(root / "packages" / "naev-data" / "music" / "silent.wav", np.zeros(25 * SR), SR)
    sf.write(root / "packages" / "naev-data" / "music" / "sfx.wav", _tone(2, 1000), SR)
    (root / "packages" / "naev-data" / "music" / "notes.ogg").write_bytes(b"not audio")
    return root


def _build(corpus: Path, items: int = 24) -> pd.DataFrame:
    config = BuildConfig(items=items, variants_per_clip=2, clips_per_track=2, max_package_share=0.6, seed=1,
                         recipe_weights=NO_CODEC)
    return build_manifest(corpus, config)


def test_more_variants_per_clip_keep_the_items_and_ids_of_the_smaller_manifest(corpus: Path) -> None:
    """`make dataset` grows the manifest by variants of the same clips: labels keyed by id stay valid."""
    def build(items: int, variants: int) -> pd.DataFrame:
        return build_manifest(corpus, BuildConfig(items=items, variants_per_clip=variants, clips_per_track=2,
                                                  max_package_share=0.6, seed=1, recipe_weights=NO_CODEC))

    small, large = build(8, 2), build(12, 3)
    assert len(small) == 8 and len(large) == 12
    assert set(small["item_id"]) < set(large["item_id"])
    assert set(small["clip_id"]) == set(large["clip_id"])
    kept = large.set_index("item_id").loc[small["item_id"], ["recipe", "offset_s", "split"]].reset_index(drop=True)
    assert kept.equals(small[["recipe", "offset_s", "split"]].reset_index(drop=True))


def test_reserved_guard_refuses_evaluation_packages(tmp_path: Path) -> None:
    for name in ["widelands-data", "openclonk-data", "fretsonfire-songs-sectoid", "hyperrogue-music", "0ad-data",
                 "musescore-general-soundfont", "music21"]:
        with pytest.raises(ReservedPackageError):
            guard_package(name)
        with pytest.raises(ReservedPackageError):
            guard_path(f"packages/{name}/usr/share/x.ogg")
    with pytest.raises(ReservedPackageError):
        guard_package("some-unknown-package")
    assert not any(p.startswith(t) for p in RESERVED_PATTERNS for t in TRAIN_PACKAGES)
    # A reserved folder inside the corpus stops the scan.
    bad = tmp_path / "c" / "packages" / "widelands-data"
    bad.mkdir(parents=True)
    sf.write(bad / "song.ogg", _tone(25, 440), SR)
    with pytest.raises(ReservedPackageError):
        scan_corpus(tmp_path / "c")


def test_split_is_by_package() -> None:
    splits = {pkg: split_of(pkg) for pkg in TRAIN_PACKAGES}
    assert sorted(p for p, s in splits.items() if s == "validation") == sorted(VALIDATION_PACKAGES)
    assert set(VALIDATION_PACKAGES) <= set(TRAIN_PACKAGES)


def test_loudness_gate() -> None:
    x = _tone(6, 440)
    assert is_loud_enough(x, SR)
    assert not is_loud_enough(x * 1e-4, SR)  # near silent
    gappy = x.copy()
    gappy[: 3 * SR] = 0.0
    assert not is_loud_enough(gappy, SR)  # half silence


def test_manifest_round_trip_and_bit_exact_regeneration(corpus: Path, tmp_path: Path) -> None:
    tracks = scan_corpus(corpus)
    assert sorted({t.package for t in tracks}) == sorted(["naev-data", "supertux-data", "simutrans-data",
                                                          VALIDATION_PACKAGES[0]])
    assert not any("sfx" in t.source or "notes" in t.source for t in tracks)  # too short / not audio
    df = _build(corpus)
    assert len(df) == 24
    assert "silent.wav" not in set(Path(s).name for s in df["source"])  # silent clips are skipped
    # No package in both splits.
    per_pkg = df.groupby("package")["split"].nunique()
    assert (per_pkg == 1).all()
    assert set(df.loc[df["package"] == VALIDATION_PACKAGES[0], "split"]) == {"validation"}
    assert df["item_id"].is_unique
    # Deterministic build.
    pd.testing.assert_frame_equal(df, _build(corpus))
    path = tmp_path / "manifest.parquet"
    write_manifest(df, path)
    back = read_manifest(path)
    assert back["audiogram"].map(len).eq(8).all()
    assert back["label"].isna().all()
    for item in list(iter_items(back))[:6]:
        ref1, proc1, sr1 = materialise(item, corpus, verify_sha=True)
        ref2, proc2, sr2 = materialise(item, corpus)
        assert sr1 == sr2 == SR and ref1.dtype == np.float32
        assert len(ref1) == int(6 * SR) and proc1.shape == ref1.shape
        assert np.array_equal(ref1, ref2) and np.array_equal(proc1, proc2)
    assert len(list(iter_items(back, split="validation"))) == int((back["split"] == "validation").sum())


def _cheap_haaqi(processed, reference, psr, rsr, audiogram, equalisation=1, level1=65.0):  # type: ignore[no-untyped-def]
    """Plumbing stand-in for the labelling tests: a correlation, not HAAQI."""
    return float(np.clip(np.corrcoef(processed, reference)[0, 1], 0.0, 1.0))


def test_labelling_resumes_and_merges(corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(_build(corpus, items=8), path)
    calls: list[str] = []
    first = lab.label_manifest(path, corpus, workers=1, flush_every=2, limit=3, haaqi_fn=_cheap_haaqi,
                               progress=False, on_result=lambda r: calls.append(r["item_id"]),
                               cache_dir=tmp_path / "cache")
    assert first["labelled"] == 3 and first["errors"] == 0
    # the labeller cached exactly the model inputs that load_split_arrays would build
    from haaqicli.data.export import item_cache_path, model_input

    for item_id in calls:
        row = read_manifest(path).set_index("item_id").loc[item_id].to_dict() | {"item_id": item_id}
        np.testing.assert_array_equal(np.load(item_cache_path(tmp_path / "cache", item_id)),
                                      model_input(*materialise(row, corpus)))
    assert len(list(lab.shard_dir(path).glob("shard-*.parquet"))) == 2  # flushed at 2, then the rest
    df = read_manifest(path)
    assert np.isfinite(df["label"]).sum() == 3 and (df["label_seconds"].dropna() > 0).all()
    # Resume: only the 5 others are labelled; none twice.
    second = lab.label_manifest(path, corpus, workers=1, flush_every=2, haaqi_fn=_cheap_haaqi, progress=False,
                                on_result=lambda r: calls.append(r["item_id"]))
    assert second["pending_before"] == 5 and len(calls) == len(set(calls)) == 8
    df = read_manifest(path)
    assert np.isfinite(df["label"]).all()
    third = lab.label_manifest(path, corpus, haaqi_fn=_cheap_haaqi, progress=False)
    assert third["pending_before"] == 0
    summary = lab.stats(df)
    assert summary["labelled"] == 8 and sum(summary["label_histogram"]["counts"]) == 8
    # Shards survive a manifest that lost its merge (e.g. killed before merge_shards).
    df2 = df.assign(label=np.nan)
    write_manifest(df2, path)
    assert lab.pending_items(read_manifest(path), lab.read_shards(lab.shard_dir(path))).empty
    assert np.isfinite(lab.merge_shards(path)["label"]).all()


def test_real_haaqi_label_clean_beats_noisy(corpus: Path) -> None:
    df = _build(corpus, items=8)
    item = df.iloc[0].to_dict()
    item["recipe"] = '{"type":"identity"}'
    item["audiogram"] = [0.0] * 8
    ref, proc, sr = materialise(item, corpus)
    clean = lab.label_pair(ref[: 2 * sr], proc[: 2 * sr], sr, item["audiogram"])
    noisy = lab.label_pair(ref[: 2 * sr], proc[: 2 * sr] + 0.05 * np.random.default_rng(0).standard_normal(2 * sr),
                           sr, item["audiogram"])
    # HAAQI of identical sparse synthetic tones is below 1 (pyclarity agrees); noise pulls it far down.
    assert clean > 0.8 and noisy < clean - 0.3


@pytest.mark.oracle
def test_label_convention_matches_pyclarity(corpus: Path) -> None:
    clarity = pytest.importorskip("clarity.evaluator.haaqi")
    from clarity.utils.audiogram import Audiogram

    from haaqicli.constants import AUDIOGRAM_FREQUENCIES

    df = _build(corpus, items=8)
    item = df.iloc[0].to_dict()
    item["recipe"] = '{"type":"lowpass","cutoff_hz":3500.0}'
    ref, proc, sr = materialise(item, corpus)
    ref, proc = ref[: sr], proc[: sr]
    ours = lab.label_pair(ref, proc, sr, item["audiogram"])
    level1 = 65 - 20 * np.log10(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    gram = Audiogram(levels=np.asarray(item["audiogram"]), frequencies=np.asarray(AUDIOGRAM_FREQUENCIES))
    np.random.seed(0)
    theirs = clarity.compute_haaqi(proc, ref, sr, sr, gram, equalisation=1, level1=level1)
    # Labels use the fast threshold-noise mode: within 2.1e-4 of pyclarity over the 52 oracle cases.
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_load_split_arrays_level_convention_and_cache(corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    df = _build(corpus, items=8)
    df["label"] = np.linspace(0.1, 0.9, len(df))
    write_manifest(df, path)
    cache = tmp_path / "cache"
    waves, grams, labels, meta = load_split_arrays(path, "train", sample_rate=8000, corpus_dir=corpus, cache_dir=cache)
    n = int((df["split"] == "train").sum())
    assert waves.shape == (n, 6 * 8000) and waves.dtype == np.float32
    assert grams.shape == (n, 8) and labels.shape == (n,)
    identity = [i for i, r in enumerate(meta["recipe"]) if r == '{"type":"identity"}']
    for i in identity:  # clean items sit at REFERENCE_RMS
        assert np.sqrt(np.mean(waves[i].astype(np.float64) ** 2)) == pytest.approx(0.1, rel=0.02)
    again, *_ = load_split_arrays(path, "train", sample_rate=8000, corpus_dir=corpus, cache_dir=cache)
    assert np.array_equal(np.asarray(again), waves) and len(list(cache.glob("items/*/*.npy"))) == len(waves)
    # one memory-mapped file per split and item set; a relabelled split replaces the older file
    assert isinstance(again, np.memmap) and len(list(cache.glob("splits/train-8000-*.npy"))) == 1
    df.loc[df.index[df["split"] == "train"][0], "label"] = np.nan
    write_manifest(df, path)
    fewer, *_ = load_split_arrays(path, "train", sample_rate=8000, corpus_dir=corpus, cache_dir=cache)
    assert len(fewer) == n - 1 and len(list(cache.glob("splits/train-8000-*.npy"))) == 1
    x = model_input(np.ones(100) * 0.5, np.ones(100) * 0.25, 8000, 8000)
    assert np.allclose(x, 0.05)


def test_cli_build_stats_and_guard(corpus: Path, tmp_path: Path) -> None:
    from haaqicli.cli import main

    runner = CliRunner()
    manifest = tmp_path / "cli.parquet"
    result = runner.invoke(main, ["dataset", "build", "--corpus", str(corpus), "--manifest", str(manifest),
                                  "--items", "12", "--variants", "2", "--clips-per-track", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(manifest)) == 12
    result = runner.invoke(main, ["dataset", "stats", "--manifest", str(manifest), "--json"])
    assert result.exit_code == 0 and '"items": 12' in result.output
    result = runner.invoke(main, ["dataset", "build", "--corpus", str(corpus), "--package", "openclonk-data"])
    assert result.exit_code == 2 and "reserved" in result.output and "Traceback" not in result.output


def test_balance_by_label_caps_each_bin() -> None:
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.uniform(0.0, 0.1, 50), rng.uniform(0.5, 0.6, 5), [np.nan] * 3])
    df = pd.DataFrame({"item_id": [str(i) for i in range(len(labels))], "label": labels})
    out = lab.balance_by_label(df, per_bin=10)
    assert len(out) == 15 and out["label"].notna().all()
    assert (out["label"] < 0.1).sum() == 10


def test_batched_labels_equal_process_labels_and_isolate_bad_items(corpus: Path, tmp_path: Path) -> None:
    """The GPU labelling path (batched torch engine, run here on the CPU) gives the numba engine's
    labels, and a broken item becomes an error row without costing the others their labels."""
    config = BuildConfig(items=8, variants_per_clip=2, clips_per_track=2, max_package_share=0.6, seed=1,
                         recipe_weights=NO_CODEC, clip_seconds=1.0)
    items = build_manifest(corpus, config).iloc[:2].to_dict(orient="records")
    broken = dict(items[0], item_id="broken", source="packages/naev-data/music/missing.ogg")
    rows = list(lab.label_items_batched([items[0], broken, items[1]], corpus, "cpu", batch_size=3))
    assert [r["item_id"] for r in rows] == [items[0]["item_id"], "broken", items[1]["item_id"]]
    assert rows[1]["error"] and np.isnan(rows[1]["label"])
    for row, item in zip([rows[0], rows[2]], items, strict=True):
        expected = lab.label_item(item, corpus)
        assert not row["error"] and row["label"] == pytest.approx(expected["label"], abs=1e-6)
        assert row["label_seconds"] > 0
