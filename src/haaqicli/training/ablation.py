"""Ablations and learning curves of the model changes, each row trained with one budget and measured
with `evaluate_model` (what `haaqi evaluate` prints).

Rows are cumulative, in ROWS order: baseline (the shipped design), +terms (sub-term heads combined by
HAAQI's formula), +conditioning (hearing-loss band conditioning), +ranking (a ranking loss beside MSE),
+pretraining (the rows from here on start from the encoder `haaqi pretrain` wrote: `--pretrained FILE`,
with `--arch haaqinet`, whose encoder it is; opt-in), +musicnn (the frozen musicnn content prior beside
the encoder features; opt-in, as its weights come from `make musicnn`).
Every row trains the same architecture from the same seed, with the same epochs / time limit, and keeps
the checkpoint chosen on the selection items (the ufoai-music part of validation-real by default). The
table reports on what never steers a choice: validation-real without the selection packages
(nexuiz-music) and the game-music validation split.

The learning curve trains one row on the first N items of a fixed shuffle of the training items
(nested: each point adds labels) and fits LCC = a + b * log10(N) to say what more labels predict.
Everything is written under `out_dir` (its own weights folder: the shipped weights are never touched).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from haaqicli.models.registry import default_weights_dir
from haaqicli.util.atomic import atomic_write
from haaqicli.util.errors import HaaqiError

# Row -> the TrainConfig settings it adds; each row keeps the ones before it (cumulative).
ROWS: dict[str, dict[str, Any]] = {
    "baseline": {"terms": False, "bands": 0, "rank_weight": 0.0},
    "terms": {"terms": True},
    "conditioning": {"bands": 32},
    "ranking": {"rank_weight": 0.5},
    # starts the rows from here on from `haaqi pretrain`'s encoder (AblationConfig.pretrained; teacher arch)
    "pretraining": {"init": "pretrained"},
    "musicnn": {"content_prior": "musicnn"},
}
DEFAULT_ROWS = ("baseline", "terms", "conditioning", "ranking")  # musicnn needs its converted weights
REPORT_SPLITS = ("validation-real", "validation")
MIN_CURVE_POINTS = 3


@dataclass
class AblationConfig:
    manifest: str
    out_dir: str = "runs/ablation"
    rows: Sequence[str] = DEFAULT_ROWS
    arch: str = "haaqinet-student"  # the cheap model: rows compare designs, not sizes
    config: dict[str, Any] = field(default_factory=dict)  # base model config; empty = the registry default
    selection: str = "validation-real:ufoai-music"
    select_metric: str = "mse"
    epochs: int = 10
    max_minutes: float | None = None  # per row: the one budget every row gets
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 200
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    bands: int = 32  # band count of the conditioning row
    rank_weight: float = 0.5  # ranking-loss weight of the ranking row
    learning_curve: Sequence[int] = ()  # training item counts; empty = no curve
    curve_row: str = "ranking"  # the row whose settings the curve trains
    release: Sequence[str] = ()  # registered models evaluated beside the rows (e.g. teacher, distilled)
    content_prior_weights: str | None = None  # the musicnn row's converted weights (None: make musicnn's)
    content_prior_sha256: str | None = None  # their expected sha256 (None: the pinned one)
    weights_dir: str | None = None  # where the release models are (default: the shipped weights)
    resume: bool = False
    init: str | None = None  # every row (and curve point) warm-starts from this model: one start for all
    pretrained: str | None = None  # the pretraining row's encoder (`haaqi pretrain --out`)
    train_items: int | None = None  # every row trains on the first N items of the fixed shuffle (None: all)


def row_settings(rows: Sequence[str], bands: int = 32, rank_weight: float = 0.5,
                 pretrained: str | None = None) -> dict[str, dict[str, Any]]:
    """Each requested row's cumulative TrainConfig settings, in ROWS order (`bands`, `rank_weight` and
    `pretrained` set the conditioning, ranking and pretraining rows)."""
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise HaaqiError(f"--rows: unknown row(s) {', '.join(unknown)} (known: {', '.join(ROWS)})")
    if "pretraining" in rows and not pretrained:
        raise HaaqiError("--rows pretraining: name the pre-trained encoder with --pretrained FILE (haaqi pretrain)")
    chosen = {"bands": bands, "rank_weight": rank_weight, "init": pretrained}
    settings, so_far = {}, {}
    for name, adds in ROWS.items():
        so_far = {**so_far, **{k: (chosen[k] if k in chosen and v else v) for k, v in adds.items()}}
        if name in rows:
            settings[name] = dict(so_far)
    return settings


def _selection_packages(selection: str) -> list[str]:
    split, _, names = selection.partition(":")
    return [p for p in names.split(",") if p] if split == "validation-real" else []


def _portable(path: Path) -> str:
    """`path` relative to the working directory where it lies under it: recipes are recorded with the
    weights, and a checkout's absolute path says nothing on another machine."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _train_config(config: AblationConfig, name: str, settings: dict[str, Any], **extra: Any):  # type: ignore[no-untyped-def]
    # lazy: torch, pandas only where this path runs (start-up time)
    from haaqicli.training.train import TrainConfig

    settings = dict(settings)  # the caller's row settings stay whole (init is taken out below)
    out = Path(config.out_dir)
    return TrainConfig(name=name, manifest=config.manifest, run_dir=str(out / "runs" / name),
                       weights_dir=str(out / "weights"), epochs=config.epochs, batch_size=config.batch_size,
                       lr=config.lr, warmup_steps=config.warmup_steps, seed=config.seed, device=config.device,
                       threads=config.threads, max_minutes=config.max_minutes, resume=config.resume,
                       config=dict(config.config), arch=config.arch, selection=config.selection,
                       select_metric=config.select_metric,
                       init=settings.pop("init", None) or config.init,  # the pretraining row's, else --init's
                       # a registered init is a release model, beside the --release ones, not a row
                       init_weights_dir=_portable(Path(config.weights_dir or default_weights_dir())),
                       content_prior_weights=config.content_prior_weights,
                       content_prior_sha256=config.content_prior_sha256,
                       # a learning-curve point names its own count
                       train_items=extra.pop("train_items", config.train_items),
                       **settings, **extra)


