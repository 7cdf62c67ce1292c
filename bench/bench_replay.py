"""Replay benchmark of the search itself: which searcher picks the best config for its compute,
over a hundred sweep seeds, in minutes.

    python bench/bench_replay.py [--seeds 100] [--budgets 24 50 100 200] [--arms ...]
                                 [--store DIR] [--slots 2] [--check]

The table (bench/replay/table.py: configs drawn at random from the `case` space, each trained
as a trial is, val scores at every epoch and oracle macro-F1) is built first if it is not
cached; a surrogate (bench/replay/surrogate.py) gives any config a curve; each arm's sweeps
run in virtual time with the product's own searcher and scheduler objects
(bench/replay/sim.py). Per arm, sweep seed and budget B (trials):

- **pick**: the expected oracle macro-F1 of the sweep's top trial among its first B (trial
  protocol: the weights at its last epoch), its compute the epochs those B trials used;
- **vs random**: whether pick >= the pick of random search without early stopping at equal
  epochs (round(epochs / 20) trials of 20), same sweep seed;
- **efficiency**: random's epochs / the epochs the arm needed until its running pick (best
  finished trial so far) was as good on the oracle as random's pick (0 if it never was).

In reproducible mode the first B trials of a longer sweep are the B-trial sweep (trial k's
draws and decisions depend only on trials 0..k-W: tests/test_replay.py checks it), so one
200-trial sweep per seed gives every budget. `--async` arms are cut the same way (close, not
equal). `--check` scores the surrogate on held-out table configs first.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replay.table import BASE_REDUCTION_FACTOR  # noqa: E402
from bench.report import publish  # noqa: E402

EPOCHS = 20
BUDGETS = (24, 50, 100, 200)
BASELINE = "random"
DEFAULT = "tpe"  # the reference column: Optuna's TPE as it comes, ASHA rf 3 (the old default)
PRODUCT = "tpe-prior2-rf4"  # search.run's searcher and ASHA (search/settings.py)


# -- the arms -----------------------------------------------------------------------------
def _tpe(**opts: Any) -> Callable[[int, int | None], Any]:
    def make(seed: int, window: int | None) -> Any:
        from search.samplers import PerTrialSampler

        return PerTrialSampler("tpe", seed, window, **opts)

    return make


def _random(seed: int, window: int | None) -> Any:
    from search.samplers import PerTrialSampler

    return PerTrialSampler("random", seed, window)


def _mix(fraction: float) -> Callable[[int, int | None], Any]:
    def make(seed: int, window: int | None) -> Any:
        from bench.replay.samplers import InterleavedRandom

        return InterleavedRandom(seed, window, random_fraction=fraction, n_startup_trials=10)

    return make


def _gp(seed: int, window: int | None) -> Any:
    from bench.replay.samplers import PerTrialGP

    return PerTrialGP(seed, window)


def _pruned_search() -> type:
    from bench.replay.samplers import PrunedStopSearch

    return PrunedStopSearch


@dataclass(frozen=True)
class Arm:
    """A searcher as the benchmark runs it: its sampler (sweep seed, window or None), ASHA
    or none, reproducible or --async, and what else differs from the product."""

    sampler: Callable[[int, int | None], Any]
    asha: bool = True
    reproducible: bool = True
    searcher_cls: Callable[[], type] | None = None
    first_window: bool = True  # False: the first window's trials are never stopped (before 21)
    reduction_factor: int = BASE_REDUCTION_FACTOR  # ASHA's (the product's: 4, PRODUCT's arm)
    lag: int = 1  # reproducible mode's lag in multiples of --max-concurrent (search.run --lag)


# Optuna 5's TPE is always multivariate and runs a constant liar by default; its prior
# weight, gamma, weights and endpoint options are deprecated (4.9, removal in 6.0).
ARMS: dict[str, Arm] = {
    "random": Arm(_random, asha=False),
    "random+asha": Arm(_random),
    "tpe": Arm(_tpe(n_startup_trials=10)),  # the product's default before this benchmark
    "tpe-fifo": Arm(_tpe(n_startup_trials=10), asha=False),
    "tpe-s5": Arm(_tpe(n_startup_trials=5)),
    "tpe-s20": Arm(_tpe(n_startup_trials=20)),
    "tpe-group": Arm(_tpe(n_startup_trials=10, group=True)),
    "tpe-group-s20": Arm(_tpe(n_startup_trials=20, group=True)),
    "tpe-noliar": Arm(_tpe(n_startup_trials=10, constant_liar=False)),
    "tpe-ei8": Arm(_tpe(n_startup_trials=10, n_ei_candidates=8)),  # fewer candidates: explores
    "tpe-ei64": Arm(_tpe(n_startup_trials=10, n_ei_candidates=64)),  # more: exploits
    "tpe-prior2": Arm(_tpe(n_startup_trials=10, prior_weight=2.0)),  # deprecated option
    "tpe-prior3": Arm(_tpe(n_startup_trials=10, prior_weight=3.0)),  # deprecated option
    "tpe-prior2-s20": Arm(_tpe(n_startup_trials=20, prior_weight=2.0)),
    "tpe-prior2-mv": Arm(_tpe(n_startup_trials=10, prior_weight=2.0, group=True)),
    "tpe-rf2": Arm(_tpe(n_startup_trials=10), reduction_factor=2),
    "tpe-rf4": Arm(_tpe(n_startup_trials=10), reduction_factor=4),
    "tpe-prior2-rf2": Arm(_tpe(n_startup_trials=10, prior_weight=2.0), reduction_factor=2),
    "tpe-prior2-rf4": Arm(  # the product's default, chosen here
        _tpe(n_startup_trials=10, prior_weight=2.0), reduction_factor=4
    ),
    "tpe-mix20": Arm(_mix(0.2)),  # a fifth of the trials at random (SMAC's interleaving)
    "tpe-mix33": Arm(_mix(1 / 3)),
    "tpe-mix20-rf4": Arm(_mix(0.2), reduction_factor=4),
    "tpe-mix33-rf4": Arm(_mix(1 / 3), reduction_factor=4),
    "tpe-pruned": Arm(_tpe(n_startup_trials=10), searcher_cls=_pruned_search),
    "tpe-nofirst": Arm(_tpe(n_startup_trials=10), first_window=False),
    "tpe-async": Arm(_tpe(n_startup_trials=10), reproducible=False),
    # The product with trial k suggested and judged from trials 0..k-L, L = 2W / 3W.
    "tpe-prior2-rf4-lag2": Arm(
        _tpe(n_startup_trials=10, prior_weight=2.0), reduction_factor=4, lag=2
    ),
    "tpe-prior2-rf4-lag3": Arm(
        _tpe(n_startup_trials=10, prior_weight=2.0), reduction_factor=4, lag=3
    ),
    "tpe-prior2-rf4-async": Arm(
        _tpe(n_startup_trials=10, prior_weight=2.0), reduction_factor=4, reproducible=False
    ),
    "gp": Arm(_gp),
}
# The default run: the arms the issue asks for and the knobs Optuna 5 still supports.
DEFAULT_ARMS = (
    "random", "random+asha", "tpe", PRODUCT, "tpe-fifo", "tpe-s5", "tpe-s20", "tpe-group",
    "tpe-group-s20", "tpe-noliar", "tpe-ei8", "tpe-ei64", "tpe-rf2", "tpe-rf4",
    "tpe-prior2", "tpe-pruned", "tpe-nofirst", "tpe-async",
)  # fmt: skip


# -- one sweep ----------------------------------------------------------------------------
_S: dict[str, Any] = {}


def _setup(table: str, space: str, epochs: int, kind: str = "forest") -> None:
    from bench.replay.surrogate import Surrogate
    from bench.replay.table import HORIZON, read_table, scored_epochs
    from search.spaces import get_space, with_fixed

    rows = read_table(Path(table))
    _S["space"] = with_fixed(get_space(space), {"epochs": HORIZON, "seed": 0})
    _S["surrogate"] = Surrogate(_S["space"], rows, epochs, scored_epochs(rows, epochs), kind=kind)
    _S["epochs"] = epochs


def run_sweep(arm: str, seed: int, trials: int, slots: int) -> dict[str, Any]:
    """One arm's sweep of ``trials`` trials on sweep seed ``seed``: per trial (in number
    order) its score, epochs and expected oracle; the trials' ends in time order."""
    import optuna

    from bench.replay.sim import build_asha, build_search, simulate
    from search.ordered import FIFOScheduler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = ARMS[arm]
    reproducible = spec.reproducible
    sur, epochs = _S["surrogate"], _S["epochs"]
    lag = spec.lag * slots
    sampler = spec.sampler(seed, lag if reproducible else None)
    search_alg, study = build_search(
        _S["space"],
        sampler,
        num_samples=trials,
        window=slots,
        reproducible=reproducible,
        searcher_cls=spec.searcher_cls() if spec.searcher_cls else None,
        lag=lag,
    )
    scheduler: Any = FIFOScheduler()
    if spec.asha:
        scheduler = build_asha(
            study,
            max_epochs=epochs,
            window=slots,
            reproducible=reproducible,
            total=trials,
            reduction_factor=spec.reduction_factor,
            lag=lag,
        )
        if not spec.first_window:
            scheduler.first = 0
    preds: dict[int, Any] = {}

    def curve_of(config: dict[str, Any], number: int) -> Any:
        preds[number] = sur.predict([config])[0]
        return sur.curve(preds[number], config, (seed, number))

    t0 = time.perf_counter()
    out = simulate(
        search_alg, scheduler, curve_of, num_samples=trials, slots=slots, max_epochs=epochs
    )
    return {
        "arm": arm,
        "seed": seed,
        "score": [out.score(t) for t in out.trials],
        "epochs": [t.epoch for t in out.trials],
        "oracle": [sur.oracle(preds[t.number], t.epoch) for t in out.trials],
        "ends": out.ends,
        "wall": time.perf_counter() - t0,
        "utilisation": out.busy / (slots * out.seconds) if out.seconds else 0.0,
    }


