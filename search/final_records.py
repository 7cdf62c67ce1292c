"""What a finalize keeps: its state, one record per finished unit, and their MLflow runs.

Files under results/<sweep>/final/: state.json (the plan, the MLflow parent run, the commands
that ran), units/<unit>.json (one finished unit, written atomically and last, so that its
presence means the unit is complete) and checkpoints/<unit>/ (the kept weights). MLflow: one
parent run per finalize and one run per unit under it, created by the driver. On a resume, the
records on disk are the truth: runs a dead driver left behind are ended and deleted, and a
finished unit whose run was lost is logged again.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_prep.atomic import write_bytes_atomic, write_text_atomic
from search.final_plan import Candidate, Plan
from search.final_settings import FinalizeSettings
from search.final_unit import timestamp
from search.redact import redact_uri

# MLflow tags of finalize runs (beside search.tracking's KIND/SPACE/MODEL/SWEEP/PARENT).
UNIT = "case_tune.unit"
SEED = "case_tune.seed"
SOURCE_TRIAL = "case_tune.source_trial"
TEST_READ = "case_tune.test_read"


@dataclass(frozen=True)
class UnitRuns:
    """Where a finalize's unit runs go in MLflow: its experiment, under its parent run."""

    client: Any
    exp_id: str
    parent: str
    space: str
    sweep: str


