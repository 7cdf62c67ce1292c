"""MLflow tracking of a sweep, done entirely from the Tune driver.

Trials only `tune.report` their metrics; a Tune `Callback` on the driver turns them into one
MLflow run per trial, nested under one run for the sweep, through an explicit `MlflowClient`
(no global active-run state). Logging from the driver works when trials run on nodes that
cannot see the driver's sqlite file, and lets a resumed sweep repair what a killed driver left
behind (runs still RUNNING, trials that restart from scratch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from ray.tune import Callback

from search.faults import fault_point
from search.mlflow_writer import MlflowWriter
from search.redact import connect_uri, redact_uri, remember
from search.trainable import TRACEBACK_KEY, TRIAL_NUMBER, own_error, train_config, unpacked

EXPERIMENT = "case-tune"
KIND = "case_tune.kind"
SPACE = "case_tune.space"
MODEL = "case_tune.model"
TRIAL_ID = "case_tune.trial_id"
NUMBER = "case_tune.trial_number"  # the trial's number in the sweep's Optuna study
SWEEP = "case_tune.sweep"
STATUS = "case_tune.status"
ERROR = "case_tune.error"
RESTARTS = "case_tune.restarts"  # times Tune restarted the trial after its process died
RESTART_CAUSE = "case_tune.restart_cause"  # the last such failure, one line
SPLITS_READ = "case_tune.splits_read"
NUMERICS = "case_tune.numerics"  # torch threads, CPU kernel path: what explains a CPU difference
CONFIG = "case_tune.config"  # the trial's config as JSON (typed; params are strings)
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # the description the UI shows for a run or an experiment
METRIC_PREFIXES = ("train_", "val_")
LOGGED_SUFFIXES = (
    "_macro_f1",
    "_weighted_f1",
    "_micro_f1",
    "_seed_micro_f1",
    "_loss",
    "_macro_auroc",
)
_MAX_TAG = 5000
_MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def client_for(tracking_uri: str) -> MlflowClient:
    if redact_uri(tracking_uri) != tracking_uri:
        # MLflow prints "View run ... at: <tracking URI>/..." to stdout for http stores, with
        # the password in it: never for a URI that carries one.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, tracking_uri: str, name: str = EXPERIMENT) -> str:
    """Get or create the experiment, once, on the driver (parallel creators would race)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        # Keep artifacts beside the database rather than in whatever the cwd is.
        location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _param_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


_FOLD = re.compile(r"_fold\d+$")


def trial_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The per-epoch metrics of one Tune result that go to MLflow (DESIGN.md names, each
    fold's value as ``{name}_fold{k}``, the per-class F1 scores, the selection statistic and
    the bootstrap SE of val macro-F1), finite numbers only."""
    out = {}
    for key, value in result.items():
        if not key.startswith(METRIC_PREFIXES) or isinstance(value, bool):
            continue
        base = _FOLD.sub("", key)
        if not (base.endswith(LOGGED_SUFFIXES) or "_f1_" in base):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


def start_sweep_run(
    client: MlflowClient,
    exp_id: str,
    *,
    name: str,
    space: str,
    params: Mapping[str, Any],
    parent: str = "",
    kind: str = "sweep",
) -> str:
    """A sweep's MLflow run (``kind`` "outer": the run of a set of outer-fold sweeps, which
    are then nested under it through ``parent``)."""
    tags = {KIND: kind, SPACE: space, SWEEP: name, **({PARENT: parent} if parent else {})}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def param_batches(params: Mapping[str, Any]) -> list[list[Param]]:
    """``params`` as MLflow params, in batches within its limit of 100 per call."""
    items = [Param(k, _param_value(v)[:6000]) for k, v in params.items()]
    return [items[i : i + 90] for i in range(0, len(items), 90)]


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    for batch in param_batches(params):
        client.log_batch(run_id, params=batch, synchronous=True)


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """Mark a sweep run RUNNING again (a resumed sweep reuses its run)."""
    client.update_run(run_id, status="RUNNING")


def trial_runs(client: MlflowClient, exp_id: str, parent_run_id: str) -> list[Any]:
    """All non-deleted trial runs nested under the sweep run."""
    return child_runs(client, exp_id, parent_run_id, "trial")


def child_runs(client: MlflowClient, exp_id: str, parent_run_id: str, kind: str) -> list[Any]:
    """All non-deleted runs of ``kind`` (trial, final) nested under ``parent_run_id``."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{PARENT}` = '{parent_run_id}' and tags.`{KIND}` = '{kind}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _error_text(trial: Any) -> str:
    """The trial's error trace: what its own code raised (search.trainable), else Tune's
    error (the driver's copy if present, else Tune's storage)."""
    result = trial.last_result or {}
    if own_error(result):
        return str(result.get(TRACEBACK_KEY) or own_error(result))
    try:
        path = trial.error_file
        if path and Path(path).is_file():
            return Path(path).read_text(encoding="utf-8", errors="replace")
        err = trial.get_error()
        if err is not None:
            return str(err)
    except Exception:  # the error file may be on another node or gone
        pass
    return f"trial {trial.trial_id} errored (no error text available)"


