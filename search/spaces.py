"""Named search spaces as plain data, and the one define-by-run function that samples them.

A space is an ordered mapping of parameter specs plus fixed values. Each spec has exactly one
distribution key and optional modifiers:

    {"choice": [a, b, ...]}            categorical
    {"uniform": [lo, hi]}              float
    {"loguniform": [lo, hi]}           float, log scale
    {"int": [lo, hi]}                  integer (optional "step")
    "when": {"param": value | [values]}  sample only if every earlier param named here has one
                                         of these values; otherwise the param is absent
    "zero_below": x                    (float specs) a sampled value below x becomes 0.0, so a
                                         log range can still reach "off" (weight decay)

`sample_config(trial, space)` turns a spec into Optuna `trial.suggest_*` calls in order, so
Optuna sees the conditional structure, and returns a flat dict of `TrainConfig` keys holding
only the parameters that applied plus the space's fixed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
MODIFIERS = ("when", "zero_below", "step")

CASE_MODELS = (
    "case-compressing",
    "case-attention",
    "case-concat-compressing",
    "case-concat-attention",
)
BASELINE_MODELS = ("concat", "mmm", "text-only", "speech-only")
CONTRASTIVE_ON = ["supervised", "infonce"]

# The seed's hand-tuned configuration (reference/case-original.md), in TrainConfig keys.
SEED_CONFIG: dict[str, Any] = {
    "hidden": 256,
    "dropout": 0.5,
    "lr": 2e-5,
    "weight_decay": 0.0,
    "batch_size": 64,
    "schedule": "none",
    "loss": "ce",
    "class_weights": "none",
    "label_smoothing": 0.0,
    "contrastive": "none",
    "faithful": True,
}


class SpaceError(ValueError):
    """A space name is unknown or a space spec is malformed."""


def _optimiser_and_loss(extra_when: dict[str, Any] | None = None) -> dict[str, dict]:
    """Knobs every family shares: capacity, optimiser, schedule, loss."""
    return {
        "hidden": {"choice": [128, 256, 384]},
        "dropout": {"uniform": [0.0, 0.6]},
        "lr": {"loguniform": [1e-5, 3e-3]},
        "weight_decay": {"loguniform": [1e-6, 1e-1], "zero_below": 1e-5},
        "batch_size": {"choice": [32, 64, 128]},
        "schedule": {"choice": ["none", "linear_warmup", "cosine"]},
        "warmup_ratio": {"uniform": [0.0, 0.3], "when": {"schedule": "linear_warmup"}},
        "loss": {"choice": ["ce", "focal"]},
        "focal_gamma": {"uniform": [0.5, 3.0], "when": {"loss": "focal"}},
        "class_weights": {"choice": ["none", "inverse", "inverse_sqrt"]},
        "label_smoothing": {"uniform": [0.0, 0.2]},
    }


def _contrastive(when: dict[str, Any] | None = None) -> dict[str, dict]:
    base = dict(when or {})
    on = {**base, "contrastive": CONTRASTIVE_ON}
    first: dict[str, Any] = {"choice": ["none", "supervised", "infonce"]}
    if base:
        first["when"] = base
    return {
        "contrastive": first,
        "contrastive_weight": {"loguniform": [0.01, 1.0], "when": on},
        "contrastive_temperature": {"loguniform": [0.03, 0.5], "when": on},
    }


def _case_space() -> dict[str, Any]:
    params = {"model": {"choice": list(CASE_MODELS)}}
    params.update(_optimiser_and_loss())
    params.update(_contrastive())
    params["faithful"] = {"choice": [True, False]}
    return {"params": params, "fixed": {}}


def _baselines_space() -> dict[str, Any]:
    params = {"model": {"choice": list(BASELINE_MODELS)}}
    params.update(_optimiser_and_loss())
    params["faithful"] = {"choice": [True, False]}
    return {"params": params, "fixed": {}}


def _all_space() -> dict[str, Any]:
    params = {"model": {"choice": list(CASE_MODELS + BASELINE_MODELS)}}
    params.update(_optimiser_and_loss())
    # The contrastive objectives need both modalities and a fused representation: CASE only.
    params.update(_contrastive({"model": list(CASE_MODELS)}))
    params["faithful"] = {"choice": [True, False]}
    return {"params": params, "fixed": {}}


SPACES: dict[str, dict[str, Any]] = {
    "case": _case_space(),
    "baselines": _baselines_space(),
    "all": _all_space(),
}


def space_names() -> list[str]:
    return sorted(SPACES)


def get_space(name: str) -> dict[str, Any]:
    """The validated space called ``name``; an unknown name lists the valid ones."""
    if name not in SPACES:
        raise SpaceError(f"unknown search space {name!r}; valid spaces: {', '.join(space_names())}")
    return validate_space(SPACES[name], name=name)


def with_fixed(space: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``space`` with extra fixed values (e.g. epochs, seed); a fixed value wins
    over a sampled parameter of the same name, which is then removed."""
    params = {k: v for k, v in space["params"].items() if k not in fixed}
    for name, spec in params.items():
        for cond in spec.get("when", {}):
            if cond in fixed:
                raise SpaceError(f"cannot fix {cond!r}: parameter {name!r} is conditional on it")
    return validate_space({"params": params, "fixed": {**space.get("fixed", {}), **fixed}})


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def validate_space(space: Mapping[str, Any], *, name: str = "<space>") -> dict[str, Any]:
    """Check a space spec once; returns it as a plain dict. Raises SpaceError naming the issue."""
    if not isinstance(space, Mapping) or "params" not in space:
        raise SpaceError(f"space {name}: expected a mapping with 'params' (and optional 'fixed')")
    extra = set(space) - {"params", "fixed"}
    if extra:
        raise SpaceError(f"space {name}: unknown top-level keys {sorted(extra)}")
    params = space["params"]
    fixed = dict(space.get("fixed") or {})
    seen: dict[str, dict] = {}
    for pname, spec in params.items():
        where = f"space {name}, parameter {pname!r}"
        if not isinstance(spec, Mapping):
            raise SpaceError(f"{where}: spec must be a mapping, got {spec!r}")
        kinds = [k for k in spec if k in DISTRIBUTIONS]
        unknown = set(spec) - set(DISTRIBUTIONS) - set(MODIFIERS)
        if len(kinds) != 1 or unknown:
            raise SpaceError(
                f"{where}: needs exactly one of {DISTRIBUTIONS} (modifiers {MODIFIERS}); "
                f"got keys {sorted(spec)}"
            )
        kind = kinds[0]
        arg = spec[kind]
        if kind == "choice":
            if not isinstance(arg, list | tuple) or not arg:
                raise SpaceError(f"{where}: 'choice' needs a non-empty list, got {arg!r}")
        else:
            if not (isinstance(arg, list | tuple) and len(arg) == 2):
                raise SpaceError(f"{where}: {kind!r} needs [low, high], got {arg!r}")
            lo, hi = arg
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in (lo, hi)):
                raise SpaceError(f"{where}: bounds must be finite numbers, got {arg!r}")
            if lo > hi:
                raise SpaceError(f"{where}: low {lo} > high {hi}")
            if kind == "loguniform" and lo <= 0:
                raise SpaceError(f"{where}: 'loguniform' needs low > 0, got {lo}")
            if kind == "int" and not all(isinstance(v, int) for v in (lo, hi)):
                raise SpaceError(f"{where}: 'int' bounds must be integers, got {arg!r}")
        if "zero_below" in spec and kind not in ("uniform", "loguniform"):
            raise SpaceError(f"{where}: 'zero_below' applies to float specs only")
        for cond, allowed in (spec.get("when") or {}).items():
            if cond not in seen:
                raise SpaceError(
                    f"{where}: condition on {cond!r}, which is not an earlier parameter"
                )
            cspec = seen[cond]
            if "choice" in cspec:
                bad = [v for v in _as_list(allowed) if v not in cspec["choice"]]
                if bad:
                    raise SpaceError(
                        f"{where}: condition {cond} in {bad} can never hold "
                        f"(choices {cspec['choice']})"
                    )
        if pname in fixed:
            raise SpaceError(f"{where}: both sampled and fixed")
        seen[pname] = dict(spec)
    return {"params": {k: dict(v) for k, v in params.items()}, "fixed": fixed}


