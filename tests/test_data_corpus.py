"""Corpus manifest, package guard/split, bit-exact regeneration and resumable labelling on a tiny
synthetic corpus (written by the test; the real corpus is never read)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from haaqicli.data import labels as lab
from haaqicli.data.arrays import load_split_arrays
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
from haaqicli.data.export import model_input
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
            sf.write(folder / f"track{j}.flac", stereo * 0.8, SR)
    sf.write(root / "packages" / "naev-data" / "music" / "silent.wav", np.zeros(25 * SR), SR)
    sf.write(root / "packages" / "naev-data" / "music" / "sfx.wav", _tone(2, 1000), SR)
    (root / "packages" / "naev-data" / "music" / "notes.ogg").write_bytes(b"not audio")
    return root


def _config(items: int = 24, **kwargs) -> BuildConfig:  # type: ignore[no-untyped-def]
    """One validation clip per track, clean + 1 degradation for each of the 7 profiles (14 items)."""
    return BuildConfig(**{"items": items, "variants_per_clip": 2, "clips_per_track": 2, "max_package_share": 0.6,
                          "seed": 1, "recipe_weights": NO_CODEC, "validation_variants": 2,
                          "validation_clips_per_track": 1, **kwargs})


def _build(corpus: Path, items: int = 24, **kwargs) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return build_manifest(corpus, _config(items, **kwargs))


def test_more_variants_per_clip_keep_the_items_and_ids_of_the_smaller_manifest(corpus: Path) -> None:
    """`make dataset` grows the manifest by variants of the same clips: labels keyed by id stay valid."""
    def build(items: int, variants: int) -> pd.DataFrame:
        return build_manifest(corpus, BuildConfig(items=items, variants_per_clip=variants, clips_per_track=2,
                                                  max_package_share=0.6, seed=1, recipe_weights=NO_CODEC,
                                                  packages=["naev-data", "supertux-data", "simutrans-data"]))

    small, large = build(8, 2), build(12, 3)
    assert len(small) == 8 and len(large) == 12
    assert set(small["item_id"]) < set(large["item_id"])
    assert set(small["clip_id"]) == set(large["clip_id"])
    kept = large.set_index("item_id").loc[small["item_id"], ["recipe", "offset_s", "split"]].reset_index(drop=True)
    assert kept.equals(small[["recipe", "offset_s", "split"]].reset_index(drop=True))


def test_band_limited_items_come_on_top_and_their_references_end_at_the_cutoff(corpus: Path) -> None:
    """`--band-items` adds training items whose reference is band-limited, leaving every other item as it was."""
    plain, banded = _build(corpus), _build(corpus, band_items=9)
    assert len(banded) == len(plain) + 9
    assert set(plain["item_id"]) < set(banded["item_id"])
    extra = banded[~banded["item_id"].isin(plain["item_id"])]
    assert (extra["split"] == "train").all() and extra["augmentation"].str.contains("band").all()
    assert not plain["augmentation"].str.contains("band").any()
    pd.testing.assert_frame_equal(extra.reset_index(drop=True),
                                  _build(corpus, band_items=9)[lambda d: ~d["item_id"].isin(plain["item_id"])]
                                  .reset_index(drop=True))
    # A sixth of the band-limited items or more are clean (a third drawn): the clean narrow release.
    assert (extra["degradation"] == "identity").sum() >= 1
    from haaqicli.data.corpus import json_field, read_reference

    for item in extra.head(3).to_dict(orient="records"):
        band = json_field(item["augment"])["band"]
        reference, sr = read_reference(item, corpus)
        source = read_reference({**item, "augment": json.dumps({k: v for k, v in json_field(item["augment"]).items()
                                                                 if k != "band"})}, corpus)[0]
        freqs = np.fft.rfftfreq(len(reference), 1 / sr)
        above = freqs > min(1.5 * band["cutoff_hz"], 0.49 * sr)
        spectrum, source_spectrum = np.abs(np.fft.rfft(reference)), np.abs(np.fft.rfft(source))
        if source_spectrum[above].sum() > 0:  # where the source has content there, the band removes it
            assert spectrum[above].sum() < 0.01 * source_spectrum[above].sum()
        below = freqs < 0.5 * band["cutoff_hz"]
        assert np.allclose(spectrum[below].sum(), source_spectrum[below].sum(), rtol=0.05)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="coded band-limited references need ffmpeg")
def test_coded_band_items_come_on_top_and_their_references_went_through_the_encoder(corpus: Path) -> None:
    """`--coded-band-items` adds training items whose reference went through a real low-bitrate encoder
    at a low sample rate: every other item, the Butterworth band-limited ones included, stays as it was."""
    from haaqicli.data.augment import CODED_BAND_CODECS
    from haaqicli.data.corpus import json_field, read_reference

    banded, coded = _build(corpus, band_items=4), _build(corpus, band_items=4, coded_band_items=6)
    assert len(coded) == len(banded) + 6 and set(banded["item_id"]) < set(coded["item_id"])
    extra = coded[~coded["item_id"].isin(banded["item_id"])]
    bands = [json_field(a)["band"] for a in extra["augment"]]
    assert all(band["codec"] in CODED_BAND_CODECS and band["rate_hz"] <= 24000 for band in bands)
    item = extra.iloc[0].to_dict()
    reference, sr = read_reference(item, corpus)
    source = read_reference({**item, "augment": json.dumps({k: v for k, v in json_field(item["augment"]).items()
                                                             if k != "band"})}, corpus)[0]
    freqs = np.fft.rfftfreq(len(reference), 1 / sr)
    spectrum, source_spectrum = np.abs(np.fft.rfft(reference)), np.abs(np.fft.rfft(source))
    # the music below the band edge survives the encoder, and the encoder did change the reference
    below = freqs < 2000
    assert np.allclose(spectrum[below].sum(), source_spectrum[below].sum(), rtol=0.2)
    assert not np.allclose(reference, source, atol=1e-4)
    assert np.corrcoef(reference, source)[0, 1] > 0.9


def test_reserved_guard_refuses_evaluation_packages(tmp_path: Path) -> None:
    for name in ["widelands-data", "openclonk-data", "fretsonfire-songs-sectoid", "hyperrogue-music", "0ad-data"]:
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
    assert len(df) == 24 and (df["split"] == "validation").sum() == 14
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
    for item in [*list(iter_items(back))[:3], *list(iter_items(back, split="train"))[:6]]:
        ref1, proc1, sr1 = materialise(item, corpus, verify_sha=True)
        ref2, proc2, sr2 = materialise(item, corpus)
        assert sr1 == sr2 == SR and ref1.dtype == np.float32
        assert len(ref1) == int(6 * SR) and proc1.shape == ref1.shape
        assert np.array_equal(ref1, ref2) and np.array_equal(proc1, proc2)
    assert len(list(iter_items(back, split="validation"))) == int((back["split"] == "validation").sum())


def _cheap_haaqi(processed, reference, psr, rsr, audiogram, equalisation=1, level1=65.0):  # type: ignore[no-untyped-def]
    """Plumbing stand-in for the labelling tests: a correlation, not HAAQI."""
    return float(np.clip(np.corrcoef(processed, reference)[0, 1], 0.0, 1.0))


def test_labelling_resumes_from_append_only_shards(corpus: Path, tmp_path: Path) -> None:
    from haaqicli.data.export import SplitCache, item_input

    path = tmp_path / "m.parquet"
    write_manifest(_build(corpus, items=22), path, compact=True)
    frozen = path.read_bytes()
    calls: list[str] = []
    first = lab.label_manifest(path, corpus, workers=1, flush_every=1, limit=3, haaqi_fn=_cheap_haaqi,
                               progress=False, on_result=lambda r: calls.append(r["item_id"]),
                               cache_dir=tmp_path / "cache", shard_size=2)
    assert first["labelled"] == 3 and first["errors"] == 0
    # validation first: the first items labelled are validation items
    manifest = read_manifest(path).set_index("item_id")
    assert set(manifest.loc[calls, "split"]) == {"validation"}
    # the labeller stored exactly the model inputs training would regenerate (int16, at the item's level)
    store = SplitCache.of_manifest(tmp_path / "cache", read_manifest(path), "validation")
    waves = store.waves(calls)
    for k, item_id in enumerate(calls):
        row, scale = item_input(manifest.loc[item_id].to_dict() | {"item_id": item_id}, corpus, 24000, store.length)
        np.testing.assert_allclose(waves[[k]][0], row.astype(np.float32) * np.float32(scale), rtol=0, atol=1e-7)
    shards = sorted(lab.shard_dir(path).glob("shard-*.parquet"))
    assert len(shards) == 2 and not list(lab.shard_dir(path).glob("open-*.parquet"))  # sealed at 2, then the rest
    df = lab.labelled_manifest(path)
    assert np.isfinite(df["label"]).sum() == 3 and (df["label_seconds"].dropna() > 0).all()
    # A killed run leaves an open shard: the next run adopts its rows (no relabelling) and seals them.
    killed = lab.shard_dir(path) / "open-20000101T000000-1-0000.parquet"
    pending = lab.pending_items(read_manifest(path), lab.read_shards(lab.shard_dir(path)))
    lab.write_shard(killed, [{"item_id": pending.iloc[0]["item_id"], "label": 0.5, "label_seconds": 1.0, "error": ""}])
    calls.append(pending.iloc[0]["item_id"])
    second = lab.label_manifest(path, corpus, workers=1, flush_every=2, haaqi_fn=_cheap_haaqi, progress=False,
                                on_result=lambda r: calls.append(r["item_id"]))
    assert second["pending_before"] == 18 and len(calls) == len(set(calls)) == 22
    assert not killed.exists() and not list(lab.shard_dir(path).glob("open-*.parquet"))
    df = lab.labelled_manifest(path)
    assert np.isfinite(df["label"]).all()
    assert df.set_index("item_id").loc[pending.iloc[0]["item_id"], "label"] == 0.5
    # sealed shards are never rewritten: the first run's files are byte for byte as they were
    assert all(f.exists() for f in shards) and path.read_bytes() == frozen
    third = lab.label_manifest(path, corpus, haaqi_fn=_cheap_haaqi, progress=False)
    assert third["pending_before"] == 0
    summary = lab.stats(df)
    assert summary["labelled"] == 22 and sum(summary["label_histogram"]["counts"]) == 22
    assert summary["labelled_with_terms"] == 0  # a plain score function has no sub-terms
    # a second run on the same folder at the same time is refused
    with lab._exclusive(lab.shard_dir(path)), pytest.raises(lab.DatasetError, match="another labelling run"):
        lab.label_manifest(path, corpus, haaqi_fn=_cheap_haaqi, progress=False)


def test_shards_hold_haaqi_sub_terms_compactly(corpus: Path, tmp_path: Path) -> None:
    """Real labels carry haaqi_terms' sub-terms (clipped d_loud/d_norm); a shard costs < 60 bytes a label
    (120,000 labels < 8 MB tracked)."""
    from haaqicli.reference import haaqi_terms

    path = tmp_path / "m.parquet"
    df = _build(corpus, items=16, clip_seconds=1.0)
    write_manifest(df, path, compact=True)
    lab.label_manifest(path, corpus, workers=1, limit=1, split="train", progress=False)
    shard = lab.read_shards(lab.shard_dir(path))
    row = shard.iloc[0]
    item = read_manifest(path).set_index("item_id").loc[row["item_id"]].to_dict()
    ref, proc, sr = materialise(item, corpus)
    expected = haaqi_terms(proc, ref, sr, sr, item["audiogram"], 1,
                           item["spl"] - 20 * np.log10(np.sqrt(np.mean(ref.astype(np.float64) ** 2))))
    for name in ("cep_high", "bm_sync5", "d_loud", "d_norm"):
        assert row[name] == pytest.approx(expected[name], abs=1e-6)
    assert row["label"] == pytest.approx(expected["score"], abs=1e-6)
    assert lab.stats(lab.labelled_manifest(path))["labelled_with_terms"] == 1
    rng = np.random.default_rng(0)
    rows = [{"item_id": f"{rng.integers(2**63):016x}", "label": rng.uniform(), "cep_high": rng.uniform(),
             "bm_sync5": rng.uniform(), "d_loud": 1.0, "d_norm": rng.uniform(), "label_seconds": 0.4, "error": ""}
            for _ in range(2000)]
    lab.write_shard(tmp_path / "labels" / "shard-x.parquet", rows)
    assert lab.shard_bytes_per_label(tmp_path / "labels") < 60


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

    from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES

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


def _label_all(path: Path, df: pd.DataFrame, labels: np.ndarray) -> None:
    lab.write_shard(lab.shard_dir(path) / "shard-test.parquet",
                    [{"item_id": i, "label": v, "label_seconds": 0.1, "error": ""} for i, v in
                     zip(df["item_id"], labels, strict=True) if np.isfinite(v)])


def test_load_split_arrays_level_convention_and_int16_cache(corpus: Path, tmp_path: Path) -> None:
    from haaqicli.data.export import Int16Waves

    path = tmp_path / "m.parquet"
    df = _build(corpus, items=22)
    write_manifest(df, path, compact=True)
    labels = np.linspace(0.1, 0.9, len(df))
    _label_all(path, df, labels)
    cache = tmp_path / "cache"
    printed: list[str] = []
    waves, grams, labels_out, meta = load_split_arrays(path, "train", sample_rate=8000, corpus_dir=corpus,
                                                       cache_dir=cache, workers=1, log=printed.append)
    n = int((df["split"] == "train").sum())
    assert isinstance(waves, Int16Waves) and waves.shape == (n, 6 * 8000) and waves[[0]].dtype == np.float32
    assert grams.shape == (n, 8) and labels_out.shape == (n,)
    assert "GB on disk (int16)" in printed[0]
    files = sorted(cache.glob("splits/train-8000-*.npy"))
    assert [np.load(f, mmap_mode="r").dtype.kind for f in files] == ["U", "i", "f"]  # ids, int16 waves, row scales
    assert np.load(files[1], mmap_mode="r").dtype == np.int16
    for i, (recipe, spl) in enumerate(zip(meta["recipe"], meta["spl"], strict=True)):
        rms = np.sqrt(np.mean(waves[[i]][0].astype(np.float64) ** 2))
        if recipe == '{"type":"identity"}' and meta["augmentation"][i] == "none":
            # clean items at the item's level: the reference at `spl` dB SPL, as `haaqi score --spl` presents it
            assert rms == pytest.approx(0.1 * 10 ** ((spl - 65) / 20), rel=0.02)
    # int16 with a scale per row keeps the input within half a step of its peak/32767
    row = meta.iloc[0].to_dict()
    ref, proc, sr = materialise(row, corpus)
    exact = model_input(ref, proc, sr, 8000, 6 * 8000, row["spl"])
    assert np.max(np.abs(waves[[0]][0] - exact)) <= np.max(np.abs(exact)) / 32767 * 0.51
    again, *_ = load_split_arrays(path, "train", sample_rate=8000, corpus_dir=corpus, cache_dir=cache)
    assert np.array_equal(np.asarray(again), np.asarray(waves))
    # one cache per split, whatever the labels: fewer labels read the same file
    _label_all(path, df, np.where(df["split"] == "train", np.nan, labels))
    lab.write_shard(lab.shard_dir(path) / "shard-test.parquet",
                    [{"item_id": i, "label": 0.5, "label_seconds": 0.1, "error": ""}
                     for i in df.loc[df["split"] == "train", "item_id"][1:]])
    fewer, *_ = load_split_arrays(path, "train", sample_rate=8000, corpus_dir=corpus, cache_dir=cache)
    assert len(fewer) == n - 1 and sorted(cache.glob("splits/train-8000-*.npy")) == files
    # a balanced manifest (a subset of the items) reads the full manifest's cache instead of making its own
    subset = tmp_path / "balanced.parquet"
    write_manifest(df.iloc[::2], subset, compact=True)
    _label_all(subset, df.iloc[::2], np.full(len(df.iloc[::2]), 0.5))
    part, *_ = load_split_arrays(subset, "train", sample_rate=8000, corpus_dir=corpus, cache_dir=cache, workers=1)
    assert sorted(cache.glob("splits/train-8000-*.npy")) == files
    whole = dict(zip(meta["item_id"], np.asarray(waves), strict=True))
    part_meta = lab.labelled_manifest(subset)
    part_ids = sorted(part_meta.loc[part_meta["split"] == "train", "item_id"])
    assert np.array_equal(np.asarray(part), np.stack([whole[i] for i in part_ids]))
    x = model_input(np.ones(100) * 0.5, np.ones(100) * 0.25, 8000, 8000)
    assert np.allclose(x, 0.05)
    assert np.allclose(model_input(np.ones(100) * 0.5, np.ones(100) * 0.25, 8000, 8000, spl=85.0), 0.5)


def test_items_follow_the_design_and_ids_cover_the_source_audio(corpus: Path, tmp_path: Path) -> None:
    df = _build(corpus, items=40)
    val = df[df["split"] == "validation"]
    # every validation clip x every profile x every variant; variant 0 clean; one level per variant
    from haaqicli.data.corpus import VALIDATION_PROFILES

    assert sorted(set(val["profile"])) == sorted(VALIDATION_PROFILES)
    assert len(val) == val["clip_id"].nunique() * len(VALIDATION_PROFILES) * 2
    assert (val["augmentation"] == "none").all()
    assert (val.groupby(["clip_id", "recipe"])["spl"].nunique() == 1).all()
    assert (val.groupby("clip_id")["recipe"].apply(lambda r: (r == '{"type":"identity"}').sum()) == 7).all()
    train = df[df["split"] == "train"]
    assert (train["profile"] == "").all() and train["spl"].between(50, 85).all() and train["spl"].nunique() > 5
    assert (train["augmentation"] != "none").any()
    # augmentation: a mix partner from the training split; the augmented reference is not the plain clip
    mixed = train[train["augment"].str.contains('"mix"')]
    for item in mixed.to_dict(orient="records")[:2]:
        import json

        partner = json.loads(item["augment"])["mix"]["source"]
        assert partner != item["source"] and df.loc[df["source"] == partner, "split"].eq("train").all()
        ref, _, _ = materialise(item, corpus, verify_sha=True)
        plain, _, _ = materialise({**item, "augment": "{}"}, corpus)
        assert not np.allclose(ref, plain)
    # downmix weight 1.0 is the left channel alone
    item = train.iloc[0].to_dict()
    left, _, sr = materialise({**item, "augment": '{"downmix":1.0}', "recipe": '{"type":"identity"}'}, corpus)
    raw = sf.read(corpus / item["source"], dtype="float64")[0][:, 0]
    start = int(round(item["offset_s"] * sr))
    np.testing.assert_allclose(left, raw[start : start + len(left)].astype(np.float32), atol=1e-7)
    # ids cover the source audio: the same file path with other audio gives other ids
    source = corpus / df.iloc[0]["source"]
    data, sr = sf.read(source)
    sf.write(source, data * 0.9, sr)
    changed = _build(corpus, items=40)
    same_source = df["source"] == df.iloc[0]["source"]
    assert not set(df.loc[same_source, "item_id"]) & set(changed["item_id"])
    assert set(df.loc[~same_source & ~df["augment"].str.contains(str(df.iloc[0]["source"])), "item_id"]) <= \
        set(changed["item_id"])


def test_verify_regenerates_items_against_manifest_and_labels(corpus: Path, tmp_path: Path) -> None:
    from haaqicli.cli import main
    from haaqicli.data.verify import verify

    path = tmp_path / "m.parquet"
    df = _build(corpus, items=16, clip_seconds=1.0)
    write_manifest(df, path, compact=True)
    lab.label_manifest(path, corpus, workers=1, limit=2, progress=False)
    result = verify(lab.labelled_manifest(path), corpus, 4)
    assert result["checked"] == 4 and result["relabelled"] == 2 and result["failed"] == 0
    # a wrong label in a shard is found
    shard = lab.read_shards(lab.shard_dir(path))
    lab.write_shard(lab.shard_dir(path) / "shard-zz.parquet", [{**shard.iloc[0].to_dict(), "label": 0.123}])
    result = verify(lab.labelled_manifest(path), corpus, 2)
    assert list(result["problems"]) == [shard.iloc[0]["item_id"]]
    # a changed source file is found, and the CLI exits 1 with one line per item
    data, sr = sf.read(corpus / df.iloc[0]["source"])
    sf.write(corpus / df.iloc[0]["source"], data * 0.5, sr)
    out = CliRunner().invoke(main, ["dataset", "verify", "--manifest", str(path), "--corpus", str(corpus),
                                    "--sample", "16", "-q"])
    assert out.exit_code == 1 and "sha256 differs" in out.output and "Traceback" not in out.output


def test_a_render_from_another_cpu_keeps_the_frozen_items_within_tolerance(corpus: Path, tmp_path: Path) -> None:
    """A render whose bits differ (as fluidsynth's do across CPUs) but whose clips agree within
    RENDER_RMS_TOLERANCE_DB keeps the frozen manifest's items; a changed render, or a changed unpacked
    file, makes new items; verify checks such a render within the render tolerances."""
    from haaqicli.data.corpus import FrozenSources
    from haaqicli.data.verify import verify

    frozen = _build(corpus, items=24)
    write_manifest(frozen, tmp_path / "frozen.parquet", compact=True)
    frozen = read_manifest(tmp_path / "frozen.parquet")  # with its (empty) label columns, as verify reads it
    rendered = sorted(s for s in frozen["source"].unique() if s.startswith("rendered/"))
    assert rendered
    data, sr = sf.read(corpus / rendered[0])
    noise = np.random.default_rng(0).normal(size=data.shape) * 2e-4  # a few 16-bit steps: new bits, same music
    sf.write(corpus / rendered[0], data + noise, sr)
    assert set(_build(corpus, items=24)["item_id"]) != set(frozen["item_id"])  # ids follow the bits...
    sources = FrozenSources.of(frozen)
    rebuilt = build_manifest(corpus, _config(24), frozen=sources)
    assert set(rebuilt["item_id"]) == set(frozen["item_id"])  # ...unless the frozen identity is kept
    assert list(sources.adopted) == [rendered[0]] and sources.adopted[rendered[0]] < 0.01
    result = verify(frozen, corpus, len(frozen))
    assert result["failed"] == 0 and result["rerendered_sources"] == [rendered[0]]
    # a render 6 dB away is other music
    sf.write(corpus / rendered[0], data * 0.5, sr)
    sources = FrozenSources.of(frozen)
    rebuilt = build_manifest(corpus, _config(24), frozen=sources)
    assert not sources.adopted and "dB from the frozen" in sources.refused[rendered[0]]
    assert set(rebuilt["item_id"]) != set(frozen["item_id"])
    assert verify(frozen, corpus, len(frozen))["failed"] > 0
    # an unpacked file is identified by its bits alone
    sf.write(corpus / rendered[0], data, sr)
    unpacked = next(s for s in frozen["source"].unique() if s.startswith("packages/"))
    data, sr = sf.read(corpus / unpacked)
    sf.write(corpus / unpacked, data * 0.999, sr)
    sources = FrozenSources.of(frozen)
    assert set(build_manifest(corpus, _config(24), frozen=sources)["item_id"]) != set(frozen["item_id"])
    assert not sources.adopted and not sources.refused


def test_cli_build_stats_and_guard(corpus: Path, tmp_path: Path) -> None:
    from haaqicli.cli import main

    runner = CliRunner()
    manifest = tmp_path / "cli.parquet"
    result = runner.invoke(main, ["dataset", "build", "--corpus", str(corpus), "--manifest", str(manifest),
                                  "--items", "12", "--variants", "2", "--clips-per-track", "1", "-q",
                                  "--validation-variants", "1", "--validation-clips-per-track", "1"])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(manifest)) == 12
    frozen = tmp_path / "labels" / "manifest.parquet"
    result = runner.invoke(main, ["dataset", "freeze", "--manifest", str(manifest), "--out", str(frozen)])
    assert result.exit_code == 0 and "froze 12 items" in result.output
    assert "label" not in pd.read_parquet(frozen).columns
    # a rebuild is compared with the frozen manifest
    result = runner.invoke(main, ["dataset", "build", "--corpus", str(corpus), "--manifest", str(manifest),
                                  "--items", "12", "--variants", "2", "--clips-per-track", "1", "-q",
                                  "--validation-variants", "1", "--validation-clips-per-track", "1",
                                  "--frozen", str(frozen)])
    assert "compared with the frozen" in result.output and "the same items" in result.output
    df = read_manifest(frozen)
    _label_all(frozen, df, np.linspace(0, 1, len(df)))
    result = runner.invoke(main, ["dataset", "stats", "--manifest", str(frozen), "--json"])
    assert result.exit_code == 0 and '"items": 12' in result.output
    import json

    stats = json.loads(result.output)
    assert stats["labelled"] == 12 and set(stats["label_histogram_by_severity"]) == set(df["severity"])
    assert {"tracks", "minutes", "items", "labelled"} <= set(stats["packages"][0])
    result = runner.invoke(main, ["dataset", "stats", "--manifest", str(frozen)])
    assert result.exit_code == 0 and "labels per severity" in result.output
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
    items = _build(corpus, items=16, clip_seconds=1.0).iloc[:2].to_dict(orient="records")
    broken = dict(items[0], item_id="broken", source="packages/naev-data/music/missing.ogg")
    rows = list(lab.label_items_batched([items[0], broken, items[1]], corpus, "cpu", batch_size=3))
    assert [r["item_id"] for r in rows] == [items[0]["item_id"], "broken", items[1]["item_id"]]
    assert rows[1]["error"] and np.isnan(rows[1]["label"])
    for row, item in zip([rows[0], rows[2]], items, strict=True):
        expected = lab.label_item(item, corpus)
        assert not row["error"] and row["label"] == pytest.approx(expected["label"], abs=1e-6)
        assert row["d_norm"] == pytest.approx(expected["d_norm"], abs=1e-6)
        assert row["label_seconds"] > 0


def test_two_runs_in_one_second_never_overwrite_a_sealed_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard names carry a time stamp; two runs of one process with the same stamp still add files."""
    monkeypatch.setattr(lab.time, "time", lambda: 1_700_000_000.25)
    for item in ("a", "b"):
        writer = lab.ShardWriter(tmp_path, shard_size=10)
        writer.add({"item_id": item, "label": 0.5, "label_seconds": 1.0, "error": ""})
        writer.flush(seal=True)
    assert sorted(lab.read_shards(tmp_path)["item_id"]) == ["a", "b"]
    assert len(list(tmp_path.glob("shard-*.parquet"))) == 2 and not list(tmp_path.glob("open-*.parquet"))


def test_retry_errors_relabels_error_rows_and_the_new_row_supersedes_them(corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    write_manifest(_build(corpus, items=22), path, compact=True)
    ids = list(read_manifest(path)["item_id"])
    # an earlier run hit a full disk on one item and labelled another
    lab.write_shard(lab.shard_dir(path) / "shard-20000101T000000000000-1-0000.parquet",
                    [{"item_id": ids[0], "label": float("nan"), "label_seconds": 1.0, "error": "OSError: No space left"},
                     {"item_id": ids[1], "label": 0.25, "label_seconds": 1.0, "error": ""}])
    plain = lab.pending_items(read_manifest(path), lab.read_shards(lab.shard_dir(path)))
    assert ids[0] not in set(plain["item_id"]) and len(plain) == 20
    retried = lab.pending_items(read_manifest(path), lab.read_shards(lab.shard_dir(path)), retry_errors=True)
    assert ids[0] in set(retried["item_id"]) and ids[1] not in set(retried["item_id"]) and len(retried) == 21
    calls: list[str] = []
    lab.label_manifest(path, corpus, haaqi_fn=_cheap_haaqi, progress=False, retry_errors=True,
                       on_result=lambda r: calls.append(r["item_id"]))
    assert ids[0] in calls and ids[1] not in calls
    df = lab.labelled_manifest(path).set_index("item_id")
    assert np.isfinite(df.loc[ids[0], "label"]) and df.loc[ids[1], "label"] == 0.25


def test_interrupted_labelling_says_its_labels_are_sealed(corpus: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from haaqicli.cli import main

    path = tmp_path / "m.parquet"
    write_manifest(_build(corpus, items=22), path, compact=True)
    calls: list[str] = []

    def stop_after_two(result):  # type: ignore[no-untyped-def]
        calls.append(result["item_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    real = lab.label_manifest
    monkeypatch.setattr(lab, "label_manifest", lambda *a, **k: real(*a, **{**k, "haaqi_fn": _cheap_haaqi,
                                                                             "on_result": stop_after_two}))
    out = CliRunner().invoke(main, ["dataset", "label", "--manifest", str(path), "--corpus", str(corpus),
                                    "--workers", "1", "--no-cache", "-q"])
    assert out.exit_code == 130 and "Traceback" not in out.output
    assert f"interrupted: the labels finished so far are sealed in {lab.shard_dir(path)}/" in out.output
    assert len(lab.read_shards(lab.shard_dir(path))) == 2 and list(lab.shard_dir(path).glob("shard-*.parquet"))
