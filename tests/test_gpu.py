"""The CUDA path, run where a GPU is (`pytest -m gpu`; bench/gpu_check runs it first).

Every test here needs CUDA and is skipped without it; the default run and CI (no GPU) do not
collect them (`-m 'not slow and not gpu'`). What they check: the device rule picks the GPU,
mixed precision in bf16 and fp16 (with its GradScaler) trains to finite losses close to fp32,
streamed batches come from pinned buffers and equal resident ones, a training pass makes no
host synchronisation (`torch.cuda.set_sync_debug_mode("error")`), and a checkpoint saved on
the GPU loads on the CPU and continues there (and the other way round).
"""

from __future__ import annotations

import io

import pytest
import torch

from data_prep.device import resolve_device
from data_prep.store import FeatureStore
from models.data import load_split
from models.train import Trainer, train
from tests.model_helpers import make_synthetic_store

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CUDA = torch.device("cuda", 0)
CONFIG = {"model": "case-attention", "epochs": 3, "batch_size": 32, "hidden": 16, "seed": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    path = make_synthetic_store(tmp_path_factory.mktemp("gpu"), n=300)
    return FeatureStore.open(path, sealed=("test",))


def test_the_device_rule_picks_the_gpu(store) -> None:
    assert resolve_device(None) == torch.device("cuda")
    trainer = Trainer(CONFIG, store)
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert trainer.train_data.labels.device.type == "cuda" and trainer.train_data.resident


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_trains_close_to_fp32(store, dtype) -> None:
    full = train(CONFIG, store, device="cuda")
    trainer = Trainer({**CONFIG, "amp": True}, store, device="cuda", amp_dtype=dtype)
    assert trainer.use_amp and trainer.amp_dtype == dtype
    assert trainer.scaler.is_enabled() == (dtype == torch.float16)  # GradScaler for fp16
    for _ in range(CONFIG["epochs"]):
        metrics = trainer.run_epoch()
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    if dtype == torch.float16:
        assert trainer.scaler.get_scale() > 0
    want = full.history[-1]["train_loss"]
    assert abs(metrics["train_loss"] - want) < 0.05 * want + 0.02


def test_streamed_batches_come_from_pinned_buffers_and_equal_resident_ones(store) -> None:
    kw = dict(uses=frozenset({"text", "audio"}), frames=20, trim=frozenset({"audio"}))
    resident = load_split(store, "train", budget=1 << 40, device=CUDA, **kw)
    streamed = load_split(store, "train", budget=0, device=CUDA, **kw)
    perm = torch.randperm(streamed.n, generator=torch.Generator().manual_seed(0))
    for (_, got), (_, want) in zip(
        streamed.batches(perm, 32), resident.batches(perm, 32), strict=True
    ):
        for k in want:
            assert got[k].device.type == "cuda" and torch.equal(got[k], want[k]), k
    assert streamed._host and all(b.is_pinned() for b in streamed._host.values())
    assert streamed.prefetch_hits == -(-streamed.n // 32) - 1


@pytest.mark.parametrize("budget", [1 << 40, 0], ids=["resident", "streamed"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_training_pass_never_synchronises(store, monkeypatch, budget, dtype) -> None:
    monkeypatch.setenv("CASE_TUNE_RESIDENT_MAX_BYTES", str(budget))
    config = {**CONFIG, "amp": True, "grad_clip": 1.0, "contrastive": "infonce"}
    trainer = Trainer(config, store, device="cuda", amp_dtype=dtype)
    assert trainer.train_data.resident == bool(budget)
    trainer.model.train()
    trainer._steps(torch.randperm(trainer.train_data.n))  # warm: allocations, handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses, _ = trainer._steps(torch.randperm(trainer.train_data.n))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(losses).all())


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_trial_continues_on_another_device(store, first, then) -> None:
    a = Trainer(CONFIG, store, device=first)
    a.run_epoch()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["model"].values())
    b = Trainer(CONFIG, store, device=then)
    b.load_state_dict(state)
    metrics = b.run_epoch()
    assert b.epoch == 2 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    fused = {g.get("fused") for g in b.optimizer.param_groups}
    assert fused == ({True} if then == "cuda" else {None})
