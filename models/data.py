"""Feature store rows -> batches of tensors on the training device, without a DataLoader.

A split's rows are read from the store's fp16 memory maps once and kept on the device
("resident"): as fp32 when that fits the budget, else as fp16 cast per batch. A batch is then
an index gather of those tensors. Only the arrays the model uses are loaded (text-only reads
the token features, or text_pooled alone when faithful; speech-only the audio alone).
Loading goes through chunks of :data:`LOAD_CHUNK_BYTES` into the final tensor, so its peak is
the resident tensor plus one chunk, never an fp16 copy and an fp32 copy of the split at once.

When a split does not fit (real KEMDy20 audio, 512 x 1024 fp16 per utterance, is about 1 MB
each, about 13 GB with text for the training split), batches are gathered from the memory maps
instead ("streamed"; said once per process and split). A background thread assembles the next
batch while the current one trains, into two sets of buffers reused from step to step (pinned
host memory on CUDA, copied to the device asynchronously). The next batch is known because
the training loop asks for consecutive slices of one permutation (and evaluation for
consecutive slices of one range): a guess that is checked, so a different next request is
served synchronously, never wrongly.

The budget (:func:`budget_report`):
- CUDA: half of the free device memory, and at most half of this process's share of the
  device (`CASE_TUNE_GPU_SHARE`, set by the search's trainable), so the first of several
  trials packed on one GPU does not take the memory the others need;
- CPU: half of this trial's part of the memory available: MemAvailable, or less when the
  process's memory cgroup has a limit, divided by the number of runs of this size that fit on
  the node at once (Ray's node resources over the trial's request), and at most Ray's
  per-trial ``memory`` request when the trial made one;
- `CASE_TUNE_RESIDENT_MAX_BYTES` overrides both.

Per batch, axes a model allows (models' `trim`) are cut to the batch's longest true length:
with masks this changes no output and saves work; for faithful attention and speech-only it is
the seed's padding of audio to the batch's longest utterance.

CUDA-only lines, which no CPU test runs: the pinned allocation in `_host_buffer`, the
asynchronous copy and event in `_to_device`, and the event wait in `_assemble`.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.device import ray_node_share
from data_prep.store import FeatureStore

log = logging.getLogger(__name__)

LENGTHS = ("text_len", "audio_len")
GPU_SHARE_ENV = "CASE_TUNE_GPU_SHARE"
RESIDENT_MAX_ENV = "CASE_TUNE_RESIDENT_MAX_BYTES"
LOAD_CHUNK_BYTES = 64 << 20  # fp16 bytes read per step while loading a resident split
_LEN_OF = {"text": "text_len", "audio": "audio_len"}
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number
_TOLD: set[tuple[str, str, str]] = set()  # (store key, split, device) already said to stream


def cuda_budget(free: int, total: int, share: float = 1.0) -> int:
    """Half of the free device memory, and at most half of this process's share of the total."""
    return int(min(free, total * min(max(share, 0.0), 1.0))) // 2


def host_budget(available: int, *, sharers: int = 1, request: int | None = None) -> int:
    """Half of one trial's part of ``available`` host bytes: ``sharers`` trials may hold a
    resident split at once; a Ray ``memory`` request bounds the trial's part too."""
    part = available // max(1, sharers)
    if request:
        part = min(part, int(request))
    return part // 2


