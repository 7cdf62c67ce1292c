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

Small or uneven corpora (pilot studies, partial downloads) may have no cut that puts every
such class on both sides: a held-out session of eight utterances cannot hold seven classes.
Widening the tolerance cannot fix that, so the cut then relaxes the presence rule the least it
can: it takes the cut with the fewest classes missing from one side, then the smallest
deviation from the target, and records which classes are one-sided (``Carve.relaxed``,
``Carve.one_sided``); ``SplitResult.missing`` names the classes each split lacks. Whether a
cut with every class on both sides exists is decided exactly when the cuts can be counted
(``ENUMERATE_LIMIT``), so a feasible corpus keeps the seed's shuffle rule unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from data_prep.labels import LABELS, NEUTRAL

TOL_START = 0.001
TOL_STEP = 0.001
TOL_EVERY = 100
MAX_ATTEMPTS = 200_000
# Cuts (held-out session subsets) few enough to score every one: 16 sessions into 13 + 3 is
# 560, 40 into 32 + 8 is 77 million (then shuffles are sampled instead).
ENUMERATE_LIMIT = 50_000
RELAX_ATTEMPTS = 20_000


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
    # True when no cut could put every class seen in 2+ sessions on both sides; one_sided
    # names the classes this cut leaves on one side only.
    relaxed: bool = False
    one_sided: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitResult:
    train: list[int]
    val: list[int]
    test: list[int]
    seed: int
    test_carve: Carve
    val_carve: Carve
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> rows
    # split -> classes of the corpus with no row in that split (empty lists when all are there)
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def relaxed(self) -> bool:
        """True when a carve had to leave some class on one side (see the module docstring)."""
        return self.test_carve.relaxed or self.val_carve.relaxed

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
            "relaxed": self.relaxed,
            "missing_classes": self.missing,
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


