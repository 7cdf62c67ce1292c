"""The replay benchmark's simulator (bench/replay/sim.py) drives the product's searcher and
scheduler: ASHA stops trials, paused trials resume, a diverging curve fails its trial in the
study, and in reproducible mode the first B trials of a longer sweep are the B-trial sweep
(what lets one 200-trial sweep per seed answer every budget)."""

from __future__ import annotations

import math

import optuna

from bench.replay.sim import Curve, build_asha, build_search, simulate
from bench.replay.surrogate import encode
from bench.replay.table import jobs, oracle_epochs
from search.samplers import PerTrialSampler
from search.trainable import TRIAL_NUMBER

SPACE = {
    "params": {
        "model": {"choice": ["a", "b", "c"]},
        "lr": {"loguniform": [1e-4, 1e-1]},
        "warm": {"uniform": [0.0, 0.3], "when": {"model": "b"}},
    },
    "fixed": {"epochs": 150, "seed": 0},
}
EPOCHS = 10


def curve_of(config: dict, number: int) -> Curve:
    """A deterministic curve: better near lr 1e-2, model b best; model c diverges at 6."""
    quality = (
        0.6
        - 0.15 * abs(math.log10(config["lr"]) + 2)
        + {"a": 0.0, "b": 0.1, "c": 0}[config["model"]]
    )
    val = [quality * (1 - 0.5**e) + 0.01 * ((number * 7 + e) % 3) for e in range(1, EPOCHS + 1)]
    n = 5 if config["model"] == "c" else EPOCHS
    return Curve(val=val[:n], auroc=[0.5] * n, seconds=[1.0 + 0.1 * (number % 4)] * EPOCHS)


def sweep(
    trials: int,
    *,
    seed: int = 0,
    slots: int = 3,
    reproducible: bool = True,
    lag: int | None = None,
    curves=curve_of,
):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    window = (lag or slots) if reproducible else None
    sampler = PerTrialSampler("tpe", seed, window, n_startup_trials=4)
    search_alg, study = build_search(
        SPACE, sampler, num_samples=trials, window=slots, reproducible=reproducible, lag=lag
    )
    asha = build_asha(
        study, max_epochs=EPOCHS, window=slots, reproducible=reproducible, total=trials, lag=lag
    )
    out = simulate(search_alg, asha, curves, num_samples=trials, slots=slots, max_epochs=EPOCHS)
    return out, study


def test_with_a_lag_the_sweep_is_the_same_whatever_the_timing_and_idles_less() -> None:
    """--lag 6 at 3 slots: the same configs, epochs and decisions with other epoch times
    (which trial reports first changes); fewer idle slots than lag 3; another sweep than it."""

    def slower(config: dict, number: int) -> Curve:
        c = curve_of(config, number)
        return Curve(c.val, c.auroc, [1.0 + 0.7 * ((number * 5) % 3)] * EPOCHS)

    def seen(out):
        return [(t.config, t.epoch, t.error) for t in out.trials]

    lagged, _ = sweep(30, lag=6)
    assert seen(lagged) == seen(sweep(30, lag=6, curves=slower)[0])
    plain, _ = sweep(30)
    assert seen(plain) != seen(lagged)
    assert lagged.busy / lagged.seconds > plain.busy / plain.seconds
    assert {t.epoch for t in lagged.trials if not t.error} >= {3, EPOCHS}  # ASHA still stops


def test_asha_stops_trials_and_failed_curves_fail_in_the_study() -> None:
    out, study = sweep(20)
    assert [t.number for t in out.trials] == list(range(20))
    assert out.epochs == sum(t.epoch for t in out.trials)
    epochs = {t.epoch for t in out.trials if not t.error}
    assert epochs >= {3, EPOCHS}  # some stopped at the first rung, some ran to the end
    assert out.pauses > 0  # the first window's trials waited for each other at a rung
    states = {t.number: t.state for t in study.get_trials()}
    for t in out.trials:
        assert t.config[TRIAL_NUMBER] == t.number
        want = optuna.trial.TrialState.FAIL if t.error else optuna.trial.TrialState.COMPLETE
        assert states[t.number] == want, t.number
        assert t.error == (t.config["model"] == "c" and t.epoch == 6)
    # the rung values are the ledger's intermediate values, as in search.run
    stopped = [t for t in out.trials if t.epoch == 3]
    assert all(3 in study.trials[t.number].intermediate_values for t in stopped)
    assert sorted(n for *_, n in out.ends) == list(range(20))
    best = out.pick()
    assert best is not None and not best.error and best.epoch == EPOCHS


