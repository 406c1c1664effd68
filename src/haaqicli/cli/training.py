"""`haaqi train`, `haaqi distill`, `haaqi evaluate`: thin shells over :mod:`haaqicli.train`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from haaqicli.cli.common import one_line_errors


def run_options(default_name: str, default_epochs: int, default_lr: float):  # type: ignore[no-untyped-def]
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
            click.option("--init", default=None,
                         help="Warm start: a registered model name or a .safetensors file; every tensor whose "
                              "name and shape match is copied before training."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _manifest(manifest: str | None) -> str:
    from haaqicli.cli.dataset import default_manifest

    return str(manifest or default_manifest())


def _config(name: str, run_dir: str | None, config_json: str | None, **kwargs):  # type: ignore[no-untyped-def]
    from haaqicli.train import TrainConfig

    kwargs["manifest"] = _manifest(kwargs.get("manifest"))
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
    return TrainConfig(name=name, run_dir=run_dir or f"runs/{name}", config=model_config, **kwargs)


@click.command()
@run_options("teacher", 30, 5e-4)
@click.option("--frame-weight", type=float, default=0.5, show_default=True, help="Weight of the frame loss.")
@one_line_errors
def train(name: str, run_dir: str | None, config_json: str | None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Train the teacher (BEATs encoder + HAAQI-Net head) on the labelled training packages."""
    from haaqicli.train import train_teacher

    info = train_teacher(_config(name, run_dir, config_json, **kwargs), log=click.echo)
    click.echo(f"exported {info['name']} ({info['n_params']:,} parameters, sha256 {info['sha256'][:12]})")


@click.command()
@run_options("distilled", 30, 1e-3)
@click.option("--teacher", default="teacher", show_default=True, help="Registry name of the teacher.")
@click.option("--label-weight", type=float, default=1.0, show_default=True)
@one_line_errors
def distill(name: str, run_dir: str | None, config_json: str | None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Distil the small student from the teacher (hidden layers + outputs, plus labels where known)."""
    from haaqicli.train import distill_student

    info = distill_student(_config(name, run_dir, config_json, **kwargs), log=click.echo)
    click.echo(f"exported {info['name']} ({info['n_params']:,} parameters, sha256 {info['sha256'][:12]})")


@click.command()
@click.option("--model", "names", multiple=True, default=("teacher", "distilled"), show_default=True)
@click.option("--manifest", default=None, type=click.Path(dir_okay=False),
              help="[default: labels/manifest.parquet if present, else data/manifest.parquet]")
@click.option("--split", "splits", multiple=True, default=("validation-real", "validation"), show_default=True,
              help="Splits to evaluate on (repeatable); a split without labels is skipped with a note.")
@click.option("--weights-dir", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Also write JSON.")
@click.option("--record", is_flag=True, help="Store the overall metrics in the weights manifest (haaqi models).")
@one_line_errors
def evaluate(names: tuple[str, ...], manifest: str | None, splits: tuple[str, ...], weights_dir: str | None,
             device: str, json_path: str | None, record: bool) -> None:
    """LCC, SRCC, MSE and bias against the exact HAAQI on the validation splits: overall, per package,
    degradation family, severity and profile, within-profile LCC/SRCC and the clean-normal mean."""
    from haaqicli.data.labels import labelled_manifest
    from haaqicli.errors import HaaqiError
    from haaqicli.train import evaluate_model, format_evaluation

    path = _manifest(manifest)
    labelled = labelled_manifest(Path(path))
    labelled = labelled[labelled["label"].notna()]
    present = [s for s in splits if (labelled["split"] == s).any()]
    for split in splits:
        if split not in present:
            click.echo(f"split {split}: no labelled items in {path}, skipped", err=True)
    if not present:
        raise HaaqiError(f"{path}: no labelled items in split(s) {', '.join(splits)}")
    results = [evaluate_model(name, path, split, weights_dir, device) for split in present for name in names]
    for result in results:
        click.echo(format_evaluation(result))
        click.echo("")
    if json_path:
        from haaqicli.atomic import atomic_write

        text = json.dumps(results, indent=2)
        atomic_write(Path(json_path), lambda tmp: tmp.write_text(text))
    if record:
        from haaqicli.models.registry import record_metrics

        for result in results:
            record_metrics(result["model"], result["split"], {**result["overall"], "packages": result["packages"]},
                           weights_dir)
