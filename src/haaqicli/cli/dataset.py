"""`haaqi dataset ...`: build the item manifest, label it with our HAAQI, inspect it, export arrays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors, quiet_option


def _data_dir() -> Path:
    from haaqicli.data.corpus import default_data_dir

    return default_data_dir()


def _manifest_option(func):  # type: ignore[no-untyped-def]
    return click.option(
        "--manifest",
        type=click.Path(dir_okay=False),
        default=None,
        help="Manifest Parquet file [default: data/manifest.parquet].",
    )(func)


def _corpus_option(func):  # type: ignore[no-untyped-def]
    return click.option(
        "--corpus",
        type=click.Path(file_okay=False),
        default=None,
        help="Corpus root with packages/ and rendered/ [default: data/corpus].",
    )(func)


def _paths(manifest: str | None, corpus: str | None) -> tuple[Path, Path]:
    data = _data_dir()
    return (Path(manifest) if manifest else data / "manifest.parquet", Path(corpus) if corpus else data / "corpus")


@click.group()
def dataset() -> None:
    """Build, label and inspect the training corpus (data/ only, never committed)."""


@dataset.command()
@_manifest_option
@_corpus_option
@click.option("--items", type=click.IntRange(1), default=30_000, show_default=True, help="Manifest size.")
@click.option("--variants", type=click.IntRange(1), default=8, show_default=True,
              help="Items (degradation x audiogram) per clip, at least.")
@click.option("--clips-per-track", type=click.IntRange(1), default=10, show_default=True)
@click.option("--max-package-share", type=click.FloatRange(0.01, 1.0), default=0.12, show_default=True,
              help="Cap on any one package's share of the clips.")
@click.option("--seed", type=int, default=2026, show_default=True)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Recipe-kind weights JSON (from `haaqi dataset fit-weights`).")
@click.option("--package", "packages", multiple=True, help="Only these training packages (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite a manifest that already holds labels.")
@quiet_option
def build(manifest: str | None, corpus: str | None, items: int, variants: int, clips_per_track: int,
          max_package_share: float, seed: int, weights: str | None, packages: tuple[str, ...], force: bool,
          quiet: bool) -> None:
    """Cut loud 6 s clips from the corpus and draw degradations + audiograms into a manifest."""
    _build(manifest, corpus, items, variants, clips_per_track, max_package_share, seed, weights, packages, force, quiet)


@one_line_errors
def _build(manifest: str | None, corpus: str | None, items: int, variants: int, clips_per_track: int,
                max_package_share: float, seed: int, weights: str | None, packages: tuple[str, ...], force: bool,
                quiet: bool) -> None:
    import numpy as np

    from haaqicli.data import degrade
    from haaqicli.data.corpus import BuildConfig, build_manifest, read_manifest, write_manifest
    from haaqicli.data.packages import DatasetError, guard_package

    manifest_path, corpus_dir = _paths(manifest, corpus)
    for pkg in packages:
        guard_package(pkg)
    if manifest_path.exists() and not force:
        old = read_manifest(manifest_path)
        if np.isfinite(old["label"].to_numpy(dtype=float)).any():
            raise DatasetError(f"{manifest_path} already holds labels; pass --force or choose another --manifest")
    recipe_weights = None
    if weights:
        try:
            recipe_weights = degrade.load_weights(weights)
        except (ValueError, json.JSONDecodeError) as error:
            raise DatasetError(f"--weights {weights}: {error}") from None
    config = BuildConfig(items=items, variants_per_clip=variants, clips_per_track=clips_per_track,
                         max_package_share=max_package_share, seed=seed, recipe_weights=recipe_weights,
                         packages=packages or None)
    df = build_manifest(corpus_dir, config, progress=not quiet)
    write_manifest(df, manifest_path)
    for line in config.skipped:
        click.echo(f"skipped: {line}", err=True)
    counts = df.groupby("split").size().to_dict()
    click.echo(f"wrote {manifest_path}: {len(df)} items from {df['clip_id'].nunique()} clips of "
               f"{df['source'].nunique()} tracks in {df['package'].nunique()} packages; splits {counts}")



@dataset.command()
@_manifest_option
@_corpus_option
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Parallel labelling processes [default: all cores].")
@click.option("--limit", type=click.IntRange(1), default=None, help="Label at most this many items now.")
@click.option("--split", type=click.Choice(["train", "validation"]), default=None)
@click.option("--flush-every", type=click.IntRange(1), default=20, show_default=True,
              help="Write a label shard after this many items (a kill loses at most one shard).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N. CUDA batches clips in the torch engine.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Clips per batch on a CUDA device.")
@quiet_option
def label(manifest: str | None, corpus: str | None, workers: int | None, limit: int | None, split: str | None,
          flush_every: int, device: str, batch_size: int, quiet: bool) -> None:
    """Label pending items with our HAAQI (resumable: re-running skips labelled items)."""
    _label(manifest, corpus, workers, limit, split, flush_every, device, batch_size, quiet)


@one_line_errors
def _label(manifest: str | None, corpus: str | None, workers: int | None, limit: int | None,
                split: str | None, flush_every: int, device: str, batch_size: int, quiet: bool) -> None:
    from haaqicli.data.labels import label_manifest
    from haaqicli.models.registry import resolve_device

    resolve_device(device)  # a bad device is a one-line error before any work
    manifest_path, corpus_dir = _paths(manifest, corpus)
    summary = label_manifest(manifest_path, corpus_dir, workers=workers or os.cpu_count() or 1,
                             flush_every=flush_every, limit=limit, split=split, progress=not quiet,
                             cache_dir=_data_dir() / "cache", device=device, batch_size=batch_size)
    done = summary["labelled"] + summary["errors"]
    rate = 3600.0 * done / summary["wall_seconds"] if summary["wall_seconds"] > 0 else 0.0
    cpu = summary["cpu_seconds"] / done if done else 0.0
    click.echo(f"labelled {summary['labelled']} items ({summary['errors']} errors) of {summary['pending_before']} "
               f"pending; {rate:.0f} labels/hour, {cpu:.2f} CPU s/label")



@dataset.command()
@_manifest_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(manifest: str | None, as_json: bool) -> None:
    """Manifest size, per-package/split counts, label histogram and CPU time per label."""
    _stats(manifest, as_json)


@one_line_errors
def _stats(manifest: str | None, as_json: bool) -> None:
    from haaqicli.data.labels import labelled_manifest
    from haaqicli.data.labels import stats as compute_stats

    manifest_path, _ = _paths(manifest, None)
    # Include labels still in shards (a labelling job may be running).
    df = labelled_manifest(manifest_path)
    result = compute_stats(df)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{manifest_path}: {result['items']} items, {result['clips']} clips, {result['sources']} tracks, "
               f"{result['labelled']} labelled; splits {result['splits']}")
    click.echo(f"{'split':<11} {'package':<24} {'items':>7} {'labelled':>9} {'clips':>6}")
    for row in result["packages"]:
        click.echo(f"{row['split']:<11} {row['package']:<24} {row['items']:>7} {row['labelled']:>9} {row['clips']:>6}")
    hist = result["label_histogram"]
    total = max(sum(hist["counts"]), 1)
    click.echo("label histogram:")
    for lo, hi, count in zip(hist["edges"][:-1], hist["edges"][1:], hist["counts"], strict=True):
        click.echo(f"  {lo:.1f}-{hi:.1f} {count:>7} {'#' * int(round(40 * count / total))}")
    if result["cpu_seconds_per_label"] is not None:
        click.echo(f"mean label {result['label_mean']:.3f}; {result['cpu_seconds_per_label']:.2f} CPU s/label")
    click.echo("degradations (items, mean label):")
    for row in result["degradations"]:
        mean = "-" if row["mean_label"] is None else f"{row['mean_label']:.3f}"
        click.echo(f"  {row['kind']:<12} {row['items']:>7} {mean}")



@dataset.command("fit-weights")
@_manifest_option
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Weights JSON to write.")
def fit_weights(manifest: str | None, out: str) -> None:
    """Fit recipe-kind weights on a labelled pilot so labels come out roughly uniform over 0..1."""
    _fit(manifest, out)


@one_line_errors
def _fit(manifest: str | None, out: str) -> None:
    import numpy as np

    from haaqicli.data import degrade
    from haaqicli.data.labels import labelled_manifest
    from haaqicli.data.packages import DatasetError

    manifest_path, _ = _paths(manifest, None)
    df = labelled_manifest(manifest_path)
    df = df[(df["split"] == "train") & np.isfinite(df["label"].to_numpy(dtype=float))]
    if len(df) < 50:
        raise DatasetError(f"{manifest_path}: only {len(df)} labelled training items; label a pilot of 50+ first")
    weights = degrade.fit_recipe_weights(df["degradation"].tolist(), df["label"].tolist())
    degrade.save_weights(weights, out)
    click.echo(f"wrote {out} from {len(df)} labelled training items: {json.dumps(weights)}")



@dataset.command()
@_manifest_option
@_corpus_option
@click.option("--split", type=click.Choice(["train", "validation"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Cache folder [default: data/cache].")
def export(manifest: str | None, corpus: str | None, split: str, out: str | None) -> None:
    """Materialise a split's labelled items as model-ready .npy arrays (24 kHz, level convention)."""
    _export(manifest, corpus, split, out)


