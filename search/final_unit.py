"""One unit of a finalize, as it runs in a Ray worker: train one (config, seed), then score test.

Training opens the store with test sealed; only once it is over are the kept weights (the
epoch chosen by validation, and the seed's fixed epoch) scored on test, once each. A unit
writes nothing: it returns plain data, checkpoint bytes included, so it runs on any node of a
cluster and a unit whose worker dies can simply run again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from search.final_plan import FIXED_EPOCH, fixed_epoch


def unit_task(
    unit: dict[str, Any], store_path: str, threads: int, device: str | None, gpus: float = 0.0
) -> dict[str, Any]:
    """The Ray task of one unit: `run_unit` on the device Ray assigned (or ``device``)."""
    import ray

    from data_prep.device import run_device
    from models.data import use_gpu_share
    from search.faults import fault_point

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    fault_point("unit_start", unit.get("unit_id", ""), node)
    use_gpu_share(gpus)  # several runs may share one GPU
    # The trials' rule (data_prep.device.run_device): the GPU Ray assigned, or the CPU.
    return run_unit(unit, store_path, threads=threads, device=device or str(run_device(gpus)))


def run_unit(
    unit: Mapping[str, Any],
    store_path: str,
    *,
    threads: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train one (config, seed) with test sealed, then score its chosen and fixed-epoch
    weights on test, once.

    The chosen weights are those of the epoch where the selection statistic (the trailing
    mean of val macro-F1; of its fold mean with ``unit["folds"]``) peaks, looked at every
    epoch; the fixed ones are the seed's epoch 120. With folds a run is K heads, one per
    session fold, and test scores their ensemble (the mean of their class probabilities).
    Returns plain data (history, val and test metrics at both epochs, test predictions, the
    bytes of the checkpoints); writes nothing, so it works on any node of a cluster.
    """
    from data_prep.store import FeatureStore
    from models.config import TrainConfig
    from models.selection import STATISTIC
    from models.train import resolve_device

    started = time.time()
    config = TrainConfig.from_dict(dict(unit["config"]))
    dev = resolve_device(device)
    train_store = FeatureStore.open(store_path, sealed=("test",))
    fixed = fixed_epoch(config.epochs)
    folds = int(unit.get("folds") or 0)
    trained = (_train_folds if folds > 1 else _train_one)(
        config, train_store, folds, fixed, dev, threads
    )
    history, chosen, states, notes, numerics = trained
    # Training is over: from here on the test split is read, once per kept set of weights.
    score_store = FeatureStore.open(store_path, sealed=())
    test_metrics, test_pred, blobs = _score_test(
        config, score_store, states, history, dev, train_store.key
    )
    epochs = sorted(states)
    return {
        **dict(unit),
        "checkpoint_epochs": epochs,
        "history": history,
        "statistic": STATISTIC,
        "val_at_checkpoint": {str(e): history[e - 1].get("val_macro_f1", math.nan) for e in epochs},
        "selection_at_checkpoint": {
            str(e): history[e - 1].get("val_macro_f1_trailing", math.nan) for e in epochs
        },
        "test_at_checkpoint": test_metrics,
        "test_pred": test_pred,
        "chosen_epoch": chosen,
        "fixed_epoch": fixed,
        "fixed_target": FIXED_EPOCH,
        "train_splits_read": sorted(train_store.accessed),
        "score_splits_read": sorted(score_store.accessed),
        "store_key": train_store.key,
        "notes": list(notes),
        "numerics": dict(numerics),
        "seconds": time.time() - started,
        "host": os.uname().nodename,
        "finished": timestamp(),
        "_checkpoints": blobs,
    }


# (history, chosen epoch, {epoch: [weights per head]}, notes, numerics)
Trained = tuple[
    list[dict[str, float]], int, dict[int, list[dict[str, Any]]], list[str], dict[str, Any]
]


def _train_one(
    config: Any, store: Any, _folds: int, fixed: int, dev: Any, threads: int | None
) -> Trained:
    """One head on the train split, validated on val."""
    from models.train import train

    result = train(
        config, store, eval_splits=("val",), device=dev, keep_epochs=(fixed,), threads=threads
    )
    history = [{k: float(v) for k, v in h.items()} for h in result.history]
    states = {fixed: [result.kept_states[fixed]], result.best_epoch: [result.best_state_dict]}
    return history, result.best_epoch, states, result.notes, result.numerics


