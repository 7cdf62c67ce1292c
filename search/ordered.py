"""Order-deterministic search: what TPE suggests and where ASHA stops a trial depend on trial
order only, never on which of the concurrent trials happens to report first.

With trials numbered in the order they are suggested, ``W`` trials allowed to run at once
and a lag ``L >= W`` (--lag; W below 16 slots, 2W from there on):

- `OrderedSearcher` suggests trial ``k`` only once trials ``0..k-L`` are complete (and fewer
  than W run), after telling the wrapped searcher exactly their results, in trial order;
  trials ``k-L+1..k-1`` are still open in the wrapped searcher (TPE's constant liar sees them
  as running) even if they have finished meanwhile. So each suggestion is computed from the
  same inputs in every run.
- `OrderedASHA` applies ASHA's rule (stop a trial at a rung when its value is below the
  ``1 - 1/rf`` quantile of the values recorded there) against the rung values of trials
  ``0..k-L`` only (the first W, which start at once, against each other): the searcher
  guarantees that they are complete when trial ``k`` starts, so that set, and the values in
  it, are the same in every run.

The price is idle slots: a freed slot waits while trial ``k-L`` still runs. With L = W one
long trial holds back the W behind it; L = 2W idles far fewer slots for the same pick
(results/bench.md, "replay-lag16"; `python -m bench.bench_reproducible` at 2 slots).

Both survive `Tuner.restore` (``--resume``) and extensions: Tune pickles them with the
experiment and saves the searcher's `get_state` with its own state; the scheduler keeps its
rung values in the sweep's Optuna study (the ledger, as intermediate values), which outlives
every driver and every Tune segment (Tune does not save scheduler state).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.utils import flatten_dict

from search.trainable import TRIAL_NUMBER, own_error


# -- the searcher -------------------------------------------------------------------------
class OrderedSearcher(Searcher):
    """Wraps a Searcher so that trial ``k`` is suggested from the results of trials
    ``0..k-window`` exactly (see the module docstring), with at most ``max_concurrent``
    trials running (default: ``window``). ``total`` is the number of trials the sweep will
    suggest: trials whose results no later suggestion waits for are told at once, so the
    wrapped searcher ends with every trial finished."""

    # A searcher pickled before the limit had its own value (sweeps resumed across versions).
    max_concurrent: int | None = None

    def __init__(
        self, searcher: Searcher, window: int, total: int, max_concurrent: int | None = None
    ) -> None:
        if window < 1 or total < 1 or (max_concurrent or window) > window:
            raise ValueError(
                f"need window and total >= 1 and max_concurrent <= window, got {window}, "
                f"{total} and {max_concurrent}"
            )
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher  # the name Tune's SearchGenerator looks for when saving
        self.window = window
        self.total = total
        self.max_concurrent = max_concurrent or window
        self.order: dict[str, int] = {}  # trial id -> trial number (suggestion order)
        self.finished: dict[int, tuple[dict | None, bool]] = {}  # done, not yet told
        self.told = 0  # trials 0..told-1 have been told to the wrapped searcher

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def _may_tell(self, k: int) -> bool:
        """Trial k's result may reach the wrapped searcher once no suggestion that must not
        see it remains: trials up to k+window-1 are suggested, or never will be."""
        return len(self.order) >= k + self.window or k + self.window > self.total

    def _tell_ready(self) -> None:
        while self.told in self.finished and self._may_tell(self.told):
            result, error = self.finished.pop(self.told)
            trial_id = next(t for t, n in self.order.items() if n == self.told)
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            self.told += 1

    def suggest(self, trial_id: str) -> dict | None:
        k = len(self.order)
        self._tell_ready()
        if self.told < k - self.window + 1:
            return None  # wait: an older trial of the window is still running
        if k - self.told - len(self.finished) >= (self.max_concurrent or self.window):
            return None  # as many trials run as may
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.order[trial_id] = k
        self._tell_ready()  # trial k-window+1's result may now be told (it is not needed by k)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Not forwarded: only a pruner reads intermediate values, and how many of them a
        # running trial has reported when another trial is suggested depends on timing.
        pass

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        k = self.order.get(trial_id)
        if k is None:  # not suggested through this wrapper
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        if k >= self.told and k not in self.finished:
            self.finished[k] = (result, error)
        self._tell_ready()

    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]  # Tune saves the wrapped searcher itself
        return copy.deepcopy(state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


# -- the scheduler ------------------------------------------------------------------------
def rung_milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """ASHA's rungs (Ray's formula for one bracket), ascending; the last may equal max_t."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in range(count)]


