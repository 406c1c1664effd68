"""Training, distillation and evaluation of the HAAQI-Net models (nanoGPT-style: one clear loop).

- :func:`train_teacher`: BEATs encoder + HAAQI-Net head on labelled clips (or the student architecture,
  `arch`). Loss = clip MSE + frame MSE (every frame score is pulled to the clip label, and it really
  produces gradients), plus the sub-terms' MSE for term-head models and an optional ranking term
  (:mod:`haaqicli.training.objectives`).
- :func:`distill_student`: the student learns the teacher's hidden layers and outputs (distillBEATs /
  DistilHuBERT style) on labelled *and* unlabelled degraded clips, plus the true label where known.
- :func:`evaluate_model`: LCC, SRCC and MSE on the validation packages, overall, by degradation family
  and by hearing-loss severity, next to the paper's figures.

Model selection: by default a small "dev" part of the *training* packages (whole source tracks, by
hash) decides which checkpoint is kept; `selection="validation-real:ufoai-music"` decides on that
package instead. The reporting packages (nexuiz-music) and the game validation split never decide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from haaqicli.audio.bandwidth import BANDWIDTH_GROUPS, bandwidth_group, content_bandwidth
from haaqicli.data.packages import REPORTING_ONLY_PACKAGES, VALIDATION_REAL
from haaqicli.models.base import HAAQINetOutput
from haaqicli.models.haaqinet import HAAQINet
from haaqicli.models.musicnn import load_converted
from haaqicli.models.precision import model_label
from haaqicli.models.registry import (
    ModelInfo,
    architectures,
    build_model,
    load_model,
    registry_source,
    save_model,
)
from haaqicli.models.student import StudentNet, distillation_loss
from haaqicli.reference.formula import TERMS
from haaqicli.training.objectives import Objective, label_objective
from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import DEFAULT_SPL, MODEL_SAMPLE_RATE
from haaqicli.util.devices import model_device, resolve_device
from haaqicli.util.errors import HaaqiError
from haaqicli.util.hashing import content_hash

# HAAQI-Net (Wisnu et al. 2024), Table results on their test set, for comparison only.
PAPER_FIGURES = {
    "teacher": {"lcc": 0.9368, "srcc": 0.9486, "mse": 0.0064},
    "distilled": {"lcc": 0.9071, "srcc": 0.9307, "mse": 0.0091},
}
DEV_FRACTION = 0.06


@dataclass
class TrainConfig:
    name: str = "teacher"  # registry name the weights are exported under
    manifest: str = "data/manifest.parquet"
    run_dir: str = "runs/teacher"
    weights_dir: str | None = None
    epochs: int = 30
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    frame_weight: float = 0.5
    label_weight: float = 1.0  # distillation only: weight of the true-label term
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_minutes: float | None = None
    resume: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # model config; empty = the registry default
    teacher: str = "teacher"  # distillation only: registry name of the teacher
    init: str | None = None  # warm start: registry name or .safetensors file (matching tensors copied)
    init_weights_dir: str | None = None  # where a registered `init` is (None: weights_dir)
    dropout: float | None = None  # overrides every dropout rate of the model config; None = the config's
    arch: str = "haaqinet"  # train_teacher: the architecture trained on labels (a student needs no teacher)
    terms: bool | None = None  # sets the head's term heads on/off; None = the model config's
    bands: int | None = None  # sets the head's hearing-loss band conditioning (0 = off); None = the config's
    term_weight: float = 1.0  # weight of the sub-term loss (term-head models)
    rank_weight: float = 0.0  # weight of the ranking loss beside MSE (0 = off)
    rank_loss: str = "pairwise"  # "pairwise" (RankNet on label-ordered pairs) or "correlation" (1 - LCC)
    clean_weight: float = 1.0  # a clean training item is drawn this many times as often as another (`epoch_order`)
    clip_group: int = 1  # batches made of runs of this many versions of one clip (`group_by_clip`)
    selection: str = "dev"  # checkpoints chosen on: "dev" (held-out training tracks) or "SPLIT:PACKAGE"
    train_items: int | None = None  # learning curves: the first N items of a fixed shuffle of the training items
    plus_augmentation: str | None = None  # with train_items: also every item with this content augmentation
    select_metric: str = "mse"  # the selection items' figure that picks the checkpoint: mse, lcc or srcc
    content_prior: str | None = None  # "musicnn" or "" (off); None = the model config's
    content_prior_weights: str | None = None  # converted prior weights; None = data/musicnn/MSD_musicnn.safetensors
    content_prior_sha256: str | None = None  # their expected sha256; None = the pinned one of that file name
    soft_targets: tuple[str, ...] = ()  # train_teacher: models whose mean clip score is mixed into the labels
    soft_weight: float = 0.5  # the mix: target = (1 - w) * label + w * that mean

    @property
    def init_registry(self) -> str | None:
        """The registry folder a registered `init` name is looked up in."""
        return self.init_weights_dir or self.weights_dir


# ----------------------------------------------------------------------------------------------
# Metrics


def metrics(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """LCC (Pearson), SRCC (Spearman) and MSE, the figures HAAQI-Net reports, and the bias (mean of
    predicted - true): a family the model cannot hear (e.g. reverb) shows up as a large bias."""
    # lazy: scipy only where this path runs (start-up time)
    from scipy import stats

    predicted = np.asarray(predicted, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if len(predicted) < 3 or np.std(predicted) == 0 or np.std(target) == 0:
        lcc = srcc = float("nan")
    else:
        lcc = float(stats.pearsonr(predicted, target)[0])
        srcc = float(stats.spearmanr(predicted, target)[0])
    error = predicted - target
    return {"n": int(len(target)), "lcc": lcc, "srcc": srcc, "mse": float(np.mean(error**2)),
            "bias": float(np.mean(error)) if len(error) else float("nan")}


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class Split:
    """Labelled clips. `waves` holds calibrated model inputs at the model's rate, (M, T) float32, often
    a read-only memory map; a subset keeps row indices into it (`rows`) instead of copying the audio."""

    waves: np.ndarray | torch.Tensor
    audiograms: torch.Tensor  # (N, 8) dB HL
    labels: torch.Tensor  # (N,) HAAQI
    meta: pd.DataFrame
    rows: np.ndarray | None = None  # the rows of `waves` this split holds, in order; None = all
    terms: torch.Tensor | None = None  # (N, 4) HAAQI sub-terms (TERMS order), NaN where not labelled

    def __len__(self) -> int:
        return len(self.labels)

    def wave_batch(self, index: np.ndarray | torch.Tensor | range) -> torch.Tensor:
        """The waves of items `index` (positions in this split) as a float32 tensor."""
        index = np.asarray(index, dtype=np.int64)
        if self.rows is not None:
            index = self.rows[index]
        if isinstance(self.waves, torch.Tensor):
            return self.waves[torch.from_numpy(index)]
        return torch.from_numpy(np.ascontiguousarray(self.waves[index], dtype=np.float32))

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(waves, audiograms) of consecutive items, `batch_size` at a time, in order."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield self.wave_batch(range(start, stop)), self.audiograms[start:stop]

    def subset(self, mask: np.ndarray) -> Split:
        index = np.flatnonzero(mask)
        rows = index if self.rows is None else self.rows[index]
        return Split(self.waves, self.audiograms[index], self.labels[index],
                     self.meta.iloc[index].reset_index(drop=True), rows,
                     None if self.terms is None else self.terms[index])

    def term_batch(self, index: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """Sub-terms of items `index`, (k, 4) with NaN rows where unknown; None without term labels."""
        return None if self.terms is None else self.terms[torch.as_tensor(np.asarray(index, dtype=np.int64))]


def load_split(manifest: str | Path, split: str, log: Callable[[str], None] | None = print,
               items: int | None = None, seed: int = 0, plus_augmentation: str | None = None,
               always: Callable[[pd.DataFrame], np.ndarray] | None = None) -> Split:
    """The labelled items of a manifest split, each presented at its level; the waves stay an int16
    memory map on disk (see `load_split_arrays`), whose disk use is logged. `items`: the first that
    many of a seeded shuffle (as `first_items`) of those outside `always(meta)`'s mask, and those
    inside it; the others never regenerated."""
    # lazy: scipy, pandas, joblib only where this path runs (start-up time)
    from haaqicli.data.arrays import load_split_arrays

    waves, audiograms, labels, meta = load_split_arrays(manifest, split, log=log, items=items, seed=seed,
                                                        plus_augmentation=plus_augmentation, always=always)
    if len(labels) == 0:
        raise HaaqiError(f"{manifest}: no labelled items in split {split!r}")
    return Split(waves, torch.from_numpy(np.asarray(audiograms, dtype=np.float32)),
                 torch.from_numpy(np.asarray(labels, dtype=np.float32)), meta.reset_index(drop=True),
                 terms=term_labels(meta))


def term_labels(meta: pd.DataFrame) -> torch.Tensor | None:
    """The label shards' sub-terms of these items as (N, 4) float32 (NaN where an item has none)."""
    if not set(TERMS) <= set(meta.columns):
        return None
    return torch.from_numpy(np.array(meta[list(TERMS)].apply(pd.to_numeric, errors="coerce"), dtype=np.float32))


