"""`haaqi train`, `haaqi distill`, `haaqi evaluate`: thin shells over :mod:`haaqicli.training.train`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors

# one definition: train, distill and ablate all warm-start the same way
INIT_OPTION = click.option(
    "--init", default=None,
    help="Warm start: a registered model name or a .safetensors file; every tensor whose "
         "name and shape match is copied before training.")
# one definition: train, distill, correct and ablate limit their training items the same way
TRAIN_ITEMS_OPTION = click.option(
    "--train-items", type=click.IntRange(1), default=None,
    help="Train on the first N items of a fixed shuffle of the training items (learning curves); only "
         "those (and, with --selection dev, the held-out dev tracks) are regenerated into the training cache.")


def run_options(default_name: str, default_epochs: int, default_lr: float,  # type: ignore[no-untyped-def]
                keep: frozenset[str] | None = None):
    """The shared options of a training run; `keep` limits them to those parameter names."""
    def decorate(func):  # type: ignore[no-untyped-def]
        options = [
            click.option("--manifest", default=None, type=click.Path(dir_okay=False),
                         help="[default: labels/manifest.parquet if present, else data/manifest.parquet]"),
            click.option("--name", default=default_name, show_default=True, help="Registry name to export as."),
            click.option("--run-dir", default=None, help="Checkpoints (default runs/NAME)."),
            click.option("--weights-dir", default=None, help="Registry folder (default weights/)."),
            click.option("--epochs", type=click.IntRange(1, 10_000), default=default_epochs, show_default=True),
            click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True),
            click.option("--lr", type=float, default=default_lr, show_default=True),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--device", default="auto", show_default=True),
            click.option("--threads", type=click.IntRange(1, 256), default=None),
            click.option("--max-minutes", type=float, default=None, help="Stop (and save) after this long."),
            click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt."),
            click.option("--config", "config_json", default=None, help="Model config JSON (file or string)."),
            click.option("--dropout", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
                         help="Every dropout rate of the model (encoder and head) [default: the config's]."),
            INIT_OPTION,
            click.option("--terms/--no-terms", default=None,
                         help="Term heads: predict HAAQI's sub-terms (cep_high, bm_sync5, d_loud, d_norm) and "
                              "combine them with HAAQI's formula [default: the model config's]."),
            click.option("--bands", type=click.IntRange(0, 128), default=None,
                         help="Hearing-loss conditioning on this many auditory band levels (NAL-R gain and "
                              "audiogram per band, FiLM); 0 = off [default: the model config's]."),
            click.option("--content-prior", type=click.Choice(["none", "musicnn"]), default=None,
                         callback=_prior_name,
                         help="A frozen pretrained music encoder whose embeddings (per 3-s patch, at 16 kHz) join "
                              "the head beside the encoder features: musicnn (MSD_musicnn, make musicnn) "
                              "[default: the model config's]."),
            click.option("--content-prior-weights", default=None, type=click.Path(dir_okay=False),
                         help="Converted prior weights [default: data/musicnn/MSD_musicnn.safetensors]."),
            click.option("--content-prior-sha256", default=None,
                         help="Their expected sha256 [default: the pinned one of the converted file's name]."),
            click.option("--term-weight", type=click.FloatRange(0.0), default=1.0, show_default=True,
                         help="Weight of the sub-term loss (items without sub-terms are masked out)."),
            click.option("--rank-weight", type=click.FloatRange(0.0), default=0.0, show_default=True,
                         help="Weight of an in-batch ranking loss beside MSE (0 = off)."),
            click.option("--rank-loss", type=click.Choice(["pairwise", "correlation"]), default="pairwise",
                         show_default=True, help="pairwise: RankNet on label-ordered pairs; correlation: 1 - LCC."),
            click.option("--clean-weight", type=click.FloatRange(0.0, min_open=True), default=1.0,
                         show_default=True,
                         help="Draw clean (undegraded) training items this many times as often as the rest "
                              "(the training mix is ~4% clean; what users score, far more)."),
            click.option("--clip-group", type=click.IntRange(1), default=1, show_default=True,
                         help="Fill batches with runs of this many versions of one clip (other damage and "
                              "hearing, the same music), so the ranking term compares damage, not pieces."),
            click.option("--selection", default="dev", show_default=True,
                         help="Items that choose the checkpoint: dev (held-out training tracks) or "
                              "validation-real:ufoai-music (reporting packages never choose)."),
            click.option("--select-metric", type=click.Choice(["mse", "lcc", "srcc"]), default="mse",
                         show_default=True, help="The selection items' figure that picks the checkpoint."),
            TRAIN_ITEMS_OPTION,
            click.option("--plus-augmentation", default=None,
                         help="With --train-items: also every labelled training item whose content augmentation "
                              "has this key (e.g. band), the N drawn from the others."),
        ]
        for option in reversed(options):
            if keep is None or _parameter_name(option) in keep:
                func = option(func)
        return func

    return decorate


def _parameter_name(option) -> str:  # type: ignore[no-untyped-def]
    """The parameter name a click.option decorator declares (e.g. "run_dir" for --run-dir)."""
    def probe() -> None: ...

    return option(probe).__click_params__[-1].name


def _prior_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else ("" if value == "none" else value)


def _manifest(manifest: str | None) -> str:
    from haaqicli.cli.dataset import default_manifest

    return str(manifest or default_manifest())


def _config(name: str, run_dir: str | None, config_json: str | None, **kwargs):  # type: ignore[no-untyped-def]
    from haaqicli.training.train import TrainConfig

    kwargs["manifest"] = _manifest(kwargs.get("manifest"))
    return TrainConfig(name=name, run_dir=run_dir or f"runs/{name}", config=_model_config(config_json), **kwargs)


def _model_config(config_json: str | None) -> dict:
    """--config: a JSON object given inline or as a file; {} without it."""
    model_config = {}
    if config_json:
        try:
            text = config_json if config_json.lstrip().startswith("{") else Path(config_json).read_text()
        except OSError as error:
            raise click.BadParameter(f"{config_json}: {error.strerror}", param_hint="--config") from None
        try:
            model_config = json.loads(text)
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="--config") from None
    return model_config


@click.command()
@run_options("teacher", 30, 5e-4)
@click.option("--frame-weight", type=float, default=0.5, show_default=True, help="Weight of the frame loss.")
@click.option("--arch", type=click.Choice(["haaqinet", "haaqinet-student"]), default="haaqinet", show_default=True,
              help="Architecture trained on the labels (haaqinet-student: the small model, without a teacher).")
@click.option("--soft-target", "soft_targets", multiple=True,
              help="A model (NAME in weights/, or REGISTRY:NAME) whose clip scores are mixed into the labels; "
                   "repeat for an ensemble (their mean): distils them into the model trained.")
@click.option("--soft-weight", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Training target = (1 - w) * label + w * the soft targets' mean.")
@one_line_errors
def train(name: str, run_dir: str | None, config_json: str | None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Train the teacher (BEATs encoder + HAAQI-Net head) on the labelled training packages."""
    from haaqicli.training.train import train_teacher

    info = train_teacher(_config(name, run_dir, config_json, **kwargs), log=click.echo)
    click.echo(f"exported {info['name']} ({info['n_params']:,} parameters, sha256 {info['sha256'][:12]})")


