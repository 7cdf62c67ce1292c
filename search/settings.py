"""The validated settings of one sweep: parsed from the command line, checked once, before Ray.

Every bad value raises `UsageError` with one line that says what is wrong and what to do;
`search.run` prints it and exits with code 2. Nothing here imports Ray, torch or MLflow, so
validation is instant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from data_prep.paths import case_tune_home
from search.redact import is_redacted, redact_text, redact_uri
from search.spaces import (
    SpaceError,
    SpaceFile,
    get_space,
    is_space_file,
    load_space_file,
    space_names,
)

DEFAULT_NUM_SAMPLES = 24
DEFAULT_MAX_EPOCHS = 20
# The final run's length (finalize's default, the seed's 150): the learning-rate schedule of
# every trial spans it, so a trial is the first --max-epochs of its final run.
DEFAULT_HORIZON = 150
DEFAULT_MAX_CONCURRENT = 2
# The searcher was chosen on the replay benchmark (bench/bench_replay.py; results/bench.md,
# "replay"): over 100 sweep seeds, ASHA keeping the top quarter at each rung (rungs 3 and 12
# of 20 epochs) with TPE's prior at twice Optuna's weight picked configs better on the oracle
# than TPE at Optuna's defaults with rf 3, at every budget from 24 to 200 trials, and beat
# random search at equal epochs on 84-91 % of seeds where the defaults did on 77-79 %. With
# noisy val F1 and few trials, a flatter TPE density explores where the defaults chase noise.
GRACE_PERIOD = 3
REDUCTION_FACTOR = 4
# TPE samples at random for its first trials (Optuna's default, 10; see search.run.sweep_sampler).
STARTUP_TRIALS = 10
# Optuna deprecated the option in 4.9 (removal in 6.0; pyproject pins optuna < 6); sweeps
# recorded before it was set resume with Optuna's 1.0 (SweepSettings.from_dict).
PRIOR_WEIGHT = 2.0
# Order-deterministic search by default (search/ordered.py): the same command and seed give
# the same sweep; its cost in wall time against the asynchronous way is in results/bench.md.
REPRODUCIBLE = True
# No warm starts by default: bench/bench_selection.py (results/bench.md, "selection") measured
# the seed's configs, enqueued first, at all-neutral macro-F1 for all their epochs on the demo
# (18-27 % of the sweep's compute), and without them the recommendation beat random search's
# on every sweep seed. `--warm-start` enqueues them (a corpus where the seed's lr suits).
WARM_START = False
SWEEP_MANIFEST = "sweep.json"
# How often a trial (search.run) or finalize unit (search.finalize) is started again after
# its worker process or node died: a spot instance reclaimed three times over is rare, a
# process that dies every time (killed for memory) should not hold a slot for long. Errors
# raised by their own code are never retried (search/trainable.py says why).
MAX_FAILURES = 3
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UsageError(ValueError):
    """A bad command-line flag or value; the message is one line telling what to do."""


def default_tracking_uri(cwd: Path | None = None) -> str:
    return f"sqlite:///{((cwd or Path.cwd()) / 'mlflow.db').resolve()}"


def optuna_storage_for(tracking_uri: str, results_dir: Path) -> str:
    """Optuna's journal (search/ledger.py) beside MLflow's sqlite when MLflow is a local file,
    else in the results folder, beside the sweep manifests that --resume needs anyway (not the
    cwd, which under `ray job submit` is a temporary copy of the working directory)."""
    from search.ledger import JOURNAL_FILE, journal_spec

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return journal_spec(db.with_name(JOURNAL_FILE))
    return journal_spec(results_dir / JOURNAL_FILE)


@dataclass
class SweepSettings:
    space: str
    name: str
    data: str  # "demo" or an absolute path (feature store, KEMDy20 folder or manifest file)
    data_kind: str  # "demo" | "store" | "kemdy20" | "manifest"
    num_samples: int = DEFAULT_NUM_SAMPLES
    max_epochs: int = DEFAULT_MAX_EPOCHS
    horizon: int = DEFAULT_HORIZON
    folds: int = 0  # 0: validate on the store's val split; K >= 2: K session folds
    # K >= 2: one sweep per outer fold of the sessions (search/outer.py); 0: one sweep
    outer_folds: int = 0
    outer_parent: str = ""  # a fold's sweep: the MLflow run of its set (not a flag)
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    seed: int = 0
    resume: bool = False
    tracking_uri: str = ""
    optuna_storage: str = ""
    results_dir: str = ""
    storage_path: str = ""  # Ray Tune's experiment root (absolute)
    # Tune's experiment folder under storage_path: the name plus a per-sweep suffix, so two
    # sweeps of one name (two working folders, one CASE_TUNE_HOME) never share Tune state.
    tune_name: str = ""
    grace_period: int = GRACE_PERIOD
    reduction_factor: int = REDUCTION_FACTOR
    startup_trials: int = STARTUP_TRIALS
    prior_weight: float = PRIOR_WEIGHT
    warm_start: bool = WARM_START
    reproducible: bool = REPRODUCIBLE  # --reproducible / --async
    # --lag L: reproducible mode suggests and judges trial k from trials 0..k-L (L >=
    # --max-concurrent); 0 (sweeps recorded before the flag): --max-concurrent.
    lag: int = 0
    # Not command-line flags: the benchmarks compare against random search without ASHA.
    searcher: str = "tpe"  # tpe | random
    scheduler: str = "asha"  # asha | fifo
    reuse_actors: bool = True  # one process per concurrent slot, not per trial
    max_failures: int = MAX_FAILURES  # restarts of a trial whose process or node died
    fixed: dict[str, Any] = field(default_factory=dict)  # extra fixed TrainConfig values
    # --space FILE: `space` is the file's absolute path; the space it held when the sweep
    # started (validated), its text and hash (a --resume naming a changed file is refused).
    space_spec: dict[str, Any] | None = None
    space_text: str = ""
    space_sha256: str = ""
    command: str = ""  # the command line that started the sweep (passwords redacted)

    @property
    def window(self) -> int:
        """Reproducible mode's lag: trial k is suggested and judged from trials 0..k-window."""
        return self.lag or self.max_concurrent

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    @property
    def manifest_path(self) -> Path:
        return self.sweep_dir / SWEEP_MANIFEST

    @property
    def experiment_path(self) -> Path:
        return Path(self.storage_path) / (self.tune_name or self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, manifest: Path) -> SweepSettings:
        """The settings a sweep.json recorded (raises KeyError/ValueError when unreadable)."""
        return cls.from_dict(json.loads(manifest.read_text(encoding="utf-8"))["settings"])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSettings:
        known = {f for f in cls.__dataclass_fields__}
        # A sweep recorded before a setting existed resumes as it ran: with Optuna's prior.
        return cls(**{"prior_weight": 1.0, **{k: v for k, v in d.items() if k in known}})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Hyperparameter search (Ray Tune + Optuna TPE + ASHA, tracked in MLflow).",
    )
    p.add_argument(
        "--space",
        help="search space: case | baselines | all, or a .yaml/.json file in the spec language "
        "of search/spaces.py (`python -m search.spaces --dump case` writes one to start from)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="'demo' (default), a feature store, a KEMDy20 folder, or a .csv/.jsonl manifest "
        "(default columns, no neutral class; for other columns, --labels or --neutral-label "
        "prepare it with `python -m data_prep.prepare --manifest` and pass the store)",
    )
    p.add_argument(
        "--num-samples", type=int, default=None, help=f"trials (default {DEFAULT_NUM_SAMPLES})"
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help=f"epochs per trial at most (default {DEFAULT_MAX_EPOCHS})",
    )
    p.add_argument(
        "--final-epochs",
        type=int,
        default=None,
        help=f"length of the final runs, over which every trial's learning-rate schedule "
        f"runs (default {DEFAULT_HORIZON}); a trial is their first --max-epochs",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help="cross-validate each trial over K session folds of the non-test sessions "
        "(one head per fold; the search uses the fold mean). Default: the store's val split",
    )
    p.add_argument(
        "--outer-folds",
        type=int,
        default=None,
        help="nested cross-validation: one whole sweep per outer fold of the sessions, each "
        "fold's sessions its sealed test split (K >= 2; default off: one sweep)",
    )
    p.add_argument("--name", help="sweep name (default SPACE-YYYYmmdd-HHMMSS)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument(
        "--results-dir", default=None, help="where results/<sweep>/ goes (default ./results)"
    )
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default 2)")
    p.add_argument(
        "--lag",
        type=int,
        default=None,
        help="reproducible mode: trial k is suggested and judged from trials 0..k-LAG only "
        "(LAG >= --max-concurrent; default --max-concurrent, twice it from 16 on): a larger "
        "lag idles fewer slots (README, 'Reproducible at width')",
    )
    p.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per trial (default 1)")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial, may be fractional (default 0)",
    )
    p.add_argument(
        "--address", help="Ray cluster address ('auto' or host:port); default a local runtime"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the TPE sampler and of training (default 0)"
    )
    p.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=None,  # None: not given (a resume keeps the recorded choice)
        help="enqueue the seed's own configs as the first trials (default: no; see "
        "results/bench.md, selection)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep --name after a crash; with a larger --num-samples, add trials",
    )
    order = p.add_mutually_exclusive_group()
    order.add_argument(
        "--reproducible",
        dest="reproducible",
        action="store_true",
        default=None,
        help="suggest and stop trials by trial order: a rerun with the same seed "
        f"gives the same sweep{' (default)' if REPRODUCIBLE else ''}",
    )
    order.add_argument(
        "--async",
        dest="reproducible",
        action="store_false",
        help="suggest and stop trials as results arrive: no idle slots, but "
        f"a rerun may differ{'' if REPRODUCIBLE else ' (default)'}",
    )
    return p


