"""What changes a CPU training history, and what pinning the numerics costs per epoch.

    python -m bench.bench_repro [--epochs 6]

One config of the demo sweep is trained in fresh processes that differ in one setting each
(torch threads, ATen's CPU kernel path, MKL's code path) and, in one process, after other
configs; each history is compared bit for bit with a fresh 1-thread process. Then the cost
of what `models.repro.reproducible` sets: deterministic algorithms on vs off (CPU seconds
per epoch, 1 thread) and 1 vs 2 threads (wall seconds per epoch), interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEYS = ("train_loss", "val_loss", "val_macro_f1", "val_macro_auroc")
CONFIG = {
    "model": "case-compressing",
    "hidden": 256,
    "lr": 1e-3,
    "batch_size": 32,
    "dropout": 0.3,
    "loss": "focal",
    "class_weights": "inverse",
    "faithful": False,
}
OTHER = {
    "model": "case-concat-attention",
    "hidden": 64,
    "lr": 3e-3,
    "batch_size": 16,
    "contrastive": "infonce",
    "faithful": False,
}

CHILD = """
import json, sys, torch
from data_prep.prepare import prepare_demo
from data_prep.store import FeatureStore
from models.train import train
cfg, threads, before = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
store = FeatureStore.open(prepare_demo(progress=False), sealed=("test",))
for other in before:
    train(other, store, threads=threads)
r = train(cfg, store, threads=threads)
keys = sys.argv[4].split(",")
print(json.dumps({"history": [[m[k] for k in keys] for m in r.history], "numerics": r.numerics}))
"""


def child(config: dict, threads: int = 1, env: dict | None = None, before=()) -> dict:
    full = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps(config),
            str(threads),
            json.dumps(list(before)),
            ",".join(KEYS),
        ],
        env=full,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_difference(a: list, b: list) -> str:
    for epoch, (x, y) in enumerate(zip(a, b, strict=True), 1):
        if x != y:
            return f"epoch {epoch} ({KEYS[0]} {x[0]:.8f} vs {y[0]:.8f})"
    return "none: bit-identical"


def scenarios(config: dict) -> list[tuple[str, str, str]]:
    ref = child(config)
    rows = [("fresh process, 1 thread (reference)", "", "")]
    cases = [
        ("fresh process again, 1 thread", {}, 1, ()),
        ("one process, after training 2 other configs", {}, 1, (OTHER, {**OTHER, "seed": 3})),
        ("2 torch threads", {}, 2, ()),
        ("ATEN_CPU_CAPABILITY=avx2 (ATen kernels)", {"ATEN_CPU_CAPABILITY": "avx2"}, 1, ()),
        ("MKL_CBWR=COMPATIBLE (MKL code path)", {"MKL_CBWR": "COMPATIBLE"}, 1, ()),
        ("MKL_CBWR=AVX2", {"MKL_CBWR": "AVX2"}, 1, ()),
    ]
    for label, env, threads, before in cases:
        got = child(config, threads, env, before)
        nums = got["numerics"]
        what = f"threads {nums['torch_threads']}, {nums['cpu_capability']}" + "".join(
            f", {k}={v}" for k, v in nums.items() if k in ("aten_cpu_capability", "mkl_cbwr")
        )
        rows.append((label, what, first_difference(ref["history"], got["history"])))
    rows[0] = (rows[0][0], f"threads 1, {ref['numerics']['cpu_capability']}", "")
    return rows


def per_epoch_cost(config: dict, reps: int) -> dict[str, list[float]]:
    """Median CPU s/epoch with deterministic algorithms on/off (1 thread) and wall s/epoch
    with 1 and 2 threads, over ``reps`` interleaved runs."""
    import torch

    import models.repro as repro
    from data_prep.prepare import prepare_demo
    from data_prep.store import FeatureStore
    from models.train import train

    store = FeatureStore.open(prepare_demo(progress=False), sealed=("test",))
    out: dict[str, list[float]] = {"det_on": [], "det_off": [], "t1": [], "t2": []}
    real = torch.use_deterministic_algorithms
    for _ in range(reps):
        for key in ("det_on", "det_off"):
            if key == "det_off":  # what training did before: nothing pinned
                repro.torch.use_deterministic_algorithms = lambda *a, **k: None
            try:
                h = train(config, store, threads=1).history
            finally:
                repro.torch.use_deterministic_algorithms = real
            out[key].append(statistics.median(m["epoch_cpu_seconds"] for m in h[1:]))
        for key, threads in (("t1", 1), ("t2", 2)):
            h = train(config, store, threads=threads).history
            out[key].append(statistics.median(m["epoch_seconds"] for m in h[1:]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    config = {**CONFIG, "epochs": args.epochs, "seed": 0}
    t0 = time.time()
    rows = scenarios(config)
    cost = per_epoch_cost(config, args.reps)
    med = {k: statistics.median(v) for k, v in cost.items()}
    lines = [
        "## Reproducible training on CPU (`bench/bench_repro.py`)",
        "",
        f"`python -m bench.bench_repro` — {CONFIG['model']} (hidden {CONFIG['hidden']}, batch "
        f"{CONFIG['batch_size']}), {args.epochs} epochs on the demo store, seed 0; each row a "
        "fresh process compared bit for bit (train/val loss, val macro-F1, val AUROC per "
        "epoch) with a fresh 1-thread process.",
        "",
        "| process | numerics recorded | first difference |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        f"Per-epoch cost, medians of {args.reps} interleaved runs (epochs 2 on): deterministic "
        f"algorithms on {med['det_on']:.3f} vs off {med['det_off']:.3f} CPU s/epoch "
        f"({med['det_on'] / med['det_off']:.2f}x); 1 thread {med['t1']:.3f} vs 2 threads "
        f"{med['t2']:.3f} wall s/epoch ({med['t1'] / med['t2']:.2f}x; the machine was shared). "
        f"Bench wall time {time.time() - t0:.0f} s.",
    ]
    body = "\n".join(lines)
    publish("repro", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
