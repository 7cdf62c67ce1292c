"""Outer folds of a feature store, for nested cross-validation of the whole search.

Outer fold k of K is a store of its own beside the original, ``<key>-outer<k>of<K>``: its
table is the original's with the split column assigned again by
:func:`data_prep.splits.outer_split` (fold k's sessions are test, the rest train and val by
the usual balanced carve), its arrays are symbolic links to the original's files (the features
are never copied), and its manifest names the original store and the fold. Every reader (the
sweep's trials with test sealed, finalize reading test once) uses it as any other store, so
what one fold's search can see is decided by that store's split column alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_prep.splits import SplitResult, outer_split
from data_prep.store import ARRAY_NAMES, FeatureStore, StoreWriter, find_store

OUTER_VERSION = 1  # bump when the fold rule changes: new keys, never a stale fold reused


def outer_key(key: str, k: int, n_folds: int, seed: int = 0) -> str:
    """The store key of outer fold ``k`` of ``n_folds`` of the store ``key``."""
    return f"{key}-outer{k}of{n_folds}" + (f"s{seed}" if seed else "") + f"v{OUTER_VERSION}"


def outer_splits(store: FeatureStore, n_folds: int, seed: int = 0) -> list[SplitResult]:
    """The ``n_folds`` outer splits of ``store``'s sessions (raises SplitError when they
    cannot be made: too few sessions, too many folds)."""
    return [
        outer_split(
            store.table,
            k,
            n_folds,
            seed=seed,
            neutral=store.neutral_label,
            label_order=store.label_names,
        )
        for k in range(n_folds)
    ]


def write_outer_stores(
    store_path: str | os.PathLike[str], n_folds: int, seed: int = 0
) -> list[Path]:
    """The outer-fold stores of the store at ``store_path``, written beside it where missing
    (each atomically, as any store); returns their paths in fold order."""
    store = FeatureStore.open(store_path)  # reads the table only: no split is loaded
    splits = outer_splits(store, n_folds, seed)
    root = store.path.parent
    paths = []
    for k, split in enumerate(splits):
        key = outer_key(store.key, k, n_folds, seed)
        found = find_store(root, key)
        paths.append(found or _write_fold(store, root, key, k, n_folds, seed, split))
    return paths


def _write_fold(
    store: FeatureStore,
    root: Path,
    key: str,
    k: int,
    n_folds: int,
    seed: int,
    split: SplitResult,
) -> Path:
    with StoreWriter(root, key) as writer:
        table = store.table.copy()
        table["split"] = split.assign(table).to_numpy()
        writer.write_table(table)
        for name in ARRAY_NAMES:
            os.symlink((store.path / f"{name}.npy").resolve(), writer.tmp / f"{name}.npy")
        outer = {
            "fold": k,
            "folds": n_folds,
            "seed": seed,
            "of_store": store.key,
            "of_path": str(store.path.resolve()),
            "test_sessions": list(split.test),
        }
        writer.write_json("split.json", {**split.to_dict(), "outer": outer})
        manifest: dict[str, Any] = {
            k2: v for k2, v in store.manifest.items() if k2 not in ("format_version", "key")
        }
        manifest.update(
            outer=outer,
            counts={
                name: {lab: int(n) for lab, n in per.items()} for name, per in split.counts.items()
            },
            missing_classes=split.missing,
            split_relaxed=split.relaxed,
        )
        return writer.commit(manifest)
