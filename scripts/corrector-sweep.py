"""Fit the signal-descriptor corrector at several clean-item weights on one pass of the frozen network.

`haaqi correct` recomputes the network's logits and descriptors for every fit (minutes); this computes
them once (cached in data/corrector-inputs-<sha>.pt) and fits one fresh corrector per weight, choosing
each fit's epoch on the selection package and printing, per weight, the selection LCC and the mean
prediction on its clean items for normal hearing. Choose a weight here, then build the model with
`haaqi correct --clean-weight W`. Reporting packages never enter.

    .venv/bin/python scripts/corrector-sweep.py --source-dir data/weights-release-base --weights 1,3,8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from haaqicli.models.signal import ScoreCorrector
from haaqicli.training.corrector import (
    CorrectorConfig,
    Inputs,
    corrector_inputs,
    train_corrector,
    with_corrector,
)
from haaqicli.training.train import TrainConfig, load_train_selection


def clean_normal_mean(corrector: ScoreCorrector, data: Inputs) -> float:
    with torch.no_grad():
        logit = data.logit + corrector(data.signal, data.audiograms, data.logit)
    normal = data.clean & (data.audiograms.abs().amax(-1) <= 0)
    return float(torch.sigmoid(logit[normal]).mean()) if normal.any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="distilled")
    parser.add_argument("--source-dir", default=None)
    parser.add_argument("--manifest", default="labels/manifest.parquet")
    parser.add_argument("--selection", default="validation-real:ufoai-music")
    parser.add_argument("--weights", default="1,3,8")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, info = with_corrector(args.model, args.hidden, args.source_dir)
    cache = Path(f"data/corrector-inputs-{info.sha256[:12]}-{args.selection.replace(':', '-')}.pt")
    if cache.exists():
        train_in, select_in = (Inputs(**part) for part in torch.load(cache, weights_only=True))
    else:
        train, select = load_train_selection(TrainConfig(manifest=args.manifest, selection=args.selection), print)
        train_in, select_in = corrector_inputs(model, train), corrector_inputs(model, select)
        torch.save([vars(train_in), vars(select_in)], cache)
    print(f"{len(train_in.labels)} training items ({int(train_in.clean.sum())} clean), "
          f"{len(select_in.labels)} selection items")
    for weight in (float(w) for w in args.weights.split(",")):
        torch.manual_seed(0)
        corrector = ScoreCorrector(hidden=args.hidden)
        config = CorrectorConfig(clean_weight=weight, epochs=args.epochs, hidden=args.hidden)
        before, best = train_corrector(corrector, train_in, select_in, config, log=lambda _: None)
        print(f"clean weight {weight:g}: selection LCC {before['lcc']:.4f} -> {best['lcc']:.4f} "
              f"(epoch {best['epoch']}), MSE {best['mse']:.5f}, clean/normal mean "
              f"{clean_normal_mean(corrector.eval(), select_in):.3f}")


if __name__ == "__main__":
    main()
