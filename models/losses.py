"""Training objective: classification (cross-entropy or focal) + weight x contrastive term.

Contrastive terms are computed on tensors end to end, so unlike the seed's "contrastive set"
(rebuilt from Python floats) they carry gradient into the model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.config import TrainConfig
from models.layers import ModelOutput


def class_weights(labels: np.ndarray, num_classes: int, kind: str) -> torch.Tensor | None:
    """Per-class weights from the training split's labels, or None for kind 'none'.

    inverse: 1/n_c; inverse_sqrt: 1/sqrt(n_c). Classes absent from training get weight 0
    (they never occur as a training target). Normalised so that the average weight over the
    training rows is 1 (sum_c n_c w_c = N): the loss keeps the scale of the unweighted one.
    """
    if kind == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    counts = counts.astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    if kind == "inverse":
        w[present] = 1.0 / counts[present]
    elif kind == "inverse_sqrt":
        w[present] = 1.0 / np.sqrt(counts[present])
    else:
        raise ValueError(f"unknown class weighting {kind!r}")
    w *= counts.sum() / float((counts * w).sum())
    return torch.tensor(w, dtype=torch.float32)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss -(1 - p_t)^gamma * CE, with the same weighting and smoothing rules as
    `F.cross_entropy` (weighted mean over the batch; smoothing in the CE part)."""
    logits = logits.float()
    # Per-row weighted CE exactly as F.cross_entropy computes it (with smoothing, the smoothed
    # part is weighted per class), then the focal factor, then F.cross_entropy's weighted mean.
    ce = F.cross_entropy(
        logits, target, weight=weight, reduction="none", label_smoothing=label_smoothing
    )
    p_t = F.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1).exp()
    loss = (1.0 - p_t).clamp_min(0.0).pow(gamma) * ce
    if weight is None:
        return loss.mean()
    return loss.sum() / weight[target].sum().clamp_min(1e-12)


def fp32_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y.T`` in fp32 even under autocast: ``.float()`` on the inputs does not stop
    autocast from running the matmul in bf16/fp16, whose ~3 significant digits, divided by a
    temperature of 0.05-0.07, would move the logits by whole units."""
    kind = x.device.type
    if not torch.amp.is_autocast_available(kind):  # e.g. "meta": nothing to turn off
        return x.float() @ y.float().T
    with torch.autocast(device_type=kind, enabled=False):
        return x.float() @ y.float().T


def supervised_pairwise_loss(
    vectors: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The seed's "same emotion" objective, with gradient: cosine similarity of every pair of
    pooled vectors / temperature as a logit, BCE against 1[same label], off-diagonal pairs
    only, averaged. A batch of one has no pair and gives 0 (still attached to the graph)."""
    z = F.normalize(vectors.float(), dim=-1)
    logits = fp32_similarity(z, z) / temperature
    same = (target.unsqueeze(0) == target.unsqueeze(1)).float()
    if len(target) < 2:
        return logits.sum() * 0.0
    off = off_diagonal(len(target), target.device)
    return F.binary_cross_entropy_with_logits(logits.flatten()[off], same.flatten()[off])


def off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    """Flat positions of an n x n matrix's off-diagonal entries, row by row: what a boolean
    mask ``~eye(n)`` selects, in the same order, without the device-to-host read of its count
    that boolean indexing costs on CUDA."""
    k = torch.arange(n * (n - 1), device=device)
    row, col = k // (n - 1), k % (n - 1)
    return row * n + col + (col >= row)


def infonce_loss(
    text_vec: torch.Tensor, audio_vec: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric audio-text InfoNCE: the audio of an utterance should be closest to its own
    text among the batch's texts, and vice versa (CLIP-style cross-entropy both ways)."""
    t = F.normalize(text_vec.float(), dim=-1)
    a = F.normalize(audio_vec.float(), dim=-1)
    logits = fp32_similarity(t, a) / temperature
    labels = torch.arange(len(t), device=t.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class Objective:
    """The configured loss: classification + contrastive_weight x contrastive."""

    def __init__(self, config: TrainConfig, weight: torch.Tensor | None = None) -> None:
        self.config = config
        self.weight = weight

    def to(self, device: torch.device | str) -> Objective:
        if self.weight is not None:
            self.weight = self.weight.to(device)
        return self

    def classification(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.loss == "focal":
            return focal_loss(
                logits,
                target,
                gamma=c.focal_gamma,
                weight=self.weight,
                label_smoothing=c.label_smoothing,
            )
        return F.cross_entropy(
            logits.float(), target, weight=self.weight, label_smoothing=c.label_smoothing
        )

    def contrastive(self, out: ModelOutput, target: torch.Tensor) -> torch.Tensor | None:
        c = self.config
        if c.contrastive == "supervised":
            return supervised_pairwise_loss(out.fused, target, c.contrastive_temperature)
        if c.contrastive == "infonce":
            if out.text_vec is None or out.audio_vec is None:
                raise ValueError("infonce needs a model with both text and audio")
            return infonce_loss(out.text_vec, out.audio_vec, c.contrastive_temperature)
        return None

    def __call__(self, out: ModelOutput, target: torch.Tensor) -> torch.Tensor:
        loss = self.classification(out.logits, target)
        extra = self.contrastive(out, target)
        if extra is not None and self.config.contrastive_weight > 0:
            loss = loss + self.config.contrastive_weight * extra
        return loss
