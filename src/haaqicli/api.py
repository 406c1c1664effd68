"""Differentiable HAAQI predictor for use inside other PyTorch code (e.g. as a training loss).

    from haaqicli.api import HAAQIPredictor, haaqi_loss
    predictor = HAAQIPredictor.from_pretrained("distilled")
    score = predictor(waveform, audiogram, sample_rate=44100)   # (B,), differentiable w.r.t. waveform
    predictor.predict_file("song.flac", profile, spl=65)        # {ear: score}, as `haaqi score` gives it

Level (haaqicli.util.levels, the same definition as `haaqi score --spl`): model input RMS 0.1 is heard at
65 dB SPL. With `spl=None` the waveform is taken as already calibrated; with `spl=L` every item's RMS is
heard at L dB SPL (rescaled differentiably to RMS 0.1*10**((L-65)/20)), which assumes the original was
at the same level. A level outside the model's trained range warns (`levels.LevelWarning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from haaqicli.audio import InputFile, plan_windows, resample, target_rms
from haaqicli.audiogram import Audiogram, Profile
from haaqicli.engine import prepare_file, score_prepared
from haaqicli.models.calibration import Calibration, load_calibration
from haaqicli.models.registry import ModelInfo, load_model
from haaqicli.scoring.network import WindowScorer
from haaqicli.scoring.options import ScoreOptions
from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES, DEFAULT_SPL, HOP_SECONDS, WINDOW_SECONDS
from haaqicli.util.errors import AudioError, ModelError
from haaqicli.util.levels import warn_untrained_level


class HAAQIPredictor(nn.Module):
    """Wraps a HAAQI-Net-style model: resampling, level normalisation, windowing, length-weighted average."""

    def __init__(self, model: nn.Module, info: ModelInfo | None = None, window_s: float = WINDOW_SECONDS,
                 hop_s: float = HOP_SECONDS, freeze: bool = True) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.window_s, self.hop_s = float(window_s), float(hop_s)
        # (model name, weights sha256, weights folder) of registered weights: their interval calibration
        # is read on first use, so a predictor used only as a loss never looks for one.
        self._calibration_key: tuple[str, str, str | Path | None] | None = None
        self._calibration: Calibration | None = None
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ModelError("HAAQIPredictor: window_s and hop_s must be positive")
        if freeze:
            # Used as a loss/metric: gradients go to the input, never into the predictor's weights.
            self.model.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, name: str = "distilled", device: str | torch.device = "cpu",
                        weights_dir: str | Path | None = None, beats_checkpoint: str | Path | None = None,
                        precision: str = "float32", **kwargs) -> HAAQIPredictor:
        """A registered model; `precision` "int8" runs its encoder's linear layers on int8 (CPU only,
        inference only: models.precision)."""
        model, info = load_model(name, device=device, beats_checkpoint=beats_checkpoint, weights_dir=weights_dir,
                                 precision=precision)
        predictor = cls(model, info, **kwargs)
        if beats_checkpoint is None:
            predictor._calibration_key = (info.name, info.sha256, weights_dir)
        return predictor

    @property
    def calibration(self) -> Calibration | None:
        """The interval calibration of these weights (None, with a warning, when there is none)."""
        if self._calibration is None and self._calibration_key is not None:
            self._calibration = load_calibration(*self._calibration_key)
            self._calibration_key = None
        return self._calibration

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, waveform: Tensor, audiogram: Tensor, sample_rate: int, spl: float | None
                ) -> tuple[Tensor, Tensor]:
        """-> (wave (B, T') at the model rate and level, audiogram (B, 8)) on the model's device."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise AudioError(f"waveform must be (T,) or (B, T) mono, got shape {tuple(waveform.shape)}")
        audiogram = torch.as_tensor(audiogram, dtype=torch.float32)
        if audiogram.dim() == 1:
            audiogram = audiogram.unsqueeze(0)
        n_ag = len(AUDIOGRAM_FREQUENCIES)
        if audiogram.shape[-1] != n_ag:
            raise ModelError(f"audiogram must have {n_ag} values (dB HL at {AUDIOGRAM_FREQUENCIES} Hz)")
        b = waveform.shape[0]
        if audiogram.shape[0] == 1 and b > 1:
            audiogram = audiogram.expand(b, -1)
        if audiogram.shape[0] != b:
            raise ModelError(f"audiogram batch {audiogram.shape[0]} does not match waveform batch {b}")
        if sample_rate <= 0:
            raise AudioError(f"sample_rate must be positive, got {sample_rate}")
        dev = self.device
        x = waveform.to(dev, torch.float32)
        if int(sample_rate) != self.sample_rate:
            x = resample(x, int(sample_rate), self.sample_rate)  # the same filter as the file scorer
        if spl is not None:
            if self.info is not None:  # a model given without its manifest entry has no stated levels
                warn_untrained_level(float(spl), self.info.name, self.info.training)
            rms = x.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()
            x = x * (target_rms(float(spl)) / rms)  # the engine's calibration (audio.level), differentiable
        return x, audiogram.to(dev)

    def window_scores(self, waveform: Tensor, audiogram: Tensor, sample_rate: int, spl: float | None = None
                      ) -> tuple[list[tuple[int, int]], Tensor]:
        """-> ([(start, end)] in model-rate samples, clip score per window (B, n_windows))."""
        x, ag = self.prepare(waveform, audiogram, sample_rate, spl)
        sr = self.sample_rate
        win, hop = round(self.window_s * sr), round(self.hop_s * sr)
        spans = plan_windows(x.shape[-1], win, hop)  # the engine's windows, so API and CLI agree
        b = x.shape[0]
        scores: list[Tensor] = []
        full = [s for s in spans if s[1] - s[0] == win]
        if full:
            # All full windows of all items in one batch.
            chunk = torch.stack([x[:, s:e] for s, e in full], dim=1).reshape(b * len(full), win)
            out = self.model(chunk, ag.repeat_interleave(len(full), dim=0))
            scores.append(out.clip.view(b, len(full)))
        rest = [s for s in spans if s[1] - s[0] != win]
        for s, e in rest:
            scores.append(self.model(x[:, s:e], ag).clip.view(b, 1))
        return full + rest, torch.cat(scores, dim=1)

    def forward(self, waveform: Tensor, audiogram: Tensor, sample_rate: int, spl: float | None = None) -> Tensor:
        """Predicted HAAQI (B,) in [0, 1]: window scores averaged with weights = window length."""
        spans, scores = self.window_scores(waveform, audiogram, sample_rate, spl)
        w = torch.tensor([e - s for s, e in spans], dtype=scores.dtype, device=scores.device)
        return (scores * w).sum(-1) / w.sum()

    @torch.no_grad()
    def predict_file(self, path: str | Path, audiogram: Profile | Tensor | np.ndarray | Sequence[float],
                     spl: float = DEFAULT_SPL, mix: str = "stereo", batch_size: int = 16) -> dict[str, float]:
        """Predicted HAAQI of an audio file, as `haaqi score FILE --spl SPL --mix MIX` gives it: the engine
        decodes, resamples and calibrates the file (`audio.calibrated_windows`, the one call from a file
        to model-ready windows) and scores its windows with this predictor's model. Not differentiable.

        `audiogram`: a `Profile` (each ear its own audiogram), 8 levels heard by both ears, or (2, 8) for
        (left, right). Returns ``{ear: score}`` like the score table's rows: ``{"both": s}`` for a mono
        file or ``mix="mono"`` (the mean of the two ears' scores), else ``{"left": s, "right": s}``.
        A file that cannot be scored raises `AudioError` naming it."""
        if mix not in ("stereo", "mono"):
            raise ModelError(f"predict_file: mix must be stereo or mono, not {mix!r}")
        profile = _as_profile(audiogram)
        if self.info is not None:  # a model given without its manifest entry has no stated levels
            warn_untrained_level(float(spl), self.info.name, self.info.training)
        item = InputFile(Path(path), Path(path).parent, Path(path).name)
        options = ScoreOptions(spl=float(spl), mix=mix, window_s=self.window_s, hop_s=self.hop_s)
        prepared = prepare_file(item, options, self.sample_rate)
        if prepared.error:
            raise AudioError(prepared.error)
        scorer = WindowScorer(self.model, self.device, batch_size)
        [(rows, _)] = score_prepared([prepared], [profile], scorer, [{}], None, options, self.sample_rate)
        return {row["ear"]: row["score"] for row in rows}

    @torch.no_grad()
    def predict_with_interval(self, waveform: Tensor, audiogram: Tensor, sample_rate: int, spl: float | None = None
                              ) -> tuple[Tensor, Tensor, Tensor]:
        """(score, score_lo, score_hi), each (B,): the prediction and its calibrated interval (as in
        `haaqi score`; NaN without a calibration for these weights). Not differentiable."""
        score = self(waveform, audiogram, sample_rate, spl)
        grams = torch.as_tensor(audiogram, dtype=torch.float32).reshape(-1, len(AUDIOGRAM_FREQUENCIES))
        pta = np.array([Audiogram(tuple(row.tolist())).pta() for row in grams.cpu()])
        if self.calibration is None:
            nan = torch.full_like(score, float("nan"))
            return score, nan, nan.clone()
        lo, hi = self.calibration.interval(score.cpu().numpy(), pta if len(pta) > 1 else pta[0])
        return score, torch.as_tensor(lo, dtype=score.dtype), torch.as_tensor(hi, dtype=score.dtype)


def _as_profile(audiogram: Profile | Tensor | np.ndarray | Sequence[float]) -> Profile:
    """The listener of `predict_file`: a `Profile` as it is, else 8 levels (both ears) or (2, 8) (left, right)."""
    if isinstance(audiogram, Profile):
        return audiogram
    n = len(AUDIOGRAM_FREQUENCIES)
    levels = torch.as_tensor(audiogram, dtype=torch.float32).detach().cpu()
    if tuple(levels.shape) not in ((n,), (1, n), (2, n)):
        raise ModelError(f"audiogram must have {n} values (dB HL at {AUDIOGRAM_FREQUENCIES} Hz) heard by both "
                         f"ears, or 2 x {n} (left, right), got shape {tuple(levels.shape)}")
    levels = levels.reshape(-1, n)
    return Profile("api", Audiogram(tuple(levels[0].tolist())), Audiogram(tuple(levels[-1].tolist())), source="api")


_DEFAULT: dict[tuple[str, str], HAAQIPredictor] = {}


def haaqi_loss(waveform: Tensor, audiogram: Tensor, sample_rate: int, *, predictor: HAAQIPredictor | None = None,
               spl: float | None = None, reduction: str = "mean") -> Tensor:
    """1 - predicted HAAQI; `reduction` in mean | sum | none. Without `predictor`, the registered
    "distilled" model is loaded once (on the waveform's device) and reused."""
    if predictor is None:
        key = ("distilled", str(waveform.device))
        if key not in _DEFAULT:
            _DEFAULT[key] = HAAQIPredictor.from_pretrained("distilled", device=waveform.device)
        predictor = _DEFAULT[key]
    loss = 1.0 - predictor(waveform, audiogram, sample_rate, spl)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ModelError(f"haaqi_loss: reduction must be mean, sum or none, not {reduction!r}")


__all__ = ["HAAQIPredictor", "haaqi_loss"]