_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:\(|:)\s*(.*)$")


def error_summary(text: str) -> str:
    """One line naming the trial's own exception. Ray wraps it in RayTaskError lines and may
    chain a secondary error; the first non-Ray exception line is the cause."""
    candidates = [m.group(0).strip() for ln in text.splitlines() if (m := _EXC_LINE.match(ln))]
    own = [c for c in candidates if not c.startswith(("ray.", "Ray"))]
    if own:
        return own[0]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text


class MlflowTrialCallback(Callback):
    """Logs every Tune trial as a nested MLflow run, from the driver.

    Statuses: FINISHED (ran all epochs), FINISHED + `case_tune.status=stopped_early` (ASHA
    stopped it), FAILED + `case_tune.error` tag and `error.txt` artifact (its code raised, or
    its process died more often than FailureConfig retries).
    A trial Tune restarts from its checkpoint (a lost node, a dead worker, a resumed sweep)
    continues its run. A trial that (re)starts with no checkpoint while an older run of the
    same `case_tune.trial_id` exists (a resumed sweep restarting an unfinished trial from
    scratch) gets a fresh run and the old
    one is deleted, so each trial has exactly one run with a clean history.

    Epochs are written in batches, one `log_batch` per run with every epoch it has waiting,
    by a writer process (search/mlflow_writer.py: at 64 concurrent trials MLflow's writes were
    a third of the driver's CPU, bench/bench_scale.py): handed over every ``FLUSH_S`` seconds
    and when a trial ends or restarts, and written before Tune saves its experiment state
    (`get_state` waits for the writer). So whatever checkpoint the saved state names, every
    epoch up to it is in MLflow: a killed driver loses only epochs that a resumed sweep
    trains and logs again.
    """

    FLUSH_S = 5.0

    def __init__(
        self,
        tracking_uri: str,
        exp_id: str,
        parent_run_id: str,
        space: str,
        experiment_dir: str | Path | None = None,
        max_epochs: int | None = None,
    ) -> None:
        # Tune pickles this callback into its experiment state: only the redacted URI goes
        # there; the driver remembers the real one (search.redact).
        self.tracking_uri = remember(tracking_uri)
        self.max_epochs = max_epochs  # where a trial that was not stopped ends
        self.exp_id = exp_id
        self.parent_run_id = parent_run_id
        self.space = space
        # Tune's experiment folder: a trial's run is marked FINISHED only once the state
        # saved there says the trial terminated (see on_trial_complete).
        self.experiment_dir = str(experiment_dir) if experiment_dir else None
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] | None = None  # trial_id -> run_id
        self._pending: dict[str, str] = {}  # trial_id -> run_id, complete but not yet FINISHED
        self._unlogged: dict[str, dict] = {}  # trial_id -> its result awaiting its checkpoint
        self._logged_upto: dict[str, int] = {}  # run_id -> last epoch a reopened run holds
        self._sweep: str | None = None  # the sweep's name (its run's tag), read when needed
        self._batch: dict[str, tuple[list[Metric], dict[str, RunTag]]] = {}  # run_id -> unwritten
        self._flushed = time.monotonic()
        self._saved = SavedStates(self.experiment_dir)
        self._writer: MlflowWriter | None = None

    # Tune pickles callbacks with the experiment; clients and caches are rebuilt on demand.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_runs"] = None
        state["_pending"] = {}
        state["_unlogged"] = {}
        state["_logged_upto"] = {}
        state["_batch"] = {}
        state["_saved"] = None
        state["_writer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fresh = {"experiment_dir": None, "_pending": {}, "_unlogged": {}, "_logged_upto": {}}
        self.__dict__.update(
            {**fresh, **state, "_batch": {}, "_flushed": time.monotonic(), "_writer": None}
        )
        self._saved = SavedStates(self.experiment_dir)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(connect_uri(self.tracking_uri))
        return self._client

    @property
    def writer(self) -> MlflowWriter:
        if self._writer is None:
            self._writer = MlflowWriter(connect_uri(self.tracking_uri))
        return self._writer

    @property
    def sweep(self) -> str:
        """The sweep's name, read once from its run's tag, so that its trials carry it too and
        one filter (`tags.case_tune.sweep`) finds the sweep run with its trials."""
        if getattr(self, "_sweep", None) is None:
            self._sweep = self.client.get_run(self.parent_run_id).data.tags.get(SWEEP, "")
        return self._sweep

    @property
    def runs(self) -> dict[str, str]:
        if self._runs is None:
            self._runs = {}
            for run in trial_runs(self.client, self.exp_id, self.parent_run_id):
                tid = run.data.tags.get(TRIAL_ID)
                if tid in self._runs:  # should not happen; keep the newest
                    discard_run(self.client, self._runs[tid])
                self._runs[tid] = run.info.run_id
        return self._runs

    def setup(self, **info: Any) -> None:
        _ = self.runs
        _ = self.writer  # its process starts (imports MLflow) while Ray starts the trials

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        old = self.runs.get(trial.trial_id)
        if old is not None and trial.checkpoint is not None:
            # Restarted from its last checkpoint (a resumed sweep, a lost node): the same run
            # goes on, so its history stays one history. After a lost node it holds exactly
            # the epochs up to that checkpoint (see on_trial_result). A resumed sweep may
            # restart from a checkpoint older than the run's last epoch (Tune's saved state
            # can lag its newest checkpoint by one); the epochs trained again are not logged
            # twice (see _log_result).
            self.flush(old, wait=True)  # its history is read back
            reopen_run(self.client, old)
            history = self.client.get_metric_history(old, "val_macro_f1")
            self._logged_upto[old] = max((m.step for m in history), default=0)
            return
        old = self.runs.pop(trial.trial_id, None)
        if old is not None:  # its history would mix two starts from scratch
            self.flush(old, wait=True)  # nothing may be written to it once deleted
            discard_run(self.client, old)
        config = train_config(trial.config)
        number = trial.config.get(TRIAL_NUMBER)
        run = self.client.create_run(
            self.exp_id,
            run_name=f"{trial.trial_id} {config.get('model', '')}".strip(),
            tags={
                **({NUMBER: str(number)} if number is not None else {}),
                PARENT: self.parent_run_id,
                KIND: "trial",
                SWEEP: self.sweep,
                SPACE: self.space,
                MODEL: str(config.get("model", "")),
                TRIAL_ID: trial.trial_id,
                CONFIG: json.dumps(config, default=str)[:_MAX_TAG],
            },
        )
        self.runs[trial.trial_id] = run.info.run_id
        # The writer's first job for the run (before any epoch); a killed driver's lost
        # params belong to a trial Tune never saved as started, whose run is discarded.
        for batch in param_batches(config):
            self.writer.log_batch(run.info.run_id, [], [], batch)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """Hold an epoch's result until Tune has registered the checkpoint reported with it
        (on_checkpoint). Tune processes the result first and registers its checkpoint only
        once a separate save call on the trial's actor returns; a node lost in between
        restarts the trial from the checkpoint before, which reports this epoch again.
        Logged at once, the epoch would be in the run's history twice."""
        self._unlogged[trial.trial_id] = unpacked(result)
        iteration = result.get("training_iteration")
        # Tests kill the driver here (trial number:epoch), its other trials mid-epoch ...
        fault_point("driver_result", f"{trial.config.get(TRIAL_NUMBER)}:{iteration}")
        # ... or the trial's worker, before Tune has registered this epoch's checkpoint.
        fault_point(
            "trial_result",
            iteration,
            trial.trial_id,
            victim=result.get("pid"),
        )

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        result = self._unlogged.pop(trial.trial_id, None)
        if result is not None:
            self._log_result(trial, result)

    def _flush_unlogged(self, trial: Any) -> None:
        """The trial is over: a result that came without a checkpoint is final, log it."""
        result = self._unlogged.pop(trial.trial_id, None)
        if result is not None:
            self._log_result(trial, result)

    def _log_result(self, trial: Any, result: dict) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get("training_iteration", 0))
        if step <= self._logged_upto.get(run_id, 0):
            return  # an epoch a restart trained again: the run has it (same config and seed)
        now = int(time.time() * 1000)
        metrics, tags = self._batch.setdefault(run_id, ([], {}))
        metrics += [Metric(k, v, now, step) for k, v in trial_metrics(result).items()]
        if result.get("splits_read"):
            tags[SPLITS_READ] = RunTag(SPLITS_READ, str(result["splits_read"]))
        if result.get("numerics"):
            tags[NUMERICS] = RunTag(NUMERICS, str(result["numerics"])[:_MAX_TAG])

    def flush(self, run_id: str | None = None, *, wait: bool = False) -> None:
        """Hand the epochs waiting for ``run_id`` (all runs: None) to the writer; ``wait``:
        until they (and everything handed over before) are in MLflow."""
        runs = list(self._batch) if run_id is None else [run_id]
        for rid in runs:
            metrics, tags = self._batch.pop(rid, ([], {}))
            tag_list = list(tags.values())
            for i in range(0, max(len(metrics), 1), _MAX_BATCH):
                chunk = metrics[i : i + _MAX_BATCH]
                if chunk or (i == 0 and tag_list):
                    self.writer.log_batch(rid, chunk, tag_list if i == 0 else [])
        if run_id is None:
            self._flushed = time.monotonic()
        if wait and self._writer is not None:
            self._writer.barrier()

    def get_state(self) -> None:
        """Tune is saving its experiment state: everything it will name is written first."""
        self.flush(wait=True)
        return None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tag the run now; mark it FINISHED only after Tune has saved the trial as
        terminated. Tune saves its state after this callback, so a driver killed in between
        would otherwise leave a FINISHED run whose trial a resumed Tune runs again. This way
        FINISHED in MLflow always means finished in Tune's saved state too. A trial whose own
        code raised ends here too (search.trainable): its run is FAILED at once, like one that
        Tune failed (a resumed Tune that reruns it fails it the same way)."""
        self._flush_unlogged(trial)
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        if own_error(trial.last_result):
            self.flush(run_id)
            self._fail(run_id, trial)
            return
        status = RunTag(STATUS, finish_status(trial, self.max_epochs))
        self._batch.setdefault(run_id, ([], {}))[1][STATUS] = status
        self.flush(run_id)
        self._pending[trial.trial_id] = run_id
        fault_point("trial_complete")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()
        self._flush_finished()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush(wait=True)
        self._flush_finished(force=True)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def _flush_finished(self, force: bool = False) -> None:
        if not self._pending:
            return
        saved = self._saved.states(force) if self.experiment_dir else None
        for trial_id, run_id in list(self._pending.items()):
            if saved is None or saved.get(trial_id) == "TERMINATED":
                self.writer.set_terminated(run_id, "FINISHED")
                del self._pending[trial_id]

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune restarts the trial after its process or node died: say so on its run (which
        the restart continues, see on_trial_start)."""
        # Its last result never got its checkpoint registered: the restarted trial, continuing
        # from the checkpoint before, reports that epoch again.
        self._unlogged.pop(trial.trial_id, None)
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self.flush(run_id)
        # Counted here, not from trial.num_failures: Tune does not count a node Ray knows was
        # preempted (a reclaimed spot instance).
        before = self.client.get_run(run_id).data.tags.get(RESTARTS, "0")
        restarts = int(before) + 1 if before.isdigit() else 1
        self.client.set_tag(run_id, RESTARTS, str(restarts))
        self.client.set_tag(run_id, RESTART_CAUSE, error_summary(_error_text(trial))[:_MAX_TAG])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune gave up on the trial: it died more than FailureConfig's max_failures times."""
        self._flush_unlogged(trial)
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.flush(run_id)
            self._fail(run_id, trial)

    def _fail(self, run_id: str, trial: Any) -> None:
        text = _error_text(trial)
        self.client.set_tag(run_id, STATUS, "failed")
        self.client.set_tag(run_id, ERROR, error_summary(text)[:_MAX_TAG])
        # An unreachable artifact store must not stop the sweep; the tag has the cause.
        with contextlib.suppress(Exception):
            self.client.log_text(run_id, text, "error.txt")
        self.client.set_terminated(run_id, "FAILED")


