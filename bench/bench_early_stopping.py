"""What reproducible mode's early stopping costs the first --max-concurrent trials.

    python -m bench.bench_early_stopping [--seeds 0 1] [--num-samples 24] [--max-concurrent 8]

No trial is --max-concurrent (W) older than the first W trials. Until issue 21 they had no peer
at any rung and ASHA could never stop them; now they are judged against each other, each
waiting at a rung for those still on their way (search/ordered.py). Each seed runs the
README's demo sweep (`--space case`, reproducible, no warm starts) with ``--max-concurrent W``.
From the sweep's ledger (the Optuna study's rung values) and MLflow's epochs it reports the
epochs the sweep trained and the epochs the first W trials trained beyond what ASHA's rule
would have let them train had every other trial of the sweep been their peer at each rung
(the full-information counterfactual: stop at the first rung whose value is below the
``1 - 1/rf`` quantile of the other trials' values there). That excess, as a share of the
sweep's epochs, is the cost; issue 21 asks for a different rule if it is above a fifth.

The counterfactual is an estimate: with those trials stopped, TPE would have seen other
results and suggested other later trials.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402


def first_stop(values: dict[int, float], peers: dict[int, list[float]], rf: float) -> int | None:
    """The first rung (milestone) at which a trial with rung ``values`` is below ASHA's
    cutoff over ``peers`` (milestone -> the other trials' values), None if at none."""
    from search.ordered import ordered_cutoff

    for m in sorted(values):
        cutoff = ordered_cutoff(peers.get(m, []), rf)
        if cutoff is not None and values[m] < cutoff:
            return m
    return None


def cost(settings: Any, parent: str, window: int) -> dict[str, float]:
    """Epochs of the sweep, and the never-stoppable trials' excess over the counterfactual."""
    from search import results, tracking
    from search.ledger import load_study
    from search.ordered import ledger_rungs, rung_milestones

    client = tracking.client_for(settings.tracking_uri)
    exp_id = tracking.experiment_id(client, settings.tracking_uri)
    records = results.collect_trials(client, exp_id, parent)
    epochs = {r.number: r.epochs_run for r in records}
    rungs_at = rung_milestones(
        settings.grace_period, settings.max_epochs, settings.reduction_factor
    )
    milestones = [m for m in rungs_at if m < settings.max_epochs]
    study = load_study(settings.optuna_storage, settings.name)
    rungs = ledger_rungs(study, milestones)
    excess = stoppable = 0
    for k in range(window):
        values = {m: rungs[m][k] for m in milestones if k in rungs[m]}
        peers = {m: [v for j, v in rungs[m].items() if j != k] for m in milestones}
        stop = first_stop(values, peers, settings.reduction_factor)
        if stop is not None:
            stoppable += 1
            excess += epochs[k] - stop
    total = sum(epochs.values())
    return {
        "epochs": total,
        "unstoppable_epochs": sum(epochs[k] for k in range(window)),
        "stoppable": stoppable,
        "excess": excess,
        "cost": excess / total,
        "stopped": sum(r.status == "stopped_early" for r in records),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--num-samples", type=int, default=24)
    ap.add_argument("--max-concurrent", type=int, default=8)
    ap.add_argument("--note", default="", help="a sentence added to the report's header")
    ap.add_argument("--no-write", action="store_true", help="print only, leave bench.md")
    args = ap.parse_args(argv)

    from bench.common import bench_sweep
    from data_prep.prepare import prepare_demo

    store = Path(prepare_demo())
    rows = []
    with tempfile.TemporaryDirectory(prefix="case-tune-es-") as tmp:
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            work.mkdir()
            settings, outcome, wall = bench_sweep(
                store,
                work,
                f"es{seed}",
                searcher="tpe",
                scheduler="asha",
                seed=seed,
                num_samples=args.num_samples,
                max_concurrent=args.max_concurrent,
                no_warm_start=True,
            )
            row = cost(settings, outcome.parent_run_id, args.max_concurrent)
            row.update(seed=seed, wall=wall)
            print(f"seed {seed}: {row}", flush=True)
            rows.append(row)
    w = args.max_concurrent
    lines = [
        "## Early stopping in reproducible mode (`bench/bench_early_stopping.py`)",
        "",
        f"{args.num_samples} trials of the demo sweep (`--space case`, 20 epochs, ASHA grace 3,"
        f" rf 3), reproducible, `--max-concurrent {w}`, no warm starts. Excess = epochs the"
        f" first {w} trials (no trial is {w} older than they are) trained beyond the first"
        " rung where ASHA, given every other trial of the sweep as peers, would have stopped"
        f" them. {args.note}".rstrip(),
        "",
        "| seed | sweep epochs | epochs of the first W | of them stoppable | excess epochs "
        "| cost (excess / sweep epochs) | trials stopped early | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['epochs']} | {r['unstoppable_epochs']} | {r['stoppable']} / {w} "
            f"| {r['excess']} | {r['cost']:.1%} | {r['stopped']} | {r['wall']:.0f} |"
        )
    costs = [r["cost"] for r in rows]
    spread = f" (sd {statistics.stdev(costs):.1%})" if len(costs) > 1 else ""
    lines += ["", f"Mean cost {statistics.mean(costs):.1%}{spread}; issue 21's limit: 20%."]
    publish("early-stopping", "\n".join(lines), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