def ordered_cutoff(values: list[float], reduction_factor: float) -> float | None:
    """ASHA's cutoff: the ``1 - 1/rf`` quantile of the recorded values (NaN ignored)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    return float(np.percentile(finite, (1 - 1 / reduction_factor) * 100))


class OrderedASHA(FIFOScheduler):
    """ASHA's stopping rule with a peer set per trial that is the same in every run.

    Trial ``k`` (numbered by the study: ``TRIAL_NUMBER`` in its config) is decided at a rung
    against the values recorded there by its peers, the trials ``j != k`` with ``j <=
    peer_bound(k) = max(k - lag, first - 1)``, ``first = min(window, total)`` (``window``:
    the trials that start at once, --max-concurrent; default ``lag``): the trials at least
    ``lag`` older, and, for the early trials that have too few of those, the whole first
    window. Trials ``0..k-lag`` are complete whenever trial ``k`` runs
    (`OrderedSearcher(window=lag)`); a peer of the first window may still be running, and
    trial ``k`` then waits at the rung (Tune's PAUSE, its slot freed) until every peer has
    reported there or ended before it (every one has started: the first window starts
    first). So every decision is the same in every run, and the first trials, which no trial
    is ``lag`` older than, can be stopped too (issue 21: at ``--max-concurrent 8`` they had
    cost a third of a 24-trial sweep's epochs).

    ``lag=None`` is Ray's asynchronous ASHA (``--async``): whatever reached the rung before
    counts, and nothing waits.

    ``total``: the trials the sweep has (an extension: all segments); ``ledger``: (Optuna
    storage URL, study name), the sweep's study. Rung values are kept there as the trials'
    intermediate values (step = epoch, the value Tune's Optuna searcher also reports in
    ``--async`` mode), and a scheduler built in a new driver or for a new Tune segment (an
    extension) starts from every value the study holds: a resumed or extended sweep stops
    trials as the uninterrupted one. None: in memory only (tests).
    """

    _supports_buffered_results = False  # decide at every epoch a result arrives for

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        lag: int | None,
        total: int | None = None,
        time_attr: str = "training_iteration",
        ledger: tuple[str, str] | None = None,
        window: int | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        bad_lag = lag is not None and lag < 1
        if not (0 < grace_period <= max_t) or reduction_factor <= 1 or bad_lag:
            raise ValueError("need 0 < grace_period <= max_t, reduction_factor > 1, lag >= 1")
        super().__init__()
        self._metric, self._mode = metric, mode
        self.sign = 1.0 if mode == "max" else -1.0
        self.time_attr = time_attr
        self.max_t = max_t
        self.rf = reduction_factor
        self.lag = lag
        # The first window (``window`` trials, default ``lag``: those that start at once).
        first = (window or lag) if lag is not None else 0
        self.first = min(first, total) if total else first
        # Every trial stops at max_t anyway: a rung there decides nothing.
        rungs = rung_milestones(grace_period, max_t, reduction_factor)
        self.milestones = [m for m in rungs if m < max_t]
        self.ledger = ledger
        self.order: dict[str, int] = {}  # trial id -> trial number
        self.trials: dict[int, Trial] = {}  # trial number -> Tune's trial (this segment)
        self.rungs: dict[int, dict[int, float]] = {m: {} for m in self.milestones}
        self.ended: set[int] = set()  # numbers the study had finished when opened
        self.waiting: dict[int, int] = {}  # trial number -> the rung it waits at
        self.num_stopped = 0
        self._study: Any = None  # the ledger, opened once per driver process

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return not (metric or mode)  # fixed at construction, like ASHA given its metric

    # -- the ledger ------------------------------------------------------------------------
    def _open(self) -> Any:
        """The study, opened once per driver process; its rung values join the record, and
        the trials it has finished (earlier segments') count as ended for `arrived`."""
        if self._study is None and self.ledger is not None:
            from search.ledger import load_study

            storage, name = self.ledger
            self._study = load_study(storage, name)
            for m, rec in ledger_rungs(self._study, self.milestones).items():
                self.rungs[m].update({k: self.sign * v for k, v in rec.items()})
            done = self._study.get_trials(deepcopy=False)
            self.ended |= {t.number for t in done if t.state.is_finished()}
        return self._study

    def _record(self, number: int, milestone: int, value: float) -> None:
        """Trial ``number``'s rung value into the study (its trial is running: the searcher
        tells it only after the trial ends)."""
        study = self._open()
        if study is None or math.isnan(value):
            return
        storage = study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        with contextlib.suppress(RuntimeError):  # finished already: it has its values
            storage.set_trial_intermediate_value(trial_id, milestone, self.sign * value)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._open()
        if trial.trial_id in self.order:
            return
        # The ledger's number when the searcher gave one (search.trial_search): a trial
        # restarted under a new Tune id after a killed driver keeps its number here too.
        number = trial.config.get(TRIAL_NUMBER)
        k = int(number) if number is not None else len(self.order)
        self.order[trial.trial_id] = k
        self.trials[k] = trial
        if self.lag is not None and trial.status == Trial.PENDING:
            self._hold_restored(k, trial)

    def _hold_restored(self, k: int, trial: Trial) -> None:
        """A trial a resumed driver restored with its checkpoint at a rung it had no decision
        for (it was waiting there, or the driver died first): Tune would start it again at
        once; it waits at the rung instead, paused (status set before Tune files it)."""
        last = trial.last_result or {}
        m = last.get(self.time_attr)
        saved = trial.latest_checkpoint_result
        saved_at = (saved.metrics or {}).get(self.time_attr) if saved is not None else None
        if m not in self.rungs or saved_at != m or self._metric not in last:
            return  # not at a rung, or its checkpoint is older: it trains that epoch again
        self.rungs[m].setdefault(k, self.sign * float(last[self._metric]))
        self.waiting[k] = int(m)
        trial.set_status(Trial.PAUSED)

    # -- the rule --------------------------------------------------------------------------
    def peer_bound(self, k: int) -> int:
        """Trial k's peers are the trials j != k with j <= this bound."""
        assert self.lag is not None
        return max(k - self.lag, self.first - 1)

    def arrived(self, j: int, milestone: int) -> bool:
        """Trial j has a value at ``milestone``, or ended before reaching it."""
        if j in self.rungs[milestone] or j in self.ended:
            return True
        trial = self.trials.get(j)
        return trial is not None and trial.status in (Trial.TERMINATED, Trial.ERROR)

    def ready(self, k: int, milestone: int) -> bool:
        """Every peer of trial k has arrived at ``milestone``."""
        if self.lag is None:
            return True
        # Trials 0..k-lag are complete (the searcher's guarantee): only later peers can be
        # still on their way.
        later = range(max(k - self.lag + 1, 0), self.peer_bound(k) + 1)
        return all(self.arrived(j, milestone) for j in later if j != k)

    def decide(self, k: int, milestone: int) -> str:
        """CONTINUE or STOP for trial k at ``milestone`` (its value recorded), from its
        peers' values there."""
        recorded = self.rungs[milestone]
        if self.lag is None:  # asynchronous: whatever reached the rung before
            peers = [v for j, v in sorted(recorded.items()) if j != k]
        else:
            bound = self.peer_bound(k)
            peers = [v for j, v in sorted(recorded.items()) if j <= bound and j != k]
        value = recorded.get(k, math.nan)
        cutoff = ordered_cutoff(peers, self.rf)
        stop = cutoff is not None and not math.isnan(value) and value < cutoff
        self.num_stopped += stop
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if self.time_attr not in result or self._metric not in result or own_error(result):
            return TrialScheduler.CONTINUE  # an error result is the trial's last: it ends
        t = result[self.time_attr]
        if t >= self.max_t:
            return TrialScheduler.STOP
        if t not in self.rungs:
            return TrialScheduler.CONTINUE
        self.on_trial_add(tune_controller, trial)  # a trial restored without an add
        k = self.order[trial.trial_id]
        value = self.sign * float(result[self._metric])
        self.rungs[t][k] = value
        self._record(k, t, value)
        if not self.ready(k, t):
            self.waiting[k] = t
            return TrialScheduler.PAUSE  # Tune saves it and frees its slot
        return self.decide(k, t)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A waiting trial whose peers have all arrived goes on (oldest first) or is stopped
        there; then what Tune would run (pending trials). A waiting trial is never run
        before its decision."""
        # Every trial, restored ones too, reached on_trial_add through Tune's add_trial.
        for k in sorted(self.waiting):
            trial, milestone = self.trials.get(k), self.waiting[k]
            if trial is None or trial.status != Trial.PAUSED or not self.ready(k, milestone):
                continue
            del self.waiting[k]
            if self.decide(k, milestone) == TrialScheduler.CONTINUE:
                return trial
            # Tune tells a searcher nothing of a paused trial it stops: tell it the last
            # result first, as for a running trial stopped at a rung.
            tune_controller.search_alg.on_trial_complete(
                trial.trial_id, result=flatten_dict(trial.last_result)
            )
            tune_controller.stop_trial(trial)
            # Ray 2.60 files a stopped trial for its next experiment-state save only when it
            # still has an actor; a paused one has none, and the saved state would keep it
            # PAUSED (a resume would run it again, MLflow would wait for it).
            controller = getattr(tune_controller, "_tune_controller", tune_controller)
            controller._mark_trial_to_checkpoint(trial)
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PENDING:
                return trial
        waiting = {self.trials[k].trial_id for k in self.waiting if k in self.trials}
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PAUSED and trial.trial_id not in waiting:
                return trial
        return None

    def debug_string(self) -> str:
        return (
            f"Using OrderedASHA (lag {self.lag or 'none'}): num_stopped={self.num_stopped}, "
            f"waiting={len(self.waiting)}, rungs {self.milestones}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_study"] = None  # an unpickled copy opens the ledger anew, once
        return state


def ledger_rungs(study: Any, milestones: list[int]) -> dict[int, dict[int, float]]:
    """The rung values a study holds (as reported, unsigned), by milestone and trial
    number."""
    out: dict[int, dict[int, float]] = {m: {} for m in milestones}
    for t in study.get_trials(deepcopy=False):
        for m in milestones:
            v = t.intermediate_values.get(m)
            if v is not None and not math.isnan(v):
                out[m][t.number] = float(v)
    return out
