"""Pre-training of the teacher's BEATs encoder on a damage pretext, without HAAQI labels.

Why: the teacher trains from scratch on two CPU cores and ends below the student; issue 17 asks for
self-supervised pre-training of its encoder (masked prediction, or clean-vs-degraded contrast). This is
the contrast kind, generalised: from a training clip alone the encoder learns which processes it went
through (the types in its degradation recipe, every step of a cascade; none for a clean version), a
multi-label target that every manifest item carries for free. The reference's content augmentations
(mixes, EQ, mastering, room reverb) are not targets: a reverberant or loudly mastered recording is clean
too, and the pretext must tell damage from such music, not find it.

The encoder's tensors are written to one .safetensors file that `haaqi train --init FILE` (and
`haaqi ablate --init FILE`) starts from; the pretext head is dropped. `haaqi pretrain` prints the pretext
figures on held-out training tracks (cross-entropy beside that of the training base rates, and per
process the ranking AUC), so a run shows what the encoder learned before any HAAQI training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.data.degrade import PROCESSES
from haaqicli.models.haaqinet import HAAQINet, beats_frame_hidden
from haaqicli.models.registry import build_model
from haaqicli.training.train import (
    Split,
    TrainConfig,
    dev_mask,
    first_items,
    fit,
    load_split,
    model_config,
    setup_run,
    warm_start,
)
from haaqicli.util.atomic import atomic_write
from haaqicli.util.errors import HaaqiError
from haaqicli.util.hashing import content_hash

HELD_OUT_ITEMS = 1000  # held-out clips the pretext figures are measured on (at most)

# The damage the pretext names: every recipe process but the clean one (cascades are their steps).
DAMAGE = tuple(sorted(name for name in PROCESSES if name != "identity"))


def recipe_damage(recipe: str | Mapping[str, Any]) -> set[str]:
    """The processes a recipe applies (a cascade's steps, recursively); empty for a clean version."""
    if isinstance(recipe, str):
        recipe = json.loads(recipe) if recipe else {"type": "identity"}
    if recipe["type"] == "cascade":
        return set().union(*(recipe_damage(step) for step in recipe["steps"]))
    return set() if recipe["type"] == "identity" else {str(recipe["type"])}


def damage_targets(recipes: Iterable[str | Mapping[str, Any]]) -> Tensor:
    """(N, len(DAMAGE)) 0/1 float targets of these recipes."""
    rows = [recipe_damage(recipe) for recipe in recipes]
    return torch.tensor([[float(name in row) for name in DAMAGE] for row in rows], dtype=torch.float32)


class DamagePretext(nn.Module):
    """A teacher plus a linear probe of its encoder: the mean over frames and layers of the encoder's
    hidden states -> one logit per DAMAGE process."""

    def __init__(self, model: HAAQINet) -> None:
        super().__init__()
        self.model = model
        self.probe = nn.Linear(model.encoder.output_dim, len(DAMAGE))

    def forward(self, wave: Tensor) -> Tensor:
        hidden = beats_frame_hidden(self.model.encoder, wave)  # layers x (B, frames, D)
        return self.probe(torch.stack(hidden).mean(dim=(0, 2)))


def ranking_auc(scores: Tensor, positive: Tensor) -> float | None:
    """Probability that a clip with the process scores above one without it (ties count half); None
    where either kind is missing."""
    # lazy: scipy only where this path runs (start-up time)
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(scores.double().numpy())  # ties get their average rank (Mann-Whitney U)
    return float((ranks[positive.numpy()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pretext_figures(logits: Tensor, targets: Tensor, base_rates: Tensor) -> dict[str, Any]:
    """Mean binary cross-entropy against that of predicting each process's training rate (what an
    encoder that learned nothing reaches), and per process its clips and ranking AUC."""
    prior = torch.logit(base_rates.clamp(1e-4, 1 - 1e-4)).expand_as(targets)
    truth = targets > 0.5
    return {"bce": float(F.binary_cross_entropy_with_logits(logits, targets)),
            "base_rate_bce": float(F.binary_cross_entropy_with_logits(prior, targets)),
            "processes": {name: {"n": int(truth[:, k].sum()), "auc": ranking_auc(logits[:, k], truth[:, k])}
                          for k, name in enumerate(DAMAGE)}}


def pretrain_encoder(config: TrainConfig, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Pre-train the teacher's encoder on the damage pretext over the training clips (labels unused;
    `config.train_items` limits them), checkpointing in `config.run_dir` (`--resume` continues), and
    write the encoder's tensors to `out` (.safetensors) with a JSON record beside it."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise HaaqiError(f"--out {out}: expected a .safetensors file")
    if config.arch != "haaqinet":
        raise HaaqiError(f"--arch {config.arch}: pre-training is for the teacher's BEATs encoder (haaqinet)")
    if (Path(config.run_dir) / "best.pt").exists():
        raise HaaqiError(f"{config.run_dir} holds another run's best.pt: choose a fresh --run-dir")
    device = setup_run(config)
    # With train_items only those items are regenerated into the training cache (the whole split takes
    # hours to export on 2 cores); the held-out tracks' clips among them give the figures.
    data = load_split(config.manifest, "train", log, items=config.train_items, seed=config.seed)
    held_out = dev_mask(data.meta)
    train, dev = data.subset(~held_out), data.subset(held_out)
    if len(dev) > HELD_OUT_ITEMS:  # figures, not a choice: a fixed sample of the held-out tracks' clips will do
        dev = first_items(dev, HELD_OUT_ITEMS, config.seed)
    targets = damage_targets(train.meta["recipe"])
    dev_targets = damage_targets(dev.meta["recipe"])
    log(f"pretext: {len(train)} training clips, {len(dev)} held-out clips; processes {', '.join(DAMAGE)}")
    model = build_model("haaqinet", model_config(config, HAAQINet.default_config()))
    if config.init:
        warm_start(model, config.init, config.init_registry, log)
    pretext = DamagePretext(model).to(device)

    def step_loss(module: nn.Module, index: Tensor) -> tuple[Tensor, dict]:
        logits = module(train.wave_batch(index).to(device))
        return F.binary_cross_entropy_with_logits(logits, targets[index].to(device)), {}

    # No HAAQI labels choose a checkpoint here: fit() keeps the last state (the run's end).
    state = fit(pretext, train, dev.subset(np.zeros(len(dev), dtype=bool)), config, step_loss, log)
    figures = _held_out_figures(pretext, dev, dev_targets, targets.mean(0), config.batch_size, device)
    if figures["processes"]:
        log(f"held-out pretext: BCE {figures['bce']:.4f} (training base rates: {figures['base_rate_bce']:.4f}); "
            "AUC " + ", ".join(f"{name} {p['auc']:.2f}" for name, p in figures["processes"].items()
                               if p["auc"] is not None))
    else:
        log("held-out pretext: no held-out training tracks in this manifest")
    # clones: safetensors refuses tensors that share memory (the encoder ties some of its parameters)
    encoder = {f"encoder.{k}": v.detach().cpu().clone().contiguous() for k, v in model.encoder.state_dict().items()}
    # lazy: safetensors only where this path runs (start-up time)
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: save_file(encoder, str(tmp)), keep_suffix=True)
    record = {"file": out.name, "sha256": content_hash(out), "pretext": "damage processes", "processes": DAMAGE,
              "clips": len(train), "held_out_clips": len(dev), "epochs_run": state["epoch"],
              "steps_run": state["step"], "held_out": figures,
              "recipe": {k: v for k, v in asdict(config).items() if k != "config"},
              "encoder": model.encoder.cfg.to_dict()}
    atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    log(f"wrote {out} ({len(encoder)} encoder tensors, sha256 {record['sha256'][:12]}); "
        f"start a teacher from it with `haaqi train --init {out}`")
    return record


@torch.inference_mode()
def _held_out_figures(pretext: DamagePretext, dev: Split, targets: Tensor, base_rates: Tensor, batch_size: int,
                      device: torch.device) -> dict[str, Any]:
    pretext.eval()
    if not len(dev):
        return {"bce": float("nan"), "base_rate_bce": float("nan"), "processes": {}}
    logits = torch.cat([pretext(waves.to(device)).cpu() for waves, _ in dev.batches(batch_size)])
    return pretext_figures(logits, targets, base_rates)
