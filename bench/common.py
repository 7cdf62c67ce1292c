"""Pieces several benches build their inputs with, so each measures the same set-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from data_prep.store import FeatureStore
from models.config import TrainConfig
from models.registry import create_model
from models.train import model_sizes


def seeded_model_and_split(
    config: TrainConfig, store: FeatureStore, load_split: Callable[..., Any], **split_kwargs: Any
) -> tuple[torch.nn.Module, Any]:
    """``config``'s head at the store's sizes (torch seeded first, so weights repeat) and
    its train split loaded on the CPU by ``load_split`` (the benches compare versions)."""
    torch.manual_seed(config.seed)
    model = create_model(config.model, config=config, **model_sizes(store))
    data = load_split(
        store,
        "train",
        uses=model.uses,
        frames=store.max_frames,
        trim=model.trim,
        device=torch.device("cpu"),
        **split_kwargs,
    )
    return model, data
