"""`python -m search.run --space case`: one hyperparameter sweep, end to end.

Ray Tune runs the trials (CPU or fractional GPU each), Optuna's TPE proposes them through a
define-by-run space (with --warm-start, the seed's own configs first), ASHA stops poor ones
early, a driver-side callback tracks every trial in MLflow under one sweep run, and
results/<sweep>/ gets a leaderboard, a CSV of all trials, the best configs for
`search.finalize`, and figures. A killed sweep continues with `--name SWEEP --resume`.

Also runs as a plain script (`python search/run.py ...`, e.g. under `ray submit`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo's packages importable
    _here = str(Path(__file__).resolve().parent)
    # search/ itself must not be on the path: its modules would shadow top-level names.
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(_here)]
    sys.path.insert(0, str(Path(_here).parent))

from data_prep.atomic import write_text_atomic  # noqa: E402
from search.cli import config_text, run_cli  # noqa: E402
from search.ledger import load_study, study_exists  # noqa: E402
from search.mlflow_ui import COMPARE_MAX, ui_lines  # noqa: E402
from search.redact import redact_uri, remember  # noqa: E402
from search.settings import SweepSettings, UsageError, parse_settings  # noqa: E402
from search.spaces import get_space, seed_points, validate_space, with_fixed  # noqa: E402

_PROG = "search.run"


@dataclass
class SweepOutcome:
    name: str
    results_dir: Path
    parent_run_id: str
    tracking_uri: str
    experiment_id: str = ""
    top_run_ids: list[str] = field(default_factory=list)  # best first (the compare link)
    num_trials: int = 0
    num_failed: int = 0
    best: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    interrupted: bool = False


# -- before Ray: data and space ------------------------------------------------------------
def resolve_store(settings: SweepSettings) -> Path:
    """The feature store the sweep trains on (preparing the demo, a KEMDy20 corpus or a
    manifest's corpus first)."""
    if settings.data_kind == "demo":
        from data_prep.prepare import prepare_demo

        return Path(prepare_demo())
    if settings.data_kind == "kemdy20":
        from data_prep.prepare import PREPARE_ERRORS, prepare

        try:
            return Path(prepare(settings.data))
        except PREPARE_ERRORS as exc:  # a corpus that cannot be prepared is a bad --data
            raise UsageError(f"--data {settings.data}: cannot prepare this corpus: {exc}") from exc
    if settings.data_kind == "manifest":
        from data_prep.prepare import PREPARE_ERRORS, prepare_manifest_store

        try:
            return prepare_manifest_store(settings.data).path
        except PREPARE_ERRORS as exc:
            raise UsageError(f"--data {settings.data}: cannot prepare this corpus: {exc}") from exc
    return Path(settings.data)


def sweep_space(settings: SweepSettings, space: dict[str, Any] | None = None) -> dict[str, Any]:
    """The named (or given) space with the sweep's fixed values: epochs and training seed."""
    if space is not None:
        base = validate_space(space, name="custom")
    elif settings.space_spec is not None:  # --space FILE, read and validated when parsed
        base = settings.space_spec
    else:
        base = get_space(settings.space)
    # epochs = the final run's length (the schedule's horizon); trials stop at max_epochs.
    fixed = {"epochs": settings.horizon, "seed": settings.seed, **settings.fixed}
    return with_fixed(base, fixed)


def _check_configs(space: dict[str, Any], label: str) -> None:
    """The warm-start configs must be valid TrainConfigs (catches a bad fixed value early)."""
    from models.config import ConfigError, TrainConfig
    from search.spaces import seed_configs

    for cfg in seed_configs(space):
        try:
            TrainConfig.from_dict(cfg)
        except ConfigError as exc:
            raise UsageError(
                f"--space {label}: the seed's config of model {cfg.get('model')!r} in it is "
                f"invalid: {exc}"
            ) from exc


# -- Ray -------------------------------------------------------------------------------------
def ray_env_defaults() -> None:
    """The environment Ray and Tune must see before they are imported (set unless given)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # How often Tune saves its experiment state (what --resume reads); README ("Lost nodes, a
    # killed driver") says what a killed driver loses.
    # "auto": at most every 10 s, and less often when a save takes longer than 0.5 s (a slow
    # network file system then spends at most 5 % of the driver's time on it). On top, Tune
    # saves whenever a trial has written CheckpointConfig's num_to_keep checkpoints since the
    # last save, so the saved state always names a checkpoint that still exists: a killed
    # driver loses at most one epoch per running trial beyond the one in flight. Saving at
    # every controller step (0) wrote several times a second, and each save rewrote files in
    # the folder Tune was still copying from the save before ("FileNotFoundError ...
    # tmp-searcher-state" tracebacks from ray/train/_internal/storage.py).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    # Those num_to_keep saves come once per epoch of the fastest trial, by design (above);
    # Tune's warning about frequent saves is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The legacy reporter honours verbose=0; our CompactProgress prints one line per trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def init_ray(settings: SweepSettings) -> bool:
    """Start or join Ray; returns True if this call started it (and should shut it down)."""
    ray_env_defaults()
    import ray

    if ray.is_initialized():
        return False
    if settings.address:
        ray.init(address=settings.address, logging_level=logging.WARNING)
    elif os.environ.get("RAY_ADDRESS"):  # `ray job submit`: the job's cluster
        ray.init(address=None, logging_level=logging.WARNING)
    else:
        from search.local_ray import start_local_ray

        # A runtime of our own, on 127.0.0.1 only (search/local_ray.py says why).
        start_local_ray(
            num_cpus=max(os.cpu_count() or 1, math.ceil(settings.cpus_per_trial)),
            logging_level=logging.WARNING,
        )
    return True


def sweep_sampler(settings: SweepSettings) -> Any:
    """The sweep's Optuna sampler, seeded per trial number (search/samplers.py), so that an
    extension or a restarted driver never replays an earlier trial's draws.

    TPE keeps Optuna's defaults (multivariate, constant liar) but its start-up trials and
    the prior's weight (search.settings.PRIOR_WEIGHT), chosen on bench/bench_replay.py's
    100 sweep seeds: start-up counts of 5 or 20, `group`, no liar, 8 or 64 EI candidates,
    random configs interleaved, GP and BOHB-style telling of stopped trials did not beat it.
    """
    from search.samplers import PerTrialSampler

    window = settings.window if settings.reproducible else None
    if settings.searcher == "random":
        return PerTrialSampler("random", settings.seed, window)
    options: dict[str, Any] = {"n_startup_trials": settings.startup_trials}
    if settings.prior_weight != 1.0:  # Optuna's default: not passed (the option is deprecated)
        options["prior_weight"] = settings.prior_weight
    return PerTrialSampler("tpe", settings.seed, window, **options)


def sweep_trainable(settings: SweepSettings, store_path: Path) -> Any:
    """The trainable of this sweep's trials (also what a resumed sweep restores with)."""
    from search.trainable import make_trainable

    return make_trainable(
        store_path,
        cpus=settings.cpus_per_trial,
        gpus=settings.gpus_per_trial,
        max_epochs=settings.max_epochs,
        folds=settings.folds,
    )


def build_tuner(
    settings: SweepSettings,
    space: dict[str, Any],
    callbacks: list[Any],
    *,
    trainable: Any,
    points: list[dict[str, Any]] | None,
    first_trials: int | None = None,
) -> Any:
    """The Tuner of one Tune segment (its trials meet the earlier segments' through the
    study: numbers, draws, rung values); ``first_trials``: the size of the sweep's first
    segment (default: this one's), whose first window is judged among itself; ``trainable``:
    the trials' (`_Sweep.tune_trainable`)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search.ledger import open_storage
    from search.ordered import OrderedSearcher
    from search.spaces import define_by_run
    from search.trainable import MODE, SEARCH_METRIC
    from search.trial_search import TrialOptunaSearch

    searcher = TrialOptunaSearch(
        space=define_by_run(space),
        metric=SEARCH_METRIC,
        mode=MODE,
        points_to_evaluate=points or None,
        sampler=sweep_sampler(settings),
        study_name=settings.name,
        storage=open_storage(settings.optuna_storage),
    )
    search_alg: Any = ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent)
    if settings.reproducible:
        search_alg = OrderedSearcher(
            searcher,
            window=settings.window,
            total=settings.num_samples,
            max_concurrent=settings.max_concurrent,
        )
    if settings.scheduler == "fifo":
        scheduler = FIFOScheduler()
    else:
        scheduler = sweep_asha(settings, first_trials or settings.num_samples)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=settings.num_samples,
            reuse_actors=settings.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=settings.experiment_path.name,
            storage_path=settings.storage_path,
            # Restarts a trial from its last checkpoint when its worker process or node
            # dies. Errors of the trial's own code never reach Tune as failures: the
            # trainable ends such a trial itself (search/trainable.py), so they are not
            # retried.
            failure_config=tune.FailureConfig(max_failures=settings.max_failures, fail_fast=False),
            # The last two epochs' states, a few MB per trial: a killed driver's saved
            # experiment state may still name the one before the newest, so that one must
            # still exist when --resume continues the trial from it.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[*callbacks, JsonLoggerCallback()],
            verbose=0,
        ),
    )


def sweep_asha(settings: SweepSettings, first_trials: int) -> Any:
    """ASHA over the sweep's whole history: its rung values live in the Optuna study (the
    ledger, search/ordered.py), so an extension's or a resumed driver's trials meet every
    earlier trial's. Reproducible mode decides trial k against trials 0..k-W (W =
    --max-concurrent), the first window's trials against each other, waiting at the rung
    for any still running, so which concurrent trial reports first changes nothing;
    --async against whatever reached the rung before, as Ray's ASHA does."""
    from search.ordered import OrderedASHA
    from search.trainable import MODE, RUNG_METRIC

    return OrderedASHA(
        metric=RUNG_METRIC,
        mode=MODE,
        max_t=settings.max_epochs,
        grace_period=min(settings.grace_period, settings.max_epochs),
        reduction_factor=settings.reduction_factor,
        lag=settings.window if settings.reproducible else None,
        window=settings.max_concurrent,
        total=first_trials,
        ledger=(settings.optuna_storage, settings.name),
    )


