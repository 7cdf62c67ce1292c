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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.store import FeatureStore
from models.config import ConfigError, TrainConfig
from models.data import SplitData, iterate_in_order, load_split
from models.losses import Objective, class_weights
from models.metrics import all_neutral_metrics, classification_metrics, macro_auroc
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
    numerics: dict[str, Any] = field(default_factory=dict)  # models.repro.numerics


# -- pieces ------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    for idx in iterate_in_order(data.n, batch_size, data.device):
        with autocast():
            out = model(data.batch(idx))
            loss = objective(out, data.labels[idx])
        total += loss.detach().float() * len(idx)
        logits.append(out.logits.detach().float())
    if not logits:
        return float("nan"), torch.zeros(0, dtype=torch.long), torch.zeros(0, 0)
    probs = torch.cat(logits).softmax(dim=-1).cpu()
    return float(total) / data.n, probs.argmax(dim=-1), probs


def save_checkpoint(
    path: Path, model: nn.Module, config: TrainConfig, epoch: int, metrics: dict[str, float],
    sizes: dict[str, int], store_key: str,
) -> None:  # fmt: skip
    """Plain tensors and plain data only, so `torch.load(weights_only=True)` reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "epoch": epoch,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "sizes": dict(sizes),
        "store_key": store_key,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


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
    model = create_model(config.model, config=config, **sizes)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, config


def _improves(value: float, best: float) -> bool:
    """Strictly better; NaN never improves and anything real beats a NaN best."""
    return not math.isnan(value) and (math.isnan(best) or value > best)


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
    threads: int | None = None,
) -> TrainResult:
    """Train ``config`` on ``store``'s train split, scoring ``eval_splits`` after each epoch.

    ``threads`` torch threads (default models.repro.DEFAULT_THREADS, whatever the process
    had): the thread count changes CPU results, so it is pinned and reported per epoch.

    The best epoch is the one with the highest ``val_macro_f1`` (or the first eval split's
    macro-F1 when val is not evaluated; the last epoch when nothing is evaluated).
    """
    started = time.perf_counter()
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    dev = resolve_device(device)
    eval_splits = tuple(eval_splits)
    notes: list[str] = []
    use_amp = bool(config.amp and dev.type == "cuda")
    if config.amp and not use_amp:
        notes.append("amp ignored: mixed precision is used on CUDA only")
        log.info(notes[-1])
    with reproducible(dev, threads) as numerics:
        result = _train(config, store, dev, eval_splits, on_epoch, checkpoint_dir,
                        checkpoint_every, use_amp, notes, started)  # fmt: skip
    result.numerics = numerics
    return result


def _train(config, store, dev, eval_splits, on_epoch, checkpoint_dir, checkpoint_every,
           use_amp, notes, started) -> TrainResult:  # fmt: skip
    torch.manual_seed(config.seed)
    sizes = model_sizes(store)
    model = create_model(config.model, config=config, **sizes).to(dev)
    frames = config.audio_frames or store.max_frames
    load = dict(uses=model.uses, frames=frames, trim=model.trim, device=dev)
    train_data = load_split(store, "train", **load)
    if train_data.n == 0:
        raise ValueError(f"store {store.path} has no training rows")
    evals = {s: load_split(store, s, **load) for s in eval_splits}
    for d in (train_data, *evals.values()):
        if not d.resident:
            notes.append(f"{d.split} split streamed from the memory maps (too big for {dev})")
    train_labels_cpu = train_data.labels.cpu()
    eval_labels_cpu = {s: d.labels.cpu() for s, d in evals.items()}
    weight = class_weights(train_labels_cpu.numpy(), store.num_classes, config.class_weights)
    objective = Objective(config, weight).to(dev)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)  # fmt: skip
    bs = config.batch_size
    steps_per_epoch = math.ceil(train_data.n / bs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config, steps_per_epoch * config.epochs)
    )
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def autocast():
        if use_amp:
            return torch.autocast(device_type="cuda", dtype=amp_dtype)
        return contextlib.nullcontext()

    generator = torch.Generator().manual_seed(config.seed)
    names = store.label_names
    n_cls = store.num_classes
    history: list[dict[str, float]] = []
    best_key = (
        ("val" if "val" in eval_splits else eval_splits[0]) + "_macro_f1" if eval_splits else None
    )
    best_epoch, best_value, best_metrics = 0, math.nan, {}
    stopped_early = False
    check_each_step = dev.type == "cpu"  # free on CPU; on CUDA one sync per epoch instead
    params = [p for p in model.parameters() if p.requires_grad]

    for epoch in range(1, config.epochs + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        model.train()
        perm = torch.randperm(train_data.n, generator=generator).to(dev)
        losses, preds = [], []
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
            target = train_data.labels[idx]
            with autocast():
                out = model(train_data.batch(idx))
                loss = objective(out, target)
            if check_each_step and not torch.isfinite(loss):
                raise NonFiniteLossError(epoch, step + 1, float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.detach().float() * len(idx))
            preds.append(out.logits.detach().argmax(dim=-1))
        step_losses = torch.stack(losses)
        if not check_each_step and not bool(torch.isfinite(step_losses).all()):
            bad = int((~torch.isfinite(step_losses)).nonzero()[0])
            raise NonFiniteLossError(epoch, bad + 1, float(step_losses[bad]))
        metrics: dict[str, float] = {"epoch": epoch,
                                     "train_loss": float(step_losses.sum()) / train_data.n}  # fmt: skip
        metrics.update(classification_metrics(
            torch.cat(preds).cpu(), train_labels_cpu[perm.cpu()], "train", n_cls, label_names=names
        ))  # fmt: skip
        for split, data in evals.items():
            loss_value, pred, probs = evaluate(model, data, objective, bs, autocast)
            metrics[f"{split}_loss"] = loss_value
            metrics.update(classification_metrics(pred, eval_labels_cpu[split], split, n_cls,
                                                  label_names=names))  # fmt: skip
            metrics[f"{split}_macro_auroc"] = macro_auroc(probs, eval_labels_cpu[split], n_cls)
        metrics["lr"] = float(scheduler.get_last_lr()[0])
        metrics["epoch_seconds"] = time.perf_counter() - t0
        # CPU time of this process: comparable across runs on a shared machine.
        metrics["epoch_cpu_seconds"] = time.process_time() - cpu0
        metrics["torch_threads"] = float(torch.get_num_threads())  # explains a CPU difference
        history.append(metrics)
        value = metrics.get(best_key, math.nan) if best_key else float(epoch)
        if _improves(value, best_value) or best_epoch == 0:
            best_epoch, best_value, best_metrics = epoch, value, dict(metrics)
        if checkpoint_dir and checkpoint_every > 0 and epoch % checkpoint_every == 0:
            save_checkpoint(Path(checkpoint_dir) / f"epoch_{epoch:04d}.pt", model, config,
                            epoch, metrics, sizes, store.key)  # fmt: skip
        if on_epoch is not None and on_epoch(epoch, dict(metrics)) is True:
            stopped_early = epoch < config.epochs
            break

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return TrainResult(history=history, best_epoch=best_epoch, best_metrics=best_metrics,
                       state_dict=state, seconds=time.perf_counter() - started,
                       stopped_early=stopped_early, notes=notes)  # fmt: skip


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
TABLE_COLUMNS = [("epoch", "epoch", 0), ("train_loss", "train_loss", 4), ("val_loss", "val_loss", 4),
                 ("val_macro_f1", "macro", 3), ("val_weighted_f1", "weighted", 3),
                 ("val_micro_f1", "micro", 3), ("val_seed_micro_f1", "seed_micro", 3),
                 ("epoch_seconds", "sec", 2)]  # fmt: skip


def table_header() -> str:
    return " ".join(head.rjust(max(len(head), 6)) for _k, head, _d in TABLE_COLUMNS)


def table_row(metrics: dict[str, float]) -> str:
    return " ".join(
        f"{metrics.get(key, math.nan):.{dec}f}".rjust(max(len(head), 6))
        for key, head, dec in TABLE_COLUMNS
    )


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable)")  # fmt: skip
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1, as a search trial)")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    args = parser.parse_args(argv)

    raw: dict[str, Any] = _read_config_file(args.config) if args.config else {}
    for key, value in (("model", args.model), ("epochs", args.epochs), ("lr", args.lr),
                       ("batch_size", args.batch_size), ("seed", args.seed)):  # fmt: skip
        if value is not None:
            raw[key] = value
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        raw[key.strip().replace("-", "_")] = _parse_value(value)
    try:
        config = TrainConfig.from_dict(raw)
    except ConfigError as exc:
        parser.error(str(exc))
    store = open_store(args.data)
    baseline = all_neutral_metrics(store.labels("val"), "val", store.num_classes,
                                   label_names=store.label_names)  # fmt: skip
    print(f"store {store.path} ({len(store.indices('train'))} train / "
          f"{len(store.indices('val'))} val rows), model {config.model}")  # fmt: skip
    print(f"all-neutral val: macro {baseline['val_macro_f1']:.3f} "
          f"weighted {baseline['val_weighted_f1']:.3f} micro {baseline['val_micro_f1']:.3f}")  # fmt: skip
    print(table_header())

    def report(_epoch: int, metrics: dict[str, float]) -> None:
        print(table_row(metrics), flush=True)

    result = train(config, store, on_epoch=report, checkpoint_dir=args.checkpoint_dir,
                   checkpoint_every=args.checkpoint_every, device=args.device,
                   threads=args.threads)  # fmt: skip
    for note in result.notes:
        print(f"note: {note}")
    b = result.best_metrics
    print(f"best epoch {result.best_epoch}: val macro {b.get('val_macro_f1', math.nan):.3f} "
          f"weighted {b.get('val_weighted_f1', math.nan):.3f} "
          f"seed micro {b.get('val_seed_micro_f1', math.nan):.3f} ({result.seconds:.1f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
