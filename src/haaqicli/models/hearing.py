"""Hearing-loss conditioning where the loss acts: per auditory band, not as 8 numbers before the BLSTM.

HAAQI hears the reference through NAL-R for the listener and both signals through a cochlea whose
thresholds the audiogram raises, band by band. This branch gives the head that knowledge explicitly:

- :class:`BandLevels` (model side, needs the wave): the input's level in ``bands`` ERB-spaced bands
  (HAAQI's ear model spacing, 80 Hz - 8 kHz), in dB SPL of the model's calibration (an RMS of
  REFERENCE_RMS is DEFAULT_SPL), at the encoder's frame rate. A cheap STFT, independent of the
  encoder, so the teacher and the student share it.
- :class:`BandConditioning` (head side, has the audiogram): the audiogram and the NAL-R insertion
  gains interpolated onto the same bands; each band's aided sensation level
  ``level + gain - hearing level`` is modulated by a per-band FiLM whose scale and shift come from
  that band's hearing level and gain (zero-initialised: a fresh branch is the plain sensation level),
  then projected to ``d_bands`` features that join the BLSTM input beside the adapter output.

Why in the head and not as FiLM inside the encoder: the engine encodes each window once and runs the
head once per distinct audiogram (one pass for many profiles). Band levels travel with the encoder
features (one extra tensor at the end of `encode`'s list), so that sharing stays.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haaqicli.reference.formula import HAAQI_FREQUENCIES, center_frequencies, haaqi_loss, nalr_gain_db
from haaqicli.util.constants import AUDIOGRAM_FREQUENCIES, DEFAULT_SPL, REFERENCE_RMS

# dB SPL of a mean square of 1 in the model's calibration: RMS REFERENCE_RMS is heard at DEFAULT_SPL.
FULL_SCALE_SPL = DEFAULT_SPL - 20.0 * math.log10(REFERENCE_RMS)
LEVEL_FLOOR_DB = -20.0  # silence: band levels never go below this (dB SPL)


def interpolation_matrix(source_hz: np.ndarray, target_hz: np.ndarray) -> np.ndarray:
    """(len(target), len(source)) matrix of linear interpolation on log frequency (held flat beyond
    the ends), so values at `source_hz` map onto `target_hz` by one matrix product."""
    eye = np.eye(len(source_hz))
    return np.stack([np.interp(np.log(target_hz), np.log(source_hz), eye[i]) for i in range(len(source_hz))], axis=1)


def band_edges(centres: np.ndarray) -> np.ndarray:
    """Edges between ERB-spaced centres (geometric means), with the outer edges half a band beyond."""
    inner = np.sqrt(centres[1:] * centres[:-1])
    return np.concatenate(([centres[0] ** 2 / inner[0]], inner, [centres[-1] ** 2 / inner[-1]]))


def frame_power(wave: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """wave (B, T) -> one-sided power (B, M, n_fft // 2 + 1) of windowed frames (a wave shorter than
    one frame is zero-padded to one)."""
    x = wave.float()
    if x.shape[-1] < n_fft:
        x = F.pad(x, (0, n_fft - x.shape[-1]))
    spec = torch.fft.rfft(x.unfold(-1, n_fft, hop) * window)
    return spec.real.square() + spec.imag.square()


class FramePower(nn.Module):
    """Shared by the front ends that read a window's framed power spectrum: `frame_key` names the
    framing, so `haaqinet.with_head_inputs` computes one spectrum for all modules that share it."""

    def __init__(self, sample_rate: int, bands: int, frame_ms: float, overlap: int) -> None:
        super().__init__()
        self.n_fft = 1 << (int(sample_rate * frame_ms / 1000) - 1).bit_length()
        self.hop = self.n_fft // overlap
        window = torch.hann_window(self.n_fft, periodic=True)
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / sample_rate)
        edges = band_edges(center_frequencies(bands))
        member = (freqs[:, None] >= edges[None, :-1]) & (freqs[:, None] < edges[None, 1:])
        # One-sided power -> mean square per band (Parseval with the window's energy).
        scale = 2.0 / (self.n_fft * float(window.square().sum()))
        # Non-persistent: derived from the config, never part of the weights.
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("bank", torch.from_numpy(member.astype(np.float32) * scale), persistent=False)

    @property
    def frame_key(self) -> tuple[int, int]:
        return self.n_fft, self.hop

    def power(self, wave: Tensor) -> Tensor:
        return frame_power(wave, self.n_fft, self.hop, self.window)


class BandLevels(FramePower):
    """wave (B, T) calibrated -> band levels (B, frames, bands) in dB SPL, pooled to `frames`."""

    def __init__(self, sample_rate: int, bands: int, frame_ms: float = 40.0) -> None:
        # ~43 ms frames at 24 kHz (23 Hz bins: every ERB band from 80 Hz up holds at least one), not
        # overlapping: the levels are averaged over the encoder's 160-ms frames anyway, at half the cost.
        super().__init__(sample_rate, bands, frame_ms, overlap=1)

    def forward(self, wave: Tensor, frames: int, power: Tensor | None = None) -> Tensor:
        power = self.power(wave) if power is None else power
        # Average over time first (all linear), then sum the bins of each band: the small product last.
        power = F.adaptive_avg_pool1d(power.transpose(1, 2), max(1, frames)).transpose(1, 2) @ self.bank
        return (10.0 * torch.log10(power.clamp_min(1e-30)) + FULL_SCALE_SPL).clamp_min(LEVEL_FLOOR_DB)


class BandConditioning(nn.Module):
    """(band levels (B, F, bands), audiogram (B, 8) dB HL) -> (B, F, d_out) hearing-aware features."""

    def __init__(self, bands: int, d_out: int, d_film: int = 16, d_band: int = 4) -> None:
        super().__init__()
        centres = center_frequencies(bands)
        self.register_buffer("hl_matrix", torch.from_numpy(interpolation_matrix(
            np.asarray(AUDIOGRAM_FREQUENCIES, dtype=float), centres).astype(np.float32)), persistent=False)
        self.register_buffer("gain_matrix", torch.from_numpy(
            interpolation_matrix(HAAQI_FREQUENCIES, centres).astype(np.float32)), persistent=False)
        self.band_embedding = nn.Parameter(torch.zeros(bands, d_band))
        self.film = nn.Sequential(nn.Linear(2 + d_band, d_film), nn.GELU(), nn.Linear(d_film, 2))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)
        self.proj = nn.Sequential(nn.Linear(bands, d_out), nn.GELU())

    def hearing(self, audiogram: Tensor) -> tuple[Tensor, Tensor]:
        """(hearing level, NAL-R insertion gain) per band, (B, bands) each, in dB."""
        loss6 = np.stack([haaqi_loss(row) for row in audiogram.detach().cpu().double().numpy()])
        gains = torch.from_numpy(nalr_gain_db(loss6).astype(np.float32)).to(audiogram.device)
        return audiogram.float() @ self.hl_matrix.T, gains @ self.gain_matrix.T

    def forward(self, levels: Tensor, audiogram: Tensor) -> Tensor:
        hl, gain = self.hearing(audiogram)
        inputs = torch.cat([torch.stack([hl / 100.0, gain / 50.0], -1),
                            self.band_embedding.expand(len(hl), -1, -1)], -1)  # (B, bands, 2 + d_band)
        scale, shift = self.film(inputs).unbind(-1)  # (B, bands) each
        sensation = (levels + (gain - hl).unsqueeze(1)) / 50.0  # aided level above threshold, ~[-1, 2]
        return self.proj(sensation * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)).to(levels.dtype)
