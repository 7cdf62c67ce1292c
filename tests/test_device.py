"""The one device rule for trials and final runs (data_prep.device), with a real Ray runtime.

The Ray runtime here declares one GPU that this CPU machine does not have: Ray's bookkeeping
(assignment, CUDA_VISIBLE_DEVICES) is real, only the kernels are missing, which is how a test
tells "the run chose CUDA" from "the run chose the CPU".
"""

from __future__ import annotations

import sys

import pytest
import torch

from data_prep.device import DeviceError, device_for_share, resolve_device, run_device


def test_no_gpu_asked_means_cpu_even_when_cuda_is_visible() -> None:
    assert device_for_share(0.0, ["0"], "0") == torch.device("cpu")
    assert device_for_share(0.0, [], None) == torch.device("cpu")


def test_a_share_uses_the_gpu_ray_assigned() -> None:
    # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned GPU: it is device 0 of this process.
    assert device_for_share(0.25, ["3"], "3") == torch.device("cuda", 0)
    # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: all GPUs visible, pick the assigned one.
    assert device_for_share(0.5, ["2"], "0,1,2,3") == torch.device("cuda", 2)
    assert device_for_share(0.5, ["6"], "4, 6") == torch.device("cuda", 1)
    assert device_for_share(1.0, [1], None) == torch.device("cuda", 1)


def test_a_share_without_an_assignment_is_an_error() -> None:
    with pytest.raises(DeviceError, match="assigned none"):
        device_for_share(0.25, [], "0")
    with pytest.raises(DeviceError, match="not among"):
        device_for_share(0.25, ["1"], "0")


def test_resolve_device_for_a_whole_machine() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") == auto


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray runtime without the declared GPU is already running")
    from search.local_ray import start_local_ray

    start_local_ray(num_cpus=2, num_gpus=1, logging_level="WARNING")
    # Workers cannot import this test module by name: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def _where(gpus: float) -> tuple[str, str | None]:
    import os

    return str(run_device(gpus)), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_run_device_in_ray_workers(ray_with_a_gpu) -> None:
    ray = ray_with_a_gpu
    where = ray.remote(_where)
    # Asked for no GPU: the CPU, whatever Ray leaves visible.
    assert ray.get(where.options(num_gpus=0).remote(0.0))[0] == "cpu"
    # A quarter of the GPU: the device Ray assigned and made visible.
    device, visible = ray.get(where.options(num_gpus=0.25).remote(0.25))
    assert (device, visible) == ("cuda:0", "0")


def _unit_error(store: str, gpus: float) -> str:
    from search.finalize import _unit_task

    unit = {
        "unit_id": "u",
        "candidate": "c",
        "seed": 0,
        "config": {"model": "text-only", "epochs": 1, "batch_size": 32},
    }
    try:
        _unit_task(unit, store, 1, None, gpus)
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return "ran"


def _trial_error(store: str, gpus: float) -> str:
    from search.trainable import run_trial

    try:
        run_trial({"model": "text-only", "epochs": 1, "batch_size": 32}, store, 1, gpus)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return "ran"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA kernels")
def test_trials_and_final_runs_follow_the_rule(ray_with_a_gpu, demo_store) -> None:
    """With a GPU share both go to CUDA (which fails here only because torch has no CUDA);
    a final run that asked for none trains on the CPU and finishes."""
    ray = ray_with_a_gpu
    for fn in (_trial_error, _unit_error):
        msg = ray.get(ray.remote(fn).options(num_gpus=0.5).remote(str(demo_store), 0.5))
        assert "CUDA" in msg, msg
    assert ray.get(ray.remote(_unit_error).options(num_gpus=0).remote(str(demo_store), 0.0)) == (
        "ran"
    )


def _share() -> tuple[tuple[int, int | None], str]:
    from data_prep.device import ray_node_share
    from models.data import budget_report

    return ray_node_share(), budget_report(torch.device("cpu"))[1]


def test_trials_sharing_a_node_split_its_memory(ray_with_a_gpu) -> None:
    ray = ray_with_a_gpu
    share = ray.remote(_share)
    # 2 CPUs, 1 GPU: two trials of {1 CPU, 0.25 GPU} fit; the memory request is the trial's.
    (sharers, request), why = ray.get(
        share.options(num_cpus=1, num_gpus=0.25, memory=10**9).remote()
    )
    assert (sharers, request) == (2, 10**9)
    assert "shared by up to 2 runs" in why and "Ray memory request 1.0 GB" in why
    assert ray.get(share.options(num_cpus=0.5).remote())[0] == (4, None)
    from data_prep.device import ray_node_share

    assert ray_node_share() == (1, None)  # the driver is not a trial


def test_an_explicit_device_overrides_the_rule(monkeypatch) -> None:
    from data_prep.device import DEVICE_ENV

    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert run_device(0.25) == torch.device("cpu")  # no Ray needed: the rule is not consulted
    monkeypatch.setenv(DEVICE_ENV, "cuda:1")
    assert run_device(0.0) == torch.device("cuda", 1)
