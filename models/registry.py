"""One registry of heads, timm-style: `create_model(name, ...)` and `list_models()`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from models.baselines import MMM, Concat, SpeechOnly, TextOnly
from models.case import CASE
from models.config import MODEL_NAMES, ConfigError, TrainConfig

# The seed's dropout per head when the config leaves it None.
SEED_DROPOUT = {"mmm": 0.1}
DEFAULT_DROPOUT = 0.5

# Trainable parameters of the seed's heads (reference/case-original.md), at text 768 x 128,
# audio 1024 x 512, hidden 256, 7 classes. Concatenating instead of adding adds no weights;
# concat's count is the seed's trainable head, without its unused masked-LM head.
SEED_PARAM_COUNTS = {
    "case-compressing": 593_031,
    "case-attention": 527_367,
    "case-concat-compressing": 593_031,
    "case-concat-attention": 527_367,
    "concat": 593_159,
    "mmm": 1_547_527,
    "text-only": 198_663,
    "speech-only": 264_199,
}

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "case-compressing": partial(CASE, alignment="compressing", fusion="add"),
    "case-attention": partial(CASE, alignment="attention", fusion="add"),
    "case-concat-compressing": partial(CASE, alignment="compressing", fusion="concat"),
    "case-concat-attention": partial(CASE, alignment="attention", fusion="concat"),
    "concat": Concat,
    "mmm": MMM,
    "text-only": TextOnly,
    "speech-only": SpeechOnly,
}
assert tuple(MODELS) == MODEL_NAMES, "models/config.py MODEL_NAMES and MODELS must agree"
assert tuple(SEED_PARAM_COUNTS) == MODEL_NAMES, "every head has the seed's count"


def list_models() -> list[str]:
    return list(MODELS)


def create_model(
    name: str,
    *,
    text_dim: int,
    audio_dim: int,
    max_tokens: int,
    max_frames: int,
    num_classes: int,
    config: TrainConfig | None = None,
) -> nn.Module:
    """Build head ``name``. Sizes come from the store; hidden, dropout, pooling, faithful and
    audio_frames from ``config`` (defaults when None). ``max_frames`` is the store's:
    ``config.audio_frames``, when set, replaces it (the training data is cut/padded to match).
    """
    if name not in MODELS:
        raise ConfigError(f"config key 'model': {name!r} is not one of {list_models()}")
    cfg = config or TrainConfig(model=name)
    dropout = cfg.dropout if cfg.dropout is not None else SEED_DROPOUT.get(name, DEFAULT_DROPOUT)
    return MODELS[name](
        text_dim=text_dim,
        audio_dim=audio_dim,
        max_tokens=max_tokens,
        max_frames=cfg.audio_frames or max_frames,
        num_classes=num_classes,
        hidden=cfg.hidden,
        dropout=dropout,
        pooling=cfg.pooling,
        faithful=cfg.faithful,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