@click.command()
@run_options("distilled", 30, 1e-3)
@click.option("--teacher", default="teacher", show_default=True, help="Registry name of the teacher.")
@click.option("--label-weight", type=float, default=1.0, show_default=True)
@one_line_errors
def distill(name: str, run_dir: str | None, config_json: str | None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Distil the small student from the teacher (hidden layers + outputs, plus labels where known)."""
    from haaqicli.training.train import distill_student

    info = distill_student(_config(name, run_dir, config_json, **kwargs), log=click.echo)
    click.echo(f"exported {info['name']} ({info['n_params']:,} parameters, sha256 {info['sha256'][:12]})")


PRETRAIN_OPTIONS = frozenset({"manifest", "run_dir", "epochs", "batch_size", "lr", "seed", "device", "threads",
                              "max_minutes", "resume", "config_json", "dropout", "init", "train_items"})


@click.command()
@run_options("pretrain", 10, 5e-4, keep=PRETRAIN_OPTIONS)
@click.option("--warmup-steps", type=click.IntRange(0), default=200, show_default=True)
@click.option("--out", default="data/pretrain/encoder.safetensors", show_default=True,
              type=click.Path(dir_okay=False), help="The pre-trained encoder (.safetensors; a .json record beside).")
@one_line_errors
def pretrain(run_dir: str | None, config_json: str | None, out: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Pre-train the teacher's BEATs encoder on a damage pretext (which processes each training clip went
    through; no HAAQI labels), for `haaqi train --init OUT`."""
    from haaqicli.training.pretrain import pretrain_encoder

    pretrain_encoder(_config("pretrain", run_dir, config_json, **kwargs), out, log=click.echo)


@click.command()
@click.option("--model", default="distilled", show_default=True, help="Registered model the corrector is fitted onto.")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False),
              help="[default: labels/manifest.parquet if present, else data/manifest.parquet]")
