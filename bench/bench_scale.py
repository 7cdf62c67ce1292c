"""Does the driver keep up at width? 1,000 trials, 8 to 256 at a time, through the real driver.

    python -m bench.bench_scale [--slots 8 64 256] [--trials 1000] [--epoch-seconds 1.0]
                                [--modes reproducible lag1 async] [--tracking sqlite http]
                                [--resume-check] [--no-publish]

Each run is `search.run.run_sweep` as a user's sweep runs it (Tuner, ordered searcher and
ASHA, Optuna RDB storage, the MLflow callback, per-epoch checkpoints, the end-of-sweep
reports), with the stand-in trial of bench/scale/standin.py: every epoch a fixed sleep,
its metrics replayed from real demo trials (the replay table, results/replay/), so ASHA stops
and TPE suggests about as on the demo. Ray gets as many logical CPUs as slots, so 256 slots
fit on a 2-core machine: what is measured is the driver, not the training.

Per run: the training span (first trial start to last epoch) against its minimum (busy
slot-seconds / slots; busy = epochs x --epoch-seconds) and the utilisation (busy / (slots x
span)), also from the moment every slot had started a trial (worker processes start slowly
on 2 cores); the driver's CPU per result and per trial (the bench's own process, all
threads; the end-of-sweep reports apart) and that of the processes it started (Ray, the
stand-ins, the MLflow writer); MLflow's rows and file size; the reports' time (trials.csv,
leaderboard, figures, best_configs.yaml); with --resume-check, a sweep whose driver is
SIGKILLed once 90 % of its trials have started is resumed, and the time until its first
trial runs again is the restore time.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "results" / "replay" / "demo-case.jsonl.gz"
EPOCHS = 20
# reproducible: search.run's default lag (2 x --max-concurrent from 16 slots on); "lag1":
# reproducible with --lag = --max-concurrent, the rule below 16 slots and before (README,
# "Reproducible at width").
MODES = ("reproducible", "lag1", "async")
TRACKING = ("sqlite", "http")
TARGETS = {
    "async": 1.25,
    "reproducible": 1.5,
    "lag1": 1.5,
}  # wall / minimum at 64 slots, 1 s epochs
CPU_PER_RESULT_MS = 10.0
REPORTS_S = 30.0
RESUME_S = 60.0
UTILISATION = 0.8


@dataclass
class Run:
    slots: int
    mode: str
    tracking: str
    trials: int
    epoch_seconds: float
    epochs: int = 0  # results reported (epochs trained)
    span_s: float = 0.0  # first trial start to last epoch
    wall_s: float = 0.0  # the whole run_sweep call
    minimum_s: float = 0.0
    utilisation: float = 0.0
    cpu_s: float = 0.0  # the driver's, reports excluded
    cpu_ms_per_result: float = 0.0
    cpu_ms_per_trial: float = 0.0
    ray_cpu_ms_per_result: float = 0.0  # the driver's children: Ray, trials, MLflow writer
    startup_s: float = 0.0  # until every slot had started a trial (worker processes start)
    steady_utilisation: float = 0.0  # from then on
    reports_s: float = 0.0
    server_cpu_s: float = float("nan")  # the MLflow server's (http)
    mlflow_rows: int = 0
    mlflow_mb: float = 0.0
    restore_s: float = float("nan")
    resume_wall_s: float = float("nan")
    failed: int = 0

    @property
    def ratio(self) -> float:
        return self.span_s / self.minimum_s if self.minimum_s else float("nan")


# -- events ------------------------------------------------------------------------------------
def read_events(path: Path) -> list[tuple[str, int, float, int]]:
    """(kind, trial number, time, epoch) per line the stand-ins wrote."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append((parts[0], int(parts[1]), float(parts[2]), int(parts[3])))
    return out


class Progress(threading.Thread):
    """A line every ``every`` seconds: epochs done, trials started, time."""

    def __init__(self, label: str, events: Path, trials: int, every: float = 15.0) -> None:
        super().__init__(daemon=True)
        self.label, self.events, self.trials, self.every = label, events, trials, every
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.wait(self.every):
            ev = read_events(self.events)
            started = len({n for k, n, _, _ in ev if k == "start"})
            epochs = sum(k == "epoch" for k, *_ in ev)
            print(
                f"  {self.label}: {started}/{self.trials} trials started, {epochs} epochs, "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )


