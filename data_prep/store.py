"""The on-disk feature store: fp16 arrays memory-mapped by every trial, written atomically.

Layout of one store (a folder named by its key, under a stores root):

    manifest.json        written last; a folder without it is not a store
    utterances.parquet   one row per utterance, in array order (columns below)
    text.npy             float16 [N, max_tokens, text_dim]   token last_hidden_state at every
                                                              position, [PAD] ones past text_len
    text_len.npy         int32   [N]                          true token counts (>= 1)
    text_pooled.npy      float16 [N, text_dim]                the text encoder's pooled output
    audio.npy            float16 [N, max_frames, audio_dim]  frame last_hidden_state, zero-padded
    audio_len.npy        int32   [N]                          true frame counts (>= 1)
    faults.csv           every utterance skipped while preparing, with file, row and reason
    split.json           which sessions are in train / val / test, and how they were chosen

manifest.json names the classes in label_id order (``labels``), the class the seed's
micro-F1 leaves out (``neutral_label``, null when there is none: that metric is then not
computed anywhere) and, for a manifest corpus, the session names behind the integer sessions
(``session_names``).

utterances.parquet columns: segment_id, session, script, speaker, gender, label, label_id,
labels, multi_label, text, wav_path, valence, arousal, csv_file, csv_row,
split ("train" | "val" | "test").

Atomicity: a store is built in a hidden sibling folder ``.tmp-KEY@HOST@PID@RANDOM`` and
renamed into place after its manifest is written, so an interrupted build (exception, Ctrl-C,
SIGKILL, power cut before the rename) never leaves a folder that ``find_store`` accepts.
Temporary folders of processes that died on this host are removed by the next writer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep.atomic import pid_alive

MANIFEST = "manifest.json"
TABLE = "utterances.parquet"
ARRAY_NAMES = ("text", "text_len", "text_pooled", "audio", "audio_len")
SPLITS = ("train", "val", "test")
STORE_FORMAT_VERSION = 1


class StoreError(RuntimeError):
    """A feature store is missing, incomplete or inconsistent."""


class SplitSealedError(StoreError):
    """A caller asked for a split it was not allowed to read (the test split during search)."""


@dataclass
class FeatureStore:
    """An opened feature store. Arrays are read-only memory maps; nothing is loaded eagerly."""

    path: Path
    manifest: dict[str, Any]
    table: pd.DataFrame
    text: np.ndarray
    text_len: np.ndarray
    text_pooled: np.ndarray
    audio: np.ndarray
    audio_len: np.ndarray
    sealed: frozenset[str] = frozenset()
    accessed: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, sealed: Iterable[str] = ()) -> FeatureStore:
        """Open the store at ``path``; splits named in ``sealed`` raise if anyone asks for them."""
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(
                f"{root} is not a complete feature store (no {MANIFEST}). "
                "Create one with `python -m data_prep.prepare --demo` or "
                "`python -m data_prep.prepare --kemdy20 DIR`."
            )
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{root}: store format {manifest.get('format_version')!r} is not "
                f"{STORE_FORMAT_VERSION}; prepare it again."
            )
        table = pd.read_parquet(root / TABLE)
        arrays = {name: np.load(root / f"{name}.npy", mmap_mode="r") for name in ARRAY_NAMES}
        n = len(table)
        for name, arr in arrays.items():
            if arr.shape[0] != n:
                raise StoreError(f"{root}: {name}.npy has {arr.shape[0]} rows, table has {n}")
        unknown = set(sealed) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) to seal: {sorted(unknown)}; splits are {SPLITS}")
        return cls(path=root, manifest=manifest, table=table, sealed=frozenset(sealed), **arrays)

    # -- identity and sizes -------------------------------------------------------------
    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["labels"])

    @property
    def neutral_label(self) -> str | None:
        """The class the seed's micro-F1 leaves out, or None (that metric is then omitted).
        Stores written before manifests recorded it are KEMDy20's or the demo's: "neutral"."""
        if "neutral_label" in self.manifest:
            return self.manifest["neutral_label"]
        return "neutral" if "neutral" in self.manifest["labels"] else None

    @property
    def neutral_index(self) -> int | None:
        """The class id of :attr:`neutral_label`, or None."""
        name = self.neutral_label
        return None if name is None else self.label_names.index(name)

    def baseline_class(self) -> int:
        """The class a constant baseline predicts: neutral when the store names one, else
        the most frequent class of the training split (ties: the lowest id)."""
        if self.neutral_index is not None:
            return self.neutral_index
        counts = np.bincount(self.labels("train"), minlength=self.num_classes)
        return int(np.argmax(counts))

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[2])

    @property
    def audio_dim(self) -> int:
        return int(self.audio.shape[2])

    @property
    def max_tokens(self) -> int:
        return int(self.text.shape[1])

    @property
    def max_frames(self) -> int:
        return int(self.audio.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.text.nbytes + self.audio.nbytes + self.text_pooled.nbytes)

    # -- access to splits ---------------------------------------------------------------
    def indices(self, split: str) -> np.ndarray:
        """Row indices of ``split`` in array order. Raises if the split is sealed."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
        if split in self.sealed:
            raise SplitSealedError(
                f"the {split!r} split of store {self.key} is sealed here: only "
                "`search.finalize` reads the test split"
            )
        self.accessed.add(split)
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def faults(self) -> pd.DataFrame:
        """Every utterance skipped while preparing (file, row, segment_id, kind, message, stage)."""
        path = self.path / "faults.csv"
        return pd.read_csv(path, keep_default_na=False) if path.is_file() else pd.DataFrame()

    def split_info(self) -> dict[str, Any]:
        """The contents of split.json (sessions per split and how they were chosen)."""
        path = self.path / "split.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def labels(self, split: str) -> np.ndarray:
        """Integer class ids (int64) of ``split``."""
        idx = self.indices(split)
        return self.table["label_id"].to_numpy(dtype=np.int64)[idx]


