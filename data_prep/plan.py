"""What a store will be, decided before any encoder is loaded: the corpus read, its table
split by session, and the store key (:mod:`data_prep.store_key`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from data_prep.encoders import (
    DEFAULT_AUDIO_MODEL,
    DEFAULT_TEXT_MODEL,
    EncoderError,
    encoder_identity,
    identity_for_key,
)
from data_prep.extract import ExtractionError
from data_prep.kemdy20 import CorpusError, CorpusRead, read_corpus
from data_prep.splits import SplitError, SplitResult, session_split
from data_prep.store import StoreError
from data_prep.store_key import (
    TEST_FRACTION,
    VAL_FRACTION,
    corpus_fingerprint,
    files_fingerprint,
    key_material,
    store_key,
)


class PrepareError(RuntimeError):
    """Preparing a store failed for a reason the user can fix (message says how)."""


# Everything preparing a corpus raises for a bad corpus, encoder or store (one line each);
# callers turn these into a usage error instead of a traceback.
PREPARE_ERRORS = (PrepareError, CorpusError, EncoderError, StoreError, SplitError, ExtractionError)


@dataclass
class Plan:
    """Everything decided before any encoder is loaded: the table, its split and the key."""

    root: Path
    read: CorpusRead
    table: pd.DataFrame
    split: Any
    n_ties: int
    audio_id: dict[str, Any]
    text_id: dict[str, Any]
    fingerprint: dict[str, Any]
    material: dict[str, Any]
    key: str

    @property
    def where(self) -> Path:
        """The corpus as the user named it (a manifest file, else the corpus folder)."""
        return self.read.source or self.root

    @property
    def name(self) -> str:
        """The corpus's name in the key and the store manifest."""
        return _corpus_name(self.read, self.root)


def plan(
    corpus_dir: str | os.PathLike[str],
    *,
    audio_model: str | os.PathLike[str] = DEFAULT_AUDIO_MODEL,
    text_model: str | os.PathLike[str] = DEFAULT_TEXT_MODEL,
    max_frames: int = 512,
    max_tokens: int = 128,
    keep_ties: bool = False,
    split_seed: int = 0,
    corpus: CorpusRead | None = None,
) -> Plan:
    """Read and split the corpus and compute the store key, without loading any encoder."""
    if max_frames < 1 or max_tokens < 3:
        raise PrepareError(
            f"max_frames must be >= 1 and max_tokens >= 3 (got {max_frames}, {max_tokens})"
        )
    root = Path(corpus_dir).expanduser().resolve()
    read = _read(root, corpus)
    table, n_ties = _usable_rows(read, keep_ties)
    split = _split(table, read, split_seed, where=read.source or root)
    table["split"] = split.assign(table).to_numpy()
    label_id = {name: i for i, name in enumerate(read.label_names)}
    table["label_id"] = table["label"].map(label_id).astype("int64")

    audio_id = encoder_identity(audio_model)
    text_id = encoder_identity(text_model)
    fingerprint = _fingerprint(root, read)
    material = key_material(
        fingerprint=fingerprint,
        table=table,
        audio=identity_for_key(audio_id),
        text=identity_for_key(text_id),
        max_frames=max_frames,
        max_tokens=max_tokens,
        keep_ties=keep_ties,
        split_seed=split_seed,
        # The classes, their order and the neutral one decide label ids and metrics.
        # KEMDy20's fixed classes are in its reader.
        manifest=(
            {**read.options, "label_names": list(read.label_names)}
            if read.kind == "manifest"
            else None
        ),
    )
    key = store_key(material, _corpus_name(read, root))
    return Plan(root, read, table, split, n_ties, audio_id, text_id, fingerprint, material, key)


def _corpus_name(read: CorpusRead, root: Path) -> str:
    return read.source.stem if read.source is not None else root.name


def _read(root: Path, corpus: CorpusRead | None) -> CorpusRead:
    """``corpus`` when the caller read it already (a manifest, the demo), else KEMDy20's."""
    if (corpus is None or corpus.kind == "kemdy20") and not root.is_dir():
        raise PrepareError(f"corpus folder {root} does not exist")
    return corpus if corpus is not None else read_corpus(root)


def _usable_rows(read: CorpusRead, keep_ties: bool) -> tuple[pd.DataFrame, int]:
    """The table to store (tied votes dropped unless kept) and how many ties there were."""
    table = read.utterances.copy()
    n_ties = int(table["multi_label"].sum())
    if not keep_ties:
        table = table[~table["multi_label"]].reset_index(drop=True)
    return table, n_ties


def _split(table: pd.DataFrame, read: CorpusRead, seed: int, *, where: Path) -> SplitResult:
    try:
        return session_split(
            table,
            test_fraction=TEST_FRACTION,
            val_fraction=VAL_FRACTION,
            seed=seed,
            neutral=read.neutral_label,
            label_order=read.label_names,
        )
    except SplitError as exc:
        raise PrepareError(f"cannot split {where}: {exc}") from exc


def _fingerprint(root: Path, read: CorpusRead) -> dict[str, Any]:
    if read.kind == "manifest":
        return files_fingerprint(read.root, read.files)
    return corpus_fingerprint(root)
