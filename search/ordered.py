"""Order-deterministic search: what TPE suggests and where ASHA stops a trial depend on trial
order only, never on which of the concurrent trials happens to report first.

With trials numbered in the order they are suggested and a window of ``W`` (the number of
trials allowed to run at once):

- `OrderedSearcher` suggests trial ``k`` only once trials ``0..k-W`` are complete, after
  telling the wrapped searcher exactly their results, in trial order; trials ``k-W+1..k-1``
  are still open in the wrapped searcher (TPE's constant liar sees them as running) even if
  they have finished meanwhile. So each suggestion is computed from the same inputs in every
  run. It also limits concurrency to ``W``.
- `OrderedASHA` applies ASHA's rule (stop a trial at a rung when its value is below the
  ``1 - 1/rf`` quantile of the values recorded there) against the rung values of trials
  ``0..k-W`` only: the searcher guarantees that they are complete when trial ``k`` starts,
  so that set, and the values in it, are the same in every run.

The price is idle slots: a freed slot waits for the oldest running trial to finish before
the next trial can start (measured in results/bench.md, `python -m bench.bench_reproducible`).

Both survive `Tuner.restore` (``--resume``): Tune pickles them with the experiment, saves the
searcher's `get_state` with its own state, and the scheduler keeps its record in a small JSON
file beside Tune's (Tune does not save scheduler state).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from data_prep.atomic import write_text_atomic
from search.trainable import TRIAL_NUMBER


# -- the searcher -------------------------------------------------------------------------
class OrderedSearcher(Searcher):
    """Wraps a Searcher so that trial ``k`` is suggested from the results of trials
    ``0..k-window`` exactly (see the module docstring). ``total`` is the number of trials
    the sweep will suggest: trials whose results no later suggestion waits for are told at
    once, so the wrapped searcher ends with every trial finished."""

    def __init__(self, searcher: Searcher, window: int, total: int) -> None:
        if window < 1 or total < 1:
            raise ValueError(f"window and total must be >= 1, got {window} and {total}")
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher  # the name Tune's SearchGenerator looks for when saving
        self.window = window
        self.total = total
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
    """ASHA's stopping rule, deciding trial ``k`` at a rung from the values recorded there by
    trials ``0..k-lag`` (trial numbers in the order trials are added, as the searcher
    suggested them). With `OrderedSearcher(window=lag)` those trials are complete whenever
    trial ``k`` runs, so every decision is the same in every run.

    ``state_path``: a JSON file the record is kept in, so a resumed sweep decides as the
    uninterrupted one would (None: in memory only).

    ``prior``: a sweep extended with more trials runs them as a Tune experiment of its own;
    its trials (numbered by the study, ``TRIAL_NUMBER`` in their configs) are decided against
    ``prior`` too, the rung values of every earlier trial (milestone -> trial number ->
    value, as `rung_record` reads them from the earlier experiment's file), so an extension's
    trials meet the same early stopping as in a sweep run in one go.
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
        lag: int,
        time_attr: str = "training_iteration",
        state_path: str | None = None,
        prior: dict[int, dict[int, float]] | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not (0 < grace_period <= max_t) or reduction_factor <= 1 or lag < 1:
            raise ValueError("need 0 < grace_period <= max_t, reduction_factor > 1, lag >= 1")
        super().__init__()
        self._metric, self._mode = metric, mode
        self.sign = 1.0 if mode == "max" else -1.0
        self.time_attr = time_attr
        self.max_t = max_t
        self.rf = reduction_factor
        self.lag = lag
        # Every trial stops at max_t anyway: a rung there decides nothing.
        rungs = rung_milestones(grace_period, max_t, reduction_factor)
        self.milestones = [m for m in rungs if m < max_t]
        self.state_path = state_path
        self.order: dict[str, int] = {}  # trial id -> trial number
        self.rungs: dict[int, dict[int, float]] = {m: {} for m in self.milestones}
        for m, rec in (prior or {}).items():
            if m in self.rungs:
                self.rungs[m].update(rec)
        self.num_stopped = 0
        self._loaded = False

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return not (metric or mode)  # fixed at construction, like ASHA given its metric

    # -- bookkeeping -----------------------------------------------------------------------
    def _load(self) -> None:
        """Once per driver process: continue from the record a killed driver left."""
        if self._loaded:
            return
        self._loaded = True
        if self.state_path and os.path.exists(self.state_path):
            saved = json.loads(Path(self.state_path).read_text(encoding="utf-8"))
            self.order = {str(k): int(v) for k, v in saved["order"].items()}
            for m, rec in saved["rungs"].items():
                self.rungs.setdefault(int(m), {}).update({int(k): v for k, v in rec.items()})
            self.num_stopped = int(saved.get("num_stopped", 0))

    def _save(self) -> None:
        if not self.state_path:
            return
        rungs = {str(m): {str(k): v for k, v in r.items()} for m, r in self.rungs.items()}
        data = {
            "order": self.order,
            "num_stopped": self.num_stopped,
            "rungs": rungs,
        }
        write_text_atomic(Path(self.state_path), json.dumps(data))

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()
        if trial.trial_id not in self.order:
            # The ledger's number when the searcher gave one (search.trial_search): a trial
            # restarted under a new Tune id after a killed driver keeps its number here too.
            number = trial.config.get(TRIAL_NUMBER)
            self.order[trial.trial_id] = int(number) if number is not None else len(self.order)
            self._save()

    # -- the rule --------------------------------------------------------------------------
    def decide(self, k: int, milestone: int, value: float) -> str:
        """Record trial k's (signed) value at ``milestone`` and return CONTINUE or STOP."""
        recorded = self.rungs[milestone]
        recorded[k] = value
        peers = [v for j, v in sorted(recorded.items()) if j <= k - self.lag]
        cutoff = ordered_cutoff(peers, self.rf)
        stop = cutoff is not None and not math.isnan(value) and value < cutoff
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if self.time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        t = result[self.time_attr]
        if t >= self.max_t:
            return TrialScheduler.STOP
        if t not in self.rungs:
            return TrialScheduler.CONTINUE
        self.on_trial_add(tune_controller, trial)  # a trial restored without an add
        value = self.sign * float(result[self._metric])
        action = self.decide(self.order[trial.trial_id], t, value)
        self.num_stopped += action == TrialScheduler.STOP
        self._save()
        return action

    def debug_string(self) -> str:
        return (
            f"Using OrderedASHA (lag {self.lag}): num_stopped={self.num_stopped}, "
            f"rungs {self.milestones}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = False  # an unpickled copy re-reads the record file once
        return state


def rung_record(state_path: str | os.PathLike[str]) -> dict[int, dict[int, float]]:
    """The rung values an `OrderedASHA` saved (its earlier experiments' included), by
    milestone and trial number; empty when it saved none."""
    path = Path(state_path)
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    return {int(m): {int(k): float(v) for k, v in rec.items()} for m, rec in saved["rungs"].items()}
