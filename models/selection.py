"""The selection statistic: how a run's noisy per-epoch validation scores become one number.

Validation macro-F1 on a few sessions moves by several points from one epoch to the next, so
the maximum over epochs rewards luck (on the demo it overstated the sweep's top configs by
0.125 on average). The statistic used everywhere a decision is taken (ASHA's rungs, the value
TPE learns from, the sweep's ranking, finalize's choice of weights and of the best row) is the
**trailing mean**: the mean of the last ``window`` epochs' values (fewer at the start).

- A trial's score is the trailing mean at its last epoch: the mean of its last ``window``
  epochs, not the luckiest one.
- A final run keeps the weights of the epoch whose trailing mean is highest (the window's
  last epoch), so it can be chosen at any epoch without trusting a single noisy one.

``bench/bench_selection.py`` measures this against the maximum over epochs on an oracle set the
search never sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WINDOW = 5
STATISTIC = f"trailing mean of the last {WINDOW} epochs"


def trailing_means(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Per epoch, the mean of the finite values among the last ``window`` epochs (NaN if none)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i + 1 - window) : i + 1] if math.isfinite(v)]
        out.append(sum(recent) / len(recent) if recent else math.nan)
    return out


def trial_score(values: Sequence[float], window: int = WINDOW) -> float:
    """A run's score: the trailing mean at its last epoch (NaN for an empty history)."""
    return trailing_means(values, window)[-1] if len(values) else math.nan


def best_epoch(values: Sequence[float], window: int = WINDOW) -> tuple[int, float]:
    """(1-based epoch, value) where the trailing mean peaks; ties go to the earliest epoch,
    all-NaN histories to epoch 1 with NaN."""
    if not len(values):
        raise ValueError("no epochs to choose from")
    means = trailing_means(values, window)
    best, best_value = 1, math.nan
    for epoch, v in enumerate(means, 1):
        if math.isfinite(v) and not (math.isfinite(best_value) and v <= best_value):
            best, best_value = epoch, v
    return best, best_value


class Tracker:
    """The trailing mean, fed one epoch at a time: tells when a new best is reached."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.values: list[float] = []
        self.best_epoch = 0
        self.best_value = math.nan

    def add(self, value: float) -> float:
        """Record the next epoch's value; returns the trailing mean (``best_epoch`` moves
        when it is a new best)."""
        self.values.append(value)
        current = trailing_means(self.values[-self.window :], self.window)[-1]
        improved = math.isfinite(current) and not (
            math.isfinite(self.best_value) and current <= self.best_value
        )
        if improved or self.best_epoch == 0:
            self.best_epoch, self.best_value = len(self.values), current
        return current
