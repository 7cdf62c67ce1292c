"""Training is reproducible across processes on CPU: a fresh process, a Ray actor reused after
other trials, and a Ray task give the same per-epoch history bit for bit (issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from data_prep.store import FeatureStore
from models.repro import DEFAULT_THREADS
from models.train import train
from tests.search_helpers import REPO, ray_runtime, search_store  # noqa: F401 - fixtures

KEYS = ("train_loss", "val_loss", "val_macro_f1", "val_macro_auroc")
EPOCHS = 4
A = {
    "model": "case-attention",
    "hidden": 64,
    "lr": 3e-3,
    "batch_size": 16,
    "epochs": EPOCHS,
    "seed": 5,
    "faithful": False,
    "contrastive": "infonce",
    "dropout": 0.3,
}
B = {
    "model": "case-concat-attention",
    "hidden": 32,
    "lr": 1e-2,
    "batch_size": 8,
    "epochs": EPOCHS,
    "seed": 1,
    "faithful": False,
    "loss": "focal",
}

FRESH = """
import json, sys
from data_prep.store import FeatureStore
from models.train import train
r = train(json.loads(sys.argv[2]), FeatureStore.open(sys.argv[1], sealed=("test",)))
print(json.dumps([[m[k] for k in {keys!r}] for m in r.history]))
"""


def history(rows: list[dict[str, float]]) -> list[list[float]]:
    return [[float(m[k]) for k in KEYS] for m in rows]


def fresh_process(store: Path, config: dict) -> list[list[float]]:
    """The history of ``config`` trained in a new Python process with its default threads."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("OMP_NUM_THREADS", None)  # the process starts with one thread per core
    out = subprocess.run(
        [sys.executable, "-c", FRESH.format(keys=KEYS), str(store), json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_threads_are_pinned_reported_and_restored(search_store) -> None:  # noqa: F811
    store = FeatureStore.open(search_store, sealed=("test",))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train({**A, "epochs": 1}, store)
        assert torch.get_num_threads() == 2  # the caller's setting survives
    finally:
        torch.set_num_threads(before)
    assert result.history[0]["torch_threads"] == DEFAULT_THREADS
    assert result.numerics["torch_threads"] == DEFAULT_THREADS
    assert result.numerics["device"] == "cpu" and result.numerics["deterministic"] is True
    assert result.numerics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_reused_actor_and_task_equal_a_fresh_process(
    search_store,  # noqa: F811
    ray_runtime,  # noqa: F811
    tmp_path,
) -> None:
    """Trials B, A, B, A run one after another in one reused actor (through the search's own
    trial function); finalize's Ray task trains A too. Each equals a fresh process's history."""
    from ray import tune

    from search.trainable import run_trial, unpacked

    ray = ray_runtime
    configs = [B, A, B, A]
    path = str(search_store)

    def case_trial(config: dict) -> None:
        run_trial(configs[config["i"]], path, threads=1)

    results = tune.Tuner(
        tune.with_resources(case_trial, {"cpu": 1}),
        param_space={"i": tune.grid_search(list(range(len(configs))))},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
    ).fit()
    assert not results.errors
    by_index: dict[int, list[list[float]]] = {}
    pids = set()
    for r in results:
        df = r.metrics_dataframe.sort_values("training_iteration")
        rows = [unpacked(row) for row in df.to_dict("records")]  # Tune got them packed
        by_index[r.config["i"]] = [[float(row[k]) for k in KEYS] for row in rows]
        pids.add(int(df["pid"].iloc[0]))
    assert len(pids) == 1  # one actor ran all four trials
    assert all(len(h) == EPOCHS for h in by_index.values())

    # finalize's own Ray task (it also scores test at its chosen epochs, after training)
    from search.finalize import _unit_task

    unit = ray.get(ray.remote(_unit_task).options(num_cpus=1).remote({"config": A}, path, 1, "cpu"))
    in_task = history(unit["history"])
    assert fresh_process(search_store, A) == by_index[1] == by_index[3] == in_task
    assert fresh_process(search_store, B) == by_index[0] == by_index[2]