def _applies(spec: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(
        cond in values and values[cond] in _as_list(allowed)
        for cond, allowed in (spec.get("when") or {}).items()
    )


def _to_config_value(spec: Mapping[str, Any], value: Any) -> Any:
    if "zero_below" in spec and value < spec["zero_below"]:
        return 0.0
    return value


def sample_config(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Define-by-run: suggest each applicable parameter in order on an Optuna trial.

    Returns the flat config (applicable parameters after `zero_below`, then fixed values).
    A conditional parameter whose condition fails is never suggested, so it is absent both
    from the Optuna trial and from the returned config.
    """
    raw: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for name, spec in space["params"].items():
        if not _applies(spec, raw):
            continue
        if "choice" in spec:
            value = trial.suggest_categorical(name, list(spec["choice"]))
        elif "uniform" in spec:
            value = trial.suggest_float(name, *spec["uniform"])
        elif "loguniform" in spec:
            value = trial.suggest_float(name, *spec["loguniform"], log=True)
        else:
            value = trial.suggest_int(name, *spec["int"], step=spec.get("step", 1))
        raw[name] = value
        config[name] = _to_config_value(spec, value)
    config.update(space.get("fixed") or {})
    return config


class SpaceSampler:
    """The define-by-run callable OptunaSearch takes as its ``space``.

    A module-level class rather than a closure: OptunaSearch saves itself with plain pickle
    on every experiment checkpoint, and closures do not pickle.
    """

    def __init__(self, space: Mapping[str, Any]) -> None:
        self.space = dict(space)

    def __call__(self, trial: Any) -> dict[str, Any]:
        return sample_config(trial, self.space)


def define_by_run(space: Mapping[str, Any]) -> SpaceSampler:
    return SpaceSampler(space)


def _fits(spec: Mapping[str, Any], value: Any) -> bool:
    """Whether a config value can be produced by ``spec`` (seed values outside a custom
    space's range are left for the sampler instead)."""
    if "choice" in spec:
        return any(value == c and type(value) is type(c) for c in spec["choice"])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    kind = next(k for k in DISTRIBUTIONS if k in spec)
    lo, hi = spec[kind]
    if "zero_below" in spec and value == 0.0:
        return True
    return lo <= value <= hi and (kind != "int" or float(value).is_integer())


def seed_configs(name_or_space: str | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The seed's own configuration of every model in the space (flat TrainConfig dicts)."""
    space = get_space(name_or_space) if isinstance(name_or_space, str) else name_or_space
    fixed = space.get("fixed") or {}
    models = space["params"]["model"]["choice"] if "model" in space["params"] else [fixed["model"]]
    out = []
    for model in models:
        values = {**SEED_CONFIG, "model": model}
        cfg: dict[str, Any] = {}
        for pname, spec in space["params"].items():
            if _applies(spec, cfg) and pname in values and _fits(spec, values[pname]):
                cfg[pname] = values[pname]
        cfg.update(fixed)
        out.append(cfg)
    return out


def seed_points(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`seed_configs` as Optuna parameter values (for enqueueing as warm starts).

    A config value of 0.0 for a `zero_below` parameter maps to the low end of its range, which
    `sample_config` maps back to 0.0, so the warm start trains exactly the seed's config.
    """
    points = []
    for cfg in seed_configs(space):
        point = {}
        for pname, spec in space["params"].items():
            if pname not in cfg:
                continue
            value = cfg[pname]
            if "zero_below" in spec and value == 0.0:
                value = spec["uniform" if "uniform" in spec else "loguniform"][0]
            point[pname] = value
        points.append(point)
    return points
