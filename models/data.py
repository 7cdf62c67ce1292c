"""Feature store rows -> batches of tensors on the training device, without a DataLoader.

A split's rows are read from the store's fp16 memory maps once and kept on the device
("resident"): as fp32 when twice their fp16 size fits the budget, else as fp16 cast per batch.
A batch is then an index gather of those tensors. Only the arrays the model uses are loaded
(text-only reads the token features, or text_pooled alone when faithful; speech-only the audio alone).

When a split does not fit (real KEMDy20 audio, 512 x 1024 fp16 per utterance, is about 1 MB
each, about 13 GB with text for the training split), batches are gathered from the memory maps instead
("streamed"), through pinned memory on CUDA. The budget is half of the free device memory
(CUDA) or half of MemAvailable (CPU), or `CASE_TUNE_RESIDENT_MAX_BYTES` when set. A trial given
a fraction of a GPU (`CASE_TUNE_GPU_SHARE`, set by the search's trainable) takes at most half of
its share of the device's total memory, so the first of several trials packed on one GPU does
not take the memory the others need.

Per batch, axes a model allows (models' `trim`) are cut to the batch's longest true length:
with masks this changes no output and saves work; for faithful attention and speech-only it is
the seed's padding of audio to the batch's longest utterance.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.store import FeatureStore

LENGTHS = ("text_len", "audio_len")
GPU_SHARE_ENV = "CASE_TUNE_GPU_SHARE"
_LEN_OF = {"text": "text_len", "audio": "audio_len"}


def cuda_budget(free: int, total: int, share: float = 1.0) -> int:
    """Half of the free device memory, and at most half of this process's share of the total."""
    return int(min(free, total * min(max(share, 0.0), 1.0))) // 2


def use_gpu_share(gpus: float) -> None:
    """Tell this process it holds ``gpus`` of one GPU (Ray's fractional GPUs), so that
    :func:`resident_budget` sizes resident splits to that share. A whole GPU or more: no-op."""
    if 0 < gpus < 1:
        os.environ[GPU_SHARE_ENV] = str(gpus)


def resident_budget(device: torch.device) -> int:
    """Bytes a split may occupy on ``device`` before batches are streamed from disk."""
    env = os.environ.get("CASE_TUNE_RESIDENT_MAX_BYTES")
    if env:
        return int(float(env))
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return cuda_budget(free, total, float(os.environ.get(GPU_SHARE_ENV) or 1.0))
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 << 30


def _fit_frames(x: np.ndarray | torch.Tensor, frames: int):
    """Cut or zero-pad the frame axis (axis 1) of audio to ``frames``."""
    have = x.shape[1]
    if have >= frames:
        return x[:, :frames]
    if isinstance(x, np.ndarray):
        return np.pad(x, ((0, 0), (0, frames - have), (0, 0)))
    return F.pad(x, (0, 0, 0, frames - have))


