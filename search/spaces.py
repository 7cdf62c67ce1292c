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

A space is a named one (`SPACES`) or a user's YAML/JSON file in the same language, under
`params:` and `fixed:` (`load_space_file`, what `search.run --space FILE` reads);
`python -m search.spaces --dump NAME` writes a named space as such a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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


def validate_space(
    space: Mapping[str, Any], *, name: str = "<space>", where: str | None = None
) -> dict[str, Any]:
    """Check a space spec once; returns it as a plain dict. Raises SpaceError, one line that
    starts with ``where`` (default "space NAME"), names the key (``params.lr.loguniform``)
    and says what is allowed there."""
    src = where or f"space {name}"
    if not isinstance(space, Mapping):
        raise SpaceError(f"{src}: expected a mapping with 'params' (and optional 'fixed')")
    extra = sorted(str(k) for k in set(space) - {"params", "fixed"})
    if extra:
        raise SpaceError(f"{src}: unknown key {extra[0]!r}; allowed: params, fixed")
    if "params" not in space:
        raise SpaceError(f"{src}: no 'params': the mapping of parameter name -> spec")
    params = space["params"]
    if not isinstance(params, Mapping):
        raise SpaceError(f"{src}: params: expected a mapping of parameter name -> spec")
    fixed = space.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise SpaceError(f"{src}: fixed: expected a mapping of TrainConfig key -> value")
    seen: dict[str, dict] = {}
    for pname, spec in params.items():
        where = f"{src}: params.{pname}"
        _check_spec(where, spec)
        _check_when(where, spec, seen)
        if pname in fixed:
            raise SpaceError(f"{where}: both sampled and fixed (fixed.{pname}); keep one")
        seen[str(pname)] = dict(spec)
    return {"params": {k: dict(v) for k, v in params.items()}, "fixed": dict(fixed)}