def _score_cuts(
    matrix: np.ndarray, totals: np.ndarray, must_show: np.ndarray, held: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per cut (rows of ``held``: held-out row indices): classes left on one side, and the
    largest deviation of a class's kept share from ``target``."""
    held_sum = matrix[held].sum(axis=1)  # cuts x classes
    kept = totals - held_sum
    one_sided = (must_show & ((kept == 0) | (held_sum == 0))).sum(axis=1)
    dev = np.abs(kept / totals - target).max(axis=1) if totals.size else np.zeros(len(held))
    return one_sided, dev


def _carve(
    sessions: list[int],
    classes: list[str],
    matrix: np.ndarray,
    kept_idx: list[int],
    target: float,
    tol: float,
    attempts: int,
    must_show: np.ndarray,
    *,
    relaxed: bool = False,
) -> Carve:
    kept = matrix[kept_idx].sum(axis=0)
    totals = matrix.sum(axis=0)
    frac = kept / totals
    kept_set = {sessions[i] for i in kept_idx}
    one_sided = [
        c
        for c, m, k, t in zip(classes, must_show, kept, totals, strict=True)
        if m and (k == 0 or k == t)
    ]
    return Carve(
        kept=sorted(kept_set),
        held_out=sorted(s for s in sessions if s not in kept_set),
        target=target,
        tolerance=tol,
        attempts=attempts,
        fractions={c: round(float(f), 6) for c, f in zip(classes, frac, strict=True)},
        relaxed=relaxed,
        one_sided=one_sided,
    )


def _all_cuts(n: int, n_hold: int, rng: random.Random) -> np.ndarray | None:
    """Every held-out subset (in an order shuffled by ``rng``, so the seed breaks ties), or
    None when there are more than ``ENUMERATE_LIMIT``."""
    if math.comb(n, n_hold) > ENUMERATE_LIMIT:
        return None
    cuts = np.array(list(itertools.combinations(range(n), n_hold)), dtype=np.int64)
    order = list(range(len(cuts)))
    rng.shuffle(order)
    return cuts[order]


def _least_relaxed(
    sessions: list[int],
    classes: list[str],
    matrix: np.ndarray,
    n_keep: int,
    target: float,
    must_show: np.ndarray,
    cuts: np.ndarray,
    attempts: int,
) -> Carve:
    """The cut with the fewest one-sided classes, then the smallest deviation (first wins)."""
    totals = matrix.sum(axis=0)
    one_sided, dev = _score_cuts(matrix, totals, must_show, cuts, target)
    best = int(np.lexsort((np.round(dev, 9), one_sided))[0])
    held = set(cuts[best].tolist())
    kept_idx = [i for i in range(len(sessions)) if i not in held]
    tol = math.ceil(float(dev[best]) * 1e6) / 1e6
    return _carve(
        sessions,
        classes,
        matrix,
        kept_idx,
        target,
        tol,
        attempts,
        must_show,
        relaxed=bool(one_sided[best] > 0),
    )


def balanced_carve(
    counts: pd.DataFrame,
    n_keep: int,
    rng: random.Random,
    *,
    require_presence: bool = True,
    max_attempts: int = MAX_ATTEMPTS,
    neutral: str | None = NEUTRAL,
) -> Carve:
    """Shuffle the sorted sessions (rows of ``counts``) until the first ``n_keep`` hold
    ``target +/- tol`` of every class's rows (columns of ``counts``, non-neutral only), with
    every class seen in two or more sessions on both sides. When no cut can do that, return
    the least relaxed cut instead (see the module docstring); this never fails for want of a
    balanced cut. ``neutral`` names the unconstrained class (None: every class counts)."""
    sessions = sorted(int(s) for s in counts.index)
    n = len(sessions)
    if not 1 <= n_keep < n:
        raise SplitError(f"cannot keep {n_keep} of {n} sessions")
    target = n_keep / n
    classes = [c for c in counts.columns if c != neutral and counts[c].sum() > 0]
    matrix = counts.loc[sessions, classes].to_numpy(dtype=np.float64)
    totals = matrix.sum(axis=0)
    # A class seen in two or more sessions can and should appear on both sides.
    must_show = (matrix > 0).sum(axis=0) >= 2 if require_presence else np.zeros(len(classes), bool)
    # Decide first, exactly where the cuts can be counted, whether the strict rule can hold:
    # shuffling 200,000 times for a cut that does not exist only wastes seconds. A copy of the
    # rng orders the cuts, so the strict shuffle sequence (the seed's rule) is unchanged.
    tie_rng = random.Random()
    tie_rng.setstate(rng.getstate())
    cuts = _all_cuts(n, n - n_keep, tie_rng)
    feasible = True
    if cuts is not None and must_show.any():
        feasible = bool(_score_cuts(matrix, totals, must_show, cuts, target)[0].min() == 0)
    row_of = {s: i for i, s in enumerate(sessions)}
    order = list(sessions)
    attempts = max_attempts if feasible else 0
    for attempt in range(1, attempts + 1):
        rng.shuffle(order)
        tol = round(TOL_START + TOL_STEP * ((attempt - 1) // TOL_EVERY), 6)
        idx = [row_of[s] for s in order[:n_keep]]
        kept = matrix[idx].sum(axis=0)
        frac = kept / totals
        if not np.all(np.abs(frac - target) <= tol + 1e-12):
            continue
        if np.any(must_show & ((kept == 0) | (kept == totals))):
            continue
        return _carve(sessions, classes, matrix, idx, target, tol, attempt, must_show)
    if cuts is None:  # too many to score them all: score a sample of shuffles
        sample = []
        for _ in range(RELAX_ATTEMPTS):
            rng.shuffle(order)
            sample.append([row_of[s] for s in order[n_keep:]])
        cuts = np.array(sample, dtype=np.int64)
    return _least_relaxed(
        sessions, classes, matrix, n_keep, target, must_show, cuts, attempts + len(cuts)
    )


def session_split(
    table: pd.DataFrame,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.125,
    seed: int = 0,
    drop_multi_label: bool = True,
    neutral: str | None = NEUTRAL,
    label_order: tuple[str, ...] | list[str] = LABELS,
) -> SplitResult:
    """Split ``table`` (columns session, label; optional multi_label) by sessions.

    ``neutral`` is the class the seed's rule leaves unconstrained (None: none is);
    ``label_order`` orders the classes each split lacks."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1):
        raise SplitError("test_fraction and val_fraction must be in (0, 1)")
    rows, sessions, counts = _session_counts(table, drop_multi_label)
    n = len(sessions)
    if n < 3:
        raise SplitError(
            f"need at least 3 sessions for train/val/test, found {n} ({sessions}); "
            "use a larger corpus (the demo: --sessions 3 or more)"
        )
    n_test = max(1, round(test_fraction * n))
    n_test = min(n_test, n - 2)  # leave room for one train and one val session
    test_carve = balanced_carve(counts, n - n_test, random.Random(seed), neutral=neutral)
    return _with_val(rows, counts, test_carve, val_fraction, seed, neutral, label_order)


def outer_split(
    table: pd.DataFrame,
    k: int,
    n_folds: int,
    *,
    val_fraction: float = 0.125,
    seed: int = 0,
    drop_multi_label: bool = True,
    neutral: str | None = NEUTRAL,
    label_order: tuple[str, ...] | list[str] = LABELS,
) -> SplitResult:
    """Outer fold ``k`` of ``n_folds`` (nested cross-validation): the sessions of
    :func:`session_folds`' fold ``k`` are the test split, and the others are split into train
    and val by :func:`session_split`'s val rule. Every session is test in exactly one fold."""
    if not 0 <= k < n_folds:
        raise SplitError(f"outer fold {k} does not exist: folds are 0..{n_folds - 1}")
    rows, sessions, counts = _session_counts(table, drop_multi_label)
    if len(sessions) < 3:
        raise SplitError(
            f"need at least 3 sessions for train/val/test in each outer fold, found {len(sessions)}"
        )
    folds = session_folds(table, n_folds, seed=seed, neutral=neutral)
    if len(sessions) - len(folds[k]) < 2:
        raise SplitError(
            f"{n_folds} outer folds of {len(sessions)} sessions leave fewer than 2 sessions "
            "for train and val: use fewer folds"
        )
    test_carve = _cut_of(counts, folds[k], neutral)
    return _with_val(rows, counts, test_carve, val_fraction, seed, neutral, label_order)


def _session_counts(
    table: pd.DataFrame, drop_multi_label: bool = True
) -> tuple[pd.DataFrame, list[int], pd.DataFrame]:
    """(the rows splits count, the sorted sessions, rows per session and label)."""
    for col in ("session", "label"):
        if col not in table.columns:
            raise SplitError(f"table has no {col!r} column (columns: {list(table.columns)})")
    rows = table
    if drop_multi_label and "multi_label" in table.columns:
        rows = table[~table["multi_label"].astype(bool)]
    sessions = sorted(int(s) for s in table["session"].unique())
    counts = (
        pd.crosstab(rows["session"].astype(int), rows["label"])
        .reindex(index=sessions, fill_value=0)
        .astype(int)
    )
    return rows, sessions, counts


def _cut_of(counts: pd.DataFrame, held: list[int], neutral: str | None) -> Carve:
    """The Carve that holds ``held`` out of ``counts``' sessions (a cut made elsewhere)."""
    sessions = sorted(int(s) for s in counts.index)
    classes = [c for c in counts.columns if c != neutral and counts[c].sum() > 0]
    matrix = counts.loc[sessions, classes].to_numpy(dtype=np.float64)
    must_show = (matrix > 0).sum(axis=0) >= 2
    kept_idx = [i for i, s in enumerate(sessions) if s not in set(held)]
    target = len(kept_idx) / len(sessions)
    totals = matrix.sum(axis=0)
    dev = float(np.abs(matrix[kept_idx].sum(axis=0) / totals - target).max()) if classes else 0.0
    cut = _carve(
        sessions, classes, matrix, kept_idx, target, math.ceil(dev * 1e6) / 1e6, 0, must_show
    )
    return Carve(**{**asdict(cut), "relaxed": bool(cut.one_sided)})


def _with_val(
    rows: pd.DataFrame,
    counts: pd.DataFrame,
    test_carve: Carve,
    val_fraction: float,
    seed: int,
    neutral: str | None,
    label_order: tuple[str, ...] | list[str],
) -> SplitResult:
    """The split whose test is ``test_carve``'s held-out sessions, val carved from the rest."""
    pool = test_carve.kept
    n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
    val_carve = balanced_carve(
        counts.loc[pool],
        len(pool) - n_val,
        random.Random(derived_seed(seed, "val")),
        neutral=neutral,
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
    return SplitResult(
        **{
            **result.__dict__,
            "counts": counts_by_split,
            "missing": missing_classes(counts_by_split, label_order),
        }
    )


def missing_classes(
    counts: dict[str, dict[str, int]], label_order: tuple[str, ...] | list[str] = LABELS
) -> dict[str, list[str]]:
    """Split -> the classes with rows somewhere in the corpus but none in that split (in
    label order), so a reader knows which per-class and macro scores cannot be measured."""
    present = {lab for per in counts.values() for lab, k in per.items() if k > 0}
    order = [lab for lab in label_order if lab in present] + sorted(present - set(label_order))
    return {name: [lab for lab in order if per.get(lab, 0) == 0] for name, per in counts.items()}


def session_folds(
    table: pd.DataFrame, k: int, *, seed: int = 0, neutral: str | None = NEUTRAL
) -> list[list[int]]:
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
            counts.loc[pool],
            len(pool) - n_out,
            random.Random(derived_seed(seed, f"fold{i}")),
            neutral=neutral,
        )
        folds.append(carve.held_out)
        pool = carve.kept
    folds.append(sorted(pool))
    return folds
