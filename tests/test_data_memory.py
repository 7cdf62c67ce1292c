"""models/data.py at real scale: the resident budget of trials sharing a node, the loading
peak, and streamed batches assembled ahead in a background thread."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.device import runs_that_fit
from data_prep.store import FeatureStore
from models.data import cgroup_room, cuda_budget, gpu_placement, host_budget, load_split
from models.train import train
from tests.model_helpers import make_synthetic_store

ROOT = Path(__file__).resolve().parent.parent
GB = 10**9
ALL = frozenset({"text", "audio", "text_pooled"})
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    path = make_synthetic_store(tmp_path_factory.mktemp("mem"), n=300)
    return FeatureStore.open(path, sealed=("test",))


# -- the budget -----------------------------------------------------------------------------
def test_host_budget_is_half_of_one_trials_part() -> None:
    assert host_budget(24 * GB) == 12 * GB
    assert host_budget(24 * GB, sharers=4) == 3 * GB  # 4 trials of this size fit on the node
    assert host_budget(24 * GB, sharers=4, request=2 * GB) == 1 * GB  # Ray's memory request
    assert host_budget(24 * GB, sharers=0) == 12 * GB


def test_runs_that_fit_on_a_node() -> None:
    node = {"CPU": 8.0, "GPU": 1.0, "memory": 30e9, "node:10.0.0.1": 1.0}
    assert runs_that_fit(node, {"CPU": 1.0}) == 8
    assert runs_that_fit(node, {"CPU": 1.0, "GPU": 0.25}) == 4  # the GPU share binds
    assert runs_that_fit(node, {"CPU": 1.0, "memory": 10e9}) == 3  # the memory request binds
    assert runs_that_fit(node, {"CPU": 0.5}) == 16
    assert runs_that_fit(node, {}) == 1


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_takes_the_tightest_limit_and_counts_page_cache_as_free(tmp_path) -> None:
    root = tmp_path / "v2"
    _write(root / "cgroup.controllers", "cpu memory")
    _write(root / "memory.max", "max")  # the root: no limit
    _write(root / "job" / "memory.max", str(8 * GB))
    _write(root / "job" / "memory.current", str(3 * GB))
    _write(root / "job" / "memory.stat", f"anon {2 * GB}\ninactive_file {1 * GB}\n")
    _write(root / "job" / "trial" / "memory.max", "max")
    _write(root / "job" / "trial" / "memory.current", str(1 * GB))
    _write(tmp_path / "cgroup", "0::/job/trial\n")
    assert cgroup_room(root, tmp_path / "cgroup") == 6 * GB  # 8 - (3 - 1)
    _write(root / "job" / "trial" / "memory.max", str(2 * GB))
    assert cgroup_room(root, tmp_path / "cgroup") == 1 * GB
    _write(tmp_path / "top", "0::/\n")
    assert cgroup_room(root, tmp_path / "top") is None


def test_cgroup_v1(tmp_path) -> None:
    mem = tmp_path / "v1" / "memory"
    _write(mem / "memory.usage_in_bytes", str(5 * GB))
    _write(mem / "memory.limit_in_bytes", str(9223372036854771712))
    _write(mem / "memory.stat", "hierarchical_memory_limit 9223372036854771712\n")
    _write(tmp_path / "cgroup", "4:memory:/docker/abc\n0::/\n")
    assert cgroup_room(tmp_path / "v1", tmp_path / "cgroup") is None  # no limit
    _write(mem / "memory.stat", f"hierarchical_memory_limit {16 * GB}\ntotal_inactive_file {GB}\n")
    assert cgroup_room(tmp_path / "v1", tmp_path / "cgroup") == 12 * GB  # 16 - (5 - 1)


# -- loading --------------------------------------------------------------------------------
def test_which_split_lives_on_which_gpu() -> None:
    """The GPU memory rule over hand-made device sizes: KEMDy20's training split at the seed's
    sizes (about 10,000 utterances of 512 x 1024 audio, 128 x 768 text and a pooled vector,
    fp16) and its val split, on an H100, an H200 and a 24 GB card, whole or shared."""
    gib = 1 << 30
    row = 2 * (512 * 1024 + 128 * 768 + 768)
    train, val = 10_000 * row, 2_000 * row  # 12.5 GB and 2.5 GB as stored
    h100, h200, small = 80 * gib, 141 * gib, 24 * gib
    fp32, fp16 = torch.float32, torch.float16
    assert cuda_budget(79 * gib, h100) == 59 * gib  # whole: all but a quarter for the steps
    assert gpu_placement(train, free=79 * gib, total=h100) == fp32
    # The first of 4 trials packed on an H100 keeps its training split in fp16 (15 GiB) ...
    assert cuda_budget(79 * gib, h100, share=0.25) == 15 * gib
    assert gpu_placement(train, free=79 * gib, total=h100, share=0.25) == fp16
    # ... and then its val split in what is left of its quarter, which fp32 would overflow.
    assert gpu_placement(val, free=66 * gib, total=h100, share=0.25, held=train) == fp16
    assert gpu_placement(train, free=66 * gib, total=h100, share=0.25, held=train) is None
    assert gpu_placement(train, free=140 * gib, total=h200, share=0.25) == fp32
    assert gpu_placement(train, free=23 * gib, total=small) == fp16
    assert gpu_placement(train, free=23 * gib, total=small, share=0.5) is None
    # Never more than is free: another process took most of the device.
    assert cuda_budget(6 * gib, h100, share=0.25) == 1 * gib
    assert gpu_placement(train, free=10 * gib, total=h100, share=0.25) is None
    assert cuda_budget(2 * gib, h100, share=0.25) == 0


def test_the_dtype_follows_the_budget_including_one_load_chunk(store) -> None:
    rows = len(store.indices("train"))
    fp16 = 2 * rows * (10 * 16 + 24 * 12 + 16)  # the whole small split is one chunk
    load = dict(uses=ALL, frames=24, device=CPU)
    assert load_split(store, "train", budget=3 * fp16, **load).arrays["audio"].dtype == (
        torch.float32
    )
    assert load_split(store, "train", budget=3 * fp16 - 1, **load).arrays["audio"].dtype == (
        torch.float16
    )
    assert not load_split(store, "train", budget=2 * fp16 - 1, **load).resident


def test_streaming_is_said_once(store, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="models.data")
    for _ in range(3):
        load_split(store, "val", uses=ALL, frames=24, device=CPU, budget=0)
    said = [r.getMessage() for r in caplog.records if "stream" in r.getMessage()]
    assert len(said) == 1 and "val split" in said[0]


PEAK = r"""
import json, os, sys, threading, time
import numpy as np, torch
import models.data as data
from data_prep.store import FeatureStore