def use_gpu_share(gpus: float) -> None:
    """Tell this process it holds ``gpus`` of one GPU (Ray's fractional GPUs), so that
    :func:`resident_budget` sizes resident splits to that share. A whole GPU or more: no-op."""
    if 0 < gpus < 1:
        os.environ[GPU_SHARE_ENV] = str(gpus)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def cgroup_room(
    root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
) -> int | None:
    """Bytes this process's memory cgroup can still take, or None when it has no limit.

    Usage counts what cannot be reclaimed (usage minus inactive file cache, as ``docker
    stats`` does): the store's page cache is reclaimable. cgroup v2: the tightest limit of
    the process's cgroup and its ancestors; v1: ``hierarchical_memory_limit``.
    """
    root = Path(root)
    paths = {}
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:  # "id:controllers:path"; v2's controllers are ""
            for c in parts[1].split(","):
                paths[c] = parts[2]
    rooms = []
    if (root / "cgroup.controllers").exists():  # v2 (unified)
        d = root / paths.get("", "/").lstrip("/")
        while True:
            limit = _read(d / "memory.max")
            current = _read(d / "memory.current")
            if limit and limit != "max" and current:
                inactive = _stat(d / "memory.stat").get("inactive_file", 0)
                rooms.append(int(limit) - (int(current) - inactive))
            if d == root or root not in d.parents:
                break
            d = d.parent
    else:  # v1: the memory controller's own hierarchy
        base = root / "memory"
        d = base / paths.get("memory", "/").lstrip("/")
        if not (d / "memory.usage_in_bytes").exists():
            d = base  # a container sees its own cgroup as the root
        stat = _stat(d / "memory.stat")
        limit = stat.get("hierarchical_memory_limit") or int(
            _read(d / "memory.limit_in_bytes") or _UNLIMITED
        )
        usage = _read(d / "memory.usage_in_bytes")
        if limit < _UNLIMITED and usage:
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            rooms.append(limit - (int(usage) - inactive))
    return max(0, min(rooms)) if rooms else None


def _mem_available() -> int | None:
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def budget_report(device: torch.device) -> tuple[int, str]:
    """Bytes a split may occupy on ``device`` before batches are streamed, and why."""
    env = os.environ.get(RESIDENT_MAX_ENV)
    if env:
        return int(float(env)), f"{RESIDENT_MAX_ENV}={env}"
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        share = float(os.environ.get(GPU_SHARE_ENV) or 1.0)
        return cuda_budget(free, total, share), (
            f"half of {free / 1e9:.1f} GB free on {device}, of a {share:g} share of "
            f"{total / 1e9:.1f} GB"
        )
    available = _mem_available()
    room = cgroup_room()
    why = [f"MemAvailable {available / 1e9:.1f} GB" if available else "MemAvailable unknown"]
    if room is not None:
        why.append(f"cgroup room {room / 1e9:.1f} GB")
    known = [x for x in (available, room) if x is not None]
    available = min(known) if known else 8 << 30
    sharers, request = ray_node_share()
    if sharers > 1:
        why.append(f"shared by up to {sharers} runs of this size on the node")
    if request:
        why.append(f"Ray memory request {request / 1e9:.1f} GB")
    return host_budget(available, sharers=sharers, request=request), "half of: " + ", ".join(why)


def resident_budget(device: torch.device) -> int:
    """Bytes a split may occupy on ``device`` before batches are streamed from disk."""
    return budget_report(device)[0]


def _fit_frames(x: np.ndarray | torch.Tensor, frames: int):
    """Cut or zero-pad the frame axis (axis 1) of audio to ``frames``."""
    have = x.shape[1]
    if have >= frames:
        return x[:, :frames]
    if isinstance(x, np.ndarray):
        return np.pad(x, ((0, 0), (0, frames - have), (0, 0)))
    return F.pad(x, (0, 0, 0, frames - have))


