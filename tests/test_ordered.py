"""search.ordered on hand-made trial results: suggestions and rung decisions depend on trial
order only, not on the order in which concurrent trials report (real Optuna TPE, Tune's own
Trial objects and ASHA bracket for comparison)."""

from __future__ import annotations

import pickle
import random

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.ordered import OrderedASHA, OrderedSearcher, ordered_cutoff, rung_milestones

METRIC = "score"


def space(trial: optuna.Trial) -> None:
    trial.suggest_float("x", -3.0, 3.0)
    trial.suggest_categorical("kind", ["a", "b", "c"])


def score(config: dict) -> float:
    """A deterministic result of a config (what a reproducible training run gives)."""
    return -((config["x"] - 1.0) ** 2) + {"a": 0.0, "b": 0.5, "c": -0.5}[config["kind"]]


def make_searcher(
    window: int, total: int, seed: int = 0, max_concurrent: int | None = None
) -> OrderedSearcher:
    inner = OptunaSearch(
        space=space,
        metric=METRIC,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3),
    )
    return OrderedSearcher(inner, window=window, total=total, max_concurrent=max_concurrent)


def drive(searcher: Searcher, total: int, window: int, pick, snapshot_at: int | None = None):
    """Run ``total`` trials, at most ``window`` at once; ``pick(running)`` chooses which
    running trial finishes next (the timing of a real sweep). Returns the configs in trial
    order, and the searcher pickled after ``snapshot_at`` completions (if asked)."""
    configs: list[dict] = []
    running: list[str] = []
    done = 0
    snapshot = None
    while done < total:
        while len(configs) < total:
            trial_id = f"t{len(configs)}"
            cfg = searcher.suggest(trial_id)
            if cfg is None:
                break
            assert cfg != Searcher.FINISHED
            configs.append(cfg)
            running.append(trial_id)
            assert len(running) <= window
        assert running, "the searcher waits with nothing running: deadlock"
        tid = pick(running)
        running.remove(tid)
        cfg = configs[int(tid[1:])]
        searcher.on_trial_result(tid, {METRIC: score(cfg), "training_iteration": 1})
        searcher.on_trial_complete(tid, {METRIC: score(cfg), "training_iteration": 1})
        done += 1
        if done == snapshot_at:
            snapshot = pickle.dumps((searcher, searcher.get_state()))
    return configs, snapshot


def oldest(running: list[str]) -> str:
    return running[0]


def newest(running: list[str]) -> str:
    return running[-1]


def shuffled(seed: int):
    rng = random.Random(seed)
    return lambda running: rng.choice(running)


def test_suggestions_do_not_depend_on_completion_order() -> None:
    runs = [
        drive(make_searcher(3, 14), 14, 3, pick)[0]
        for pick in (oldest, newest, shuffled(1), shuffled(2))
    ]
    assert all(r == runs[0] for r in runs[1:])
    assert len({(c["x"], c["kind"]) for c in runs[0]}) == 14


def test_the_wrapped_study_ends_with_every_trial_told_in_order() -> None:
    searcher = make_searcher(2, 9)
    configs, _ = drive(searcher, 9, 2, newest)
    trials = searcher.searcher._ot_study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 9
    assert [t.value for t in trials] == [score(c) for c in configs]
    assert [t.datetime_complete for t in trials] == sorted(t.datetime_complete for t in trials)


def test_a_trial_waits_for_the_oldest_of_its_window() -> None:
    searcher = make_searcher(2, 5)
    assert searcher.suggest("t0") is not None and searcher.suggest("t1") is not None
    assert searcher.suggest("t2") is None  # t0 still running
    searcher.on_trial_complete("t1", {METRIC: 0.0})
    assert searcher.suggest("t2") is None  # the newer one finished first: still wait for t0
    searcher.on_trial_complete("t0", {METRIC: 0.0}, error=False)
    assert searcher.suggest("t2") is not None


def test_with_a_lag_a_trial_waits_for_the_trial_lag_older_only() -> None:
    """--lag 4 at 2 slots: a freed slot starts the next trial while the oldest still runs,
    unless that oldest is 4 trials back; never more than 2 run."""
    searcher = make_searcher(4, 8, max_concurrent=2)
    assert searcher.suggest("t0") is not None and searcher.suggest("t1") is not None
    assert searcher.suggest("t2") is None  # two run
    searcher.on_trial_complete("t1", {METRIC: 0.0})
    assert searcher.suggest("t2") is not None  # t0 still runs: lag 2 would wait here
    searcher.on_trial_complete("t2", {METRIC: 0.0})
    assert searcher.suggest("t3") is not None
    searcher.on_trial_complete("t3", {METRIC: 0.0})
    assert searcher.suggest("t4") is None  # a slot is free, but t4 must see t0 complete
    searcher.on_trial_complete("t0", {METRIC: 0.0})
    assert searcher.suggest("t4") is not None
    with pytest.raises(ValueError, match="max_concurrent <= window"):
        make_searcher(2, 8, max_concurrent=4)


