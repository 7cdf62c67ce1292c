"""The Ray Tune trainable: one trial = one `models.train.train` call on the feature store.

It opens the store with the test split sealed, trains on train and evaluates on val only,
and `tune.report`s each epoch's metrics (plus the running best val macro-F1 that Optuna
optimises, and which splits the store has served, so a test can prove test was never read).
It knows nothing of MLflow: tracking happens on the driver (search/tracking.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

METRIC = "val_macro_f1"  # the search metric
# What ASHA compares at its rungs: val macro-F1 with ties broken by val loss. On small or
# neutral-heavy data many trials sit exactly at the all-neutral macro-F1, and an exact tie
# with the rung's cutoff lets every one of them continue.
RUNG_METRIC = "val_macro_f1_rung"
TIE_BREAK = 1e-6
SEARCH_METRIC = "val_macro_f1_best"  # what Optuna's TPE learns from: the trial's best epoch
MODE = "max"

_STORES: dict[str, Any] = {}  # per worker process: reused actors keep the memory maps open


def open_sealed_store(path: str) -> Any:
    """The feature store at ``path`` with its test split sealed (cached per process)."""
    from data_prep.store import FeatureStore

    store = _STORES.get(path)
    if store is None:
        store = FeatureStore.open(path, sealed=("test",))
        _STORES[path] = store
    return store


def run_trial(config: dict[str, Any], store_path: str, threads: int | None = None) -> None:
    """Train one config, reporting every epoch to Tune. Exceptions fail the trial."""
    import torch
    from ray import tune

    from models.config import TrainConfig
    from models.train import train

    if threads:
        torch.set_num_threads(threads)
    store = open_sealed_store(store_path)
    cfg = TrainConfig.from_dict(config)
    best = -math.inf

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        nonlocal best
        value = metrics.get(METRIC, float("nan"))
        if math.isfinite(value):
            best = max(best, value)
        loss = metrics.get("val_loss", float("nan"))
        rung = value - TIE_BREAK * loss if math.isfinite(loss) else value
        tune.report(
            {
                **metrics,
                "epoch": epoch,
                RUNG_METRIC: rung,
                SEARCH_METRIC: best if math.isfinite(best) else float("nan"),
                "splits_read": ",".join(sorted(store.accessed)),
            }
        )
        return False

    train(cfg, store, eval_splits=("val",), on_epoch=on_epoch)


def make_trainable(
    store_path: str | Path, *, cpus: float = 1.0, gpus: float = 0.0
) -> Callable[[dict[str, Any]], None]:
    """A function trainable bound to one store, wrapped with its per-trial resources."""
    from ray import tune

    path = str(Path(store_path).resolve())
    threads = max(1, int(cpus))

    def case_trial(config: dict[str, Any]) -> None:
        run_trial(config, path, threads)

    return tune.with_resources(case_trial, {"cpu": cpus, "gpu": gpus})