def test_first_trials_of_a_longer_sweep_are_the_shorter_sweep() -> None:
    short, _ = sweep(12, seed=3)
    long, _ = sweep(30, seed=3)

    def seen(out, n):
        return [(t.config, t.epoch, t.error, out.score(t)) for t in out.trials[:n]]

    assert seen(short, 12) == seen(long, 12)


def test_async_mode_runs_every_trial() -> None:
    out, _ = sweep(15, reproducible=False)
    assert len(out.trials) == 15 and all(t.epoch for t in out.trials)


def test_encoding_and_table_jobs() -> None:
    # one-hot choice, log10 value, inactive conditional below its range
    assert encode(SPACE, {"model": "a", "lr": 1e-2}) == [1.0, 0.0, 0.0, -2.0, -0.3]
    assert encode(SPACE, {"model": "b", "lr": 1e-3, "warm": 0.1}) == [0.0, 1.0, 0.0, -3.0, 0.1]
    assert jobs(3, 2) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert oracle_epochs(20) == [3, 9, 12, 20]  # rungs at rf 3 and the product's 4, and the last
    assert oracle_epochs(2) == [2]


def test_pick_is_the_top_score() -> None:
    out, _ = sweep(10)
    scores = [out.score(t) for t in out.trials]
    assert out.pick() is out.trials[scores.index(max(scores))]


def test_simulator_decides_as_real_tune() -> None:
    """tests/test_ordered_tune.py runs these curves through a real Tune sweep and gets
    `expected_epochs()`; the simulator must stop every trial at the same epoch, whatever
    order its trials' epochs end in."""
    from search.ordered import OrderedASHA, OrderedSearcher
    from search.trainable import METRIC
    from tests import test_ordered_tune as tt

    for speed in (1, 2, 3):

        def curve_of(config: dict, number: int, speed: int = speed) -> Curve:
            k = config["k"]
            secs = [1.0 + 0.37 * ((k * speed) % 4)] * tt.MAX_T
            return Curve(
                val=[tt.curve(k, e) for e in range(1, tt.MAX_T + 1)], auroc=secs, seconds=secs
            )

        asha = OrderedASHA(
            metric=METRIC,
            mode="max",
            max_t=tt.MAX_T,
            grace_period=tt.GRACE,
            reduction_factor=tt.RF,
            lag=tt.WINDOW,
            total=tt.TRIALS,
        )
        search_alg = OrderedSearcher(tt.Numbered(), window=tt.WINDOW, total=tt.TRIALS)
        out = simulate(
            search_alg, asha, curve_of, num_samples=tt.TRIALS, slots=tt.WINDOW, max_epochs=tt.MAX_T
        )
        assert {t.config["k"]: t.epoch for t in out.trials} == tt.expected_epochs(), speed


def test_a_table_reads_alike_from_its_cache_folder_and_a_gzip_copy(tmp_path) -> None:
    import gzip
    import json

    from bench.replay.table import TABLE_FILE, read_table

    rows = [{"index": 0, "seed": 0, "val": [0.5]}, {"index": 1, "seed": 0, "val": [0.25]}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / TABLE_FILE).write_text(text + '{"index": 2, "se', encoding="utf-8")
    with gzip.open(tmp_path / "copy.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert read_table(tmp_path) == rows  # a line cut by a killed build is dropped
    assert read_table(tmp_path / "copy.jsonl.gz") == rows
    assert read_table(tmp_path / "missing.jsonl") == []
