"""The sweep's study storage (search/ledger.py) and what the driver reads from it: Optuna's
journal for new sweeps, sqlite for sweeps recorded before, one read of the study per sampled
trial (search/samplers.py), and the saved Tune state read only when it changed
(search/tracking.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
from optuna.storages._cached_storage import _CachedStorage

from search.ledger import (
    is_journal,
    journal_path,
    journal_spec,
    load_study,
    open_storage,
    study_exists,
)
from search.samplers import PerTrialSampler, trial_seed
from search.settings import optuna_storage_for
from search.tracking import SavedStates

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(trial: optuna.Trial) -> dict:
    model = trial.suggest_categorical("model", ["a", "b", "c"])
    out = {"model": model, "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}
    if model == "a":  # a conditional parameter: TPE samples it on its own
        out["hidden"] = trial.suggest_int("hidden", 16, 256)
    return out


def test_new_sweeps_keep_their_study_in_a_journal_and_old_ones_open_as_recorded(
    tmp_path: Path,
) -> None:
    spec = optuna_storage_for(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results")
    assert is_journal(spec) and journal_path(spec) == (tmp_path / "optuna.journal").resolve()
    assert journal_spec(journal_path(spec)) == spec
    assert not study_exists(spec, "s") and not journal_path(spec).exists()  # nothing created
    study = optuna.create_study(study_name="s", storage=open_storage(spec))
    t = study.ask()
    _space(t)
    study.tell(t, 0.5)
    # Another storage object over the file (the scheduler's, a resumed driver's) sees it all.
    again = load_study(spec, "s")
    assert study_exists(spec, "s") and [x.value for x in again.trials] == [0.5]
    assert again.trials[0].params == t.params
    # A sweep recorded with sqlite (sweep.json's URL) opens its study as before.
    old = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="old", storage=old).optimize(lambda tr: _space(tr)["lr"], 2)
    assert study_exists(old, "old") and len(load_study(old, "old").trials) == 2


class _NoView(PerTrialSampler):
    """PerTrialSampler sampling from the study itself (as before the per-trial view)."""

    def _seen(self, study, trial):
        self._for(trial)
        return study


def _study_with_running(url: str) -> optuna.Study:
    study = optuna.create_study(
        study_name="v", storage=url, sampler=optuna.samplers.RandomSampler(1), direction="maximize"
    )
    for i in range(12):
        t = study.ask()
        _space(t)
        study.tell(t, (i * 7 % 12) / 12)
    for _ in range(4):  # running: the constant liar's input
        _space(study.ask())
    return study


def test_a_sampled_trial_reads_the_study_once_and_draws_what_it_drew_before(
    tmp_path: Path,
) -> None:
    """TPE with the constant liar rereads the study for every parameter it samples; the
    per-trial view reads it once, and the draws are exactly those TPE makes on the study."""
    reads = []
    real = _CachedStorage.get_all_trials

    def counted(self, *args, **kwargs):
        reads.append(1)
        return real(self, *args, **kwargs)

    draws = {}
    for name, cls in (("view", PerTrialSampler), ("study", _NoView)):
        study = _study_with_running(f"sqlite:///{tmp_path / name}.db")
        study.sampler = cls("tpe", 7, None, n_startup_trials=5)
        reads.clear()
        _CachedStorage.get_all_trials = counted
        try:
            draws[name] = [_space(study.ask()) for _ in range(3)]
        finally:
            _CachedStorage.get_all_trials = real
        draws[name + "_reads"] = len(reads) / 3
    assert draws["view"] == draws["study"]
    assert {d["model"] for d in draws["view"]} and all("lr" in d for d in draws["view"])
    # one read by the view and one by ask()'s look for enqueued trials, against one per
    # parameter sampled before
    assert draws["view_reads"] == 2.0 and draws["study_reads"] > 3.0
    assert trial_seed(7, 16) != trial_seed(7, 17)


def test_the_saved_tune_state_is_read_again_only_when_it_changed(
    tmp_path: Path, monkeypatch
) -> None:
    import search.tracking as tracking

    reads = []
    real = tracking.saved_trial_states
    monkeypatch.setattr(tracking, "saved_trial_states", lambda d: reads.append(d) or real(d))

    def save(states: dict[str, str]) -> None:
        doc = {
            "trial_data": [
                [json.dumps({"trial_id": t, "status": s}), {}] for t, s in states.items()
            ]
        }
        path = tmp_path / "experiment_state-2026-12-03.json"
        path.write_text(json.dumps(doc))
        os.utime(path, ns=(len(states) * 10**9, len(states) * 10**9))  # a new mtime per save

    saved = SavedStates(str(tmp_path))
    assert saved.states(force=True) == {}  # nothing saved yet
    save({"a": "RUNNING"})
    assert saved.states(force=True) == {"a": "RUNNING"}
    assert saved.states(force=True) == {"a": "RUNNING"} and len(reads) == 1  # unchanged
    save({"a": "TERMINATED", "b": "RUNNING"})
    assert saved.states() == {"a": "RUNNING"}  # looked at again only after CHECK_S
    assert saved.states(force=True) == {"a": "TERMINATED", "b": "RUNNING"}
