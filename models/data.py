"""Feature store rows -> batches of tensors on the training device, without a DataLoader.

A split's rows are read from the store's fp16 memory maps once and kept on the device
("resident"): as fp32 when that fits the budget, else as fp16 cast per batch. A batch is then
an index gather of those tensors. Only the arrays the model uses are loaded (text-only reads
the token features, or text_pooled alone when faithful; speech-only the audio alone).
Loading goes through chunks of :data:`LOAD_CHUNK_BYTES` into the final tensor, so its peak is
the resident tensor plus one chunk, never an fp16 copy and an fp32 copy of the split at once.

When a split does not fit (real KEMDy20 audio, 512 x 1024 fp16 per utterance, is about 1 MB
each, about 13 GB with text for the training split), batches are gathered from the memory maps
instead ("streamed"; said once per process and split).

A pass over a split is :meth:`SplitData.batches` of one order (a permutation, a range) that the
host holds, so no batch asks the device anything: the order goes to the device once per pass,
the widths that trimming cuts to come from the host's copy of the lengths, and a streamed split
knows the next batch and assembles it in a background thread into one of two pinned host
buffer sets while the current one trains. On CUDA that thread also copies it to the device on a
side stream; the training stream waits on the copy's event, and the copy into a device slot
waits on the event of the step that last read it. No step waits for the GPU: the host runs up
to about three steps ahead (a host buffer is refilled once its last copy has run, polled in the
prefetch thread).

The budget (:func:`budget_report`; what fits it, :func:`placement`):
- CUDA: this process's share of the device (`CASE_TUNE_GPU_SHARE`, set by the search's
  trainable) less what it holds already and less a workspace for its steps, never more than
  is free (:func:`cuda_budget`), so the first of several trials packed on one GPU does not
  take the memory the others need; an H100's quarter (20 GB) holds KEMDy20's training split;
- CPU: half of this trial's part of the memory available: MemAvailable, or less when the
  process's memory cgroup has a limit, divided by the number of runs of this size that fit on
  the node at once (Ray's node resources over the trial's request), and at most Ray's
  per-trial ``memory`` request when the trial made one;
- `CASE_TUNE_RESIDENT_MAX_BYTES` overrides both.

Per batch, axes a model allows (models' `trim`) are cut to the batch's longest true length:
with masks this changes no output and saves work; for faithful attention and speech-only it is
the seed's padding of audio to the batch's longest utterance.

CUDA-only lines, which no CPU test runs (tests/test_gpu.py does, under `pytest -m gpu`): the
pinned allocation in `_host_buffer`, the side-stream copy in `_copy_ahead`, the stream waits in
`_hand_over` and the event poll in `_assemble`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import weakref
from collections.abc import Iterator
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
AUDIT_ENV = "CASE_TUNE_AUDIT_DIR"
LOAD_CHUNK_BYTES = 64 << 20  # fp16 bytes read per step while loading a resident split
GPU_WORKSPACE_BYTES = 4 << 30  # at least this much of a trial's GPU part stays for its steps
_LEN_OF = {"text": "text_len", "audio": "audio_len"}
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number
_TOLD: set[tuple[str, str, str]] = set()  # (store key, split, device) already said to stream


def cuda_budget(free: int, total: int, share: float = 1.0, held: int = 0) -> int:
    """Bytes one more resident split may take on a GPU: this process's part of the device
    (``share`` of ``total``, Ray's fractional GPU) less what it already holds (``held``: the
    splits it loaded before), never more than is ``free``, less a workspace for the trial's
    steps (activations, batch buffers, cuBLAS/cuDNN workspaces): :data:`GPU_WORKSPACE_BYTES` or
    a quarter of its part, whichever is larger."""
    part = int(total * min(max(share, 0.0), 1.0))
    room = min(free, part - held)
    return max(0, room - max(GPU_WORKSPACE_BYTES, part // 4))


def placement(fp16_bytes: int, chunk: int, budget: int) -> torch.dtype | None:
    """How a split of ``fp16_bytes`` (its size as stored) is kept within ``budget`` bytes:
    fp32 when that and one load chunk fit, fp16 (cast per batch) when the stored size does,
    else None: its batches stream from the memory maps."""
    if fp16_bytes + chunk > budget:
        return None
    return torch.float32 if 2 * fp16_bytes + chunk <= budget else torch.float16


def gpu_placement(
    fp16_bytes: int,
    *,
    free: int,
    total: int,
    share: float = 1.0,
    held: int = 0,
    chunk: int = LOAD_CHUNK_BYTES,
) -> torch.dtype | None:
    """The rule that decides whether a split lives on a GPU, from the device's sizes alone:
    :func:`placement` within :func:`cuda_budget` (what :func:`load_split` applies on CUDA)."""
    return placement(fp16_bytes, min(chunk, fp16_bytes), cuda_budget(free, total, share, held))


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
        held = torch.cuda.memory_allocated(device)
        # A reused actor's allocator still caches its last trial's memory: free to this one.
        free += torch.cuda.memory_reserved(device) - held
        return cuda_budget(free, total, share, held), (
            f"a {share:g} share of {total / 1e9:.1f} GB on {device} ({free / 1e9:.1f} GB free, "
            f"{held / 1e9:.2f} GB held by this trial), less its step workspace"
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


class Batch(dict):
    """One batch: array name -> tensor on the device. ``cut`` names the axes the loader cut to
    the batch's longest true length, which the host knew: a head that needs that padding reads
    it here instead of asking the device for the lengths' maximum (a host sync per step)."""

    def __init__(self, tensors=(), *, cut: frozenset[str] = frozenset()) -> None:
        super().__init__(tensors)
        self.cut = cut


