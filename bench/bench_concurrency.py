"""Concurrency of the search: the same fixed trials run 1 vs 2 at a time, and the per-trial
fixed cost with and without actor reuse.

    python bench/bench_concurrency.py [--configs 6] [--epochs 5,15] [--reps 2] [--data STORE]

Every run goes through `search.run.run_sweep` (Ray Tune + Optuna + the driver's MLflow
callback + results files) with the same fixed configs (FIFO, no early stopping), one CPU and
one torch thread per trial, on one Ray runtime started once (its start-up is not counted).
A driver-side Tune callback timestamps each trial's start, first reported epoch and end.
Runs of the two settings alternate, so machine load drifts into both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402

# A fast head (case-attention trims padding per batch) at a few sizes and learning rates.
CONFIGS = [
    {"model": "case-attention", "lr": 1e-3, "hidden": 128, "batch_size": 32},
    {"model": "case-attention", "lr": 3e-4, "hidden": 256, "batch_size": 64},
    {"model": "case-attention", "lr": 3e-3, "hidden": 128, "batch_size": 64},
    {"model": "case-attention", "lr": 1e-4, "hidden": 256, "batch_size": 32},
    {"model": "case-attention", "lr": 1e-3, "hidden": 64, "batch_size": 32},
    {"model": "case-attention", "lr": 3e-4, "hidden": 64, "batch_size": 64},
]
TARGET = 1.6


def _timing_callback(log: dict[str, dict[str, Any]]) -> Any:
    from ray.tune import Callback

    class TrialTimes(Callback):
        """Driver clock at each trial's start, first result and end; per-epoch seconds."""

        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            log.setdefault(trial.trial_id, {"epochs": []})["start"] = time.perf_counter()

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            rec = log[trial.trial_id]
            rec.setdefault("first", time.perf_counter())
            rec["epochs"].append(float(result.get("time_this_iter_s", float("nan"))))

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            log[trial.trial_id]["end"] = time.perf_counter()

    return TrialTimes()


