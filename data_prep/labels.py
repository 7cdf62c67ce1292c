"""The seven emotion classes of KEMDy20, in one fixed order (neutral first)."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("neutral", "happy", "surprise", "angry", "sad", "disgust", "fear")
NEUTRAL = "neutral"
NEUTRAL_INDEX = 0
LABEL_TO_ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# KEMDy20 spells disgust "disqust"; both spellings are one class.
_ALIASES = {"disqust": "disgust"}


def canonical_label(raw: str) -> str | None:
    """Return the canonical class name for a raw label cell, or None if it is unknown."""
    name = raw.strip().lower()
    name = _ALIASES.get(name, name)
    return name if name in LABEL_TO_ID else None
