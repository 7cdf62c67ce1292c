"""Nested cross-validation against the oracle: how far is each test estimate from the truth?

    python -m bench.bench_nested [--seeds 0 1] [--outer-folds 3] [--trials 8] [--max-epochs 10]

The oracle is bench_selection's: 40 fresh demo sessions through the demo store's encoders,
never read by any search or finalize. For each sweep seed, on the demo store:

- **single split**: `search.run` then `search.finalize`; its estimate is the test macro-F1 of
  finalize's best row (by validation; mean over final seeds, chosen epochs), and the truth is
  the oracle macro-F1 of that row's own final runs (mean over seeds);
- **nested**: `search.run --outer-folds K` then `search.finalize`; its estimate is the pooled
  test macro-F1 over every session, and the truth is the mean over folds of the oracle macro-F1
  of each fold's recommended row's final runs (the configs, and the weights, it describes).

Reported per seed and arm: estimate, 95 % interval, oracle, estimate minus oracle; then the
mean absolute gap over seeds. What the user reads off final.md is the estimate; the oracle is
what they would get on new sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_selection import Oracle, final_units, oracle_store
from bench.report import publish


def best_truth(out_dir: Path, oracle: Oracle) -> dict[str, Any]:
    """The best-by-validation row of one finalize: its test estimate, interval and oracle."""
    from search.final_plan import open_store
    from search.final_report import attach_intervals, best_row, build_rows

    state = json.loads((out_dir / "state.json").read_text(encoding="utf-8"))
    units = final_units({"out_dir": str(out_dir)}, oracle)
    rows = build_rows(state["candidates"], units)
    store = open_store(Path(state["store_path"]), state["store_key"])
    sessions = store.table["session"].to_numpy()[store.indices("test")]
    attach_intervals(rows, store.labels("test"), sessions, store.num_classes, store.neutral_index)
    best = best_row(rows)
    return {
        "label": best.label,
        "estimate": statistics.mean(best.chosen["macro_f1"]),
        "ci": best.ci["chosen"]["macro_f1"],
        "oracle": statistics.mean(u["oracle"] for u in best.units),
    }


def sweep_argv(store: Path, tmp: Path, name: str, seed: int, args: argparse.Namespace) -> list:
    from search.settings import sweep_argv as argv_of

    return argv_of(
        store,
        name,
        tmp,
        seed=seed,
        num_samples=args.trials,
        max_epochs=args.max_epochs,
        final_epochs=args.final_epochs,
        max_concurrent=2,
    )


def final_argv(tmp: Path, name: str, args: argparse.Namespace) -> list[str]:
    seeds = [str(s) for s in args.final_seeds]
    return ["--sweep", name, "--results-dir", str(tmp / "results"), "--top-k", str(args.top_k)] + [
        "--seeds",
        *seeds,
    ]


def single(store: Path, tmp: Path, seed: int, args: argparse.Namespace, oracle: Oracle) -> dict:
    from search import finalize as fz
    from search.run import run_sweep
    from search.settings import parse_settings

    name = f"single-s{seed}"
    t0 = time.perf_counter()
    settings = parse_settings(sweep_argv(store, tmp, name, seed, args), cwd=tmp)
    settings.storage_path = str(tmp / "ray_results")  # Tune's state with the rest
    run_sweep(settings, quiet=True)
    fz.finalize(fz.parse_settings(final_argv(tmp, name, args), cwd=tmp), quiet=True)
    out = best_truth(tmp / "results" / name / "final", oracle)
    return {**out, "seconds": time.perf_counter() - t0}


def nested(store: Path, tmp: Path, seed: int, args: argparse.Namespace, oracle: Oracle) -> dict:
    from search import nested as nz
    from search.outer import run_outer
    from search.settings import parse_settings

    name = f"nested-s{seed}"
    t0 = time.perf_counter()
    argv = [*sweep_argv(store, tmp, name, seed, args), "--outer-folds", str(args.outer_folds)]
    settings = parse_settings(argv, cwd=tmp)
    settings.storage_path = str(tmp / "ray_results")
    run_outer(settings, quiet=True)
    outcome = nz.finalize_set(nz.parse_set(final_argv(tmp, name, args), cwd=tmp), quiet=True)
    folds = [
        best_truth(tmp / "results" / nz.fold_name(name, k) / "final", oracle)
        for k in range(args.outer_folds)
    ]
    pooled = outcome.pooled
    return {
        "label": ", ".join(f["label"] for f in folds),
        "estimate": pooled["point"]["macro_f1"],
        "ci": pooled["ci"]["macro_f1"],
        "oracle": statistics.mean(f["oracle"] for f in folds),
        "fold_estimates": [f["estimate"] for f in folds],
        "seconds": time.perf_counter() - t0,
    }


def report(results: list[dict], args: argparse.Namespace) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = [
        "## Nested cross-validation against the oracle (`bench/bench_nested.py`)",
        "",
        f"Demo store, sweep seeds {', '.join(map(str, args.seeds))}; each sweep {args.trials} "
        f"trials of {args.max_epochs} epochs (of a {args.final_epochs}-epoch schedule), finalize "
        f"top-{args.top_k} x final seeds {', '.join(map(str, args.final_seeds))}; nested: "
        f"{args.outer_folds} outer folds, each a sweep of the same size. Oracle: bench_selection's "
        "40 fresh demo sessions (never read by a search or a finalize). *Estimate* is what "
        "final.md reports (test macro-F1 of the recommended row; nested: pooled over every "
        "session); *oracle* is the macro-F1 of the same final runs on the oracle sessions.",
        "",
        "| seed | arm | recommended | estimate | 95 % interval | oracle | estimate - oracle |"
        " minutes |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in results:
        for arm in ("single", "nested"):
            a = r[arm]
            lo, hi = a["ci"]
            lines.append(
                f"| {r['seed']} | {arm} | {a['label']} | {pct(a['estimate'])} | "
                f"[{pct(lo)}, {pct(hi)}] | {pct(a['oracle'])} | "
                f"{100 * (a['estimate'] - a['oracle']):+.1f} | {a['seconds'] / 60:.1f} |"
            )
    gaps = {
        arm: statistics.mean(abs(r[arm]["estimate"] - r[arm]["oracle"]) for r in results)
        for arm in ("single", "nested")
    }
    widths = {
        arm: statistics.mean(r[arm]["ci"][1] - r[arm]["ci"][0] for r in results)
        for arm in ("single", "nested")
    }
    lines += [
        "",
        f"Mean |estimate - oracle| over {len(results)} seeds: single split "
        f"{100 * gaps['single']:.1f} points, nested {100 * gaps['nested']:.1f} points "
        f"(ratio {gaps['single'] / max(gaps['nested'], 1e-9):.2f}x). Mean interval width: "
        f"single {100 * widths['single']:.1f}, nested {100 * widths['nested']:.1f} points.",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--outer-folds", type=int, default=3)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--final-epochs", type=int, default=40)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--final-seeds", type=int, nargs="+", default=[0, 42])
    p.add_argument("--workdir", help="keep the sweeps here (default: a temporary folder)")
    p.add_argument("--note", default="")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from data_prep.prepare import prepare_demo

    store = Path(prepare_demo())
    oracle = Oracle(oracle_store(store))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-nested-") as tmp_name:
        root = Path(args.workdir or tmp_name)
        for seed in args.seeds:
            tmp = root / f"seed{seed}"
            tmp.mkdir(parents=True, exist_ok=True)
            row = {"seed": seed}
            for arm, fn in (("single", single), ("nested", nested)):
                row[arm] = fn(store, tmp, seed, args, oracle)
                a = row[arm]
                print(
                    f"seed {seed} {arm}: estimate {a['estimate']:.3f} oracle {a['oracle']:.3f} "
                    f"({a['seconds'] / 60:.1f} min)",
                    flush=True,
                )
            results.append(row)
    publish("nested", report(results, args), write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
