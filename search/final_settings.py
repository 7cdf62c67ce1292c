"""The settings of `python -m search.finalize`: its command line, checked, and where it writes.

`parse_settings` reads the flags, fills what they leave out from the sweep (its final-run
length, its folds, its tracking URI) and, with `--resume`, from the interrupted finalize's
state.json, so that a resume keeps the plan it started with. Every mistake is a UsageError
raised before Ray starts or a file is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search.redact import is_redacted, redact_text, redact_uri
from search.settings import (
    SWEEP_MANIFEST,
    UsageError,
    absolute_tracking_uri,
    check_name,
    check_resources,
    default_tracking_uri,
    parse_cli,
)

# bench_selection, "finalize variants": on 2026-12-01 (async ASHA, top 3 finalized) the top 2
# configs x 2 seeds gave final runs as good on the oracle as the top 3 x 2 (0.586 vs 0.584, sd
# 0.02 over 3 sweep seeds) and better than the sweep's #1 alone (0.571); on 2026-12-02
# (results/bench.md) top 2 x 2 gave 0.560 and the #1 alone 0.571 (sd 0.035-0.055): within noise
# both times, so the cheaper-than-top-3 default stays.
DEFAULT_TOP_K = 2
DEFAULT_EPOCHS = 150
# Two of the seed's three seeds (0, 42, 2023): two seeds beat one on the oracle (0.586 vs
# 0.571, bench_selection) and keep README's demo short; `--seeds 0 42 2023` is the seed's.
DEFAULT_SEEDS = (0, 42)
DEFAULT_MAX_CONCURRENT = 2
BEST_CONFIGS = "best_configs.yaml"
FINAL_DIR = "final"
STATE = "state.json"
# Settings that define the plan: a resume must not change them.
PLAN_KEYS = ("top_k", "epochs", "seeds", "models", "folds", "tracking_uri")


@dataclass
class FinalizeSettings:
    sweep: str
    results_dir: str
    top_k: int = DEFAULT_TOP_K
    epochs: int = DEFAULT_EPOCHS
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    models: list[str] = field(default_factory=list)
    folds: int = 0  # K >= 2: one head per session fold, test scored by their ensemble
    tracking_uri: str = ""
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    sweep_seed: int = 0  # the sweep's --seed: the final run of that seed repeats the trial
    address: str | None = None
    resume: bool = False
    command: str = ""

    @property
    def sweep_dir(self) -> Path:
        return Path(self.results_dir) / self.sweep

    @property
    def out_dir(self) -> Path:
        return self.sweep_dir / FINAL_DIR

    @property
    def units_dir(self) -> Path:
        return self.out_dir / "units"

    @property
    def checkpoints_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.finalize",
        description="Retrain a sweep's best configs over several seeds and score the test "
        "sessions once per checkpoint (epoch chosen by validation).",
    )
    p.add_argument("--sweep", required=True, help="sweep name (results/<sweep>/best_configs.yaml)")
    p.add_argument(
        "--top-k", type=int, help=f"best configs by val macro-F1 (default {DEFAULT_TOP_K})"
    )
    p.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="also the best config of each of these model families ('all' = every "
        "family the sweep tried)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="epochs per run (default: the sweep's --final-epochs, which its trials were "
        f"scheduled for; {DEFAULT_EPOCHS} unless changed). Another value makes the final runs "
        "differ from what the trials scored",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="training seeds (default: the sweep's --seed, then 42, so the first run continues "
        "the trial; the seed's paper used 0 42 2023)",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="train each run as K heads, one per session fold of the non-test sessions (the "
        "folds of `search.run --folds K`), choose the epoch by the fold mean and score test "
        "with the heads' ensemble; 0: train on the store's train split, choose on val "
        "(default: what the sweep did)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's)")
    p.add_argument("--results-dir", help="folder holding results/<sweep>/ (default ./results)")
    p.add_argument(
        "--max-concurrent", type=int, help=f"runs at once (default {DEFAULT_MAX_CONCURRENT})"
    )
    p.add_argument(
        "--cpus-per-trial", type=float, help="CPUs (and threads) per run (default: the sweep's)"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per run, may be fractional (default: the sweep's)",
    )
    p.add_argument("--address", help="Ray cluster address ('auto' or host:port); default local")
    p.add_argument("--resume", action="store_true", help="continue an interrupted finalize")
    return p


def parse_settings(
    argv: Sequence[str] | None = None, *, cwd: Path | None = None
) -> FinalizeSettings:
    """Parse and validate the command line; raises UsageError (never SystemExit but --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_cli(build_parser(), argv, "search.finalize")
    check_name("--sweep", a.sweep)  # before any file is read: '../x' must not escape
    cwd = (cwd or Path.cwd()).resolve()
    results_dir = results_dir_of(a, cwd)
    sweep_dir = results_dir / a.sweep
    if not (sweep_dir / BEST_CONFIGS).is_file():
        raise UsageError(
            f"--sweep {a.sweep}: no {BEST_CONFIGS} in {sweep_dir}; known sweeps under "
            f"{results_dir}: {_known_sweeps(results_dir)}"
        )
    manifest = _sweep_manifest(sweep_dir)
    s = _from_flags(a, argv, results_dir, manifest.get("settings") or {})
    s.tracking_uri = _tracking_uri(a, manifest, cwd)
    if s.resume and s.state_path.is_file():
        _keep_interrupted_plan(s, a)
    _check(s)
    if not s.resume and s.state_path.is_file():
        raise UsageError(
            f"sweep {s.sweep!r} already has a finalize in {s.out_dir}; add --resume to continue "
            "it, or move that folder away to start over"
        )
    return s


def results_dir_of(a: argparse.Namespace, cwd: Path | None = None) -> Path:
    """--results-dir (default ./results) as an absolute path against ``cwd``."""
    cwd = (cwd or Path.cwd()).resolve()
    path = Path(a.results_dir or "results").expanduser()
    return path if path.is_absolute() else (cwd / path).resolve()


def _known_sweeps(results_dir: Path) -> str:
    names = sorted(p.parent.name for p in results_dir.glob(f"*/{BEST_CONFIGS}"))
    return ", ".join(names) or "none"


def _from_flags(
    a: argparse.Namespace, argv: list[str], results_dir: Path, sweep: dict[str, Any]
) -> FinalizeSettings:
    """The flags given, and the sweep's own length, folds, seed and resources (``sweep``: its
    recorded settings) where they are not."""
    s = FinalizeSettings(sweep=a.sweep, results_dir=str(results_dir))
    s.command = "python -m search.finalize " + redact_text(shlex.join(argv))  # stored in files
    if a.top_k is not None:
        s.top_k = a.top_k
    s.epochs = a.epochs if a.epochs is not None else _sweep_horizon(s.sweep_dir)
    s.folds = a.folds if a.folds is not None else _sweep_folds(s.sweep_dir)
    s.sweep_seed = int(sweep.get("seed", DEFAULT_SEEDS[0]))
    s.seeds = list(dict.fromkeys(a.seeds if a.seeds is not None else default_seeds(s.sweep_seed)))
    if a.models is not None:
        s.models = list(dict.fromkeys(a.models))
    if a.max_concurrent is not None:
        s.max_concurrent = a.max_concurrent
    # The sweep's resources (and so its thread count) unless told otherwise: a trial's seed
    # is then repeated bit for bit by the final run with the same seed.
    s.cpus_per_trial = float(
        a.cpus_per_trial if a.cpus_per_trial is not None else sweep.get("cpus_per_trial", 1.0)
    )
    s.gpus_per_trial = float(
        a.gpus_per_trial if a.gpus_per_trial is not None else sweep.get("gpus_per_trial", 0.0)
    )
    s.address = a.address
    s.resume = a.resume
    return s


def default_seeds(sweep_seed: int) -> list[int]:
    """The sweep's own seed first, so the first final run continues its trial, then 42 (or,
    when the sweep's seed is 42, 0): two seeds, as DEFAULT_SEEDS."""
    return list(dict.fromkeys([sweep_seed, *DEFAULT_SEEDS[1:], *DEFAULT_SEEDS]))[:2]


def _sweep_manifest(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's sweep.json (empty when it has none or it is not JSON)."""
    manifest = sweep_dir / SWEEP_MANIFEST
    saved: Any = {}
    if manifest.is_file():
        with contextlib.suppress(ValueError):
            saved = json.loads(manifest.read_text(encoding="utf-8"))
    return saved if isinstance(saved, dict) else {}


def _tracking_uri(a: argparse.Namespace, manifest: dict[str, Any], cwd: Path) -> str:
    """--tracking-uri, else the sweep's (which must still hold its password), else the default."""
    if a.tracking_uri:
        return absolute_tracking_uri(a.tracking_uri, cwd)
    uri = manifest.get("tracking_uri") or default_tracking_uri(cwd)
    if is_redacted(uri):
        raise UsageError(
            f"sweep {a.sweep!r} tracks to {uri}, whose password is not stored: "
            "pass --tracking-uri with it"
        )
    return uri


def _keep_interrupted_plan(s: FinalizeSettings, a: argparse.Namespace) -> None:
    """--resume: the plan settings of the interrupted finalize; a flag that differs is an error."""
    saved = json.loads(s.state_path.read_text(encoding="utf-8"))["settings"]
    given = {
        "top_k": a.top_k,
        "epochs": a.epochs,
        "seeds": a.seeds,
        "models": a.models,
        "folds": a.folds,
        "tracking_uri": a.tracking_uri and s.tracking_uri,
    }
    for key in PLAN_KEYS:
        mine = redact_uri(s.tracking_uri) if key == "tracking_uri" else getattr(s, key)
        if given[key] is not None and mine != saved[key]:
            raise UsageError(
                f"--resume: --{key.replace('_', '-')} {mine} differs from the "
                f"interrupted finalize's {saved[key]}; drop the flag to resume it"
            )
        if key not in saved:  # a finalize from before the key existed
            continue
        if key != "tracking_uri" or not is_redacted(saved[key]):
            setattr(s, key, saved[key])


def _check(s: FinalizeSettings) -> None:
    if s.top_k < 0 or (s.top_k == 0 and not s.models):
        raise UsageError(f"--top-k must be >= 1 (or 0 with --models), got {s.top_k}")
    if s.epochs <= 0:
        raise UsageError(f"--epochs must be a positive integer, got {s.epochs}")
    if s.folds == 1 or s.folds < 0:
        raise UsageError(f"--folds must be 0 (no folds) or at least 2, got {s.folds}")
    if any(seed < 0 for seed in s.seeds):
        raise UsageError(f"--seeds must be >= 0, got {s.seeds}")
    if s.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {s.max_concurrent}")
    check_resources(s.cpus_per_trial, s.gpus_per_trial)
    if s.models:
        from models.config import MODEL_NAMES

        bad = [m for m in s.models if m != "all" and m not in MODEL_NAMES]
        if bad:
            raise UsageError(
                f"--models: unknown model family {', '.join(bad)}; known: "
                f"{', '.join(MODEL_NAMES)} (or 'all')"
            )


def _sweep_fact(sweep_dir: Path, key: str, default: int) -> int:
    """An integer the sweep recorded in its best_configs.yaml (``default`` for older sweeps)."""
    import yaml

    with contextlib.suppress(OSError, ValueError, yaml.YAMLError, AttributeError, TypeError):
        doc = yaml.safe_load((sweep_dir / BEST_CONFIGS).read_text(encoding="utf-8"))
        return int(doc.get(key) or default)
    return default


def _sweep_horizon(sweep_dir: Path) -> int:
    """The final-run length the sweep's trials were scheduled for (150 for older sweeps)."""
    return _sweep_fact(sweep_dir, "final_epochs", DEFAULT_EPOCHS)


def _sweep_folds(sweep_dir: Path) -> int:
    """The session folds the sweep's trials were cross-validated over (0: none)."""
    return _sweep_fact(sweep_dir, "folds", 0)