class StoreWriter:
    """Builds a store in a hidden temporary folder and renames it into place on ``commit``.

    Used as a context manager: leaving the block without ``commit`` (an exception, Ctrl-C)
    deletes the temporary folder, so no half-written store can ever look complete.
    """

    def __init__(self, root: str | os.PathLike[str], key: str) -> None:
        self.root = Path(root)
        self.key = key
        if not key or "/" in key or "@" in key or key.startswith("."):
            raise ValueError(f"bad store key {key!r}")
        self.final = self.root / key
        self.tmp = self.root / f"{_TMP_PREFIX}{key}@{_HOST}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        self._arrays: dict[str, np.ndarray] = {}
        self.committed = False

    def __enter__(self) -> StoreWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.root)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self._arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def create_array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable memory map for ``name`` (zero-filled), saved in .npy format."""
        arr = np.lib.format.open_memmap(
            self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
        )
        self._arrays[name] = arr
        return arr

    def select_rows(self, name: str, keep: np.ndarray) -> np.ndarray:
        """Rewrite array ``name`` keeping only the rows where ``keep`` is True (in order)."""
        old = self._arrays[name]
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (old.shape[0],):
            raise ValueError(
                f"{name}: keep mask has shape {keep.shape}, array has {old.shape[0]} rows"
            )
        path = self.tmp / f"{name}.npy"
        part = self.tmp / f"{name}.part.npy"
        new = np.lib.format.open_memmap(
            part, mode="w+", dtype=old.dtype, shape=(int(keep.sum()), *old.shape[1:])
        )
        rows = np.flatnonzero(keep)
        for start in range(0, len(rows), 256):  # chunks: never the whole array in memory
            chunk = rows[start : start + 256]
            new[start : start + len(chunk)] = old[chunk]
        new.flush()
        del old
        os.replace(part, path)
        self._arrays[name] = np.load(path, mmap_mode="r+")
        return self._arrays[name]

    def write_table(self, table: pd.DataFrame) -> None:
        table.reset_index(drop=True).to_parquet(self.tmp / TABLE, index=False)

    def write_json(self, name: str, obj: Any) -> None:
        (self.tmp / name).write_text(
            json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8"
        )

    def write_text(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text, encoding="utf-8")

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Flush arrays, write the manifest last, and move the folder into place."""
        missing = [n for n in ARRAY_NAMES if not (self.tmp / f"{n}.npy").exists()]
        if missing or not (self.tmp / TABLE).exists():
            raise StoreError(f"cannot commit store {self.key}: missing {missing or [TABLE]}")
        for arr in self._arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        self._arrays.clear()
        full = {"format_version": STORE_FORMAT_VERSION, "key": self.key, **manifest}
        self.write_json(MANIFEST, full)
        if not (self.final / MANIFEST).is_file():
            if self.final.exists():
                shutil.rmtree(self.final, ignore_errors=True)  # incomplete, without a manifest
            try:
                os.replace(self.tmp, self.final)
            except OSError:
                # Another writer renamed the same key into place between our check and rename.
                if not (self.final / MANIFEST).is_file():
                    raise
        # Else someone else finished the same store first; theirs is identical by key.
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.committed = True
        return self.final


_TMP_PREFIX = ".tmp-"
_HOST = socket.gethostname().replace("@", "_")


def remove_stale_tmp(root: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary store folders left by dead writers on this host; return them.

    Folders of other hosts (a shared filesystem) and of live processes are left alone.
    """
    removed = []
    base = Path(root)
    if not base.is_dir():
        return removed
    for p in base.iterdir():
        if not (p.is_dir() and p.name.startswith(_TMP_PREFIX)):
            continue
        parts = p.name[len(_TMP_PREFIX) :].split("@")
        if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit():
            continue
        if not pid_alive(int(parts[2])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def find_store(root: str | os.PathLike[str], key: str) -> Path | None:
    """The complete store with ``key`` under ``root``, or None."""
    path = Path(root) / key
    return path if (path / MANIFEST).is_file() else None
