"""Overhead of the search machinery: the same fixed trials through `search.run` (Ray Tune,
Optuna, the driver's MLflow callback, results files) vs `models.train.train` in a plain loop.

    python bench/bench_search_overhead.py [--configs 6] [--epochs 5]

Both sides run one trial at a time on one thread, so the ratio is the machinery's own cost.
Ray's start-up (`ray.init`) is reported separately: a sweep pays it once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402

CONFIGS = [
    {"model": "case-attention", "lr": 1e-3, "hidden": 256, "batch_size": 64},
    {"model": "case-concat-attention", "lr": 3e-4, "hidden": 128, "batch_size": 32},
    {"model": "concat", "lr": 1e-3, "hidden": 256, "batch_size": 64},
    {"model": "case-attention", "lr": 2e-5, "hidden": 384, "batch_size": 128},
    {"model": "text-only", "lr": 1e-3, "hidden": 256, "batch_size": 64},
    {"model": "speech-only", "lr": 1e-3, "hidden": 256, "batch_size": 64},
]


def plain_loop(store_path: Path, configs: list[dict], epochs: int) -> float:
    import torch

    from data_prep.store import FeatureStore
    from models.config import TrainConfig
    from models.train import train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    store = FeatureStore.open(store_path, sealed=("test",))
    for cfg in configs:
        train(
            TrainConfig.from_dict({**cfg, "epochs": epochs, "seed": 0}),
            store,
            eval_splits=("val",),
            on_epoch=lambda e, m: False,
        )
    return time.perf_counter() - t0


def through_search(store_path: Path, configs: list[dict], epochs: int, tmp: Path) -> dict:
    from search.local_ray import start_local_ray
    from search.run import ray_env_defaults

    ray_env_defaults()
    import ray

    from search.run import run_sweep
    from search.settings import parse_settings

    t0 = time.perf_counter()
    start_local_ray(num_cpus=2, logging_level="WARNING")
    t_init = time.perf_counter() - t0
    keys = sorted({k for c in configs for k in c})
    space = {
        "params": {k: {"choice": sorted({c[k] for c in configs}, key=str)} for k in keys},
        "fixed": {},
    }
    settings = parse_settings(
        [
            "--space",
            "case",
            "--data",
            str(store_path),
            "--name",
            "overhead",
            "--num-samples",
            str(len(configs)),
            "--max-epochs",
            str(epochs),
            "--max-concurrent",
            "1",
            "--cpus-per-trial",
            "1",
            "--results-dir",
            str(tmp / "results"),
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
        ],
        cwd=tmp,
    )
    settings.storage_path = str(tmp / "ray_results")
    settings.scheduler = "fifo"  # every trial runs all its epochs, as in the loop
    t1 = time.perf_counter()
    outcome = run_sweep(settings, space=space, points=configs, quiet=True)
    t_sweep = time.perf_counter() - t1
    ray.shutdown()
    assert outcome.num_trials == len(configs) and outcome.num_failed == 0
    return {"init": t_init, "sweep": t_sweep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--data", default=None, help="feature store (default: the demo store)")
    args = p.parse_args(argv)
    from data_prep.prepare import prepare_demo

    store = Path(args.data) if args.data else Path(prepare_demo())
    configs = CONFIGS[: args.configs]
    loop = plain_loop(store, configs, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        s = through_search(store, configs, args.epochs, Path(tmp))
    ratio = s["sweep"] / loop
    body = (
        "## Search overhead (`bench/bench_search_overhead.py`)\n\n"
        f"{len(configs)} fixed configs x {args.epochs} epochs on the demo store, one trial at a "
        "time on one thread; FIFO (no early stopping).\n\n"
        "| | seconds |\n|---|---|\n"
        f"| plain loop over `models.train.train` | {loop:.1f} |\n"
        f"| `search.run` machinery (Tune + Optuna sqlite + MLflow callback + results files) "
        f"| {s['sweep']:.1f} |\n"
        f"| Ray start-up (`ray.init`, paid once per sweep, not in the ratio) | {s['init']:.1f} |\n\n"
        f"**Ratio search / loop: {ratio:.2f}** (target <= 1.20); with Ray start-up "
        f"{(s['sweep'] + s['init']) / loop:.2f}.\n"
    )
    publish("search_overhead", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