# -- what a sweep's record says at a budget --------------------------------------------------
def pick_at(rec: dict[str, Any], n: int) -> int | None:
    """The top trial's number among trials 0..n-1 (ties to the lower number)."""
    ranked = [k for k in range(min(n, len(rec["score"]))) if rec["score"][k] > -math.inf]
    return min(ranked, key=lambda k: (-rec["score"][k], k)) if ranked else None


def oracle_of_pick(rec: dict[str, Any], n: int) -> float:
    k = pick_at(rec, n)
    return rec["oracle"][k] if k is not None else math.nan


def random_at_epochs(rec: dict[str, Any], epochs: int) -> tuple[float, int]:
    """Random search's pick at ``epochs`` (round(epochs / 20) trials): (oracle, its epochs)."""
    n = max(1, round(epochs / EPOCHS))
    return oracle_of_pick(rec, n), sum(rec["epochs"][:n])


def epochs_to_reach(rec: dict[str, Any], n: int, target: float) -> int | None:
    """Epochs until the running pick among trials < n is as good as ``target``."""
    done: list[int] = []
    for _, epochs, k in rec["ends"]:
        if k >= n:
            continue
        done.append(k)
        best = min(
            (j for j in done if rec["score"][j] > -math.inf),
            key=lambda j: (-rec["score"][j], j),
            default=None,
        )
        if best is not None and rec["oracle"][best] >= target - 1e-12:
            return epochs
    return None


