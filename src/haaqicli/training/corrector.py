"""Fit a signal-descriptor corrector (`models.signal`) onto a trained model, the network frozen.

The network's score logit and the window's descriptors do not change while the corrector learns, so
both are computed once per item (one pass over the training and selection items) and the corrector
trains on those tensors: many epochs in seconds. Checkpoints are chosen on the selection items
(ufoai-music by default), never on the reporting packages.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from haaqicli.models.registry import ModelInfo, build_model, load_model, save_model
from haaqicli.training.objectives import pairwise_ranking_loss
from haaqicli.training.train import (
    Split,
    TrainConfig,
    _label_levels,
    clean_items,
    load_train_selection,
    metrics,
    selection_key,
)
from haaqicli.util.errors import HaaqiError


@dataclass
class CorrectorConfig:
    model: str = "distilled"  # the registered model the corrector is fitted onto
    manifest: str = "labels/manifest.parquet"
    name: str = ""  # registry name of the result ("" = the model's own name)
    source_dir: str | None = None  # registry of `model` (None = weights/)
    weights_dir: str | None = None  # registry the result is exported to (None = weights/)
    hidden: int = 32
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    rank_weight: float = 0.5
    # Loss weight of clean items (degradation "identity") against 1 for the rest: the training mix holds
    # ~4% clean items, the music users score (and validation-real) far more, so the prior leans degraded.
    clean_weight: float = 1.0
    selection: str = "validation-real:ufoai-music"
    select_metric: str = "lcc"
    train_items: int | None = None
    seed: int = 0
    threads: int | None = None


@dataclass
class Inputs:
    """What the corrector sees of each item: the network's logit, the descriptors, the audiogram."""

    logit: Tensor  # (N,)
    signal: Tensor  # (N, n_features)
    audiograms: Tensor  # (N, 8)
    labels: Tensor  # (N,)
    clean: Tensor  # (N,) bool: the item's degradation is "identity"


@torch.inference_mode()
def corrector_inputs(model: torch.nn.Module, data: Split, batch_size: int = 32) -> Inputs:
    """One pass of the frozen network and the descriptors over `data`."""
    logits, signals = [], []
    for start in range(0, len(data), batch_size):
        index = np.arange(start, min(start + batch_size, len(data)))
        features = model.encode(data.wave_batch(index))
        scores = model.head.network_scores(features[:-1], data.audiograms[index])
        logits.append(scores.clip_logit.float())
        signals.append(features[-1].float())
    clean = torch.from_numpy(clean_items(data.meta))
    return Inputs(torch.cat(logits), torch.cat(signals), data.audiograms.float(), data.labels.float(), clean)


def with_corrector(name: str, hidden: int, weights_dir: str | None) -> tuple[torch.nn.Module, ModelInfo]:
    """Registered model `name` (sha256 checked) rebuilt with a fresh, zero-initialised corrector: its
    scores equal the model's until the corrector is fitted."""
    base, info = load_model(name, weights_dir=weights_dir)
    config = copy.deepcopy(info.config)
    config["head"]["signal_corrector"] = int(hidden)
    model = build_model(info.arch, config)
    result = model.load_state_dict(base.state_dict(), strict=False)
    foreign = [k for k in result.missing_keys if not k.startswith("head.corrector.")]
    if foreign or result.unexpected_keys:
        raise HaaqiError(f"{name}: cannot carry its weights into the corrected model "
                         f"(missing {foreign[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval(), info


def train_corrector(corrector: torch.nn.Module, train_in: Inputs, select_in: Inputs, config: CorrectorConfig,
                    log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit `corrector` (standardised on the training descriptors) on precomputed inputs; it ends on the
    epoch the selection items chose; pass a fresh corrector (zero output layer) to start from the
    model's own scores. -> (selection figures before, the chosen epoch's figures)."""
    corrector.set_statistics(train_in.signal)
    before = metrics(torch.sigmoid(select_in.logit).numpy(), select_in.labels.numpy())
    best = {**before, "epoch": 0}
    best_state = copy.deepcopy(corrector.state_dict())
    log(f"selection before: LCC {before['lcc']:.4f}, MSE {before['mse']:.5f}")
    weights = torch.where(train_in.clean, float(config.clean_weight), 1.0)
    optimizer = torch.optim.AdamW(corrector.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        corrector.train()
        for index in torch.randperm(len(train_in.labels), generator=generator).split(config.batch_size):
            logit = train_in.logit[index] + corrector(train_in.signal[index], train_in.audiograms[index],
                                                      train_in.logit[index])
            predicted, target, weight = torch.sigmoid(logit), train_in.labels[index], weights[index]
            loss = torch.sum(weight * (predicted - target) ** 2) / weight.sum()
            if config.rank_weight:
                loss = loss + config.rank_weight * pairwise_ranking_loss(predicted, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        corrector.eval()
        with torch.no_grad():
            logit = select_in.logit + corrector(select_in.signal, select_in.audiograms, select_in.logit)
        figures = metrics(torch.sigmoid(logit).numpy(), select_in.labels.numpy())
        if selection_key(figures, config.select_metric) < selection_key(best, config.select_metric):
            best, best_state = {**figures, "epoch": epoch}, copy.deepcopy(corrector.state_dict())
        if epoch % 25 == 0 or epoch == config.epochs:
            log(f"epoch {epoch}: selection LCC {figures['lcc']:.4f}, MSE {figures['mse']:.5f} "
                f"(best {best['lcc']:.4f} at epoch {best['epoch']})")
    corrector.load_state_dict(best_state)
    return before, best


def fit_corrector(config: CorrectorConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the corrector and export the corrected model (training record: the base model's sha256 and
    recipe, this recipe, the selection figures before and after)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model, base_info = with_corrector(config.model, config.hidden, config.source_dir)
    split_config = TrainConfig(manifest=config.manifest, selection=config.selection, train_items=config.train_items,
                               seed=config.seed)
    train, select = load_train_selection(split_config, log)
    started = time.monotonic()
    train_in, select_in = corrector_inputs(model, train), corrector_inputs(model, select)
    log(f"network and descriptors of {len(train)} training and {len(select)} selection items: "
        f"{time.monotonic() - started:.0f} s")
    before, best = train_corrector(model.head.corrector, train_in, select_in, config, log)
    name = config.name or config.model
    training = {**base_info.training,
                "corrector": {"base": {"name": base_info.name, "sha256": base_info.sha256,
                                       "promoted_from": base_info.training.get("promoted_from")},
                              "recipe": asdict(config), "items": len(train),
                              "packages": sorted(train.meta["package"].unique().tolist()),
                              "spl_range": _label_levels(train.meta),
                              "selection_before": before, "selection_after": best}}
    info = ModelInfo(name=name, arch=base_info.arch, config=model.config, file=f"{name}.safetensors",
                     training=training, metrics={"dev": best})
    return save_model(model, info, config.weights_dir).to_dict()