@one_line_errors
def _export(manifest: str | None, corpus: str | None, split: str, out: str | None) -> None:
    from haaqicli.data.export import load_split_arrays

    manifest_path, corpus_dir = _paths(manifest, corpus)
    waves, grams, labels, _ = load_split_arrays(manifest_path, split, corpus_dir=corpus_dir,
                                                cache_dir=out or _data_dir() / "cache")
    click.echo(f"{split}: waves {tuple(waves.shape)}, audiograms {tuple(grams.shape)}, labels {tuple(labels.shape)} "
               f"cached in {out or _data_dir() / 'cache'}")



@dataset.command()
@_manifest_option
@click.option("--per-bin", type=click.IntRange(1), required=True, help="Most labelled items kept per label bin.")
@click.option("--bins", type=click.IntRange(2, 100), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Balanced manifest to write.")
def balance(manifest: str | None, per_bin: int, bins: int, seed: int, out: str) -> None:
    """Keep at most --per-bin labelled items per label bin (flattens the label histogram)."""
    _balance(manifest, per_bin, bins, seed, out)


@one_line_errors
def _balance(manifest: str | None, per_bin: int, bins: int, seed: int, out: str) -> None:
    from haaqicli.data.corpus import write_manifest
    from haaqicli.data.labels import balance_by_label, labelled_manifest

    manifest_path, _ = _paths(manifest, None)
    df = labelled_manifest(manifest_path)
    balanced = balance_by_label(df, per_bin, n_bins=bins, seed=seed)
    write_manifest(balanced, Path(out))
    click.echo(f"wrote {out}: {len(balanced)} of {int(df['label'].notna().sum())} labelled items")
