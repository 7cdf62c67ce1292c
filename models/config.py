"""`TrainConfig`: every knob of one training run, as one flat frozen dataclass.

Plain data comes in at the edge (`TrainConfig.from_dict`, from the CLI, a YAML/JSON file or a
search space), is validated once, and everything downstream trusts it. Defaults are the seed's
settings (reference/case-original.md), so `TrainConfig.from_dict({})` is the seed's run.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

MODEL_NAMES: tuple[str, ...] = (
    "case-compressing",
    "case-attention",
    "case-concat-compressing",
    "case-concat-attention",
    "concat",
    "mmm",
    "text-only",
    "speech-only",
)
UNIMODAL_MODELS = frozenset({"text-only", "speech-only"})

CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODEL_NAMES,
    "pooling": ("mean", "sum"),
    "schedule": ("none", "linear_warmup", "cosine"),
    "loss": ("ce", "focal"),
    "class_weights": ("none", "inverse", "inverse_sqrt"),
    "contrastive": ("none", "supervised", "infonce"),
}


class ConfigError(ValueError):
    """A configuration key is unknown or its value is not allowed. The message names the key."""


@dataclass(frozen=True)
class TrainConfig:
    model: str = "case-compressing"
    hidden: int = 256
    # None = the seed's dropout for the model (0.5 in the CASE/Concat/unimodal classifier,
    # 0.1 in MMM); a float overrides it everywhere in the head.
    dropout: float | None = None
    pooling: str = "mean"
    # True reproduces the seed's defects (padding in pooling, unmasked unscaled attention).
    faithful: bool = False
    # None = the store's max_frames; else frames are truncated / zero-padded to this many.
    audio_frames: int | None = None
    lr: float = 2e-5
    weight_decay: float = 0.0
    batch_size: int = 64
    schedule: str = "none"
    warmup_ratio: float = 0.1
    grad_clip: float = 0.0
    epochs: int = 150
    seed: int = 0
    loss: str = "ce"
    focal_gamma: float = 1.0
    class_weights: str = "none"
    label_smoothing: float = 0.0
    contrastive: str = "none"
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.05
    amp: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        """Validate plain data into a config. Unknown keys or bad values raise `ConfigError`."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; allowed keys are {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in d.items():
            values[key] = _check(key, value)
        cfg = cls(**values)
        _check_combinations(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


# -- per-key checks ----------------------------------------------------------------------
# (kind, lower bound, lower inclusive, upper bound, upper inclusive)
_NUMERIC: dict[str, tuple[str, float, bool, float, bool]] = {
    "hidden": ("int", 1, True, math.inf, False),
    "dropout": ("float", 0.0, True, 1.0, False),
    "audio_frames": ("int", 1, True, math.inf, False),
    "lr": ("float", 0.0, False, math.inf, False),
    "weight_decay": ("float", 0.0, True, math.inf, False),
    "batch_size": ("int", 1, True, math.inf, False),
    "warmup_ratio": ("float", 0.0, True, 1.0, True),
    "grad_clip": ("float", 0.0, True, math.inf, False),
    "epochs": ("int", 1, True, math.inf, False),
    "seed": ("int", 0, True, math.inf, False),
    "focal_gamma": ("float", 0.0, True, math.inf, False),
    "label_smoothing": ("float", 0.0, True, 1.0, False),
    "contrastive_weight": ("float", 0.0, True, math.inf, False),
    "contrastive_temperature": ("float", 0.0, False, math.inf, False),
}
_NULLABLE = {"dropout", "audio_frames"}
_BOOLS = {"faithful", "amp"}


def _check(key: str, value: Any) -> Any:
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(CHOICES[key])}")
        return str(value)
    if key in _BOOLS:
        # Only real booleans: the seed's `type=bool` flags turned "False" into True.
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: {value!r} is not a boolean (true/false)")
        return value
    if value is None and key in _NULLABLE:
        return None
    kind, lo, lo_inc, hi, hi_inc = _NUMERIC[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"config key {key!r}: {value!r} is not a number")
    if not math.isfinite(float(value)):
        raise ConfigError(f"config key {key!r}: {value!r} is not finite")
    if kind == "int":
        if isinstance(value, numbers.Integral) or float(value).is_integer():
            value = int(value)
        else:
            raise ConfigError(f"config key {key!r}: {value!r} is not an integer")
    else:
        value = float(value)
    ok_lo = value >= lo if lo_inc else value > lo
    ok_hi = value <= hi if hi_inc else value < hi
    if not (ok_lo and ok_hi):
        lb = "[" if lo_inc else "("
        ub = "]" if hi_inc else ")"
        raise ConfigError(f"config key {key!r}: {value!r} is outside {lb}{lo}, {hi}{ub}")
    return value


def _check_combinations(cfg: TrainConfig) -> None:
    if cfg.contrastive == "infonce" and cfg.model in UNIMODAL_MODELS:
        raise ConfigError(
            f"config key 'contrastive': 'infonce' aligns audio with text, but model "
            f"{cfg.model!r} sees one modality; use 'none' or 'supervised'"
        )
