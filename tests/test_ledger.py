"""Long-sweep paths decide as the short one (issue 21): samplers draw per trial number, an
extension's trials meet the earlier trials' rung values, only trials that ended well rank, one
score orders trials everywhere, and finalize inherits the sweep's resources and seed."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from search.final_plan import select_candidates
from search.final_settings import default_seeds, parse_settings
from search.ordered import OrderedASHA, ledger_rungs
from search.results import TrialRecord, rank_key, ranked, write_best_configs, write_leaderboard
from search.samplers import PerTrialSampler
from search.trainable import SEARCH_METRIC, STAT_METRIC, TIE_METRIC, TRIAL_NUMBER, tie_broken

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- samplers ------------------------------------------------------------------------------
def _space(trial: optuna.Trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "model": trial.suggest_categorical("model", ["a", "b", "c"]),
        "hidden": trial.suggest_int("hidden", 16, 256),
    }


def _ask_tell(study: optuna.Study, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        t = study.ask()
        params = _space(t)
        study.tell(t, params["lr"] * 100 + params["hidden"] / 1000)
        out.append(params)
    return out


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_an_extension_draws_what_one_go_draws(tmp_path: Path, kind: str) -> None:
    """A new sampler object (a new Tune segment, a new driver) continues the draws by trial
    number: 4 + 4 trials equal 8 in one go, and no trial repeats another's parameters."""
    opts = {"n_startup_trials": 10} if kind == "tpe" else {}
    whole = optuna.create_study(sampler=PerTrialSampler(kind, 3, **opts), direction="maximize")
    one_go = _ask_tell(whole, 8)
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    first = optuna.create_study(
        study_name="s", storage=storage, sampler=PerTrialSampler(kind, 3, **opts)
    )
    part = _ask_tell(first, 4)
    again = optuna.load_study(
        study_name="s", storage=storage, sampler=PerTrialSampler(kind, 3, **opts)
    )
    part += _ask_tell(again, 4)
    assert part == one_go
    assert len({json.dumps(p, sort_keys=True) for p in part}) == 8
    # The old way (one seeded sampler per segment) replayed trial 0 as trial 4: the bug.
    old = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    replayed = _ask_tell(old, 4)
    old.sampler = optuna.samplers.RandomSampler(seed=3)
    assert _ask_tell(old, 1)[0] == replayed[0]


def test_tpe_after_start_up_is_seeded_per_trial_too() -> None:
    """Past the start-up trials TPE's candidate draws are per trial as well: two samplers
    given the same history suggest the same next trial."""
    a = optuna.create_study(sampler=PerTrialSampler("tpe", 0, n_startup_trials=3))
    b = optuna.create_study(sampler=PerTrialSampler("tpe", 0, n_startup_trials=3))
    assert _ask_tell(a, 8) == _ask_tell(b, 8)
    c = optuna.create_study(sampler=PerTrialSampler("tpe", 1, n_startup_trials=3))
    assert _ask_tell(c, 8) != _ask_tell(
        optuna.create_study(sampler=PerTrialSampler("tpe", 0, n_startup_trials=3)), 8
    )


def _ordered_ask_tell(study: optuna.Study, n: int, window: int) -> list[dict]:
    """Trials asked and told as search/ordered.py's searcher does: trial k is asked once
    trials 0..k-window are told; the rest are told when the segment ends."""
    asked: dict[int, tuple[optuna.Trial, dict]] = {}
    out = []
    for _ in range(n):
        t = study.ask()
        asked[t.number] = (t, _space(t))
        out.append(asked[t.number][1])
        for j in sorted(asked):
            if j <= t.number + 1 - window:  # what the next suggestion waits for
                trial, params = asked.pop(j)
                study.tell(trial, params["hidden"] + 10 * (params["model"] == "b"))
    for trial, params in asked.values():
        study.tell(trial, params["hidden"] + 10 * (params["model"] == "b"))
    return out


def test_past_start_up_an_extension_sees_what_one_go_saw() -> None:
    """TPE past its 3 start-up trials, window 3: 7 + 7 trials equal 14 in one go on every
    seed. Trial 7 of the one-go sweep was sampled with trials 5 and 6 running; the extension
    has them finished, and the view shows them running. Without it most seeds differ."""

    def sweeps(seed: int, window: int | None) -> tuple[list[dict], list[dict]]:
        def new() -> optuna.Study:
            sampler = PerTrialSampler("tpe", seed, window, n_startup_trials=3)
            return optuna.create_study(sampler=sampler, direction="maximize")

        whole = _ordered_ask_tell(new(), 14, 3)
        grown = new()
        part = _ordered_ask_tell(grown, 7, 3) + _ordered_ask_tell(grown, 7, 3)
        return whole, part

    assert all(a == b for a, b in (sweeps(seed, 3) for seed in range(10)))
    assert sum(a != b for a, b in (sweeps(seed, None) for seed in range(10))) >= 3


