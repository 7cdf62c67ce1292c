"""The selection statistic, session folds and the bootstrap intervals, on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from data_prep.splits import SplitError, session_folds
from models.metrics import bootstrap_scores, bootstrap_weights, percentile_interval
from models.selection import Tracker, best_epoch, trailing_means, trial_score
from search import final_report as fr
from search.trainable import fold_metrics


# -- the statistic ------------------------------------------------------------------------
def test_trailing_mean_is_the_mean_of_the_last_five_epochs() -> None:
    values = [0.1, 0.2, 0.9, 0.2, 0.3, 0.4, 0.5]
    assert trailing_means(values) == pytest.approx([0.1, 0.15, 0.4, 0.35, 0.34, 0.4, 0.46])
    assert trial_score(values) == pytest.approx((0.9 + 0.2 + 0.3 + 0.4 + 0.5) / 5)
    assert math.isnan(trial_score([]))


def test_one_lucky_epoch_does_not_win() -> None:
    lucky = [0.30, 0.31, 0.62, 0.30, 0.31, 0.30]  # one spike, else flat at 0.3
    steady = [0.40, 0.42, 0.44, 0.45, 0.44, 0.45]
    assert max(lucky) > max(steady)  # the old rule picks the lucky run
    assert trial_score(steady) > trial_score(lucky)  # the statistic does not


def test_best_epoch_is_where_the_trailing_mean_peaks_ties_to_the_earliest() -> None:
    values = [0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1]
    epoch, value = best_epoch(values)
    assert (epoch, value) == (6, pytest.approx(0.5))
    assert best_epoch([0.25, 0.25, 0.25]) == (1, 0.25)  # exact in binary: a true tie
    assert best_epoch([math.nan, math.nan])[0] == 1
    assert best_epoch([math.nan, 0.3, math.nan]) == (2, pytest.approx(0.3))  # NaN is skipped


def test_tracker_agrees_with_the_batch_functions() -> None:
    rng = np.random.default_rng(0)
    values = list(rng.random(40))
    tracker = Tracker()
    for v in values:
        tracker.add(v)
    assert (tracker.best_epoch, tracker.best_value) == best_epoch(values)


def test_fold_metrics_are_means_with_each_fold_kept() -> None:
    folds = [
        {"val_macro_f1": 0.2, "val_loss": 1.0, "train_loss": 2.0, "val_macro_f1_se": 0.03},
        {"val_macro_f1": 0.4, "val_loss": 3.0, "train_loss": 4.0, "val_macro_f1_se": 0.04},
    ]
    m = fold_metrics(folds)
    assert m["val_macro_f1"] == pytest.approx(0.3) and m["train_loss"] == pytest.approx(3.0)
    assert (m["val_macro_f1_fold0"], m["val_macro_f1_fold1"]) == (0.2, 0.4)
    assert (m["val_loss_fold0"], m["val_loss_fold1"]) == (1.0, 3.0)
    assert "train_loss_fold0" not in m
    assert m["val_macro_f1_se"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)


# -- folds --------------------------------------------------------------------------------
def _table(sessions: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = ["neutral"] * 6 + ["happy", "sad", "angry"]
    rows = [
        {"session": s, "label": labels[rng.integers(len(labels))], "multi_label": False}
        for s in range(1, sessions + 1)
        for _ in range(30)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_folds_are_disjoint_cover_every_session_and_are_balanced(k: int) -> None:
    table = _table()
    folds = session_folds(table, k)
    assert len(folds) == k
    flat = [s for f in folds for s in f]
    assert sorted(flat) == sorted(table["session"].unique()) and len(set(flat)) == len(flat)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    total = table[table.label != "neutral"].label.value_counts()
    for f in folds:
        mine = table[table.session.isin(f) & (table.label != "neutral")].label.value_counts()
        share = len(f) / table.session.nunique()
        for label, n in total.items():  # every class present, near the fold's session share
            assert mine.get(label, 0) > 0
            assert abs(mine.get(label, 0) / n - share) < 0.1, (f, label)
    assert session_folds(table, k) == folds  # deterministic


def test_too_many_folds_is_a_clear_error() -> None:
    with pytest.raises(SplitError, match="cannot make 13 folds of 12 sessions"):
        session_folds(_table(), 13)


def test_store_folds_never_hold_test_sessions(demo_store) -> None:
    from data_prep.store import FeatureStore
    from models.data import fold_rows

    store = FeatureStore.open(demo_store, sealed=("test",))
    folds = fold_rows(store, 3)
    sessions = store.table["session"].to_numpy()
    test_sessions = set(store.split_info()["test"])
    pool = set(store.indices("train")) | set(store.indices("val"))
    seen_val: set[int] = set()
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert set(f["train"]) | set(f["val"]) == pool
        assert set(sessions[f["val"]]).isdisjoint(sessions[f["train"]])  # session-disjoint
        assert test_sessions.isdisjoint(sessions[f["val"]]) and test_sessions.isdisjoint(
            sessions[f["train"]]
        )
        seen_val |= set(f["val"])
    assert seen_val == pool and store.accessed == {"train", "val"}


# -- bootstrap ----------------------------------------------------------------------------
def test_session_bootstrap_resamples_whole_sessions() -> None:
    groups = np.array([1, 1, 1, 2, 2, 3])
    w = bootstrap_weights(6, groups, n_boot=50, seed=1)
    assert w.shape == (50, 6)
    for row in w:  # rows of one session always share a multiplicity; 3 sessions drawn
        assert row[0] == row[1] == row[2] and row[3] == row[4]
        assert row[0] + row[3] + row[5] == 3


def test_interval_on_a_hand_made_table() -> None:
    # Two sessions: one where the model is perfect, one where it always says neutral.
    target = np.array([1, 2, 3, 0, 1, 2, 3, 0])
    pred = np.array([1, 2, 3, 0, 0, 0, 0, 0])
    groups = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    reps = bootstrap_scores([pred], target, num_classes=4, groups=groups, n_boot=400)
    # Only three resamples exist. Session 1 twice: perfect, macro 1. Session 2 twice: only
    # neutral predicted, F1(neutral) = 2*2 / (2*2 + 6) = 0.4, the rest 0: macro 0.1. One of
    # each (the observed table): F1(neutral) = 4/7, the other three 2/3 each.
    values = set(np.round(reps["macro_f1"], 6))
    observed = (4 / 7 + 3 * 2 / 3) / 4
    assert values == {1.0, 0.1, round(observed, 6)}
    lo, hi = percentile_interval(reps["macro_f1"])
    assert (lo, hi) == (pytest.approx(0.1), 1.0)
    assert set(np.round(reps["micro_f1"], 6)) == {1.0, 0.25, 0.625}


def test_best_row_not_distinguishable_is_said_plainly() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 7, 300)
    sessions = np.repeat(np.arange(3), 100)
    noisy = [np.where(rng.random(300) < 0.6, gold, 0) for _ in range(2)]

    def row(key: str, preds: list[np.ndarray], val: float) -> fr.Row:
        units = [
            {"test_pred": {"10": p.tolist()}, "chosen_epoch": 10, "fixed_epoch": 10} for p in preds
        ]
        r = fr.Row(
            key=key,
            label=key,
            model="m",
            rank=1,
            trial_id=key,
            seeds=[0, 1],
            chosen_epochs=[10, 10],
            fixed_epochs=[10, 10],
            units=units,
            val_chosen=[val, val],
        )
        r.chosen["macro_f1"] = [float(np.mean(p == gold)) for p in preds]
        return r

    a, b = row("a", noisy, 0.5), row("b", [noisy[1], noisy[0]], 0.4)
    far = row("c", [gold, gold], 0.3)
    fr.attach_intervals([a, b, far], gold, sessions, 7)
    assert fr.best_row([a, b, far]) is a and fr.runner_up([a, b, far], a) is b
    assert "not distinguishable" in fr.difference_text(a, b)  # same predictions, swapped
    assert "excludes zero" in fr.difference_text(far, a)
    lo, hi = a.ci["chosen"]["macro_f1"]
    assert lo < hi