# -- Optuna study bookkeeping ------------------------------------------------------------
def fail_stale_optuna_trials(storage: str, name: str) -> int:
    """Mark RUNNING Optuna trials FAIL once no trial runs (a dead driver's leftovers)."""
    from optuna.trial import TrialState

    if not study_exists(storage, name):
        return 0
    study = load_study(storage, name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(stale)


# -- the sweep -----------------------------------------------------------------------------
SWEEP_INFO_KEYS = (
    "sweep",
    "store_path",
    "store_key",
    "tracking_uri",
    "experiment_id",
    "parent_run_id",
    "optuna_storage",
)


def write_manifest(settings: SweepSettings, info: dict[str, Any]) -> None:
    """sweep.json, atomically; a tracking URI's password is never stored (search.redact)."""
    settings.sweep_dir.mkdir(parents=True, exist_ok=True)
    stored = {**settings.to_dict(), "tracking_uri": redact_uri(settings.tracking_uri)}
    doc = {**info, "tracking_uri": redact_uri(info["tracking_uri"]), "settings": stored}
    write_text_atomic(settings.manifest_path, json.dumps(doc, indent=2))


def tune_segments(settings: SweepSettings, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's Tune experiments, in order: the first has the trials asked at the start;
    a resume with a larger --num-samples appends one for the extra trials (same Optuna
    study, same MLflow sweep run). Sweeps recorded before segments had one, named NAME."""
    if "tune_segments" not in manifest:
        recorded = manifest.get("settings", {}).get("num_samples", settings.num_samples)
        first = settings.tune_name or settings.name
        manifest["tune_segments"] = [{"name": first, "num_samples": recorded}]
    segments = manifest["tune_segments"]
    total = sum(int(seg["num_samples"]) for seg in segments)
    if settings.num_samples > total:
        base = segments[0]["name"]
        segments.append(
            {"name": f"{base}-x{len(segments)}", "num_samples": settings.num_samples - total}
        )
    return segments


def _segment_trials(path: Path) -> list[Any]:
    """Tune's saved trials of one experiment folder (none if it saved no state)."""
    from ray import tune
    from ray.tune import ExperimentAnalysis

    if not tune.Tuner.can_restore(str(path)):
        return []
    # It warns about every trial that failed before reporting; MLflow already has those.
    ea_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = ea_log.level
    ea_log.setLevel(logging.ERROR)
    try:
        return list(ExperimentAnalysis(str(path)).trials)
    finally:
        ea_log.setLevel(level)


def _segment_done(path: Path, num_samples: int) -> bool:
    trials = _segment_trials(path)
    return len(trials) >= num_samples and all(t.status in ("TERMINATED", "ERROR") for t in trials)


@dataclass
class _Sweep:
    """One sweep's facts once its MLflow sweep run exists: what every later step needs."""

    settings: SweepSettings
    space: dict[str, Any]
    store_path: Path
    manifest: dict[str, Any]
    client: Any
    exp_id: str
    parent: str
    trainable: Any = None  # in place of the sweep's (benchmarks: a stand-in)

    def tune_trainable(self) -> Any:
        """The trials' trainable, for a new Tuner and for Tuner.restore alike."""
        return self.trainable or sweep_trainable(self.settings, self.store_path)


def run_sweep(
    settings: SweepSettings,
    *,
    space: dict[str, Any] | None = None,
    points: list[dict[str, Any]] | None = None,
    quiet: bool = False,
    trainable: Any = None,
) -> SweepOutcome:
    """Run (or resume) one sweep. Raises UsageError for anything wrong before Ray starts.

    ``space`` replaces the named space (tests, benchmarks); ``points`` replaces the seed's
    configs as the Optuna parameter values tried first; ``trainable`` replaces the trials'
    code (bench/bench_scale.py's stand-in: the driver's cost at width without training).
    """
    t0 = time.time()
    remember(settings.tracking_uri)  # Tune's pickled callbacks hold the redacted form
    space, store_path, manifest = _sweep_inputs(settings, space)
    sweep = _open_sweep_run(settings, space, store_path, manifest)
    sweep.trainable = trainable
    segments = tune_segments(settings, sweep.manifest)
    write_manifest(settings, sweep.manifest)  # a resume may have added trials
    _fit_segments(sweep, segments, points, quiet)
    trials = [
        t for seg in segments for t in _segment_trials(Path(settings.storage_path) / seg["name"])
    ]
    interrupted = _reconcile(sweep, trials)
    outcome = _conclude(sweep, interrupted)
    outcome.wall_seconds = time.time() - t0
    return outcome


def _sweep_inputs(
    settings: SweepSettings, space: dict[str, Any] | None
) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """(space, store path, sweep.json so far): a resume's recorded ones, else checked anew."""
    if settings.resume:
        manifest = json.loads(settings.manifest_path.read_text(encoding="utf-8"))
        return manifest["space"], Path(manifest["store_path"]), manifest
    space = sweep_space(settings, space)
    _check_configs(space, settings.space)
    store_path = resolve_store(settings)
    if study_exists(settings.optuna_storage, settings.name):
        raise UsageError(
            f"an Optuna study named {settings.name!r} already exists in "
            f"{settings.optuna_storage}; pick another --name"
        )
    return space, store_path, {}


def _open_sweep_run(
    settings: SweepSettings, space: dict[str, Any], store_path: Path, manifest: dict[str, Any]
) -> _Sweep:
    """Open the store (test sealed), then reopen the sweep's MLflow run (a resume) or start
    it and write sweep.json."""
    from data_prep.store import FeatureStore, StoreError

    try:
        store = FeatureStore.open(store_path, sealed=("test",))
    except (StoreError, OSError, ValueError) as exc:
        raise UsageError(f"cannot open feature store {store_path}: {exc}") from exc

    from search import tracking

    client = tracking.client_for(settings.tracking_uri)
    exp_id = tracking.experiment_id(client, settings.tracking_uri)
    if settings.resume:
        parent = manifest["parent_run_id"]
        tracking.reopen_run(client, parent)
        return _Sweep(settings, space, store_path, manifest, client, exp_id, parent)
    parent = tracking.start_sweep_run(
        client,
        exp_id,
        name=settings.name,
        space=settings.space,
        params=_sweep_params(settings, store.key, store_path),
        parent=settings.outer_parent,
    )
    tracking.describe(client, exp_id, parent, _description(settings, store_path))
    if settings.space_text:  # --space FILE: the file as it was, beside its hash (a param)
        client.log_text(parent, settings.space_text, f"space/{Path(settings.space).name}")
    manifest = _new_manifest(settings, space, store_path, store.key, exp_id, parent)
    write_manifest(settings, manifest)
    return _Sweep(settings, space, store_path, manifest, client, exp_id, parent)


def _description(settings: SweepSettings, store_path: Path) -> str:
    """What the sweep's run and the experiment say it is (the MLflow UI shows it on top)."""
    command = settings.command or f"python -m search.run --space {settings.space}"
    when = time.strftime("%Y-%m-%d %H:%M")
    return f"sweep **{settings.name}** ({when}): `{command}` on store `{store_path}`"


def _sweep_params(settings: SweepSettings, store_key: str, store_path: Path) -> dict[str, Any]:
    """The sweep run's MLflow params."""
    from models.selection import STATISTIC

    return {
        "space": settings.space,
        **({"space_sha256": settings.space_sha256} if settings.space_sha256 else {}),
        "store_key": store_key,
        "store_path": str(store_path),
        "num_samples": settings.num_samples,
        "max_epochs": settings.max_epochs,
        "final_epochs": settings.horizon,
        "folds": settings.folds,
        "selection": STATISTIC,
        "max_concurrent": settings.max_concurrent,
        **({"lag": settings.window} if settings.reproducible else {}),
        "cpus_per_trial": settings.cpus_per_trial,
        "gpus_per_trial": settings.gpus_per_trial,
        "seed": settings.seed,
        "searcher": (
            f"optuna-tpe(startup={settings.startup_trials},prior_weight={settings.prior_weight})"
            if settings.searcher == "tpe"
            else f"optuna-{settings.searcher}"
        ),
        "scheduler": (
            f"asha(grace={settings.grace_period},rf={settings.reduction_factor})"
            if settings.scheduler == "asha"
            else "fifo"
        ),
        "warm_start": settings.warm_start,
        "reproducible": settings.reproducible,
        "optuna_storage": settings.optuna_storage,
    }


def _new_manifest(
    settings: SweepSettings,
    space: dict[str, Any],
    store_path: Path,
    store_key: str,
    exp_id: str,
    parent: str,
) -> dict[str, Any]:
    """sweep.json of a new sweep (what --resume and finalize read back)."""
    from models.selection import STATISTIC

    return {
        "sweep": settings.name,
        "space_name": settings.space,
        "space": space,
        "store_path": str(store_path),
        "store_key": store_key,
        "tracking_uri": redact_uri(settings.tracking_uri),
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "optuna_storage": settings.optuna_storage,
        "optuna_study": settings.name,
        "final_epochs": settings.horizon,
        "folds": settings.folds,
        "selection": STATISTIC,
        "tune_experiment": str(settings.experiment_path),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _fit_segments(
    sweep: _Sweep,
    segments: list[dict[str, Any]],
    points: list[dict[str, Any]] | None,
    quiet: bool,
) -> None:
    """Run every unfinished Tune segment in order, in Ray (started here unless running).
    Anything but a clean end marks the sweep run (and its running trials) as it ended."""
    from search import tracking

    started_ray = False
    status = "FAILED"
    try:
        started_ray = init_ray(sweep.settings)
        for seg in segments:
            if not _fit_segment(sweep, seg, points, quiet):
                break  # interrupted (Tune saved its state on Ctrl-C): the next --resume
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            tracking.end_running_trials(sweep.client, sweep.exp_id, sweep.parent, status)
            tracking.finish_sweep_run(sweep.client, sweep.parent, status=status)
        if started_ray:
            import ray

            ray.shutdown()


def _fit_segment(
    sweep: _Sweep,
    seg: dict[str, Any],
    points: list[dict[str, Any]] | None,
    quiet: bool,
) -> bool:
    """Fit one Tune segment (restored if Tune saved its state); False if it did not finish."""
    from ray import tune

    settings = sweep.settings
    seg_settings = replace(settings, tune_name=seg["name"], num_samples=int(seg["num_samples"]))
    exp_path = seg_settings.experiment_path
    restorable = tune.Tuner.can_restore(str(exp_path))
    if restorable and _segment_done(exp_path, seg_settings.num_samples):
        return True
    if restorable:
        tuner = tune.Tuner.restore(
            str(exp_path),
            trainable=sweep.tune_trainable(),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        tuner = _fresh_tuner(sweep, seg_settings, points, quiet)
    with _fit_environment(settings):
        tuner.fit()
    return _segment_done(exp_path, seg_settings.num_samples)


@contextlib.contextmanager
def _fit_environment(settings: SweepSettings) -> Iterator[None]:
    """What Tune reads from the environment when a fit starts, for this sweep's fit only (a
    user's own Tune runs in the same process keep Tune's defaults):

    - Tune keeps one trial pending at a time for a searcher it does not see wrapped in a
      ConcurrencyLimiter (the ordered searcher): trials then started one per controller step,
      ~0.8 s apart, and a 16-wide sweep never had more than two running
      (bench/bench_scale.py). The window is the limit the searchers keep themselves.
    - Tune's default loggers write every result as TensorBoard events and a CSV row on the
      driver (a seventh of its CPU at 64 concurrent trials); MLflow has every epoch. Only the
      JSON log stays (build_tuner adds it): Tune's ExperimentAnalysis reads it.
    """
    wanted = {
        "TUNE_MAX_PENDING_TRIALS_PG": str(settings.max_concurrent),
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fresh_tuner(
    sweep: _Sweep,
    seg_settings: SweepSettings,
    points: list[dict[str, Any]] | None,
    quiet: bool,
) -> Any:
    """A Tuner for a new sweep or extension, or one killed before Tune saved any state: the
    Optuna study keeps what it had; warm starts only if it has nothing yet."""
    from search import tracking

    settings = sweep.settings
    fresh = not study_exists(settings.optuna_storage, settings.name)
    if points is None and settings.warm_start:
        points = seed_points(sweep.space)
    callbacks = [
        tracking.MlflowTrialCallback(
            settings.tracking_uri,
            sweep.exp_id,
            sweep.parent,
            settings.space,
            experiment_dir=seg_settings.experiment_path,
            max_epochs=settings.max_epochs,
        )
    ]
    if not quiet:
        from search.progress import CompactProgress, quiet_tune_logs

        quiet_tune_logs()
        callbacks.append(CompactProgress(seg_settings.num_samples, settings.max_epochs))
    return build_tuner(
        seg_settings,
        sweep.space,
        callbacks,
        trainable=sweep.tune_trainable(),
        points=points if fresh else None,
        first_trials=int(sweep.manifest["tune_segments"][0]["num_samples"]),
    )


def _reconcile(sweep: _Sweep, trials: list[Any]) -> bool:
    """Bring MLflow in line with Tune's final word on every trial; True if the sweep was
    interrupted (and can be resumed)."""
    from search import tracking

    settings = sweep.settings
    tracking.reconcile(sweep.client, sweep.exp_id, sweep.parent, trials, settings.max_epochs)
    # Tune handles Ctrl-C itself (it saves state and returns from fit): unfinished trials or
    # fewer trials than asked mean the sweep was interrupted and can be resumed.
    interrupted = len(trials) < settings.num_samples or any(
        t.status not in ("TERMINATED", "ERROR") for t in trials
    )
    if not interrupted:
        # Only now: a resumed sweep's restored searcher still reports on RUNNING trials.
        fail_stale_optuna_trials(settings.optuna_storage, settings.name)
    return interrupted


def _conclude(sweep: _Sweep, interrupted: bool) -> SweepOutcome:
    """Write the results files, close the sweep run with its best trial, return the outcome
    (all but its wall time)."""
    from models.selection import STATISTIC
    from search import results, tracking
    from search.trainable import remove_orphan_checkpoints

    settings = sweep.settings
    remove_orphan_checkpoints()  # the driver's node: trials ASHA stopped last
    # What results files say about the sweep: the manifest's facts, under their results names.
    sweep_info = {
        **{k: sweep.manifest[k] for k in SWEEP_INFO_KEYS},
        "space": settings.space,
        "max_epochs": settings.max_epochs,
        "final_epochs": settings.horizon,
        "folds": settings.folds,
        "selection": STATISTIC,
    }
    records, notes = results.write_results(
        sweep.client,
        sweep.exp_id,
        sweep.parent,
        settings.sweep_dir,
        sweep_info=sweep_info,
        optuna_storage=settings.optuna_storage,
    )
    outcome = SweepOutcome(
        name=settings.name,
        results_dir=settings.sweep_dir,
        parent_run_id=sweep.parent,
        tracking_uri=settings.tracking_uri,
        experiment_id=sweep.exp_id,
        top_run_ids=[r.run_id for r in results.ranked(records) if r.run_id][:COMPARE_MAX],
        num_trials=len(records),
        num_failed=sum(r.status == "failed" for r in records),
        notes=notes,
    )
    best = next(iter(results.ranked(records)), None)
    metrics = {"num_trials": len(records), "num_failed": outcome.num_failed}
    tags = {"case_tune.num_trials": len(records)}
    if best is not None:
        outcome.best = {
            "trial_id": best.trial_id,
            "run_id": best.run_id,
            "model": best.model,
            "best_epoch": best.best_epoch,
            "config": best.config,
            **best.best,
        }
        metrics.update({f"best_{k}": v for k, v in best.best.items()})
        tags.update(_best_tags(best))
    outcome.interrupted = interrupted
    tracking.finish_sweep_run(
        sweep.client,
        sweep.parent,
        status="KILLED" if interrupted else "FINISHED",
        metrics=metrics,
        tags=tags,
    )
    return outcome


def _best_tags(best: Any) -> dict[str, Any]:
    return {
        "case_tune.best_trial_id": best.trial_id,
        "case_tune.best_run_id": best.run_id,
        "case_tune.best_model": best.model,
        "case_tune.best_config": json.dumps(best.config, default=str),
    }


def summary(outcome: SweepOutcome) -> str:
    lines = [
        f"Sweep {outcome.name}{' (INTERRUPTED)' if outcome.interrupted else ''}: "
        f"{outcome.num_trials} trials, {outcome.num_failed} failed, "
        f"{outcome.wall_seconds / 60:.1f} min."
    ]
    if outcome.best:
        b = outcome.best
        cfg = config_text(b["config"])
        lines.append(
            f"Best val macro-F1 {b.get('val_macro_f1', float('nan')):.4f} "
            f"(trial {b['trial_id']}, epoch {b['best_epoch']}): {cfg}"
        )
    else:
        lines.append("No trial produced a validation score.")
    lines += [
        f"Results:   {outcome.results_dir}/ (leaderboard.md, trials.csv, best_configs.yaml, *.png)",
        *(f"Note:      {n}" for n in outcome.notes),
        *(
            [f"Resume:    python -m search.run --name {outcome.name} --resume"]
            if outcome.interrupted
            else []
        ),
        f"Finalize:  python -m search.finalize --sweep {outcome.name}",
        *ui_lines(
            outcome.tracking_uri,
            outcome.experiment_id,
            outcome.top_run_ids,
            "the best trials",
            sweep=outcome.name,
        ),
    ]
    return "\n".join(lines)


def _resume_hint(settings: SweepSettings | None) -> str:
    # NAME when Ctrl-C came before the arguments were parsed
    return f"--name {settings.name if settings else 'NAME'} --resume"


def _work(settings: SweepSettings) -> Any:
    """One sweep, or with --outer-folds the set of outer-fold sweeps (search/outer.py)."""
    if settings.outer_folds:
        from search.outer import run_outer

        return run_outer(settings)
    return run_sweep(settings)


def _summary(outcome: Any) -> str:
    from search.outer import OuterOutcome
    from search.outer import summary as outer_summary

    return outer_summary(outcome) if isinstance(outcome, OuterOutcome) else summary(outcome)


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        _PROG, lambda: parse_settings(argv), _work, resume=_resume_hint, summary=_summary
    )


if __name__ == "__main__":
    sys.exit(main())
