"""Pieces several benches build their inputs with, so each measures the same set-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
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


def bench_sweep(
    store: Path, tmp: Path, name: str, *, searcher: str, scheduler: str, **flags: Any
) -> tuple[Any, Any, float]:
    """A sweep as `search.run` runs it, with the searcher and scheduler a bench compares
    (``random`` / ``fifo`` are not command-line choices) and everything under ``tmp``.
    ``flags`` as `search.settings.sweep_argv`'s. Returns (settings, outcome, wall seconds)."""
    from search.run import run_sweep
    from search.settings import parse_settings, sweep_argv

    settings = parse_settings(sweep_argv(store, name, tmp, **flags), cwd=tmp)
    settings.storage_path = str(tmp / "ray_results")
    settings.searcher, settings.scheduler = searcher, scheduler
    t0 = time.perf_counter()
    outcome = run_sweep(settings, quiet=True)
    return settings, outcome, time.perf_counter() - t0
