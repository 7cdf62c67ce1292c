"""End-to-end sweeps on a real local Ray runtime, real Optuna sqlite and real MLflow sqlite.

One tiny sweep (4 trials x 3 epochs, 2 at a time) exercises: one sweep run with one nested
run per trial and per-epoch histories, results files that agree with MLflow, conditional
parameters (no focal_gamma without focal loss), a trial that raises (absurd learning rate ->
NonFiniteLossError) ending FAILED with its error while the sweep completes, and the search
never reading the test split.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from search.ledger import load_study
from search.run import run_sweep, summary
from search.trainable import TIE_BREAK
from tests.search_helpers import (
    FAST_MODELS,
    metric_history,
    mlflow_runs,
    ray_runtime,  # noqa: F401 - fixture
    read_trials_csv,
    search_store,  # noqa: F401 - fixture
    tiny_settings,
)

ABSURD_LR = 1e30
SPACE = {
    "params": {
        "model": {"choice": FAST_MODELS},
        "lr": {"choice": [3e-3, ABSURD_LR]},
        "loss": {"choice": ["ce", "focal"]},
        "focal_gamma": {"uniform": [0.5, 3.0], "when": {"loss": "focal"}},
    },
    "fixed": {"hidden": 64, "faithful": False},
}
EPOCH_METRICS = [
    f"{split}_{name}"
    for split in ("train", "val")
    for name in ("macro_f1", "weighted_f1", "micro_f1", "seed_micro_f1", "loss")
] + ["val_macro_auroc"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, search_store, ray_runtime):  # noqa: F811
    tmp = tmp_path_factory.mktemp("sweep")
    # Seed 3 gives both losses and both learning rates among the 4 trials (checked below).
    settings = tiny_settings(tmp, search_store, "tiny", seed=3, warm_start=False)
    outcome = run_sweep(settings, space=SPACE, quiet=True)
    return settings, outcome


def test_mlflow_holds_one_sweep_run_and_one_nested_run_per_trial(sweep) -> None:
    settings, outcome = sweep
    sweeps = mlflow_runs(settings.tracking_uri, kind="sweep")
    assert len(sweeps) == 1
    parent = sweeps[0]
    assert parent.info.run_id == outcome.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["case_tune.space"] == "case"
    assert parent.data.params["store_path"] == str(settings.data)
    trials = mlflow_runs(settings.tracking_uri, kind="trial")
    assert len(trials) == settings.num_samples == outcome.num_trials
    assert len({r.data.tags["case_tune.trial_id"] for r in trials}) == len(trials)
    for run in trials:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["case_tune.model"] in FAST_MODELS
        assert run.info.status in ("FINISHED", "FAILED")
        if run.info.status == "FINISHED":
            for key in EPOCH_METRICS:
                hist = metric_history(settings.tracking_uri, run.info.run_id, key)
                epochs = len(hist)
                assert sorted(hist) == list(range(1, epochs + 1)), (key, hist)
                assert 1 <= epochs <= settings.max_epochs
            stopped = tags.get("case_tune.status") == "stopped_early"
            assert stopped == (epochs < settings.max_epochs)


def test_results_files_agree_with_mlflow(sweep) -> None:
    settings, outcome = sweep
    out = settings.sweep_dir
    for name in (
        "leaderboard.md",
        "trials.csv",
        "best_configs.yaml",
        "best_by_model.png",
        "optimization_history.png",
        "sweep.json",
    ):
        assert (out / name).is_file(), name
    rows = read_trials_csv(out / "trials.csv")
    runs = {
        r.data.tags["case_tune.trial_id"]: r
        for r in mlflow_runs(settings.tracking_uri, kind="trial")
    }
    assert {r["trial_id"] for r in rows} == set(runs)
    best_by_mlflow = {}
    for tid, run in runs.items():
        hist = metric_history(settings.tracking_uri, run.info.run_id, "val_macro_f1")
        last = [hist[e] for e in sorted(hist)][-5:]  # the statistic: mean of the last 5 epochs
        best_by_mlflow[tid] = sum(last) / len(last) if hist else None
    for row in rows:
        expected = best_by_mlflow[row["trial_id"]]
        if expected is None:
            assert row["val_macro_f1"] == ""
        else:
            assert float(row["val_macro_f1"]) == pytest.approx(expected, abs=1e-12)
        assert row["mlflow_run_id"] == runs[row["trial_id"]].info.run_id
    top = max(v for v in best_by_mlflow.values() if v is not None)
    doc = yaml.safe_load((out / "best_configs.yaml").read_text())
    assert doc["top"][0]["val_metrics"]["val_macro_f1"] == pytest.approx(top, abs=1e-12)
    assert doc["parent_run_id"] == outcome.parent_run_id
    assert doc["tracking_uri"] == settings.tracking_uri
    # a full TrainConfig dict, whose epochs is the final run's length (the schedule's horizon)
    assert doc["top"][0]["config"]["epochs"] == settings.horizon == 150
    assert "grad_clip" in doc["top"][0]["config"]
    assert set(doc["best_per_model"]) <= set(FAST_MODELS)
    assert outcome.best["val_macro_f1"] == pytest.approx(top, abs=1e-12)
    assert f"python -m search.finalize --sweep {settings.name}" in summary(outcome)
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["parent_run_id"] == outcome.parent_run_id
    # The Optuna study is persisted where the manifest says, under the sweep's name.
    study = load_study(manifest["optuna_storage"], settings.name)
    assert len(study.trials) == settings.num_samples
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    # TPE learns from the selection statistic, ties broken by val macro-AUROC (< TIE_BREAK).
    assert top <= study.best_value <= top + TIE_BREAK


def test_the_summary_says_how_to_open_the_sweep_in_mlflow(sweep) -> None:
    """The UI command on loopback, the sweep's runs link and a compare link of its best
    trials (tests/test_mlflow_ui.py renders both in a browser); the sweep's run, its trials
    and the experiment say what ran."""
    from mlflow import MlflowClient

    from search.mlflow_ui import compare_url, runs_url

    settings, outcome = sweep
    lines = summary(outcome).splitlines()
    db = settings.tracking_uri
    assert f"MLflow UI: mlflow ui --backend-store-uri {db} --host 127.0.0.1 --port 5000" in lines
    client = MlflowClient(db)
    exp_id = client.get_experiment_by_name("case-tune").experiment_id
    assert outcome.experiment_id == exp_id
    base = "http://127.0.0.1:5000"
    assert f"Runs:      {runs_url(base, exp_id, settings.name)}" in lines
    trials = mlflow_runs(db, kind="trial")
    rows = {r["mlflow_run_id"]: r for r in read_trials_csv(settings.sweep_dir / "trials.csv")}
    ended_well = [
        r for r in trials if rows[r.info.run_id]["status"] in ("completed", "stopped_early")
    ]
    assert len(outcome.top_run_ids) == len(ended_well) >= 1
    assert set(outcome.top_run_ids) == {r.info.run_id for r in ended_well}
    assert outcome.top_run_ids[0] == outcome.best["run_id"]
    compare = f"Compare:   {compare_url(base, exp_id, outcome.top_run_ids)}"
    assert f"{compare}  (the best trials, {len(ended_well)})" in lines
    # The best config to 4 significant digits; full precision stays in the results files.
    best = next(ln for ln in lines if ln.startswith("Best val macro-F1 "))
    shown = dict(kv.split("=", 1) for kv in best.split("): ", 1)[1].split(", "))
    config = {k: v for k, v in outcome.best["config"].items() if k not in ("epochs", "seed")}
    assert shown == {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in config.items()}
    assert any(isinstance(v, float) and repr(v) != f"{v:.4g}" for v in config.values())
    # One tag finds the sweep with its trials (what the runs link filters on).
    assert {r.data.tags.get("case_tune.sweep") for r in trials} == {settings.name}
    assert settings.command.startswith("python -m search.run --space case --data ")
    note = client.get_run(outcome.parent_run_id).data.tags["mlflow.note.content"]
    assert note.startswith(f"sweep **{settings.name}** (")
    assert note.endswith(f": `{settings.command}` on store `{settings.data}`")
    described = client.get_experiment(exp_id).tags["mlflow.note.content"].splitlines()
    assert described[0].startswith("case-tune: hyperparameter sweeps")
    assert described[1:] == [f"- {note}"]


def test_conditional_params_are_logged_only_where_they_apply(sweep) -> None:
    settings, _ = sweep
    losses = set()
    for run in mlflow_runs(settings.tracking_uri, kind="trial"):
        params = run.data.params
        losses.add(params["loss"])
        assert ("focal_gamma" in params) == (params["loss"] == "focal"), params
        assert "contrastive" not in params and "warmup_ratio" not in params
    assert losses == {"ce", "focal"}  # the fixed seed covers both branches


def test_a_failing_trial_is_failed_with_its_error_and_the_sweep_completes(sweep) -> None:
    settings, outcome = sweep
    runs = mlflow_runs(settings.tracking_uri, kind="trial")
    failed = [r for r in runs if float(r.data.params["lr"]) == ABSURD_LR]
    ok = [r for r in runs if float(r.data.params["lr"]) != ABSURD_LR]
    assert failed and ok
    for run in failed:
        assert run.info.status == "FAILED"
        assert "NonFiniteLossError" in run.data.tags["case_tune.error"]
        assert run.data.tags["case_tune.status"] == "failed"
    for run in ok:
        assert run.info.status == "FINISHED"
    assert outcome.num_failed == len(failed)
    board = (settings.sweep_dir / "leaderboard.md").read_text()
    assert "NonFiniteLossError" in board
    assert math.isfinite(outcome.best["val_macro_f1"])


def test_the_search_never_reads_the_test_split(sweep) -> None:
    settings, _ = sweep
    finished = [
        r for r in mlflow_runs(settings.tracking_uri, kind="trial") if r.info.status == "FINISHED"
    ]
    assert finished
    for run in finished:
        # What the trial's sealed FeatureStore recorded as served (a test read would raise).
        assert run.data.tags["case_tune.splits_read"] == "train,val"


def test_trainable_store_is_sealed(search_store) -> None:  # noqa: F811
    from data_prep.store import SplitSealedError
    from search.trainable import open_sealed_store

    store = open_sealed_store(str(Path(search_store).resolve()))
    with pytest.raises(SplitSealedError):
        store.indices("test")


def test_a_fold_sweep_reports_the_fold_mean_and_logs_every_fold(
    tmp_path,
    search_store,  # noqa: F811
    ray_runtime,  # noqa: F811
) -> None:
    """--folds 3: each trial trains one head per fold; the search metric is the fold mean,
    and MLflow holds each fold's history beside it."""
    settings = tiny_settings(
        tmp_path, search_store, "folds", folds=3, num_samples=2, max_epochs=2, warm_start=False
    )
    space = {**SPACE, "params": {**SPACE["params"], "lr": {"choice": [3e-3]}}}
    outcome = run_sweep(settings, space=space, quiet=True)
    assert outcome.num_trials == 2 and outcome.num_failed == 0
    manifest = json.loads((settings.sweep_dir / "sweep.json").read_text())
    assert manifest["folds"] == 3 and manifest["settings"]["folds"] == 3
    for run in mlflow_runs(settings.tracking_uri, kind="trial"):
        rid = run.info.run_id
        mean = metric_history(settings.tracking_uri, rid, "val_macro_f1")
        folds = [
            metric_history(settings.tracking_uri, rid, f"val_macro_f1_fold{k}") for k in range(3)
        ]
        assert sorted(mean) == [1, 2] and all(sorted(f) == [1, 2] for f in folds)
        for epoch in (1, 2):
            assert mean[epoch] == pytest.approx(sum(f[epoch] for f in folds) / 3, abs=1e-12)
        assert len({f[2] for f in folds}) > 1  # three heads on three validation folds
        assert metric_history(settings.tracking_uri, rid, "val_weighted_f1_fold2")
        assert "test" not in run.data.tags["case_tune.splits_read"].split(",")
