"""A sweep simulated in virtual time: the product's searcher and scheduler objects, driven as
Ray Tune's controller drives them, with learning curves from a surrogate in place of training.

`simulate` builds the searcher as `search.run.build_tuner` does (`TrialOptunaSearch` over the
sweep's space with a `PerTrialSampler`; `OrderedSearcher` in reproducible mode, Ray's
`ConcurrencyLimiter` in ``--async`` mode) and the scheduler as `search.run.sweep_asha` does
(`OrderedASHA` with the study as its ledger, or none), and runs ``slots`` trials at a time.
Each trial's epochs take the seconds the curve says; the earliest report is handled first
(ties by trial number), exactly as the controller would see it: the scheduler decides
CONTINUE / PAUSE / STOP, paused trials wait for `choose_trial_to_run`, a finished trial is
told to the searcher, a freed slot asks the searcher for the next trial. Only the clock and
the training are stand-ins, so a 200-trial sweep takes seconds and decides as `search.run`.

A curve is what a trial reports per epoch: val macro-F1, val macro-AUROC (for the
tie-break) and seconds; the selection statistic and the rung / search values are computed from
them with the product's own functions. A curve shorter than the sweep's epochs is a config
that diverged there: the trial ends with the trainable's error result.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from models.selection import trailing_means
from search.trainable import (
    ERROR_KEY,
    METRIC,
    MODE,
    RUNG_METRIC,
    SEARCH_METRIC,
    STAT_METRIC,
    TIE_METRIC,
    TRIAL_NUMBER,
    tie_broken,
)


@dataclass
class Curve:
    """What a config's trial reports: per epoch val macro-F1, val macro-AUROC, seconds; fewer
    epochs than the sweep's if it diverges after the last."""

    val: Sequence[float]
    auroc: Sequence[float]
    seconds: Sequence[float]


@dataclass
class SimTrial:
    """The part of Tune's Trial that the searcher and scheduler read."""

    trial_id: str
    config: dict[str, Any]
    curve: Curve
    status: str = Trial.PENDING
    last_result: dict[str, Any] = field(default_factory=dict)
    latest_checkpoint_result: Any = None
    epoch: int = 0  # epochs reported
    error: bool = False

    @property
    def number(self) -> int:
        return int(self.config[TRIAL_NUMBER])

    def set_status(self, status: str) -> None:
        self.status = status

    def result(self, epoch: int) -> dict[str, Any]:
        """The trainable's report after ``epoch`` (1-based), or its error result."""
        if epoch > len(self.curve.val):
            return {"training_iteration": epoch, ERROR_KEY: "NonFiniteLossError (replayed)"}
        val = list(self.curve.val[:epoch])
        metrics = {METRIC: val[-1], TIE_METRIC: self.curve.auroc[epoch - 1]}
        metrics[STAT_METRIC] = trailing_means(val)[-1]
        value = tie_broken(metrics, STAT_METRIC)
        return {**metrics, "training_iteration": epoch, RUNG_METRIC: value, SEARCH_METRIC: value}


@dataclass
class SimOutcome:
    """A simulated sweep: its trials in number order and its events in time order."""

    trials: list[SimTrial]
    # (virtual seconds, epochs reported so far, trial number) at each trial's end
    ends: list[tuple[float, int, int]]
    epochs: int
    seconds: float
    pauses: int  # results the scheduler answered PAUSE (a trial waiting at a rung)
    busy: float = 0.0  # slot-seconds spent training (utilisation: busy / (slots x seconds))

    def score(self, trial: SimTrial) -> float:
        """The product's ranking score (search/results.py): the last search value of a
        completed or stopped trial; failed trials do not rank."""
        if trial.error or not trial.last_result:
            return -math.inf
        v = trial.last_result.get(SEARCH_METRIC, math.nan)
        return v if math.isfinite(v) else -math.inf

    def pick(self, trials: Sequence[SimTrial] | None = None) -> SimTrial | None:
        """The sweep's top trial (ties to the lower number), among ``trials``."""
        pool = [t for t in (self.trials if trials is None else trials) if t.epoch]
        ranked = [t for t in pool if self.score(t) > -math.inf]
        return min(ranked, key=lambda t: (-self.score(t), t.number)) if ranked else None


class _Controller:
    """The three things `OrderedASHA.choose_trial_to_run` asks of Tune's controller."""

    def __init__(self, search_alg: Searcher, trials: list[SimTrial]) -> None:
        self.search_alg = search_alg
        self._trials = trials
        self.stopped: list[SimTrial] = []

    def get_trials(self) -> list[SimTrial]:
        return self._trials

    def stop_trial(self, trial: SimTrial) -> None:
        trial.status = Trial.TERMINATED
        self.stopped.append(trial)

    def _mark_trial_to_checkpoint(self, trial: SimTrial) -> None:
        pass  # nothing to save in virtual time