# -- early stopping across segments ---------------------------------------------------------
def _sched(ledger: tuple[str, str] | None = None, lag: int | None = 2) -> OrderedASHA:
    return OrderedASHA(
        metric="m",
        mode="max",
        max_t=20,
        grace_period=3,
        reduction_factor=3,
        lag=lag,
        ledger=ledger,
    )


def _report(sched: OrderedASHA, tid: str, t: int, v: float, number: int | None = None) -> str:
    config = {} if number is None else {TRIAL_NUMBER: number}
    trial = Trial("case_trial", config=config, trial_id=tid, stub=True)
    sched.on_trial_add(None, trial)
    return sched.on_trial_result(None, trial, {"training_iteration": t, "m": v})


def _ledger(tmp_path: Path, trials: int) -> tuple[str, str]:
    """A study with ``trials`` running trials, as the searcher leaves it."""
    storage = f"sqlite:///{tmp_path / 'ledger.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for _ in range(trials):
        study.ask()
    return storage, "s"


@pytest.mark.parametrize("lag", [2, None])
def test_an_extension_is_stopped_against_the_earlier_trials(tmp_path: Path, lag) -> None:
    """Segment 1 has trials 0..3; the extension's first trial is number 4 and meets their rung
    values (lag 2: trials 0..2; --async: all four) from the study, as in a sweep run in one
    go. Before issue 21 it met none."""
    ledger = _ledger(tmp_path, 5)
    first = _sched(ledger, lag)
    for i, v in enumerate([0.8, 0.7, 0.9, 0.6]):
        _report(first, f"a{i}", 3, v, number=i)
    study = optuna.load_study(study_name="s", storage=ledger[0])
    assert ledger_rungs(study, [3, 9]) == {3: {0: 0.8, 1: 0.7, 2: 0.9, 3: 0.6}, 9: {}}
    ext = _sched(ledger, lag)  # a new Tune segment or a new driver: nothing in memory
    assert _report(ext, "b0", 3, 0.5, number=4) == TrialScheduler.STOP
    assert ext.order == {"b0": 4}
    # The same trial in a one-go sweep: the same decision.
    whole = _sched(lag=lag)
    for i, v in enumerate([0.8, 0.7, 0.9, 0.6, 0.5]):
        last = _report(whole, f"w{i}", 3, v)
    assert last == TrialScheduler.STOP
    # Without the study, trial 4 of a new segment meets no peer: the bug.
    assert _report(_sched(lag=lag), "fresh", 3, 0.5, number=4) == TrialScheduler.CONTINUE


def test_rung_values_survive_a_new_driver_and_a_finished_trial(tmp_path: Path) -> None:
    """--resume: Tune unpickles a fresh copy of the scheduler (what tuner.pkl holds); the
    study gives it the rung values the killed driver recorded. A value for a trial the study
    has finished already is kept in memory and not an error."""
    ledger = _ledger(tmp_path, 3)
    sched = _sched(ledger, lag=1)
    copy = pickle.loads(pickle.dumps(sched))
    _report(sched, "t0", 3, 0.9, number=0)
    _report(sched, "t1", 3, 0.8, number=1)
    study = optuna.load_study(study_name="s", storage=ledger[0])
    study.tell(2, 0.1)
    assert _report(copy, "t2", 3, 0.1, number=2) == TrialScheduler.STOP
    assert copy.rungs[3] == {0: 0.9, 1: 0.8, 2: 0.1}
    assert ledger_rungs(study, [3])[3] == {0: 0.9, 1: 0.8}


# -- what ranks, and by what ---------------------------------------------------------------
def _rec(tid: str, status: str, f1: float, auroc: float = math.nan, error: str = "") -> TrialRecord:
    return TrialRecord(
        trial_id=tid,
        run_id=f"run-{tid}",
        model="case-attention",
        status=status,
        config={"model": "case-attention", "lr": 0.001, "hidden": 32},
        epochs_run=10,
        best_epoch=10,
        best={"val_macro_f1": f1},
        error=error,
        tie=auroc,
    )


def test_a_failed_trial_is_never_the_recommendation(tmp_path: Path) -> None:
    records = sorted(
        [
            _rec("f", "failed", 0.9, error="NonFiniteLossError: loss is nan at epoch 10"),
            _rec("k", "killed", 0.95),
            _rec("c", "completed", 0.5),
            _rec("s", "stopped_early", 0.4),
        ],
        key=rank_key,
    )
    assert [r.trial_id for r in records] == ["c", "s", "k", "f"]
    assert [r.trial_id for r in ranked(records)] == ["c", "s"]
    path = tmp_path / "best_configs.yaml"
    write_best_configs(records, path, sweep_info={"sweep": "x"})
    doc = yaml.safe_load(path.read_text())
    assert [e["trial_id"] for e in doc["top"]] == ["c", "s"] and doc["num_scored"] == 2
    assert doc["best_per_model"]["case-attention"]["trial_id"] == "c"
    # finalize's candidates come from that file: the failed 0.9 is never trained
    picked = select_candidates(doc, top_k=4, models=["all"])
    assert [c.trial_id for c in picked] == ["c", "s"]
    board = tmp_path / "leaderboard.md"
    write_leaderboard(records, board, sweep="x")
    text = board.read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and "trial" not in ln]
    assert [ln.split("|")[2].strip() for ln in table] == ["c", "s"]
    assert "- f (case-attention, failed, 10 epochs): NonFiniteLossError" in text
    assert "- k (case-attention, killed, 10 epochs)" in text