@click.option("--name", default="", help="Registry name of the result [default: the model's].")
@click.option("--source-dir", default=None, help="Registry of --model [default: weights/].")
@click.option("--weights-dir", default=None, help="Registry the result is exported to [default: weights/].")
@click.option("--hidden", type=click.IntRange(1, 1024), default=32, show_default=True, help="Corrector width.")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(0.0, min_open=True), default=1e-3, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0.0), default=0.05, show_default=True)
@click.option("--rank-weight", type=click.FloatRange(0.0), default=0.5, show_default=True,
              help="Weight of the in-batch ranking loss beside MSE (0 = off).")
@click.option("--clean-weight", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="Loss weight of clean (undegraded) training items against 1 for the rest.")
@click.option("--selection", default="validation-real:ufoai-music", show_default=True,
              help="Items that choose the epoch (SPLIT:PACKAGE or dev); reporting packages never choose.")
@click.option("--select-metric", type=click.Choice(["mse", "lcc", "srcc"]), default="lcc", show_default=True)
@TRAIN_ITEMS_OPTION
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@one_line_errors
def correct(**kwargs) -> None:  # type: ignore[no-untyped-def]
    """Fit a corrector of the score from signal descriptors (band dynamics and floors, decay speed,
    clipping plateaus, spectral flatness) onto a trained model, whose network stays frozen; exported
    as one model (the descriptors are computed inside it)."""
    from haaqicli.training.corrector import CorrectorConfig, fit_corrector

    kwargs["manifest"] = _manifest(kwargs.get("manifest"))
    info = fit_corrector(CorrectorConfig(**kwargs), log=click.echo)
    click.echo(f"exported {info['name']} ({info['n_params']:,} parameters, sha256 {info['sha256'][:12]})")


@click.command()
@click.option("--model", "names", multiple=True, default=("teacher", "distilled"), show_default=True)
@click.option("--manifest", default=None, type=click.Path(dir_okay=False),
              help="[default: labels/manifest.parquet if present, else data/manifest.parquet]")
@click.option("--split", "splits", multiple=True, default=("validation-real", "validation"), show_default=True,
              help="Splits to evaluate on (repeatable); a split without labels is skipped with a note.")
@click.option("--weights-dir", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="As in `haaqi score --precision`: int8 runs the encoder's linear layers on int8 (CPU only).")
@click.option("--exclude-package", "exclude", multiple=True,
              help="Leave this package's items out (repeatable), e.g. the one that chose the checkpoints.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Also write JSON.")
@click.option("--record", is_flag=True, help="Store the overall metrics in the weights manifest (haaqi models).")
@one_line_errors
def evaluate(names: tuple[str, ...], manifest: str | None, splits: tuple[str, ...], weights_dir: str | None,
             device: str, precision: str, exclude: tuple[str, ...], json_path: str | None, record: bool) -> None:
    """LCC, SRCC, MSE and bias against the exact HAAQI on the validation splits: overall, per package,
    degradation family, severity and profile, within-profile LCC/SRCC and the clean-normal mean."""
    from haaqicli.data.labels import labelled_manifest
    from haaqicli.training.train import evaluate_model, format_evaluation
    from haaqicli.util.errors import HaaqiError

    if record and precision != "float32":
        raise click.UsageError("--record stores the shipped (float32) model's figures: leave out --precision")
    path = _manifest(manifest)
    labelled = labelled_manifest(Path(path))
    labelled = labelled[labelled["label"].notna()]
    present = [s for s in splits if (labelled["split"] == s).any()]
    for split in splits:
        if split not in present:
            click.echo(f"split {split}: no labelled items in {path}, skipped", err=True)
    if not present:
        raise HaaqiError(f"{path}: no labelled items in split(s) {', '.join(splits)}")
    results = [evaluate_model(name, path, split, weights_dir, device, exclude_packages=exclude, precision=precision)
               for split in present for name in names]
    for result in results:
        click.echo(format_evaluation(result))
        click.echo("")
    if json_path:
        from haaqicli.util.atomic import atomic_write

        text = json.dumps(results, indent=2)
        atomic_write(Path(json_path), lambda tmp: tmp.write_text(text))
    if record:
        from haaqicli.models.registry import record_metrics

        key = "" if not exclude else f" without {','.join(exclude)}"  # figures of a part are not the split's
        for result in results:
            record_metrics(result["model"], result["split"] + key,
                           {**result["overall"], "packages": result["packages"]}, weights_dir)


