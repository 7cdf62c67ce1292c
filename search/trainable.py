"""The Ray Tune trainable: one trial = the first epochs of one final run, on the feature store.

It opens the store with the test split sealed, trains on train and evaluates on val only (or,
with session folds, one head per fold, each validated on its fold), and `tune.report`s each
epoch's metrics with a checkpoint of everything needed to continue (a trial whose node dies
restarts from it). The config's ``epochs`` is the final run's length, the schedule's horizon;
the trial stops after ``max_epochs`` of them, so it is exactly the start of what finalize
trains. Decisions use the selection statistic of models.selection (the trailing mean of val
macro-F1; the fold mean with folds), not the luckiest epoch. It knows nothing of MLflow:
tracking happens on the driver (search/tracking.py).

Failures. Tune's FailureConfig retries a trial that raised as readily as one whose process or
node died, but only the second kind can succeed on a retry: the same config on the same data
fails the same way again (training is deterministic). So an exception from the trial's own
code (config, store, training, its checkpoint file) never reaches Tune: the trial reports
one last result carrying the error (``ERROR_KEY``, ``TRACEBACK_KEY``; its metrics NaN) and
returns. Tune records it as ended, the driver records it as failed (`own_error`: MLflow run
FAILED with the error, Optuna trial FAIL) and it is tried exactly once. What Tune still sees
as a failure, and retries from the last checkpoint up to ``max_failures`` times, is what kills
the trial from outside: a dead worker process or node, or Tune's own reporting and checkpoint
upload failing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_prep.atomic import pid_alive

# Imported in the worker before Tune restores a trial (it unpickles this module's trainable):
# a trial resumed after waiting at a rung (search/ordered.py) or after a lost node would print
# "Restored on ... from checkpoint" into the sweep's progress; MLflow counts the restarts.
logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)

METRIC = "val_macro_f1"  # the search metric, per epoch (the fold mean with folds)
TIE_METRIC = "val_macro_auroc"
# Early in training, on neutral-heavy data, most heads still predict neutral everywhere: their
# macro-F1 is exactly the all-neutral value, however much they have learned. Those exact ties
# are broken by val macro-AUROC (threshold-free, comparable across losses and class weights,
# unlike val loss). ASHA and TPE only compare values, so a tiny weight suffices; it keeps the
# AUROC a tie-break: it is below the smallest macro-F1 step one changed prediction makes on a
# val split of up to 10,000 rows (1 / 7 / 20,000).
TIE_BREAK = 1e-6
STAT_METRIC = "val_macro_f1_trailing"  # the selection statistic after this epoch
# What ASHA compares at its rungs and what TPE learns from (the last reported value): the
# selection statistic + tie-break.
RUNG_METRIC = "val_macro_f1_rung"
SEARCH_METRIC = "val_macro_f1_search"
MODE = "max"
# The trial's number in the sweep's Optuna study (its ledger), put into the Tune config by the
# searcher (search.trial_search) so that every part numbers trials alike; not a TrainConfig key.
TRIAL_NUMBER = "case_tune_trial_number"
CHECKPOINT_FILE = "trial.pt"
# The last result of a trial whose own code raised (see the module docstring).
ERROR_KEY = "case_tune_error"  # one line: the exception
TRACEBACK_KEY = "case_tune_traceback"  # the traceback, for the MLflow run's error.txt
_MAX_TRACEBACK = 20_000


# Tune keeps, for every numeric key of a result, its min, max, mean and last-5 / last-10
# windows, and re-encodes them (indented JSON) into every experiment save and after every
# result: with the ~40 keys of an epoch's metrics that was 50 KB per trial, 55 MB per save at
# 1,000 trials, a quarter of the driver's CPU at 32 slots (results/bench.md, "scale-findings").
# So Tune gets the numbers it acts on (the search and rung values, the statistic the progress
# line prints) and the epoch's full metrics as one string, which the MLflow callback unpacks.
PACKED_KEY = "case_tune_metrics"


def epoch_report(metrics: dict[str, Any], value: float, **text: str) -> dict[str, Any]:
    """What a trial `tune.report`s after an epoch: ``metrics`` packed, ``value`` (the
    statistic, tie-broken) as the rung and search metric, ``text`` (strings) as given."""
    return {
        "epoch": metrics["epoch"],
        STAT_METRIC: metrics[STAT_METRIC],
        RUNG_METRIC: value,
        SEARCH_METRIC: value,
        PACKED_KEY: json.dumps(metrics, default=float),  # numpy scalars too
        **text,
    }


def unpacked(result: dict[str, Any]) -> dict[str, Any]:
    """A Tune result with the epoch's packed metrics (`epoch_report`) back as keys."""
    packed = result.get(PACKED_KEY)
    out = {k: v for k, v in result.items() if k != PACKED_KEY}
    return {**json.loads(packed), **out} if packed else out


