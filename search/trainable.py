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
TIE_METRIC = "val_macro_auroc"
# Early in training, on neutral-heavy data, most heads still predict neutral everywhere: their
# macro-F1 is exactly the all-neutral value, however much they have learned. Those exact ties
# are broken by val macro-AUROC (threshold-free, comparable across losses and class weights,
# unlike val loss). ASHA and TPE only compare values, so a tiny weight suffices; it keeps the
# AUROC a tie-break: it is below the smallest macro-F1 step one changed prediction makes on a
# val split of up to 10,000 rows (1 / 7 / 20,000).
TIE_BREAK = 1e-6
RUNG_METRIC = "val_macro_f1_rung"  # what ASHA compares at its rungs: this epoch's F1 + tie-break
BEST_METRIC = "val_macro_f1_best"  # the trial's best val macro-F1 so far (shown in progress)
# What Optuna's TPE learns from: the trial's best epoch by F1 + tie-break. Trials stopped at
# the first rung mostly tie on F1; the tie-break tells TPE which of them had learned most.
SEARCH_METRIC = "val_macro_f1_search"
MODE = "max"


def tie_broken(metrics: dict[str, float]) -> float:
    """Val macro-F1 plus ``TIE_BREAK`` x val macro-AUROC (F1 alone when AUROC is undefined)."""
    value = metrics.get(METRIC, float("nan"))
    tie = metrics.get(TIE_METRIC, float("nan"))
    return value + TIE_BREAK * tie if math.isfinite(tie) else value


_STORES: dict[str, Any] = {}  # per worker process: reused actors keep the memory maps open


def open_sealed_store(path: str) -> Any:
    """The feature store at ``path`` with its test split sealed (cached per process)."""
    from data_prep.store import FeatureStore

    store = _STORES.get(path)
    if store is None:
        store = FeatureStore.open(path, sealed=("test",))
        _STORES[path] = store
    return store


def run_trial(
    config: dict[str, Any], store_path: str, threads: int | None = None, gpus: float = 0.0
) -> None:
    """Train one config, reporting every epoch to Tune. Exceptions fail the trial."""
    from ray import tune

    from models.config import TrainConfig
    from models.data import use_gpu_share
    from models.repro import describe, numerics
    from models.train import resolve_device, train

    use_gpu_share(gpus)  # several trials may share one GPU
    store = open_sealed_store(store_path)
    cfg = TrainConfig.from_dict(config)
    best = best_search = -math.inf
    line = ""  # what the numerics depend on (threads, kernel path), read inside train

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        nonlocal best, best_search, line
        line = line or describe(numerics(resolve_device(None)))
        value = metrics.get(METRIC, float("nan"))
        rung = tie_broken(metrics)
        if math.isfinite(value):
            best = max(best, value)
            best_search = max(best_search, rung)
        tune.report(
            {
                **metrics,
                "epoch": epoch,
                RUNG_METRIC: rung,
                BEST_METRIC: best if math.isfinite(best) else float("nan"),
                SEARCH_METRIC: best_search if math.isfinite(best_search) else float("nan"),
                "splits_read": ",".join(sorted(store.accessed)),
                "numerics": line,
            }
        )
        return False

    train(cfg, store, eval_splits=("val",), on_epoch=on_epoch, threads=threads)


def make_trainable(
    store_path: str | Path, *, cpus: float = 1.0, gpus: float = 0.0
) -> Callable[[dict[str, Any]], None]:
    """A function trainable bound to one store, wrapped with its per-trial resources."""
    from ray import tune

    path = str(Path(store_path).resolve())
    threads = max(1, int(cpus))

    def case_trial(config: dict[str, Any]) -> None:
        run_trial(config, path, threads, gpus)

    return tune.with_resources(case_trial, {"cpu": cpus, "gpu": gpus})
