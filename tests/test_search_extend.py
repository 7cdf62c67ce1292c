"""Resuming a sweep: a larger --num-samples adds trials to the same study and MLflow sweep
run; any other flag that differs from the recorded settings is an error naming it; each
sweep's Tune state is its own (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.ledger import load_study
from search.ordered import ledger_rungs
from search.run import main, run_sweep
from search.settings import parse_settings
from tests.search_helpers import (
    TINY_SPACE,
    metric_history,
    mlflow_runs,
    ray_runtime,  # noqa: F401 - fixture
    read_trials_csv,
    search_store,  # noqa: F401 - fixture
    sweep_decisions,
    tiny_settings,
)

SPACE = TINY_SPACE


@pytest.fixture(scope="module")
def extended(tmp_path_factory, search_store, ray_runtime):  # noqa: F811
    tmp = tmp_path_factory.mktemp("extend")
    settings = tiny_settings(
        tmp, search_store, "grow", num_samples=2, max_epochs=2, grace_period=2, warm_start=False
    )
    first = run_sweep(settings, space=SPACE, quiet=True)
    uri = settings.tracking_uri
    before = {
        r.data.tags["case_tune.trial_id"]: r.info.run_id for r in mlflow_runs(uri, kind="trial")
    }
    history = {tid: metric_history(uri, rid, "val_macro_f1") for tid, rid in before.items()}
    manifest = settings.manifest_path.read_bytes()
    return {
        "tmp": tmp,
        "settings": settings,
        "first": first,
        "before": before,
        "history": history,
        "manifest": manifest,
    }


def _argv(ctx: dict, *extra: str) -> list[str]:
    s = ctx["settings"]
    return ["--name", s.name, "--resume", "--results-dir", s.results_dir, *extra]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--max-epochs", "5"], "--max-epochs 5 differs from sweep 'grow''s recorded 2"),
        (["--seed", "7"], "--seed 7 differs from sweep 'grow''s recorded 0"),
        (["--space", "baselines"], "--space baselines differs from sweep 'grow''s recorded case"),
        (
            ["--num-samples", "1"],
            "--num-samples 1 differs from sweep 'grow''s recorded 2 (--num-samples can only grow)",
        ),
        (["--max-concurrent", "1"], "--max-concurrent 1 differs"),
        (["--data", "demo"], "--data demo differs from sweep 'grow''s recorded /"),
        (["--no-warm-start"], None),  # recorded False: the same, accepted
        (["--warm-start"], "--warm-start differs from sweep 'grow''s recorded --no-warm-start"),
    ],
)
def test_resume_with_a_differing_flag_is_an_error_naming_it(
    extended: dict, capsys, extra: list[str], needle: str | None
) -> None:
    settings_file = extended["settings"].manifest_path
    if needle is None:
        assert parse_settings(_argv(extended, *extra)).warm_start is False
        return
    assert main(_argv(extended, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("search.run: error: --resume: "), err
    assert needle in err, err
    assert settings_file.read_bytes() == extended["manifest"]  # nothing recorded changed


def test_larger_num_samples_extends_the_same_sweep(extended: dict) -> None:
    s = extended["settings"]
    settings = parse_settings(_argv(extended, "--num-samples", "3"))
    assert settings.num_samples == 3 and settings.resume
    outcome = run_sweep(settings, quiet=True)
    assert outcome.num_trials == 3 and not outcome.interrupted
    assert outcome.parent_run_id == extended["first"].parent_run_id  # same MLflow sweep run
    sweeps = mlflow_runs(s.tracking_uri, kind="sweep")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    runs = mlflow_runs(s.tracking_uri, kind="trial")
    assert len(runs) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {outcome.parent_run_id}
    by_id = {r.data.tags["case_tune.trial_id"]: r for r in runs}
    for tid, run_id in extended["before"].items():  # the first trials: untouched
        assert by_id[tid].info.run_id == run_id
        assert metric_history(s.tracking_uri, run_id, "val_macro_f1") == extended["history"][tid]
    # Same Optuna study, now with the third trial.
    study = load_study(s.optuna_storage, s.name)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    manifest = json.loads(s.manifest_path.read_text())
    assert manifest["settings"]["num_samples"] == 3
    assert [seg["num_samples"] for seg in manifest["tune_segments"]] == [2, 1]
    # Resuming the finished, extended sweep again runs nothing new.
    again = run_sweep(parse_settings(_argv(extended)), quiet=True)
    assert again.num_trials == 3
    assert {r.info.run_id for r in mlflow_runs(s.tracking_uri, kind="trial")} == {
        r.info.run_id for r in runs
    }


def test_each_sweep_has_its_own_tune_state(tmp_path: Path, monkeypatch, extended: dict) -> None:
    # The README's `--name demo` run in two folders under one CASE_TUNE_HOME.
    monkeypatch.setenv("CASE_TUNE_HOME", str(tmp_path / "home"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = parse_settings(["--space", "case", "--name", "demo"], cwd=tmp_path / "a")
    b = parse_settings(["--space", "case", "--name", "demo"], cwd=tmp_path / "b")
    assert a.storage_path == b.storage_path
    assert a.experiment_path != b.experiment_path
    assert a.experiment_path.name.startswith("demo-")
    # A real sweep's Tune folder holds its trials only, and its sweep.json names it.
    s = extended["settings"]
    manifest = json.loads(s.manifest_path.read_text())
    first = Path(s.storage_path) / manifest["tune_segments"][0]["name"]
    assert first == s.experiment_path and first.name != s.name
    assert len(list(first.glob("case_trial_*"))) == 2


@pytest.mark.slow
def test_an_extended_sweep_equals_one_run_in_one_go(tmp_path, search_store, ray_runtime):  # noqa: F811
    """8 trials extended to 16 give the trials.csv of 16 run in one go (reproducible mode, ASHA
    on, TPE past its 4 start-up trials): no config replayed, the extension's trials stopped
    against the first segment's rung values and suggested from the study as one go saw it.
    Before issue 21 the extension replayed trials 0-7."""
    common = dict(
        max_epochs=3, grace_period=1, reduction_factor=2, warm_start=False, startup_trials=4
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = tiny_settings(tmp_path / "a", search_store, "whole", num_samples=16, **common)
    run_sweep(whole, space=SPACE, quiet=True)
    grown = tiny_settings(tmp_path / "b", search_store, "grown", num_samples=8, **common)
    run_sweep(grown, space=SPACE, quiet=True)
    argv = ["--name", "grown", "--resume", "--results-dir", grown.results_dir]
    extended = parse_settings([*argv, "--num-samples", "16"], cwd=tmp_path / "b")
    extended.storage_path = grown.storage_path
    outcome = run_sweep(extended, quiet=True)
    assert outcome.num_trials == 16 and not outcome.interrupted
    assert sweep_decisions(extended.sweep_dir) == sweep_decisions(whole.sweep_dir)
    configs = [r["lr"] for r in read_trials_csv(extended.sweep_dir / "trials.csv")]
    assert len(set(configs)) == 16  # nothing replayed
    statuses = [r["status"] for r in read_trials_csv(whole.sweep_dir / "trials.csv")]
    assert "stopped_early" in statuses  # ASHA decided something worth comparing
    # The extension's trials were stopped against the first segment's too: one stopped.
    by_number = sorted(read_trials_csv(extended.sweep_dir / "trials.csv"), key=_number)
    assert "stopped_early" in [r["status"] for r in by_number[8:]]


def _number(row: dict) -> int:
    return int(row.get("trial_number", 0))


@pytest.mark.slow
def test_an_extended_async_sweep_replays_nothing_and_leaves_nothing_running(
    tmp_path,
    search_store,  # noqa: F811
    ray_runtime,  # noqa: F811
):
    """--async: arrival order decides, so an extension need not equal one go, but it must
    never replay a config or leave a trial RUNNING, and its ASHA starts from every earlier
    trial's rung values (they are in the study, which the extension's scheduler reads)."""
    common = dict(max_epochs=3, grace_period=1, reduction_factor=2, warm_start=False)
    grown = tiny_settings(tmp_path, search_store, "agrown", num_samples=3, **common)
    grown.reproducible = False
    run_sweep(grown, space=SPACE, quiet=True)
    argv = ["--name", "agrown", "--resume", "--results-dir", grown.results_dir]
    extended = parse_settings([*argv, "--num-samples", "6"], cwd=tmp_path)
    extended.storage_path = grown.storage_path
    assert not extended.reproducible  # recorded
    outcome = run_sweep(extended, quiet=True)
    assert outcome.num_trials == 6 and not outcome.interrupted
    rows = read_trials_csv(extended.sweep_dir / "trials.csv")
    assert len({r["lr"] for r in rows}) == 6  # nothing replayed
    study = load_study(extended.optuna_storage, "agrown")
    assert all(t.state.is_finished() for t in study.trials) and len(study.trials) == 6
    assert not [
        r for r in mlflow_runs(extended.tracking_uri, kind="trial") if r.info.status == "RUNNING"
    ]
    # Every trial's rung-1 value is in the ledger, the first segment's included: what the
    # extension's scheduler starts from (that it does: test_ledger's extension test).
    assert sorted(ledger_rungs(study, [1])[1]) == list(range(6))