def _report(config: AblationConfig, name: str, weights_dir: str | None, log: Callable[[str], None]
            ) -> dict[str, Any]:
    """`evaluate_model` on each reporting set that has labels."""
    # lazy: torch, pandas only where this path runs (start-up time)
    from haaqicli.training.train import evaluate_model

    excluded = _selection_packages(config.selection)
    reports = {}
    for split in REPORT_SPLITS:
        try:
            reports[split] = evaluate_model(name, config.manifest, split, weights_dir, config.device,
                                            exclude_packages=excluded if split == "validation-real" else ())
        except HaaqiError as error:  # a split without labels (yet): noted, the others still report
            log(f"{name}: {split} not reported ({error})")
    return reports


def _summary(reports: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of each report, plus per-family bias (and, for term heads, per sub-term)."""
    return {split: {"packages": r["packages"], **{k: r["overall"][k] for k in ("n", "lcc", "srcc", "mse", "bias")},
                    "within_lcc": r["within_profile"]["lcc"], "clean_normal": r["clean_normal"]["predicted"],
                    "family_bias": {k: m["bias"] for k, m in r.get("by_degradation", {}).items()},
                    **({"term_errors": r["term_errors"]} if "term_errors" in r else {})}
            for split, r in reports.items()}


def run_ablation(config: AblationConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate every row (and the learning curve); write ablation.json and ablation.md."""
    # lazy: torch, pandas only where this path runs (start-up time)
    from haaqicli.training.train import train_teacher

    settings = row_settings(config.rows, config.bands, config.rank_weight, config.pretrained)
    if config.learning_curve and len(set(config.learning_curve)) < MIN_CURVE_POINTS:
        raise HaaqiError(f"--learning-curve: at least {MIN_CURVE_POINTS} distinct item counts")
    if config.learning_curve and config.curve_row not in ROWS:
        raise HaaqiError(f"--curve-row {config.curve_row}: known rows are {', '.join(ROWS)}")
    out = Path(config.out_dir)
    weights = str(out / "weights")
    result: dict[str, Any] = {"config": {k: v for k, v in dataclasses.asdict(config).items()},
                              "rows": [], "release": [], "curve": []}
    for name, row in settings.items():
        log(f"== row {name}: {json.dumps(row)}")
        info = train_teacher(_train_config(config, f"ablation-{name}", row), log=log)
        result["rows"].append({"row": name, "settings": row, "items": info["training"]["items"],
                               "n_params": info["n_params"], "selection": info["metrics"]["dev"],
                               "report": _summary(_report(config, f"ablation-{name}", weights, log))})
    for name in config.release:
        result["release"].append({"row": f"release:{name}",
                                  "report": _summary(_report(config, name, config.weights_dir, log))})
    if config.learning_curve:
        curve_settings = row_settings([config.curve_row], config.bands, config.rank_weight, config.pretrained)[
            config.curve_row]
        for count in sorted(set(config.learning_curve)):
            log(f"== learning curve: {count} training items ({config.curve_row})")
            info = train_teacher(_train_config(config, f"curve-{count}", curve_settings, train_items=count), log=log)
            result["curve"].append({"items": count, "selection": info["metrics"]["dev"],
                                    "report": _summary(_report(config, f"curve-{count}", weights, log))})
        result["curve"] = curve_with_row(result)
        result["curve_fit"] = curve_fit(result["curve"])
    text = format_ablation(result)
    atomic_write(out / "ablation.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=float)))
    atomic_write(out / "ablation.md", lambda tmp: tmp.write_text(text + "\n"))
    log(text)
    return result


def curve_with_row(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The curve's points plus the curve row itself where this run trained it on more items than any
    point: it is the same recipe on every training item, so the curve's largest point at no extra cost."""
    row = next((r for r in result["rows"] if r["row"] == result["config"]["curve_row"]), None)
    points = [p for p in result["curve"] if "row" not in p]
    if row is not None and all(p["items"] < row["items"] for p in points):
        points.append({"items": row["items"], "selection": row["selection"], "report": row["report"],
                       "row": row["row"]})
    return sorted(points, key=lambda p: p["items"])


def curve_fit(curve: list[dict[str, Any]], split: str = "validation-real") -> dict[str, Any]:
    """LCC = a + b * log10(items) by least squares over the curve's points on `split`, and what it
    predicts at 2x and 4x the largest count (an extrapolation: a trend, not a promise)."""
    points = [(p["items"], p["report"][split]["lcc"]) for p in curve
              if split in p["report"] and math.isfinite(p["report"][split]["lcc"])]
    if len(points) < 2:
        return {"split": split, "points": len(points)}
    x = np.log10([n for n, _ in points])
    y = np.array([lcc for _, lcc in points])
    b, a = np.polyfit(x, y, 1)
    top = max(n for n, _ in points)
    return {"split": split, "points": len(points), "a": float(a), "b_per_decade": float(b),
            "predicted": {str(n): float(a + b * math.log10(n)) for n in (2 * top, 4 * top)}}


def _cells(summary: dict[str, Any]) -> list[str]:
    cells = []
    for split in REPORT_SPLITS:
        m = summary.get(split)
        cells += (["-"] * 5 if m is None else
                  [str(m["n"]), f"{m['lcc']:.4f}", f"{m['srcc']:.4f}", f"{m['mse']:.5f}", f"{m['within_lcc']:.4f}"])
    clean = summary.get("validation-real", {}).get("clean_normal", float("nan"))
    return [*cells, f"{clean:.3f}"]


def format_ablation(result: dict[str, Any]) -> str:
    """One Markdown table: a line per row (and release model), LCC/SRCC/MSE/within-profile LCC on each
    reporting set, the selection LCC and the clean-normal mean; then the learning curve."""
    head = ["row", "items", "select LCC"]
    for split in REPORT_SPLITS:
        head += [f"{split} n", "LCC", "SRCC", "MSE", "within LCC"]
    head.append("clean/normal")
    lines = [f"Ablation ({result['config']['arch']}, selection {result['config']['selection']} by "
             f"{result['config'].get('select_metric', 'mse')}, "
             f"{result['config']['epochs']} epochs"
             + (f", {result['config']['max_minutes']} min" if result['config']['max_minutes'] else "")
             + " per row; reported on packages that never chose a checkpoint)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        lines.append("| " + " | ".join([row["row"], str(row["items"]), f"{row['selection'].get('lcc', float('nan')):.4f}",
                                        *_cells(row["report"])]) + " |")
    for row in result["release"]:
        lines.append("| " + " | ".join([row["row"], "-", "-", *_cells(row["report"])]) + " |")
    if result.get("curve"):
        lines += ["", f"Learning curve ({result['config']['curve_row']} row): training items vs LCC", "",
                  "| items | select LCC | validation-real LCC | validation LCC |", "|---|---|---|---|"]
        for point in result["curve"]:
            rep = point["report"]
            items = f"{point['items']} (row {point['row']})" if "row" in point else str(point["items"])
            lines.append(f"| {items} | {point['selection'].get('lcc', float('nan')):.4f} | "
                         + " | ".join(f"{rep[s]['lcc']:.4f}" if s in rep else "-" for s in REPORT_SPLITS) + " |")
        fit = result.get("curve_fit", {})
        if "b_per_decade" in fit:
            lines += ["", f"Fit on {fit['split']}: LCC = {fit['a']:.4f} + {fit['b_per_decade']:.4f} x log10(items); "
                      "predicts " + ", ".join(f"{v:.4f} at {k} items" for k, v in fit["predicted"].items())
                      + " (an extrapolation)"]
    return "\n".join(lines)