data.LOAD_CHUNK_BYTES = 8 << 20
store = FeatureStore.open(sys.argv[1])
page = os.sysconf("SC_PAGE_SIZE")

def anon():  # resident minus file-backed pages: the memory maps' pages are not ours
    size, resident, shared = map(int, open("/proc/self/statm").read().split()[:3])
    return (resident - shared) * page

peak, stop = [0], threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.0005)
base = anon()
t = threading.Thread(target=watch); t.start()
split = data.load_split(store, "train", uses=frozenset({"audio"}), frames=store.max_frames,
                        device=torch.device("cpu"), budget=1 << 40)
time.sleep(0.01); stop.set(); t.join()
print(json.dumps({"peak": peak[0] - base, "fp32": split.arrays["audio"].numel() * 4,
                  "dtype": str(split.arrays["audio"].dtype)}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
def test_loading_peak_is_the_resident_split_plus_one_chunk(tmp_path) -> None:
    # 200 rows x 512 x 512 audio: 105 MB fp16, 210 MB fp32 resident. Before, the whole fp16
    # copy and the fp32 tensor existed at once (315 MB).
    path = make_synthetic_store(
        tmp_path,
        n=200,
        audio_dim=512,
        max_frames=512,
        sessions=2,
        val_sessions=(),
        test_sessions=(),
    )
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(path)],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dtype"] == "torch.float32"
    fp16 = out["fp32"] // 2
    assert out["peak"] < out["fp32"] + (8 << 20) + fp16 // 4, out  # far below fp32 + fp16


# -- streamed batches, assembled ahead ------------------------------------------------------
def test_streamed_batches_are_assembled_ahead_and_equal_resident_ones(store) -> None:
    kw = dict(uses=ALL, frames=20, trim=frozenset({"text", "audio"}), device=CPU)
    resident = load_split(store, "train", budget=1 << 40, **kw)
    streamed = load_split(store, "train", budget=0, **kw)
    assert resident.resident and not streamed.resident
    perm = torch.randperm(streamed.n, generator=torch.Generator().manual_seed(0))
    steps = 0
    pairs = zip(streamed.batches(perm, 32), resident.batches(perm, 32), strict=True)
    for (idx, got), (ridx, want) in pairs:  # the training loop's pass: one permutation
        assert torch.equal(idx, perm[steps * 32 : (steps + 1) * 32]) and torch.equal(idx, ridx)
        assert got.keys() == want.keys() and got.cut == want.cut == {"text", "audio"}
        for k in want:
            assert torch.equal(got[k], want[k]), (steps, k)
        # the cut is the batch's longest true length, known without asking the tensors
        assert got["audio"].shape[1] == int(got["audio_len"].max())
        steps += 1
    assert steps == -(-streamed.n // 32)
    assert streamed.prefetch_hits == steps - 1  # every batch but the first was ready
    # Random access: served right, just not ahead.
    hits = streamed.prefetch_hits
    for idx in (perm[64:96], perm[0:32], torch.tensor([5, 1, 3])):
        assert torch.equal(streamed.batch(idx)["audio"], resident.batch(idx)["audio"])
    assert streamed.prefetch_hits == hits
    # A pass abandoned half-way leaves a batch assembled ahead: the next pass is still right.
    first = next(streamed.batches(perm, 32))
    del first
    again = zip(streamed.batches(perm, 32), resident.batches(perm, 32), strict=True)
    for (_, got), (_, want) in again:
        assert torch.equal(got["text"], want["text"])
    # Evaluation's pass over a range.
    ev = load_split(store, "val", budget=0, **kw)
    batches = list(ev.batches(torch.arange(ev.n), 16))
    assert len(batches) == -(-ev.n // 16) and ev.prefetch_hits == len(batches) - 1


def test_training_on_a_streamed_split_is_the_same_training(store, monkeypatch) -> None:
    config = {"model": "case-attention", "epochs": 2, "batch_size": 32, "hidden": 16, "seed": 3}
    resident = train(config, store, device="cpu")
    monkeypatch.setenv("CASE_TUNE_RESIDENT_MAX_BYTES", "1")
    streamed = train(config, store, device="cpu")
    assert any("streamed" in n for n in streamed.notes)
    keys = ["train_loss", "val_loss", "val_macro_f1"]
    assert [[h[k] for k in keys] for h in streamed.history] == [
        [h[k] for k in keys] for h in resident.history
    ]
    for k, v in resident.state_dict.items():
        assert torch.equal(streamed.state_dict[k], v), k
