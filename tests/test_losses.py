"""Losses: class weights, focal, label smoothing, and contrastive terms that carry gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import TrainConfig
from models.losses import (
    Objective,
    class_weights,
    focal_loss,
    infonce_loss,
    supervised_pairwise_loss,
)
from models.registry import create_model
from tests.model_helpers import (
    SMALL,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    random_batch,
)


def test_class_weights_inverse_and_sqrt() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    assert class_weights(labels, 4, "none") is None
    w = class_weights(labels, 4, "inverse").numpy()
    # proportional to 1/n_c, class 3 absent -> 0, average weight over rows = 1
    np.testing.assert_allclose(w[:3] / w[0], [1, 2, 6], rtol=1e-6)
    assert w[3] == 0
    assert math.isclose(float((w[labels]).mean()), 1.0, rel_tol=1e-6)
    s = class_weights(labels, 4, "inverse_sqrt").numpy()
    np.testing.assert_allclose(s[:3] / s[0], [1, math.sqrt(2), math.sqrt(6)], rtol=1e-6)
    assert math.isclose(float((s[labels]).mean()), 1.0, rel_tol=1e-6)


def test_focal_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(9, 7), torch.randint(0, 7, (9,))
    w = torch.rand(7) + 0.1
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)
    )
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0, weight=w, label_smoothing=0.1),
        F.cross_entropy(logits, target, weight=w, label_smoothing=0.1),
    )


def test_focal_downweights_easy_rows() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, -1)[:, 0]
    expected = ((1 - p) ** 2 * ce).mean()
    torch.testing.assert_close(focal_loss(logits, target, gamma=2.0), expected)


def test_supervised_pairwise_matches_reference() -> None:
    torch.manual_seed(0)
    v, y = torch.randn(6, 5), torch.tensor([0, 1, 0, 2, 1, 0])
    got = supervised_pairwise_loss(v, y, 0.05)
    z = F.normalize(v, dim=-1)
    terms = []
    for i in range(6):  # the loop is the reference only
        for j in range(6):
            if i != j:
                s = float(z[i] @ z[j]) / 0.05
                same = float(y[i] == y[j])
                terms.append(
                    F.binary_cross_entropy_with_logits(torch.tensor(s), torch.tensor(same))
                )
    torch.testing.assert_close(got, torch.stack(terms).mean())


def test_infonce_matches_reference_and_rewards_alignment() -> None:
    torch.manual_seed(0)
    t, a = torch.randn(4, 6), torch.randn(4, 6)
    logits = F.normalize(t, dim=-1) @ F.normalize(a, dim=-1).T / 0.1
    ref = 0.5 * (
        F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))
    )
    torch.testing.assert_close(infonce_loss(t, a, 0.1), ref)
    assert infonce_loss(t, t, 0.1) < infonce_loss(t, a, 0.1)


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("case-compressing", "supervised"),
        ("case-attention", "infonce"),
        ("mmm", "infonce"),
        ("text-only", "supervised"),
        ("concat", "supervised"),
    ],
)
def test_contrastive_term_alone_carries_gradient(model: str, kind: str) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({"model": model, "hidden": 8, "contrastive": kind})
    net = create_model(model, config=cfg, **SMALL)
    out = net(random_batch(6, **SMALL))
    target = torch.tensor([0, 1, 0, 1, 2, 2])
    term = Objective(cfg).contrastive(out, target)
    assert term is not None and term.requires_grad
    term.backward()
    touched = [
        n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    ]
    # the projections (and, for the supervised term, the fusion layers) get gradient;
    # text-only has no projection: its pooled vector is the classifier's hidden activation
    first = "classifier.1.weight" if model == "text-only" else "proj"
    assert any(first in n for n in touched), touched


def test_total_is_classification_plus_weighted_contrastive() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict(
        {
            "model": "case-attention",
            "hidden": 8,
            "contrastive": "infonce",
            "contrastive_weight": 0.3,
        }
    )
    net = create_model("case-attention", config=cfg, **SMALL).eval()
    out = net(random_batch(5, **SMALL))
    y = torch.tensor([0, 1, 2, 3, 4])
    obj = Objective(cfg)
    expected = obj.classification(out.logits, y) + 0.3 * obj.contrastive(out, y)
    torch.testing.assert_close(obj(out, y), expected)


def test_batch_of_one() -> None:
    v = torch.randn(1, 4, requires_grad=True)
    y = torch.tensor([3])
    loss = supervised_pairwise_loss(v, y, 0.05)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(infonce_loss(v, v * 2, 0.05))
    cfg = TrainConfig.from_dict({"loss": "focal", "focal_gamma": 2.0, "class_weights": "inverse"})
    obj = Objective(cfg, class_weights(np.array([3, 3, 1]), 7, "inverse"))
    assert torch.isfinite(obj.classification(torch.randn(1, 7), y))


@pytest.mark.parametrize("kind", ["pairwise", "infonce"])
def test_contrastive_similarity_stays_fp32_under_autocast(kind: str) -> None:
    """Under CPU bf16 autocast the contrastive losses equal their fp32 values (a bf16 matmul
    of the normalised vectors, / 0.05, moves them by far more than 1e-5)."""
    from models.losses import fp32_similarity, infonce_loss, supervised_pairwise_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    target = torch.randint(0, 4, (16,), generator=g)

    def loss() -> torch.Tensor:
        if kind == "pairwise":
            return supervised_pairwise_loss(a, target, 0.05)
        return infonce_loss(a, b, 0.05)

    exact = loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss()
        sim = fp32_similarity(a, b)
        naive = a.float() @ b.float().T  # what the loss computed before
    assert sim.dtype == torch.float32 and naive.dtype == torch.bfloat16
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, rtol=0, atol=1e-6)