def finish_status(trial: Any, max_epochs: int | None = None) -> str:
    """completed, or stopped_early when the trial ran fewer epochs than it was to run
    (``max_epochs``, the sweep's; else its config's)."""
    epochs = int(max_epochs or trial.config.get("epochs", 0) or 0)
    done = int((trial.last_result or {}).get("training_iteration", 0) or 0)
    return "stopped_early" if epochs and done < epochs else "completed"


class SavedStates:
    """`saved_trial_states` of the newest state Tune has saved, read again only when the file
    changed (at 1,000 trials a state is megabytes of JSON; reading it at every controller step
    was a quarter of the driver's time, bench/bench_scale.py), looked at no more often than
    every ``CHECK_S`` seconds, or 20 times the last read's time when
    that is longer (as Tune paces its own saves: at most 5 % of the driver's time), unless
    forced."""

    CHECK_S = 0.25

    def __init__(self, experiment_dir: str | None) -> None:
        self.folder = experiment_dir
        self._key: tuple[str, int, int] | None = None
        self._states: dict[str, str] = {}
        self._checked = -math.inf
        self._every = self.CHECK_S

    def states(self, force: bool = False) -> dict[str, str]:
        now = time.monotonic()
        if self.folder is None or (not force and now - self._checked < self._every):
            return self._states
        self._checked = now
        files = sorted(Path(self.folder).glob("experiment_state-*.json"))
        try:
            st = files[-1].stat()
        except (IndexError, OSError):
            return self._states
        key = (files[-1].name, st.st_mtime_ns, st.st_size)
        if key != self._key:
            states = saved_trial_states(self.folder)
            took = time.monotonic() - now
            self._every = max(self.CHECK_S, 20 * took)
            if states:  # else being written: looked at again next time
                self._key, self._states = key, states
        return self._states


