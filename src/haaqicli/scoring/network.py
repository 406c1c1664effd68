"""The network over windows: `WindowScorer` runs a model on batches of windows from any number of
files, and `network_threads` sets the CPU threads it runs on. Imported only where a model runs (torch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch


class WindowScorer:
    """Runs the model over windows: encoder once per window, head once per audiogram.

    Windows of several files (and channels) share encoder batches, so short files do not run the
    network on small batches."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = max(1, batch_size)
        # CUDA libraries choose kernels by tensor shape, so a window's scores moved by up to 5e-5 with the
        # number of its batch neighbours (measured on an H200). There every encoder batch and head chunk is
        # padded to batch_size rows: one shape, so a file scores the same alone as in a folder. The CPU
        # kernels agree within 1e-6 across batch shapes (tests), and padding would cost CPU time there.
        self.fixed_shapes = torch.device(device).type == "cuda"

    def _padded(self, rows: torch.Tensor) -> torch.Tensor:
        """`rows` padded with zeros to batch_size rows where fixed_shapes holds (callers keep the first
        len(rows) results)."""
        missing = self.batch_size - len(rows)
        if not self.fixed_shapes or missing <= 0:
            return rows
        return torch.cat([rows, rows.new_zeros((missing, *rows.shape[1:]))])

    def _head(self, features: Sequence[torch.Tensor], index: torch.Tensor,
              gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid clip and frame scores of head rows (encoder row `index`, audiogram `gram`): one pass,
        or, with fixed shapes, chunks of batch_size rows."""
        step = self.batch_size if self.fixed_shapes else max(1, len(index))
        clips, frames = [], []
        for start in range(0, len(index), step):
            rows = index[start : start + step]
            clip_logit, frame_logits = self.model.head(
                [self._padded(f.index_select(0, rows)) for f in features], self._padded(gram[start : start + step]))
            clips.append(torch.sigmoid(clip_logit[: len(rows)]))
            frames.append(torch.sigmoid(frame_logits[: len(rows)]))
        return torch.cat(clips), torch.cat(frames)

    def __call__(self, windows: np.ndarray, audiograms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows (N, T), audiograms (P, 8) -> clip scores (P, N) and frame scores (P, N, F)."""
        return self.score_units([(windows, audiograms)])[0]

    @torch.inference_mode()
    def score_units(
        self, units: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each unit (windows (N_i, T_i), audiograms (P_i, 8)): clip (P_i, N_i), frames (P_i, N_i, F)."""
        clips: list[list[np.ndarray]] = [[] for _ in units]
        frames: list[list[np.ndarray]] = [[] for _ in units]
        by_length: dict[int, list[int]] = {}
        for index, (windows, _) in enumerate(units):
            by_length.setdefault(windows.shape[-1], []).append(index)
        for members in by_length.values():  # only equal-length windows can share a batch
            windows = np.concatenate([units[i][0] for i in members])
            owner = np.repeat(members, [len(units[i][0]) for i in members])  # unit of each window
            for start in range(0, len(windows), self.batch_size):
                stop = min(start + self.batch_size, len(windows))
                wave = self._padded(torch.from_numpy(windows[start:stop]).to(self.device))
                features = self.model.encode(wave)
                # One head pass for the whole batch: a row per (window, distinct audiogram of its
                # unit). Profiles with equal ears, and a mono signal heard by both, cost one row.
                rows, grams, parts = [], [], []
                for unit in np.unique(owner[start:stop]):
                    mine = np.flatnonzero(owner[start:stop] == unit)
                    distinct, inverse = np.unique(units[unit][1], axis=0, return_inverse=True)
                    parts.append((unit, sum(len(r) for r in rows), len(mine), len(distinct), inverse.ravel()))
                    for gram in distinct:
                        rows.append(mine)
                        grams.append(np.broadcast_to(gram, (len(mine), gram.shape[0])))
                index = torch.from_numpy(np.concatenate(rows)).to(self.device)
                gram = torch.from_numpy(np.concatenate(grams).astype(np.float32)).to(self.device)
                clip_scores, frame_scores = self._head(features, index, gram)
                clip = clip_scores.float().cpu().numpy()
                frame = frame_scores.float().cpu().numpy()
                for unit, first, n, n_distinct, inverse in parts:
                    # (distinct audiograms, windows) -> one row per audiogram of the unit
                    unit_clip = clip[first : first + n * n_distinct].reshape(n_distinct, n)
                    unit_frame = frame[first : first + n * n_distinct].reshape(n_distinct, n, -1)
                    clips[unit].append(unit_clip[inverse])
                    frames[unit].append(unit_frame[inverse])
        return [(np.concatenate(c, axis=1), np.concatenate(f, axis=1)) for c, f in zip(clips, frames, strict=True)]


@contextlib.contextmanager
def network_threads(model: torch.nn.Module, device: torch.device, decoding_beside: bool = True) -> Iterator[None]:
    """Torch's CPU threads while files are scored: one fewer than usual for a model that leaves a core
    to the decoding beside it (`HAAQIModel.LEAVES_CORE_FOR_DECODING`), unless decoding runs mostly
    before the network does (``decoding_beside`` False: a decoding process that works while this one
    imports torch). The CPU kernels give the same scores at any thread count (tests)."""
    old = torch.get_num_threads()
    lighter = (decoding_beside and getattr(model, "LEAVES_CORE_FOR_DECODING", False)
               and torch.device(device).type == "cpu" and old > 1)
    if lighter:
        torch.set_num_threads(old - 1)
    try:
        yield
    finally:
        if lighter:
            torch.set_num_threads(old)
