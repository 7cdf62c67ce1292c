"""The replay benchmark's table: configs drawn at random from a space, each trained as a sweep
trains a trial, with every epoch's validation scores and oracle macro-F1.

    python -m bench.replay.table [--store DIR] [--configs 300] [--noise 40] [--epochs 20]

A row is one (config, training seed): the config as `search.run` gives it to a trial (the
space's values plus the sweep's fixed ``epochs`` = the 150-epoch final schedule and ``seed``),
trained by the trial's own code (`search.trainable.TrialRun`, test split sealed) for
``--epochs`` epochs; after each epoch it keeps val macro-F1, val macro-AUROC (the tie-break),
the oracle macro-F1 of the weights at each epoch ASHA can stop a trial at and at the last (bench_selection's oracle set: sessions no part of
the search reads) and the epoch's seconds. Seed 0 for every config; seed 1 again for the first
``--noise`` configs, which measures how much a config's curve moves with its training seed.

Rows are appended to ``$CASE_TUNE_HOME/replay/<store>/table.jsonl`` as they finish (two worker
processes, one thread each); a rerun skips the rows that are there, so a stopped build resumes
where it stopped. A config that diverges keeps the epochs it had and the error.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

TABLE_SEED = 20261203  # the configs' draws: one table per store and space
EPOCHS = 20  # as many as a sweep's trial runs (--max-epochs)
HORIZON = 150  # the final run's schedule, which trials share
TABLE_FILE = "table.jsonl"
BASE_REDUCTION_FACTOR = 3  # the benchmark arms' ASHA (Ray's default; the product's before 22)


def oracle_epochs(epochs: int) -> list[int]:
    """The epochs whose weights are scored on the oracle: where ASHA can stop a trial (its
    rungs, at the product's reduction factor and at 3, the benchmark's other arms') and the
    last, the only epochs whose weights a sweep's pick can have (an oracle score costs three
    epochs of training here)."""
    from search.ordered import rung_milestones
    from search.settings import GRACE_PERIOD, REDUCTION_FACTOR

    grace = min(GRACE_PERIOD, epochs)
    rfs = {BASE_REDUCTION_FACTOR, REDUCTION_FACTOR}
    rungs = {m for rf in rfs for m in rung_milestones(grace, epochs, rf)}
    return sorted({*(m for m in rungs if m < epochs), epochs})


def scored_epochs(rows: list[dict[str, Any]], epochs: int) -> list[int]:
    """The epochs a table's rows carry oracle scores for (fixed when it was built, whatever
    ASHA's settings are now); a table without an oracle: `oracle_epochs`."""
    for r in rows:
        if r.get("oracle"):
            return sorted(int(k) for k in r["oracle"])
    return oracle_epochs(epochs)


def table_dir(store: Path, space: str) -> Path:
    """Where the table of ``store`` and ``space`` is cached."""
    from data_prep.paths import case_tune_home

    return case_tune_home() / "replay" / f"{Path(store).name}-{space}"


def draw_configs(space_name: str, n: int, seed: int = TABLE_SEED) -> list[dict[str, Any]]:
    """``n`` configs drawn at random from the space (as trial configs: fixed values added)."""
    import optuna

    from search.spaces import get_space, sample_config, with_fixed

    space = with_fixed(get_space(space_name), {"epochs": HORIZON, "seed": 0})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample_config(trial, space))
        study.tell(trial, 0.0)
    return out


def jobs(n_configs: int, n_noise: int) -> list[tuple[int, int]]:
    """(config index, training seed) in build order: the noise rows early, so a partial
    table already measures seed noise."""
    out = []
    for i in range(n_configs):
        out.append((i, 0))
        if i < n_noise:
            out.append((i, 1))
    return out


def read_table(where: Path) -> list[dict[str, Any]]:
    """The rows of a table in (config index, seed) order: its cache folder, or a table file
    (``.jsonl`` or ``.jsonl.gz``, e.g. the copy results/replay/ keeps of the table behind
    results/bench.md's figures). A file's lines are in the order its build's workers
    finished; whatever reads the table (the surrogate, its check) must not depend on that."""
    path = Path(where)
    if path.is_dir() or not path.name.endswith((".jsonl", ".jsonl.gz")):
        path = path / TABLE_FILE
    if not path.is_file():
        return []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    rows = []
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed build: trained again
                continue
    return sorted(rows, key=lambda r: (r["index"], r["seed"]))


