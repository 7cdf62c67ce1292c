"""search.ordered inside a real Tune run: trials of the first window wait at a rung (Tune's
PAUSE, their slot freed) until their peers arrive, are resumed from their checkpoint or
stopped there, and the sweep's decisions are those of the rule given every trial's curve."""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.search import Searcher

from search.ordered import OrderedASHA, OrderedSearcher, ordered_cutoff
from search.trainable import TRIAL_NUMBER
from tests.search_helpers import ray_runtime  # noqa: F401 - fixture

MAX_T, GRACE, RF, WINDOW, TRIALS = 9, 1, 3, 3, 9
RNG = random.Random(7)
BASES = [RNG.random() for _ in range(TRIALS)]
# Ray's workers cannot import a test module: its trainable and searcher travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def curve(k: int, epoch: int) -> float:
    return BASES[k] + 0.01 * epoch


def trainable(config: dict) -> None:
    """Reports trial k's curve, one checkpoint per epoch; continues from its checkpoint."""
    k, start = config["k"], 0
    ckpt = tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            start = json.loads((Path(d) / "e.json").read_text())["epoch"]
    for epoch in range(start + 1, MAX_T + 1):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "e.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"m": curve(k, epoch)}, checkpoint=tune.Checkpoint.from_directory(d))


class Numbered(Searcher):
    """Suggests trial k's config in order, numbered as the study would."""

    def __init__(self) -> None:
        super().__init__(metric="m", mode="max")
        self.n = 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.n >= TRIALS:
            return Searcher.FINISHED
        self.n += 1
        return {"k": self.n - 1, TRIAL_NUMBER: self.n - 1}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pass


def expected_epochs() -> dict[int, int]:
    """The rule with full information: each rung in turn, each trial against the values
    there of its peers (j != k, j <= max(k - W, W - 1)) that reached it."""
    from search.ordered import rung_milestones

    epochs = {k: MAX_T for k in range(TRIALS)}
    for m in [r for r in rung_milestones(GRACE, MAX_T, RF) if r < MAX_T]:
        alive = [k for k in range(TRIALS) if epochs[k] > m - 1 and epochs[k] >= m]
        alive = [k for k in alive if epochs[k] == MAX_T]  # not stopped at an earlier rung
        for k in alive:
            bound = max(k - WINDOW, WINDOW - 1)
            peers = [curve(j, m) for j in alive if j != k and j <= bound]
            cutoff = ordered_cutoff(peers, RF)
            if cutoff is not None and curve(k, m) < cutoff:
                epochs[k] = m
    return epochs


@pytest.mark.slow
def test_first_window_trials_wait_and_are_stopped_as_the_rule_says(tmp_path, ray_runtime):  # noqa: F811
    def run(name: str) -> dict[int, int]:
        sched = OrderedASHA(
            metric="m",
            mode="max",
            max_t=MAX_T,
            grace_period=GRACE,
            reduction_factor=RF,
            lag=WINDOW,
            total=TRIALS,
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                search_alg=OrderedSearcher(Numbered(), window=WINDOW, total=TRIALS),
                scheduler=sched,
                num_samples=TRIALS,
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0),
        )
        grid = tuner.fit()
        assert not grid.errors
        # What --resume reads: a paused trial stopped at its rung is saved TERMINATED too
        # (Ray files it only when told to: search/ordered.py).
        saved = ExperimentAnalysis(str(tmp_path / name)).trials
        assert sorted(t.status for t in saved) == ["TERMINATED"] * TRIALS
        return {r.config["k"]: r.metrics["training_iteration"] for r in grid}

    want = expected_epochs()
    assert {k for k in range(WINDOW) if want[k] < MAX_T}, want  # the case worth testing
    assert run("a") == want
