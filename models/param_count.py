"""`python -m models.param_count`: trainable parameters of every registered head, as a
Markdown table beside the seed's published counts (a check mark when equal)."""

from __future__ import annotations

import argparse

from models.config import TrainConfig
from models.registry import SEED_PARAM_COUNTS, count_parameters, create_model, list_models

SEED_SIZES = {
    "text_dim": 768,
    "audio_dim": 1024,
    "hidden": 256,
    "max_tokens": 128,
    "max_frames": 512,
    "num_classes": 7,
}


def parameter_table(
    *,
    text_dim: int,
    audio_dim: int,
    hidden: int,
    max_tokens: int,
    max_frames: int,
    num_classes: int,
) -> list[tuple[str, int, int | None]]:
    """(name, trainable parameters, seed's count or None) for every registered model."""
    rows = []
    for name in list_models():
        model = create_model(
            name,
            text_dim=text_dim,
            audio_dim=audio_dim,
            max_tokens=max_tokens,
            max_frames=max_frames,
            num_classes=num_classes,
            config=TrainConfig(model=name, hidden=hidden),
        )
        at_seed_sizes = (text_dim, audio_dim, hidden, max_tokens, max_frames, num_classes) == (
            tuple(
                SEED_SIZES[k]
                for k in (
                    "text_dim",
                    "audio_dim",
                    "hidden",
                    "max_tokens",
                    "max_frames",
                    "num_classes",
                )
            )
        )
        rows.append(
            (name, count_parameters(model), SEED_PARAM_COUNTS.get(name) if at_seed_sizes else None)
        )
    return rows


def format_table(rows: list[tuple[str, int, int | None]]) -> str:
    lines = ["| model | trainable parameters | seed's count |", "|---|---:|---:|"]
    for name, n, seed in rows:
        mark = "" if seed is None else f"{seed:,}" + (" ✓" if seed == n else " ✗")
        lines.append(f"| {name} | {n:,} | {mark} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for key, default in SEED_SIZES.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=default)
    args = parser.parse_args(argv)
    print(format_table(parameter_table(**vars(args))))


if __name__ == "__main__":
    main()