def _check_spec(where: str, spec: Any) -> None:
    """One parameter's distribution and modifiers (not its condition)."""
    if not isinstance(spec, Mapping):
        raise SpaceError(
            f"{where}: expected a spec such as {{uniform: [low, high]}}, got {spec!r} "
            "(a fixed value goes under 'fixed')"
        )
    unknown = sorted(str(k) for k in set(spec) - set(DISTRIBUTIONS) - set(MODIFIERS))
    if unknown:
        raise SpaceError(
            f"{where}: unknown key {unknown[0]!r}; a parameter takes one of "
            f"{', '.join(DISTRIBUTIONS)} and optionally {', '.join(MODIFIERS)}"
        )
    kinds = [k for k in DISTRIBUTIONS if k in spec]
    if len(kinds) != 1:
        raise SpaceError(
            f"{where}: needs exactly one of {', '.join(DISTRIBUTIONS)}; got {sorted(spec)}"
        )
    kind = kinds[0]
    arg = spec[kind]
    if kind == "choice":
        if not isinstance(arg, list | tuple) or not arg:
            raise SpaceError(f"{where}.choice: needs a non-empty list of values, got {arg!r}")
    else:
        _check_bounds(f"{where}.{kind}", kind, arg)
    if "zero_below" in spec:
        if kind not in ("uniform", "loguniform"):
            raise SpaceError(f"{where}.zero_below: applies to uniform and loguniform only")
        if not _is_number(spec["zero_below"]):
            raise SpaceError(f"{where}.zero_below: needs a number, got {spec['zero_below']!r}")
    if "step" in spec:
        step = spec["step"]
        if kind != "int":
            raise SpaceError(f"{where}.step: applies to int only")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise SpaceError(f"{where}.step: needs a positive integer, got {step!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_bounds(where: str, kind: str, arg: Any) -> None:
    if not (isinstance(arg, list | tuple) and len(arg) == 2):
        raise SpaceError(f"{where}: needs [low, high], got {arg!r}")
    lo, hi = arg
    if not (_is_number(lo) and _is_number(hi)):
        raise SpaceError(f"{where}: bounds must be finite numbers, got {arg!r}")
    if lo > hi:
        raise SpaceError(f"{where}: low {lo} > high {hi}")
    if kind == "loguniform" and lo <= 0:
        raise SpaceError(f"{where}: 'loguniform' needs low > 0, got {lo}")
    if kind == "int" and not all(isinstance(v, int) for v in (lo, hi)):
        raise SpaceError(f"{where}: 'int' bounds must be integers, got {arg!r}")


def _check_when(where: str, spec: Mapping[str, Any], seen: Mapping[str, dict]) -> None:
    """A condition names earlier parameters only, with values they can take."""
    when = spec.get("when") or {}
    if not isinstance(when, Mapping):
        raise SpaceError(f"{where}.when: expected a mapping {{param: value or [values]}}")
    for cond, allowed in when.items():
        if cond not in seen:
            earlier = ", ".join(seen) or "none"
            raise SpaceError(
                f"{where}.when: condition on {cond!r}, which is not an earlier parameter "
                f"(earlier: {earlier})"
            )
        cspec = seen[cond]
        if "choice" in cspec:
            bad = [v for v in _as_list(allowed) if v not in cspec["choice"]]
            if bad:
                raise SpaceError(
                    f"{where}.when: condition {cond} in {bad} can never hold "
                    f"(choices {cspec['choice']})"
                )


# -- a space from a file ------------------------------------------------------------------
SPACE_SUFFIXES = (".yaml", ".yml", ".json")
# What the sweep fixes itself (the final run's length, the sweep's seed): not a file's to set.
SWEEP_FIXED = {"epochs": "--final-epochs", "seed": "--seed"}


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader (plain data only), reading `1e-5` as the float it is: YAML
    1.1, which PyYAML follows, makes it a string, and learning rates are written that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Writes each condition out in full: the named spaces share condition dicts, which
    YAML would otherwise write once with an anchor (&id001) and refer to (*id001)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass(frozen=True)
class SpaceFile:
    """A space read from a file: the validated space, the file's text and its hash."""

    path: str
    space: dict[str, Any]
    text: str
    sha256: str


def is_space_file(arg: str, cwd: Path | None = None) -> bool:
    """Whether ``--space ARG`` names a file (by its suffix, or an existing file, relative to
    ``cwd``); a space's name always means the named space, whatever files the folder holds."""
    if arg in SPACES:
        return False
    path = Path(arg).expanduser()
    return arg.lower().endswith(SPACE_SUFFIXES) or (Path(cwd or ".") / path).is_file()


def load_space_file(path: str | Path, *, label: str | None = None) -> SpaceFile:
    """Read, parse and validate a space file (YAML or JSON) once: the spec language of this
    module, every value one `TrainConfig` accepts, a model named. Raises SpaceError, one line
    naming the file (as ``label``, default its path), the key and what is allowed."""
    path = Path(path).expanduser()
    src = label or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpaceError(f"{src}: cannot read the space file ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{src}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    data = _parse(path, text, src)
    space = validate_space(data, where=src)
    _check_values(src, space)
    return SpaceFile(str(path.resolve()), space, text, hashlib.sha256(raw).hexdigest())


def _parse(path: Path, text: str, src: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"{src}: not valid JSON ({exc})") from exc
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        one_line = " ".join(str(exc).split())
        raise SpaceError(f"{src}: not valid YAML ({one_line})") from exc


def _check_values(src: str, space: Mapping[str, Any]) -> None:
    """Every key a TrainConfig key, and every value a space can give one TrainConfig accepts
    (each choice, each end of a range, the 0.0 of zero_below, each fixed value)."""
    from models.config import ConfigError, TrainConfig

    keys = sorted(set(TrainConfig.__dataclass_fields__) - set(SWEEP_FIXED))
    for section in ("params", "fixed"):
        for key, spec in space[section].items():
            where = f"{src}: {section}.{key}"
            if key in SWEEP_FIXED:
                raise SpaceError(
                    f"{where}: set by the sweep ({SWEEP_FIXED[key]}); remove it from the file"
                )
            if key not in keys:
                raise SpaceError(f"{where}: not a TrainConfig key; allowed: {', '.join(keys)}")
            for value in _values(spec) if section == "params" else [spec]:
                try:
                    TrainConfig.from_dict({key: value})
                except ConfigError as exc:
                    raise SpaceError(f"{where}: {exc}") from exc
    if "model" not in space["params"] and "model" not in space["fixed"]:
        raise SpaceError(
            f"{src}: no model: add params.model ({{choice: [...]}}) or fixed.model; models: "
            f"{', '.join(CASE_MODELS + BASELINE_MODELS)}"
        )


def _values(spec: Mapping[str, Any]) -> list[Any]:
    if "choice" in spec:
        return list(spec["choice"])
    kind = next(k for k in DISTRIBUTIONS if k in spec)
    return [*spec[kind], *([0.0] if "zero_below" in spec else [])]


def dump_space(name: str) -> str:
    """A named space as a YAML file to start from (`load_space_file` reads it back)."""
    space = get_space(name)
    head = (
        f"# case-tune search space {name!r}, written by `python -m search.spaces --dump {name}`.\n"
        "# Edit it, then: python -m search.run --space THIS_FILE.yaml\n"
        "# A parameter: one of choice: [values] | uniform: [lo, hi] | loguniform: [lo, hi] |\n"
        "# int: [lo, hi] (step: n); optional when: {earlier_param: value or [values]} and\n"
        "# zero_below: x (a float below x becomes 0.0). Keys are TrainConfig's\n"
        "# (models/config.py); fixed: values every trial gets. epochs and seed come from\n"
        "# the sweep (--final-epochs, --seed).\n"
    )
    body = yaml.dump(space, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)
    return head + body


def main(argv: list[str] | None = None) -> int:
    """`python -m search.spaces --dump NAME`: print a named space as a YAML file."""
    parser = argparse.ArgumentParser(
        prog="python -m search.spaces",
        description="Print a named search space as a YAML file for `search.run --space FILE`.",
    )
    parser.add_argument("--dump", required=True, metavar="NAME", help=", ".join(space_names()))
    args = parser.parse_args(argv)
    try:
        text = dump_space(args.dump)
    except SpaceError as exc:
        print(f"python -m search.spaces: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