def per_seed(records: list[dict[str, Any]], budgets: list[int]) -> list[dict[str, Any]]:
    """Per arm, seed and budget: the pick's oracle, random's at equal epochs, efficiency."""
    base = {r["seed"]: r for r in records if r["arm"] == BASELINE}
    out = []
    for r in records:
        for b in budgets:
            used = sum(r["epochs"][:b])
            mine = oracle_of_pick(r, b)
            rand, rand_epochs = random_at_epochs(base[r["seed"]], used)
            need = epochs_to_reach(r, b, rand)
            out.append(
                {
                    "arm": r["arm"],
                    "seed": r["seed"],
                    "budget": b,
                    "epochs": used,
                    "pick": mine,
                    "random": rand,
                    "efficiency": rand_epochs / need if need else 0.0,
                    "utilisation": r.get("utilisation", math.nan),  # the whole sweep's
                }
            )
    return out


def _ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95 % interval."""
    m = statistics.mean(values)
    return m, 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]], default: str = DEFAULT) -> list[dict[str, Any]]:
    """Per arm and budget: pick (mean, sd), gain over random and over ``default`` (paired by
    seed, mean and 95 % half-width), share of seeds >= random, efficiency quartiles."""
    ref = {(r["seed"], r["budget"]): r["pick"] for r in rows if r["arm"] == default}
    out = []
    for arm, b in dict.fromkeys((r["arm"], r["budget"]) for r in rows):
        rs = [r for r in rows if r["arm"] == arm and r["budget"] == b]
        picks = [r["pick"] for r in rs]
        effs = [r["efficiency"] for r in rs]
        q = statistics.quantiles(effs, n=4, method="inclusive") if len(effs) > 1 else effs * 3
        gain, gain_ci = _ci([r["pick"] - r["random"] for r in rs])
        vs = [r["pick"] - ref[(r["seed"], b)] for r in rs if (r["seed"], b) in ref]
        vs_default, vs_ci = _ci(vs) if vs else (math.nan, math.nan)
        out.append(
            {
                "arm": arm,
                "budget": b,
                "seeds": len(rs),
                "epochs": statistics.mean(r["epochs"] for r in rs),
                "pick": statistics.mean(picks),
                "pick_sd": statistics.stdev(picks) if len(picks) > 1 else 0.0,
                "gain": gain,
                "gain_ci": gain_ci,
                "vs_default": vs_default,
                "vs_default_ci": vs_ci,
                "win": sum(r["pick"] >= r["random"] - 1e-12 for r in rs) / len(rs),
                "eff_q1": q[0],
                "eff_median": q[1],
                "eff_q3": q[2],
                "utilisation": statistics.mean(r["utilisation"] for r in rs),
            }
        )
    return out


# -- the surrogate's check ----------------------------------------------------------------
def check_surrogate(
    table: Path, space: str, epochs: int, kind: str = "forest", folds: int = 5
) -> dict[str, float]:
    """K-fold over the table's configs: predicted vs measured trial score (trailing mean at
    the last epoch) and oracle; and the same between two training seeds (the ceiling)."""
    import numpy as np
    from scipy.stats import spearmanr

    from bench.replay.surrogate import Surrogate
    from bench.replay.table import HORIZON, read_table, scored_epochs
    from models.selection import trial_score
    from search.spaces import get_space, with_fixed

    rows = [r for r in read_table(table) if not r["error"]]
    seed0 = [r for r in rows if r["seed"] == 0]
    sp = with_fixed(get_space(space), {"epochs": HORIZON, "seed": 0})
    rng = np.random.default_rng(0)
    fold = rng.integers(folds, size=len(seed0))
    pred_s, true_s, pred_o, true_o = [], [], [], []
    for f in range(folds):
        train = [r for r, g in zip(seed0, fold, strict=True) if g != f]
        test = [r for r, g in zip(seed0, fold, strict=True) if g == f]
        if not test:
            continue
        sur = Surrogate(sp, train, epochs, scored_epochs(rows, epochs), kind=kind)
        p = sur.predict([r["config"] for r in test])
        pred_s += [trial_score(list(x[:epochs])) for x in p]
        true_s += [trial_score(r["val"]) for r in test]
        pred_o += [float(x[2 * epochs + len(sur.oracle_epochs) - 1]) for x in p]
        true_o += [r["oracle"][str(epochs)] for r in test]
    by: dict[int, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(r["index"], {})[r["seed"]] = r
    pairs = [(v[0], v[1]) for v in by.values() if 0 in v and 1 in v]
    return {
        "configs": len(seed0),
        "score_spearman": float(spearmanr(pred_s, true_s).statistic),
        "score_mae": float(np.mean(np.abs(np.array(pred_s) - true_s))),
        "oracle_spearman": float(spearmanr(pred_o, true_o).statistic),
        "oracle_mae": float(np.mean(np.abs(np.array(pred_o) - true_o))),
        "noise_pairs": len(pairs),
        "seed_score_spearman": float(
            spearmanr(
                [trial_score(a["val"]) for a, _ in pairs], [trial_score(b["val"]) for _, b in pairs]
            ).statistic
        )
        if len(pairs) > 2
        else math.nan,
        "seed_score_mae": float(
            np.mean([abs(trial_score(a["val"]) - trial_score(b["val"])) for a, b in pairs])
        )
        if pairs
        else math.nan,
    }


def write_csv(rows: list[dict[str, Any]], section: str) -> Path:
    import csv

    path = Path(__file__).resolve().parent.parent / "results" / f"bench_{section}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# -- the report ---------------------------------------------------------------------------
def report(rows: list[dict[str, Any]], check: dict[str, float] | None, args: Any) -> str:
    lines = [
        f"Replay benchmark ({args.surrogate} surrogate): {args.seeds} sweep seeds, budgets {args.budgets} trials of "
        f"{EPOCHS} epochs, --max-concurrent {args.slots}, space `{args.space}`; the table "
        f"has {check['configs'] if check else '?'} configs. pick = expected oracle macro-F1 "
        "of the sweep's top trial (mean ± sd over seeds); >= random = share of seeds where "
        "it is at least random search's pick at equal epochs; efficiency = random's epochs / "
        "epochs to reach random's pick (quartiles; 0 = never). Differences are paired by "
        f"sweep seed (mean ± 95 % half-width); pick − {args.reference} is at equal trials (arms without ASHA use more epochs). "
        "Slot utilisation: the whole sweep's training slot-seconds / (slots x its span), in virtual time "
        "(the waiting rule's cost only, no driver).",
        "",
    ]
    if check:
        lines += [
            f"Surrogate ({args.surrogate}, 5-fold over table configs): trial score Spearman "
            f"{check['score_spearman']:.2f}, MAE {check['score_mae']:.3f}; oracle Spearman "
            f"{check['oracle_spearman']:.2f}, MAE {check['oracle_mae']:.3f}. Two training seeds "
            f"of one config ({check['noise_pairs']} configs): score Spearman "
            f"{check['seed_score_spearman']:.2f}, mean |difference| {check['seed_score_mae']:.3f}.",
            "",
        ]
    lines += [
        f"| arm | trials | epochs | pick (oracle) | pick − random | pick − {args.reference} | >= random "
        "| efficiency q1 / median / q3 | slot utilisation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["budget"], -r["pick"])):
        lines.append(
            f"| {r['arm']} | {r['budget']} | {r['epochs']:.0f} | {r['pick']:.3f} ± "
            f"{r['pick_sd']:.3f} | {r['gain']:+.3f} ± {r['gain_ci']:.3f} | "
            f"{r['vs_default']:+.3f} ± {r['vs_default_ci']:.3f} | {r['win']:.0%} | "
            f"{r['eff_q1']:.2f} / {r['eff_median']:.2f} / {r['eff_q3']:.2f} | "
            f"{r['utilisation']:.2f} |"
        )
    return "\n".join(lines)


def _cached_table(store_arg: str | None, space: str) -> Path:
    """The cache folder of the store's table (the demo store by default)."""
    from bench.replay.table import table_dir

    if store_arg:
        return table_dir(Path(store_arg), space)
    from data_prep.prepare import prepare_demo

    return table_dir(Path(prepare_demo()), space)