def run_once(
    store: Path, tmp: Path, name: str, epochs: int, *, concurrent: int, reuse: bool
) -> dict[str, Any]:
    import search.run as run_mod
    from search.settings import parse_settings, sweep_argv

    keys = sorted({k for c in CONFIGS for k in c})
    space = {
        "params": {k: {"choice": sorted({c[k] for c in CONFIGS}, key=str)} for k in keys},
        "fixed": {},
    }
    work = tmp / name
    work.mkdir()
    argv = sweep_argv(
        store,
        name,
        work,
        num_samples=len(CONFIGS),
        max_epochs=epochs,
        max_concurrent=concurrent,
        cpus_per_trial=1,
        no_warm_start=True,
    )
    settings = parse_settings(argv, cwd=work)
    settings.storage_path = str(work / "ray_results")
    settings.scheduler = "fifo"  # every trial runs all its epochs
    settings.reuse_actors = reuse
    log: dict[str, dict[str, Any]] = {}
    original = run_mod.build_tuner

    def build_tuner(*args: Any, **kwargs: Any) -> Any:
        args[3].append(_timing_callback(log))  # the callbacks list
        return original(*args, **kwargs)

    run_mod.build_tuner = build_tuner
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        outcome = run_mod.run_sweep(settings, space=space, points=CONFIGS, quiet=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        run_mod.build_tuner = original
    assert outcome.num_trials == len(CONFIGS) and outcome.num_failed == 0, outcome
    recs = list(log.values())
    assert len(recs) == len(CONFIGS) and all("end" in r for r in recs)
    span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    later = [e for r in recs for e in r["epochs"][1:]]
    return {
        "wall": wall,
        "driver_cpu": cpu,  # this process: Tune's loop, Optuna, the MLflow callback, results
        "span": span,
        "to_first": [r["first"] - r["start"] for r in recs],
        "epoch": statistics.median(later) if later else float("nan"),
    }


def _fmt(xs: list[float]) -> str:
    return " / ".join(f"{x:.1f}" for x in xs)


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", type=int, default=len(CONFIGS))
    p.add_argument("--epochs", default="5,15", help="epochs per trial, comma-separated")
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions per setting")
    p.add_argument("--data", default=None, help="feature store (default: the demo store)")
    args = p.parse_args(argv)
    del CONFIGS[args.configs :]
    epoch_list = [int(e) for e in args.epochs.split(",")]
    from search.local_ray import start_local_ray
    from search.run import ray_env_defaults

    ray_env_defaults()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from data_prep.prepare import prepare_demo

    store = Path(args.data) if args.data else Path(prepare_demo())
    import ray

    load_start = os.getloadavg()
    start_local_ray(num_cpus=2, logging_level="WARNING")
    # (epochs, trials at once, reuse actors): alternating, then the reuse comparison.
    plan = [(e, c, True) for e in epoch_list for _ in range(args.reps) for c in (1, 2)]
    plan += [(epoch_list[0], 1, False), (epoch_list[0], 1, True)]
    runs: dict[tuple[int, int, bool], list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (epochs, conc, reuse) in enumerate(plan):
                load = os.getloadavg()[0]
                r = run_once(
                    store,
                    Path(tmp),
                    f"e{epochs}-c{conc}-r{int(reuse)}-{i}",
                    epochs,
                    concurrent=conc,
                    reuse=reuse,
                )
                r["load"] = load
                runs.setdefault((epochs, conc, reuse), []).append(r)
                print(
                    f"epochs={epochs} concurrent={conc} reuse={reuse} (load {load:.1f}): "
                    f"span {r['span']:.1f} s, wall {r['wall']:.1f} s, first epoch after "
                    f"{_fmt(r['to_first'])} s",
                    flush=True,
                )
    finally:
        ray.shutdown()
    load_end = os.getloadavg()

    n = len(CONFIGS)
    rows, ratios = [], {}
    for epochs in epoch_list:
        seq = runs[(epochs, 1, True)][: args.reps]  # the alternating runs only
        par = runs[(epochs, 2, True)]
        span = {k: [60 * n / r["span"] for r in v] for k, v in (("1", seq), ("2", par))}
        wall = {k: [60 * n / r["wall"] for r in v] for k, v in (("1", seq), ("2", par))}
        ratios[epochs] = _median_ratio(span["2"], span["1"])
        loads = _fmt([r["load"] for r in seq + par])
        cpu = " / ".join(f"{r['driver_cpu']:.1f}" for r in seq + par)
        rows.append(
            f"| {epochs} | {_fmt(span['1'])} | {_fmt(span['2'])} | **{ratios[epochs]:.2f}x** | "
            f"{_median_ratio(wall['2'], wall['1']):.2f}x | {loads} | {cpu} |"
        )
    e0 = epoch_list[0]
    reuse_on = [x for r in runs[(e0, 1, True)] for x in r["to_first"]]
    reuse_off = [x for r in runs[(e0, 1, False)] for x in r["to_first"]]
    span_on = runs[(e0, 1, True)][-1]["span"]
    span_off = runs[(e0, 1, False)][0]["span"]
    epoch = statistics.median(r["epoch"] for v in runs.values() for r in v)
    best = max(ratios.values())
    verdict = "met" if best >= TARGET else "not met"
    body = (
        "## Concurrency (`bench/bench_concurrency.py`)\n\n"
        f"{n} fixed case-attention configs on the demo store through `search.run.run_sweep` "
        "(FIFO: every trial runs all its epochs), one CPU and one torch thread per trial, one "
        f"Ray runtime (`num_cpus=2`) for all runs; {args.reps} alternating runs per setting "
        f"(figures listed run by run). One epoch takes {epoch:.2f} s (median). Load average "
        f"(1/5/15 min) {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f} at start, "
        f"{load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} at end: the 2 cores were shared "
        "with other jobs, so two trials never had two free cores.\n\n"
        "| epochs / trial | trials/min, 1 at once | trials/min, 2 at once | 2 / 1 (trials' span) "
        "| 2 / 1 (whole `run_sweep`) | 1-min load at each run's start | driver CPU s per run |\n"
        "|---:|---|---|---:|---:|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Target >= {TARGET}x: {verdict} (best {best:.2f}x). The span runs from the first trial's "
        "start to the last trial's end (driver clock); the whole call adds the sweep's own fixed "
        "work (Optuna study, MLflow sweep run, results files and figures). Short trials gain "
        "less: each run starts fresh trial actors, and two at once start two in parallel on "
        "two shared cores. The driver's own CPU time (Tune's loop, Optuna, the MLflow callback "
        "writing every epoch to sqlite, results files; last column, runs in table order) "
        "competes with the trials for the same two cores.\n\n"
        f"**Per-trial fixed cost** ({e0} epochs per trial, 1 at once; driver clock from a trial's "
        "start to its first reported epoch, which includes that epoch):\n\n"
        "| actors | median s | mean s | max s | trials | span of the 6 trials, s |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        f"| reused (`reuse_actors=True`, what `search.run` does) | "
        f"{statistics.median(reuse_on):.2f} | {statistics.mean(reuse_on):.2f} | "
        f"{max(reuse_on):.2f} | {len(reuse_on)} | {span_on:.1f} |\n"
        f"| fresh per trial (`reuse_actors=False`) | {statistics.median(reuse_off):.2f} | "
        f"{statistics.mean(reuse_off):.2f} | {max(reuse_off):.2f} | {len(reuse_off)} | "
        f"{span_off:.1f} |\n\n"
        "A fresh actor starts a Python worker and imports torch and the models for every trial "
        "(and is torn down after it); a reused one pays that once per run (the max), then only "
        "builds the model and reads the split from the store's memory maps.\n"
    )
    publish("concurrency", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
