"""Nested cross-validation of the whole search: ``search.run --outer-folds K``.

The corpus's sessions are split into K balanced outer folds (data_prep.outer: one derived
store per fold, fold k's sessions its test split, the others its train and val). Each fold
gets a complete sweep of its own, ``NAME-outer{k}`` (its own Optuna study, results folder and
MLflow sweep run, nested under the set's run ``NAME``), run one after the other with all the
slots. ``results/NAME/sweep.json`` records the set (its settings, the fold stores, the MLflow
run); each fold's progress lives in that fold's own sweep, so ``--resume`` of the set resumes
the folds that did not finish and skips those that did, and a larger ``--num-samples``
extends every fold. ``search.finalize --sweep NAME`` finalizes each fold inside it (test of
fold k read once, by fold k's finalize) and then pools them (search/nested.py).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.redact import redact_uri
from search.settings import SWEEP_MANIFEST, SweepSettings, UsageError

OUTER_KIND = "outer"


@dataclass
class OuterOutcome:
    """What a set of outer-fold sweeps did (the summary prints it)."""

    name: str
    results_dir: Path
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    folds: list[Any] = field(default_factory=list)  # each fold's SweepOutcome
    test_sessions: list[list[int]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def interrupted(self) -> bool:
        return any(f.interrupted for f in self.folds) or len(self.folds) < len(self.test_sessions)


def fold_name(name: str, k: int) -> str:
    return f"{name}-outer{k}"


def read_set(sweep_dir: Path) -> dict[str, Any] | None:
    """The ``outer`` record of a set's sweep.json, or None for a plain sweep (or none)."""
    path = sweep_dir / SWEEP_MANIFEST
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc.get("outer")


def run_outer(settings: SweepSettings, *, quiet: bool = False) -> OuterOutcome:
    """Run (or resume, or extend) the K sweeps of ``settings.outer_folds`` outer folds."""
    from search import tracking
    from search.run import run_sweep

    t0 = time.time()
    say = (lambda *_: None) if quiet else (lambda *a: print(*a, flush=True))
    record = read_set(settings.sweep_dir) if settings.resume else None
    stores = None if record else _fold_stores(settings)  # bad --outer-folds: before MLflow
    if record is not None:  # a larger --num-samples is the set's from now on, every fold's
        from search.run import write_manifest

        doc = json.loads(settings.manifest_path.read_text(encoding="utf-8"))
        write_manifest(settings, {k: v for k, v in doc.items() if k != "settings"})
    client = tracking.client_for(settings.tracking_uri)
    exp_id = tracking.experiment_id(client, settings.tracking_uri)
    if record is None:
        record = _start_set(settings, client, exp_id, *stores)
    else:
        tracking.reopen_run(client, record["parent_run_id"])
    outcome = OuterOutcome(
        name=settings.name,
        results_dir=settings.sweep_dir,
        parent_run_id=record["parent_run_id"],
        tracking_uri=settings.tracking_uri,
        experiment_id=exp_id,
        test_sessions=record["test_sessions"],
    )
    status = "FAILED"
    try:
        for k, store in enumerate(record["stores"]):
            fold = fold_settings(settings, k, Path(store), record["parent_run_id"])
            sessions = ", ".join(map(str, record["test_sessions"][k]))
            say(f"outer fold {k + 1}/{len(record['stores'])}: sweep {fold.name}, test {sessions}")
            # Tune's fit leaves its own Ctrl-C handler behind: a Ctrl-C between folds must
            # stop the set, not be swallowed by a finished fit's handler.
            handler = signal.getsignal(signal.SIGINT)
            try:
                result = run_sweep(fold, quiet=quiet)
            finally:
                signal.signal(signal.SIGINT, handler)
            outcome.folds.append(result)
            if result.interrupted:
                break
        status = "KILLED" if outcome.interrupted else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.finish_sweep_run(client, record["parent_run_id"], status=status)
    outcome.wall_seconds = time.time() - t0
    return outcome


