"""Reproducible numerics of one training run: pinned where training starts, and recorded.

What changes a CPU training history for the same config, seed and store (measured on the
demo store for issue 13; `python -m bench.bench_repro` reruns it):

- torch's intra-op thread count: OpenMP splits reductions and MKL splits GEMMs by thread,
  so 1 and 2 threads depart within the first epochs. Training therefore pins the count
  (``DEFAULT_THREADS`` unless the caller asks for another) instead of inheriting whatever
  the process had: a fresh shell has one thread per core, a Ray worker one per CPU it holds.
- the CPU kernel path: ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``, e.g. avx512 vs
  avx2) and MKL's code path (``MKL_CBWR``, e.g. COMPATIBLE) each change results. Both are
  fixed per process before the first kernel runs, so they can only be recorded here; on one
  machine they are the same in every process unless someone sets those variables.

What does not change it (bit-identical histories): a fresh process, a reused Ray actor after
other trials ran in it, a Ray task, the order of configs trained in one process. Training
seeds the global torch RNG itself, and buffers come from torch's 64-byte-aligned allocator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

DEFAULT_THREADS = 1  # what a search trial with one CPU uses: the reference for reruns
# Environment variables that select a numerics path; recorded when set.
PATH_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def numerics(device: torch.device) -> dict[str, Any]:
    """What this process's numerics depend on, as plain data (for logs and MLflow tags)."""
    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    out.update({k.lower(): os.environ[k] for k in PATH_ENV if os.environ.get(k)})
    if device.type == "cuda":
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def describe(info: dict[str, Any]) -> str:
    """One line, e.g. ``torch_threads=1 torch=2.13.0+cpu device=cpu cpu_capability=AVX512 ...``."""
    return " ".join(f"{k}={v}" for k, v in info.items())


@contextlib.contextmanager
def reproducible(device: torch.device, threads: int | None = None) -> Iterator[dict[str, Any]]:
    """Pin the thread count (``threads`` or ``DEFAULT_THREADS``) and, on CPU, deterministic
    algorithms for the duration of one training run; yields :func:`numerics` (restored after,
    so a caller's own settings survive)."""
    before_threads = torch.get_num_threads()
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(max(1, int(threads or DEFAULT_THREADS)))
    if device.type == "cpu":
        # warn_only: an op without a deterministic CPU kernel warns instead of failing a run.
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield numerics(device)
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.set_num_threads(before_threads)