def own_error(result: dict[str, Any] | None) -> str | None:
    """The error line of a trial that failed in its own code, from its last result (None if
    it did not)."""
    error = (result or {}).get(ERROR_KEY)
    return str(error) if error else None


def train_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial's config without the sweep's bookkeeping (what TrainConfig takes)."""
    return {k: v for k, v in config.items() if k != TRIAL_NUMBER}


def tie_broken(metrics: dict[str, float], key: str = METRIC) -> float:
    """``key`` (val macro-F1) plus ``TIE_BREAK`` x val macro-AUROC (alone when AUROC is
    undefined)."""
    value = metrics.get(key, float("nan"))
    tie = metrics.get(TIE_METRIC, float("nan"))
    return value + TIE_BREAK * tie if math.isfinite(tie) else value


_STORES: dict[str, Any] = {}  # per worker process: reused actors keep the memory maps open


def open_sealed_store(path: str) -> Any:
    """The feature store at ``path`` with its test split sealed (cached per process)."""
    from data_prep.store import FeatureStore

    store = _STORES.get(path)
    if store is None:
        store = FeatureStore.open(path, sealed=("test",))
        _STORES[path] = store
    return store


def fold_metrics(per_fold: Sequence[dict[str, float]]) -> dict[str, float]:
    """One epoch's metrics of K fold heads: every val_* and train_* metric as the mean over
    folds under its own name, and each fold's val_* value as ``{name}_fold{k}``."""
    out: dict[str, float] = {}
    for key, first in per_fold[0].items():
        if not isinstance(first, int | float) or isinstance(first, bool):
            continue
        values = [float(m.get(key, math.nan)) for m in per_fold]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = sum(finite) / len(finite) if finite else math.nan
        if key.startswith("val_"):
            out.update({f"{key}_fold{k}": v for k, v in enumerate(values)})
    if "val_macro_f1_se" in out:  # folds are independent: SE of a mean of K values
        ses = [m.get("val_macro_f1_se", math.nan) for m in per_fold]
        out["val_macro_f1_se"] = math.sqrt(sum(s * s for s in ses)) / len(ses)
    return out