def load_train_dev(manifest: str | Path, log: Callable[[str], None] | None = print, items: int | None = None,
                   seed: int = 0) -> tuple[Split, Split]:
    """The labelled training split, divided into training items and dev tracks (views of one array).
    `items`: only the first that many training items of a seeded shuffle of those outside the dev
    tracks (as `first_items` on the training part), which with the dev tracks are all that is
    regenerated into the cache."""
    data = load_split(manifest, "train", log, items=items, seed=seed, always=dev_mask)
    mask = dev_mask(data.meta)
    return data.subset(~mask), data.subset(mask)


def selection_split(manifest: str | Path, selection: str, log: Callable[[str], None] | None = print) -> Split:
    """The labelled items named by ``SPLIT:PACKAGE[,PACKAGE...]`` that choose checkpoints. Only
    validation-real packages that are not reporting-only may steer a choice (ufoai-music): the
    reporting packages (nexuiz-music) and the game validation split never do."""
    split, _, names = selection.partition(":")
    packages = [p for p in names.split(",") if p]
    if split != VALIDATION_REAL or not packages:
        raise HaaqiError(f"--selection {selection}: expected dev or {VALIDATION_REAL}:PACKAGE[,PACKAGE]")
    reporting = sorted(set(packages) & set(REPORTING_ONLY_PACKAGES))
    if reporting:
        raise HaaqiError(f"--selection {selection}: {', '.join(reporting)} is for reporting only, it never "
                         "chooses a checkpoint")
    data = load_split(manifest, split, log)
    chosen = data.subset(data.meta["package"].isin(packages).to_numpy())
    if not len(chosen):
        raise HaaqiError(f"--selection {selection}: no labelled items of {', '.join(packages)} in {manifest}")
    return chosen