def _no_table(args: argparse.Namespace) -> str:
    if args.table:
        return f"--table {args.table}: no table rows there (a .jsonl or .jsonl.gz file)"
    store = f" --store {args.store}" if args.store else ""
    return (
        f"no replay table for {args.store or 'the demo store'} and space {args.space!r} yet: "
        f"build it with python -m bench.replay.table{store} --space {args.space} (resumable, "
        "~1 h here), or pass --table FILE"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_replay.py", description=__doc__)
    p.add_argument("--store", help="feature store (default: the demo store)")
    p.add_argument("--space", default="case")
    p.add_argument(
        "--table",
        help="a table file instead of the store's cached table (e.g. results/replay/"
        "demo-case.jsonl.gz, the table behind results/bench.md's replay figures)",
    )
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    p.add_argument("--slots", type=int, default=2, help="--max-concurrent of the sweeps")
    p.add_argument(
        "--reference", default=DEFAULT, choices=ARMS, help="the arm of the pick - ARM column"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--check", action="store_true", help="score the surrogate first")
    p.add_argument("--surrogate", default="forest", choices=("forest", "knn"))
    p.add_argument("--no-publish", action="store_true")
    p.add_argument("--section", default="replay", help="results/bench.md section (and CSV name)")
    args = p.parse_args(argv)
    table = Path(args.table) if args.table else _cached_table(args.store, args.space)
    from bench.replay.table import read_table

    if not read_table(table):
        print(_no_table(args), file=sys.stderr)
        return 2
    check = check_surrogate(table, args.space, EPOCHS, args.surrogate) if args.check else None
    arms = list(dict.fromkeys([BASELINE, *args.arms]))
    trials = max(args.budgets)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [(a, s) for s in seeds for a in arms]
    records, t0 = [], time.perf_counter()
    # spawn, not fork: the surrogate check ran OpenMP in this process, and a forked worker
    # hangs in its first kNN query waiting for the parent's OpenMP threads
    with ProcessPoolExecutor(
        args.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_setup,
        initargs=(str(table), args.space, EPOCHS, args.surrogate),
    ) as pool:
        futures = [pool.submit(run_sweep, a, s, trials, args.slots) for a, s in jobs]
        for n, f in enumerate(futures, 1):
            records.append(f.result())
            if n % max(1, len(jobs) // 20) == 0 or n == len(jobs):
                print(f"  {n}/{len(jobs)} sweeps, {time.perf_counter() - t0:.0f} s", flush=True)
    seeds_rows = per_seed(records, args.budgets)
    rows = summarise(seeds_rows, default=args.reference)
    text = report(rows, check, args)
    publish(args.section, text, write=not args.no_publish)
    if not args.no_publish:
        write_csv(rows, args.section)
        write_csv(seeds_rows, f"{args.section}_seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
