"""Classification metrics with torcheval, under one documented convention.

Convention (the reference is scikit-learn's `f1_score(labels=range(num_classes),
zero_division=0)`): every class counts in the macro average, including a class absent from
both predictions and targets (its F1 is 0). torcheval's own "macro" drops such classes, which
would inflate macro-F1 on small or skewed batches, so macro is taken here as the plain mean of
torcheval's per-class F1. On a test set holding all seven classes the two agree.

`{split}_macro_auroc` is threshold-free: the mean one-vs-rest ROC AUC over the classes that
have both positive and negative rows (undefined otherwise, so left out). While a head still
predicts neutral everywhere its macro-F1 is flat at the all-neutral value, but its AUROC already
shows how well it ranks the emotional rows; the search uses it only to break exact F1 ties.

A split with no row of some class (small corpora: see data_prep/splits.py) also gets
`{split}_macro_f1_present`, the mean F1 over the classes it does hold, so a reader can tell the
convention's zeros from what the model did; `absent_classes` names the missing ones.

`{split}_seed_micro_f1` is the seed's "Micro-F1": micro-F1 over the rows whose gold label is
not neutral, which is the accuracy on emotional rows (NaN when there are none). It needs a
neutral class: with ``neutral_index=None`` (a store without one) the key is left out, never
computed against some other class. Callers pass the store's ``neutral_index``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torcheval.metrics.functional import (
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from data_prep.labels import LABELS, NEUTRAL_INDEX


@contextmanager
def _quiet_torcheval():
    # torcheval logs a root-level warning for every absent class; the convention above
    # handles those classes on purpose.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).long().cpu()


def _label_names(num_classes: int, label_names: Sequence[str] | None) -> list[str]:
    if label_names is not None:
        if len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
        return list(label_names)
    return list(LABELS) if num_classes == len(LABELS) else [str(i) for i in range(num_classes)]


def classification_metrics(
    pred,
    target,
    split: str,
    num_classes: int = 7,
    neutral_index: int | None = NEUTRAL_INDEX,
    label_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Macro / weighted / micro F1, the seed's micro-F1 (only with a ``neutral_index``) and
    per-class F1 of class ids ``pred`` against ``target`` (tensors or arrays of ints), keys
    prefixed with ``split``."""
    p, t = _as_tensor(pred), _as_tensor(target)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} must be equal 1-d")
    names = _label_names(num_classes, label_names)
    if len(t) == 0:
        nan = float("nan")
        out = {f"{split}_{k}": nan for k in score_names(neutral_index)}
        out.update({f"{split}_f1_{n}": nan for n in names})
        return out
    with _quiet_torcheval():
        per_class = multiclass_f1_score(p, t, num_classes=num_classes, average=None).double()
        micro = float(multiclass_f1_score(p, t, num_classes=num_classes, average="micro"))
        emotional = t != (-1 if neutral_index is None else neutral_index)
        if neutral_index is None:
            seed_micro = None
        elif bool(emotional.any()):
            seed_micro = float(
                multiclass_f1_score(
                    p[emotional], t[emotional], num_classes=num_classes, average="micro"
                )
            )
        else:
            seed_micro = float("nan")
    support = torch.bincount(t, minlength=num_classes).double()
    out = {
        f"{split}_macro_f1": float(per_class.mean()),
        f"{split}_weighted_f1": float((per_class * support).sum() / support.sum()),
        f"{split}_micro_f1": micro,
    }
    if seed_micro is not None:
        out[f"{split}_seed_micro_f1"] = seed_micro
    out.update({f"{split}_f1_{name}": float(f) for name, f in zip(names, per_class, strict=True)})
    present = support > 0
    if not bool(present.all()):
        out[f"{split}_macro_f1_present"] = float(per_class[present].mean())
    return out


def absent_classes(
    target, num_classes: int = 7, label_names: Sequence[str] | None = None
) -> list[str]:
    """Names of the classes with no row in ``target`` (empty when every class is there)."""
    t = _as_tensor(target)
    support = torch.bincount(t, minlength=num_classes)
    names = _label_names(num_classes, label_names)
    return [names[i] for i in range(num_classes) if int(support[i]) == 0]


def absent_note(
    target, split: str, num_classes: int = 7, label_names: Sequence[str] | None = None
) -> str | None:
    """One line saying which classes ``split`` lacks and what that does to macro-F1."""
    absent = absent_classes(target, num_classes, label_names)
    if not absent or len(absent) == num_classes:
        return None
    return (
        f"{split} split has no rows of {', '.join(absent)}: {split}_macro_f1 counts them "
        f"as 0 over all {num_classes} classes; {split}_macro_f1_present averages the "
        f"{num_classes - len(absent)} classes present"
    )


def macro_auroc(scores, target, num_classes: int = 7) -> float:
    """Mean one-vs-rest ROC AUC of ``scores`` ([N, C] probabilities or logits) over the classes
    with at least one positive and one negative row in ``target``; NaN if there is none."""
    s = torch.as_tensor(scores).float().cpu()
    t = _as_tensor(target)
    if s.ndim != 2 or s.shape != (len(t), num_classes):
        raise ValueError(f"scores {tuple(s.shape)} do not fit {len(t)} rows x {num_classes}")
    support = torch.bincount(t, minlength=num_classes)
    defined = (support > 0) & (support < len(t))
    if len(t) == 0 or not bool(defined.any()):
        return float("nan")
    per_class = multiclass_auroc(s, t, num_classes=num_classes, average=None)
    return float(per_class[defined].double().mean())


