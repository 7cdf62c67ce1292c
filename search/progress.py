"""A compact progress line per finished trial, printed by the driver."""

from __future__ import annotations

import logging
import math
from typing import Any

from ray.tune import Callback

from search.trainable import STAT_METRIC, own_error


class CompactProgress(Callback):
    """One line per finished trial (Tune's own tables are too loud for 2 cores)."""

    def __init__(self, total: int, max_epochs: int | None = None) -> None:
        self.total = total
        self.max_epochs = max_epochs
        self.done = 0
        self.best = -math.inf

    def _line(self, trial: Any, status: str) -> None:
        self.done += 1
        r = trial.last_result or {}
        # An error result (search.trainable) came after the last epoch trained.
        epochs = r.get("training_iteration", 0) - (1 if own_error(r) else 0)
        score = r.get(STAT_METRIC, float("nan"))
        if isinstance(score, float) and math.isfinite(score):
            self.best = max(self.best, score)
        print(
            f"[{self.done}/{self.total}] {trial.trial_id} {trial.config.get('model', '?'):<24} "
            f"{status:<13} epochs {epochs}/{self._last(trial)}"
            f"  val macro-F1 (last-epochs mean) {score:.4f}  (sweep best {self.best:.4f})",
            flush=True,
        )

    def _last(self, trial: Any) -> int:
        return int(self.max_epochs or trial.config.get("epochs", 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if own_error(r):  # its code raised: ended by the trainable, not failed by Tune
            self.on_trial_error(iteration, trials, trial, **info)
            return
        early = r.get("training_iteration", 0) < self._last(trial)
        self._line(trial, "stopped early" if early else "completed")

    def on_trial_recover(self, iteration, trials, trial, **info):
        from search.tracking import _error_text, error_summary

        print(
            f"    {trial.trial_id} restarts from its last checkpoint (failure "
            f"{trial.num_failures}): {error_summary(_error_text(trial))}",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        from search.tracking import _error_text, error_summary

        self._line(trial, "FAILED")
        print(f"    {error_summary(_error_text(trial))}", flush=True)


class _DropTrialFailures(logging.Filter):
    """Tune logs each trial's full traceback; the progress line and MLflow already carry it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not msg.startswith(("Trial task failed", "Trials did not complete"))


def quiet_tune_logs() -> None:
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logging.getLogger(name).addFilter(_DropTrialFailures())
