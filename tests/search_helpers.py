"""Shared pieces of the search tests: a store, one Ray runtime, tiny sweep settings, and
independent reads of what MLflow and the results files hold."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

REPO = Path(__file__).resolve().parent.parent

# Fast heads only, so a tiny sweep takes seconds (case-compressing is ~7x slower per epoch).
FAST_MODELS = ["case-attention", "case-concat-attention"]
# The space of the equivalence tests (extension, resume): two fast heads and one float.
TINY_SPACE = {
    "params": {"model": {"choice": FAST_MODELS}, "lr": {"loguniform": [1e-3, 5e-3]}},
    "fixed": {"hidden": 32, "faithful": False, "audio_frames": 32},
}


@pytest.fixture(scope="session")
def search_store(request: pytest.FixtureRequest) -> Path:
    """The demo feature store (the project's `demo_store` fixture when it exists)."""
    try:
        store = request.getfixturevalue("demo_store")
    except pytest.FixtureLookupError:
        from data_prep.prepare import prepare_demo

        store = prepare_demo()
    return Path(getattr(store, "path", store))


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime shared by a test module (ray.init costs 3-4 s), with the
    environment `search.run` gives Ray (how often Tune saves its state, among others)."""
    from search.run import ray_env_defaults

    ray_env_defaults()
    import ray

    started = not ray.is_initialized()
    if started:
        from search.local_ray import start_local_ray

        # Never another Ray runtime running on this machine; on loopback only, as a sweep's.
        start_local_ray(num_cpus=2, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


def tiny_settings(tmp: Path, store: Path, name: str, **overrides: Any):
    """Settings of a tiny sweep whose every file lives under ``tmp``."""
    from search.settings import parse_settings, sweep_argv

    argv = sweep_argv(store, name, tmp, num_samples=4, max_epochs=3, max_concurrent=2)
    settings = parse_settings(argv, cwd=tmp)
    settings.storage_path = str(tmp / "ray_results")
    for k, v in overrides.items():
        setattr(settings, k, v)
    return settings


@contextlib.contextmanager
def case_tune_home(home: Path) -> Iterator[Path]:
    """$CASE_TUNE_HOME is ``home`` inside the block and as it was after (module-scoped
    fixtures cannot use ``monkeypatch``)."""
    old = os.environ.get("CASE_TUNE_HOME")
    os.environ["CASE_TUNE_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("CASE_TUNE_HOME", None)
        else:
            os.environ["CASE_TUNE_HOME"] = old


def run_tiny_sweep(
    tmp: Path, store: Path, name: str, *, fixed: dict[str, Any] | None = None, **flags: Any
):
    """Run a sweep of ``store`` in this process, quietly: results and MLflow under ``tmp``,
    Tune's state under $CASE_TUNE_HOME (see `case_tune_home`). ``flags``: as
    `search.settings.sweep_argv`'s; ``fixed``: extra fixed config values."""
    from search.run import run_sweep
    from search.settings import parse_settings, sweep_argv

    settings = parse_settings(sweep_argv(store, name, tmp, **flags), cwd=tmp)
    if fixed is not None:
        settings.fixed = fixed
    return run_sweep(settings, quiet=True)


def cli_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CASE_TUNE_HOME=str(tmp / "home"),
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.run", *args]


def mlflow_runs(tracking_uri: str, *, kind: str | None = None, deleted: bool = False) -> list:
    """Every run in the store (optionally of one case_tune.kind), read independently."""
    client = MlflowClient(tracking_uri)
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    exps = client.search_experiments(view_type=ViewType.ALL)
    flt = f"tags.`case_tune.kind` = '{kind}'" if kind else ""
    return list(client.search_runs([e.experiment_id for e in exps], flt, run_view_type=view))


def metric_history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


def read_trials_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def sweep_decisions(sweep_dir: Path) -> list[tuple]:
    """trials.csv without Tune's and MLflow's ids (fresh every run): config, epochs run,
    status, every metric; what equal sweeps must share."""
    rows = read_trials_csv(sweep_dir / "trials.csv")
    drop = {"trial_id", "mlflow_run_id"}
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in drop)) for r in rows)


def run_to_sigkill(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float
) -> str:
    """Run a driver armed with a fault point until it SIGKILLs itself; its output. The Ray
    runtime it started shares its session: whatever is left of it is killed too."""
    import signal
    import subprocess

    with open(log, "w") as sink:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    return out
