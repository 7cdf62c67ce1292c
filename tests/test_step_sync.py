"""A training step never reads a value back from the device (the CUDA path's promise).

On CUDA such a read (`.item()`, `bool()`, `int()`, a boolean mask's count) makes the host wait
for the GPU every step; for heads of 0.2-1.5 M parameters those waits, not the math, would set
the step time. Here the steps run on PyTorch's meta device, whose tensors have shapes but no
values: any such read raises, so a pass that completes read nothing. The GPU itself counts
synchronisations in tests/test_gpu.py (`pytest -m gpu`).
"""

from __future__ import annotations

import pytest
import torch

from data_prep.store import FeatureStore
from models.config import MODEL_NAMES
from models.data import load_split
from models.train import Trainer
from tests.model_helpers import make_synthetic_store

META = torch.device("meta")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    path = make_synthetic_store(tmp_path_factory.mktemp("sync"), n=120)
    return FeatureStore.open(path, sealed=("test",))


def on_meta(config: dict, store: FeatureStore) -> Trainer:
    """A trainer built as usual, then moved with its training split to the meta device."""
    trainer = Trainer(config, store, device="cpu")
    trainer.device = META
    trainer.model.to(META)
    trainer.train_data = load_split(
        store,
        "train",
        uses=trainer.model.uses,
        frames=store.max_frames,
        trim=trainer.model.trim,
        device=META,
    )
    trainer._build_optimization()
    trainer.params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.check_each_step = False  # the CUDA rule: losses checked once per epoch
    trainer.model.train()
    return trainer


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("faithful", [False, True])
def test_a_pass_of_steps_reads_nothing_from_the_device(store, model, faithful) -> None:
    contrastive = "supervised" if model in ("text-only", "speech-only") else "infonce"
    trainer = on_meta(
        {
            "model": model,
            "batch_size": 16,
            "hidden": 8,
            "faithful": faithful,
            "contrastive": contrastive,
            "contrastive_weight": 0.5,
            "grad_clip": 1.0,
        },
        store,
    )
    step_losses, preds = trainer._steps(torch.randperm(trainer.train_data.n))
    assert step_losses.device == META and step_losses.shape == (trainer.steps_per_epoch,)
    assert len(preds) == trainer.steps_per_epoch


def test_the_meta_device_catches_a_read(store) -> None:
    """The probe is sharp: a step that asks the device for a value fails on it."""
    trainer = on_meta({"model": "case-attention", "batch_size": 16, "hidden": 8}, store)
    trainer.check_each_step = True  # the CPU rule reads each step's loss
    with pytest.raises(RuntimeError, match="meta"):
        trainer._steps(torch.randperm(trainer.train_data.n))
    batch = trainer.train_data.batch(torch.arange(4))  # random access reads idx back: fine
    batch.cut = frozenset()  # a batch the loader did not cut: the head reads the lengths
    faithful = on_meta(
        {"model": "case-attention", "faithful": True, "batch_size": 16, "hidden": 8}, store
    )
    with pytest.raises(RuntimeError, match="meta"):
        faithful.model(batch)