# -- one sweep -------------------------------------------------------------------------------
def _settings(store: Path, work: Path, run: Run, tracking_uri: str, max_epochs: int) -> Any:
    from search.settings import parse_settings, sweep_argv

    argv = sweep_argv(
        store,
        "scale",
        work,
        num_samples=run.trials,
        max_epochs=max_epochs,
        max_concurrent=run.slots,
        cpus_per_trial=1,
        seed=0,
        lag=run.slots if run.mode == "lag1" else None,
        **{"async": run.mode == "async"},
    )
    argv[argv.index("--tracking-uri") + 1] = tracking_uri
    settings = parse_settings(argv, cwd=work)
    settings.storage_path = str(work / "ray_results")
    return settings


def _resume_settings(work: Path) -> Any:
    from search.settings import parse_settings

    settings = parse_settings(
        ["--name", "scale", "--resume", "--results-dir", str(work / "results")], cwd=work
    )
    settings.storage_path = str(work / "ray_results")
    return settings


def _standin(events: Path, run: Run, max_epochs: int, checkpoint_kb: int, table: Path) -> Any:
    from bench.replay.table import read_table
    from bench.scale.standin import Curves, make_standin
    from search.spaces import get_space

    curves = Curves.from_rows(get_space("case"), read_table(table))
    return make_standin(
        curves,
        epoch_seconds=run.epoch_seconds,
        max_epochs=max_epochs,
        checkpoint_bytes=checkpoint_kb * 1024,
        events=str(events),
    )


class _TimedReports:
    """Times `search.results.write_results` (the end-of-sweep reports) where run_sweep calls
    it, wall and CPU."""

    def __init__(self) -> None:
        from search import results

        self.module, self.original = results, results.write_results
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _TimedReports:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - t0
                self.cpu += time.process_time() - c0

        self.module.write_results = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.module.write_results = self.original


def mlflow_size(db: Path) -> tuple[int, float]:
    """(rows of metrics, params, tags and runs; file MB) of an MLflow sqlite store."""
    with sqlite3.connect(db) as con:
        rows = sum(
            con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("metrics", "latest_metrics", "params", "tags", "runs")
        )
    return rows, db.stat().st_size / 2**20


def _start_ray(slots: int) -> None:
    import logging

    from search.local_ray import start_local_ray
    from search.run import ray_env_defaults

    ray_env_defaults()
    start_local_ray(num_cpus=slots, logging_level=logging.WARNING)


def measure(
    run: Run,
    store: Path,
    work: Path,
    *,
    max_epochs: int,
    checkpoint_kb: int,
    table: Path,
    resume_check: bool,
) -> Run:
    """One sweep through the real driver; ``run`` filled in."""
    import contextlib

    from bench.mlflow_server import mlflow_server

    work.mkdir(parents=True, exist_ok=True)
    events = work / "events.txt"
    with contextlib.ExitStack() as stack:
        if run.tracking == "http":
            server = stack.enter_context(mlflow_server(work / "server"))
            uri, db = server.url, server.db
        else:
            server, db = None, work / "mlflow.db"
            uri = f"sqlite:///{db}"
        settings = _settings(store, work, run, uri, max_epochs)
        standin = _standin(events, run, max_epochs, checkpoint_kb, table)
        if resume_check:
            _killed_run(run, work, uri, max_epochs, checkpoint_kb, table)
        _one_sweep(run, settings if not resume_check else _resume_settings(work), standin, events)
        if server is not None:
            import psutil

            proc = psutil.Process(server.pid)
            procs = [proc, *proc.children(recursive=True)]
            run.server_cpu_s = sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
        run.mlflow_rows, run.mlflow_mb = mlflow_size(db)
    return run


def _one_sweep(run: Run, settings: Any, standin: Any, events: Path) -> None:
    import ray

    from search.run import run_sweep

    _start_ray(run.slots)
    label = f"{run.slots} slots {run.mode} {run.tracking}"
    progress = Progress(label, events, run.trials)
    progress.start()
    t0, c0, began = time.perf_counter(), time.process_time(), time.time()
    ray0 = ray_cpu()
    try:
        with _TimedReports() as reports:
            outcome = run_sweep(settings, quiet=True, trainable=standin)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        children = ray_cpu() - ray0
    finally:
        progress.stop.set()
        ray.shutdown()
    ev = read_events(events)
    if settings.resume:  # only the resumed driver's part
        starts = [t for k, _, t, _ in ev if k == "start" and t >= began]
        run.restore_s = min(starts) - began if starts else float("nan")
        run.resume_wall_s = wall
        run.ray_cpu_ms_per_result = float("nan")  # no results of its own counted
    else:
        _fill(run, ev, wall, cpu, children, reports, outcome.num_failed)


