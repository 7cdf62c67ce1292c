"""Which trial failures a sweep retries: a trial whose worker process dies is restarted from its
last checkpoint (Tune's FailureConfig); a trial whose own code raises is tried exactly once
and recorded failed. Real Ray, Optuna and MLflow; the worker is SIGKILLed at a fixed point
(search.faults), not when a poll happens to see it: by the driver, as the result of its 2nd
epoch arrives and before Tune has registered that epoch's checkpoint (Tune registers it
through a second call to the worker), the narrowest window there is.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.faults import FAULT_ENV, FAULT_ONCE_ENV, FAULT_TRACE_ENV, read_trace
from search.ledger import load_study
from tests.search_helpers import metric_history, mlflow_runs, read_trials_csv, tiny_settings

ABSURD_LR = 1e30  # NonFiniteLossError in the first epoch
GOOD = {"model": "case-attention", "lr": 3e-3}
BAD = {"model": "case-attention", "lr": ABSURD_LR}
SPACE = {
    "params": {"model": {"choice": ["case-attention"]}, "lr": {"choice": [3e-3, ABSURD_LR]}},
    "fixed": {"hidden": 32, "faithful": False, "audio_frames": 32},
}
EPOCHS = 4
KILL_AT = 2  # the good trial's worker dies once, as its 2nd epoch's result reaches the driver


@pytest.fixture(scope="module")
def failures(tmp_path_factory, demo_store):
    import ray

    from search.run import run_sweep

    tmp = tmp_path_factory.mktemp("failures")
    trace = tmp / "trace.txt"
    env = {
        FAULT_ENV: f"trial_result:{KILL_AT}",
        FAULT_ONCE_ENV: str(tmp / "killed"),
        FAULT_TRACE_ENV: str(trace),
    }
    mp = pytest.MonkeyPatch()
    # Ray's workers inherit the environment of the runtime run_sweep starts: none may be up.
    if ray.is_initialized():
        ray.shutdown()
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        settings = tiny_settings(
            tmp,
            demo_store,
            "failures",
            num_samples=2,
            max_epochs=EPOCHS,
            max_concurrent=2,
            scheduler="fifo",
            warm_start=False,
        )
        assert settings.max_failures >= 1  # retries are on: a raise would be retried if seen
        outcome = run_sweep(settings, space=SPACE, points=[GOOD, BAD], quiet=True)
    finally:
        mp.undo()
    return settings, outcome, read_trace(trace), tmp


def _tune_trials(settings):
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(settings.experiment_path)).trials
    return {("bad" if t.config["lr"] == ABSURD_LR else "good"): t for t in trials}


def _runs(settings):
    """Trial id -> its MLflow run, deleted runs included: a trial has exactly one."""
    runs = mlflow_runs(settings.tracking_uri, kind="trial", deleted=True)
    by_id = {r.data.tags["case_tune.trial_id"]: r for r in runs}
    assert len(by_id) == len(runs) == 2, [r.data.tags for r in runs]
    return by_id


def test_a_trial_whose_code_raises_is_tried_once_and_recorded_failed(failures) -> None:
    settings, outcome, trace, _ = failures
    bad = _tune_trials(settings)["bad"]
    # One start, and Tune never saw a failure (it would have retried: max_failures >= 1).
    starts = [pid for point, _, who, pid in trace if point == "trial_start" and who == bad.trial_id]
    assert len(starts) == 1, trace
    assert bad.num_failures == 0 and bad.status == "TERMINATED"
    run = _runs(settings)[bad.trial_id]  # deleted runs included: exactly one run
    assert run.info.status == "FAILED"
    assert run.data.tags["case_tune.status"] == "failed"
    assert "NonFiniteLossError" in run.data.tags["case_tune.error"]
    assert "case_tune.restarts" not in run.data.tags
    error_txt = MlflowClient(settings.tracking_uri).download_artifacts(run.info.run_id, "error.txt")
    text = Path(error_txt).read_text()
    assert "Traceback" in text and "NonFiniteLossError" in text
    # Optuna learnt it as a failure, not as a completed trial with a value.
    study = load_study(settings.optuna_storage, "failures")
    states = {t.params["lr"]: t.state.name for t in study.trials}
    assert states == {ABSURD_LR: "FAIL", 3e-3: "COMPLETE"}
    rows = {float(r["lr"]): r for r in read_trials_csv(settings.sweep_dir / "trials.csv")}
    assert rows[ABSURD_LR]["status"] == "failed"
    assert outcome.num_failed == 1 and outcome.num_trials == 2 and not outcome.interrupted


def test_a_trial_whose_worker_dies_continues_from_its_last_checkpoint(failures) -> None:
    settings, outcome, trace, tmp = failures
    assert (tmp / "killed").exists()  # the fault fired
    good = _tune_trials(settings)["good"]
    assert good.status == "TERMINATED" and good.num_failures == 1
    # Restored, not restarted: the new process ran only the epochs after the last checkpoint
    # Tune had registered, epoch 1's (epoch 2's result arrived, its checkpoint never did).
    assert good.last_result["training_iteration"] == EPOCHS
    assert good.last_result["iterations_since_restore"] == EPOCHS - (KILL_AT - 1)
    starts = [
        pid for point, _, who, pid in trace if point == "trial_start" and who == good.trial_id
    ]
    reported = [
        (int(at), pid)
        for point, at, who, pid in trace
        if point == "trial_reported" and who == good.trial_id
    ]
    assert len(starts) == 2 and starts[0] != starts[1]
    assert reported == [(1, starts[0]), (2, starts[1]), (3, starts[1]), (4, starts[1])]

    # One MLflow run (no replacement, deleted runs included), one history: every epoch once,
    # epoch 2 too, although its first result was seen before the worker died.
    run = _runs(settings)[good.trial_id]
    assert run.info.status == "FINISHED"
    assert run.data.tags["case_tune.status"] == "completed"
    assert run.data.tags["case_tune.restarts"] == "1"
    client = MlflowClient(settings.tracking_uri)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps

    # The continued trial trained exactly what an uninterrupted one trains (the checkpoint
    # holds every head, optimiser, scheduler and RNG state).
    from search.trainable import TrialRun, open_sealed_store

    store = open_sealed_store(str(Path(settings.data).resolve()))
    alone = TrialRun(dict(good.config), store, folds=0, threads=1)
    expected = [alone.run_epoch()["val_macro_f1"] for _ in range(EPOCHS)]
    logged = metric_history(settings.tracking_uri, run.info.run_id, "val_macro_f1")
    assert [logged[e] for e in range(1, EPOCHS + 1)] == pytest.approx(expected, abs=1e-12)
    assert all(math.isfinite(v) for v in expected)


def test_the_searcher_never_leaves_a_temporary_file_in_the_folder_tune_copies(tmp_path) -> None:
    """Tune copies its driver folder to storage in the background while the next save may
    run; a temporary file inside it could vanish mid-copy (a FileNotFoundError traceback).
    The searcher's state, the slow part of a save, is written beside the folder instead."""
    from search.trial_search import TrialOptunaSearch

    folder = tmp_path / "driver_artifacts"
    folder.mkdir()
    seen: list[tuple[str, list[str]]] = []

    class Watched(TrialOptunaSearch):
        def save(self, checkpoint_path: str) -> None:
            super().save(checkpoint_path)
            seen.append((checkpoint_path, sorted(p.name for p in folder.iterdir())))

    searcher = Watched(metric="val_macro_f1_search", mode="max")
    searcher.save_to_dir(str(folder), session_str="s1")
    searcher.save_to_dir(str(folder), session_str="s1")  # overwrites in place
    assert len(seen) == 2
    for path, listing in seen:
        assert Path(path).parent != folder  # written outside the copied folder...
        assert all("tmp" not in name for name in listing)  # ...which never holds a temp file
    assert sorted(p.name for p in folder.iterdir()) == ["searcher-state-s1.pkl"]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # nothing left beside it
    restored = TrialOptunaSearch(metric="val_macro_f1_search", mode="max")
    restored.restore_from_dir(str(folder))
    assert restored.metric == "val_macro_f1_search"
