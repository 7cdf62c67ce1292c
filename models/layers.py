"""Building blocks shared by the heads: padding masks, pooling, attention, classifier."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class ModelOutput(NamedTuple):
    """What every head returns.

    logits [B, C]; fused [B, h] (the pooled vector the classifier sees, used by the supervised
    contrastive term); text_vec / audio_vec [B, h] (pooled projected text / audio, used by
    audio-text InfoNCE; None for a model without that modality).
    """

    logits: torch.Tensor
    fused: torch.Tensor
    text_vec: torch.Tensor | None
    audio_vec: torch.Tensor | None


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """Bool [B, size], True at real positions (index < length)."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def pool(x: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Pool [B, L, h] over L. mask None = every position counts (the seed's behaviour)."""
    if mask is None:
        return x.mean(dim=1) if how == "mean" else x.sum(dim=1)
    m = mask.unsqueeze(-1).to(x.dtype)
    total = (x * m).sum(dim=1)
    if how == "sum":
        return total
    return total / m.sum(dim=1).clamp_min(1.0)


def masked_mean_vec(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions, ignoring padding when a mask is given (for contrastive vectors)."""
    return pool(x, mask, "mean")


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Set padded positions of [B, L, h] to zero (no-op without a mask)."""
    return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


class Projected(NamedTuple):
    """Text [B, T, h] and audio [B, F, h] projected to the hidden size, with their length
    masks: where every head that sees both modalities starts."""

    text: torch.Tensor
    audio: torch.Tensor
    text_mask: torch.Tensor
    audio_mask: torch.Tensor

    def output(self, logits: torch.Tensor, fused: torch.Tensor) -> ModelOutput:
        """The head's output; its text / audio vectors are the masked means of the
        projections (what audio-text InfoNCE compares)."""
        return ModelOutput(
            logits,
            fused,
            masked_mean_vec(self.text, self.text_mask),
            masked_mean_vec(self.audio, self.audio_mask),
        )


def project(
    batch: dict[str, torch.Tensor],
    text_proj: nn.Module,
    audio_proj: nn.Module,
    audio: torch.Tensor | None = None,
) -> Projected:
    """Masks, then projections, of ``batch``'s text and audio (``audio``: the batch's audio
    as the head already cut it, e.g. by :func:`batch_longest`)."""
    text = batch["text"]
    audio = batch["audio"] if audio is None else audio
    tmask = length_mask(batch["text_len"], text.shape[1])
    amask = length_mask(batch["audio_len"], audio.shape[1])
    return Projected(text_proj(text), audio_proj(audio), tmask, amask)


def batch_longest(batch: dict[str, torch.Tensor], name: str = "audio") -> torch.Tensor:
    """``batch[name]`` ([B, L, d]) with its position axis cut to the batch's longest true length.

    This is the seed's padding of audio frames (``pad_sequence``: zeros to the batch's longest
    utterance), given frames that the store zero-padded to a fixed width. The loader usually
    cut the batch already (models' ``trim``) and says so in ``batch.cut``, from lengths the host
    knows; otherwise (a caller that padded wider) the lengths are read from the device.
    """
    x = batch[name]
    if name in getattr(batch, "cut", ()):
        return x
    return x[:, : int(batch[f"{name}_len"].max())]


def text_to_audio_attention(
    q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None, scaled: bool
) -> torch.Tensor:
    """Dot-product attention of text queries over audio keys = values, no parameters.

    The seed uses no 1/sqrt(d) scale and no key padding mask (scaled=False, key_mask=None).
    """
    scores = torch.matmul(q, kv.transpose(1, 2))
    if scaled:
        scores = scores / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
    return torch.matmul(scores.softmax(dim=-1), kv)


class Classifier(nn.Sequential):
    """The seed's head: Dropout -> Linear(d_in, h) -> GELU -> Dropout -> Linear(h, C)."""

    def __init__(self, d_in: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__(
            nn.Dropout(dropout),
            nn.Linear(d_in, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, hidden): the same logits as ``self(x)``, and the [B, h] activation after
        the GELU, a representation with trainable weights under it (the unimodal heads give
        it as their pooled vector, for the supervised contrastive term)."""
        drop_in, linear_in, act, drop_out, linear_out = self
        hidden = act(linear_in(drop_in(x)))
        return linear_out(drop_out(hidden)), hidden
