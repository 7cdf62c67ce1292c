"""The seed's baselines: Concat, MMM (multimodal MLP-Mixer), text-only and speech-only.

As in models/case.py, `faithful=True` computes what the seed's code computes: pooling over
padding (the text's [PAD] states, zero audio frames), always a mean where the seed means.
The default masks padding; otherwise each head has the same layers and parameters in both
modes (reference/case-original.md gives the seed's computations and counts).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import (
    Classifier,
    ModelOutput,
    batch_longest,
    length_mask,
    masked_mean_vec,
    pool,
    project,
    zero_padding,
)


class Concat(nn.Module):
    """Projected text (T) and audio (F) concatenated along the sequence -> Linear(h,h) ->
    LayerNorm -> pool -> classifier. 196,864 + 262,400 + 65,792 + 512 + 67,591 = 593,159
    parameters at the seed's sizes. Faithful: the mean over all T + F positions (the seed
    always means here, whatever its pooling option)."""

    uses = frozenset({"text", "audio"})

    def __init__(
        self,
        *,
        text_dim,
        audio_dim,
        max_tokens,
        max_frames,
        num_classes,
        hidden,
        dropout,
        pooling,
        faithful,
    ) -> None:
        super().__init__()
        self.pooling, self.faithful = "mean" if faithful else pooling, faithful
        self.text_proj = nn.Linear(text_dim, hidden)
        self.audio_proj = nn.Linear(audio_dim, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = Classifier(hidden, hidden, num_classes, dropout)
        self.trim = frozenset() if faithful else {"text", "audio"}

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        p = project(batch, self.text_proj, self.audio_proj)
        x = self.norm(self.mix(torch.cat([p.text, p.audio], dim=1)))
        mask = None if self.faithful else torch.cat([p.text_mask, p.audio_mask], dim=1)
        fused = pool(x, mask, self.pooling)
        return p.output(self.classifier(fused), fused)


class _MLP(nn.Sequential):
    """The seed's mixer MLP: Linear -> GELU -> Linear -> Dropout (one dropout, at the end)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.Dropout(dropout))


class MMM(nn.Module):
    """Multimodal MLP-Mixer: projected text and audio concatenated to L = T + F positions, one
    mixer block in the seed's order, a second LayerNorm, pool, then Dropout -> Linear(h, 2h)
    -> GELU -> Dropout -> Linear(2h, C).

    The block, with ``norm`` one LayerNorm module used twice:
    ``y = norm(x); y = token_mlp(y) over positions; x = x + y; y = norm(y);
    y = channel_mlp(y); out = y + x``. The channel MLP thus sees the normalised token-mixed
    ``y``, not the residual sum (unlike the Mixer paper); with no evidence that the paper's
    order does better on these heads, there is one MMM, the seed's.
    1,547,527 parameters at the seed's sizes: 459,264 (projections) + 820,480 (token MLP
    640->640->640) + 131,584 (channel MLP h->h->h) + 1,024 (two LayerNorms) + 135,175 (head,
    2h = 512).

    With masks, padded positions of the token MLP's input are zeroed (after the LayerNorm,
    which maps a zero row to its bias), so no real position mixes in padding; everything after
    works per position, and pooling skips padding. Faithful: the mean over all L positions.
    """

    uses = frozenset({"text", "audio"})

    def __init__(
        self,
        *,
        text_dim,
        audio_dim,
        max_tokens,
        max_frames,
        num_classes,
        hidden,
        dropout,
        pooling,
        faithful,
    ) -> None:
        super().__init__()
        self.pooling, self.faithful = "mean" if faithful else pooling, faithful
        self.text_proj = nn.Linear(text_dim, hidden)
        self.audio_proj = nn.Linear(audio_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.token_mlp = _MLP(max_tokens + max_frames, dropout)
        self.channel_mlp = _MLP(hidden, dropout)
        self.out_norm = nn.LayerNorm(hidden)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, 2 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, num_classes),
        )
        self.trim = frozenset()  # token mixing needs every absolute position

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        p = project(batch, self.text_proj, self.audio_proj)
        mask = None if self.faithful else torch.cat([p.text_mask, p.audio_mask], dim=1)
        x = torch.cat([p.text, p.audio], dim=1)
        y = zero_padding(self.norm(x), mask)
        y = self.token_mlp(y.transpose(1, 2)).transpose(1, 2)
        x = x + y
        y = self.channel_mlp(self.norm(y))
        fused = pool(self.out_norm(y + x), mask, self.pooling)
        return p.output(self.head(fused), fused)


