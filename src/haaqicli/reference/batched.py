"""HAAQI for a batch of clips at once, in torch: clips, signals and bands are tensor dimensions, and the
ear model and BM coherence run on CUDA when it is present.

Per clip, the signal front end (resampling to 24 kHz, broadband alignment, NAL-R, middle ear) and the
threshold noise are the numpy code the numba engine uses, so both engines see identical inputs and
noise. Everything heavy after it runs batched on the device: the control and main gammatone passes,
OHC compression, the per-band alignment searches, IHC adaptation, envelope smoothing and the BM
coherence. Every recursion of the model is *linear* (the gammatone resonators, the 800 Hz smoothing of
the OHC gain, the IHC RC circuit, whose clip at zero comes after its state update), so each runs as an
IIR filter in torchaudio's `lfilter`, which has a CUDA kernel. Everything is float64.

On a CPU this engine is far slower than the numba one, slower even than pyclarity (torchaudio's CPU
lfilter is a scalar loop per channel), so `compute_haaqi_batch` uses it on CUDA devices only; on the
CPU it serves the tests. Scores agree with the numba engine to 1e-6 on
every term (tests/test_reference_batched.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.fft import next_fast_len

from haaqicli.reference.dsp import butter
from haaqicli.reference.ear import (
    FS,
    N_BANDS,
    SMALL,
    _bandwidth_for_level,
    _compression_rule,
    _group_delay_samples,
    _resonator_coefficients,
    _rms_to_sl,
    center_frequencies,
    ear_parameters,
    front_end,
    ihc_state_space,
    threshold_noise,
)
from haaqicli.reference.haaqi import (
    bm_sync5,
    bm_window_tables,
    combine_terms,
    compute_haaqi,
    env_smooth,
    mel_cepstral_high,
    segment_count,
    spectrum_terms,
    validated_inputs,
)
from haaqicli.util.devices import resolve_device

MAX_LAG_MS = 100.0  # per-band envelope / BM alignment search range, as in the numba engine
BM_FFT_SIZE = 512  # >= 384-sample segment + 24 lags: the +-1 ms BM correlations without wrap-around


def _ihc_filter() -> tuple[list[float], list[float], float]:
    """IHC adaptation (`ear.ihc_state_space`) as a 2nd-order IIR filter from the dB SL envelope v0 to
    the state v1, plus r1: the output is max((v0 - v1) / r1, 0). The state update s[n] = M s[n-1] +
    g v0[n] does not depend on the clipped output, so v1 = [1, 0] (I - M/z)^-1 g v0."""
    g1, g2, m11, m12, m21, m22, r1 = ihc_state_space()
    b = [g1, -m22 * g1 + m12 * g2, 0.0]
    a = [1.0, -(m11 + m22), m11 * m22 - m12 * m21]
    return b, a, r1


def _lfilter(signal: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Filter each row of `signal` (rows, samples) by its own coefficient row of b and a (same width)."""
    # lazy: torchaudio only where this path runs (start-up time)
    from torchaudio.functional import lfilter

    return lfilter(signal, a, b, clamp=False, batching=True)


@dataclass
class _Clip:
    """One item after the numpy front end: 24 kHz signals, ear parameters and its threshold noise."""

    x: np.ndarray
    y: np.ndarray
    params: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]  # reference, processed loss parameters
    level1: float
    noise_gain: float
    noise: np.ndarray  # (2, bands, samples): reference, processed

    @property
    def n(self) -> int:
        return len(self.x)


_HAAQI_ARGUMENTS = inspect.signature(compute_haaqi)


def _prepare(item: Mapping[str, Any]) -> _Clip:
    args = _HAAQI_ARGUMENTS.bind(**item)
    args.apply_defaults()
    a = args.arguments
    loss, ref, proc = validated_inputs(a["processed"], a["reference"], a["processed_sr"], a["reference_sr"],
                                       a["audiogram"], a["equalisation"], a["level1"], a["noise"])
    x, y = front_end(ref, a["reference_sr"], proc, a["processed_sr"], loss, a["equalisation"])
    params_x, params_y, _ = ear_parameters(loss, a["equalisation"])
    gain, noise = threshold_noise((N_BANDS, len(x)), a["level1"], a["seed"], a["noise"])
    return _Clip(x, y, (params_x, params_y), float(a["level1"]), gain, noise)