def test_with_a_lag_suggestions_still_do_not_depend_on_completion_order() -> None:
    runs = [
        drive(make_searcher(6, 16, max_concurrent=3), 16, 3, pick)[0]
        for pick in (oldest, newest, shuffled(1), shuffled(2))
    ]
    assert all(r == runs[0] for r in runs[1:])
    assert runs[0] != drive(make_searcher(3, 16), 16, 3, oldest)[0]  # the lag matters


def test_different_seeds_suggest_differently() -> None:
    a = drive(make_searcher(2, 8, seed=0), 8, 2, oldest)[0]
    b = drive(make_searcher(2, 8, seed=1), 8, 2, oldest)[0]
    assert a != b


def test_state_survives_pickling_midway() -> None:
    """Tune pickles the wrapper with the experiment and saves get_state(): a copy restored
    midway continues with the same suggestions."""
    full, snap = drive(make_searcher(2, 10), 10, 2, oldest, snapshot_at=4)
    copy, state = pickle.loads(snap)
    copy.set_state(state)
    k = len(copy.order)
    rest = []
    running = [t for t, n in copy.order.items() if n >= copy.told and n not in copy.finished]
    # finish the ones that were running, then carry on like drive() does
    for tid in list(running):
        cfg = full[int(tid[1:])]
        copy.on_trial_complete(tid, {METRIC: score(cfg)})
    while k < 10:
        cfg = copy.suggest(f"t{k}")
        assert cfg is not None
        rest.append(cfg)
        copy.on_trial_complete(f"t{k}", {METRIC: score(cfg)})
        k += 1
    assert full[len(full) - len(rest) :] == rest


# -- the scheduler ----------------------------------------------------------------------
def trial(i: int) -> Trial:
    return Trial("case_trial", trial_id=f"t{i}", stub=True)


def scheduler(lag: int, **kw) -> OrderedASHA:
    return OrderedASHA(
        metric=METRIC, mode="max", max_t=20, grace_period=3, reduction_factor=3, lag=lag, **kw
    )


def decisions(sched: OrderedASHA, reports: list[tuple[int, int, float]]) -> dict:
    """Feed (trial, epoch, value) reports in the given order; the action per (trial, epoch)."""
    trials = {}
    out = {}
    for i, t, v in reports:
        if i not in trials:
            trials[i] = trial(i)
            sched.on_trial_add(None, trials[i])
        out[(i, t)] = sched.on_trial_result(None, trials[i], {"training_iteration": t, METRIC: v})
    return out


def test_rungs_are_asha_s() -> None:
    assert rung_milestones(3, 20, 3) == [3, 9]
    assert rung_milestones(1, 10, 2) == [1, 2, 4, 8]
    assert scheduler(2).milestones == [3, 9]
    values = [0.3, 0.1, 0.7, 0.5, float("nan"), 0.2]
    bracket = _Bracket(3, 20, 3, 0)
    assert ordered_cutoff(values, 3) == pytest.approx(
        float(bracket.cutoff(dict(enumerate(values))))
    )
    assert ordered_cutoff([float("nan")], 3) is None


def test_peers_are_the_trials_lag_older_or_the_first_window() -> None:
    """Trial k's peers: j != k with j <= max(k - lag, first - 1); the first window (lag 2:
    trials 0 and 1) is judged among itself, so its trials can be stopped too."""
    sched = scheduler(2, total=10)
    assert [sched.peer_bound(k) for k in range(6)] == [1, 1, 1, 1, 2, 3]
    assert scheduler(2, total=1).peer_bound(0) == 0  # a one-trial sweep: no peer at all
    sched.rungs[3] = {0: 0.5, 1: 0.1, 2: 0.2, 3: 0.05, 4: 0.4}
    acts = {k: sched.decide(k, 3) for k in range(5)}
    assert acts[0] == TrialScheduler.CONTINUE  # vs trial 1's 0.1
    assert acts[1] == TrialScheduler.STOP  # vs trial 0's 0.5: before issue 21 never stopped
    assert acts[2] == TrialScheduler.STOP  # vs trials 0, 1: cutoff 0.367
    assert acts[3] == TrialScheduler.STOP
    assert acts[4] == TrialScheduler.CONTINUE  # vs 0, 1, 2: cutoff 0.3 < 0.4
    assert decisions(scheduler(2), [(0, 20, 0.1)])[(0, 20)] == TrialScheduler.STOP  # max_t


