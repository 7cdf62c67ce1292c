"""A sweep whose driver is SIGKILLed at any of its fault points and resumed decides exactly as
the uninterrupted sweep (issue 21): the same trials.csv (config, epochs run, status, every
metric; ids aside), in reproducible mode, with TPE past its start-up trials and ASHA stopping
trials, for a plain sweep and for --folds 3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from search.ledger import journal_spec, load_study
from search.run import run_sweep
from search.settings import parse_settings
from tests.search_helpers import (
    TINY_SPACE,
    cli_env,
    mlflow_runs,
    ray_runtime,  # noqa: F401 - fixture
    read_trials_csv,
    run_to_sigkill,
    search_store,  # noqa: F401 - fixture
    sweep_decisions,
    tiny_settings,
)

SPACE = TINY_SPACE
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


@pytest.fixture(scope="module")
def whole(tmp_path_factory, search_store, ray_runtime):  # noqa: F811
    """The uninterrupted sweeps' decisions, by --folds."""
    out = {}
    for folds in (1, 3):
        tmp = tmp_path_factory.mktemp(f"whole{folds}")
        settings = tiny_settings(tmp, search_store, "whole", folds=folds, **SWEEP)
        run_sweep(settings, space=SPACE, quiet=True)
        out[folds] = sweep_decisions(settings.sweep_dir)
        statuses = [r["status"] for r in read_trials_csv(settings.sweep_dir / "trials.csv")]
        assert "stopped_early" in statuses  # ASHA decided something worth comparing
    return out


def _killed_driver(tmp: Path, store: Path, fault: str, folds: int) -> str:
    args = {
        "tmp": str(tmp),
        "store": str(store),
        "name": "cut",
        "sweep": {**SWEEP, "folds": folds},
        "space": SPACE,
    }
    cmd = [sys.executable, "-c", DRIVER, json.dumps(args)]
    env = {**cli_env(tmp), "CASE_TUNE_FAULT": fault}
    return run_to_sigkill(cmd, tmp, env, tmp / "killed.log", timeout=400)


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
    storage = journal_spec(tmp_path / "optuna.journal")
    left = load_study(storage, "cut").trials
    assert len(left) < 6 and "RUNNING" in [t.state.name for t in left]  # killed mid-sweep
    if fault.startswith("trial_suggested"):
        assert left[-1].number == 3 and left[-1].state.name == "RUNNING"
    settings = parse_settings(
        ["--name", "cut", "--resume", "--results-dir", str(tmp_path / "results")], cwd=tmp_path
    )
    settings.storage_path = str(tmp_path / "ray_results")
    outcome = run_sweep(settings, quiet=True)
    assert outcome.num_trials == 6 and not outcome.interrupted
    assert sweep_decisions(settings.sweep_dir) == whole[folds]
    # The ledger and MLflow end clean: nothing RUNNING, one run per trial number.
    study = load_study(settings.optuna_storage, "cut")
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state.is_finished() for t in study.trials)
    runs = mlflow_runs(settings.tracking_uri, kind="trial")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    numbers = sorted(int(r.data.tags["case_tune.trial_number"]) for r in runs)
    assert numbers == list(range(6)), numbers
