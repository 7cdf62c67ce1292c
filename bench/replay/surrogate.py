"""A surrogate of the replay table: any config of the space gets a learning curve.

A random forest (scikit-learn, multi-output; or nearest neighbours, ``kind="knn"``) maps a config's encoding to its whole record at
once (val macro-F1 and val macro-AUROC at every epoch, oracle macro-F1 at the scored epochs,
log seconds per epoch), in the manner of surrogate HPO benchmarks (YAHPO Gym, LCBench's
surrogates). The forest's prediction is the config's expected curve; a trial's curve adds seed
noise: the difference between the two training seeds of one of the table's noise configs,
over sqrt(2) (the noise of one seed), drawn per (sweep seed, trial number). The oracle is
never noised: it is the config's expected quality, the thing a search is judged on. A
table without oracle scores (a user's store) puts the selection statistic (val) in its place.

Where a config's nearest table neighbours mostly diverged, so does its trial (at the epoch
they did).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bench.replay.sim import Curve
from models.selection import trailing_means

NEIGHBOURS = 5


def encode(space: Mapping[str, Any], config: Mapping[str, Any]) -> list[float]:
    """One number per numeric parameter (log10 for log-uniform ones; a value below the
    range, for inactive conditional ones), one 0/1 column per category of a choice."""
    out: list[float] = []
    for name, spec in space["params"].items():
        value = config.get(name)
        if "choice" in spec:
            out += [float(value == c and value is not None) for c in spec["choice"]]
            continue
        lo, hi = spec.get("uniform") or spec.get("loguniform") or spec.get("int")
        log = "loguniform" in spec
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if value is None:
            out.append(lo - (hi - lo))
            continue
        x = math.log10(max(float(value), 10**lo)) if log else float(value)
        out.append(x)
    return out


def by_config(rows: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Rows by config index (rows as `read_table` gives them: in (index, seed) order)."""
    by: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["index"], []).append(r)
    return by


KINDS = ("forest", "knn")


def _regressor(kind: str, seed: int) -> Any:
    """The multi-output regressor: a random forest, or (to see how much the benchmark's
    verdict depends on the surrogate) distance-weighted nearest neighbours on scaled inputs."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "forest":
        return RandomForestRegressor(
            n_estimators=200, min_samples_leaf=2, max_features=0.5, random_state=seed, n_jobs=1
        )
    if kind == "knn":
        return make_pipeline(StandardScaler(), KNeighborsRegressor(8, weights="distance"))
    raise ValueError(f"surrogate kind must be one of {KINDS}, got {kind!r}")


class Surrogate:
    """Fitted on the table's rows; ``curve(config, key)`` is a trial's curve."""

    def __init__(
        self,
        space: Mapping[str, Any],
        rows: Sequence[dict[str, Any]],
        epochs: int,
        oracle_epochs: Sequence[int],
        seed: int = 0,
        kind: str = "forest",
    ) -> None:

        self.space, self.epochs, self.oracle_epochs = space, epochs, list(oracle_epochs)
        by = by_config(rows)
        seed0 = [rs[0] if rs[0]["seed"] == 0 else rs[-1] for rs in by.values()]
        self.X = np.array([encode(space, r["config"]) for r in seed0])
        self.failed = np.array([bool(r["error"]) for r in seed0])
        self.fail_epoch = np.array([len(r["val"]) + 1 for r in seed0])
        good = [(i, r) for i, r in enumerate(seed0) if not r["error"]]
        Y = np.array([self._target(r) for _, r in good])
        self.model = _regressor(kind, seed).fit(self.X[[i for i, _ in good]], Y)
        self.noise = self._noise(by)

    def _target(self, row: dict[str, Any]) -> list[float]:
        e = self.epochs
        if row["oracle"]:
            oracle = [row["oracle"][str(k)] for k in self.oracle_epochs]  # JSON keys
        else:  # a user's store: judged by the expected validation statistic
            oracle = [trailing_means(row["val"])[k - 1] for k in self.oracle_epochs]
        secs = math.log(max(float(np.mean(row["seconds"])), 1e-3))
        return [*row["val"][:e], *np.nan_to_num(row["auroc"][:e], nan=0.5), *oracle, secs]

    def _noise(self, by: dict[int, list[dict[str, Any]]]) -> np.ndarray:
        """One seed's noise on (val, auroc) curves, from the configs trained twice."""
        e, out = self.epochs, []
        for rs in by.values():
            if len(rs) < 2 or any(r["error"] for r in rs):
                continue
            a, b = (np.array(self._target(r)[: 2 * e]) for r in rs[:2])
            out.append((b - a) / math.sqrt(2))
        return np.array(out) if out else np.zeros((1, 2 * e))

    def predict(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        X = np.array([encode(self.space, c) for c in configs])
        if hasattr(self.model, "estimators_"):  # a forest: its trees without joblib's
            # per-tree dispatch, which took two thirds of a simulated sweep's time
            X32 = X.astype(np.float32)
            out = sum(t.tree_.predict(X32)[:, :, 0] for t in self.model.estimators_)
            return out / len(self.model.estimators_)
        return self.model.predict(X)

    def oracle(self, prediction: np.ndarray, epoch: int) -> float:
        """The expected oracle macro-F1 of the weights at ``epoch`` (the last scored epoch
        at or before it)."""
        known = [k for k in self.oracle_epochs if k <= epoch] or self.oracle_epochs[:1]
        return float(prediction[2 * self.epochs + self.oracle_epochs.index(known[-1])])

    def diverges_at(self, config: Mapping[str, Any]) -> int | None:
        """The epoch a config diverges at, when most of its nearest table configs did."""
        if not self.failed.any():
            return None
        d = np.abs(self.X - np.array(encode(self.space, config))).sum(axis=1)
        near = np.argsort(d, kind="stable")[:NEIGHBOURS]
        if self.failed[near].sum() * 2 <= len(near):
            return None
        return int(np.median(self.fail_epoch[near][self.failed[near]]))

    def curve(self, prediction: np.ndarray, config: Mapping[str, Any], key: Sequence[int]) -> Curve:
        """A trial's curve: the prediction plus one seed's noise drawn by ``key``."""
        e = self.epochs
        rng = np.random.default_rng(list(key))
        noise = self.noise[rng.integers(len(self.noise))]
        val = np.clip(prediction[:e] + noise[:e], 0.0, 1.0)
        auroc = np.clip(prediction[e : 2 * e] + noise[e:], 0.0, 1.0)
        secs = [math.exp(prediction[-1])] * e
        stop = self.diverges_at(config)
        n = e if stop is None else max(0, min(e, stop - 1))
        return Curve(val=list(val[:n]), auroc=list(auroc[:n]), seconds=secs)
