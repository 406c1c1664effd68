#!/usr/bin/env python3
"""Do reference-free descriptors explain the shipped student's errors on recorded music (reverb above all)?

    PYTHONPATH=src .venv/bin/python scripts/reverb-probe.py [--out data/probe]

On validation-real (labelled items, model inputs from the split cache), it scores every item with the
shipped distilled model and computes the model's own signal descriptors (`models.signal`) plus
envelope-modulation descriptors (modulation power in five bands of 0.5-32 Hz, envelope autocorrelation
at 50-400 ms, spectral flux), fits gradient-boosted trees on ufoai-music (the selection package) and
reports on nexuiz-music: overall, within-profile and clean/normal figures and the family biases, with
reverb in and out of the fitting package. A probe, not a model: nothing here is shipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.ensemble import HistGradientBoostingRegressor

from haaqicli.data.export import SplitCache
from haaqicli.data.labels import labelled_manifest
from haaqicli.models.hearing import band_edges
from haaqicli.models.registry import load_model
from haaqicli.models.signal import SignalFeatures
from haaqicli.reference.formula import center_frequencies
from haaqicli.util.constants import MODEL_SAMPLE_RATE

N_FFT, HOP = 512, 240  # 21-ms frames every 10 ms at 24 kHz
MODULATION_BANDS_HZ = ((0.5, 2), (2, 4), (4, 8), (8, 16), (16, 32))
BAND_GROUPS = (slice(0, 5), slice(5, 10), slice(10, 16))  # low, mid, high of 16 ERB bands
LAGS_MS = (50, 100, 200, 400)


class Modulation(torch.nn.Module):
    """wave (B, T) -> envelope-modulation descriptors (B, 20)."""

    def __init__(self) -> None:
        super().__init__()
        freqs = np.fft.rfftfreq(N_FFT, 1 / MODEL_SAMPLE_RATE)
        edges = band_edges(center_frequencies(16))
        member = (freqs[:, None] >= edges[None, :-1]) & (freqs[:, None] < edges[None, 1:])
        self.register_buffer("bank", torch.from_numpy(member.astype(np.float32)))
        self.register_buffer("window", torch.hann_window(N_FFT))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        power = torch.stft(wave, N_FFT, HOP, window=self.window, return_complex=True).abs().square()
        envelope = (power.transpose(1, 2) @ self.bank).clamp_min(1e-12).sqrt()  # (B, frames, 16)
        envelope = envelope / envelope.mean(1, keepdim=True)
        spectrum = torch.fft.rfft(envelope - 1.0, dim=1).abs().square()
        rates = torch.fft.rfftfreq(envelope.shape[1], HOP / MODEL_SAMPLE_RATE)
        features = []
        for low, high in MODULATION_BANDS_HZ:
            power_in_band = spectrum[:, (rates >= low) & (rates < high)].sum(1) / envelope.shape[1] ** 2
            features += [torch.log10(power_in_band[:, group].mean(1) + 1e-9) for group in BAND_GROUPS]
        log_env = torch.log(envelope)
        log_env = log_env - log_env.mean(1, keepdim=True)
        variance = log_env.square().mean(1) + 1e-9
        for lag_ms in LAGS_MS:
            k = lag_ms * MODEL_SAMPLE_RATE // 1000 // HOP
            features.append(((log_env[:, k:] * log_env[:, :-k]).mean(1) / variance).mean(1))
        features.append((log_env[:, 1:] - log_env[:, :-1]).clamp_min(0).mean((1, 2)))
        return torch.stack(features, 1)


def describe(out: Path) -> dict[str, np.ndarray]:
    """Predictions and descriptors of every labelled validation-real item (cached in out/probe.npz)."""
    path = out / "probe.npz"
    if path.is_file():
        return dict(np.load(path))
    manifest = labelled_manifest(Path("labels/manifest.parquet"))
    items = manifest[(manifest.split == "validation-real") & np.isfinite(manifest.label)].reset_index(drop=True)
    waves = SplitCache.of_manifest(Path("data/cache"), manifest, "validation-real").waves(list(items.item_id))
    model, _ = load_model("distilled")
    signal, modulation = SignalFeatures(MODEL_SAMPLE_RATE), Modulation()
    parts: dict[str, list[np.ndarray]] = {"pred": [], "sig": [], "mod": []}
    with torch.inference_mode():
        for start in range(0, len(items), 32):
            index = np.arange(start, min(start + 32, len(items)))
            wave = torch.from_numpy(np.asarray(waves[index]))
            gram = torch.tensor(np.stack(items.audiogram.iloc[index].to_numpy()), dtype=torch.float32)
            parts["pred"].append(model(wave, gram).clip.numpy())
            parts["sig"].append(signal(wave).numpy())
            parts["mod"].append(modulation(wave).numpy())
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/probe"))
    out = parser.parse_args().out
    torch.set_num_threads(1)
    arrays = describe(out)
    manifest = labelled_manifest(Path("labels/manifest.parquet"))
    items = manifest[(manifest.split == "validation-real") & np.isfinite(manifest.label)].reset_index(drop=True)
    label, pred = items.label.to_numpy(), arrays["pred"]
    cascade = items.degradation.str.startswith("cascade")
    family = np.where(cascade & items.degradation.str.contains("reverb"), "cascade+reverb",
                      np.where(cascade, "cascade", items.degradation)).astype(str)
    profile = items.profile.to_numpy()
    clean_normal = (items.degradation.to_numpy() == "identity") & (profile == "normal")
    fit = (items.package == "ufoai-music").to_numpy()
    report = ~fit
    logit = np.log(np.clip(pred, 1e-5, 1 - 1e-5) / (1 - np.clip(pred, 1e-5, 1 - 1e-5)))[:, None]
    gram = np.stack(items.audiogram.to_numpy()) / 100.0

    def line(name: str, p: np.ndarray) -> None:
        y, q, prof = label[report], p[report], profile[report]
        within = np.mean([pearsonr(q[prof == k], y[prof == k])[0] for k in np.unique(prof)])
        bias = {f: round(float((q[family[report] == f] - y[family[report] == f]).mean()), 3)
                for f in ("reverb", "cascade+reverb", "clipping", "codec", "noise", "identity")}
        in_fit = fit & (family == "reverb")
        print(f"{name:30s} LCC {pearsonr(q, y)[0]:.4f} SRCC {spearmanr(q, y)[0]:.4f} MSE {np.mean((q - y) ** 2):.4f} "
              f"within {within:.4f} clean/normal {p[report & clean_normal].mean():.3f} bias {bias} "
              f"(reverb bias on ufoai {float((p[in_fit] - label[in_fit]).mean()):+.3f})")

    line("shipped distilled", pred)
    for name, parts in (("GBM score+audiogram", [logit, gram]), ("GBM +signal descriptors", [logit, gram, arrays["sig"]]),
                        ("GBM +modulation", [logit, gram, arrays["mod"]]),
                        ("GBM +both", [logit, gram, arrays["sig"], arrays["mod"]]),
                        ("GBM descriptors, no network", [gram, arrays["sig"], arrays["mod"]])):
        features = np.concatenate(parts, 1)
        trees = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                              l2_regularization=1.0, random_state=0).fit(features[fit], label[fit])
        line(name, np.clip(trees.predict(features), 0.0, 1.0))


if __name__ == "__main__":
    main()