def _fold_stores(settings: SweepSettings) -> tuple[Path, list[Path]]:
    """The sweep's store (prepared if need be) and its outer-fold stores (written if need be);
    a usage error when the folds cannot be made or a fold's study name is taken."""
    from data_prep.outer import write_outer_stores
    from data_prep.splits import SplitError
    from search.ledger import study_exists
    from search.run import resolve_store

    for k in range(settings.outer_folds):
        name = fold_name(settings.name, k)
        if (Path(settings.results_dir) / name).exists():
            raise UsageError(
                f"--name {settings.name}: {Path(settings.results_dir) / name} already exists "
                "(a sweep of that name); a new set's folds need their own names: pick another "
                "--name"
            )
        if study_exists(settings.optuna_storage, name):
            raise UsageError(
                f"an Optuna study named {name!r} already exists in {settings.optuna_storage}; "
                "pick another --name"
            )
    base = resolve_store(settings)
    try:
        return base, write_outer_stores(base, settings.outer_folds, settings.seed)
    except SplitError as exc:
        raise UsageError(f"--outer-folds {settings.outer_folds}: {exc}") from exc


def _start_set(
    settings: SweepSettings, client: Any, exp_id: str, base: Path, stores: list[Path]
) -> dict[str, Any]:
    """Open the set's MLflow run and write its sweep.json."""
    from data_prep.store import FeatureStore
    from search import tracking
    from search.run import write_manifest

    names = [fold_name(settings.name, k) for k in range(settings.outer_folds)]
    # manifests only: every split stays sealed
    test_sessions = [
        FeatureStore.open(p, sealed=("test",)).manifest["outer"]["test_sessions"] for p in stores
    ]
    parent = tracking.start_sweep_run(
        client,
        exp_id,
        name=settings.name,
        space=settings.space,
        params={
            "outer_folds": settings.outer_folds,
            "store_path": str(base),
            "store_key": FeatureStore.open(base, sealed=("test",)).key,
            "num_samples": settings.num_samples,
            "seed": settings.seed,
        },
        kind=OUTER_KIND,
    )
    command = settings.command or f"python -m search.run --outer-folds {settings.outer_folds}"
    tracking.describe(client, exp_id, parent, f"nested CV **{settings.name}**: `{command}`")
    record = {
        "folds": settings.outer_folds,
        "parent_run_id": parent,
        "store_path": str(base),
        "stores": [str(p) for p in stores],
        "names": names,
        "test_sessions": test_sessions,
    }
    info = {
        "sweep": settings.name,
        "tracking_uri": redact_uri(settings.tracking_uri),
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "outer": record,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_manifest(settings, info)
    return record


def fold_settings(settings: SweepSettings, k: int, store: Path, parent: str) -> SweepSettings:
    """The sweep of outer fold ``k``: as recorded when it started (then resumed, with the
    set's --num-samples if larger), else the set's settings on the fold's store."""
    name = fold_name(settings.name, k)
    manifest = Path(settings.results_dir) / name / SWEEP_MANIFEST
    if manifest.is_file():
        saved = SweepSettings.load(manifest)
        saved.resume = True
        saved.num_samples = max(saved.num_samples, settings.num_samples)
        saved.address = settings.address
        saved.tracking_uri = settings.tracking_uri  # the set's holds its password, if any
        return saved
    return dataclasses.replace(
        settings,
        name=name,
        data=str(store),
        data_kind="store",
        outer_folds=0,
        outer_parent=parent,
        resume=False,
        tune_name=f"{settings.tune_name or settings.name}-outer{k}",
    )


def summary(outcome: OuterOutcome) -> str:
    from search.run import summary as sweep_summary

    state = " (INTERRUPTED)" if outcome.interrupted else ""
    lines = [
        f"Nested CV {outcome.name}{state}: {len(outcome.folds)} of "
        f"{len(outcome.test_sessions)} outer-fold sweeps, {outcome.wall_seconds / 60:.1f} min."
    ]
    for k, fold in enumerate(outcome.folds):
        sessions = ", ".join(map(str, outcome.test_sessions[k]))
        lines += ["", f"-- outer fold {k} (test sessions {sessions}) --", sweep_summary(fold)]
    lines += [
        "",
        f"Results:   {outcome.results_dir}-outer*/ (one sweep per outer fold)",
        *(
            [f"Resume:    python -m search.run --name {outcome.name} --resume"]
            if outcome.interrupted
            else []
        ),
        f"Finalize:  python -m search.finalize --sweep {outcome.name}  (every fold, then "
        "the nested estimate)",
    ]
    return "\n".join(lines)
