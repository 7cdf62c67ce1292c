"""Wall time of the README's demo sweep, reproducible (`--reproducible`, trial order decides)
vs asynchronous (`--async`, arrival order decides), and whether two reproducible runs agree.

    python -m bench.bench_reproducible [--seed 0] [--runs reproducible,async,reproducible]
                                       [--num-samples N] [--max-epochs N]

Each run is `python -m search.run --space case --seed S` in a fresh process and folder (the
demo store is shared), timed end to end; runs are interleaved because the machine is shared.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RANDOM_IDS = ("trial_id", "mlflow_run_id")  # fresh in every run


def one_sweep(mode: str, seed: int, tmp: Path, extra: list[str]) -> dict:
    """Run one sweep; its wall seconds, trials (without ids) and epochs trained."""
    name = f"bench-{mode}-{len(list(tmp.iterdir()))}"
    cmd = [
        sys.executable,
        "-m",
        "search.run",
        "--space",
        "case",
        "--seed",
        str(seed),
        f"--{mode}",
        "--name",
        name,
        "--results-dir",
        str(tmp / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp / f'{name}.db'}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(tmp / "results" / name / "trials.csv", newline="", encoding="utf-8") as f:
        rows = [{k: v for k, v in r.items() if k not in RANDOM_IDS} for r in csv.DictReader(f)]
    return {
        "mode": mode,
        "wall": wall,
        "rows": rows,
        "epochs": sum(int(r["epochs_run"] or 0) for r in rows),
        "best": float(rows[0]["best_val_macro_f1"]),
        "best_model": rows[0]["model"],
    }


def report(runs: list[dict], seed: int, extra: list[str]) -> str:
    by = {m: [r for r in runs if r["mode"] == m] for m in ("reproducible", "async")}
    med = {m: statistics.median(r["wall"] for r in rs) for m, rs in by.items() if rs}
    lines = [
        "## Reproducible vs asynchronous search (`bench/bench_reproducible.py`)",
        "",
        f"`python -m search.run --space case --seed {seed} {' '.join(extra)}`".replace(" `", "`")
        + " on the demo store, 2 trials at a time, one thread each; each run a fresh process,"
        " runs interleaved in the order below.",
        "",
        "| run | mode | wall (s) | epochs trained | best val macro-F1 | best model |",
        "|---|---|---:|---:|---:|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['mode']} | {r['wall']:.1f} | {r['epochs']} | "
            f"{r['best']:.4f} | {r['best_model']} |"
        )
    lines.append("")
    if len(med) == 2:
        lines.append(
            f"**Median wall time reproducible / async: {med['reproducible'] / med['async']:.2f}**."
        )
    if len(med) == 2:
        ep = {m: statistics.median(r["epochs"] for r in rs) for m, rs in by.items()}
        more = ep["reproducible"] / ep["async"]
        lines.append(
            f"Epochs trained reproducible / async: {more:.2f} (ordered ASHA judges trial k only "
            "against trials 0..k-2, one peer fewer at every rung, so it stops fewer trials); "
            f"the rest, {med['reproducible'] / med['async'] / more:.2f}x, is slots waiting for "
            "the older of two running trials."
        )
    repro = by["reproducible"]
    if len(repro) >= 2:
        same = all(r["rows"] == repro[0]["rows"] for r in repro[1:])
        lines.append(
            f"The {len(repro)} reproducible runs gave "
            f"{'identical' if same else 'DIFFERENT'} trials.csv (ids aside)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="reproducible,async,reproducible,async")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    extra = [
        f"--{k}={v}"
        for k, v in (("num-samples", args.num_samples), ("max-epochs", args.max_epochs))
        if v
    ]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        for mode in args.runs.split(","):
            try:
                runs.append(one_sweep(mode, args.seed, Path(tmp), extra))
            except subprocess.CalledProcessError:  # e.g. someone's `ray stop` on a shared host
                print(f"{mode}: failed; running it again", flush=True)
                runs.append(one_sweep(mode, args.seed, Path(tmp), extra))
            r = runs[-1]
            print(
                f"{mode}: {r['wall']:.1f} s, {r['epochs']} epochs, best {r['best']:.4f}", flush=True
            )
    body = report(runs, args.seed, extra)
    publish("reproducible", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