@dataclass
class _Staged:
    """One streamed batch assembled on the host: which positions, its host tensors and, on
    CUDA, its device tensors and the event that says their copy has run."""

    key: tuple[int, ...]
    slot: int
    tensors: dict[str, torch.Tensor]
    on_device: dict[str, torch.Tensor] | None = None
    ready: torch.cuda.Event | None = None


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
    _freed: dict[int, torch.cuda.Event] = field(default_factory=dict)
    _lengths: dict[str, np.ndarray] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None
    _side: torch.cuda.Stream | None = None
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
        # per step costs page faults that were 40 % of a step at the seed's sizes on CPU. The
        # first batch of a pass is its widest, so a buffer is sized once.
        numel = math.prod(shape)
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < numel:
            size = max(numel, shape[0] * self.row_numel.get(name.partition("@")[0], 0))
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

    def _widths(self, positions: np.ndarray) -> dict[str, int]:
        """Per trimmed axis, the longest true length among ``positions``, from the host's copy
        of the lengths (they are clamped to ``frames``)."""
        if not len(positions):
            return {name: 0 for name in self.trim}
        return {name: int(self._lengths[_LEN_OF[name]][positions].max()) for name in self.trim}

    def _assemble(self, positions: np.ndarray, slot: int) -> _Staged:
        """Gather the streamed arrays' rows at split ``positions`` into host buffer ``slot``:
        fp32 on CPU (these are the batch), fp16 on CUDA (copied by :meth:`_copy_ahead`).
        Runs in the prefetch thread or, for a batch nobody announced, in the caller's."""
        event = self._copied.pop(slot, None)
        while event is not None and not event.query():  # CUDA-only: the last copy out of
            time.sleep(0.0002)  # this slot has run (polled: no thread ever blocks in CUDA)
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")  # read the file front to back
        b = len(positions)
        widths = self._widths(positions)
        out: dict[str, torch.Tensor] = {}
        for name in self.streamed_names:
            mm = getattr(self.store, name)
            width = self.frames if name == "audio" else (mm.shape[1] if mm.ndim > 2 else 0)
            width = min(width, widths.get(name, width))
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

    def _stage(self, positions: np.ndarray, slot: int) -> _Staged:
        staged = self._assemble(positions, slot)
        if self.device.type == "cuda":
            self._copy_ahead(staged)
        return staged

    def _copy_ahead(self, staged: _Staged) -> None:
        """CUDA-only: copy a staged batch into device slot ``staged.slot`` on a side stream,
        cast there to fp32, after the step that last read that slot (its event), and record
        the event the training stream will wait on."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        side, slot = self._side, staged.slot
        with torch.cuda.device(self.device), torch.cuda.stream(side):
            freed = self._freed.pop(slot, None)
            if freed is not None:
                side.wait_event(freed)
            staged.on_device = {}
            for name, half in staged.tensors.items():
                shape = tuple(half.shape)
                dev_half = self._buffer(f"{name}@{slot}", shape, torch.float16)
                dev_half.copy_(half, non_blocking=True)
                dev = self._buffer(f"{name}@{slot}", shape, torch.float32)
                staged.on_device[name] = dev.copy_(dev_half)
            staged.ready = torch.cuda.Event()
            staged.ready.record(side)
        self._copied[slot] = staged.ready

    def _hand_over(self, staged: _Staged) -> dict[str, torch.Tensor]:
        """The staged batch as the caller uses it; on CUDA, the training stream waits for its
        copy, and the other device slot (the batch returned before, which the caller has
        used) is marked free once the work queued so far has run. No host wait."""
        self._slot = staged.slot
        if staged.on_device is None:
            return staged.tensors
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(staged.ready)
        for t in staged.on_device.values():  # allocated on the side stream, read on this one:
            t.record_stream(stream)  # a freed buffer is not reused before this work has run
        freed = torch.cuda.Event()
        freed.record(stream)
        self._freed[1 - staged.slot] = freed
        return staged.on_device

    def _streamed(self, positions: np.ndarray, upcoming: np.ndarray | None) -> dict:
        key = tuple(positions.tolist())
        staged = None
        if self._pending is not None:
            want, future = self._pending
            self._pending = None
            done = future.result()  # also when unused: it was writing into a slot
            staged = done if want == key else None
            self.prefetch_hits += staged is not None
        if staged is None:
            staged = self._stage(positions, 1 - self._slot)
        out = self._hand_over(staged)
        if upcoming is not None and len(upcoming) and self.prefetch:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="case-tune-prefetch")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            # The other slot: by the contract of batches(), the one returned before is free.
            future = self._pool.submit(self._stage, upcoming, 1 - self._slot)
            self._pending = (tuple(upcoming.tolist()), future)
        return out

    def _gather(
        self, positions: np.ndarray, idx: torch.Tensor, upcoming: np.ndarray | None = None
    ) -> Batch:
        """The batch of split ``positions`` (host) = ``idx`` (the same, on the device);
        ``upcoming``: the positions asked for next, which a streamed split assembles ahead."""
        widths = self._widths(positions)
        out = Batch(
            {k: self.arrays[k].index_select(0, idx) for k in LENGTHS}, cut=frozenset(widths)
        )
        b = len(positions)
        for name, src in self.arrays.items():
            if name in LENGTHS:
                continue
            if name in widths:
                src = src[:, : widths[name]]
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
            out.update(self._streamed(positions, upcoming))
        return out

    def batches(
        self, order: torch.Tensor | np.ndarray, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, Batch]]:
        """Consecutive batches of split positions ``order`` (a permutation or a range, held
        on the host): per batch, its positions on the device and the batch, as fp32.

        The feature tensors yielded are reused for a later batch: use a batch before asking
        for the next one (clone it to keep it).
        """
        host = np.ascontiguousarray(
            order.cpu().numpy() if isinstance(order, torch.Tensor) else order, dtype=np.int64
        )
        pinned = torch.from_numpy(host)
        if self.device.type == "cuda":  # CUDA-only: a copy from pageable memory would sync
            pinned = pinned.pin_memory()
        on_device = pinned.to(self.device, non_blocking=True)  # once per pass
        for start in range(0, len(host), batch_size):
            end = start + batch_size
            idx = on_device[start:end]
            yield idx, self._gather(host[start:end], idx, host[end : end + batch_size])

    def batch(self, idx: torch.Tensor) -> Batch:
        """The batch of split positions ``idx``, for random access (a test, a probe): it reads
        ``idx`` back to the host. A pass over the split is :meth:`batches`."""
        positions = np.asarray(idx.cpu().numpy(), dtype=np.int64)
        return self._gather(positions, idx.to(self.device))


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


def _audit(store: FeatureStore, split: str, rows: np.ndarray) -> None:
    """With ``CASE_TUNE_AUDIT_DIR`` set, one line per split loaded (store, split, rows, their
    sessions) in that folder, one file per process: what a sweep's trials and a finalize
    really read, for whoever must show that no test session leaked (tests/test_outer.py)."""
    folder = os.environ.get(AUDIT_ENV)
    if not folder:
        return
    sessions = sorted({int(x) for x in store.table["session"].to_numpy()[rows]})
    line = {"store": store.key, "split": split, "rows": len(rows), "sessions": sessions}
    with open(Path(folder) / f"loads-{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


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
    _audit(store, split, rows)
    if device.type == "cuda" and device.index is None:  # the prefetch thread's device too
        device = torch.device("cuda", torch.cuda.current_device())
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
    dtype = placement(fp16_bytes, chunk, budget)
    if dtype is None:
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