def _fail(msg: str) -> None:
    raise UsageError(msg)


def parse_cli(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, command: str
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but a usage error raises UsageError naming ``command``'s
    --help instead of exiting: callers (and tests) decide how to report it. --help exits."""

    def _error(message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m {command} --help`)")

    parser.error = _error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def check_resources(cpus: float, gpus: float) -> None:
    """Per-trial resources as Ray accepts them; shared by search.run and search.finalize."""
    if not math.isfinite(cpus) or cpus <= 0:
        _fail(f"--cpus-per-trial must be > 0 (fractions allowed), got {cpus}")
    if not math.isfinite(gpus) or gpus < 0:
        _fail(f"--gpus-per-trial must be >= 0 (fractions share a GPU), got {gpus}")
    if gpus > 1 and gpus != int(gpus):
        _fail(f"--gpus-per-trial above 1 must be a whole number, got {gpus}")


def check_name(flag: str, name: str) -> str:
    """A sweep name is one folder under the results folder: no separators, no '..', so a
    name can never read or write outside it (search.run --name, search.finalize --sweep)."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        _fail(f"{flag} {name!r}: use letters, digits, '.', '_' or '-' (at most 100 characters)")
    return name


# From this width on, trial k waiting for trial k-W to finish idled half the slots, and a lag
# of 2W idled a sixth, for the same pick (bench/bench_replay.py at 16 slots, results/bench.md
# "replay-lag16"); narrower sweeps keep the lag they always had (the demo's sweep unchanged).
WIDE_SWEEP = 16


def default_lag(max_concurrent: int) -> int:
    """--lag's default: --max-concurrent, twice that from WIDE_SWEEP slots on."""
    return max_concurrent if max_concurrent < WIDE_SWEEP else 2 * max_concurrent


def _positive_int(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        _fail(f"--{name} must be a positive integer, got {value}")
    return value


def _data_kind(data: str) -> tuple[str, str]:
    if data == "demo":
        return "demo", "demo"
    path = Path(data).expanduser()
    if not path.exists():
        _fail(
            f"--data {data}: no such file or folder; give a feature store, a KEMDy20 folder, "
            "a .csv/.jsonl manifest or 'demo'"
        )
    if path.is_file():
        from data_prep.manifest import SUFFIXES  # only for a file: folders need no pandas

        if path.suffix.lower() not in SUFFIXES:
            _fail(f"--data {data}: a file must be a manifest ({', '.join(SUFFIXES)})")
        if not os.access(path, os.R_OK):
            _fail(f"--data {data}: manifest is not readable")
        return str(path.resolve()), "manifest"
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        _fail(
            f"--data {data}: not a readable folder or a .csv/.jsonl manifest; give a feature "
            "store, a KEMDy20 folder, a manifest or 'demo'"
        )
    if (path / "manifest.json").is_file():
        return str(path.resolve()), "store"
    if (path / "annotation").is_dir():
        return str(path.resolve()), "kemdy20"
    _fail(
        f"--data {data}: neither a feature store (no manifest.json) nor a KEMDy20 folder "
        "(no annotation/); prepare one with `python -m data_prep.prepare`"
    )
    raise AssertionError  # unreachable


def absolute_tracking_uri(given: str | None, cwd: Path) -> str:
    """--tracking-uri made absolute (sqlite paths against ``cwd``), or the default; shared by
    search.run and search.finalize."""
    tracking_uri = given or default_tracking_uri(cwd)
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.is_absolute():
            db = (cwd / db).resolve()
            tracking_uri = f"sqlite:///{db}"
        if not db.parent.is_dir():
            _fail(f"--tracking-uri {redact_uri(given or '')}: folder {db.parent} does not exist")
    elif "://" not in tracking_uri and not tracking_uri.startswith("databricks"):
        _fail(
            f"--tracking-uri {redact_uri(tracking_uri)!r}: expected a URI such as "
            "sqlite:////abs/mlflow.db or http://host:5000"
        )
    return tracking_uri


def _given_flags(args: argparse.Namespace, cwd: Path) -> dict[str, tuple[str, Any]]:
    """Settings field -> (flag, value as the settings hold it) for every flag typed."""
    given: dict[str, tuple[str, Any]] = {}
    plain = {
        "space": "--space",
        "num_samples": "--num-samples",
        "max_epochs": "--max-epochs",
        "max_concurrent": "--max-concurrent",
        "lag": "--lag",
        "cpus_per_trial": "--cpus-per-trial",
        "gpus_per_trial": "--gpus-per-trial",
        "seed": "--seed",
        "horizon": "--final-epochs",
        "folds": "--folds",
        "outer_folds": "--outer-folds",
    }
    attr = {"horizon": "final_epochs"}  # settings field -> argparse dest, where they differ
    for field_name, flag in plain.items():
        value = getattr(args, attr.get(field_name, field_name))
        if value is not None:
            given[field_name] = (flag, value)
    if args.space is not None and is_space_file(args.space, cwd):
        path = Path(args.space).expanduser()
        given["space"] = ("--space", str((path if path.is_absolute() else cwd / path).resolve()))
    if args.data is not None:
        given["data"] = ("--data", _data_kind(args.data)[0])
    if args.warm_start is not None:
        flag = "--warm-start" if args.warm_start else "--no-warm-start"
        given["warm_start"] = (flag, args.warm_start)
    if args.tracking_uri is not None:
        given["tracking_uri"] = ("--tracking-uri", absolute_tracking_uri(args.tracking_uri, cwd))
    return given


def _check_resume_flags(args: argparse.Namespace, saved: SweepSettings, cwd: Path) -> None:
    """A resumed sweep is the recorded one: a flag that differs is an error naming the flag,
    the recorded and the given value; a larger --num-samples extends the sweep."""
    for field_name, (flag, value) in _given_flags(args, cwd).items():
        recorded = getattr(saved, field_name)
        if field_name == "tracking_uri" and value != recorded and redact_uri(value) == recorded:
            saved.tracking_uri = value  # the recorded URI had its password redacted
            continue
        if field_name == "num_samples" and value >= recorded:
            saved.num_samples = value  # more trials: same study, same MLflow sweep run
            continue
        if field_name == "space" and value == recorded and saved.space_sha256:
            _check_space_unchanged(value, saved)
            continue
        if value != recorded:
            shown = redact_uri if field_name == "tracking_uri" else (lambda v: v)
            hint = " (--num-samples can only grow)" if field_name == "num_samples" else ""
            typed, was = f"{flag} {shown(value)}", shown(recorded)
            if isinstance(value, bool):  # a switch: name the recorded one
                typed, was = flag, f"--{'' if recorded else 'no-'}{field_name.replace('_', '-')}"
            _fail(
                f"--resume: {typed} differs from sweep {saved.name!r}'s recorded {was}{hint}; "
                "drop the flag to resume the sweep as recorded"
            )
    if is_redacted(saved.tracking_uri):
        _fail(
            f"--resume: sweep {saved.name!r} tracks to {saved.tracking_uri}, whose password is "
            "not stored: pass --tracking-uri with it again (or use MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD)"
        )


def _check_space_unchanged(path: str, saved: SweepSettings) -> None:
    """--resume --space FILE: the file must still hold the space the sweep started with."""
    try:
        now = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        _fail(f"--resume: --space {path}: cannot read it ({exc.strerror or exc})")
    if now != saved.space_sha256:
        _fail(
            f"--resume: --space {path} (sha256 {now[:12]}) differs from sweep {saved.name!r}'s "
            f"recorded {saved.space} (sha256 {saved.space_sha256[:12]}): the file changed; "
            "drop the flag to resume the sweep as recorded, or start a new sweep"
        )


def parse_settings(argv: list[str] | None = None, *, cwd: Path | None = None) -> SweepSettings:
    """Parse and validate the command line. Raises UsageError (never SystemExit) on bad input,
    except for --help."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_cli(build_parser(), argv, "search.run")
    cwd = (cwd or Path.cwd()).resolve()
    results_dir = Path(args.results_dir or cwd / "results").expanduser()
    results_dir = (cwd / results_dir).resolve() if not results_dir.is_absolute() else results_dir

    if args.resume:
        if not args.name:
            _fail("--resume needs --name SWEEP (the sweep to continue)")
        manifest = results_dir / args.name / SWEEP_MANIFEST
        if not manifest.is_file():
            known = sorted(p.parent.name for p in results_dir.glob(f"*/{SWEEP_MANIFEST}"))
            _fail(
                f"--resume: no sweep {args.name!r} under {results_dir} (no {SWEEP_MANIFEST}); "
                f"known sweeps: {', '.join(known) or 'none'}"
            )
        try:
            saved = SweepSettings.load(manifest)
        except (KeyError, ValueError, TypeError) as exc:
            _fail(f"--resume: {manifest} is unreadable ({exc}); start a new sweep instead")
        _check_resume_flags(args, saved, cwd)
        saved.resume = True
        if args.address is not None:
            saved.address = args.address  # where to run is not what to run
        return saved

    if not args.space:
        _fail(f"--space is required: one of {', '.join(space_names())}, or a .yaml/.json file")
    space_file = _space_file(args.space, cwd)
    data, kind = _data_kind(args.data or "demo")
    num_samples = _positive_int("num-samples", args.num_samples, DEFAULT_NUM_SAMPLES)
    max_epochs = _positive_int("max-epochs", args.max_epochs, DEFAULT_MAX_EPOCHS)
    max_concurrent = _positive_int("max-concurrent", args.max_concurrent, DEFAULT_MAX_CONCURRENT)
    lag = _positive_int("lag", args.lag, default_lag(max_concurrent))
    if lag < max_concurrent:
        _fail(
            f"--lag {lag} is less than --max-concurrent {max_concurrent}: trial k cannot wait "
            "for a trial that runs beside it; give --lag >= --max-concurrent"
        )
    horizon = _positive_int("final-epochs", args.final_epochs, max(DEFAULT_HORIZON, max_epochs))
    if horizon < max_epochs:
        _fail(
            f"--final-epochs {horizon} is shorter than --max-epochs {max_epochs}: a trial is "
            "the start of its final run, so it cannot be longer"
        )
    folds = 0 if args.folds is None else args.folds
    if folds == 1 or folds < 0:
        _fail(f"--folds must be 2 or more (or left out for the store's val split), got {folds}")
    outer_folds = 0 if args.outer_folds is None else args.outer_folds
    if args.outer_folds is not None and outer_folds < 2:
        _fail(f"--outer-folds must be 2 or more (or left out for one sweep), got {outer_folds}")
    cpus = 1.0 if args.cpus_per_trial is None else args.cpus_per_trial
    gpus = 0.0 if args.gpus_per_trial is None else args.gpus_per_trial
    check_resources(cpus, gpus)
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(args.space).stem) if space_file else args.space
    name = args.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_name("--name", name)
    if (results_dir / name / SWEEP_MANIFEST).exists():
        _fail(
            f"sweep {name!r} already exists in {results_dir}; add --resume to continue it or pick another --name"
        )
    tracking_uri = absolute_tracking_uri(args.tracking_uri, cwd)
    sweep_dir = results_dir / name
    tune_suffix = hashlib.sha256(f"{sweep_dir}:{time.time_ns()}:{os.getpid()}".encode())
    return SweepSettings(
        space=space_file.path if space_file else args.space,
        name=name,
        data=data,
        data_kind=kind,
        num_samples=num_samples,
        max_epochs=max_epochs,
        horizon=horizon,
        folds=folds,
        outer_folds=outer_folds,
        max_concurrent=max_concurrent,
        lag=lag,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        address=args.address,
        seed=seed,
        resume=False,
        tracking_uri=tracking_uri,
        optuna_storage=optuna_storage_for(tracking_uri, results_dir),
        results_dir=str(results_dir),
        storage_path=str((case_tune_home() / "ray_results").resolve()),
        tune_name=f"{name}-{tune_suffix.hexdigest()[:8]}",
        grace_period=min(GRACE_PERIOD, max_epochs),
        warm_start=WARM_START if args.warm_start is None else args.warm_start,
        reproducible=REPRODUCIBLE if args.reproducible is None else args.reproducible,
        command="python -m search.run " + redact_text(shlex.join(argv)),
        space_spec=space_file.space if space_file else None,
        space_text=space_file.text if space_file else "",
        space_sha256=space_file.sha256 if space_file else "",
    )


def _space_file(arg: str, cwd: Path) -> SpaceFile | None:
    """--space ARG: a named space (None) or a space file, read and validated once, here."""
    if not is_space_file(arg, cwd):
        try:
            get_space(arg)
        except SpaceError as exc:
            _fail(f"--space {arg}: {exc}, or a .yaml/.json space file")
        return None
    path = Path(arg).expanduser()
    try:
        return load_space_file(path if path.is_absolute() else cwd / path, label=arg)
    except SpaceError as exc:
        _fail(f"--space {exc}")
    raise AssertionError  # unreachable


def sweep_argv(
    data: str | os.PathLike[str], name: str, work: Path, *, space: str = "case", **flags: Any
) -> list[str]:
    """The command line of a sweep built in code (tests, benchmarks), its results and MLflow
    store under ``work`` (``work/results``, ``work/mlflow.db``).

    ``flags`` are further options by name, ``_`` for ``-`` (``num_samples=4`` ->
    ``--num-samples 4``), in the order given; True is a bare switch (``no_warm_start=True``),
    None or False leaves the flag out.
    """
    argv = ["--space", space, "--data", str(data), "--name", name]
    for key, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return [
        *argv,
        "--results-dir",
        str(work / "results"),
        "--tracking-uri",
        f"sqlite:///{work / 'mlflow.db'}",
    ]
