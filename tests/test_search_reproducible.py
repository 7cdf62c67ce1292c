"""Two sweeps with the same seed give the same trials (configs, epochs run, metrics) and the
same best config, with 2 trials running at once; another seed gives other trials (issue 13).

Real Ray Tune, Optuna (TPE after 2 random trials, so later suggestions depend on results)
and ASHA's rule at rungs 1 and 2 of 4 epochs, so early stopping decides something."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.run import run_sweep
from tests.search_helpers import (
    FAST_MODELS,
    ray_runtime,  # noqa: F401 - fixture
    read_trials_csv,
    search_store,  # noqa: F401 - fixture
    tiny_settings,
)

SPACE = {
    "params": {
        "model": {"choice": FAST_MODELS},
        "lr": {"loguniform": [1e-3, 3e-2]},
        "dropout": {"uniform": [0.0, 0.5]},
        "batch_size": {"choice": [8, 16]},
    },
    "fixed": {"hidden": 32, "faithful": False},
}
RANDOM_IDS = ("trial_id", "mlflow_run_id")  # Tune's and MLflow's ids are fresh every run


def sweep(tmp: Path, store: Path, name: str, seed: int) -> tuple[list[dict], dict]:
    settings = tiny_settings(
        tmp,
        store,
        name,
        seed=seed,
        warm_start=False,
        num_samples=6,
        max_epochs=4,
        grace_period=1,
        reduction_factor=2,
        startup_trials=2,
        reproducible=True,
    )
    assert settings.max_concurrent == 2
    outcome = run_sweep(settings, space=SPACE, quiet=True)
    assert outcome.num_trials == 6 and not outcome.interrupted
    rows = read_trials_csv(settings.sweep_dir / "trials.csv")
    best = {k: v for k, v in outcome.best.items() if k not in ("trial_id", "run_id")}
    return [{k: v for k, v in r.items() if k not in RANDOM_IDS} for r in rows], best


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, search_store, ray_runtime):  # noqa: F811
    tmp = tmp_path_factory.mktemp("reproducible")
    return {
        "a": sweep(tmp, search_store, "same-a", seed=4),
        "b": sweep(tmp, search_store, "same-b", seed=4),
        "other": sweep(tmp, search_store, "other", seed=5),
    }


def test_same_seed_gives_the_same_trials_and_best(sweeps) -> None:
    (rows_a, best_a), (rows_b, best_b) = sweeps["a"], sweeps["b"]
    assert rows_a == rows_b
    assert best_a == best_b
    epochs = [int(r["epochs_run"]) for r in rows_a]
    assert min(epochs) < 4 and max(epochs) == 4  # ASHA stopped some trials, not all


def test_another_seed_gives_other_trials(sweeps) -> None:
    configs = [{k: r[k] for k in ("model", "lr", "dropout")} for r in sweeps["a"][0]]
    others = [{k: r[k] for k in ("model", "lr", "dropout")} for r in sweeps["other"][0]]
    assert configs != others