# -- the workers --------------------------------------------------------------------------
_W: dict[str, Any] = {}


def has_oracle(store: Path) -> bool:
    """Only the demo has an oracle set (more sessions from its generator); on a user's store
    the table keeps validation scores only, and the benchmark judges a pick by its expected
    validation score: nothing held out is read."""
    from data_prep.paths import corpora_root
    from data_prep.store import FeatureStore

    corpus = Path(FeatureStore.open(store).manifest["corpus"]["path"])
    return corpus.parent == corpora_root() and corpus.name.startswith("demo-")


def _init(store: str, epochs: int, oracle: bool) -> None:
    import torch

    from bench.bench_selection import Oracle, oracle_store
    from search.trainable import open_sealed_store

    torch.set_num_threads(1)
    _W["store"] = open_sealed_store(store)
    _W["oracle"] = Oracle(oracle_store(Path(store))) if oracle else None
    _W["epochs"] = epochs


def train_row(job: tuple[int, int, dict[str, Any]]) -> dict[str, Any]:
    """One config trained for the table's epochs with one seed: its per-epoch record."""
    from search.trainable import METRIC, TIE_METRIC, TrialRun

    index, seed, config = job
    config = {**config, "seed": seed}
    row: dict[str, Any] = {"index": index, "seed": seed, "config": config, "error": None}
    curves: dict[str, list[float]] = {"val": [], "auroc": [], "seconds": []}
    oracle: dict[int, float] = {}
    try:
        run = TrialRun(config, _W["store"], folds=0, threads=1)
        for _ in range(_W["epochs"]):
            t0 = time.perf_counter()
            metrics = run.run_epoch()
            curves["seconds"].append(time.perf_counter() - t0)
            curves["val"].append(float(metrics.get(METRIC, math.nan)))
            curves["auroc"].append(float(metrics.get(TIE_METRIC, math.nan)))
            if _W["oracle"] is not None and run.epoch in oracle_epochs(_W["epochs"]):
                oracle[run.epoch] = _W["oracle"].score(config, run.trainers[0].weights())
    except Exception as exc:  # a config that diverges: its epochs so far and the error
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    row.update(curves, oracle=oracle)
    return row


def build(
    store: Path, space: str, n_configs: int, n_noise: int, epochs: int, workers: int = 2
) -> Path:
    """Train every row the table lacks (resumable); returns the table's folder."""
    folder = table_dir(store, space)
    folder.mkdir(parents=True, exist_ok=True)
    configs = draw_configs(space, n_configs)
    done = {(r["index"], r["seed"]) for r in read_table(folder)}
    todo = [(i, s, configs[i]) for i, s in jobs(n_configs, n_noise) if (i, s) not in done]
    total = len(jobs(n_configs, n_noise))
    print(f"replay table {folder}: {total - len(todo)}/{total} rows, {len(todo)} to train")
    if not todo:
        return folder
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with (
        ctx.Pool(
            workers, initializer=_init, initargs=(str(store), epochs, has_oracle(store))
        ) as pool,
        open(folder / TABLE_FILE, "a", encoding="utf-8") as out,
    ):
        for n, row in enumerate(_rows(pool, todo), 1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
            rate = (time.perf_counter() - t0) / n
            print(
                f"  [{total - len(todo) + n}/{total}] config {row['index']} seed {row['seed']} "
                f"{row['config']['model']:<24} oracle {row['oracle'].get(epochs, math.nan):.3f}"
                f"{'  ' + row['error'] if row['error'] else ''}  "
                f"(~{rate * (len(todo) - n) / 60:.0f} min left)",
                flush=True,
            )
    return folder


def _rows(pool: Any, todo: list[tuple[int, int, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    yield from pool.imap_unordered(train_row, todo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay.table", description=__doc__)
    p.add_argument("--store", help="feature store (default: the demo store)")
    p.add_argument("--space", default="case")
    p.add_argument("--configs", type=int, default=300)
    p.add_argument("--noise", type=int, default=40, help="configs trained with a second seed")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.store:
        store = Path(args.store)
    else:
        from data_prep.prepare import prepare_demo

        store = Path(prepare_demo())
    build(store, args.space, args.configs, args.noise, args.epochs, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
