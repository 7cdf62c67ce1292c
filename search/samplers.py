"""Optuna samplers whose random draws depend on the trial's number, not on how many draws the
sampler object made before.

Every Tune segment of a sweep (the first run, each `--resume --num-samples N` extension, a
restart after a killed driver) builds its searcher anew. A sampler seeded once per object
restarts its random stream with every new object: while the study has fewer completed trials
than TPE's start-up count, an extension suggested trial 0's, 1's, 2's parameters again
(issue 21). Here each trial gets a sampler of its own, seeded from (sweep seed, trial number):
trial ``k`` draws the same numbers whichever process, segment or attempt asks for it, and no
two trial numbers share a stream.

In reproducible mode (``window`` W = --lag, by default --max-concurrent) the sampler of
trial ``k`` also sees the study as the uninterrupted sweep had it when it asked for ``k``:
trials ``0..k-W`` finished, ``k-W+1..k-1`` still running (`StudyView`). A sweep run in one go has exactly that
when it asks (search/ordered.py's searcher waits for it); an extension has more (its earlier
segment finished every trial), and without the view TPE past its start-up trials would learn
from more than the one-go sweep did and suggest something else.

A module of its own: Tune pickles the searcher (and its sampler) by module path.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Container, Sequence
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


class TrialView:
    """The study as one trial's sampling sees it: every trial read from storage once, at the
    first look. TPE with the constant liar reads the study afresh for each parameter it
    samples (it cannot trust a cache when other processes add running trials); a sweep's
    study has one writer, this driver, and nothing else changes while a trial is sampled.
    At 64 running trials, five re-reads a suggestion were a third of the driver's time
    (bench/bench_scale.py)."""

    def __init__(self, study: Study, number: int) -> None:
        self._study, self._number = study, number
        self._all: list[FrozenTrial] | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_study":  # copy and pickle look before __init__
            raise AttributeError(name)
        return getattr(self._study, name)

    def _shown(self, trial: FrozenTrial) -> FrozenTrial | None:
        return trial

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        if self._all is None:
            self._all = self._study._get_trials(deepcopy=False)
        shown = [s for t in self._all if (s := self._shown(t)) is not None]
        shown = [t for t in shown if states is None or t.state in states]
        return copy.deepcopy(shown) if deepcopy else shown


class StudyView(TrialView):
    """The study as trial ``number`` is to be sampled from with a window of ``window``:
    trials ``0..number-window`` as stored, ``number-window+1..number`` running (a finished
    one shown without its values), later trials absent. Everything else is the study's."""

    def __init__(self, study: Study, number: int, window: int) -> None:
        super().__init__(study, number)
        self._window = window

    def _shown(self, trial: FrozenTrial) -> FrozenTrial | None:
        if trial.number > self._number:
            return None
        if trial.number <= self._number - self._window or not trial.state.is_finished():
            return trial
        shown = copy.copy(trial)
        shown.state, shown.values, shown.datetime_complete = TrialState.RUNNING, None, None
        shown.intermediate_values = {}
        return shown

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class PerTrialSampler(BaseSampler):
    """A TPE or random sampler rebuilt for each trial with `trial_seed(seed, number)`.

    ``window``: reproducible mode's lag (--lag); each trial is sampled from a `StudyView` (None: from
    the study as it is, ``--async``). ``options`` are the sampler's keyword arguments other
    than ``seed`` (for TPE, e.g. ``n_startup_trials``)."""

    def __init__(self, kind: str, seed: int, window: int | None = None, **options: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.kind, self.seed, self.options = kind, int(seed), dict(options)
        self.window = window
        self._number: int | None = None
        self._sampler: BaseSampler = self.build(0)
        self._view: TrialView | None = None

    def build(self, number: int) -> BaseSampler:
        """The sampler trial ``number`` draws from."""
        seed = trial_seed(self.seed, number)
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed, **self.options)
        with warnings.catch_warnings():  # one per trial: said once, in search.settings
            warnings.filterwarnings("ignore", "`prior_weight`", FutureWarning)
            return optuna.samplers.TPESampler(seed=seed, **self.options)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number != self._number:
            self._number, self._sampler = trial.number, self.build(trial.number)
            self._view = None
        return self._sampler

    def _seen(self, study: Study, trial: FrozenTrial) -> Study:
        """The study trial ``trial`` is sampled from, one view for all its parameters."""
        self._for(trial)
        if self._view is None or self._view._study is not study:
            if self.window is None:
                self._view = TrialView(study, trial.number)
            else:
                self._view = StudyView(study, trial.number, self.window)
        return self._view  # type: ignore[return-value]

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(self._seen(study, trial), trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(self._seen(study, trial), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(self._seen(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler, seen = self._for(trial), self._seen(study, trial)
        return sampler.sample_independent(seen, trial, param_name, param_distribution)

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

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_view": None}  # a view is of one trial's sampling, not saved

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's stream is fixed by its number."""

    def __repr__(self) -> str:
        return (
            f"PerTrialSampler({self.kind!r}, seed={self.seed}, window={self.window}, "
            f"{self.options})"
        )
