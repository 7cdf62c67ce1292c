"""Searchers the replay benchmark compares that the product does not (yet) offer."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from search.samplers import PerTrialSampler, trial_seed
from search.trainable import own_error
from search.trial_search import TrialOptunaSearch

MAX_T = 20  # the replay sweeps' --max-epochs


class PerTrialGP(PerTrialSampler):
    """Optuna's GPSampler (Gaussian-process Bayesian optimisation), seeded per trial number
    like the product's samplers."""

    def __init__(self, seed: int, window: int | None = None, **options: Any) -> None:
        super().__init__("tpe", seed, window, **options)

    def build(self, number: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(
            seed=trial_seed(self.seed, number), warn_independent_sampling=False, **self.options
        )


class InterleavedRandom(PerTrialSampler):
    """TPE with a share of trials drawn at random instead, as SMAC interleaves random
    configurations; which trials is decided by (seed, number) on a stream of its own."""

    def __init__(
        self, seed: int, window: int | None = None, random_fraction: float = 0.2, **options: Any
    ) -> None:
        self.random_fraction = random_fraction  # build(0) runs in the base's __init__
        super().__init__("tpe", seed, window, **options)

    def build(self, number: int) -> optuna.samplers.BaseSampler:
        u = np.random.default_rng(np.random.SeedSequence([self.seed, number, 1])).random()
        if u < self.random_fraction:
            return optuna.samplers.RandomSampler(seed=trial_seed(self.seed, number))
        return super().build(number)


class PrunedStopSearch(TrialOptunaSearch):
    """BOHB-style use of the rungs: a trial ASHA stopped is told to TPE as PRUNED (its rung
    values, the ledger's intermediate values, say how far it got and how well), not as a
    complete trial whose value is its early statistic."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        stopped = (
            result and not own_error(result) and result.get("training_iteration", MAX_T) < MAX_T
        )
        if stopped:
            result = {k: v for k, v in result.items() if k != self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)
