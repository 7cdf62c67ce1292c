"""Search efficiency: Optuna TPE + ASHA vs random search without early stopping, at an equal
budget in training epochs, over several seeds, on the demo store.

    python bench/bench_search_efficiency.py [--seeds 0 1 2] [--random-trials 8] [--epochs 20]

Random search runs `random-trials` trials of `epochs` epochs each (the budget B). TPE + ASHA
gets 3x as many trials and its curve is cut at the same B epochs. Each epoch reported by any
trial counts one; epochs are ordered by the time MLflow recorded them. The score is the
number of epochs each method needs before its best validation macro-F1 so far reaches 95% of
the best that random search found within B; the ratio random / TPE+ASHA is the speed-up
(target >= 3x). Warm starts are off in both arms so neither starts from a given config.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402


def epoch_curve(tracking_uri: str, parent_run_id: str) -> list[float]:
    """Best-so-far val macro-F1 after each epoch reported in the sweep, in time order."""
    from search import tracking

    client = tracking.client_for(tracking_uri)
    exp_id = tracking.experiment_id(client, tracking_uri)
    points = []
    for run in tracking.trial_runs(client, exp_id, parent_run_id):
        for m in client.get_metric_history(run.info.run_id, "val_macro_f1"):
            points.append((m.timestamp, m.step, m.value))
    points.sort()
    best, curve = -math.inf, []
    for _, _, value in points:
        best = max(best, value)
        curve.append(best)
    return curve


def epochs_to(curve: list[float], target: float, budget: int) -> int | None:
    for i, v in enumerate(curve[:budget], 1):
        if v >= target:
            return i
    return None


def one_arm(
    store: Path,
    tmp: Path,
    name: str,
    *,
    seed: int,
    searcher: str,
    scheduler: str,
    trials: int,
    epochs: int,
    concurrent: int,
) -> tuple[list[float], float]:
    from bench.common import bench_sweep

    settings, outcome, seconds = bench_sweep(
        store,
        tmp,
        name,
        searcher=searcher,
        scheduler=scheduler,
        seed=seed,
        num_samples=trials,
        max_epochs=epochs,
        max_concurrent=concurrent,
        no_warm_start=True,
    )
    return epoch_curve(settings.tracking_uri, outcome.parent_run_id), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--random-trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--data", default=None)
    args = p.parse_args(argv)
    from search.local_ray import start_local_ray
    from search.run import ray_env_defaults

    ray_env_defaults()
    import ray

    from data_prep.prepare import prepare_demo

    store = Path(args.data) if args.data else Path(prepare_demo())
    budget = args.random_trials * args.epochs
    start_local_ray(num_cpus=os.cpu_count(), logging_level="WARNING")
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for seed in args.seeds:
            rand, t_rand = one_arm(
                store,
                tmp,
                f"random-{seed}",
                seed=seed,
                searcher="random",
                scheduler="fifo",
                trials=args.random_trials,
                epochs=args.epochs,
                concurrent=args.concurrent,
            )
            tpe, t_tpe = one_arm(
                store,
                tmp,
                f"tpe-asha-{seed}",
                seed=seed,
                searcher="tpe",
                scheduler="asha",
                trials=3 * args.random_trials,
                epochs=args.epochs,
                concurrent=args.concurrent,
            )
            best_random = rand[min(budget, len(rand)) - 1]
            target = 0.95 * best_random
            k_rand = epochs_to(rand, target, budget)
            k_tpe = epochs_to(tpe, target, budget)
            ratio = (k_rand / k_tpe) if k_tpe else 0.0
            ratios.append(ratio)
            rows.append(
                f"| {seed} | {best_random:.4f} | {max(tpe[:budget]):.4f} | {k_rand} | "
                f"{k_tpe if k_tpe else f'not within {budget}'} | {ratio:.2f}x | "
                f"{len(rand)} / {len(tpe)} | {t_rand:.0f} / {t_tpe:.0f} |"
            )
            print(rows[-1], flush=True)
    ray.shutdown()
    mean = sum(ratios) / len(ratios)
    median = statistics.median(ratios)
    from search.settings import GRACE_PERIOD, REDUCTION_FACTOR, STARTUP_TRIALS

    body = (
        "## Search efficiency (`bench/bench_search_efficiency.py`)\n\n"
        f"`case` space on the demo store. Random search (no early stopping): "
        f"{args.random_trials} trials x {args.epochs} epochs = budget {budget} epochs. "
        f"TPE + ASHA as `search.run` runs them (TPE with {STARTUP_TRIALS} random start-up "
        f"trials; ASHA grace {GRACE_PERIOD}, rf {REDUCTION_FACTOR}; exact val macro-F1 ties "
        f"broken by val macro-AUROC): {3 * args.random_trials} trials, curve cut at the same "
        f"budget. {args.concurrent} trials at a time; no warm starts. A seed whose TPE + ASHA "
        "curve never reaches the target within the budget scores 0.\n\n"
        "| seed | best val macro-F1, random | best, TPE+ASHA (same budget) | epochs to 95% of "
        "random's best: random | TPE+ASHA | speed-up | epochs run (random / TPE) "
        "| wall s (random / TPE) |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\n**Mean speed-up {mean:.2f}x, median {median:.2f}x** (target >= 3x; per seed "
        + ", ".join(f"{r:.2f}x" for r in ratios)
        + ").\n"
    )
    publish("search_efficiency", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
