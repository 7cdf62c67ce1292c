"""What `faithful=True` cannot reproduce of the seed, in one place.

Faithful heads compute what the seed's code computes on the same inputs (tests/test_faithful.py
checks each against an independent reference). The inputs are where cached features must
differ from the seed's pipeline; README and finalize's report (search/final_report.py) show
this list as it is here.
"""

from __future__ import annotations

NOT_REPRODUCIBLE: tuple[str, ...] = (
    "The seed trains with its frozen BERT left in train mode, so BERT's dropout is active and "
    "the text states change at every step; cached features are the eval-mode states.",
    "Frames past the store's limit (512): the seed's attention heads attend over, and its "
    "speech-only head averages, every frame of the batch's longest utterance; the store keeps "
    "the first 512.",
    "Context of long utterances: the seed encodes whole utterances with wav2vec2 and then cuts "
    "frames; the store encodes only the audio that gives the first 512 frames.",
)


def not_reproducible_markdown() -> str:
    """The list as Markdown bullets (one line each)."""
    return "\n".join(f"- {item}" for item in NOT_REPRODUCIBLE)
