"""The CASE heads: text and audio projected to h, audio aligned onto the text positions
(compressing or attention), fused by add or concat, LayerNorm, pooled, classified.

`faithful=True` is the seed: pooling over every position (the text's [PAD] positions
included, whose encoder states the store keeps), and attention with no 1/sqrt(d) scale and no
key padding mask over the audio frames padded with zeros to the batch's longest utterance
(the seed's ``pad_sequence``; padded frames are projected like real ones, so they enter as the
projection's bias). The default fixes both: pooling over true positions (text_len /
audio_len), scaled attention with a key padding mask, and for compressing alignment the
projected audio of padded frames is zeroed before the learnable Linear(max_frames ->
max_tokens) along time, so padding cannot leak into aligned positions. Compression stays tied
to absolute frame positions (it is the idea of the model), zero-padded to max_frames as in the
seed.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import (
    Classifier,
    ModelOutput,
    batch_longest,
    pool,
    project,
    text_to_audio_attention,
    zero_padding,
)


class CASE(nn.Module):
    """One class for the four CASE variants (alignment x fusion).

    Parameters at text 768 x 128, audio 1024 x 512, h 256, 7 classes:
    Linear(768,h) 196,864 + Linear(1024,h) 262,400 + [compressing: Linear(512,128) 65,664]
    + LayerNorm(h) 512 + classifier 67,591 = 593,031 (compressing) / 527,367 (attention);
    concatenating instead of adding adds no parameters.
    """

    uses = frozenset({"text", "audio"})

    def __init__(
        self,
        *,
        text_dim: int,
        audio_dim: int,
        max_tokens: int,
        max_frames: int,
        num_classes: int,
        hidden: int,
        dropout: float,
        pooling: str,
        faithful: bool,
        alignment: str,
        fusion: str,
    ) -> None:
        super().__init__()
        if alignment not in ("compressing", "attention") or fusion not in ("add", "concat"):
            raise ValueError(f"unknown CASE variant alignment={alignment!r} fusion={fusion!r}")
        self.alignment, self.fusion = alignment, fusion
        self.pooling, self.faithful = pooling, faithful
        self.max_tokens, self.max_frames = max_tokens, max_frames
        self.text_proj = nn.Linear(text_dim, hidden)
        self.audio_proj = nn.Linear(audio_dim, hidden)
        if alignment == "compressing":
            self.compress = nn.Linear(max_frames, max_tokens)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = Classifier(hidden, hidden, num_classes, dropout)
        # Axes whose padding may be cut per batch: with masks, both (compressing needs every
        # frame and token position for its fixed-size time Linear); faithful attention, the
        # audio, which the seed pads to the batch's longest utterance (see forward).
        if alignment == "compressing":
            self.trim = frozenset()
        else:
            self.trim = frozenset({"audio"} if faithful else {"text", "audio"})

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        audio = batch["audio"]
        if self.faithful and self.alignment == "attention":
            audio = batch_longest(batch)
        p = project(batch, self.text_proj, self.audio_proj, audio)
        t, a, tmask, amask = p
        pool_tmask = None if self.faithful else tmask
        if self.alignment == "compressing":
            src = a if self.faithful else zero_padding(a, amask)
            aligned = self.compress(src.transpose(1, 2)).transpose(1, 2)
            # Every aligned position is a mix of real frames: none of them is padding.
            aligned_mask = torch.ones_like(tmask)
        else:
            aligned = text_to_audio_attention(
                t, a, None if self.faithful else amask, scaled=not self.faithful
            )
            # Aligned position i is the query of token i: padding where token i is.
            aligned_mask = tmask
        if self.fusion == "add":
            x, mask = t + aligned, pool_tmask
        else:
            x = torch.cat([t, aligned], dim=1)
            mask = None if self.faithful else torch.cat([tmask, aligned_mask], dim=1)
        fused = pool(self.norm(x), mask, self.pooling)
        return p.output(self.classifier(fused), fused)