@dataclass
class SplitData:
    """The rows of one split, ready to be batched. ``labels`` lives on the device."""

    split: str
    rows: np.ndarray
    labels: torch.Tensor
    device: torch.device
    frames: int
    trim: frozenset[str]
    store: FeatureStore
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    streamed_names: tuple[str, ...] = ()
    row_numel: dict[str, int] = field(default_factory=dict)
    _buffers: dict[tuple[str, torch.dtype], torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def resident(self) -> bool:
        return not self.streamed_names

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # Batches are written into buffers reused from step to step: a fresh 150 MB tensor
        # per step costs page faults that were 40 % of a step at the seed's sizes on CPU.
        numel = math.prod(shape)
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < numel:
            size = max(numel, shape[0] * self.row_numel.get(name, 0))
            buf = torch.empty(size, dtype=dtype, device=self.device)
            self._buffers[(name, dtype)] = buf
        return buf[:numel].view(shape)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of split positions ``idx`` (int64 tensor on the device), as fp32.

        The feature tensors returned are reused by the next call: use a batch before asking
        for the next one (clone it to keep it).
        """
        out = {k: self.arrays[k].index_select(0, idx) for k in LENGTHS}
        # one sync per trimmed axis and batch: cheap beside the work it saves
        limits = {name: int(out[_LEN_OF[name]].max()) for name in self.trim}
        b = len(idx)
        for name, src in self.arrays.items():
            if name in LENGTHS:
                continue
            if name in limits:
                src = src[:, : limits[name]]
            shape = (b, *src.shape[1:])
            dst = self._buffer(name, shape, torch.float32)
            if src.dtype == torch.float32:
                torch.index_select(src, 0, idx, out=dst)
            else:
                half = self._buffer(name, shape, src.dtype)
                torch.index_select(src, 0, idx, out=half)
                dst.copy_(half)
            out[name] = dst
        if self.streamed_names:
            rows = self.rows[idx.cpu().numpy()]
            for name in self.streamed_names:
                mm = getattr(self.store, name)
                lim = limits.get(name)
                x = mm[rows, :lim] if lim else mm[rows]
                if name == "audio":
                    x = _fit_frames(x, lim or self.frames)
                t = torch.from_numpy(np.ascontiguousarray(x))
                if self.device.type == "cuda":
                    out[name] = t.pin_memory().to(self.device, non_blocking=True).float()
                else:
                    out[name] = self._buffer(name, tuple(t.shape), torch.float32).copy_(t)
        return out


def load_split(
    store: FeatureStore,
    split: str,
    *,
    uses: frozenset[str],
    frames: int,
    trim: frozenset[str] = frozenset(),
    device: torch.device,
    budget: int | None = None,
    rows: np.ndarray | None = None,
) -> SplitData:
    """Read ``split``'s rows of the arrays in ``uses`` (+ lengths) onto ``device``.

    ``rows`` (store row positions, e.g. a fold of the training sessions) replaces the store's
    rows of ``split``; the caller got them through ``store.indices``, which enforces sealing.
    """
    rows = store.indices(split) if rows is None else np.asarray(rows, dtype=np.int64)
    labels = torch.from_numpy(store.table["label_id"].to_numpy(dtype=np.int64)[rows]).to(device)
    text_len = torch.from_numpy(np.asarray(store.text_len[rows], dtype=np.int64))
    audio_len = torch.from_numpy(np.asarray(store.audio_len[rows], dtype=np.int64)).clamp_max(
        frames
    )
    names = [n for n in ("text", "text_pooled", "audio") if n in uses]
    data = SplitData(split=split, rows=rows, labels=labels, device=device, frames=frames,
                     trim=frozenset(trim) & uses, store=store)  # fmt: skip
    data.row_numel = {n: int(np.prod(getattr(store, n).shape[1:])) for n in names}
    if "audio" in data.row_numel:
        data.row_numel["audio"] = data.row_numel["audio"] // store.max_frames * frames
    data.arrays["text_len"] = text_len.to(device)
    data.arrays["audio_len"] = audio_len.to(device)
    fp16_bytes = 2 * sum(data.row_numel.values()) * len(rows)
    budget = resident_budget(device) if budget is None else budget
    if fp16_bytes > budget:
        data.streamed_names = tuple(names)
        return data
    dtype = torch.float32 if 2 * fp16_bytes <= budget else torch.float16
    for name in names:
        x = np.asarray(getattr(store, name)[rows])
        if name == "audio":
            x = _fit_frames(x, frames)
        data.arrays[name] = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)
    return data


def iterate_in_order(n: int, batch_size: int, device: torch.device):
    """Index batches 0..n-1 in order (evaluation)."""
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(start + batch_size, n), device=device)


def fold_rows(store: FeatureStore, k: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``k`` session folds of the store's non-test rows (its train and val sessions, balanced
    by data_prep.splits.session_folds): per fold, the row positions to train on (the other
    folds) and to validate on (this fold). The test split is never touched."""
    from data_prep.splits import session_folds

    pool = np.sort(np.concatenate([store.indices("train"), store.indices("val")]))
    table = store.table.iloc[pool]
    sessions = table["session"].to_numpy()
    out = []
    for held in session_folds(table, k, seed=seed):
        held_out = np.isin(sessions, held)
        out.append({"train": pool[~held_out], "val": pool[held_out], "sessions": np.array(held)})
    return out