class TextOnly(nn.Module):
    """The seed's classifier straight on a text vector: Dropout -> Linear(text_dim, h) -> GELU
    -> Dropout -> Linear(h, C). 196,864 + 1,799 = 198,663 parameters at the seed's sizes, in
    both modes.

    The text vector is the encoder's pooled output with `faithful=True` (the seed's choice),
    and the masked mean of the token states by default. Why the default differs: an untuned
    pooler (a dense layer + tanh over [CLS], trained only for next-sentence prediction) is a
    known weak sentence vector on frozen features, and a randomly initialised one, as in the
    demo's tiny BERT, is almost constant across utterances (about 0.001 spread per
    dimension), so a text-only baseline built on it stays at all-neutral and says nothing
    about the text. ``fused`` is the classifier's hidden activation (the pooled vector has no
    trainable weights under it).
    """

    def __init__(
        self,
        *,
        text_dim,
        audio_dim,
        max_tokens,
        max_frames,
        num_classes,
        hidden,
        dropout,
        pooling,
        faithful,
    ) -> None:
        super().__init__()
        self.faithful = faithful
        self.uses = frozenset({"text_pooled"}) if faithful else frozenset({"text"})
        self.trim = frozenset() if faithful else frozenset({"text"})
        self.classifier = Classifier(text_dim, hidden, num_classes, dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        if self.faithful:
            x = batch["text_pooled"]
        else:
            text = batch["text"]
            x = masked_mean_vec(text, length_mask(batch["text_len"], text.shape[1]))
        logits, v = self.classifier.with_hidden(x)
        return ModelOutput(logits, v, v, None)


class SpeechOnly(nn.Module):
    """Pooled audio frames -> Dropout -> the seed's classifier (Dropout -> Linear(audio_dim, h)
    -> GELU -> Dropout -> Linear(h, C)): two dropouts in a row, as in the seed.
    262,400 + 1,799 = 264,199 parameters at the seed's sizes, in both modes.

    Faithful: the mean over the frames padded with zeros to the batch's longest utterance (the
    seed's ``pad_sequence`` then ``mean``), so a short utterance's mean is diluted by the
    batch's padding. Default: the mean (or sum) over its true frames. ``fused`` is the
    classifier's hidden activation (the pooled vector has no trainable weights under it).
    """

    uses = frozenset({"audio"})

    def __init__(
        self,
        *,
        text_dim,
        audio_dim,
        max_tokens,
        max_frames,
        num_classes,
        hidden,
        dropout,
        pooling,
        faithful,
    ) -> None:
        super().__init__()
        self.pooling, self.faithful = "mean" if faithful else pooling, faithful
        self.dropout = nn.Dropout(dropout)
        self.classifier = Classifier(audio_dim, hidden, num_classes, dropout)
        # Both modes cut the batch to its longest utterance: the seed's padding when
        # faithful, and no output change with masks.
        self.trim = frozenset({"audio"})

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        audio, lengths = batch["audio"], batch["audio_len"]
        if self.faithful:
            pooled = pool(batch_longest(batch), None, "mean")
        else:
            pooled = pool(audio, length_mask(lengths, audio.shape[1]), self.pooling)
        logits, v = self.classifier.with_hidden(self.dropout(pooled))
        return ModelOutput(logits, v, None, v)
