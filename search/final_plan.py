"""What a finalize trains: the sweep's chosen configs, the units (config x seed) and the store.

A candidate is named by what it trains (trial id + config digest), never by its sweep rank, and
a unit by its candidate, seed, epochs and folds, so a resumed finalize finds the units it
finished even when the sweep's ranking has moved. Choosing reads validation numbers only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.final_settings import BEST_CONFIGS, FinalizeSettings
from search.settings import SWEEP_MANIFEST, UsageError

FIXED_EPOCH = 120  # the seed's reported epoch


@dataclass
class Candidate:
    """One config to retrain, as chosen from the sweep (by validation only)."""

    key: str
    label: str
    model: str
    rank: int | None
    trial_id: str
    sweep_run_id: str
    config: dict[str, Any]
    val_metrics: dict[str, float]
    why: str


def load_best_configs(settings: FinalizeSettings) -> dict[str, Any]:
    path = settings.sweep_dir / BEST_CONFIGS
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); run the sweep's results step again") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("top"), list):
        raise UsageError(f"{path}: no 'top' list of configs; was it written by search.run?")
    if not doc["top"]:
        raise UsageError(f"{path}: the sweep has no scored trial to finalize")
    return doc


def select_candidates(doc: Mapping[str, Any], top_k: int, models: Sequence[str]) -> list[Candidate]:
    """The top-K entries, then the best entry of each family in ``models`` not already in."""
    per_model: Mapping[str, Any] = doc.get("best_per_model") or {}
    wanted = list(per_model) if "all" in models else list(models)
    missing = [m for m in wanted if m not in per_model]
    if missing:
        raise UsageError(
            f"--models: sweep {doc.get('sweep', '?')} has no scored trial of "
            f"{', '.join(missing)}; families in it: {', '.join(per_model) or 'none'}"
        )
    picked: list[tuple[dict[str, Any], str]] = [(e, "top-k") for e in doc["top"][:top_k]]
    seen = {e["trial_id"] for e, _ in picked}
    for m in wanted:
        e = per_model[m]
        if e["trial_id"] not in seen:
            picked.append((e, f"best {m}"))
            seen.add(e["trial_id"])
    out = []
    for e, why in picked:
        rank = e.get("rank")
        out.append(
            Candidate(
                key=candidate_key(str(e["trial_id"]), e["config"]),
                label=f"{e['model']} (#{rank} {e['trial_id']})",
                model=e["model"],
                rank=rank,
                trial_id=str(e["trial_id"]),
                sweep_run_id=str(e.get("mlflow_run_id", "")),
                config=dict(e["config"]),
                val_metrics=dict(e.get("val_metrics") or {}),
                why=why,
            )
        )
    return out


def config_digest(config: Mapping[str, Any]) -> str:
    """8 hex digits naming what a config trains (its epochs and seed left out: the unit id
    names those itself)."""
    body = {k: v for k, v in sorted(config.items()) if k not in ("epochs", "seed")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:8]


def candidate_key(trial_id: str, config: Mapping[str, Any]) -> str:
    """A candidate by what it trains, not by its sweep rank: ranks move when a sweep is
    extended, and a resumed finalize must still find (not retrain, not orphan) its units."""
    return f"{trial_id}-{config_digest(config)}"


def unit_id(candidate: Candidate, seed: int, epochs: int, folds: int = 0) -> str:
    """One unit of work: this config, this seed, this many epochs (over these folds)."""
    return f"{candidate.key}-s{seed}-e{epochs}" + (f"-f{folds}" if folds > 1 else "")


def top_k_note(doc: Mapping[str, Any], top_k: int) -> str | None:
    """Never a silent cap: say when --top-k asks for more configs than the sweep recorded."""
    recorded = len(doc["top"])
    if top_k <= recorded:
        return None
    scored = doc.get("num_scored", recorded)
    of = f" (of {scored} scored trials)" if scored != recorded else ""
    return (
        f"--top-k {top_k}: sweep {doc.get('sweep', '?')} recorded {recorded} scored "
        f"config(s){of} in {BEST_CONFIGS}; finalizing those {recorded}"
    )


def unit_config(candidate: Candidate, seed: int, epochs: int) -> dict[str, Any]:
    """The candidate's TrainConfig with the finalize's epochs and this seed (validated)."""
    from models.config import ConfigError, TrainConfig

    try:
        return TrainConfig.from_dict({**candidate.config, "epochs": epochs, "seed": seed}).to_dict()
    except ConfigError as exc:
        raise UsageError(f"config of trial {candidate.trial_id} is invalid now: {exc}") from exc


def fixed_epoch(epochs: int, target: int = FIXED_EPOCH) -> int:
    """The seed's epoch: ``target`` (120), or the last epoch of a shorter run."""
    return min(target, epochs)


