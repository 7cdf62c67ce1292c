"""Which torch device a process computes on: one home for the rule.

Two callers need it: feature extraction (:mod:`data_prep.encoders`, a device the user names or
"auto") and training (:mod:`models.train`, and the search's trials and final runs, which run
in Ray workers). Only :func:`run_device` knows anything of Ray, and it imports Ray lazily.

The rule for a Ray worker (a trial or a final run): it uses a GPU only when it asked for one.
Ray no longer hides GPUs from tasks and actors that asked for none (it leaves
``CUDA_VISIBLE_DEVICES`` alone for them), so "CUDA when available" would put a CPU trial on a
GPU that Ray gave to another trial. With a GPU share the device is the GPU Ray assigned: Ray
narrows ``CUDA_VISIBLE_DEVICES`` to it (so it is ``cuda:0``), unless
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` is set, in which case its index among the
visible devices is looked up.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence

import torch


class DeviceError(RuntimeError):
    """A run asked for a GPU but none can be used; the message says why."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU; anything else as given.

    For a process that owns its machine (``prepare``, ``python -m models.train``). Ray workers
    use :func:`run_device` instead.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_for_share(
    gpus: float, gpu_ids: Sequence[str | int], visible: str | None
) -> torch.device:
    """The device of a worker that asked for ``gpus`` GPUs and was given ``gpu_ids``.

    ``visible`` is the worker's ``CUDA_VISIBLE_DEVICES`` (None when unset). Pure logic, so it
    is tested without a GPU.
    """
    if gpus <= 0:
        return torch.device("cpu")  # even when CUDA is visible: it is not ours
    if not gpu_ids:
        raise DeviceError(
            f"this run asked for {gpus} GPU but Ray assigned none: is it running in a Ray "
            "task or actor with num_gpus set?"
        )
    wanted = str(gpu_ids[0])
    if visible is None or not visible.strip():
        return torch.device("cuda", int(wanted))
    order = [v.strip() for v in visible.split(",")]
    if wanted not in order:
        raise DeviceError(
            f"Ray assigned GPU {wanted}, which is not among CUDA_VISIBLE_DEVICES={visible}"
        )
    return torch.device("cuda", order.index(wanted))


DEVICE_ENV = "CASE_TUNE_DEVICE"


def run_device(gpus: float) -> torch.device:
    """The training device of a trial or final run that requested ``gpus`` GPUs from Ray.

    CPU when it asked for none; else the GPU Ray assigned to this worker. ``CASE_TUNE_DEVICE``
    (e.g. ``cpu``), when set where the workers start, overrides the rule: for GPUs declared to
    Ray that torch cannot use (tests that check GPU packing on CPU machines), or to debug.
    """
    forced = os.environ.get(DEVICE_ENV)
    if forced:
        return torch.device(forced)
    if gpus <= 0:
        return torch.device("cpu")
    import ray

    return device_for_share(gpus, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def runs_that_fit(node: Mapping[str, float], asked: Mapping[str, float]) -> int:
    """How many runs asking for ``asked`` fit at once on a node with ``node`` resources."""
    fits = [node.get(r, 0.0) / amount for r, amount in asked.items() if amount > 0]
    return max(1, math.floor(min(fits) + 1e-9)) if fits else 1


def ray_node_share() -> tuple[int, int | None]:
    """In a Ray worker: how many runs of this worker's size fit on its node at once, and its
    Ray ``memory`` request in bytes (None when it made none). Elsewhere: (1, None).

    Several trials on one node each keep a resident split in their own memory; the budget
    of :mod:`models.data` divides the node's memory between as many as Ray may place there.
    """
    if "ray" not in sys.modules:  # not in a Ray worker: nothing imported Ray
        return 1, None
    import ray

    if not ray.is_initialized() or ray._private.worker.global_worker.mode != ray.WORKER_MODE:
        return 1, None
    ctx = ray.get_runtime_context()
    asked = ctx.get_assigned_resources()
    node_id = ctx.get_node_id()
    node = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
    memory = asked.get("memory")
    return runs_that_fit(node, asked), int(memory) if memory else None
