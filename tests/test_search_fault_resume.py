"""A sweep whose driver is SIGKILLed at any of its fault points and resumed decides exactly as
the uninterrupted sweep (issue 21): the same trials.csv (config, epochs run, status, every
metric; ids aside), in reproducible mode, with TPE past its start-up trials and ASHA stopping
trials, for a plain sweep and for --folds 3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from search.run import run_sweep
from search.settings import parse_settings
from tests.search_helpers import (
    FAST_MODELS,
    cli_env,
    mlflow_runs,
    ray_runtime,  # noqa: F401 - fixture
    read_trials_csv,
    search_store,  # noqa: F401 - fixture
    tiny_settings,
)

SPACE = {
    "params": {"model": {"choice": FAST_MODELS}, "lr": {"loguniform": [1e-3, 5e-3]}},
    "fixed": {"hidden": 32, "faithful": False, "audio_frames": 32},
}
SWEEP = dict(
    num_samples=6,
    max_epochs=3,
    grace_period=1,
    reduction_factor=2,
    warm_start=False,
    startup_trials=3,
)
# In-process: the sweep a killed driver runs, from its settings as JSON.
DRIVER = """
import json, sys
from pathlib import Path
from search.run import run_sweep
from tests.search_helpers import tiny_settings
a = json.loads(sys.argv[1])
s = tiny_settings(Path(a["tmp"]), Path(a["store"]), a["name"], **a["sweep"])
run_sweep(s, space=a["space"], quiet=True)
"""


def decisions(sweep_dir: Path) -> list[tuple]:
    """trials.csv without ids: config, epochs run, status, every metric."""
    rows = read_trials_csv(sweep_dir / "trials.csv")
    drop = {"trial_id", "mlflow_run_id"}
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in drop)) for r in rows)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, search_store, ray_runtime):  # noqa: F811
    """The uninterrupted sweeps' decisions, by --folds."""
    out = {}
    for folds in (1, 3):
        tmp = tmp_path_factory.mktemp(f"whole{folds}")
        settings = tiny_settings(tmp, search_store, "whole", folds=folds, **SWEEP)
        run_sweep(settings, space=SPACE, quiet=True)
        out[folds] = decisions(settings.sweep_dir)
        statuses = [r["status"] for r in read_trials_csv(settings.sweep_dir / "trials.csv")]
        assert "stopped_early" in statuses  # ASHA decided something worth comparing
    return out


def _killed_driver(tmp: Path, store: Path, fault: str, folds: int) -> str:
    env = {**cli_env(tmp), "CASE_TUNE_FAULT": fault}
    args = {
        "tmp": str(tmp),
        "store": str(store),
        "name": "cut",
        "sweep": {**SWEEP, "folds": folds},
        "space": SPACE,
    }
    log = tmp / "killed.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(args)],
            cwd=tmp,
            env=env,
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            proc.wait(timeout=400)
        finally:
            # The Ray runtime the driver started shares its session: kill what is left.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "folds"),
    [
        ("trial_suggested:3", 1),  # the study asked trial 3; Tune never saved it
        ("driver_result:2:2", 1),  # trial 2's epoch 2 arrived; trial 3 mid-epoch
        ("trial_complete", 1),  # a trial complete in Tune, not yet saved
        ("run_finished", 1),  # its MLflow run just FINISHED
        ("driver_result:2:2", 3),
    ],
)
def test_a_resumed_sweep_equals_the_uninterrupted_one(
    tmp_path: Path,
    search_store: Path,  # noqa: F811
    whole: dict,
    fault: str,
    folds: int,
) -> None:
    _killed_driver(tmp_path, search_store, fault, folds)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    left = optuna.load_study(study_name="cut", storage=storage).trials
    assert len(left) < 6 and "RUNNING" in [t.state.name for t in left]  # killed mid-sweep
    if fault.startswith("trial_suggested"):
        assert left[-1].number == 3 and left[-1].state.name == "RUNNING"
    settings = parse_settings(
        ["--name", "cut", "--resume", "--results-dir", str(tmp_path / "results")], cwd=tmp_path
    )
    settings.storage_path = str(tmp_path / "ray_results")
    outcome = run_sweep(settings, quiet=True)
    assert outcome.num_trials == 6 and not outcome.interrupted
    assert decisions(settings.sweep_dir) == whole[folds]
    # The ledger and MLflow end clean: nothing RUNNING, one run per trial number.
    study = optuna.load_study(study_name="cut", storage=settings.optuna_storage)
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state.is_finished() for t in study.trials)
    runs = mlflow_runs(settings.tracking_uri, kind="trial")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    numbers = sorted(int(r.data.tags["case_tune.trial_number"]) for r in runs)
    assert numbers == list(range(6)), numbers