def simulate(
    search_alg: Searcher,
    scheduler: TrialScheduler,
    curve_of: Callable[[dict[str, Any], int], Curve],
    *,
    num_samples: int,
    slots: int,
    max_epochs: int,
) -> SimOutcome:
    """Run a sweep of ``num_samples`` trials, ``slots`` at a time, in virtual time.
    ``curve_of(config, trial_number)`` gives each trial's curve."""
    trials: list[SimTrial] = []
    ctl = _Controller(search_alg, trials)
    running: list[tuple[float, int, SimTrial]] = []  # (time of next report, number, trial)
    clock, epochs, ends, pauses = 0.0, 0, [], 0
    finished = False
    busy = [0.0]

    def start(trial: SimTrial) -> None:
        trial.status = Trial.RUNNING
        dt = trial.curve.seconds[min(trial.epoch, len(trial.curve.seconds) - 1)]
        busy[0] += dt
        heapq.heappush(running, (clock + dt, trial.number, trial))

    def end(trial: SimTrial, result: dict[str, Any]) -> None:
        trial.status = Trial.TERMINATED
        search_alg.on_trial_complete(trial.trial_id, result=result, error=False)
        scheduler.on_trial_complete(ctl, trial, result)
        ends.append((clock, epochs, trial.number))

    while True:
        while len(running) < slots:
            pending = any(t.status == Trial.PENDING for t in trials)
            if not pending and not finished and len(trials) < num_samples:
                trial_id = f"sim{len(trials):05d}"
                config = search_alg.suggest(trial_id)
                if config == Searcher.FINISHED:
                    finished = True
                elif config is not None:
                    trial = SimTrial(trial_id, config, curve_of(config, config[TRIAL_NUMBER]))
                    trials.append(trial)
                    scheduler.on_trial_add(ctl, trial)
            chosen = scheduler.choose_trial_to_run(ctl)
            for t in ctl.stopped:  # stopped while waiting at a rung
                ends.append((clock, epochs, t.number))
            ctl.stopped.clear()
            if chosen is None:
                break
            start(chosen)
        if not running:
            break
        clock, _, trial = heapq.heappop(running)
        trial.epoch += 1
        epochs += 1
        result = trial.result(trial.epoch)
        trial.last_result = result
        if ERROR_KEY in result:
            trial.error = True
            end(trial, result)
            continue
        search_alg.on_trial_result(trial.trial_id, result)
        decision = scheduler.on_trial_result(ctl, trial, result)
        if decision == TrialScheduler.STOP or trial.epoch >= max_epochs:
            end(trial, result)
        elif decision == TrialScheduler.PAUSE:
            trial.status = Trial.PAUSED
            pauses += 1
        else:
            start(trial)
    waiting = [t.number for t in trials if t.status in (Trial.PAUSED, Trial.PENDING)]
    if waiting:
        raise RuntimeError(f"simulated sweep ended with trials {waiting} never finished")
    return SimOutcome(
        trials=trials, ends=ends, epochs=epochs, seconds=clock, pauses=pauses, busy=busy[0]
    )


# -- the product's pieces, built as search.run builds them -------------------------------------
def build_search(
    space: dict[str, Any],
    sampler: Any,
    *,
    num_samples: int,
    window: int,
    reproducible: bool,
    searcher_cls: type | None = None,
    lag: int | None = None,
) -> tuple[Searcher, Any]:
    """(search_alg, study) as `search.run.build_tuner` builds them, on an in-memory study
    (``lag``: reproducible mode's, default ``window``)."""
    import optuna

    from search.ordered import OrderedSearcher
    from search.spaces import define_by_run
    from search.trial_search import TrialOptunaSearch

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize", study_name="replay")
    cls = searcher_cls or TrialOptunaSearch
    searcher = cls(
        space=define_by_run(space),
        metric=SEARCH_METRIC,
        mode=MODE,
        sampler=sampler,
        study_name="replay",
        storage=storage,
    )
    if reproducible:
        searcher = OrderedSearcher(
            searcher, window=lag or window, total=num_samples, max_concurrent=window
        )
        return searcher, study
    return ConcurrencyLimiter(searcher, max_concurrent=window), study


def build_asha(
    study: Any,
    *,
    max_epochs: int,
    window: int,
    reproducible: bool,
    total: int,
    reduction_factor: int | None = None,
    lag: int | None = None,
) -> TrialScheduler:
    """`search.run.sweep_asha`'s scheduler, its ledger the in-memory study (``reduction_factor``
    None: the product's, search.settings)."""
    from search.ordered import OrderedASHA
    from search.settings import GRACE_PERIOD, REDUCTION_FACTOR

    return OrderedASHA(
        metric=RUNG_METRIC,
        mode=MODE,
        max_t=max_epochs,
        grace_period=min(GRACE_PERIOD, max_epochs),
        reduction_factor=reduction_factor or REDUCTION_FACTOR,
        lag=(lag or window) if reproducible else None,
        window=window,
        total=total,
        ledger=(study._storage, study.study_name),
    )
