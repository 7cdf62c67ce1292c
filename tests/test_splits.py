"""Session splits: the seed's balanced-shuffle rule on 40 sessions, scaled on smaller corpora."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from data_prep.labels import LABELS, NEUTRAL
from data_prep.splits import SplitError, derived_seed, session_split

NON_NEUTRAL = [c for c in LABELS if c != NEUTRAL]


def kemdy_like(seed: int = 1, sessions: int = 40) -> pd.DataFrame:
    """About 13.5k rows over 40 sessions, neutral ~85 %, class mix varying per session."""
    rng = np.random.default_rng(seed)
    base = np.array([0.85, 0.05, 0.025, 0.02, 0.02, 0.015, 0.02])
    parts = []
    for s in range(1, sessions + 1):
        p = base * np.exp(rng.normal(0, 0.3, len(base)))
        n = int(rng.integers(300, 370))
        parts.append(pd.DataFrame({"session": s, "label": rng.choice(LABELS, n, p=p / p.sum())}))
    table = pd.concat(parts, ignore_index=True)
    table["multi_label"] = False
    return table


def seed_reference(table: pd.DataFrame, n_train: int, seed: int) -> tuple[list[int], float]:
    """The seed's src/split.py loop, written as it was: global random, in-place shuffles."""
    sessions = sorted(table["session"].unique().tolist())
    random.seed(seed)
    target, tol, fails = n_train / len(sessions), 0.001, 0
    while True:
        random.shuffle(sessions)
        train = table[table["session"].isin(sessions[:n_train])]
        ok = True
        for label in NON_NEUTRAL:
            frac = (train["label"] == label).sum() / (table["label"] == label).sum()
            if not target - tol - 1e-12 <= frac <= target + tol + 1e-12:
                ok = False
        if ok:
            return sorted(sessions[n_train:]), tol
        fails += 1
        if fails % 100 == 0:
            tol = round(tol + 0.001, 6)


@pytest.fixture(scope="module")
def big():
    return kemdy_like()


def test_seed_rule_on_40_sessions(big) -> None:
    assert 13_000 <= len(big) <= 14_500 and 0.82 <= (big["label"] == NEUTRAL).mean() <= 0.88
    split = session_split(big)
    assert (len(split.train), len(split.val), len(split.test)) == (28, 4, 8)
    assert not set(split.train) & set(split.val)
    assert not set(split.test) & set(split.train + split.val)
    assert sorted(split.train + split.val + split.test) == list(range(1, 41))
    # Same sessions and tolerance as the seed's own loop with random.seed(0).
    ref_test, ref_tol = seed_reference(big, 32, 0)
    assert split.test == ref_test
    assert split.test_carve.tolerance == pytest.approx(ref_tol)
    # Every non-neutral class within target +/- the reported tolerance, on both carvings.
    pool = big[~big["session"].isin(split.test)]
    for carve, rows, kept in (
        (split.test_carve, big, split.train + split.val),
        (split.val_carve, pool, split.train),
    ):
        for label in NON_NEUTRAL:
            of_label = rows[rows["label"] == label]
            frac = of_label["session"].isin(kept).mean()
            assert abs(frac - carve.target) <= carve.tolerance + 1e-9
            assert carve.fractions[label] == pytest.approx(frac, abs=1e-6)
    assert split.test_carve.target == 0.8 and split.val_carve.target == 28 / 32
    assert split.test_carve.attempts > 1 and split.tolerance == split.test_carve.tolerance


def test_deterministic_and_seed_dependent(big) -> None:
    a, b = session_split(big), session_split(big)
    assert a.to_dict() == b.to_dict()
    c = session_split(big, seed=1)
    assert (c.test, c.val) != (a.test, a.val)
    assert derived_seed(0, "val") == derived_seed(0, "val") != derived_seed(1, "val")


def test_assign_and_to_dict(big) -> None:
    split = session_split(big)
    where = split.assign(big)
    assert set(where) == {"train", "val", "test"}
    assert set(big.loc[where == "test", "session"]) == set(split.test)
    counted = {name: int(n) for name, n in where.value_counts().items()}
    assert counted == {k: sum(v.values()) for k, v in split.counts.items()}
    d = json.loads(json.dumps(split.to_dict()))
    assert d["test"] == split.test and d["test_carve"]["tolerance"] == split.tolerance
    with pytest.raises(SplitError, match="not in this split"):
        split.assign(pd.DataFrame({"session": [99]}))


def test_multi_label_rows_do_not_count(big) -> None:
    noisy = big.copy()
    extra = pd.DataFrame({"session": 1, "label": "fear", "multi_label": [True] * 500})
    noisy = pd.concat([noisy, extra], ignore_index=True)
    assert session_split(noisy).test == session_split(big).test
    assert session_split(noisy, drop_multi_label=False).test != session_split(big).test


def test_scaled_rule_on_small_corpus() -> None:
    table = kemdy_like(seed=2, sessions=16)
    split = session_split(table)
    assert (len(split.train), len(split.val), len(split.test)) == (11, 2, 3)
    assert split.test_carve.target == 13 / 16 and split.val_carve.target == 11 / 13
    for name in ("train", "val", "test"):
        assert set(split.counts[name]) >= set(NON_NEUTRAL), name


def test_too_few_sessions() -> None:
    with pytest.raises(SplitError, match="at least 3 sessions"):
        session_split(kemdy_like(sessions=2))
    split = session_split(kemdy_like(sessions=3))
    assert (len(split.train), len(split.val), len(split.test)) == (1, 1, 1)