def _fill(
    run: Run, ev: list, wall: float, cpu: float, children: float, reports: Any, failed: int
) -> None:
    starts = [t for k, _, t, _ in ev if k == "start"]
    ends = [t for k, _, t, _ in ev if k == "epoch"]
    run.epochs = len(ends)
    run.span_s = max(ends) - min(starts)
    run.wall_s = wall
    run.minimum_s = run.epochs * run.epoch_seconds / run.slots
    run.utilisation = run.minimum_s / run.span_s if run.span_s else 0.0
    run.reports_s = reports.wall
    run.cpu_s = cpu - reports.cpu
    run.cpu_ms_per_result = 1000 * run.cpu_s / max(run.epochs, 1)
    run.cpu_ms_per_trial = 1000 * run.cpu_s / run.trials
    run.ray_cpu_ms_per_result = 1000 * children / max(run.epochs, 1)
    run.failed = failed
    first = sorted({n: t for k, n, t, _ in reversed(ev) if k == "start"}.values())
    warm = first[min(run.slots, len(first)) - 1]
    run.startup_s = warm - min(starts)
    busy = sum(1 for k, _, t, _ in ev if k == "epoch" and t > warm) * run.epoch_seconds
    run.steady_utilisation = busy / (run.slots * (max(ends) - warm)) if max(ends) > warm else 0.0


def ray_cpu() -> float:
    """CPU seconds of the processes this one started: Ray's (raylet, GCS, the trials'
    workers) and the MLflow writer."""
    import psutil

    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _killed_run(
    run: Run, work: Path, uri: str, max_epochs: int, checkpoint_kb: int, table: Path
) -> None:
    """The same sweep in a child process whose driver SIGKILLs itself as trial 0.9 x trials
    reports its first epoch (search/faults.py); its figures fill ``run``."""
    at = int(0.9 * run.trials)
    env = {**os.environ, "CASE_TUNE_FAULT": f"driver_result:{at}:1"}
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_scale",
        "--child",
        str(work),
        "--child-run",
        json.dumps({**asdict(run), "tracking_uri": uri}),
        "--epochs",
        str(max_epochs),
        "--checkpoint-kb",
        str(checkpoint_kb),
        "--table",
        str(table),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != -9:
        raise RuntimeError(f"the killed run ended with {proc.returncode}, not SIGKILL")
    print(f"  driver killed at trial {at}; resuming", flush=True)


def _child(work: Path, spec: dict[str, Any], max_epochs: int, checkpoint_kb: int, table: Path):
    from data_prep.demo_store import prepare_demo

    uri = spec.pop("tracking_uri")
    run = Run(**{k: v for k, v in spec.items() if k in Run.__dataclass_fields__})
    settings = _settings(Path(prepare_demo()), work, run, uri, max_epochs)
    standin = _standin(work / "events.txt", run, max_epochs, checkpoint_kb, table)
    _one_sweep(run, settings, standin, work / "events.txt")


# -- the report ------------------------------------------------------------------------------
def _f(v: float, digits: int = 2) -> str:
    return "—" if v != v else f"{v:.{digits}f}"


def table(runs: list[Run]) -> str:
    head = (
        "| slots | mode | tracking | epoch s | epochs | span / minimum | utilisation "
        "| start-up s | steady utilisation | driver CPU ms / result | ms / trial "
        "| other CPU ms / result | reports s | MLflow rows | MLflow MB | restore s | failed |\n|"
        + "---|"
        * 17
    )
    lines = [head]
    for r in runs:
        lines.append(
            f"| {r.slots} | {r.mode} | {r.tracking} | {r.epoch_seconds:g} | {r.epochs} "
            f"| {_f(r.ratio)} | {_f(r.utilisation)} | {_f(r.startup_s, 0)} "
            f"| {_f(r.steady_utilisation)} | {_f(r.cpu_ms_per_result, 1)} "
            f"| {_f(r.cpu_ms_per_trial, 0)} | {_f(r.ray_cpu_ms_per_result, 1)} "
            f"| {_f(r.reports_s, 1)} | {r.mlflow_rows} "
            f"| {_f(r.mlflow_mb, 1)} | {_f(r.restore_s, 1)} | {r.failed} |"
        )
    return "\n".join(lines)


