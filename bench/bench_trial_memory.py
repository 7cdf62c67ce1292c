"""Peak memory of two concurrent trials on a store of the seed's real shapes.

A synthetic store of audio 512 x 1024 and text 128 x 768 (fp16 memory maps) is swept by two
trials at once, through the search's own trainable under Ray Tune (1 CPU each on a 2-CPU Ray
runtime, so Ray fits 2 trials of this size on the node and each trial's resident budget is
half of its half of the memory available). A sampler reads every trial process's resident
memory (RSS, which counts the store's page-cache pages it maps, shared between trials) and
anonymous memory (RssAnon: what that process alone holds; the store's pages are file-backed)
every 0.25 s, from /proc.

    python -m bench.bench_trial_memory [--n 1000] [--model case-attention] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_STORE = dict(text_dim=768, audio_dim=1024, max_tokens=128, max_frames=512)


def _status(pid: str) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _trial_pids() -> list[str]:
    """Ray's trial actors (process title ``ray::ImplicitFunc...``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::") and "ImplicitFunc" in cmd:
                pids.append(d.name)
    return pids


def _available() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


class Sampler(threading.Thread):
    """Peak RSS and RssAnon per trial process, and peak of their sums, while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.rss: dict[str, int] = {}
        self.uss: dict[str, int] = {}
        self.sum_rss = self.sum_uss = 0

    def run(self) -> None:
        while not self.stop.is_set():
            total_rss = total_uss = 0
            for pid in _trial_pids():
                try:
                    st = _status(pid)
                except OSError:
                    continue
                rss, anon = st.get("VmRSS", 0), st.get("RssAnon", 0)
                self.rss[pid] = max(self.rss.get(pid, 0), rss)
                self.uss[pid] = max(self.uss.get(pid, 0), anon)
                total_rss += rss
                total_uss += anon
            self.sum_rss = max(self.sum_rss, total_rss)
            self.sum_uss = max(self.sum_uss, total_uss)
            time.sleep(0.25)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="utterances in the synthetic store")
    ap.add_argument("--model", default="case-attention")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(ROOT / "tests"))
    import ray
    from model_helpers import make_synthetic_store
    from ray import tune

    from bench.report import publish
    from data_prep.store import FeatureStore
    from search.local_ray import start_local_ray
    from search.trainable import make_trainable

    with tempfile.TemporaryDirectory(prefix="bench-trial-mem-") as tmp:
        path = make_synthetic_store(
            Path(tmp), n=args.n, sessions=10, val_sessions=(9,), test_sessions=(10,), **SEED_STORE
        )
        store = FeatureStore.open(path)
        gb = sum(getattr(store, k).nbytes for k in ("audio", "text", "text_pooled")) / 1e9
        train_rows = int((store.table["split"] == "train").sum())
        available = _available()
        start_local_ray(
            num_cpus=2,
            logging_level="ERROR",
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        sampler = Sampler()
        sampler.start()
        t0 = time.perf_counter()
        try:
            config = {"model": args.model, "epochs": 1, "batch_size": 64, "hidden": 256}
            tuner = tune.Tuner(
                make_trainable(path, cpus=1),
                param_space={**config, "seed": tune.grid_search([0, 1])},
                tune_config=tune.TuneConfig(max_concurrent_trials=2),
                run_config=tune.RunConfig(storage_path=str(Path(tmp) / "ray"), verbose=0),
            )
            results = tuner.fit()
            errors = [str(r.error) for r in results if r.error]
        finally:
            sampler.stop.set()
            sampler.join()
            ray.shutdown()
        wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    fig = {
        "store_gb": gb,
        "train_rows": train_rows,
        "available_gb": available / 1e9,
        "rss_gb": [v / 1e9 for v in sampler.rss.values()],
        "uss_gb": [v / 1e9 for v in sampler.uss.values()],
        "sum_rss_gb": sampler.sum_rss / 1e9,
        "sum_uss_gb": sampler.sum_uss / 1e9,
        "wall": wall,
    }
    train_fp16 = train_rows * 2 * (512 * 1024 + 128 * 768 + 768) / 1e9
    budget = available / 2 / 2
    kind = "fp32" if 2 * train_fp16 <= budget else "fp16" if train_fp16 <= budget else "streamed"
    lines = [
        "## Two concurrent trials at the seed's sizes: peak memory",
        "",
        f"`python -m bench.bench_trial_memory` — synthetic store of {args.n} utterances at "
        f"audio 512 x 1024 and text 128 x 768 ({gb:.2f} GB fp16 memory maps; training split "
        f"{train_rows} rows, {train_fp16:.2f} GB fp16), two `{args.model}` trials at once "
        f"through the search's trainable under Ray Tune (1 CPU each on a 2-CPU runtime), one "
        f"epoch each; {available / 1e9:.1f} GB available on the machine when it started "
        f"(24 GB in all, shared with other jobs). Each trial's resident budget is half of its "
        f"part of the memory available: {available / 1e9:.1f} / 2 trials / 2 = "
        f"{budget / 1e9:.1f} GB, so each kept its training split resident as {kind} "
        f"(before this change each trial took half of all available memory, "
        f"{available / 2e9:.1f} GB, however many ran).",
        "",
        "| | trial 1 | trial 2 | both at once (peak of the sum) |",
        "|---|---:|---:|---:|",
        "| peak RSS (GB) | "
        + " | ".join(f"{v:.2f}" for v in fig["rss_gb"][:2])
        + f" | {fig['sum_rss_gb']:.2f} |",
        "| peak private (anonymous) memory (GB) | "
        + " | ".join(f"{v:.2f}" for v in fig["uss_gb"][:2])
        + f" | {fig['sum_uss_gb']:.2f} |",
        "",
        "RSS counts the store's pages each trial maps (page cache, shared by both and "
        "reclaimable); anonymous memory is what each trial alone holds (its resident split, "
        "the model, the batch buffers, activations, torch). Both trials' private memory "
        f"together, {fig['sum_uss_gb']:.1f} GB, is what the machine must really provide, "
        f"against {available / 1e9:.1f} GB available and the {2 * budget / 1e9:.1f} GB the "
        "two budgets allow for resident splits.",
    ]
    publish("trial_memory", "\n".join(lines), write=not args.no_write)
    return fig


if __name__ == "__main__":
    main()