class _Batch:
    """Rows 2b and 2b + 1 are the reference and processed signals of clip b, zero-padded to one length."""

    def __init__(self, clips: Sequence[_Clip], device: torch.device) -> None:
        self.clips = list(clips)
        self.device = device
        self.n_samples = max(c.n for c in clips)
        rows = [s for c in clips for s in (c.x, c.y)]
        self.signal = torch.zeros(len(rows), self.n_samples, dtype=torch.float64)
        for r, s in enumerate(rows):
            self.signal[r, : len(s)] = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float64))
        self.signal = self.signal.to(device)
        self.lengths = torch.tensor([c.n for c in clips for _ in range(2)], device=device)
        self.time = torch.arange(self.n_samples, device=device)
        self.valid = self.time[None, :] < self.lengths[:, None]  # (rows, samples)
        cf = center_frequencies()
        phase = torch.as_tensor(2.0 * np.pi / FS * cf, dtype=torch.float64, device=device)[:, None] * self.time
        # the demodulating carrier exp(-i w n), the phasor the numba engine advances by rotation
        self.cos, self.sin = torch.cos(phase), -torch.sin(phase)

    def rows(self, per_signal: Any) -> torch.Tensor:
        """(rows, bands) tensor from a function of (clip, signal index)."""
        values = [np.broadcast_to(np.asarray(per_signal(c, s), dtype=float), (N_BANDS,))
                  for c in self.clips for s in (0, 1)]
        return torch.as_tensor(np.stack(values), dtype=torch.float64, device=self.device)

    def mean_square(self, env: torch.Tensor) -> torch.Tensor:
        """Mean square over each row's own samples: (rows, bands)."""
        return (env.square() * self.valid[:, None, :]).sum(-1) / self.lengths[:, None]

    def gammatone(self, rel_bw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Envelope and BM motion (rows, bands, samples) of the 4th-order gammatone filterbank with
        bandwidths `rel_bw` (rows, bands), by complex demodulation and one resonator per band."""
        a1, a2, a3, a4, a5, gain = _resonator_coefficients(rel_bw, center_frequencies())
        zero, one = np.zeros_like(a1), np.ones_like(a1)
        b = np.stack((one, a1, a5, zero, zero), -1)
        a = np.stack((one, -a1, -a2, -a3, -a4), -1)
        # (rows, bands, re/im) channels, each with its band's coefficients
        b = torch.as_tensor(np.repeat(b.reshape(-1, 5), 2, axis=0), device=self.device)
        a = torch.as_tensor(np.repeat(a.reshape(-1, 5), 2, axis=0), device=self.device)
        demodulated = torch.stack((self.signal[:, None, :] * self.cos, self.signal[:, None, :] * self.sin), 2)
        rows, bands = rel_bw.shape
        out = _lfilter(demodulated.reshape(-1, self.n_samples), b, a).reshape(rows, bands, 2, self.n_samples)
        del demodulated
        real, imag = out[:, :, 0], out[:, :, 1]
        gain = torch.as_tensor(gain, device=self.device)[..., None]
        envelope = gain * torch.sqrt(real * real + imag * imag)
        bm = gain * (real * self.cos + imag * self.sin)
        return envelope, bm

    def shifted(self, signal: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """signal[..., t + shift] where that index lies in the row's samples, else 0; and that mask."""
        index = self.time + shift[..., None]
        inside = (index >= 0) & (index < self.lengths[:, None, None])
        values = torch.gather(signal, -1, index.clamp(0, self.n_samples - 1))
        return values * inside, inside


def _best_lags(ref: torch.Tensor, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per clip and band, the lag L in [-M+1, M] (M = 100 ms, or the clip length if shorter)
    maximising sum_m ref[m+L] out[m]; the first maximum wins, as in the numba engine. Samples past each
    clip's length must be zero."""
    n_samples = ref.shape[-1]
    max_lag = int(np.rint(0.001 * MAX_LAG_MS * FS))
    size = next_fast_len(n_samples + max_lag + 1, real=True)
    spectrum = torch.fft.rfft(ref, size) * torch.fft.rfft(out, size).conj()
    lags = torch.arange(-max_lag + 1, max_lag + 1, device=ref.device)
    corr = torch.fft.irfft(spectrum, size)[..., lags % size]
    del spectrum
    limit = torch.minimum(lengths, torch.tensor(max_lag, device=ref.device))[:, None, None]
    corr = corr.masked_fill((lags <= -limit) | (lags > limit), -torch.inf)
    return lags[torch.argmax(corr, dim=-1)]


def _ear_model(clips: Sequence[_Clip], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list]:
    """dB SL envelopes and BM motion (rows, bands, samples) after IHC adaptation, noise and group-delay
    compensation, and per clip the (reference, processed) long-term band levels in dB SL."""
    batch = _Batch(clips, device)
    params = [c.params[s] for c in clips for s in (0, 1)]  # per row: attn_ohc, bw_min, knee, ratio, attn_ihc
    levels = np.array([c.level1 for c in clips for _ in (0, 1)])
    bw_max = ear_parameters(np.zeros(6), 1)[2]

    # Control path (widest filters): its clipped envelope sets the OHC gain, its level the bandwidths.
    control_env, _ = batch.gammatone(np.tile(bw_max, (len(params), 1)))
    control_rms = torch.sqrt(batch.mean_square(control_env)).cpu().numpy()
    rules = [_compression_rule(p[0], p[2], p[3], level) for p, level in zip(params, levels, strict=True)]
    lo, hi, power, scale = (torch.as_tensor(np.stack([rule[i] for rule in rules]), device=device)[..., None]
                            for i in range(4))
    ohc_gain = torch.clamp(control_env, lo, hi).pow(power) * scale
    del control_env
    (lp_b0, lp_b1), (_, lp_a1) = butter(1, 800 / (0.5 * FS))
    n_channels = ohc_gain.shape[0] * ohc_gain.shape[1]
    lp_b = torch.tensor([[lp_b0, lp_b1]], dtype=torch.float64, device=device).expand(n_channels, 2)
    lp_a = torch.tensor([[1.0, lp_a1]], dtype=torch.float64, device=device).expand(n_channels, 2)
    ohc_gain = _lfilter(ohc_gain.reshape(n_channels, -1), lp_b, lp_a).reshape(ohc_gain.shape)

    bandwidths = np.stack([_bandwidth_for_level(control_rms[r], p[1], bw_max, levels[r])
                           for r, p in enumerate(params)])
    env, bm = batch.gammatone(bandwidths)
    avg = torch.sqrt(batch.mean_square(env)).cpu().numpy()
    env *= ohc_gain
    bm *= ohc_gain
    del ohc_gain
    env *= batch.valid[:, None, :]
    bm *= batch.valid[:, None, :]

    # Per-band alignment of the processed rows to the reference rows (envelope and BM separately).
    clip_lengths = batch.lengths[0::2]
    zero = torch.zeros(len(clips), N_BANDS, dtype=torch.long, device=device)
    shift_env = torch.stack((zero, -_best_lags(env[0::2], env[1::2], clip_lengths)), 1).reshape(-1, N_BANDS)
    shift_bm = torch.stack((zero, -_best_lags(bm[0::2], bm[1::2], clip_lengths)), 1).reshape(-1, N_BANDS)

    # dB SL, IHC adaptation, BM rescaled by the adaptation gain, threshold noise.
    offset = batch.rows(lambda c, s: c.level1 - c.params[s][4])[..., None]
    env, inside = batch.shifted(env, shift_env)
    level = torch.where(inside, torch.clamp(20.0 * torch.log10(env + SMALL) + offset, min=0.0), 0.0)
    bm, _ = batch.shifted(bm, shift_bm)
    ihc_b, ihc_a, r1 = _ihc_filter()
    rows = level.shape[0] * N_BANDS
    state = _lfilter(level.reshape(rows, -1), torch.tensor([ihc_b], dtype=torch.float64, device=device).expand(rows, 3),
                     torch.tensor([ihc_a], dtype=torch.float64, device=device).expand(rows, 3)).reshape(level.shape)
    adapted = torch.clamp((level - state) * (1.0 / r1), min=0.0)
    del state
    bm = bm * ((adapted + SMALL) / (env + SMALL))  # b (v0/e) (o/v0), the form of ear._ihc_step
    del env, level
    noise = torch.zeros_like(bm)
    for b, clip in enumerate(clips):
        noise[2 * b : 2 * b + 2, :, : clip.n] = torch.from_numpy(clip.noise).to(device, torch.float64) * clip.noise_gain
    bm += noise
    del noise

    # Group-delay compensation with the reference's bandwidths, for both signals of a clip.
    delays = []
    for b, clip in enumerate(clips):
        gd = _group_delay_samples(bandwidths[2 * b], center_frequencies())
        gd = gd - gd.min()
        delays += [np.minimum(gd.max() - gd, clip.n)] * 2
    delay = torch.as_tensor(np.stack(delays), dtype=torch.long, device=device)
    db, _ = batch.shifted(adapted, -delay)
    bm, _ = batch.shifted(bm, -delay)

    sl = []
    for b, clip in enumerate(clips):
        pair = []
        for s in (0, 1):
            attn_ohc, _, knee, ratio, attn_ihc = clip.params[s]
            r = 2 * b + s
            pair.append(_rms_to_sl(avg[r], control_rms[r], attn_ohc, knee, ratio, attn_ihc, clip.level1))
        sl.append(pair)
    return db, bm, sl


def bm_covariance(x_bm: torch.Tensor, y_bm: torch.Tensor, segment_ms: float = 16.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`haaqi.bm_covariance` for (bands, samples) tensors: per band and 50%-overlap segment, the peak
    over +-1 ms lags of the window-unbiased normalised cross-covariance, clipped to [0, 1], and 2x
    the reference mean square. The lags come from one FFT correlation per segment."""
    max_lag, half, w, full_corr, half_corr, full_ms, half_ms = bm_window_tables(segment_ms)
    nwin = 2 * half
    n_bands, n = x_bm.shape
    nseg = segment_count(n, nwin)
    device, dtype = x_bm.device, x_bm.dtype
    w = torch.as_tensor(w, dtype=dtype, device=device)
    # the first and last segments are one block under a half window, the others two under the whole
    half_length = torch.zeros(nseg, dtype=torch.bool, device=device)
    half_length[0] = half_length[-1] = True
    length = torch.where(half_length, half, nwin).to(dtype)
    inside = torch.arange(nwin, device=device) < torch.where(half_length, half, nwin)[:, None]

    def segments(signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = signal[:, : nseg * half].reshape(n_bands, nseg, half)
        seg = signal.new_zeros(n_bands, nseg, nwin)
        if nseg > 1:
            seg[:, nseg - 1, :half] = blocks[:, nseg - 1] * w[:half]
        if nseg > 2:
            seg[:, 1 : nseg - 1, :half] = blocks[:, 1 : nseg - 1] * w[:half]
            seg[:, 1 : nseg - 1, half:] = blocks[:, 2:nseg] * w[half:]
        seg[:, 0, :half] = blocks[:, 0] * w[half:]
        seg -= (seg.sum(-1) / length)[..., None] * inside
        return seg, seg.square().sum(-1)

    xs, x_ss = segments(x_bm)
    ys, y_ss = segments(y_bm)
    corr = torch.fft.irfft(torch.fft.rfft(xs, BM_FFT_SIZE) * torch.fft.rfft(ys, BM_FFT_SIZE).conj(), BM_FFT_SIZE)
    del xs, ys
    lags = torch.arange(-max_lag, max_lag + 1, device=device) % BM_FFT_SIZE
    unbias = torch.where(half_length[:, None], torch.as_tensor(half_corr, device=device),
                         torch.as_tensor(full_corr, device=device)).to(dtype)
    peak = (corr[..., lags] * unbias).abs().amax(-1)
    energy = torch.where(half_length, half_ms, full_ms).to(dtype)
    x_ms, y_ms = x_ss * energy, y_ss * energy
    ok = (x_ms > 1e-30) & (y_ms > 1e-30)
    cov = torch.where(ok, peak / torch.sqrt(torch.where(ok, x_ms * y_ms, 1.0)), 0.0)
    return cov.clamp(0.0, 1.0), 2.0 * x_ms


def haaqi_terms_batch(items: Sequence[Mapping[str, Any]], device: str | torch.device = "auto") -> list[dict[str, float]]:
    """`haaqi_terms` of every item (dicts of compute_haaqi keyword arguments), the clips processed
    together on `device` ("auto": CUDA when present). Items must all be valid: a bad one raises."""
    if not items:
        return []
    dev = resolve_device(device)
    clips = [_prepare(item) for item in items]
    with torch.no_grad():
        db, bm, sl = _ear_model(clips, dev)
        results = []
        for b, clip in enumerate(clips):
            x_db, y_db = db[2 * b, :, : clip.n], db[2 * b + 1, :, : clip.n]
            cep_high = mel_cepstral_high(env_smooth(x_db).cpu().numpy(), env_smooth(y_db).cpu().numpy())
            cov, ref_ms = bm_covariance(bm[2 * b, :, : clip.n], bm[2 * b + 1, :, : clip.n])
            sync5 = bm_sync5(cov.cpu().numpy(), ref_ms.cpu().numpy())
            results.append(combine_terms(cep_high, sync5, *spectrum_terms(*sl[b])))
    return results


def compute_haaqi_torch(items: Sequence[Mapping[str, Any]], device: str | torch.device = "auto",
                        batch_size: int = 8) -> list[float]:
    """Scores of many items, `batch_size` clips at a time on `device` (in order)."""
    scores: list[float] = []
    for start in range(0, len(items), max(1, batch_size)):
        scores += [t["score"] for t in haaqi_terms_batch(items[start : start + batch_size], device)]
    return scores
