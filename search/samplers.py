"""Optuna samplers whose random draws depend on the trial's number, not on how many draws the
sampler object made before.

Every Tune segment of a sweep (the first run, each `--resume --num-samples N` extension, a
restart after a killed driver) builds its searcher anew. A sampler seeded once per object
restarts its random stream with every new object: while the study has fewer completed trials
than TPE's start-up count, an extension suggested trial 0's, 1's, 2's parameters again
(issue 21). Here each trial gets a sampler of its own, seeded from (sweep seed, trial number):
trial ``k`` draws the same numbers whichever process, segment or attempt asks for it, and no
two trial numbers share a stream. What the model part of TPE learns still comes from the
study's trials, as before.

A module of its own: Tune pickles the searcher (and its sampler) by module path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

KINDS = ("tpe", "random")


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s sampler: independent streams per (seed, number)."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class PerTrialSampler(BaseSampler):
    """A TPE or random sampler rebuilt for each trial with `trial_seed(seed, number)`.

    ``options`` are the sampler's keyword arguments other than ``seed`` (for TPE, e.g.
    ``n_startup_trials``)."""

    def __init__(self, kind: str, seed: int, **options: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.seed, self.options = kind, int(seed), dict(options)
        self._number: int | None = None
        self._sampler: BaseSampler = self.build(0)

    def build(self, number: int) -> BaseSampler:
        """The sampler trial ``number`` draws from."""
        seed = trial_seed(self.seed, number)
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed, **self.options)
        return optuna.samplers.TPESampler(seed=seed, **self.options)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number != self._number:
            self._number, self._sampler = trial.number, self.build(trial.number)
        return self._sampler

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        # A trial is told long after the next ones were asked: build its own sampler for it,
        # leaving the one of the trial being sampled in place.
        self.build(trial.number).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's stream is fixed by its number."""

    def __repr__(self) -> str:
        return f"PerTrialSampler({self.kind!r}, seed={self.seed}, {self.options})"