@click.command()
@click.option("--manifest", default=None, type=click.Path(dir_okay=False),
              help="[default: labels/manifest.parquet if present, else data/manifest.parquet]")
@click.option("--out", "out_dir", default="runs/ablation", show_default=True,
              help="Folder for the rows' checkpoints, weights and the table (ablation.md, ablation.json).")
@click.option("--rows", default="baseline,terms,conditioning,ranking", show_default=True,
              help="Rows to train (cumulative: each adds its change to the rows before it); "
                   "pretraining starts them from --pretrained (haaqi pretrain); musicnn adds the frozen "
                   "musicnn content prior (make musicnn first).")
@click.option("--arch", type=click.Choice(["haaqinet", "haaqinet-student"]), default="haaqinet-student",
              show_default=True, help="Architecture every row trains on the labels.")
@click.option("--config", "config_json", default=None, help="Base model config JSON (file or string).")
@click.option("--selection", default="validation-real:ufoai-music", show_default=True,
              help="Items that choose each row's checkpoint (reporting packages never do).")
@click.option("--select-metric", type=click.Choice(["mse", "lcc", "srcc"]), default="mse", show_default=True,
              help="The selection items' figure that picks each row's checkpoint.")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Time budget of each row.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(0), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--bands", type=click.IntRange(1, 128), default=32, show_default=True,
              help="Band count of the conditioning row.")
@click.option("--rank-weight", type=click.FloatRange(0.0, min_open=True), default=0.5, show_default=True,
              help="Ranking-loss weight of the ranking row.")
@click.option("--learning-curve", default=None,
              help="Comma-separated training item counts (>= 3): train the --curve-row on each and fit LCC "
                   "against log10(items).")
@click.option("--curve-row", default="ranking", show_default=True, help="Row whose settings the curve trains.")
@click.option("--content-prior-weights", default=None, type=click.Path(dir_okay=False),
              help="The musicnn row's converted prior weights [default: data/musicnn/MSD_musicnn.safetensors].")
@click.option("--content-prior-sha256", default=None, help="Their expected sha256 [default: the pinned one].")
@click.option("--release", multiple=True, help="Registered model evaluated beside the rows (repeatable).")
@TRAIN_ITEMS_OPTION
@INIT_OPTION
@click.option("--pretrained", default=None, type=click.Path(dir_okay=False),
              help="The pretraining row's encoder (`haaqi pretrain --out`; rows from pretraining on start from it; "
                   "--arch haaqinet).")
@click.option("--resume", is_flag=True, help="Continue each row from its last checkpoint.")
@one_line_errors
def ablate(config_json: str | None, rows: str, learning_curve: str | None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Train the ablation rows (baseline, +terms, +conditioning, +ranking; +pretraining, +musicnn on request)
    with one budget, choose checkpoints on the selection items and write one table of `haaqi evaluate`
    figures on the reporting packages; optionally a learning curve."""
    from haaqicli.training.ablation import AblationConfig, run_ablation

    counts: tuple[int, ...] = ()
    if learning_curve:
        try:
            counts = tuple(int(n) for n in learning_curve.split(",") if n.strip())
        except ValueError:
            raise click.BadParameter(f"{learning_curve!r}: expected item counts like 500,1000,2000",
                                     param_hint="--learning-curve") from None
        if any(n < 1 for n in counts):
            raise click.BadParameter("item counts must be positive", param_hint="--learning-curve")
    kwargs["manifest"] = _manifest(kwargs.get("manifest"))
    run_ablation(AblationConfig(rows=tuple(r.strip() for r in rows.split(",") if r.strip()),
                                config=_model_config(config_json),
                                learning_curve=counts, **kwargs), log=click.echo)
