"""`python -m search.finalize --sweep NAME`: retrain a sweep's best configs and score test once.

The top-K configs of `results/<sweep>/best_configs.yaml` (ranked by the sweep's selection
statistic, models.selection), plus with `--models` the best config of each named model family,
are trained on the training sessions for the sweep's final-run length (`--final-epochs` of
`search.run`, 150 by default), once per seed, as Ray tasks (the resources of `search.run`). A
trial was the start of exactly this run: same config, seed and schedule, so seed 0's run
repeats its trial's epochs before going on. Validation is scored every epoch and the weights
of the epoch where the selection statistic peaks are kept, as are those of the seed's fixed
epoch 120; after training, and only then, both are scored once on the test sessions. This is
the only code that opens the feature store without sealing test.

Layout under results/<sweep>/:
    final.md, final.csv, final_runs.csv, final_*.png    (search/final_report.py)
    final/state.json          the plan, the MLflow parent run, the commands that ran
    final/units/<unit>.json   one finished (config, seed), written atomically when it ends
    final/checkpoints/<unit>/ the chosen (and fixed-epoch) checkpoints (git-ignored)

A unit whose worker process or node dies is run again, from the start, up to MAX_FAILURES
times (search.settings); a unit whose own code raises is recorded failed and not retried.
A killed finalize continues with `--resume`: finished units are read back, not retrained, and
MLflow runs a dead driver left RUNNING are ended KILLED and deleted, so each unit ends with
exactly one active run. Tracking is done from the driver through `search.tracking`.

This module is the command and its driver: the steps of `finalize` and the queue of units.
The pieces live beside it: search.final_settings (the command line), search.final_plan (what
is trained), search.final_unit (one unit, in a worker), search.final_records (state, unit
records, MLflow runs) and search.final_report (the files people read).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.cli import config_text, run_cli  # noqa: E402
from search.final_plan import Plan, make_plan  # noqa: E402
from search.final_records import (  # noqa: E402
    UnitRuns,
    chosen_checkpoints,
    end_unit_runs,
    fail_unit_run,
    finish_parent_run,
    log_unit,
    open_state,
    recover_finished,
    save_unit,
    start_unit_run,
)
from search.final_settings import FinalizeSettings, parse_settings  # noqa: E402
from search.final_unit import run_unit, unit_task  # noqa: E402
from search.mlflow_ui import ui_lines  # noqa: E402
from search.settings import MAX_FAILURES  # noqa: E402

# What other code imports from here (bench/bench_selection.py, tests): the command's API.
__all__ = [
    "FinalizeOutcome",
    "FinalizeSettings",
    "chosen_checkpoints",
    "finalize",
    "main",
    "parse_settings",
    "run_unit",
    "summary",
]
_unit_task = unit_task  # its name here before the split (tests/test_device.py, test_repro.py)

_PROG = "search.finalize"


@dataclass
class FinalizeOutcome:
    sweep: str
    out_dir: Path
    report: Path | None
    parent_run_id: str
    tracking_uri: str
    experiment_id: str = ""
    run_ids: list[str] = field(default_factory=list)  # the final runs, best config first
    units_total: int = 0
    units_run: int = 0
    units_reused: int = 0
    failed: list[str] = field(default_factory=list)
    best: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


Say = Callable[..., None]


def finalize(settings: FinalizeSettings, *, quiet: bool = False) -> FinalizeOutcome:
    """Run (or resume) the finalize of one sweep; see the module docstring."""
    t0 = time.time()
    say: Say = (lambda *_a, **_k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
    plan = make_plan(settings, say)
    # MLflow, Ray, numpy: only once the plan is known to be sound (usage errors stay quick)
    from search import tracking
    from search.final_report import write_report

    client = tracking.client_for(settings.tracking_uri)
    exp_id = tracking.experiment_id(client, settings.tracking_uri)
    state = open_state(settings, plan, client, exp_id)
    runs = UnitRuns(client, exp_id, state["parent_run_id"], plan.space, settings.sweep)
    done = recover_finished(settings, plan, runs)
    outcome = FinalizeOutcome(
        sweep=settings.sweep,
        out_dir=settings.out_dir,
        report=None,
        parent_run_id=runs.parent,
        tracking_uri=settings.tracking_uri,
        experiment_id=exp_id,
        units_total=len(plan.units),
        units_reused=len(done),
        notes=[*plan.notes, repeat_note(settings)],
    )
    say(
        f"finalize {settings.sweep}: {len(plan.candidates)} config(s) x {len(settings.seeds)} "
        f"seed(s) = {len(plan.units)} runs of {settings.epochs} epochs; {len(done)} already "
        "finished"
    )
    todo = [u for u in plan.units if u["unit_id"] not in done]
    if todo:
        _run_units(settings, plan, runs, todo, done, outcome, say)
    outcome.files, outcome.best = write_report(
        settings, plan.store, plan.candidates, done, state, outcome.failed
    )
    outcome.report = settings.sweep_dir / "final.md"
    if outcome.best:  # the config the summary shows (rows are labelled like candidates)
        cand = next((c for c in plan.candidates if c.label == outcome.best["label"]), None)
        outcome.best["config"] = cand.config if cand else {}
    # Units are planned best candidate first: the compare link shows the top configs' runs.
    recs = [done.get(u["unit_id"], {}) for u in plan.units]
    outcome.run_ids = [r["mlflow_run_id"] for r in recs if r.get("mlflow_run_id")]
    finish_parent_run(runs, outcome.files, len(done), outcome.failed, outcome.best)
    outcome.wall_seconds = time.time() - t0
    return outcome


def _run_units(
    settings: FinalizeSettings,
    plan: Plan,
    runs: UnitRuns,
    todo: list[dict[str, Any]],
    done: dict[str, dict[str, Any]],
    outcome: FinalizeOutcome,
    say: Say,
) -> None:
    """Run ``todo`` as Ray tasks, at most --max-concurrent at once, recording each as it ends.

    Stopped by an error or Ctrl-C, the runs in flight and the parent run end FAILED or KILLED
    (a driver killed outright leaves them RUNNING: the next --resume deletes them)."""
    import ray

    from search.run import init_ray

    running: dict[Any, tuple[dict[str, Any], str]] = {}
    status = "FAILED"
    started_ray = False
    try:
        started_ray = init_ray(settings)  # type: ignore[arg-type]  # same attribute names
        task = _remote_unit(settings, plan.store_path)
        queue = list(todo)
        while queue or running:
            while queue and len(running) < settings.max_concurrent:
                u = queue.pop(0)
                run_id = start_unit_run(runs, plan.by_key[u["candidate"]], u)
                running[task(u, run_id)] = (u, run_id)
            ready, _ = ray.wait(list(running), num_returns=1)
            u, run_id = running.pop(ready[0])
            _collect(settings, runs, u, run_id, ready[0], done, outcome, say)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            end_unit_runs(runs, [run_id for _u, run_id in running.values()], status)
        if started_ray:
            ray.shutdown()


def _remote_unit(
    settings: FinalizeSettings, store_path: Path
) -> Callable[[dict[str, Any], str], Any]:
    """Submits one unit (with its MLflow run id) as a Ray task; returns its object ref."""
    import ray

    # A unit whose worker process or node dies is run again from the start (it writes
    # nothing until it returns, so that is safe), up to MAX_FAILURES times; one whose code
    # raises is not (retry_exceptions=False: Ray retries system failures only) and is
    # recorded failed by _collect.
    task = ray.remote(unit_task).options(
        num_cpus=settings.cpus_per_trial,
        num_gpus=settings.gpus_per_trial,
        max_retries=MAX_FAILURES,
        retry_exceptions=False,
    )
    threads = max(1, int(settings.cpus_per_trial))
    device = None  # decided in the task, where Ray's assignment is known

    def submit(unit: dict[str, Any], run_id: str) -> Any:
        unit = {**unit, "mlflow_run_id": run_id}
        return task.remote(unit, str(store_path), threads, device, settings.gpus_per_trial)

    return submit


def _collect(
    settings: FinalizeSettings,
    runs: UnitRuns,
    unit: Mapping[str, Any],
    run_id: str,
    ref: Any,
    done: dict[str, dict[str, Any]],
    outcome: FinalizeOutcome,
    say: Say,
) -> None:
    """A unit's task has ended: save and log its record, or record it failed."""
    import ray

    from search.faults import fault_point

    try:
        rec = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - one failed unit must not stop others
        fail_unit_run(runs.client, run_id, str(exc))
        outcome.failed.append(f"{unit['unit_id']}: {str(exc).strip().splitlines()[-1]}")
        say(f"  FAILED {unit['unit_id']}: {outcome.failed[-1]}")
        return
    rec = save_unit(settings, rec)
    log_unit(runs.client, run_id, rec)
    done[rec["unit_id"]] = rec
    outcome.units_run += 1
    chosen = str(rec["chosen_epoch"])
    say(
        f"  [{len(done)}/{outcome.units_total}] {rec['unit_id']}: chosen epoch {chosen} "
        f"(val macro-F1 {rec['val_at_checkpoint'][chosen]:.4f}), test macro-F1 "
        f"{rec['test_at_checkpoint'][chosen]['test_macro_f1']:.4f}  ({rec['seconds']:.0f} s)"
    )
    # Tests kill the driver here (CASE_TUNE_FAULT=unit_recorded:N, after this call's Nth
    # unit): a finalize interrupted between units, with others in flight, for --resume.
    fault_point("unit_recorded", outcome.units_run)