def verdicts(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        tag = f"{r.slots} slots {r.mode} {r.tracking}"
        if r.restore_s == r.restore_s:  # a --resume-check row: its resumed part only
            out.append(
                f"{tag}: restore {_f(r.restore_s, 1)} s (<= {RESUME_S:g}) "
                f"{_ok(r.restore_s <= RESUME_S)}; the resumed driver's whole run "
                f"{_f(r.resume_wall_s, 0)} s"
            )
            continue
        if r.slots == 64 and r.epoch_seconds == 1.0:
            t = TARGETS[r.mode]
            out.append(f"{tag}: span / minimum {_f(r.ratio)} (target <= {t}) {_ok(r.ratio <= t)}")
        if r.mode != "async" and r.slots == 64:
            out.append(
                f"{tag}: utilisation {_f(r.utilisation)} (target >= {UTILISATION}) "
                f"{_ok(r.utilisation >= UTILISATION)}"
            )
        out.append(
            f"{tag}: driver CPU {_f(r.cpu_ms_per_result, 1)} ms / result (target <= "
            f"{CPU_PER_RESULT_MS:g}) {_ok(r.cpu_ms_per_result <= CPU_PER_RESULT_MS)}; reports "
            f"{_f(r.reports_s, 1)} s (<= {REPORTS_S:g}) {_ok(r.reports_s <= REPORTS_S)}"
        )
    return out


def _ok(ok: bool) -> str:
    return "met" if ok else "**missed**"


def write_csv(runs: list[Run], path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*asdict(runs[0]), "ratio"])
        w.writeheader()
        for r in runs:
            w.writerow({**asdict(r), "ratio": r.ratio})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__)
    p.add_argument("--slots", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=EPOCHS, help="a trial's epochs (--max-epochs)")
    p.add_argument("--epoch-seconds", type=float, default=1.0)
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["reproducible", "async"],
        help="lag1: reproducible with --lag = --slots (the rule below 16 slots)",
    )
    p.add_argument("--tracking", nargs="+", choices=TRACKING, default=["sqlite"])
    p.add_argument("--checkpoint-kb", type=int, default=64, help="each epoch's checkpoint size")
    p.add_argument("--resume-check", action="store_true", help="kill at 90 %%, then resume")
    p.add_argument(
        "--table", type=Path, default=TABLE, help="the replay table the curves come from"
    )
    p.add_argument("--work", type=Path, default=None, help="keep every run's files here")
    p.add_argument("--section", default="scale")
    p.add_argument("--no-publish", action="store_true")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, json.loads(args.child_run), args.epochs, args.checkpoint_kb, args.table)
        return 0
    if not 0.05 <= args.epoch_seconds <= 10 or args.epochs > EPOCHS or args.trials < 1:
        p.error("need 0.05 <= --epoch-seconds <= 10, --epochs <= 20 (the table's), --trials >= 1")
    return _run_all(args)


def _run_all(args: argparse.Namespace) -> int:
    import tempfile

    from data_prep.demo_store import prepare_demo

    store = Path(prepare_demo())
    runs = []
    with tempfile.TemporaryDirectory(prefix="case-tune-scale-") as tmp:
        base = args.work or Path(tmp)
        for slots in args.slots:
            for mode in args.modes:
                for tracking in args.tracking:
                    run = Run(slots, mode, tracking, args.trials, args.epoch_seconds)
                    work = base / f"{slots}-{mode}-{tracking}"
                    print(f"{slots} slots, {mode}, {tracking}: {args.trials} trials", flush=True)
                    runs.append(
                        measure(
                            run,
                            store,
                            work,
                            max_epochs=args.epochs,
                            checkpoint_kb=args.checkpoint_kb,
                            table=args.table,
                            resume_check=args.resume_check,
                        )
                    )
                    print(table(runs[-1:]), flush=True)
    csv_path = ROOT / "results" / f"bench_{args.section}.csv"
    body = _body(runs, args)
    publish(args.section, body, write=not args.no_publish)
    if not args.no_publish:
        write_csv(runs, csv_path)
    return 0


def _body(runs: list[Run], args: argparse.Namespace) -> str:
    import platform

    return "\n".join(
        [
            "## Scale: the driver at width (`bench/bench_scale.py`)",
            "",
            f"{args.trials} trials of up to {args.epochs} epochs through `search.run`'s driver "
            f"(TPE + ASHA, Optuna's journal, MLflow through its writer process, checkpoints of {args.checkpoint_kb} KB per "
            "epoch), stand-in trials (a sleep per epoch, curves replayed from the demo's "
            f"replay table); {os.cpu_count()} cores, {platform.python_version()}. Command: "
            f"`python -m bench.bench_scale {' '.join(sys.argv[1:])}`.",
            "",
            table(runs),
            "",
            *(f"- {v}" for v in verdicts(runs)),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