# -- files ----------------------------------------------------------------------------------
def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def finished_units(settings: FinalizeSettings) -> dict[str, dict[str, Any]]:
    """Unit id -> record of every unit whose JSON was written (they are complete by design)."""
    out = {}
    if settings.units_dir.is_dir():
        for p in sorted(settings.units_dir.glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                rec = json.loads(p.read_text(encoding="utf-8"))
                out[rec["unit_id"]] = rec
    return out


def save_unit(settings: FinalizeSettings, record: dict[str, Any]) -> dict[str, Any]:
    """Write the unit's checkpoints, then its JSON (last, atomically: it marks it finished)."""
    blobs = record.pop("_checkpoints", {})
    ck_dir = settings.checkpoints_dir / record["unit_id"]
    ck_dir.mkdir(parents=True, exist_ok=True)
    ignore = settings.checkpoints_dir / ".gitignore"
    if not ignore.exists():  # checkpoints are outputs, MBs each: keep them out of git
        ignore.write_text("*\n", encoding="utf-8")
    files = {}
    for key, blob in blobs.items():
        epoch, _, fold = key.partition("-")
        path = ck_dir / (f"epoch_{int(epoch):04d}" + (f"_{fold}" if fold else "") + ".pt")
        write_bytes_atomic(path, blob)
        files[key] = str(path)
    record["checkpoint_files"] = files
    write_json_atomic(settings.units_dir / f"{record['unit_id']}.json", record)
    return record


def chosen_checkpoints(record: Mapping[str, Any]) -> list[str]:
    """The files of a finished unit's chosen weights: one head, or one per fold."""
    epoch = str(record["chosen_epoch"])
    files = record.get("checkpoint_files", {})
    return [p for k, p in sorted(files.items()) if k == epoch or k.startswith(f"{epoch}-")]


# -- the finalize's state and parent run ----------------------------------------------------
def open_state(settings: FinalizeSettings, plan: Plan, client: Any, exp_id: str) -> dict[str, Any]:
    """state.json, written: the interrupted finalize's (its parent run reopened) on a resume,
    else a new one with a new parent run. The candidates are always this call's."""
    from search import tracking

    if settings.resume and settings.state_path.is_file():
        state = json.loads(settings.state_path.read_text(encoding="utf-8"))
        tracking.reopen_run(client, state["parent_run_id"])
        state.setdefault("resumed_commands", []).append(settings.command)
    else:
        state = {
            "sweep": settings.sweep,
            "parent_run_id": _new_parent_run(settings, plan, client, exp_id),
            "experiment_id": exp_id,
            "store_key": plan.store.key,
            "store_path": str(plan.store_path),
            "created": timestamp(),
            "settings": {**settings.to_dict(), "tracking_uri": redact_uri(settings.tracking_uri)},
            "resumed_commands": [],
        }
    state["candidates"] = [asdict(c) for c in plan.candidates]
    write_json_atomic(settings.state_path, state)
    return state


def _new_parent_run(settings: FinalizeSettings, plan: Plan, client: Any, exp_id: str) -> str:
    from search import tracking

    parent = client.create_run(
        exp_id,
        run_name=f"final {settings.sweep}",
        tags={
            tracking.KIND: "final",
            tracking.SPACE: plan.space,
            tracking.SWEEP: settings.sweep,
            "case_tune.role": "finalize",
        },
    ).info.run_id
    tracking.log_params(
        client,
        parent,
        {
            "sweep": settings.sweep,
            "top_k": settings.top_k,
            "models": ",".join(settings.models),
            "epochs": settings.epochs,
            "seeds": ",".join(map(str, settings.seeds)),
            "folds": settings.folds,
            "store_key": plan.store.key,
            "store_path": str(plan.store_path),
            "num_units": len(plan.units),
            "cpus_per_trial": settings.cpus_per_trial,
            "gpus_per_trial": settings.gpus_per_trial,
        },
    )
    command = settings.command or f"python -m search.finalize --sweep {settings.sweep}"
    tracking.describe(
        client,
        exp_id,
        parent,
        f"final runs of sweep **{settings.sweep}** ({time.strftime('%Y-%m-%d %H:%M')}): "
        f"`{command}` on store `{plan.store_path}`",
    )
    return parent


def finish_parent_run(
    runs: UnitRuns,
    files: Sequence[Path],
    units_finished: int,
    failed: Sequence[str],
    best: Mapping[str, Any] | None,
) -> None:
    """The report's files as artifacts, the best row's numbers as metrics; then ended."""
    from search import tracking

    for f in files:
        with contextlib.suppress(Exception):
            runs.client.log_artifact(runs.parent, str(f), "results")
    metrics = {"units_finished": float(units_finished), "units_failed": float(len(failed))}
    if best:
        metrics.update({f"best_{k}": v for k, v in best["metrics"].items()})
    tracking.finish_sweep_run(
        runs.client,
        runs.parent,
        status="FINISHED" if not failed else "FAILED",
        metrics=metrics,
        tags={"case_tune.best_label": (best or {}).get("label", "")},
    )


# -- unit runs ------------------------------------------------------------------------------
def recover_finished(
    settings: FinalizeSettings, plan: Plan, runs: UnitRuns
) -> dict[str, dict[str, Any]]:
    """The planned units already finished (read back, never retrained), each left with exactly
    one FINISHED run: stale runs are deleted, and a unit whose run was lost with a killed
    driver is logged to a new one (its record then names that run)."""
    planned = {u["unit_id"] for u in plan.units}
    done = {k: v for k, v in finished_units(settings).items() if k in planned}
    kept = clean_stale_runs(runs, done)
    for uid, rec in done.items():
        if uid not in kept:
            run_id = start_unit_run(runs, plan.by_key[rec["candidate"]], rec)
            rec["mlflow_run_id"] = run_id
            write_json_atomic(settings.units_dir / f"{uid}.json", rec)
            log_unit(runs.client, run_id, rec)
    return done


def clean_stale_runs(runs: UnitRuns, done: Mapping[str, Any]) -> dict[str, str]:
    """Keep one FINISHED run per finished unit; end KILLED and delete every other unit run
    (a dead driver's RUNNING ones, or a finished unit whose logging was cut). Returns unit ->
    run id of the runs kept."""
    from search import tracking

    keep: dict[str, str] = {}
    for run in tracking.child_runs(runs.client, runs.exp_id, runs.parent, "final"):
        uid = run.data.tags.get(UNIT, "")
        if uid in done and run.info.status == "FINISHED" and uid not in keep:
            keep[uid] = run.info.run_id
            continue
        tracking.discard_run(runs.client, run.info.run_id)  # ended KILLED first if RUNNING
    return keep


def start_unit_run(runs: UnitRuns, cand: Candidate, unit: Mapping[str, Any]) -> str:
    from search import tracking

    run = runs.client.create_run(
        runs.exp_id,
        run_name=f"final {cand.model} seed {unit['seed']}",
        tags={
            tracking.PARENT: runs.parent,
            tracking.KIND: "final",
            tracking.SPACE: runs.space,
            tracking.MODEL: cand.model,
            tracking.SWEEP: runs.sweep,
            UNIT: unit["unit_id"],
            SEED: str(unit["seed"]),
            SOURCE_TRIAL: cand.trial_id,
            tracking.CONFIG: json.dumps(unit["config"], default=str)[:5000],
        },
    )
    tracking.log_params(runs.client, run.info.run_id, unit["config"])
    return run.info.run_id


def log_unit(client: Any, run_id: str, record: Mapping[str, Any]) -> None:
    """Per-epoch train/val metrics, test metrics at each checkpoint (step = epoch), the chosen
    epoch, the chosen checkpoint as an artifact; then FINISHED."""
    from mlflow.entities import Metric, RunTag

    from search import tracking

    now = int(time.time() * 1000)
    ms = []
    for h in record["history"]:
        step = int(h["epoch"])
        ms += [Metric(k, v, now, step) for k, v in tracking.trial_metrics(h).items()]
    for e, m in record["test_at_checkpoint"].items():
        ms += [Metric(k, float(v), now, int(e)) for k, v in m.items() if math.isfinite(v)]
    ms += [
        Metric("chosen_epoch", float(record["chosen_epoch"]), now, 0),
        Metric("fixed_epoch", float(record["fixed_epoch"]), now, 0),
    ]
    chosen = record["test_at_checkpoint"][str(record["chosen_epoch"])]
    ms += [Metric(f"chosen_{k}", float(v), now, 0) for k, v in chosen.items() if math.isfinite(v)]
    tags = [
        RunTag(tracking.SPLITS_READ, ",".join(record["train_splits_read"])),
        RunTag(TEST_READ, "after training, once per checkpoint"),
        RunTag("case_tune.status", "completed"),
    ]
    for i in range(0, len(ms), 900):
        client.log_batch(
            run_id, metrics=ms[i : i + 900], tags=tags if i == 0 else [], synchronous=True
        )
    tracking.log_params(
        client,
        run_id,
        {"chosen_epoch": record["chosen_epoch"], "fixed_epoch": record["fixed_epoch"]},
    )
    with contextlib.suppress(Exception):  # an unreachable artifact store must not lose a unit
        for path in chosen_checkpoints(record):
            client.log_artifact(run_id, path, "checkpoint")
    client.set_terminated(run_id, "FINISHED")


def fail_unit_run(client: Any, run_id: str, error: str) -> None:
    from search import tracking

    client.set_tag(run_id, "case_tune.status", "failed")
    client.set_tag(run_id, tracking.ERROR, tracking.error_summary(error)[:5000] if error else "")
    with contextlib.suppress(Exception):
        client.log_text(run_id, error, "error.txt")
    client.set_terminated(run_id, "FAILED")


def end_unit_runs(runs: UnitRuns, run_ids: Sequence[str], status: str) -> None:
    """A driver stopped by an error or Ctrl-C: its runs in flight and its parent end ``status``."""
    for run_id in run_ids:
        runs.client.set_tag(run_id, "case_tune.status", status.lower())
        runs.client.set_terminated(run_id, status)
    runs.client.set_terminated(runs.parent, status)
