"""Train one config on a feature store: `train(config, store, ...) -> TrainResult`.

Knows nothing of Ray or MLflow: progress leaves through `on_epoch(epoch, metrics)`, which
may return True to stop. Data stays on the device as tensors (models/data.py); a batch is an
index slice of a seeded permutation. On CPU the same config, seed, store and thread count give
the same history bit for bit in any process (models/repro.py pins and records the numerics).

CLI: `python -m models.train --model case-compressing [--data demo|STORE] [--epochs N] ...`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data_prep.device import resolve_device
from data_prep.store import FeatureStore, StoreError
from models import selection
from models.config import ConfigError, TrainConfig
from models.data import SplitData, load_split
from models.losses import Objective, class_weights
from models.metrics import (
    absent_note,
    all_neutral_metrics,
    baseline_name,
    bootstrap_scores,
    classification_metrics,
    macro_auroc,
    session_groups,
)
from models.registry import create_model
from models.repro import reproducible

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, float]], "bool | None"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(
            f"non-finite training loss {value} at epoch {epoch}, step {step}: lower the "
            "learning rate, set grad_clip, or check the features for inf/NaN"
        )
        self.epoch, self.step, self.value = epoch, step, value

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling; rebuild from our own arguments.
        return (type(self), (self.epoch, self.step, self.value))


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    state_dict: dict[str, torch.Tensor]
    seconds: float
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)
    # the weights at best_epoch (by the selection statistic) and at each epoch asked to keep
    best_state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    kept_states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    numerics: dict[str, Any] = field(default_factory=dict)  # models.repro.numerics


# -- pieces ------------------------------------------------------------------------------
def model_sizes(store: FeatureStore) -> dict[str, int]:
    return {
        "text_dim": store.text_dim,
        "audio_dim": store.audio_dim,
        "max_tokens": store.max_tokens,
        "max_frames": store.max_frames,
        "num_classes": store.num_classes,
    }


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimiser step s (0-based); warmup as in transformers'
    `get_linear_schedule_with_warmup`, which the seed used."""
    warm = int(config.warmup_ratio * total_steps)
    total = max(1, total_steps)

    def factor(s: int) -> float:
        if config.schedule == "none":
            return 1.0
        if s < warm:
            return s / max(1, warm)
        progress = (s - warm) / max(1, total - warm)
        if config.schedule == "linear_warmup":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: SplitData,
    objective: Objective,
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean per-row loss, predicted class ids and class probabilities ([N, C], on the CPU)
    over ``data``, in eval mode."""
    model.eval()
    total = torch.zeros((), device=data.device)
    logits = []
    for idx, batch in data.batches(torch.arange(data.n), batch_size):
        with autocast():
            out = model(batch)
            loss = objective(out, data.labels[idx])
        total += loss.detach().float() * len(idx)
        logits.append(out.logits.detach().float())
    if not logits:
        return float("nan"), torch.zeros(0, dtype=torch.long), torch.zeros(0, 0)
    probs = torch.cat(logits).softmax(dim=-1).cpu()
    return float(total) / data.n, probs.argmax(dim=-1), probs


def checkpoint_payload(
    state_dict: Mapping[str, torch.Tensor],
    config: TrainConfig,
    epoch: int,
    metrics: Mapping[str, float],
    sizes: Mapping[str, int],
    store_key: str,
) -> dict[str, Any]:
    """Plain tensors and plain data only, so `torch.load(weights_only=True)` reads it."""
    return {
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "config": config.to_dict(),
        "epoch": epoch,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "sizes": dict(sizes),
        "store_key": store_key,
    }


def save_checkpoint(
    path: Path,
    model: nn.Module,
    config: TrainConfig,
    epoch: int,
    metrics: dict[str, float],
    sizes: dict[str, int],
    store_key: str,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = checkpoint_payload(model.state_dict(), config, epoch, metrics, sizes, store_key)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def model_for(
    config: TrainConfig, store: FeatureStore, state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    """The head of ``config`` for ``store``'s feature sizes with ``state_dict``, in eval mode."""
    model = create_model(config.model, config=config, **model_sizes(store))
    model.load_state_dict(state_dict)
    model.eval()
    return model


def load_checkpoint(path: str | Path, store: FeatureStore) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint for ``store`` (in eval mode) and its config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(ckpt["config"])
    sizes = model_sizes(store)
    if ckpt.get("sizes") and ckpt["sizes"] != sizes:
        raise ValueError(
            f"{path}: checkpoint was trained on feature sizes {ckpt['sizes']}, but store "
            f"{store.key} has {sizes}; use the store it was trained on"
        )
    return model_for(config, store, ckpt["state_dict"]), config