def repeat_note(settings: FinalizeSettings) -> str:
    """Which final run continues the sweep's trial (same config, seed, schedule, threads)."""
    seed = settings.sweep_seed
    if seed not in settings.seeds:
        return (
            f"no final run repeats its trial: the sweep trained with --seed {seed}, which is "
            f"not among --seeds {' '.join(map(str, settings.seeds))}"
        )
    return (
        f"each config's seed-{seed} run continues its trial (same seed, schedule and "
        f"{settings.cpus_per_trial:g} CPU / {settings.gpus_per_trial:g} GPU per run)"
    )


def summary(outcome: FinalizeOutcome) -> str:
    lines = [
        f"Finalize {outcome.sweep}: {outcome.units_total} runs ({outcome.units_run} trained "
        f"now, {outcome.units_reused} reused), {len(outcome.failed)} failed, "
        f"{outcome.wall_seconds / 60:.1f} min."
    ]
    if outcome.best:
        b = outcome.best
        m = b["metrics"]
        seed_micro = (
            f"seed micro-F1 {100 * m['test_seed_micro_f1']:.2f}, "
            if "test_seed_micro_f1" in m
            else ""
        )
        lines.append(
            f"Best row (by validation): {b['label']} — test macro-F1 "
            f"{100 * m['test_macro_f1']:.2f}, {seed_micro}"
            f"weighted-F1 {100 * m['test_weighted_f1']:.2f} (mean of seeds {b['seeds']}, "
            f"epochs {b['chosen_epochs']})"
        )
        if b.get("config"):
            lines.append(f"           config: {config_text(b['config'])}")
        if b.get("ci"):
            lo, hi = b["ci"]
            lines.append(
                f"           test macro-F1 95 % interval over test sessions "
                f"[{100 * lo:.1f}, {100 * hi:.1f}]"
            )
        if b.get("comparison"):
            lines.append(f"           {b['comparison']}")
    for f in outcome.failed:
        lines.append(f"Failed:    {f}")
    lines += [f"Note:      {n}" for n in outcome.notes]
    if outcome.report:
        lines.append(
            f"Results:   {outcome.report} (+ final.csv, final_runs.csv, final_*.png; "
            f"records in {outcome.out_dir}/units/)"
        )
    lines += ui_lines(
        outcome.tracking_uri,
        outcome.experiment_id,
        outcome.run_ids,
        "the final runs, best config first",
        sweep=outcome.sweep,
    )
    return "\n".join(lines)


def _resume_hint(settings: FinalizeSettings | None) -> str:
    # NAME when Ctrl-C came before the arguments were parsed
    return f"--sweep {settings.sweep if settings else 'NAME'} --resume"


def main(argv: Sequence[str] | None = None) -> int:
    from search import nested

    args = list(sys.argv[1:] if argv is None else argv)
    if nested.names_a_set(args):  # a set of outer-fold sweeps (search.run --outer-folds)
        return run_cli(
            _PROG,
            lambda: nested.parse_set(args),
            nested.finalize_set,
            resume=lambda s: f"--sweep {s.name if s else 'NAME'} --resume",
            summary=nested.summary,
            exit_code=lambda outcome: 1 if any(f.failed for f in outcome.folds) else 0,
        )
    return run_cli(
        _PROG,
        lambda: parse_settings(argv),
        finalize,
        resume=_resume_hint,
        summary=summary,
        exit_code=lambda outcome: 1 if outcome.failed else 0,  # some unit failed
    )


if __name__ == "__main__":
    sys.exit(main())
