"""A sweep whose driver is SIGKILLed mid-run continues with --resume: finished trials are not
rerun, no MLflow run is duplicated or left RUNNING, and the Optuna study stays consistent."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from search.ledger import journal_spec, load_study
from tests.search_helpers import (  # noqa: F401
    cli,
    cli_env,
    metric_history,
    mlflow_runs,
    run_to_sigkill,
    search_store,
)

NAME = "killed"


def _finished_trial_runs(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                "where t.key = 'case_tune.kind' and t.value = 'trial' and r.status = 'FINISHED'"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["run_finished", "trial_complete"])
def test_resume_after_sigkill(tmp_path: Path, search_store: Path, fault: str) -> None:  # noqa: F811
    """The driver is SIGKILLed at a chosen point (search.faults.fault_point), not when a
    poll happens to see something: ``run_finished`` is just after the first trial's MLflow run
    became FINISHED (the MLflow writer kills the driver once it has written that; where a rerun
    would once have followed), ``trial_complete`` the driver itself just after
    Tune reported the trial complete and before its state was saved."""
    env = {**cli_env(tmp_path), "CASE_TUNE_FAULT": fault}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--results-dir", str(tmp_path / "results"), "--tracking-uri", uri, "--name", NAME]
    first_cmd = cli(
        "--space",
        "case",
        "--data",
        str(search_store),
        "--num-samples",
        "6",
        "--max-epochs",
        "3",
        "--max-concurrent",
        "2",
        "--warm-start",
        *common,
    )
    run_to_sigkill(first_cmd, tmp_path, env, tmp_path / "first.log", timeout=300)
    finished_at_kill = _finished_trial_runs(tmp_path / "mlflow.db")
    # run_finished: exactly one run FINISHED, the kill right after it; trial_complete: the
    # first trial completed in Tune's eyes, but its run is not FINISHED before Tune saved.
    assert finished_at_kill == (1 if fault == "run_finished" else 0)

    before = {
        r.data.tags["case_tune.trial_id"]: r
        for r in mlflow_runs(uri, kind="trial")
        if r.info.status == "FINISHED"
    }
    assert len(before) == finished_at_kill
    history_before = {
        tid: metric_history(uri, r.info.run_id, "val_macro_f1") for tid, r in before.items()
    }

    second = subprocess.run(
        cli("--resume", *common),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"python -m search.finalize --sweep {NAME}" in second.stdout

    sweeps = mlflow_runs(uri, kind="sweep")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    runs = mlflow_runs(uri, kind="trial")
    ids = [r.data.tags["case_tune.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 6, ids  # one live run per Tune trial, no duplicates
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_id = {r.data.tags["case_tune.trial_id"]: r for r in runs}
    for tid, old in before.items():
        # Not rerun: the same run, with the same history, not a replacement.
        assert by_id[tid].info.run_id == old.info.run_id
        assert metric_history(uri, old.info.run_id, "val_macro_f1") == history_before[tid]

    manifest_storage = journal_spec(tmp_path / "optuna.journal")
    study = load_study(manifest_storage, NAME)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states
    finished = sum(r.info.status == "FINISHED" for r in runs)
    assert states.count("COMPLETE") == finished
    rows = (tmp_path / "results" / NAME / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6