def first_items(data: Split, count: int, seed: int = 0) -> Split:
    """The first `count` items of a fixed shuffle (seeded): smaller counts are subsets of larger
    ones, so a learning curve adds labels instead of drawing new ones."""
    # lazy: scipy, pandas, joblib only where this path runs (start-up time)
    from haaqicli.data.arrays import first_of_shuffle

    return data.subset(first_of_shuffle(len(data), count, seed))


def load_train_selection(config: TrainConfig, log: Callable[[str], None] | None = print) -> tuple[Split, Split]:
    """(training items, checkpoint-selection items) of a run: with selection "dev" the held-out
    tracks of the training packages, else `selection_split`; `train_items` limits the training items
    (only the chosen training items, and the dev tracks, are regenerated into the cache)."""
    if config.plus_augmentation and config.train_items is None:
        raise HaaqiError(f"--plus-augmentation {config.plus_augmentation}: needs --train-items (without it every "
                         "training item is used)")
    if config.selection == "dev":
        if config.plus_augmentation:
            raise HaaqiError("--plus-augmentation: needs --selection validation-real:PACKAGE")
        train, select = load_train_dev(config.manifest, log, config.train_items, config.seed)
    else:
        train = load_split(config.manifest, "train", log, items=config.train_items, seed=config.seed,
                           plus_augmentation=config.plus_augmentation)
        select = selection_split(config.manifest, config.selection, log)
    return train, select