def confusion_matrix(pred, target, num_classes: int = 7) -> np.ndarray:
    """[num_classes, num_classes] counts, rows = gold class, columns = predicted class."""
    p, t = _as_tensor(pred), _as_tensor(target)
    return multiclass_confusion_matrix(p, t, num_classes=num_classes).numpy().astype(np.int64)


def all_neutral_metrics(
    target,
    split: str,
    num_classes: int = 7,
    neutral_index: int | None = NEUTRAL_INDEX,
    label_names: Sequence[str] | None = None,
    predict: int | None = None,
) -> dict[str, float]:
    """A constant baseline scored by the same code: every row predicted ``predict``, by
    default the neutral class (the all-neutral baseline). A store without a neutral class
    passes its majority class (``FeatureStore.baseline_class``) and ``neutral_index=None``."""
    t = _as_tensor(target)
    const = neutral_index if predict is None else predict
    if const is None:
        raise ValueError("no neutral class: say which class the baseline predicts (predict=)")
    return classification_metrics(
        torch.full_like(t, const), t, split, num_classes, neutral_index, label_names
    )


def baseline_name(label_names: Sequence[str], predict: int) -> str:
    """How reports call the constant baseline: "all-neutral", "all-<class>"."""
    return f"all-{label_names[predict]}"


# -- bootstrap ------------------------------------------------------------------------------
def bootstrap_weights(n_rows: int, groups=None, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot, n_rows] multiplicities of a bootstrap: rows resampled with replacement, or,
    with ``groups`` (one id per row, e.g. the session), whole groups resampled, so that the
    interval reflects how the split was sampled (sessions, not independent rows)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=n_boot)
    _, group_of_row = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_of_row.max()) + 1 if n_rows else 0
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return counts[:, group_of_row]


MIN_GROUPS = 3  # fewer sessions than this and a session bootstrap has almost no resamples


def session_groups(sessions, split: str) -> tuple[np.ndarray | None, str | None]:
    """The groups a split's standard errors resample: its rows' sessions (rows of one
    session are not independent, so resampling rows gives too narrow an interval), or None
    (rows) with a note when the split has fewer than ``MIN_GROUPS`` sessions."""
    sessions = np.asarray(sessions)
    n = len(np.unique(sessions))
    if n >= MIN_GROUPS:
        return sessions, None
    return None, (
        f"{split} split has {n} session(s): its val_macro_f1_se resamples rows, not "
        f"sessions (needs {MIN_GROUPS}), and is too narrow"
    )


SCORES = ("macro_f1", "seed_micro_f1", "weighted_f1", "micro_f1")


def score_names(neutral_index: int | None) -> tuple[str, ...]:
    """The summary scores a store has: ``SCORES``, less the seed's micro-F1 without a
    neutral class."""
    return SCORES if neutral_index is not None else tuple(s for s in SCORES if s != "seed_micro_f1")


def weighted_scores(
    weights: np.ndarray,
    pred,
    target,
    num_classes: int = 7,
    neutral_index: int | None = NEUTRAL_INDEX,
) -> dict[str, np.ndarray]:
    """The F1 scores of ``score_names(neutral_index)`` (the conventions above) of ``pred``
    against ``target`` for each row of ``weights`` ([B, N] row multiplicities) -> {name: [B]}."""
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    eye = np.eye(num_classes)
    hit = (p == t)[:, None]
    w = np.asarray(weights, dtype=np.float64)
    tp = w @ (eye[t] * hit)
    fp = w @ (eye[p] * ~hit)
    support = w @ eye[t]
    denom = tp + fp + support
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "macro_f1": f1.mean(axis=1),
            "weighted_f1": (f1 * support).sum(axis=1) / support.sum(axis=1),
            "micro_f1": tp.sum(axis=1) / support.sum(axis=1),
        }
        if neutral_index is not None:
            emotional = np.arange(num_classes) != neutral_index
            out["seed_micro_f1"] = tp[:, emotional].sum(axis=1) / support[:, emotional].sum(axis=1)
    return out


def bootstrap_scores(
    preds: Sequence,
    target,
    num_classes: int = 7,
    *,
    groups=None,
    n_boot: int = 1000,
    seed: int = 0,
    neutral_index: int | None = NEUTRAL_INDEX,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates {score: [n_boot]} of the mean over runs (``preds``: one prediction
    vector per seed) of each score. The same ``seed``, target and groups give the same
    resamples, so two calls are paired (their difference is a paired bootstrap)."""
    w = bootstrap_weights(len(np.asarray(target)), groups, n_boot, seed)
    per_run = [weighted_scores(w, p, target, num_classes, neutral_index) for p in preds]
    return {k: np.mean([r[k] for r in per_run], axis=0) for k in score_names(neutral_index)}


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    lo, hi = np.percentile(np.asarray(samples, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
