"""The scale bench's stand-in trial: the product's reporting, checkpoints and error results,
with a sleep in place of each epoch's training and a learning curve replayed from the replay
table (bench/replay/table.py: real trials of the demo store) in place of its metrics.

A trial's curve is its config's nearest table row (the replay surrogate's encoding, each
column scaled to its range) plus one seed's noise, drawn per trial number from the table's
configs trained twice; a config whose nearest row diverged diverges at the same epoch (the
trainable's error result). So ASHA stops and TPE suggests about as they would on the demo,
and every trial reports what a real one reports: the same metric names (about 35 of them, as
many as `search.trainable.run_trial` sends), a checkpoint folder per epoch of a size set by
the bench, continued from on a restart.

Workers import nothing heavy (no torch, no scikit-learn): 256 of them fit in this machine's
memory. Each appends one line per start and per epoch to ``events`` (O_APPEND, so lines of
concurrent workers do not interleave): the bench reads busy slot-seconds, progress and a
resumed sweep's restore time from it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.trainable import (
    ERROR_KEY,
    STAT_METRIC,
    TIE_METRIC,
    TRIAL_NUMBER,
    epoch_folder,
    epoch_report,
    quiet_exit_in_callbacks,
    report_own_error,
    tie_broken,
)

STATE_FILE = "standin.json"
PADDING_FILE = "weights.bin"
LABELS = ("neutral", "happy", "surprise", "angry", "sad", "disgust", "fear")  # KEMDy20's


class ReplayedDivergence(RuntimeError):
    """The table's nearest config diverged at this epoch: the trial does too."""


@dataclass
class Curves:
    """The table's seed-0 rows as arrays: what a worker needs to give a config its curve."""

    space: dict[str, Any]
    X: np.ndarray  # encodings, scaled to [0, 1] per column
    lo: np.ndarray
    span: np.ndarray
    val: list[list[float]]  # per row, the epochs it has (fewer where it diverged)
    auroc: list[list[float]]
    noise: np.ndarray  # rows of one seed's noise on (val, auroc), 2 x epochs each

    @classmethod
    def from_rows(cls, space: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Curves:
        from bench.replay.surrogate import by_config, encode

        by = by_config(rows)
        seed0 = [next((r for r in rs if r["seed"] == 0), rs[0]) for rs in by.values()]
        X = np.array([encode(space, r["config"]) for r in seed0])
        lo, hi = X.min(axis=0), X.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        epochs = max(len(r["val"]) for r in seed0)
        noise = []
        for rs in by.values():
            if len(rs) >= 2 and not any(r["error"] for r in rs[:2]):
                a, b = (np.array([*r["val"], *r["auroc"]], dtype=float) for r in rs[:2])
                if len(a) == len(b) == 2 * epochs:
                    noise.append(np.nan_to_num(b - a) / math.sqrt(2))
        return cls(
            space=space,
            X=(X - lo) / span,
            lo=lo,
            span=span,
            val=[list(r["val"]) for r in seed0],
            auroc=[[0.5 if v is None else v for v in r["auroc"]] for r in seed0],
            noise=np.array(noise) if noise else np.zeros((1, 2 * epochs)),
        )

    def curve(self, config: Mapping[str, Any], number: int) -> tuple[list[float], list[float]]:
        """(val macro-F1, val macro-AUROC) per epoch of trial ``number`` with ``config``; shorter
        than the sweep's epochs where it diverges."""
        from bench.replay.surrogate import encode

        x = (np.array(encode(self.space, config)) - self.lo) / self.span
        row = int(np.argmin(np.abs(self.X - x).sum(axis=1)))
        n = len(self.val[row])
        noise = self.noise[np.random.default_rng([number, 20261203]).integers(len(self.noise))]
        half = len(noise) // 2
        val = np.clip(np.array(self.val[row]) + noise[:n], 0.0, 1.0)
        auroc = np.clip(np.array(self.auroc[row]) + noise[half : half + n], 0.0, 1.0)
        return list(val), list(auroc)


def record(events: str | None, *fields: object) -> None:
    """One line of the bench's event log (a single O_APPEND write)."""
    if not events:
        return
    fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())
    finally:
        os.close(fd)