def dev_mask(meta: pd.DataFrame, fraction: float = DEV_FRACTION) -> np.ndarray:
    """Whole source tracks of the training packages held out for checkpoint selection."""
    sources = meta["source"].astype(str)
    buckets = sources.map(lambda s: int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
    return (buckets < fraction).to_numpy()


# ----------------------------------------------------------------------------------------------
# The loop


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _lr_at(step: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay over `progress` (0..1 of the run's step or time budget)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def predict(model: nn.Module, data: Split, batch_size: int = 32, device: torch.device | None = None) -> np.ndarray:
    return predict_with_terms(model, data, batch_size, device)[0]


@torch.inference_mode()
def predict_with_terms(model: nn.Module, data: Split, batch_size: int = 32, device: torch.device | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """Clip scores (N,) and, from a term-head model, its predicted sub-terms (N, 4), else None."""
    model.eval()
    device = device or next(model.parameters()).device
    scores, terms = [], []
    for wave, gram in data.batches(batch_size):
        out = model(wave.to(device), gram.to(device))
        scores.append(out.clip.float().cpu().numpy())
        if out.terms is not None:
            terms.append(out.terms.float().cpu().numpy())
    return (np.concatenate(scores) if scores else np.zeros(0)), (np.concatenate(terms) if terms else None)


def term_errors(meta: pd.DataFrame, predicted: np.ndarray, labelled: np.ndarray, column: str = "degradation"
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Which sub-term carries each family's error: per family and term, the bias (predicted - true)
    and MSE over items with labelled sub-terms (e.g. reverb should sit in cep_high/bm_sync5)."""
    families = meta[column].astype(str).str.split(":").str[0] if column in meta else pd.Series("all", index=meta.index)
    result: dict[str, dict[str, dict[str, float]]] = {}
    known = np.all(np.isfinite(labelled), axis=1)
    for family in sorted(families[known].unique()):
        rows = (families == family).to_numpy() & known
        error = predicted[rows] - labelled[rows]
        result[str(family)] = {term: {"n": int(rows.sum()), "bias": float(error[:, k].mean()),
                                      "mse": float(np.mean(error[:, k] ** 2))} for k, term in enumerate(TERMS)}
    return result


def clean_items(meta: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the items whose degradation is "identity" (the clean reference, content augmentations
    of it included)."""
    if "degradation" not in meta:
        return np.zeros(len(meta), dtype=bool)
    return meta["degradation"].eq("identity").to_numpy(dtype=bool, copy=True)


def epoch_order(train: Split, clean_weight: float, generator: torch.Generator, clip_group: int = 1) -> torch.Tensor:
    """The items of one epoch: a shuffle; with `clean_weight` != 1, as many draws with replacement in
    which a clean item is `clean_weight` times as likely as another. The training mix is ~4% clean,
    validation-real 25%, and what users score mostly clean: a model fed the mix leans degraded.
    With `clip_group` > 1 the drawn items come in runs of that many versions of one clip (`group_by_clip`)."""
    if clean_weight <= 0:
        raise HaaqiError(f"--clean-weight {clean_weight}: must be > 0")
    if clean_weight == 1.0:
        order = torch.randperm(len(train), generator=generator)
    else:
        weights = torch.where(torch.from_numpy(clean_items(train.meta)), float(clean_weight), 1.0)
        order = torch.multinomial(weights, len(train), replacement=True, generator=generator)
    if clip_group > 1:
        clips = torch.from_numpy(pd.factorize(train.meta["clip_id"])[0].astype(np.int64))
        order = group_by_clip(order, clips, clip_group, generator)
    return order


def group_by_clip(order: torch.Tensor, clips: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """`order` rearranged into runs of `size` items of one clip (the last run of a clip may take the next
    clip's first items), the runs shuffled: a batch then holds versions of the same music with different
    damage and hearing, so the ranking term compares damage with the music held fixed instead of
    comparing pieces. Clips are visited in a fresh random order, and the items within a clip keep
    `order`'s random order, so run boundaries differ between epochs; every drawn item stays, once."""
    clip_rank = torch.randperm(int(clips.max()) + 1, generator=generator)[clips[order]]
    grouped = order[torch.sort(clip_rank, stable=True).indices]
    runs = grouped.split(size)
    return torch.cat([runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()])


def fit(
    model: nn.Module,
    train: Split,
    dev: Split,
    config: TrainConfig,
    step_loss: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train `model` with AdamW + warmup/cosine, keep the checkpoint with the best dev figure
    (`config.select_metric`: lowest MSE, or highest LCC / SRCC).

    `step_loss(model, index)` returns the loss of the training items at `index` (a batch).

    `last.pt` (model, optimiser, step, RNG) is written every epoch and at the time limit, so a run
    stopped anywhere continues with `resume=True`. Returns the best dev metrics.
    """
    device = next(model.parameters()).device
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = max(1, len(train) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    state = {"epoch": 0, "step": 0, "best": {"mse": float("inf")}, "history": []}
    last = run_dir / "last.pt"
    if config.resume and last.exists():
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        state = json.loads(checkpoint["state"])
        torch.set_rng_state(checkpoint["rng"])
        log(f"resumed from {last} at epoch {state['epoch']}, step {state['step']}")
    started = time.time()
    generator = torch.Generator().manual_seed(config.seed + state["epoch"])
    out_of_time = False
    while state["epoch"] < config.epochs and not out_of_time:
        model.train()
        order = epoch_order(train, config.clean_weight, generator, config.clip_group)
        running, count = 0.0, 0
        for batch_start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
            index = order[batch_start : batch_start + config.batch_size]
            # With a time limit the schedule decays over whichever budget runs out first.
            progress = state["step"] / total_steps
            if config.max_minutes:
                progress = max(progress, (time.time() - started) / 60 / config.max_minutes)
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(state["step"], progress, config.lr, config.warmup_steps)
            loss, _ = step_loss(model, index)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            state["step"] += 1
            running += float(loss.detach())
            count += 1
            if config.max_minutes and (time.time() - started) / 60 > config.max_minutes:
                out_of_time = True
                break
        state["epoch"] += 0 if out_of_time else 1
        dev_metrics = metrics(predict(model, dev, device=device), dev.labels.numpy()) if len(dev) else {}
        entry = {"epoch": state["epoch"], "step": state["step"], "train_loss": running / max(count, 1), **dev_metrics}
        state["history"].append(entry)
        log(json.dumps(entry))
        if dev_metrics and selection_key(dev_metrics, config.select_metric) < selection_key(
                state["best"], config.select_metric):
            state["best"] = {**dev_metrics, "epoch": state["epoch"], "step": state["step"]}
            torch.save(model.state_dict(), run_dir / "best.pt")
        torch.save(
            {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "state": json.dumps(state),
             "rng": torch.get_rng_state()},
            last,
        )
    if (run_dir / "best.pt").exists():
        model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True))
    return state


SELECT_METRICS = ("mse", "lcc", "srcc")


def selection_key(figures: dict[str, Any], metric: str) -> float:
    """Smaller is better: MSE as it is, correlations negated; a missing or undefined figure never wins."""
    if metric not in SELECT_METRICS:
        raise HaaqiError(f"--select-metric {metric}: expected one of {', '.join(SELECT_METRICS)}")
    value = float(figures.get(metric, float("nan")))
    if not math.isfinite(value):
        return float("inf")
    return value if metric == "mse" else -value


DROPOUT_KEYS = ("dropout", "attention_dropout")


def with_dropout(model_config: dict[str, Any], rate: float | None) -> dict[str, Any]:
    """`model_config` with every dropout rate (encoder and head) set to `rate`; unchanged for None.

    A warm-started model that sees about one epoch in a CPU run underfits, so dropout there only costs
    time: it is ~30% of a teacher step (the attention-dropout masks)."""
    if rate is None:
        return model_config
    if not 0.0 <= rate < 1.0:
        raise HaaqiError(f"--dropout {rate}: must be in [0, 1)")
    return {part: ({k: (rate if k in DROPOUT_KEYS else v) for k, v in values.items()}
                   if part in ("encoder", "head") else values)
            for part, values in model_config.items()}


def with_head_options(model_config: dict[str, Any], terms: bool | None, bands: int | None) -> dict[str, Any]:
    """`model_config` with the head's term heads and band conditioning set where not None."""
    head = {**model_config.get("head", {}), **({"terms": bool(terms)} if terms is not None else {}),
            **({"bands": int(bands)} if bands is not None else {})}
    if bands is not None and bands < 0:
        raise HaaqiError(f"--bands {bands}: must be 0 (off) or a band count")
    return {**model_config, "head": head}


def model_config(config: TrainConfig, default: dict[str, Any]) -> dict[str, Any]:
    """The model config of a run: `config.config` (else the architecture's default) with its dropout,
    term-head, band-conditioning and content-prior options applied."""
    model_cfg = with_head_options(with_dropout(dict(config.config or default), config.dropout), config.terms,
                                  config.bands)
    if config.content_prior is not None:
        model_cfg = {**model_cfg, "head": {**model_cfg.get("head", {}), "content_prior": config.content_prior}}
    return model_cfg


def default_prior_weights() -> Path:
    """Where `make musicnn` writes the converted MSD_musicnn weights."""
    # lazy: scipy, pandas, soundfile only where this path runs (start-up time)
    from haaqicli.data.corpus import default_data_dir

    return default_data_dir() / "musicnn" / "MSD_musicnn.safetensors"


def build_for_run(arch: str, model_cfg: dict[str, Any], config: TrainConfig, device: torch.device,
                  log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model of `arch` on `device`; a head with a content prior gets the prior's converted
    weights (sha256-checked; the config takes the architecture they describe), frozen. Returns the
    model and, for the exported model's training record, the prior's provenance ({} without one)."""
    if not model_cfg.get("head", {}).get("content_prior"):
        return build_model(arch, model_cfg).to(device), {}
    path = Path(config.content_prior_weights) if config.content_prior_weights else default_prior_weights()
    if not path.is_file():
        raise HaaqiError(f"--content-prior {model_cfg['head']['content_prior']}: {path} missing "
                         "(make musicnn converts it from the musicnn wheel; or --content-prior-weights)")
    prior_cfg, state = load_converted(path, config.content_prior_sha256)
    model = build_model(arch, {**model_cfg, "head": {**model_cfg["head"], "prior": asdict(prior_cfg)}})
    model.content_prior.net.load_state_dict(state, strict=True)
    log(f"content prior: {model_cfg['head']['content_prior']} from {path} (frozen)")
    return model.to(device), {"content_prior": {"file": path.name, "sha256": content_hash(path), "frozen": True}}


def objective_of(config: TrainConfig):  # type: ignore[no-untyped-def]

    return Objective(config.frame_weight, config.term_weight, config.rank_weight, config.rank_loss)


def setup_run(config: TrainConfig) -> torch.device:
    """Seed, thread count and device of a training run (train, distil, pretrain)."""
    _seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    return resolve_device(config.device)


def widened_patch_embeddings(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                              log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """BEATs patch embeddings of `state` made fit a model whose patches span k times the mel bins
    (`input_patch_freq`): the square kernel is repeated over the k bands and divided by k, so a wide
    patch's token starts as the mean of the k square tokens it replaces (before the LayerNorm)."""
    widened = {}
    for name, kernel in state.items():
        target = own.get(name)
        if not name.endswith("patch_embedding.weight") or target is None or target.shape == kernel.shape:
            continue
        k = target.shape[-1] // kernel.shape[-1]
        if target.shape[:-1] == kernel.shape[:-1] and k > 1 and target.shape[-1] == k * kernel.shape[-1]:
            widened[name] = kernel.repeat(1, 1, 1, k) / k
            log(f"warm start: {name} widened from {kernel.shape[-1]} to {target.shape[-1]} mel bins")
    return widened


def warm_start(model: nn.Module, source: str, weights_dir: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Copy every tensor of `source` (a registered model, loaded with its sha256 checked, or a
    .safetensors file) whose name and shape match the model's; the rest keep their fresh values.
    This lets a smaller variant (fewer layers) start from a trained model. Returns the provenance for
    the exported training record: the source, its sha256 (read now: a path such as
    weights/distilled.safetensors names other bytes once a release replaces them) and the count copied."""
    path = Path(source)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise HaaqiError(f"--init {source}: no such file")
        # lazy: safetensors only where this path runs (start-up time)
        from safetensors.torch import load_file

        state = load_file(str(path))
        sha256 = content_hash(path)
        # a file made by registry.graft_tensors says beside it which models it was made of
        made_of = path.with_name(path.name + ".json")
        graft = json.loads(made_of.read_text()) if made_of.is_file() else None
        graft = graft if graft and graft.get("sha256") == sha256 else None
    else:
        loaded, info = load_model(source, weights_dir=weights_dir)
        state, sha256, graft = loaded.state_dict(), info.sha256, None
    own = model.state_dict()
    state = {**state, **widened_patch_embeddings(state, own, log)}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise HaaqiError(f"--init {source}: no tensor matches this model's names and shapes")
    model.load_state_dict(matched, strict=False)
    log(f"warm start from {source}: {len(matched)} of {len(own)} tensors copied")
    provenance = {"source": source, "sha256": sha256, "tensors_copied": len(matched), "tensors": len(own)}
    return {**provenance, "graft": graft} if graft else provenance


def _label_levels(meta: pd.DataFrame) -> list[float]:
    """[lowest, highest] presentation level (dB SPL) of the training labels: a manifest `spl` column
    where items sample their level, else the label convention's single DEFAULT_SPL."""
    if "spl" in meta.columns and meta["spl"].notna().any():
        levels = pd.to_numeric(meta["spl"], errors="coerce").dropna()
        return [float(levels.min()), float(levels.max())]
    return [DEFAULT_SPL, DEFAULT_SPL]


def _export(model: nn.Module, config: TrainConfig, arch: str, train: Split, best: dict, extra: dict) -> dict:

    info = ModelInfo(
        name=config.name,
        arch=arch,
        config=getattr(model, "config", config.config),
        file=f"{config.name}.safetensors",
        training={
            "items": len(train),
            "packages": sorted(train.meta["package"].unique().tolist()),
            "spl_range": _label_levels(train.meta),  # read back by haaqicli.util.levels.trained_spl_range
            "recipe": {k: v for k, v in asdict(config).items() if k not in ("config",)},
            **extra,
        },
        metrics={"dev": best},
    )
    return save_model(model.cpu(), info, config.weights_dir).to_dict()


def _device_terms(data: Split, index: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    terms = data.term_batch(index)
    return None if terms is None else terms.to(device)


def train_teacher(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train a model (the teacher, or any registered architecture: `config.arch`) on the manifest's
    labelled training split and export it to the registry."""
    device = setup_run(config)
    objective = objective_of(config)
    if config.soft_targets and not 0.0 <= config.soft_weight <= 1.0:
        raise HaaqiError(f"--soft-weight {config.soft_weight}: must be in [0, 1]")
    soft_models = soft_target_models(config.soft_targets, device)  # before the data: a wrong name fails at once
    train, dev = load_train_selection(config, log)
    log(f"{config.arch}: {len(train)} training clips, {len(dev)} clips choose checkpoints ({config.selection})")
    default = architectures().get(config.arch, HAAQINet).default_config()
    model, prior_record = build_for_run(config.arch, model_config(config, default), config, device, log)
    if config.init:
        prior_record["warm_start"] = warm_start(model, config.init, config.init_registry, log)

    targets = train.labels
    if soft_models:
        scores, prior_record["soft_targets"] = ensemble_scores(soft_models, train, device, log)
        targets = torch.lerp(train.labels, scores, config.soft_weight)

    def step_loss(model, index):  # type: ignore[no-untyped-def]
        out = model(train.wave_batch(index).to(device), train.audiograms[index].to(device))
        return label_objective(out, targets[index].to(device), _device_terms(train, index, device), objective)

    state = fit(model, train, dev, config, step_loss, log)
    return _export(model, config, config.arch, train, state["best"],
                   {"epochs_run": state["epoch"], "steps_run": state["step"], "selection": config.selection,
                    **prior_record})


def soft_target_models(specs: Sequence[str], device: torch.device) -> list[tuple[str, nn.Module, ModelInfo]]:
    """(spec, frozen model, info) of each soft-target model, loaded with its sha256 checked. A model is
    NAME (in weights/) or REGISTRY:NAME (`registry_source`); a malformed one is a HaaqiError."""
    loaded = []
    for spec in specs:
        try:
            registry, name = registry_source(spec) if ":" in spec else (None, spec)
        except ValueError as error:
            raise HaaqiError(f"--soft-target {error}") from None
        model, info = load_model(name, device=device, weights_dir=registry)
        loaded.append((spec, model.eval().requires_grad_(False), info))
    return loaded


def ensemble_scores(models: Sequence[tuple[str, nn.Module, ModelInfo]], data: Split, device: torch.device,
                    log: Callable[[str], None]) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """The mean clip score (N,) of models (`soft_target_models`) on every item of `data`, and their
    provenance. Each model's scores go through the teacher-targets cache, so a second run from the
    same models on the same items skips the passes. Training on a mix of these and the labels distils
    an ensemble into the model being trained."""
    scores, record = [], []
    for spec, model, info in models:
        cache = _targets_cache_path(info.sha256, [], data)
        scores.append(teacher_targets(model, data, [], device, log, cache=cache).clip.float())
        record.append({"model": spec, "sha256": info.sha256})
    return torch.stack(scores).mean(0), record


@dataclass
class TeacherTargets:
    """The teacher's outputs for every training item, computed once: the teacher is frozen and
    the inputs are not augmented, so a forward pass per step would repeat the same work."""

    clip: torch.Tensor  # (N,)
    frames: torch.Tensor  # (N, F)
    hidden: dict[int, torch.Tensor]  # teacher layer index -> (N, F, D)
    terms: torch.Tensor | None = None  # (N, 4) sub-terms of a term-head teacher

    def select(self, index: torch.Tensor, device: torch.device):  # type: ignore[no-untyped-def]

        hidden: list = [None] * (max(self.hidden) + 1)
        for layer, values in self.hidden.items():
            hidden[layer] = values[index].to(device)
        return HAAQINetOutput(self.clip[index].to(device), self.frames[index].to(device), hidden,
                              terms=None if self.terms is None else self.terms[index].to(device))


def _targets_cache_path(teacher_sha256: str, layers: list[int], data: Split) -> Path | None:
    """Where the targets of this teacher on these items are kept: the key covers the teacher's
    weights, the layers and the items (whose inputs the manifest fixes bit-exactly). None for data
    without manifest item ids."""
    # lazy: scipy, pandas, soundfile only where this path runs (start-up time)
    from haaqicli.data.corpus import default_data_dir

    if "item_id" not in data.meta:
        return None
    key = hashlib.sha256("|".join([teacher_sha256, ",".join(map(str, sorted(set(layers)))),
                                   ",".join(map(str, data.meta["item_id"]))]).encode()).hexdigest()[:24]
    return default_data_dir() / "cache" / "teacher-targets" / f"{key}.pt"


@torch.inference_mode()
def teacher_targets(
    teacher: nn.Module, data: Split, layers: list[int], device: torch.device, log: Callable[[str], None],
    batch_size: int = 32, cache: Path | None = None,
) -> TeacherTargets:
    """The teacher's outputs on every item; with `cache`, read from there when present, else written
    there, so another distillation from the same teacher on the same items skips the teacher passes."""
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        log(f"teacher targets for {len(data)} clips from {cache}")
        return TeacherTargets(saved["clip"], saved["frames"],
                              {int(layer): values.float() for layer, values in saved["hidden"].items()},
                              saved.get("terms"))
    clips, frames, terms, hidden = [], [], [], {layer: [] for layer in sorted(set(layers))}
    started = time.time()
    for wave, gram in data.batches(batch_size):
        out = teacher(wave.to(device), gram.to(device))
        clips.append(out.clip.cpu())
        if out.terms is not None:
            terms.append(out.terms.cpu())
        frames.append(out.frames.cpu())
        for layer in hidden:
            hidden[layer].append(out.hidden[layer].cpu().half())  # half: 2x less memory, ample precision
    log(f"teacher targets for {len(data)} clips in {time.time() - started:.0f} s")
    halves = {layer: torch.cat(values) for layer, values in hidden.items()}
    result = TeacherTargets(torch.cat(clips), torch.cat(frames), {k: v.float() for k, v in halves.items()},
                            torch.cat(terms) if terms else None)
    if cache is not None:  # atomic: an interrupted run leaves no half-written cache
        saved = {"clip": result.clip, "frames": result.frames, "hidden": {str(k): v for k, v in halves.items()},
                 **({"terms": result.terms} if result.terms is not None else {})}
        atomic_write(cache, lambda tmp: torch.save(saved, tmp))
    return result


def distill_student(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Distil the student from the registered teacher: the teacher's hidden layers and outputs are
    the main targets; the true label is an extra term."""
    device = setup_run(config)
    teacher, teacher_info = load_model(config.teacher, device=device, weights_dir=config.weights_dir)
    teacher.eval().requires_grad_(False)
    train, dev = load_train_selection(config, log)
    student_config = model_config(config, StudentNet.default_config())
    # The true labels' term: the clip score (no frame term: the teacher's frames are the frame targets),
    # plus sub-terms and ranking where the run asks for them.
    objective = dataclasses.replace(objective_of(config), frame_weight=0.0)
    teacher_dim = teacher_info.config["encoder"]["encoder_embed_dim"]
    student_config["distill"] = {**student_config.get("distill", {}), "teacher_dim": teacher_dim}
    model, prior_record = build_for_run("haaqinet-student", student_config, config, device, log)
    if config.init:
        prior_record["warm_start"] = warm_start(model, config.init, config.init_registry, log)
    log(f"distil: {len(train)} clips, {len(dev)} dev clips")

    layers = [t for _, t in model.distill_cfg.targets]
    targets = teacher_targets(teacher, train, layers, device, log,
                              cache=_targets_cache_path(teacher_info.sha256, layers, train))

    def step_loss(model, index):  # type: ignore[no-untyped-def]
        out = model(train.wave_batch(index).to(device), train.audiograms[index].to(device))
        loss, parts = distillation_loss(out, targets.select(index, device), model)
        labelled, _ = label_objective(out, train.labels[index].to(device), _device_terms(train, index, device),
                                      objective)
        return loss + config.label_weight * labelled, parts

    state = fit(model, train, dev, config, step_loss, log)
    return _export(model, config, "haaqinet-student", train, state["best"],
                   {"epochs_run": state["epoch"], "steps_run": state["step"], "teacher_sha256": teacher_info.sha256,
                    "selection": config.selection, **prior_record})


# ----------------------------------------------------------------------------------------------
# Evaluation


def _grouped(meta: pd.DataFrame, column: str) -> dict[str, dict[str, float]]:
    return {str(key): metrics(group["predicted"].to_numpy(), group["label"].to_numpy())
            for key, group in meta.groupby(column) if str(key)}


def evaluation_metrics(meta: pd.DataFrame) -> dict[str, Any]:
    """Metrics of predictions (``predicted``) against labels (``label``) of manifest items: overall, per
    package, degradation family, severity and profile; within-profile LCC/SRCC (the mean of the
    per-profile correlations: how well versions of the music are ranked for one listener); and the
    mean prediction on clean items for normal hearing (where the exact HAAQI is near its ceiling)."""
    meta = meta.copy()
    if "degradation" in meta:  # "cascade:noise+codec" -> "cascade": families, not every pair
        meta["degradation"] = meta["degradation"].astype(str).str.split(":").str[0]
    result: dict[str, Any] = {"overall": metrics(meta["predicted"].to_numpy(), meta["label"].to_numpy())}
    for column in ("package", "degradation", "severity", "profile"):
        if column in meta:
            result[f"by_{column}"] = _grouped(meta, column)
    profiles = [m for m in result.get("by_profile", {}).values() if np.isfinite(m["lcc"])]
    result["within_profile"] = {
        "profiles": len(profiles),
        "lcc": float(np.mean([m["lcc"] for m in profiles])) if profiles else float("nan"),
        "srcc": float(np.mean([m["srcc"] for m in profiles])) if profiles else float("nan"),
    }
    clean = meta["degradation"].eq("identity") if "degradation" in meta else pd.Series(False, index=meta.index)
    if "augmentation" in meta:
        clean &= meta["augmentation"].astype(str).isin(["none", ""])
    normal = (meta["profile"].eq("normal") if "profile" in meta and meta["profile"].astype(str).ne("").any()
              else meta.get("audiogram_family", pd.Series("", index=meta.index)).eq("normal"))
    chosen = meta[clean & normal]
    result["clean_normal"] = _mean_of(chosen)
    if "content_bandwidth" in meta:  # clean music by where its content ends (see audio.bandwidth)
        groups = meta["content_bandwidth"].map(bandwidth_group)
        result["clean_by_bandwidth"] = {
            str(group): {**_mean_of(meta[clean & groups.eq(group)]), "normal": _mean_of(meta[clean & normal & groups.eq(group)])}
            for group in BANDWIDTH_GROUPS if (clean & groups.eq(group)).any()}
    return result


def _mean_of(items: pd.DataFrame) -> dict[str, Any]:
    """n, mean prediction and mean label of some items (NaN means where there are none)."""
    n = len(items)
    return {"n": int(n), "predicted": float(items["predicted"].mean()) if n else float("nan"),
            "label": float(items["label"].mean()) if n else float("nan")}


def split_bandwidths(data: Split, batch_size: int = 64) -> np.ndarray:
    """Content bandwidth (Hz, `audio.bandwidth`) of each item's wave as the model hears it."""
    return np.concatenate([content_bandwidth(wave.numpy(), MODEL_SAMPLE_RATE) for wave, _ in data.batches(batch_size)]
                          ) if len(data) else np.zeros(0)


def evaluation_split(manifest: str | Path, split: str, exclude_packages: Sequence[str] = ()) -> Split:
    """The labelled items of `split` without those of `exclude_packages` (e.g. the package that chose
    the checkpoints)."""
    data = load_split(manifest, split, log=None)
    if exclude_packages:
        data = data.subset(~data.meta["package"].isin(list(exclude_packages)).to_numpy())
        if not len(data):
            raise HaaqiError(f"{manifest}: split {split!r} has no labelled items outside {', '.join(exclude_packages)}")
    return data


def evaluate_model(
    name: str,
    manifest: str | Path,
    split: str = "validation",
    weights_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    exclude_packages: Sequence[str] = (),
    precision: str = "float32",
) -> dict[str, Any]:
    """Metrics of a registered model against true labels (see `evaluation_metrics`), leaving out the
    items of `exclude_packages` (e.g. the package that chose the checkpoints); `precision` as in
    `haaqi score --precision`."""
    dev = model_device(device, precision)
    model, info = load_model(name, device=dev, weights_dir=weights_dir, precision=precision)
    data = evaluation_split(manifest, split, exclude_packages)
    predicted, terms = predict_with_terms(model, data, batch_size, dev)
    meta = data.meta.assign(predicted=predicted, label=data.labels.numpy(), content_bandwidth=split_bandwidths(data))
    result = {"model": model_label(name, precision), "sha256": info.sha256, "split": split,
              "packages": sorted(meta["package"].unique().tolist()), "paper": PAPER_FIGURES.get(name),
              **evaluation_metrics(meta)}
    if terms is not None and data.terms is not None:
        result["term_errors"] = term_errors(data.meta, terms, data.terms.numpy())
    return result


def format_evaluation(result: dict[str, Any]) -> str:
    def line(label: str, m: dict) -> str:
        return f"{label:34s} {m['n']:6d} {m['lcc']:7.4f} {m['srcc']:7.4f} {m['mse']:8.5f} {m['bias']:+7.3f}"

    lines = [f"model {result['model']} ({result['sha256'][:12]}), split {result['split']}: "
             + ", ".join(result["packages"]),
             f"{'':34s} {'n':>6s} {'LCC':>7s} {'SRCC':>7s} {'MSE':>8s} {'bias':>7s}",
             line("overall", result["overall"])]
    within = result.get("within_profile")
    if within and within["profiles"]:
        lines.append(f"{'within-profile (mean of ' + str(within['profiles']) + ')':34s} {'':6s} "
                     f"{within['lcc']:7.4f} {within['srcc']:7.4f}")
    clean = result.get("clean_normal")
    if clean and clean["n"]:
        lines.append(f"{'clean, normal hearing: mean':34s} {clean['n']:6d} predicted {clean['predicted']:.3f}, "
                     f"exact HAAQI {clean['label']:.3f}")
    for group, m in result.get("clean_by_bandwidth", {}).items():
        normal = m["normal"]
        lines.append(f"{'  clean, content ' + group + ': mean':34s} {m['n']:6d} predicted {m['predicted']:.3f}, "
                     f"exact {m['label']:.3f}; normal hearing ({normal['n']}) {normal['predicted']:.3f}, "
                     f"exact {normal['label']:.3f}")
    if result.get("paper"):
        paper = result["paper"]
        lines.append(f"{'paper (HAAQI-Net, own data)':34s} {'':6s} {paper['lcc']:7.4f} {paper['srcc']:7.4f} "
                     f"{paper['mse']:8.5f}")
    for column in ("package", "degradation", "severity", "profile"):
        for key, m in result.get(f"by_{column}", {}).items():
            lines.append(line(f"  {column}={key}", m))
    if result.get("term_errors"):

        lines.append(f"{'sub-term error: bias (MSE)':34s} " + " ".join(f"{t:>17s}" for t in TERMS))
        for family, per_term in result["term_errors"].items():
            lines.append(f"{'  degradation=' + family:34s} " + " ".join(
                f"{per_term[t]['bias']:+7.3f} ({per_term[t]['mse']:.4f})" for t in TERMS))
    return "\n".join(lines)