def test_a_first_window_trial_waits_at_the_rung_for_its_peers() -> None:
    """Trial 0 reaches rung 3 before its peer, trial 1: it pauses there; the decision comes
    once trial 1 has reported at the rung, or has ended without reaching it."""
    sched = scheduler(2, total=10)
    t0, t1 = trial(0), trial(1)
    for t in (t0, t1):
        sched.on_trial_add(None, t)
    act = sched.on_trial_result(None, t0, {"training_iteration": 3, METRIC: 0.2})
    assert act == TrialScheduler.PAUSE and sched.waiting == {0: 3}
    assert not sched.ready(0, 3)
    t1.set_status(Trial.TERMINATED)  # trial 1 ended before rung 3 (it failed, say)
    assert sched.ready(0, 3) and sched.decide(0, 3) == TrialScheduler.CONTINUE
    t1.set_status(Trial.RUNNING)
    assert sched.on_trial_result(None, t1, {"training_iteration": 3, METRIC: 0.9}) == (
        TrialScheduler.CONTINUE  # trial 0 has its value there: trial 1 need not wait
    )
    assert sched.ready(0, 3) and sched.decide(0, 3) == TrialScheduler.STOP  # 0.2 < 0.9


def test_decisions_do_not_depend_on_report_order() -> None:
    """Trials report epochs 1..10 in several interleavings (as concurrent trials would in
    different runs); only the order constraint of the searcher holds: a trial starts after
    every trial ``lag`` older is complete. A trial told to wait is resumed once its peers
    have arrived. The decisions are those of the rule given every peer's curve."""
    rng = random.Random(0)
    curves = {i: [rng.random() for _ in range(10)] for i in range(8)}

    def run(seed: int) -> dict:
        order_rng = random.Random(seed)
        sched = scheduler(2, total=8)
        running, nxt, acts, trials, cursor = [], 0, {}, {}, {}
        while nxt < 8 or running or sched.waiting:
            while (
                nxt < 8
                and len(running) + len(sched.waiting) < 2
                and all(trials[j].status == Trial.TERMINATED for j in range(nxt - 1))
            ):
                trials[nxt] = trial(nxt)
                sched.on_trial_add(None, trials[nxt])
                running.append(nxt)
                cursor[nxt] = 1
                nxt += 1
            for k in sorted(sched.waiting):  # choose_trial_to_run's part, without Tune
                m = sched.waiting[k]
                if sched.ready(k, m):
                    del sched.waiting[k]
                    acts[(k, m)] = sched.decide(k, m)
                    if acts[(k, m)] == TrialScheduler.STOP:
                        trials[k].set_status(Trial.TERMINATED)
                    else:
                        running.append(k)
            if not running:
                continue
            i = order_rng.choice(running)
            t = cursor[i]
            act = sched.on_trial_result(
                None, trials[i], {"training_iteration": t, METRIC: curves[i][t - 1]}
            )
            cursor[i] += 1
            if act == TrialScheduler.PAUSE:
                running.remove(i)
                continue
            acts[(i, t)] = act
            if act == TrialScheduler.STOP or t == 10:
                running.remove(i)
                trials[i].set_status(Trial.TERMINATED)
        return acts

    first = run(1)
    assert all(run(seed) == first for seed in (2, 3, 4, 5))
    stopped = {k for (k, _), a in first.items() if a == TrialScheduler.STOP}
    assert stopped & {0, 1}  # the first window can be stopped


@pytest.mark.parametrize(("saved_at", "held"), [(3, True), (2, False)])
def test_a_restored_trial_at_an_undecided_rung_is_held_paused(tmp_path, saved_at, held) -> None:
    """--resume: Tune files restored trials as PENDING and would start them at once; one whose
    checkpoint is at a rung waits there, paused, for its decision. One whose checkpoint is
    older trains the rung's epoch again and is decided when it reports it."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    restored = trial(0)
    restored.run_metadata.last_result = {"training_iteration": 3, METRIC: 0.4}
    restored.run_metadata.checkpoint_manager.register_checkpoint(
        _TrainingResult(
            checkpoint=Checkpoint.from_directory(str(tmp_path)),
            metrics={"training_iteration": saved_at, METRIC: 0.4},
        )
    )
    restored.set_status(Trial.PENDING)
    sched = scheduler(2, total=10)
    sched.on_trial_add(None, restored)
    assert (restored.status == Trial.PAUSED) is held
    assert sched.waiting == ({0: 3} if held else {})
    assert sched.rungs[3] == ({0: 0.4} if held else {})