@dataclass
class Plan:
    """Everything a finalize trains, and the store it reads (opened with test unsealed)."""

    candidates: list[Candidate]
    units: list[dict[str, Any]]
    notes: list[str]
    store: Any
    store_path: Path
    space: str

    @property
    def by_key(self) -> dict[str, Candidate]:
        return {c.key: c for c in self.candidates}


def make_plan(settings: FinalizeSettings, say: Callable[[str], None]) -> Plan:
    """The candidates, their units and the sweep's store; UsageError when any is missing.
    Notes on the plan are said as soon as they are known, before anything else can fail."""
    doc = load_best_configs(settings)
    candidates = select_candidates(doc, settings.top_k, settings.models)
    notes = [n] if (n := top_k_note(doc, settings.top_k)) else []
    for n in notes:
        say(f"note: {n}")
    store_path = _store_path(doc, settings)
    store = open_store(store_path, doc.get("store_key"))
    return Plan(
        candidates=candidates,
        units=plan_units(candidates, settings),
        notes=notes,
        store=store,
        store_path=store_path,
        space=_space_name(doc, settings),
    )


def plan_units(candidates: Sequence[Candidate], settings: FinalizeSettings) -> list[dict[str, Any]]:
    """One unit per (candidate, seed), in that order: what a worker needs to train it."""
    return [
        {
            "unit_id": unit_id(c, seed, settings.epochs, settings.folds),
            "candidate": c.key,
            "trial_id": c.trial_id,
            "model": c.model,
            "seed": seed,
            "folds": settings.folds,
            "config": unit_config(c, seed, settings.epochs),
        }
        for c in candidates
        for seed in settings.seeds
    ]


def open_store(store_path: Path, sweep_key: str | None) -> Any:
    """The sweep's feature store with nothing sealed (the one such opener), checked to be the
    store the sweep searched on."""
    from data_prep.store import FeatureStore, StoreError

    try:
        store = FeatureStore.open(store_path, sealed=())
    except (StoreError, OSError, ValueError) as exc:
        raise UsageError(f"cannot open the sweep's feature store {store_path}: {exc}") from exc
    if sweep_key and sweep_key != store.key:
        raise UsageError(
            f"store {store_path} has key {store.key}, the sweep used "
            f"{sweep_key}; the store was replaced"
        )
    return store


def _store_path(doc: Mapping[str, Any], settings: FinalizeSettings) -> Path:
    path = doc.get("store_path")
    if not path:
        manifest = settings.sweep_dir / SWEEP_MANIFEST
        if manifest.is_file():
            path = json.loads(manifest.read_text(encoding="utf-8")).get("store_path")
    if not path:
        raise UsageError(
            f"{settings.sweep_dir}: neither {BEST_CONFIGS} nor {SWEEP_MANIFEST} "
            "names the sweep's feature store"
        )
    return Path(path)


def _space_name(doc: Mapping[str, Any], settings: FinalizeSettings) -> str:
    manifest = settings.sweep_dir / SWEEP_MANIFEST
    if manifest.is_file():
        with contextlib.suppress(ValueError):
            name = json.loads(manifest.read_text(encoding="utf-8")).get("space_name")
            if name:
                return str(name)
    space = doc.get("space")
    return space if isinstance(space, str) else ""
