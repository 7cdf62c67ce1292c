"""Session-disjoint train / val / test splits by the seed's balanced-shuffle rule.

The seed (src/split.py) shuffles the 40 sessions with ``random.seed(0)`` and takes the first
32 as train once every non-neutral class has between 79.9 % and 80.1 % of its rows in train,
widening that band by 0.001 every 100 failed shuffles; neutral is not constrained. Here:

- test: ``n_test = max(1, round(test_fraction * n_sessions))``, target = n_train / n_sessions
  (0.8 on 40 sessions: exactly the seed's rule, same shuffle sequence);
- on top, every non-neutral class that occurs in at least two sessions must occur on both
  sides (the seed's data always satisfies this; small corpora might not);
- val: carved from the training sessions by the same rule, with its own derived seed,
  ``n_val = max(1, round(val_fraction * n_train_sessions))`` (4 of 32 on KEMDy20).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from data_prep.labels import NEUTRAL

TOL_START = 0.001
TOL_STEP = 0.001
TOL_EVERY = 100
MAX_ATTEMPTS = 200_000


class SplitError(ValueError):
    """The table cannot be split by the rule (too few sessions, impossible constraints)."""


@dataclass(frozen=True)
class Carve:
    """One balanced cut of a session pool into kept (train side) and held-out sessions."""

    kept: list[int]
    held_out: list[int]
    target: float
    tolerance: float
    attempts: int
    fractions: dict[str, float]  # per non-neutral class: share of its rows on the kept side


@dataclass(frozen=True)
class SplitResult:
    train: list[int]
    val: list[int]
    test: list[int]
    seed: int
    test_carve: Carve
    val_carve: Carve
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> rows

    @property
    def tolerance(self) -> float:
        """The test cut's tolerance (the seed's reported band half-width)."""
        return self.test_carve.tolerance

    def to_dict(self) -> dict:
        """Plain data for split.json."""
        return {
            "rule": "seed balanced session shuffle (random.Random(seed).shuffle of sorted "
            "sessions; every non-neutral class within target +/- tol; tol += 0.001 per 100 "
            "failed shuffles)",
            "seed": self.seed,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "test_carve": asdict(self.test_carve),
            "val_carve": asdict(self.val_carve),
            "counts": self.counts,
        }

    def assign(self, table: pd.DataFrame) -> pd.Series:
        """ "train" / "val" / "test" for each row of ``table`` by its session."""
        where = {s: "train" for s in self.train}
        where.update({s: "val" for s in self.val})
        where.update({s: "test" for s in self.test})
        out = table["session"].map(where)
        if out.isna().any():
            missing = sorted(set(table.loc[out.isna(), "session"].tolist()))
            raise SplitError(f"sessions {missing} are not in this split; split the table again")
        return out.astype(str)


def derived_seed(seed: int, purpose: str) -> int:
    """A stable seed for a sub-step (same on every platform and Python version)."""
    digest = hashlib.sha256(f"case-tune:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def balanced_carve(
    counts: pd.DataFrame,
    n_keep: int,
    rng: random.Random,
    *,
    require_presence: bool = True,
    max_attempts: int = MAX_ATTEMPTS,
) -> Carve:
    """Shuffle the sorted sessions (rows of ``counts``) until the first ``n_keep`` hold
    ``target +/- tol`` of every class's rows (columns of ``counts``, non-neutral only)."""
    sessions = sorted(int(s) for s in counts.index)
    n = len(sessions)
    if not 1 <= n_keep < n:
        raise SplitError(f"cannot keep {n_keep} of {n} sessions")
    target = n_keep / n
    classes = [c for c in counts.columns if c != NEUTRAL and counts[c].sum() > 0]
    matrix = counts.loc[sessions, classes].to_numpy(dtype=np.float64)
    totals = matrix.sum(axis=0)
    # A class seen in two or more sessions can and must appear on both sides.
    must_show = (matrix > 0).sum(axis=0) >= 2 if require_presence else np.zeros(len(classes), bool)
    row_of = {s: i for i, s in enumerate(sessions)}
    order = list(sessions)
    for attempt in range(1, max_attempts + 1):
        rng.shuffle(order)
        tol = round(TOL_START + TOL_STEP * ((attempt - 1) // TOL_EVERY), 6)
        idx = [row_of[s] for s in order[:n_keep]]
        kept = matrix[idx].sum(axis=0)
        frac = kept / totals
        if not np.all(np.abs(frac - target) <= tol + 1e-12):
            continue
        if np.any(must_show & ((kept == 0) | (kept == totals))):
            continue
        return Carve(
            kept=sorted(order[:n_keep]),
            held_out=sorted(order[n_keep:]),
            target=target,
            tolerance=tol,
            attempts=attempt,
            fractions={c: round(float(f), 6) for c, f in zip(classes, frac, strict=True)},
        )
    raise SplitError(
        f"no balanced split of {n} sessions into {n_keep} + {n - n_keep} after {max_attempts} "
        "shuffles: some class cannot appear on both sides; check the label counts per session"
    )


def session_split(
    table: pd.DataFrame,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.125,
    seed: int = 0,
    drop_multi_label: bool = True,
) -> SplitResult:
    """Split ``table`` (columns session, label; optional multi_label) by sessions."""
    for col in ("session", "label"):
        if col not in table.columns:
            raise SplitError(f"table has no {col!r} column (columns: {list(table.columns)})")
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1):
        raise SplitError("test_fraction and val_fraction must be in (0, 1)")
    rows = table
    if drop_multi_label and "multi_label" in table.columns:
        rows = table[~table["multi_label"].astype(bool)]
    sessions = sorted(int(s) for s in table["session"].unique())
    n = len(sessions)
    if n < 3:
        raise SplitError(
            f"need at least 3 sessions for train/val/test, found {n} ({sessions}); "
            "use a larger corpus (the demo: --sessions 3 or more)"
        )
    counts = (
        pd.crosstab(rows["session"].astype(int), rows["label"])
        .reindex(index=sessions, fill_value=0)
        .astype(int)
    )
    n_test = max(1, round(test_fraction * n))
    n_test = min(n_test, n - 2)  # leave room for one train and one val session
    test_carve = balanced_carve(counts, n - n_test, random.Random(seed))

    pool = test_carve.kept
    n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
    val_carve = balanced_carve(
        counts.loc[pool], len(pool) - n_val, random.Random(derived_seed(seed, "val"))
    )
    result = SplitResult(
        train=val_carve.kept,
        val=val_carve.held_out,
        test=test_carve.held_out,
        seed=seed,
        test_carve=test_carve,
        val_carve=val_carve,
    )
    split_of = result.assign(rows)
    counts_by_split = {
        name: {
            str(k): int(v) for k, v in rows.loc[split_of == name, "label"].value_counts().items()
        }
        for name in ("train", "val", "test")
    }
    return SplitResult(**{**result.__dict__, "counts": counts_by_split})


def session_folds(table: pd.DataFrame, k: int, *, seed: int = 0) -> list[list[int]]:
    """``k`` session-disjoint folds of the sessions in ``table`` (columns session, label), each
    holding about 1/k of every non-neutral class, by the same balanced-shuffle rule as the
    splits: fold i is carved from the sessions no earlier fold took, keeping that remainder's
    share of every class within the rule's tolerance. Sorted session lists, one per fold."""
    sessions = sorted(int(s) for s in table["session"].unique())
    if k < 2 or k > len(sessions):
        raise SplitError(
            f"cannot make {k} folds of {len(sessions)} sessions: need 2 <= folds <= sessions"
        )
    rows = table[~table["multi_label"].astype(bool)] if "multi_label" in table.columns else table
    counts = (
        pd.crosstab(rows["session"].astype(int), rows["label"])
        .reindex(index=sessions, fill_value=0)
        .astype(int)
    )
    folds: list[list[int]] = []
    pool = sessions
    for i in range(k - 1):
        n_out = round(len(pool) / (k - i))
        carve = balanced_carve(
            counts.loc[pool], len(pool) - n_out, random.Random(derived_seed(seed, f"fold{i}"))
        )
        folds.append(carve.held_out)
        pool = carve.kept
    folds.append(sorted(pool))
    return folds