@dataclass
class _Staged:
    """One streamed batch assembled on the host: which positions, and its host tensors."""

    key: tuple[int, ...]
    slot: int
    tensors: dict[str, torch.Tensor]


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
    prefetch: bool = True  # assemble the next streamed batch in a background thread
    prefetch_hits: int = 0  # streamed batches that were ready (assembled ahead) when asked for
    _buffers: dict[tuple[str, torch.dtype], torch.Tensor] = field(default_factory=dict)
    _host: dict[tuple[str, int, torch.dtype], torch.Tensor] = field(default_factory=dict)
    _copied: dict[int, torch.cuda.Event] = field(default_factory=dict)
    _lengths: dict[str, np.ndarray] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None
    _pending: tuple[tuple[int, ...], Future] | None = None
    _slot: int = 0  # the host buffer set holding the batch last returned

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

    def _host_buffer(
        self, name: str, slot: int, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        """Host buffer ``slot`` (0 or 1) of ``name``: two sets, so one batch can be filled
        while the other is used. Pinned on CUDA (CUDA-only line: ``pin_memory``)."""
        numel = math.prod(shape)
        buf = self._host.get((name, slot, dtype))
        if buf is None or buf.numel() < numel:
            size = max(numel, shape[0] * self.row_numel.get(name, 0))
            pin = self.device.type == "cuda"
            buf = torch.empty(size, dtype=dtype, pin_memory=pin)
            self._host[(name, slot, dtype)] = buf
        return buf[:numel].view(shape)

    def _assemble(self, positions: np.ndarray, slot: int) -> _Staged:
        """Gather the streamed arrays' rows at split ``positions`` into host buffer ``slot``:
        fp32 on CPU (these are the batch), fp16 on CUDA (copied to the device by the caller).
        Runs in the prefetch thread or, when the guess was wrong, in the caller's."""
        event = self._copied.pop(slot, None)
        if event is not None:
            event.synchronize()  # CUDA-only: the last copy out of this slot has finished
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")  # read the file front to back
        b = len(positions)
        out: dict[str, torch.Tensor] = {}
        for name in self.streamed_names:
            mm = getattr(self.store, name)
            width = self.frames if name == "audio" else (mm.shape[1] if mm.ndim > 2 else 0)
            if name in self.trim:  # the batch's longest true length (lengths are clamped)
                width = min(width, int(self._lengths[_LEN_OF[name]][positions].max()))
            shape = (b, width, *mm.shape[2:]) if mm.ndim > 2 else (b, *mm.shape[1:])
            half = self._host_buffer(name, slot, shape, torch.float16)
            dst = half.numpy()
            have = min(width, mm.shape[1]) if mm.ndim > 2 else None
            for i in order:
                r = rows[i]
                if have is None:
                    dst[i] = mm[r]
                else:
                    dst[i, :have] = mm[r, :have]
            if have is not None and have < width:
                dst[:, have:] = 0  # audio_frames longer than the store's: zero frames
            if self.device.type == "cuda":
                out[name] = half
            else:
                out[name] = self._host_buffer(name, slot, shape, torch.float32).copy_(half)
        return _Staged(tuple(positions.tolist()), slot, out)

    def _to_device(self, staged: _Staged) -> dict[str, torch.Tensor]:
        if self.device.type != "cuda":
            return staged.tensors
        # CUDA-only: an asynchronous copy from the pinned slot, cast on the device; the event
        # tells the prefetch thread when the slot may be refilled.
        out = {}
        for name, half in staged.tensors.items():
            dev_half = self._buffer(name, tuple(half.shape), torch.float16)
            dev_half.copy_(half, non_blocking=True)
            out[name] = self._buffer(name, tuple(half.shape), torch.float32).copy_(dev_half)
        event = torch.cuda.Event()
        event.record()
        self._copied[staged.slot] = event
        return out

    def _next_guess(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The slice after ``idx`` when ``idx`` is a slice of a 1-D tensor (a permutation or a
        range): what the training loop and evaluation ask for next."""
        base = idx._base
        if base is None or base.dim() != 1 or idx.dim() != 1 or idx.stride() != (1,):
            return None
        start = idx.storage_offset() - base.storage_offset() + len(idx)
        nxt = base[start : start + len(idx)]
        return nxt if len(nxt) else None

    def _streamed(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        positions = idx.cpu().numpy()
        key = tuple(positions.tolist())
        staged = None
        if self._pending is not None:
            want, future = self._pending
            self._pending = None
            done = future.result()  # also when unused: it was writing into a slot
            staged = done if want == key else None
            self.prefetch_hits += staged is not None
        if staged is None:
            staged = self._assemble(positions, 1 - self._slot)
        self._slot = staged.slot
        out = self._to_device(staged)
        guess = self._next_guess(idx) if self.prefetch else None
        if guess is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="case-tune-prefetch")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            nxt = guess.cpu().numpy().copy()  # not a view of the caller's permutation
            # The other slot: by the contract of batch(), the one returned before is free.
            future = self._pool.submit(self._assemble, nxt, 1 - self._slot)
            self._pending = (tuple(nxt.tolist()), future)
        return out

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
            out.update(self._streamed(idx))
        return out


def _load_resident(
    mm: np.ndarray,
    rows: np.ndarray,
    *,
    frames: int | None,
    dtype: torch.dtype,
    device: torch.device,
    chunk_rows: int,
) -> torch.Tensor:
    """``mm[rows]`` (audio fitted to ``frames``) as one ``dtype`` tensor on ``device``, read
    ``chunk_rows`` rows at a time: the peak is the result plus one fp16 chunk."""
    shape = (len(rows), frames, *mm.shape[2:]) if frames else (len(rows), *mm.shape[1:])
    out = torch.empty(shape, dtype=dtype, device=device)
    for start in range(0, len(rows), chunk_rows):
        x = np.asarray(mm[rows[start : start + chunk_rows]])
        if frames:
            x = _fit_frames(x, frames)
        out[start : start + len(x)].copy_(torch.from_numpy(np.ascontiguousarray(x)))
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
    text_len = np.asarray(store.text_len[rows], dtype=np.int64)
    audio_len = np.minimum(np.asarray(store.audio_len[rows], dtype=np.int64), frames)
    names = [n for n in ("text", "text_pooled", "audio") if n in uses]
    data = SplitData(
        split=split,
        rows=rows,
        labels=labels,
        device=device,
        frames=frames,
        trim=frozenset(trim) & uses,
        store=store,
    )
    data.row_numel = {n: int(np.prod(getattr(store, n).shape[1:])) for n in names}
    if "audio" in data.row_numel:
        data.row_numel["audio"] = data.row_numel["audio"] // store.max_frames * frames
    data._lengths = {"text_len": text_len, "audio_len": audio_len}
    data.arrays["text_len"] = torch.from_numpy(text_len).to(device)
    data.arrays["audio_len"] = torch.from_numpy(audio_len).to(device)
    row_fp16 = 2 * sum(data.row_numel.values())
    fp16_bytes = row_fp16 * len(rows)
    chunk_rows = max(1, LOAD_CHUNK_BYTES // max(1, row_fp16))
    chunk = min(fp16_bytes, chunk_rows * row_fp16)
    if budget is None:
        budget, why = budget_report(device)
    else:
        why = "the budget given"
    if fp16_bytes + chunk > budget:
        data.streamed_names = tuple(names)
        told = (store.key, split, str(device))
        if told not in _TOLD:  # once per process: reused Ray actors load many times
            _TOLD.add(told)
            log.warning(
                "%s split (%d rows, %.2f GB fp16) is over the resident budget of %.2f GB on %s "
                "(%s): its batches stream from the memory maps",
                split,
                len(rows),
                fp16_bytes / 1e9,
                budget / 1e9,
                device,
                why,
            )
        return data
    dtype = torch.float32 if 2 * fp16_bytes + chunk <= budget else torch.float16
    for name in names:
        data.arrays[name] = _load_resident(
            getattr(store, name),
            rows,
            frames=frames if name == "audio" else None,
            dtype=dtype,
            device=device,
            chunk_rows=chunk_rows,
        )
    return data


def iterate_in_order(n: int, batch_size: int, device: torch.device):
    """Index batches 0..n-1 in order (evaluation): slices of one range, so a streamed split
    can assemble the next batch while this one is scored."""
    order = torch.arange(n, device=device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def fold_rows(store: FeatureStore, k: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``k`` session folds of the store's non-test rows (its train and val sessions, balanced
    by data_prep.splits.session_folds): per fold, the row positions to train on (the other
    folds) and to validate on (this fold). The test split is never touched."""
    from data_prep.splits import session_folds

    pool = np.sort(np.concatenate([store.indices("train"), store.indices("val")]))
    table = store.table.iloc[pool]
    sessions = table["session"].to_numpy()
    out = []
    for held in session_folds(table, k, seed=seed, neutral=store.neutral_label):
        held_out = np.isin(sessions, held)
        out.append({"train": pool[~held_out], "val": pool[held_out]})
    return out
