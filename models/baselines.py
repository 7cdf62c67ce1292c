"""The seed's baselines: Concat, MMM (multimodal MLP-Mixer), text-only and speech-only.

As in models/case.py, `faithful=True` pools over padding like the seed; the default masks it.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import Classifier, ModelOutput, length_mask, masked_mean_vec, pool, zero_padding


class Concat(nn.Module):
    """Projected text (T) and audio (F) concatenated along the sequence -> Linear(h,h) ->
    LayerNorm -> pool -> classifier. 196,864 + 262,400 + 65,792 + 512 + 67,591 = 593,159
    parameters at the seed's sizes."""

    uses = frozenset({"text", "audio"})

    def __init__(self, *, text_dim, audio_dim, max_tokens, max_frames, num_classes, hidden,
                 dropout, pooling, faithful) -> None:  # fmt: skip
        super().__init__()
        self.pooling, self.faithful = pooling, faithful
        self.text_proj = nn.Linear(text_dim, hidden)
        self.audio_proj = nn.Linear(audio_dim, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = Classifier(hidden, hidden, num_classes, dropout)
        self.trim = frozenset() if faithful else {"text", "audio"}

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        text, audio = batch["text"], batch["audio"]
        tmask = length_mask(batch["text_len"], text.shape[1])
        amask = length_mask(batch["audio_len"], audio.shape[1])
        t, a = self.text_proj(text), self.audio_proj(audio)
        x = self.norm(self.mix(torch.cat([t, a], dim=1)))
        mask = None if self.faithful else torch.cat([tmask, amask], dim=1)
        fused = pool(x, mask, self.pooling)
        return ModelOutput(self.classifier(fused), fused, masked_mean_vec(t, tmask),
                           masked_mean_vec(a, amask))  # fmt: skip


class _MLP(nn.Sequential):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim),
            nn.Dropout(dropout),
        )  # fmt: skip


class MMM(nn.Module):
    """Multimodal MLP-Mixer: projected text and audio concatenated to L = T + F tokens, one
    mixer block, pool, then Dropout -> Linear(h, 2h) -> GELU -> Dropout -> Linear(2h, C).

    The seed's count (1,547,527) fixes the block's norms at two LayerNorm(h): 459,264
    (projections) + 820,480 (token MLP 640->640->640) + 131,584 (channel MLP h->h->h)
    + 1,024 (two LayerNorms) + 135,175 (head, 2h = 512). They sit after each residual
    (post-norm), the second being the "LayerNorm before mean". Post-norm also keeps masking
    simple: with masks, padded positions are zeroed before token mixing, so no real position
    mixes in padding; the channel MLP works per position and pooling skips padding.
    """

    uses = frozenset({"text", "audio"})

    def __init__(self, *, text_dim, audio_dim, max_tokens, max_frames, num_classes, hidden,
                 dropout, pooling, faithful) -> None:  # fmt: skip
        super().__init__()
        self.pooling, self.faithful = pooling, faithful
        self.text_proj = nn.Linear(text_dim, hidden)
        self.audio_proj = nn.Linear(audio_dim, hidden)
        self.token_mlp = _MLP(max_tokens + max_frames, dropout)
        self.token_norm = nn.LayerNorm(hidden)
        self.channel_mlp = _MLP(hidden, dropout)
        self.channel_norm = nn.LayerNorm(hidden)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(2 * hidden, num_classes),
        )  # fmt: skip
        self.trim = frozenset()  # token mixing needs every absolute position

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        text, audio = batch["text"], batch["audio"]
        tmask = length_mask(batch["text_len"], text.shape[1])
        amask = length_mask(batch["audio_len"], audio.shape[1])
        t, a = self.text_proj(text), self.audio_proj(audio)
        mask = None if self.faithful else torch.cat([tmask, amask], dim=1)
        x = zero_padding(torch.cat([t, a], dim=1), mask)
        x = self.token_norm(x + self.token_mlp(x.transpose(1, 2)).transpose(1, 2))
        x = self.channel_norm(x + self.channel_mlp(x))
        fused = pool(x, mask, self.pooling)
        return ModelOutput(self.head(fused), fused, masked_mean_vec(t, tmask),
                           masked_mean_vec(a, amask))  # fmt: skip


class TextOnly(nn.Module):
    """Text vector -> Linear(text_dim, h) -> classifier. 196,864 + 67,591 = 264,455
    parameters at the seed's sizes, in both modes.

    The text vector is the masked mean of the token features by default, and the encoder's
    pooled output only with `faithful=True` (the seed's choice). An untuned pooler (a dense
    layer + tanh over [CLS], trained only for next-sentence prediction) is a known weak
    sentence vector on frozen features, and a randomly initialised one, as in the demo's tiny
    BERT, is almost constant across utterances (about 0.001 spread per dimension), so a
    text-only baseline built on it stays at all-neutral and says nothing about the text.
    """

    trim = frozenset()

    def __init__(self, *, text_dim, audio_dim, max_tokens, max_frames, num_classes, hidden,
                 dropout, pooling, faithful) -> None:  # fmt: skip
        super().__init__()
        self.faithful = faithful
        self.uses = frozenset({"text_pooled"}) if faithful else frozenset({"text"})
        self.trim = frozenset() if faithful else frozenset({"text"})
        self.proj = nn.Linear(text_dim, hidden)
        self.classifier = Classifier(hidden, hidden, num_classes, dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        if self.faithful:
            x = batch["text_pooled"]
        else:
            text = batch["text"]
            x = masked_mean_vec(text, length_mask(batch["text_len"], text.shape[1]))
        v = self.proj(x)
        return ModelOutput(self.classifier(v), v, v, None)


class SpeechOnly(nn.Module):
    """Mean (or sum) of audio frames -> Linear(audio_dim, h) -> classifier.
    262,400 + 67,591 = 329,991 parameters at the seed's sizes. For the mean, pooling before
    the projection equals projecting then pooling (it is affine) and costs F times less."""

    uses = frozenset({"audio"})

    def __init__(self, *, text_dim, audio_dim, max_tokens, max_frames, num_classes, hidden,
                 dropout, pooling, faithful) -> None:  # fmt: skip
        super().__init__()
        self.pooling, self.faithful = pooling, faithful
        self.proj = nn.Linear(audio_dim, hidden)
        self.classifier = Classifier(hidden, hidden, num_classes, dropout)
        self.trim = frozenset() if faithful else {"audio"}

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        audio = batch["audio"]
        amask = None if self.faithful else length_mask(batch["audio_len"], audio.shape[1])
        v = self.proj(pool(audio, amask, self.pooling))
        return ModelOutput(self.classifier(v), v, None, v)