def test_the_leaderboard_orders_exact_ties_as_the_search_did() -> None:
    """At the all-neutral ties the search (TPE's value, ASHA's rung value: tie_broken) prefers
    the higher AUROC; the leaderboard's order is the same."""
    a = _rec("a", "completed", 0.1234, auroc=0.61)
    b = _rec("b", "completed", 0.1234, auroc=0.72)
    b.config = {**b.config, "lr": 0.0001}  # sorts first by config text: the old tie-break
    c = _rec("c", "completed", 0.1234, auroc=0.55)
    order = [r.trial_id for r in sorted([a, b, c], key=rank_key)]
    search_values = {
        r.trial_id: tie_broken({STAT_METRIC: 0.1234, TIE_METRIC: r.tie}, STAT_METRIC)
        for r in (a, b, c)
    }
    assert order == sorted(search_values, key=search_values.get, reverse=True) == ["b", "a", "c"]
    assert SEARCH_METRIC  # TPE and ASHA are told this value (search.trainable)


# -- finalize inherits the sweep -------------------------------------------------------------
def _sweep_dir(tmp_path: Path, **settings) -> Path:
    sweep = tmp_path / "results" / "gpu"
    sweep.mkdir(parents=True)
    (sweep / "best_configs.yaml").write_text(
        yaml.safe_dump({"sweep": "gpu", "final_epochs": 150, "folds": 0, "top": []})
    )
    (sweep / "sweep.json").write_text(
        json.dumps({"tracking_uri": "sqlite:////tmp/x.db", "settings": settings})
    )
    return sweep


def test_finalize_inherits_the_sweep_s_resources_and_seed(tmp_path: Path) -> None:
    _sweep_dir(tmp_path, cpus_per_trial=2.0, gpus_per_trial=0.25, seed=7)
    s = parse_settings(["--sweep", "gpu"], cwd=tmp_path)
    assert (s.cpus_per_trial, s.gpus_per_trial) == (2.0, 0.25)
    assert s.seeds == [7, 42] and s.sweep_seed == 7
    told = parse_settings(
        ["--sweep", "gpu", "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--seeds", "1"],
        cwd=tmp_path,
    )
    assert (told.cpus_per_trial, told.gpus_per_trial, told.seeds) == (1.0, 0.0, [1])
    from search.finalize import repeat_note

    assert "seed-7 run continues its trial" in repeat_note(s)
    assert "no final run repeats its trial" in repeat_note(told)


def test_default_seeds_start_with_the_sweep_s() -> None:
    assert default_seeds(0) == [0, 42]
    assert default_seeds(42) == [42, 0]
    assert default_seeds(5) == [5, 42]


# -- a driver killed between Tune's saves ----------------------------------------------------
def _searcher(storage: str):
    from search.trial_search import TrialOptunaSearch

    return TrialOptunaSearch(
        space=_space,
        metric="m",
        mode="max",
        sampler=PerTrialSampler("random", 0),
        study_name="s",
        storage=optuna.storages.RDBStorage(storage),
    )


def test_a_trial_lost_with_its_driver_comes_back_under_its_number(tmp_path: Path) -> None:
    """Trial 1 was asked after Tune's last save, then the driver died: the study has it
    RUNNING and no restored Tune trial owns it. The resumed searcher hands it out again (same
    number, same parameters) before asking anything new, so the sweep numbers and suggests as
    the uninterrupted one and leaves nothing RUNNING behind."""
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    first = _searcher(storage)
    t0 = first.suggest("t0")
    first.save(str(tmp_path / "saved.pkl"))  # Tune's last save of the searcher
    t1 = first.suggest("t1")  # asked, then the driver is SIGKILLed
    assert (t0[TRIAL_NUMBER], t1[TRIAL_NUMBER]) == (0, 1)

    resumed = _searcher(storage)
    resumed.restore(str(tmp_path / "saved.pkl"))
    again = resumed.suggest("t1-new")
    assert again == t1
    nxt = resumed.suggest("t2")
    assert nxt[TRIAL_NUMBER] == 2
    uninterrupted = _searcher(f"sqlite:///{tmp_path / 'u.db'}")
    assert [uninterrupted.suggest(f"u{i}") for i in range(3)] == [t0, t1, nxt]
    for tid in ("t0", "t1-new", "t2"):
        resumed.on_trial_complete(tid, {"m": 0.5})
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