def epoch_result(val: Sequence[float], auroc: Sequence[float], epoch: int) -> dict[str, Any]:
    """What `search.trainable.run_trial` reports after ``epoch`` (1-based), from the curve:
    the search's metrics exactly as the product computes them, the rest plausible."""
    from models.selection import trailing_means

    f1, au = float(val[epoch - 1]), float(auroc[epoch - 1])
    metrics: dict[str, Any] = {"epoch": epoch, "train_loss": 2.0 - f1, "val_loss": 2.1 - f1}
    for split, shift in (("train", 0.05), ("val", 0.0)):
        m = min(1.0, f1 + shift)
        metrics.update(
            {
                f"{split}_macro_f1": m,
                f"{split}_micro_f1": min(1.0, m + 0.2),
                f"{split}_weighted_f1": min(1.0, m + 0.1),
                f"{split}_seed_micro_f1": min(1.0, m + 0.15),
                f"{split}_macro_f1_present": m,
                **{f"{split}_f1_{c}": m for c in LABELS},
            }
        )
    metrics[TIE_METRIC] = au
    metrics["val_macro_f1_se"] = 0.02
    metrics[STAT_METRIC] = trailing_means(list(val[:epoch]))[-1]
    metrics.update({"lr": 1e-3, "epoch_seconds": 0.0, "torch_threads": 1.0})
    return epoch_report(
        metrics,
        tie_broken(metrics, STAT_METRIC),
        splits_read="train,val",
        numerics="stand-in (bench/scale/standin.py)",
    )


def _resume_epoch() -> int:
    """The epoch Tune's checkpoint holds (0 on a fresh start)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / STATE_FILE).read_text())["epoch"])


def standin_trial(
    config: dict[str, Any],
    curves: Curves,
    epoch_seconds: float,
    max_epochs: int,
    checkpoint_bytes: int,
    events: str | None,
) -> None:
    """One trial: ``max_epochs`` of ``epoch_seconds`` each, reported with a checkpoint."""
    import logging

    from ray import tune

    # As run_trial: one "checkpoint created" line per trial and epoch would drown the output,
    # and an ASHA stop's SIGTERM would print a SystemExit traceback.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    quiet_exit_in_callbacks()
    number = int(config[TRIAL_NUMBER])
    val, auroc = curves.curve(config, number)
    start = _resume_epoch()
    record(events, "start", number, f"{time.time():.3f}", start)
    padding = os.urandom(checkpoint_bytes)
    for epoch in range(start + 1, max_epochs + 1):
        time.sleep(epoch_seconds)
        record(events, "epoch", number, f"{time.time():.3f}", epoch)
        if epoch > len(val):
            report_own_error(ReplayedDivergence(f"loss is NaN at epoch {epoch} (replayed)"), epoch)
            return
        with epoch_folder() as folder:
            (Path(folder) / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
            (Path(folder) / PADDING_FILE).write_bytes(padding)
            tune.report(epoch_result(val, auroc, epoch), checkpoint=tune.Checkpoint(folder))


def make_standin(
    curves: Curves,
    *,
    epoch_seconds: float,
    max_epochs: int,
    checkpoint_bytes: int = 64 * 1024,
    events: str | None = None,
) -> Any:
    """The stand-in as a Tune trainable, one logical CPU per trial (as `make_trainable`)."""
    from ray import tune

    def case_standin(config: dict[str, Any]) -> None:
        standin_trial(config, curves, epoch_seconds, max_epochs, checkpoint_bytes, events)

    return tune.with_resources(case_standin, {"cpu": 1})


__all__ = ["ERROR_KEY", "Curves", "epoch_result", "make_standin", "record", "standin_trial"]
