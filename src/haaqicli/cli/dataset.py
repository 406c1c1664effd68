"""`haaqi dataset ...`: build the item manifest, label it with our HAAQI, inspect it, export arrays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors, quiet_option, scheduler_option


def _data_dir() -> Path:
    from haaqicli.data.corpus import default_data_dir

    return default_data_dir()


FROZEN_MANIFEST = Path("labels/manifest.parquet")


def default_manifest() -> Path:
    """The frozen, committed manifest (labels/manifest.parquet) once there is one, else the build's."""
    return FROZEN_MANIFEST if FROZEN_MANIFEST.is_file() else _data_dir() / "manifest.parquet"


def _manifest_option(func):  # type: ignore[no-untyped-def]
    return click.option(
        "--manifest",
        type=click.Path(dir_okay=False),
        default=None,
        help="Manifest Parquet file [default: labels/manifest.parquet if present, else data/manifest.parquet]. "
             "Its labels live in the shard folder beside it (<stem>.labels/).",
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
    return (Path(manifest) if manifest else default_manifest(), Path(corpus) if corpus else data / "corpus")


@click.group()
def dataset() -> None:
    """Build, label and inspect the training corpus (data/ only, never committed)."""


@dataset.command()
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Manifest to write [default: data/manifest.parquet].")
@_corpus_option
@click.option("--items", type=click.IntRange(1), default=30_000, show_default=True,
              help="Manifest size: the validation splits' fixed design, then training items up to this.")
@click.option("--variants", type=click.IntRange(1), default=8, show_default=True,
              help="Training items (augmentation x degradation x audiogram x level) per clip, at least.")
@click.option("--clips-per-track", type=click.IntRange(1), default=10, show_default=True)
@click.option("--max-package-share", type=click.FloatRange(0.01, 1.0), default=0.12, show_default=True,
              help="Cap on any one package's share of the training clips.")
@click.option("--validation-variants", type=click.IntRange(1), default=4, show_default=True,
              help="Per validation clip: the clean clip and this many - 1 degradations, each for every profile.")
@click.option("--validation-clips-per-track", type=click.IntRange(1), default=4, show_default=True)
@click.option("--no-augment", is_flag=True, help="No content augmentation of training references.")
@click.option("--band-items", type=click.IntRange(0), default=0, show_default=True,
              help="Training items beyond --items whose reference is band-limited (content ending at 5-12 kHz).")
@click.option("--coded-band-items", type=click.IntRange(0), default=0, show_default=True,
              help="More beyond those, whose reference went through a low-bitrate Vorbis or MP3 encoder at "
                   "16-24 kHz (its band edge and artefacts kept; needs ffmpeg).")
@click.option("--seed", type=int, default=2026, show_default=True)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Recipe-kind weights JSON (from `haaqi dataset fit-weights`).")
@click.option("--package", "packages", multiple=True, help="Only these training packages (repeatable).")
@click.option("--frozen", type=click.Path(dir_okay=False), default=str(FROZEN_MANIFEST), show_default=True,
              help="Frozen manifest the new build is compared with (when it exists).")
@click.option("--force", is_flag=True, help="Overwrite a manifest that already has labels.")
@quiet_option
def build(manifest: str | None, corpus: str | None, items: int, variants: int, clips_per_track: int,
          max_package_share: float, validation_variants: int, validation_clips_per_track: int, no_augment: bool,
          band_items: int, coded_band_items: int, seed: int, weights: str | None, packages: tuple[str, ...], frozen: str, force: bool, quiet: bool) -> None:
    """Cut loud 6 s clips from the corpus and draw augmentations, degradations, audiograms and levels."""
    _build(manifest, corpus, items, variants, clips_per_track, max_package_share, validation_variants,
           validation_clips_per_track, no_augment, band_items, coded_band_items, seed, weights, packages, frozen, force, quiet)


@one_line_errors
def _build(manifest: str | None, corpus: str | None, items: int, variants: int, clips_per_track: int,
           max_package_share: float, validation_variants: int, validation_clips_per_track: int, no_augment: bool,
           band_items: int, coded_band_items: int, seed: int, weights: str | None, packages: tuple[str, ...], frozen: str, force: bool, quiet: bool) -> None:
    from haaqicli.data import degrade
    from haaqicli.data.corpus import (
        RENDER_RMS_TOLERANCE_DB,
        BuildConfig,
        FrozenSources,
        build_manifest,
        read_manifest,
        write_manifest,
    )
    from haaqicli.data.labels import read_shards, shard_dir
    from haaqicli.data.packages import DatasetError, guard_package
    from haaqicli.data.verify import compare_manifests

    manifest_path = Path(manifest) if manifest else _data_dir() / "manifest.parquet"
    corpus_dir = _paths(None, corpus)[1]
    for pkg in packages:
        guard_package(pkg)
    if manifest_path.exists() and not force and not read_shards(shard_dir(manifest_path)).empty:
        raise DatasetError(f"{manifest_path} already has labels in {shard_dir(manifest_path)}; pass --force or "
                           "choose another --manifest")
    recipe_weights = None
    if weights:
        try:
            recipe_weights = degrade.load_weights(weights)
        except (ValueError, json.JSONDecodeError) as error:
            raise DatasetError(f"--weights {weights}: {error}") from None
    config = BuildConfig(items=items, variants_per_clip=variants, clips_per_track=clips_per_track,
                         max_package_share=max_package_share, seed=seed, recipe_weights=recipe_weights,
                         packages=packages or None, validation_variants=validation_variants,
                         validation_clips_per_track=validation_clips_per_track, augment=not no_augment,
                         band_items=band_items, coded_band_items=coded_band_items)
    frozen_path = Path(frozen)
    compare = frozen_path.is_file() and frozen_path.resolve() != manifest_path.resolve()
    frozen_df = read_manifest(frozen_path) if compare else None
    sources = FrozenSources.of(frozen_df) if frozen_df is not None else None
    df = build_manifest(corpus_dir, config, progress=not quiet, frozen=sources)
    write_manifest(df, manifest_path)
    for line in config.skipped:
        click.echo(f"skipped: {line}", err=True)
    counts = df.groupby("split").size().to_dict()
    click.echo(f"wrote {manifest_path}: {len(df)} items from {df['clip_id'].nunique()} clips of "
               f"{df['source'].nunique()} tracks in {df['package'].nunique()} packages; splits {counts}")
    if frozen_df is not None and sources is not None:  # both or neither
        diff = compare_manifests(df, frozen_df)
        verdict = ("the same items" if diff["only_built"] == diff["only_frozen"] == 0 else
                   f"{diff['same']} items in common, {diff['only_built']} only here, {diff['only_frozen']} only there")
        click.echo(f"compared with the frozen {frozen_path}: {verdict}")
        if sources.adopted:
            click.echo(f"{len(sources.adopted)} renders differ in their bits from the frozen manifest's and keep its "
                       f"identity: clip RMS at most {max(sources.adopted.values()):.4f} dB apart (tolerance "
                       f"{RENDER_RMS_TOLERANCE_DB} dB; synthesisers differ across CPUs)")
        for source, why in sorted(sources.refused.items()):
            click.echo(f"render differs from the frozen manifest's: {source} ({why}): its items are new", err=True)


@dataset.command()
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Built manifest to freeze [default: data/manifest.parquet].")
@click.option("--out", type=click.Path(dir_okay=False), default=str(FROZEN_MANIFEST), show_default=True,
              help="Frozen manifest to write (commit it, then label).")
@click.option("--force", is_flag=True, help="Replace a frozen manifest with other items that already has labels.")
def freeze(manifest: str | None, out: str, force: bool) -> None:
    """Write the compact manifest to commit before labelling (items only: labels go to shards beside it)."""
    _freeze(manifest, out, force)


@one_line_errors
def _freeze(manifest: str | None, out: str, force: bool) -> None:
    from haaqicli.data.corpus import read_manifest, write_manifest
    from haaqicli.data.labels import read_shards, shard_dir
    from haaqicli.data.packages import DatasetError
    from haaqicli.data.verify import compare_manifests

    source = Path(manifest) if manifest else _data_dir() / "manifest.parquet"
    target = Path(out)
    df = read_manifest(source)
    if target.is_file() and not force:
        diff = compare_manifests(df, read_manifest(target))
        if diff["only_frozen"] and not read_shards(shard_dir(target)).empty:
            raise DatasetError(f"{target} has labels and {diff['only_frozen']} items {source} lacks; pass --force "
                               "to replace it")
    write_manifest(df.sort_values("item_id").reset_index(drop=True), target, compact=True)
    size = target.stat().st_size
    click.echo(f"froze {len(df)} items into {target}: {size / 1e6:.2f} MB, {size / max(len(df), 1):.1f} bytes/item; "
               f"labels will go to {shard_dir(target)}/")


@dataset.command()
@_manifest_option
@_corpus_option
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Parallel labelling processes [default: all cores].")
@click.option("--limit", type=click.IntRange(1), default=None, help="Label at most this many items now.")
@click.option("--split", "splits", multiple=True, type=click.Choice(["validation-real", "validation", "train"]),
              help="Only these splits, in this order (repeatable) [default: validation-real, validation, train].")
@click.option("--flush-every", type=click.IntRange(1), default=20, show_default=True,
              help="Rewrite the open shard after this many items (a kill loses at most these).")
@click.option("--shard-size", type=click.IntRange(1), default=2000, show_default=True,
              help="Seal a shard (an immutable file to commit) every this many labels, and at the end of a run.")
@click.option("--no-cache", is_flag=True, help="Do not store the model inputs for training while labelling.")
@click.option("--retry-errors", is_flag=True,
              help="Also relabel items whose row is an error (e.g. a full disk); the new row supersedes it.")
@click.option("--device", default="auto", show_default=True,
              help="auto (the CPU: faster than the batched CUDA engine, see README), cpu, cuda or cuda:N. "
                   "CUDA batches clips in the torch engine.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Clips per batch on a CUDA device.")
@scheduler_option
@quiet_option
def label(manifest: str | None, corpus: str | None, workers: int | None, limit: int | None, splits: tuple[str, ...],
          flush_every: int, shard_size: int, no_cache: bool, retry_errors: bool, device: str, batch_size: int,
          scheduler: str | None, quiet: bool) -> None:
    """Label pending items with our HAAQI into append-only shards (resumable: re-running skips labelled items)."""
    _label(manifest, corpus, workers, limit, splits, flush_every, shard_size, no_cache, device, batch_size, quiet,
           scheduler, retry_errors)


@one_line_errors
def _label(manifest: str | None, corpus: str | None, workers: int | None, limit: int | None, splits: tuple[str, ...],
           flush_every: int, shard_size: int, no_cache: bool, device: str, batch_size: int, quiet: bool,
           scheduler: str | None = None, retry_errors: bool = False) -> None:
    from haaqicli.data.labels import label_manifest, shard_dir
    from haaqicli.util.devices import resolve_device

    resolve_device(device)  # a bad device is a one-line error before any work
    manifest_path, corpus_dir = _paths(manifest, corpus)
    try:
        summary = label_manifest(manifest_path, corpus_dir, workers=workers or os.cpu_count() or 1,
                                 flush_every=flush_every, limit=limit, split=list(splits) or None,
                                 progress=not quiet, cache_dir=None if no_cache else _data_dir() / "cache",
                                 device=device, batch_size=batch_size, shard_size=shard_size, scheduler=scheduler,
                                 retry_errors=retry_errors)
    except KeyboardInterrupt:  # label_manifest seals what it has on the way out
        from haaqicli.util.interrupts import RunInterrupted

        raise RunInterrupted(f"the labels finished so far are sealed in {shard_dir(manifest_path)}/; "
                             "the same command resumes") from None
    done = summary["labelled"] + summary["errors"]
    rate = 3600.0 * done / summary["wall_seconds"] if summary["wall_seconds"] > 0 else 0.0
    cpu = summary["cpu_seconds"] / done if done else 0.0
    click.echo(f"labelled {summary['labelled']} items ({summary['errors']} errors) of {summary['pending_before']} "
               f"pending into {shard_dir(manifest_path)}/; {rate:.0f} labels/hour, {cpu:.2f} CPU s/label")


@dataset.command()
@_manifest_option
@_corpus_option
@click.option("--sample", "n", type=click.IntRange(1), default=20, show_default=True,
              help="Items to regenerate (labelled ones first; each labelled one is relabelled).")
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
def verify(manifest: str | None, corpus: str | None, n: int, seed: int, quiet: bool) -> None:
    """Regenerate a sample of items and check them against the manifest and the committed labels."""
    _verify(manifest, corpus, n, seed, quiet)


@one_line_errors
def _verify(manifest: str | None, corpus: str | None, n: int, seed: int, quiet: bool) -> None:
    from haaqicli.data import verify as check
    from haaqicli.data.labels import labelled_manifest

    manifest_path, corpus_dir = _paths(manifest, corpus)

    def report(item_id: str, problems: list[str]) -> None:
        if problems:
            click.echo(f"{item_id}: " + "; ".join(problems))
        elif not quiet:
            click.echo(f"{item_id}: ok")

    result = check.verify(labelled_manifest(manifest_path), corpus_dir, n, seed, on_item=report)
    click.echo(f"verified {result['checked']} items of {manifest_path} ({result['relabelled']} relabelled): "
               f"{result['failed']} differ (tolerances: clip RMS {check.CLIP_RMS_TOLERANCE_DB} dB, HAAQI terms "
               f"{check.TERM_TOLERANCE})")
    if result["rerendered_sources"]:
        click.echo(f"{len(result['rerendered_sources'])} renders differ in their bits from the manifest's (another "
                   f"CPU's synthesiser): checked within clip RMS {check.RENDER_RMS_TOLERANCE_DB} dB and HAAQI terms "
                   f"{check.RENDER_TERM_TOLERANCE}")
    if result["failed"]:
        raise SystemExit(1)


@dataset.command()
@_manifest_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(manifest: str | None, as_json: bool) -> None:
    """Manifest size, per-package/split counts, label histogram and CPU time per label."""
    _stats(manifest, as_json)


@one_line_errors
def _stats(manifest: str | None, as_json: bool) -> None:
    from haaqicli.data.labels import labelled_manifest, shard_bytes_per_label, shard_dir
    from haaqicli.data.labels import stats as compute_stats

    manifest_path, _ = _paths(manifest, None)
    # Include labels still in open shards (a labelling job may be running).
    df = labelled_manifest(manifest_path)
    result = compute_stats(df)
    per_label = shard_bytes_per_label(shard_dir(manifest_path))
    result["shards"] = {"folder": str(shard_dir(manifest_path)),
                        "bytes_per_label": None if per_label is None else round(per_label, 1)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{manifest_path}: {result['items']} items, {result['clips']} clips, {result['sources']} tracks "
               f"({result['minutes']:.0f} min), {result['labelled']} labelled ({result['labelled_with_terms']} with "
               f"sub-terms); splits {result['splits']}")
    click.echo(f"{'split':<16} {'package':<28} {'tracks':>6} {'minutes':>8} {'clips':>6} {'items':>7} {'labelled':>9}")
    for row in result["packages"]:
        click.echo(f"{row['split']:<16} {row['package']:<28} {row['tracks']:>6} {row['minutes']:>8.1f} "
                   f"{row['clips']:>6} {row['items']:>7} {row['labelled']:>9}")
    hist = result["label_histogram"]
    total = max(sum(hist["counts"]), 1)
    click.echo("label histogram:")
    for lo, hi, count in zip(hist["edges"][:-1], hist["edges"][1:], hist["counts"], strict=True):
        click.echo(f"  {lo:.1f}-{hi:.1f} {count:>7} {'#' * int(round(40 * count / total))}")
    if result["label_histogram_by_severity"]:
        click.echo("labels per severity (count per 0.1 bin, 0.0-0.1 first):")
        for severity, row in result["label_histogram_by_severity"].items():
            click.echo(f"  {severity:<9} n={row['labelled']:<6} mean {row['mean']:.3f} p95 {row['p95']:.3f}  "
                       + " ".join(str(c) for c in row["counts"]))
    if result["cpu_seconds_per_label"] is not None:
        click.echo(f"mean label {result['label_mean']:.3f}; {result['cpu_seconds_per_label']:.2f} CPU s/label")
    if per_label is not None:
        click.echo(f"sealed shards in {shard_dir(manifest_path)}: {per_label:.1f} bytes per label")
    if result["terms_mean"]:
        click.echo("mean sub-terms: " + ", ".join(f"{k} {v:.3f}" for k, v in result["terms_mean"].items()))
    for title, key in (("degradations", "degradations"), ("augmentations (an item may have several)", "augmentations")):
        click.echo(f"{title} (items, labelled, mean label):")
        for row in result[key]:
            mean = "-" if row["mean_label"] is None else f"{row['mean_label']:.3f}"
            click.echo(f"  {row['kind']:<28} {row['items']:>7} {row['labelled']:>7} {mean}")


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
@click.option("--split", type=click.Choice(["train", "validation", "validation-real"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Cache folder [default: data/cache].")
def export(manifest: str | None, corpus: str | None, split: str, out: str | None) -> None:
    """Materialise a split's labelled items into its int16 training cache (24 kHz, each at its level)."""
    _export(manifest, corpus, split, out)


@one_line_errors
def _export(manifest: str | None, corpus: str | None, split: str, out: str | None) -> None:
    from haaqicli.data.arrays import load_split_arrays

    manifest_path, corpus_dir = _paths(manifest, corpus)
    waves, grams, labels, _ = load_split_arrays(manifest_path, split, corpus_dir=corpus_dir,
                                                cache_dir=out or _data_dir() / "cache", log=click.echo)
    click.echo(f"{split}: waves {tuple(waves.shape)} (int16 on disk), audiograms {tuple(grams.shape)}, "
               f"labels {tuple(labels.shape)}")



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