def _train_folds(
    config: Any, store: Any, folds: int, fixed: int, dev: Any, threads: int | None
) -> Trained:
    """K heads stepped together, one per session fold (the sweep's own TrialRun, so a fold
    trial is the start of this run too); the epoch is chosen by the fold mean's statistic."""
    from search.trainable import TrialRun

    run = TrialRun(config.to_dict(), store, folds, device=dev, threads=threads)
    states: dict[int, list[dict[str, Any]]] = {}
    best: list[dict[str, Any]] = []
    while run.epoch < config.epochs:
        run.run_epoch()
        if run.tracker.best_epoch == run.epoch:
            best = [t.weights() for t in run.trainers]
        if run.epoch == fixed:
            states[fixed] = [t.weights() for t in run.trainers]
    states[run.tracker.best_epoch] = best
    history = [{k: float(v) for k, v in h.items()} for h in run.history]
    for epoch, h in enumerate(history, 1):
        h.setdefault("epoch", float(epoch))
    first = run.trainers[0]
    return history, run.tracker.best_epoch, states, first.notes, first.numerics


def _score_test(
    config: Any,
    store: Any,
    states: Mapping[int, list[dict[str, Any]]],
    history: list[dict[str, float]],
    dev: Any,
    train_key: str,
) -> tuple[dict, dict, dict[str, bytes]]:
    """Test metrics, predictions and checkpoint bytes of each kept epoch's heads (one head, or
    the ensemble of the fold heads: mean class probabilities, mean of their test losses)."""
    import torch

    from models.data import load_split
    from models.losses import Objective, class_weights
    from models.train import evaluate, model_for, model_sizes

    weight = class_weights(store.labels("train"), store.num_classes, config.class_weights)
    objective = Objective(config, weight).to(dev)
    sizes = model_sizes(store)
    data = None
    metrics: dict[str, dict[str, float]] = {}
    preds: dict[str, list[int]] = {}
    blobs: dict[str, bytes] = {}
    for e, heads in sorted(states.items()):
        losses, probs = [], []
        for k, state in enumerate(heads):
            model = model_for(config, store, state).to(dev)
            if data is None:  # the first model says which inputs and lengths it reads
                data = load_split(
                    store,
                    "test",
                    uses=model.uses,
                    frames=config.audio_frames or store.max_frames,
                    trim=model.trim,
                    device=dev,
                )
            loss, _pred, p = evaluate(
                model, data, objective, config.batch_size, contextlib.nullcontext
            )
            losses.append(loss)
            probs.append(p)
            key = checkpoint_key(e, k if len(heads) > 1 else None)
            blobs[key] = _checkpoint_bytes(state, config, e, history[e - 1], sizes, train_key)
        prob = torch.stack(probs).mean(dim=0)
        metrics[str(e)] = _ensemble_metrics(prob, losses, data.labels.cpu(), store)
        preds[str(e)] = [int(x) for x in prob.argmax(dim=-1).tolist()]
    return metrics, preds, blobs


def _ensemble_metrics(prob: Any, losses: list[float], gold: Any, store: Any) -> dict[str, float]:
    """Test metrics of the mean class probabilities ``prob`` of one head or several."""
    from models.metrics import classification_metrics, macro_auroc

    n_cls = store.num_classes
    m = classification_metrics(
        prob.argmax(dim=-1),
        gold,
        "test",
        n_cls,
        neutral_index=store.neutral_index,
        label_names=store.label_names,
    )
    m["test_loss"] = sum(losses) / len(losses)
    m["test_macro_auroc"] = macro_auroc(prob, gold, n_cls)
    return {k: float(v) for k, v in m.items()}


def _checkpoint_bytes(
    state: dict[str, Any],
    config: Any,
    epoch: int,
    metrics: dict[str, float],
    sizes: Any,
    train_key: str,
) -> bytes:
    """One head's weights in the checkpoint file format (models.train.checkpoint_payload)."""
    import torch

    from models.train import checkpoint_payload

    buf = io.BytesIO()
    torch.save(checkpoint_payload(state, config, epoch, metrics, sizes, train_key), buf)
    return buf.getvalue()


def checkpoint_key(epoch: int, fold: int | None = None) -> str:
    """How a unit names one head's weights: the epoch, and the fold when the run has folds."""
    return str(epoch) if fold is None else f"{epoch}-fold{fold}"


def timestamp() -> str:
    """Now, to the second, in local time with its offset (when a unit or finalize began or ended)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