class TrialRun:
    """The heads of one trial (one, or one per fold), stepped together an epoch at a time."""

    def __init__(
        self,
        config: dict[str, Any],
        store: Any,
        folds: int,
        fold_seed: int = 0,
        device: Any = None,
        threads: int | None = None,
    ):
        from models.data import fold_rows
        from models.selection import Tracker
        from models.train import Trainer

        config = train_config(config)  # a Tune trial's config carries its ledger number

        if folds > 1:
            rows = fold_rows(store, folds, fold_seed)
            self.trainers = [
                Trainer(config, store, rows=r, device=device, threads=threads) for r in rows
            ]
        else:
            self.trainers = [Trainer(config, store, device=device, threads=threads)]
        self.tracker = Tracker()
        self.history: list[dict[str, float]] = []

    @property
    def epoch(self) -> int:
        return self.trainers[0].epoch

    def run_epoch(self) -> dict[str, float]:
        per_fold = [t.run_epoch() for t in self.trainers]
        metrics = per_fold[0] if len(per_fold) == 1 else fold_metrics(per_fold)
        metrics[STAT_METRIC] = self.tracker.add(metrics.get(METRIC, math.nan))
        self.history.append(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"trainers": [t.state_dict() for t in self.trainers], "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for t, s in zip(self.trainers, state["trainers"], strict=True):
            t.load_state_dict(s)
        self.history = [dict(h) for h in state["history"]]
        for h in self.history:
            self.tracker.add(h.get(METRIC, math.nan))


def _save(run: TrialRun, folder: str) -> Any:
    import torch
    from ray import tune

    torch.save(run.state_dict(), Path(folder) / CHECKPOINT_FILE)
    return tune.Checkpoint.from_directory(folder)


def _restore(run: TrialRun) -> None:
    """Continue from the trial's last checkpoint when Tune restarts it (node lost, resume)."""
    import torch
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    run.load_state_dict(state)


CHECKPOINT_PREFIX = "case-tune-trial-"


def epoch_folder() -> tempfile.TemporaryDirectory:
    """The temporary folder of one epoch's checkpoint, named after this process: ASHA stops a
    trial by killing its worker, usually while `tune.report` still holds the folder, so no
    `finally` can remove it; `remove_orphan_checkpoints` does, later, by the process name."""
    return tempfile.TemporaryDirectory(prefix=f"{CHECKPOINT_PREFIX}{os.getpid()}-")


def remove_orphan_checkpoints(folder: str | None = None) -> int:
    """Remove the epoch folders (`epoch_folder`) of trial processes on this machine that are
    gone, and return how many. Called where a trial starts and where a sweep ends, so stopped
    trials do not leave a checkpoint each in the temporary folder. Folders of live processes
    (another sweep's running trial) are left alone."""
    removed = 0
    for path in Path(folder or tempfile.gettempdir()).glob(f"{CHECKPOINT_PREFIX}*-*"):
        pid = path.name[len(CHECKPOINT_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def quiet_exit_in_callbacks() -> None:
    """Ray stops a worker (a trial ASHA stopped) with SIGTERM, and its handler raises
    SystemExit. When the signal lands inside a garbage-collector or weakref callback, Python
    cannot raise there and prints "Exception ignored in ... SystemExit: 1" with a traceback,
    which Ray forwards into the sweep's output. The exit was asked for and Python drops the
    exception either way; only the print goes. Other unraisable errors are printed as before."""
    previous = sys.unraisablehook
    if getattr(previous, "_case_tune", False):  # installed already in this worker
        return

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook._case_tune = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run_trial(
    config: dict[str, Any],
    store_path: str,
    threads: int | None = None,
    gpus: float = 0.0,
    *,
    max_epochs: int | None = None,
    folds: int = 0,
) -> None:
    """Train one config for at most ``max_epochs`` of its ``epochs``, reporting every epoch
    (with a checkpoint) to Tune. An exception from the trial's own code ends the trial with an
    error result instead of failing it in Tune (see the module docstring)."""
    from ray import tune

    from search.faults import fault_point

    trial_id = tune.get_context().get_trial_id()  # None when called outside Tune
    fault_point("trial_start", None, trial_id or "")
    remove_orphan_checkpoints()
    if trial_id is not None:  # a Ray worker: the sweep's output is its stderr
        quiet_exit_in_callbacks()
    # One "checkpoint created" line per trial and epoch would drown the sweep's progress.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from models.repro import describe

        run, store, last = _start(config, store_path, threads, gpus, folds, max_epochs)
    except Exception as exc:  # the trial's own code: not retried (see the module docstring)
        if trial_id is None:
            raise  # no Tune to report to: the caller gets the error
        report_own_error(exc, None)
        return
    while run.epoch < last:
        epoch = run.epoch + 1
        with epoch_folder() as folder:
            try:
                metrics = {**run.run_epoch(), "epoch": run.epoch}
                result = epoch_report(
                    metrics,
                    tie_broken(metrics, STAT_METRIC),
                    splits_read=",".join(sorted(store.accessed)),
                    # what the numerics depend on (threads, kernel path), for explaining a rerun
                    numerics=describe(run.trainers[0].numerics),
                )
                checkpoint = _save(run, folder)
            except Exception as exc:  # the trial's own code: not retried
                if trial_id is None:
                    raise
                report_own_error(exc, epoch)
                return
            # Outside the try: a failing report or checkpoint upload is Tune's (storage,
            # network), and Tune retries it from the last checkpoint.
            tune.report(result, checkpoint=checkpoint)
        fault_point("trial_reported", run.epoch, trial_id or "")


def _start(
    config: dict[str, Any],
    store_path: str,
    threads: int | None,
    gpus: float,
    folds: int,
    max_epochs: int | None,
) -> tuple[TrialRun, Any, int]:
    """The trial's heads on its device, continued from Tune's checkpoint if it has one."""
    from data_prep.device import run_device
    from models.config import TrainConfig
    from models.data import use_gpu_share

    use_gpu_share(gpus)  # several trials may share one GPU
    store = open_sealed_store(store_path)
    cfg = TrainConfig.from_dict(train_config(config))
    # A GPU only if the trial asked for one (Ray no longer hides GPUs from CPU trials).
    run = TrialRun(cfg.to_dict(), store, folds, device=run_device(gpus), threads=threads)
    _restore(run)
    return run, store, min(cfg.epochs, max_epochs or cfg.epochs)


def report_own_error(exc: Exception, epoch: int | None) -> None:
    """The trial's last result: the error, and NaN where Tune's searcher and scheduler expect
    their metrics (Tune rejects a result without them; NaN is "no value" to both)."""
    from ray import tune

    text = "".join(traceback.format_exception(exc))
    tune.report(
        {
            ERROR_KEY: traceback.format_exception_only(exc)[-1].strip() or type(exc).__name__,
            TRACEBACK_KEY: text[-_MAX_TRACEBACK:],
            "failed_epoch": epoch if epoch is not None else math.nan,  # None: before training
            RUNG_METRIC: math.nan,
            SEARCH_METRIC: math.nan,
        }
    )


def make_trainable(
    store_path: str | Path,
    *,
    cpus: float = 1.0,
    gpus: float = 0.0,
    max_epochs: int | None = None,
    folds: int = 0,
) -> Callable[[dict[str, Any]], None]:
    """A function trainable bound to one store, wrapped with its per-trial resources."""
    from ray import tune

    path = str(Path(store_path).resolve())
    threads = max(1, int(cpus))

    def case_trial(config: dict[str, Any]) -> None:
        run_trial(config, path, threads, gpus, max_epochs=max_epochs, folds=folds)

    return tune.with_resources(case_trial, {"cpu": cpus, "gpu": gpus})