def saved_trial_states(experiment_dir: str | Path) -> dict[str, str]:
    """Trial id -> status in the newest experiment state Tune has saved in its experiment
    folder (empty while none is complete on disk)."""
    files = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text(encoding="utf-8"))
        out = {}
        for trial_json, _meta in state["trial_data"]:
            t = json.loads(trial_json)
            out[str(t["trial_id"])] = str(t["status"])
        return out
    except (OSError, ValueError, KeyError, TypeError):  # being written: not saved yet
        return {}


def reconcile(
    client: MlflowClient,
    exp_id: str,
    parent_run_id: str,
    tune_trials: Iterable[Any],
    max_epochs: int | None = None,
) -> None:
    """After Tune returns, make MLflow agree with Tune's final trial states.

    No run is left RUNNING; a run whose trial Tune does not know (a trial a killed driver
    started after Tune last saved its state, which the resumed sweep never reruns) is deleted,
    so the sweep's runs are exactly Tune's trials.
    """
    by_id = {t.trial_id: t for t in tune_trials}
    for run in trial_runs(client, exp_id, parent_run_id):
        trial = by_id.get(run.data.tags.get(TRIAL_ID, ""))
        if trial is None:
            discard_run(client, run.info.run_id)
            continue
        if run.info.status != "RUNNING":
            continue
        if trial.status == "TERMINATED" and not own_error(trial.last_result):
            client.set_tag(run.info.run_id, STATUS, finish_status(trial, max_epochs))
            client.set_terminated(run.info.run_id, "FINISHED")
        elif trial.status in ("TERMINATED", "ERROR"):
            client.set_tag(run.info.run_id, STATUS, "failed")
            if error := own_error(trial.last_result):
                client.set_tag(run.info.run_id, ERROR, error[:_MAX_TAG])
            client.set_terminated(run.info.run_id, "FAILED")
        else:
            client.set_tag(run.info.run_id, STATUS, "killed")
            client.set_terminated(run.info.run_id, "KILLED")


