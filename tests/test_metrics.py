"""Metrics against scikit-learn (labels = all classes, zero_division = 0 is the reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score, roc_auc_score

from data_prep.labels import LABELS
from models.metrics import (
    all_neutral_metrics,
    classification_metrics,
    confusion_matrix,
    macro_auroc,
)


def _sk(pred, target, average):
    return f1_score(target, pred, labels=list(range(7)), average=average, zero_division=0)


@pytest.mark.parametrize("seed", range(6))
def test_every_figure_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    # Restrict some draws to a few classes so classes go missing from pred, target or both.
    classes = rng.choice(7, size=int(rng.integers(2, 8)), replace=False)
    target = rng.choice(classes, size=n)
    pred = np.where(rng.random(n) < 0.5, target, rng.choice(classes, size=n))
    m = classification_metrics(torch.from_numpy(pred), torch.from_numpy(target), "val")
    assert m["val_macro_f1"] == pytest.approx(_sk(pred, target, "macro"), abs=1e-6)
    assert m["val_weighted_f1"] == pytest.approx(_sk(pred, target, "weighted"), abs=1e-6)
    assert m["val_micro_f1"] == pytest.approx(float((pred == target).mean()), abs=1e-6)
    assert m["val_micro_f1"] == pytest.approx(_sk(pred, target, "micro"), abs=1e-6)
    for name, f in zip(LABELS, _sk(pred, target, None), strict=True):
        assert m[f"val_f1_{name}"] == pytest.approx(f, abs=1e-6)
    emotional = target != 0
    if emotional.any():
        seed_micro = f1_score(
            target[emotional],
            pred[emotional],
            labels=list(range(7)),
            average="micro",
            zero_division=0,
        )
        assert m["val_seed_micro_f1"] == pytest.approx(seed_micro, abs=1e-6)
        assert m["val_seed_micro_f1"] == pytest.approx((pred == target)[emotional].mean(), abs=1e-6)
    np.testing.assert_array_equal(
        confusion_matrix(pred, target, 7), sk_confusion(target, pred, labels=list(range(7)))
    )


def test_absent_classes_count_as_zero_in_macro() -> None:
    # Only classes 0 and 1 occur: torcheval's own macro would average 2 classes, ours 7.
    pred, target = np.array([0, 1, 1]), np.array([0, 1, 0])
    m = classification_metrics(pred, target, "x")
    assert m["x_macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 7)


def test_keys_and_label_names() -> None:
    names = ["a", "b", "c"]
    m = classification_metrics([0, 1, 2], [0, 1, 2], "train", num_classes=3, label_names=names)
    keys = {
        "train_macro_f1",
        "train_weighted_f1",
        "train_micro_f1",
        "train_seed_micro_f1",
        "train_f1_a",
        "train_f1_b",
        "train_f1_c",
    }
    assert set(m) == keys
    # Class c has no row: the macro over the classes present is added, and named so.
    m = classification_metrics([0, 1], [0, 1], "train", num_classes=3, label_names=names)
    assert set(m) == keys | {"train_macro_f1_present"}
    assert m["train_macro_f1_present"] == 1.0 and m["train_macro_f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], "x")


def test_seed_micro_is_nan_without_emotional_rows() -> None:
    m = classification_metrics([0, 1], [0, 0], "val")
    assert math.isnan(m["val_seed_micro_f1"])


def test_all_neutral_baseline() -> None:
    target = np.array([0] * 8 + [1, 2])
    m = all_neutral_metrics(target, "test")
    assert m["test_seed_micro_f1"] == 0.0
    assert m["test_micro_f1"] == pytest.approx(0.8)
    f_neutral = 2 * 0.8 / 1.8
    assert m["test_macro_f1"] == pytest.approx(f_neutral / 7, abs=1e-6)
    assert m["test_weighted_f1"] == pytest.approx(0.8 * f_neutral, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_macro_auroc_matches_sklearn_one_vs_rest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = np.concatenate([np.arange(7), rng.integers(0, 7, 40)])
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(len(target), 7))), dim=-1)
    expected = roc_auc_score(target, probs.numpy(), multi_class="ovr", average="macro")
    assert macro_auroc(probs, torch.from_numpy(target)) == pytest.approx(expected, abs=1e-6)


def test_macro_auroc_leaves_out_classes_without_positives() -> None:
    target = np.array([0, 0, 4, 4, 4, 2])
    scores = np.random.default_rng(0).random((6, 7))
    expected = np.mean([roc_auc_score(target == c, scores[:, c]) for c in (0, 2, 4)])
    assert macro_auroc(scores, target) == pytest.approx(expected, abs=1e-6)
    assert math.isnan(macro_auroc(scores[:2], target[:2]))  # one class only: undefined
    # A head that ranks perfectly still predicts neutral everywhere: F1 cannot see it.
    ranked = np.eye(7)[target] * 0.1 + np.eye(7)[[4] * 6] * 0.5
    assert macro_auroc(ranked, target) == 1.0