@contextlib.contextmanager
def _own_rng(states: dict[str, torch.Tensor], device: torch.device):
    """Run with the global RNGs (dropout) set to ``states``, updating them and restoring the
    caller's after.

    Each run keeps its own dropout stream, so runs stepped in lockstep (a trial's folds) or
    after other runs in the same process (a reused actor) draw what they would draw alone.
    """
    cuda = device.type == "cuda"
    outer = {"cpu": torch.get_rng_state()}
    torch.set_rng_state(states["cpu"])
    if cuda:  # CUDA-only: the device's own generator drives dropout there
        outer["cuda"] = torch.cuda.get_rng_state(device)
        if "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"], device)
    try:
        yield
    finally:
        states["cpu"] = torch.get_rng_state()
        torch.set_rng_state(outer["cpu"])
        if cuda:
            states["cuda"] = torch.cuda.get_rng_state(device)
            torch.cuda.set_rng_state(outer["cuda"], device)


# -- one run, an epoch at a time ---------------------------------------------------------
class Trainer:
    """One config trained on one store, an epoch at a time (``run_epoch``).

    ``config.epochs`` is the schedule's horizon: the learning-rate schedule spans that many
    epochs whether or not the run is stopped earlier, so the first epochs of a short run (a
    search trial) are exactly the first epochs of the full run (finalize's). ``rows`` replaces
    the store's split of a name by explicit row positions (a fold of the training sessions).
    """

    def __init__(
        self,
        config: TrainConfig | dict[str, Any],
        store: FeatureStore,
        *,
        eval_splits: Iterable[str] = ("val",),
        rows: Mapping[str, np.ndarray] | None = None,
        device: str | torch.device | None = None,
        threads: int | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.amp_dtype_asked = amp_dtype  # None: bf16 where the GPU has it, else fp16
        self.threads = threads  # models.repro pins them for every epoch
        self.numerics: dict[str, Any] = {}
        self.store = store
        self.device = resolve_device(device)
        self.eval_splits = tuple(eval_splits)
        self.notes: list[str] = []
        self.use_amp = bool(self.config.amp and self.device.type == "cuda")
        # A non-finite loss stops the run at its step on CPU, where reading it is free; on
        # CUDA the losses are checked once per epoch, so no step waits for the device.
        self.check_each_step = self.device.type == "cpu"
        if self.config.amp and not self.use_amp:
            self._note("amp ignored: mixed precision is used on CUDA only")
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self._build(rows or {})

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.info(text)

    def _build(self, rows: Mapping[str, np.ndarray]) -> None:
        config, dev = self.config, self.device
        torch.manual_seed(config.seed)
        self.sizes = model_sizes(self.store)
        self.model = create_model(config.model, config=config, **self.sizes).to(dev)
        # The dropout stream starts where the model's initialisation left the global RNG.
        self._rng = {"cpu": torch.get_rng_state()}
        if dev.type == "cuda":
            self._rng["cuda"] = torch.cuda.get_rng_state(dev)
        self._load_data(rows)
        self._build_optimization()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _load_data(self, rows: Mapping[str, np.ndarray]) -> None:
        """The train split and the eval splits, as the model reads them (``rows``: folds)."""
        store, dev = self.store, self.device
        frames = self.config.audio_frames or store.max_frames
        load = dict(uses=self.model.uses, frames=frames, trim=self.model.trim, device=dev)
        self.train_data = load_split(store, "train", rows=rows.get("train"), **load)
        if self.train_data.n == 0:
            raise ValueError(f"store {store.path} has no training rows")
        self.evals = {s: load_split(store, s, rows=rows.get(s), **load) for s in self.eval_splits}
        for d in (self.train_data, *self.evals.values()):
            if not d.resident:
                self._note(f"{d.split} split streamed from the memory maps (too big for {dev})")
        self.train_labels_cpu = self.train_data.labels.cpu()
        self.eval_labels_cpu = {s: d.labels.cpu() for s, d in self.evals.items()}
        for s, labels in self.eval_labels_cpu.items():  # small corpora: what macro-F1 means
            if note := absent_note(labels, s, store.num_classes, store.label_names):
                self._note(note)
        sessions = store.table["session"].to_numpy()
        self.eval_groups = {}
        for s, d in self.evals.items():
            self.eval_groups[s], note = session_groups(sessions[d.rows], s)
            if note:
                self._note(note)

    def _build_optimization(self) -> None:
        """Loss, optimizer, learning-rate schedule and (on CUDA with amp) the grad scaler."""
        config, dev = self.config, self.device
        weight = class_weights(
            self.train_labels_cpu.numpy(), self.store.num_classes, config.class_weights
        )
        self.objective = Objective(config, weight).to(dev)
        # Fused on CUDA: one kernel per step, and GradScaler hands it the inf check on the
        # device instead of reading found_inf back to the host every step.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=dev.type == "cuda" or None,
        )
        self.steps_per_epoch = math.ceil(self.train_data.n / config.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config, self.steps_per_epoch * config.epochs)
        )
        bf16 = self.use_amp and torch.cuda.is_bf16_supported()
        self.amp_dtype = self.amp_dtype_asked or (torch.bfloat16 if bf16 else torch.float16)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def run_epoch(self) -> dict[str, float]:
        """Train one more epoch, score the eval splits; returns (and records) its metrics."""
        with reproducible(self.device, self.threads) as info, _own_rng(self._rng, self.device):
            self.numerics = info
            metrics = self._epoch()
        self.history.append(metrics)
        return metrics

    def _epoch(self) -> dict[str, float]:
        self.epoch += 1
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.model.train()
        perm = torch.randperm(self.train_data.n, generator=self.generator)  # on the host
        step_losses, preds = self._train_steps(perm)
        metrics: dict[str, float] = {
            "epoch": self.epoch,
            "train_loss": float(step_losses.sum()) / self.train_data.n,
        }
        metrics.update(
            classification_metrics(
                torch.cat(preds).cpu(),
                self.train_labels_cpu[perm],
                "train",
                self.store.num_classes,
                neutral_index=self.store.neutral_index,
                label_names=self.store.label_names,
            )
        )
        for split in self.evals:
            metrics.update(self._score(split))
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["epoch_seconds"] = time.perf_counter() - t0
        # CPU time of this process: comparable across runs on a shared machine.
        metrics["epoch_cpu_seconds"] = time.process_time() - cpu0
        metrics["torch_threads"] = float(torch.get_num_threads())
        return metrics

    def _train_steps(self, perm: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One pass over the training rows in ``perm``'s order: (each step's summed loss,
        each step's predictions). A non-finite loss raises NonFiniteLossError."""
        step_losses, preds = self._steps(perm)
        if not self.check_each_step and not bool(torch.isfinite(step_losses).all()):
            bad = int((~torch.isfinite(step_losses)).nonzero()[0])
            raise NonFiniteLossError(self.epoch, bad + 1, float(step_losses[bad]))
        return step_losses, preds

    def _steps(self, perm: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The steps of one pass, which read nothing back from the device unless
        ``check_each_step`` (the CPU's rule)."""
        data, bs = self.train_data, self.config.batch_size
        losses, preds = [], []
        for step, (idx, batch) in enumerate(data.batches(perm, bs)):
            with self.autocast():
                out = self.model(batch)
                loss = self.objective(out, data.labels[idx])
            if self.check_each_step and not torch.isfinite(loss):
                raise NonFiniteLossError(self.epoch, step + 1, float(loss.detach()))
            self._step(loss)
            losses.append(loss.detach().float() * len(idx))
            preds.append(out.logits.detach().argmax(dim=-1))
        return torch.stack(losses), preds

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _score(self, split: str) -> dict[str, float]:
        data, labels = self.evals[split], self.eval_labels_cpu[split]
        n_cls = self.store.num_classes
        loss, pred, probs = evaluate(
            self.model, data, self.objective, self.config.batch_size, self.autocast
        )
        out = {f"{split}_loss": loss}
        out.update(
            classification_metrics(
                pred,
                labels,
                split,
                n_cls,
                neutral_index=self.store.neutral_index,
                label_names=self.store.label_names,
            )
        )
        out[f"{split}_macro_auroc"] = macro_auroc(probs, labels, n_cls)
        if len(labels):
            # macro-F1 needs no neutral class; None skips the seed's micro-F1 altogether.
            reps = bootstrap_scores(
                [pred.numpy()],
                labels.numpy(),
                n_cls,
                groups=self.eval_groups[split],
                n_boot=200,
                neutral_index=None,
            )["macro_f1"]
            out[f"{split}_macro_f1_se"] = float(reps.std(ddof=1))
        return out

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the head's weights now."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run elsewhere, bit for bit (plain tensors and
        data, so `torch.load(weights_only=True)` reads it)."""
        return {
            "epoch": self.epoch,
            "config": self.config.to_dict(),
            "model": self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": {k: v.clone() for k, v in self._rng.items()},
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["config"] != self.config.to_dict():
            raise ValueError("checkpoint is of another config; it cannot continue this run")
        self.model.load_state_dict(state["model"])
        # Continued on another device: this device's optimizer kernels. Set before loading,
        # which places each state's step counter by the groups' "fused" (on the parameters'
        # device when fused, on the CPU otherwise).
        fused = self.device.type == "cuda" or None
        optimizer = dict(state["optimizer"])
        optimizer["param_groups"] = [{**g, "fused": fused} for g in optimizer["param_groups"]]
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] or not self.scaler.is_enabled():  # {}: saved where none was used
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self._rng = {k: v.clone() for k, v in state["rng"].items()}
        self.epoch = int(state["epoch"])
        self.history = [dict(h) for h in state["history"]]


def selection_key(eval_splits: Sequence[str]) -> str | None:
    """The metric a run is selected by: val macro-F1 (else the first eval split's)."""
    if not eval_splits:
        return None
    return ("val" if "val" in eval_splits else eval_splits[0]) + "_macro_f1"


# -- the loop ----------------------------------------------------------------------------
def train(
    config: TrainConfig | dict[str, Any],
    store: FeatureStore,
    *,
    eval_splits: Iterable[str] = ("val",),
    on_epoch: OnEpoch | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    device: str | torch.device | None = None,
    max_epochs: int | None = None,
    keep_epochs: Iterable[int] = (),
    threads: int | None = None,
) -> TrainResult:
    """Train ``config`` on ``store``'s train split, scoring ``eval_splits`` after each epoch.

    Runs ``config.epochs`` epochs (the schedule's horizon), or only the first ``max_epochs``
    of them. The best epoch is where the selection statistic (models.selection: the trailing
    mean of val macro-F1) peaks; its weights are kept as ``best_state_dict``, and those of
    every epoch in ``keep_epochs`` in ``kept_states``. ``threads`` torch threads (default
    models.repro.DEFAULT_THREADS, whatever the process had): the thread count changes CPU
    results, so it is pinned and reported (``TrainResult.numerics``, ``torch_threads``).
    """
    started = time.perf_counter()
    trainer = Trainer(config, store, eval_splits=eval_splits, device=device, threads=threads)
    config = trainer.config
    last = min(config.epochs, max_epochs or config.epochs)
    keeper = _Keeper(selection_key(trainer.eval_splits), set(keep_epochs))
    stopped_early = False
    while trainer.epoch < last:
        metrics = trainer.run_epoch()
        epoch = trainer.epoch
        keeper.add(trainer, metrics)
        if checkpoint_dir and checkpoint_every > 0 and epoch % checkpoint_every == 0:
            save_checkpoint(
                Path(checkpoint_dir) / f"epoch_{epoch:04d}.pt",
                trainer.model,
                config,
                epoch,
                metrics,
                trainer.sizes,
                store.key,
            )
        if on_epoch is not None and on_epoch(epoch, dict(metrics)) is True:
            stopped_early = epoch < last
            break
    return TrainResult(
        history=trainer.history,
        best_epoch=keeper.tracker.best_epoch,
        best_metrics=keeper.best_metrics,
        state_dict=trainer.weights(),
        seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
        notes=trainer.notes,
        best_state_dict=keeper.best_state,
        kept_states=keeper.kept,
        numerics=trainer.numerics,
    )


@dataclass
class _Keeper:
    """What `train` keeps as epochs pass: the selection statistic over ``key`` (None: no eval
    split, the latest epoch is best), the best epoch's metrics and weights, and the weights of
    the epochs in ``keep``."""

    key: str | None
    keep: set[int]
    tracker: selection.Tracker = field(default_factory=selection.Tracker)
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def add(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Record the epoch just run; adds ``<key>_trailing`` to ``metrics`` (the same dict
        as in trainer.history)."""
        epoch = trainer.epoch
        value = metrics.get(self.key, math.nan) if self.key else float(epoch)
        trailing = self.tracker.add(value)
        if self.key:
            metrics[f"{self.key}_trailing"] = trailing
        if self.tracker.best_epoch == epoch:
            self.best_metrics, self.best_state = dict(metrics), trainer.weights()
        if epoch in self.keep:
            self.kept[epoch] = trainer.weights()


# -- CLI ---------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def open_store(data: str) -> FeatureStore:
    """`demo` = the demo store (prepared on first use); else a store folder. Test is sealed."""
    if data == "demo":
        from data_prep.prepare import prepare_demo  # written by data_prep; imported lazily

        data = str(prepare_demo())
    return FeatureStore.open(data, sealed=("test",))


# (metric key, column heading, decimals)
TABLE_COLUMNS = [
    ("epoch", "epoch", 0),
    ("train_loss", "train_loss", 4),
    ("val_loss", "val_loss", 4),
    ("val_macro_f1", "macro", 3),
    ("val_weighted_f1", "weighted", 3),
    ("val_micro_f1", "micro", 3),
    ("val_seed_micro_f1", "seed_micro", 3),
    ("epoch_seconds", "sec", 2),
]


def table_columns(store: FeatureStore | None = None) -> list[tuple[str, str, int]]:
    """TABLE_COLUMNS, less the seed's micro-F1 for a store without a neutral class."""
    if store is None or store.neutral_index is not None:
        return list(TABLE_COLUMNS)
    return [c for c in TABLE_COLUMNS if c[0] != "val_seed_micro_f1"]


def table_header(columns: Sequence[tuple[str, str, int]] = TABLE_COLUMNS) -> str:
    return " ".join(head.rjust(max(len(head), 6)) for _k, head, _d in columns)


def table_row(
    metrics: dict[str, float], columns: Sequence[tuple[str, str, int]] = TABLE_COLUMNS
) -> str:
    return " ".join(
        f"{metrics.get(key, math.nan):.{dec}f}".rjust(max(len(head), 6))
        for key, head, dec in columns
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.train", description="Train one config on a feature store."
    )
    parser.add_argument("--model", help="a registered model name (python -m models.param_count)")
    parser.add_argument("--data", default="demo", help="'demo' (default) or a feature store folder")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--config", help="a JSON or YAML file of config keys")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1, as a search trial)")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _config_from_args(parser, args)
    try:
        store = open_store(args.data)
    except (StoreError, OSError, ValueError) as exc:  # one line, not a traceback
        print(f"models.train: error: --data {args.data}: {exc}", file=sys.stderr)
        return 2
    _print_preamble(store, config)
    columns = table_columns(store)
    print(table_header(columns))

    def report(_epoch: int, metrics: dict[str, float]) -> None:
        print(table_row(metrics, columns), flush=True)

    result = train(
        config,
        store,
        on_epoch=report,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        threads=args.threads,
    )
    _print_result(result)
    return 0


def _config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """--config's keys, then the named flags, then each --set (a bad one is a usage error)."""
    raw: dict[str, Any] = _read_config_file(args.config) if args.config else {}
    for key, value in (
        ("model", args.model),
        ("epochs", args.epochs),
        ("lr", args.lr),
        ("batch_size", args.batch_size),
        ("seed", args.seed),
    ):
        if value is not None:
            raw[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        raw[key.strip().replace("-", "_")] = _parse_value(value)
    try:
        return TrainConfig.from_dict(raw)
    except ConfigError as exc:
        parser.error(str(exc))


def _print_preamble(store: FeatureStore, config: TrainConfig) -> None:
    """The store, the model, and the constant baseline's val scores to beat."""
    const = store.baseline_class()
    baseline = all_neutral_metrics(
        store.labels("val"),
        "val",
        store.num_classes,
        store.neutral_index,
        store.label_names,
        predict=const,
    )
    print(
        f"store {store.path} ({len(store.indices('train'))} train / "
        f"{len(store.indices('val'))} val rows), model {config.model}"
    )
    print(
        f"{baseline_name(store.label_names, const)} val: macro {baseline['val_macro_f1']:.3f} "
        f"weighted {baseline['val_weighted_f1']:.3f} micro {baseline['val_micro_f1']:.3f}"
    )


def _print_result(result: TrainResult) -> None:
    for note in result.notes:
        print(f"note: {note}")
    b = result.best_metrics
    print(
        f"best epoch {result.best_epoch}: val macro {b.get('val_macro_f1', math.nan):.3f} "
        f"weighted {b.get('val_weighted_f1', math.nan):.3f} "
        + (f"seed micro {b['val_seed_micro_f1']:.3f} " if "val_seed_micro_f1" in b else "")
        + f"({result.seconds:.1f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