def discard_run(client: MlflowClient, run_id: str) -> None:
    """Delete a trial run that no longer stands for its trial, ended KILLED first if it was
    RUNNING: a deleted run is still listed under "deleted runs", never as running."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, STATUS, "killed")
        client.set_terminated(run_id, "KILLED")
    client.delete_run(run_id)


def end_running_trials(client: MlflowClient, exp_id: str, parent_run_id: str, status: str) -> None:
    """Ctrl-C or a driver error: end every trial run still RUNNING with ``status``."""
    for run in trial_runs(client, exp_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATUS, status.lower())
            client.set_terminated(run.info.run_id, status)


def finish_sweep_run(
    client: MlflowClient,
    run_id: str,
    *,
    status: str = "FINISHED",
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if math.isfinite(v)]
    ts = [RunTag(k, str(v)[:_MAX_TAG]) for k, v in (tags or {}).items()]
    if ms or ts:
        client.log_batch(run_id, metrics=ms, tags=ts, synchronous=True)
    if params:
        # Params are immutable in MLflow; a resumed sweep may already have logged the best.
        existing = client.get_run(run_id).data.params
        log_params(client, run_id, {k: v for k, v in params.items() if k not in existing})
    client.set_terminated(run_id, status)


# The experiment's description lists what ran in it, newest last, within MLflow's limit on an
# experiment tag (20,000 characters): the oldest lines go first.
_MAX_NOTE = 20000
_NOTE_HEAD = (
    "case-tune: hyperparameter sweeps (`python -m search.run`, one run per sweep with its "
    "trials nested) and their final runs (`python -m search.finalize`). What ran here:"
)


def describe(client: MlflowClient, exp_id: str, run_id: str, text: str) -> None:
    """``text`` (a command and its store) as the run's description and as a line of the
    experiment's, which the UI shows above the runs table."""
    client.set_tag(run_id, NOTE, text[:_MAX_TAG])
    exp = client.get_experiment(exp_id)
    old = exp.tags.get(NOTE, "")
    lines = [ln for ln in old.splitlines()[1:] if ln.strip()] if old.startswith(_NOTE_HEAD) else []
    lines.append(f"- {text}")
    while lines and len("\n".join([_NOTE_HEAD, *lines])) > _MAX_NOTE:
        lines.pop(0)
    client.set_experiment_tag(exp_id, NOTE, "\n".join([_NOTE_HEAD, *lines]))


__all__ = [
    "EXPERIMENT",
    "MlflowTrialCallback",
    "RunStatus",
    "client_for",
    "describe",
    "end_running_trials",
    "experiment_id",
    "finish_sweep_run",
    "reconcile",
    "start_sweep_run",
    "trial_metrics",
    "trial_runs",
]
