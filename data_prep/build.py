"""Build (or find) a feature store: plan it, reuse an existing one of the same key, else run
the frozen encoders once and write the store atomically (see :mod:`data_prep.store`)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import paths
from data_prep.device import resolve_device
from data_prep.encoders import (
    DEFAULT_AUDIO_MODEL,
    DEFAULT_TEXT_MODEL,
    commit_changes,
    load_audio_encoder,
    load_text_encoder,
)
from data_prep.kemdy20 import CorpusRead, Fault, format_fault_summary
from data_prep.manifest import read_manifest
from data_prep.plan import Plan, PrepareError, plan
from data_prep.store import MANIFEST, StoreWriter, find_store
from data_prep.store_key import EXTRACT_VERSION, TEST_FRACTION, VAL_FRACTION

FAULT_COLUMNS = ["file", "row", "segment_id", "kind", "message", "stage"]
TABLE_COLUMNS = [
    "segment_id",
    "session",
    "script",
    "speaker",
    "gender",
    "label",
    "label_id",
    "labels",
    "multi_label",
    "text",
    "wav_path",
    "valence",
    "arousal",
    "csv_file",
    "csv_row",
    "split",
]


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    key: str
    reused: bool  # True when an existing store was found and nothing was extracted
    manifest: dict[str, Any]


@dataclass(frozen=True)
class _Extraction:
    """How the encoders run: execution details, none of them in the store key but the
    lengths (which the plan hashed already)."""

    max_frames: int
    max_tokens: int
    batch_size: int
    strict: bool
    progress: bool
    compile: bool


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def prepare_store(
    corpus_dir: str | os.PathLike[str],
    *,
    audio_model: str | os.PathLike[str] = DEFAULT_AUDIO_MODEL,
    text_model: str | os.PathLike[str] = DEFAULT_TEXT_MODEL,
    stores_root: str | os.PathLike[str] | None = None,
    max_frames: int = 512,
    max_tokens: int = 128,
    keep_ties: bool = False,
    strict: bool = False,
    split_seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
    corpus: CorpusRead | None = None,
    compile: bool = False,
) -> PrepareResult:
    """Build (or find) the feature store of ``corpus_dir``; see :mod:`data_prep.prepare`.

    ``compile`` runs both encoders through ``torch.compile`` (see :mod:`data_prep.extract`):
    an execution detail like ``batch_size``, so it is not part of the store key.
    """
    if batch_size < 1:
        raise PrepareError(f"batch_size must be >= 1 (got {batch_size})")
    started = time.perf_counter()
    p = plan(
        corpus_dir,
        audio_model=audio_model,
        text_model=text_model,
        max_frames=max_frames,
        max_tokens=max_tokens,
        keep_ties=keep_ties,
        split_seed=split_seed,
        corpus=corpus,
    )
    run = _Extraction(max_frames, max_tokens, batch_size, strict, progress, compile)
    _report_read(p, run)
    out_root = Path(stores_root).expanduser().resolve() if stores_root else paths.stores_root()
    existing = find_store(out_root, p.key)
    if existing is not None:  # fast path: no encoder is loaded
        return _reuse(existing, p.key, run)
    encoders = _load_encoders(p, audio_model, text_model, device, progress)
    with StoreWriter(out_root, p.key) as writer:
        path = _extract_and_commit(writer, p, encoders, run, keep_ties, split_seed, started)
    return PrepareResult(path, p.key, False, _read_store_manifest(path))


def _read_store_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def _report_read(p: Plan, run: _Extraction) -> None:
    """Say what was read; with --strict, a faulty utterance ends it here."""
    _say(run.progress, f"read {len(p.read.utterances)} utterances from {p.where}")
    if p.read.faults:
        _say(run.progress, format_fault_summary(p.read.faults))
        if run.strict:
            raise _strict_error(p.read.faults, p.where)


def _reuse(existing: Path, key: str, run: _Extraction) -> PrepareResult:
    """The store of this key, prepared before (checked against --strict)."""
    manifest = _read_store_manifest(existing)
    if run.strict and manifest.get("num_faults", 0):
        raise PrepareError(
            f"--strict: store {existing} was prepared with {manifest['num_faults']} "
            f"faulty utterance(s); see {existing / 'faults.csv'}"
        )
    _say(run.progress, f"store {key} already prepared; nothing to extract")
    for recorded in manifest.get("encoders", {}).values():
        note = commit_changes(recorded)
        if note:
            _say(run.progress, note)
    return PrepareResult(existing, key, True, manifest)


def _load_encoders(
    p: Plan,
    audio_model: str | os.PathLike[str],
    text_model: str | os.PathLike[str],
    device: str | None,
    progress: bool,
) -> tuple[Any, Any]:
    dev = resolve_device(device)
    _say(progress, f"loading encoders on {dev}: audio {audio_model}, text {text_model}")
    audio_enc = load_audio_encoder(audio_model, device=dev, identity=p.audio_id)
    text_enc = load_text_encoder(text_model, device=dev, identity=p.text_id)
    return audio_enc, text_enc


def _extract_and_commit(
    writer: StoreWriter,
    p: Plan,
    encoders: tuple[Any, Any],
    run: _Extraction,
    keep_ties: bool,
    split_seed: int,
    started: float,
) -> Path:
    """Audio first (utterances whose audio fails are dropped before text), then text, then
    the table, faults, split and manifest; returns the committed store's path."""
    audio_enc, text_enc = encoders
    table, lost = _extract_audio(writer, p, audio_enc, run)
    faults = _faults_frame(p.read.faults, "read")
    if lost:
        faults = pd.concat([faults, _faults_frame(lost, "extract")], ignore_index=True)
    _extract_text(writer, table, text_enc, run)
    writer.write_table(table[TABLE_COLUMNS])
    writer.write_text("faults.csv", faults.to_csv(index=False))
    writer.write_json(
        "split.json",
        {**p.split.to_dict(), "test_fraction": TEST_FRACTION, "val_fraction": VAL_FRACTION},
    )
    manifest = _store_manifest(p, table, faults, encoders, run, keep_ties, split_seed, started)
    return writer.commit(manifest)


def _extract_audio(
    writer: StoreWriter, p: Plan, audio_enc: Any, run: _Extraction
) -> tuple[pd.DataFrame, list[Fault]]:
    """Audio features of every row; rows whose audio fails are dropped from the arrays and
    the table (returned with their faults)."""
    from data_prep.extract import extract_audio

    table = p.table
    n = len(table)
    audio = writer.create_array("audio", (n, run.max_frames, audio_enc.dim), np.float16)
    audio_len = writer.create_array("audio_len", (n,), np.int32)
    bad = extract_audio(
        audio_enc,
        table["wav_path"].tolist(),
        audio,
        audio_len,
        max_frames=run.max_frames,
        batch_size=run.batch_size,
        progress=run.progress,
        compile=run.compile,
    )
    if not bad:
        return table, []
    lost = [
        Fault(
            str(table.at[f.row, "csv_file"]),
            int(table.at[f.row, "csv_row"]),
            str(table.at[f.row, "segment_id"]),
            f.kind,
            f.message,
        )
        for f in bad
    ]
    _say(run.progress, "while extracting: " + format_fault_summary(lost))
    if run.strict:
        raise _strict_error(lost, p.where)
    keep = np.ones(n, dtype=bool)
    keep[[f.row for f in bad]] = False
    writer.select_rows("audio", keep)
    writer.select_rows("audio_len", keep)
    return table[keep].reset_index(drop=True), lost


def _extract_text(
    writer: StoreWriter, table: pd.DataFrame, text_enc: Any, run: _Extraction
) -> None:
    from data_prep.extract import extract_text

    n = len(table)
    text = writer.create_array("text", (n, run.max_tokens, text_enc.dim), np.float16)
    text_len = writer.create_array("text_len", (n,), np.int32)
    text_pooled = writer.create_array("text_pooled", (n, text_enc.dim), np.float16)
    extract_text(
        text_enc,
        table["text"].tolist(),
        text,
        text_len,
        text_pooled,
        max_tokens=run.max_tokens,
        batch_size=max(32, run.batch_size),
        progress=run.progress,
        compile=run.compile,
    )


def _store_manifest(
    p: Plan,
    table: pd.DataFrame,
    faults: pd.DataFrame,
    encoders: tuple[Any, Any],
    run: _Extraction,
    keep_ties: bool,
    split_seed: int,
    started: float,
) -> dict[str, Any]:
    audio_enc, text_enc = encoders
    read = p.read
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "corpus": {
            "kind": read.kind,
            "path": str(p.where),
            "name": p.name,
            **{f"fingerprint_{k}": v for k, v in p.fingerprint.items()},
        },
        # as loaded: a hub id's commit is known once it is downloaded (not in the key)
        "encoders": {"audio": audio_enc.identity, "text": text_enc.identity},
        "max_frames": run.max_frames,
        "max_tokens": run.max_tokens,
        "audio_dim": audio_enc.dim,
        "text_dim": text_enc.dim,
        "audio_frame_ms": 1000 * audio_enc.frame_stride / audio_enc.sampling_rate,
        "text_pooled": "pooler_output" if text_enc.has_pooler else "cls",
        # label_id = position here; models, metrics and reports follow this list.
        "labels": list(read.label_names),
        # The class the seed's micro-F1 leaves out; null: that metric is not computed.
        "neutral_label": read.neutral_label,
        "session_names": {str(k): v for k, v in sorted(read.session_names.items())},
        "num_utterances": len(table),
        "counts": _counts(table, read.label_names),
        # Small corpora: classes no session split could put in every split (split.json
        # says how the cut was relaxed).
        "missing_classes": p.split.missing,
        "split_relaxed": p.split.relaxed,
        "num_faults": len(faults),
        "num_ties": p.n_ties,
        "keep_ties": keep_ties,
        "split_seed": split_seed,
        "extract_version": EXTRACT_VERSION,
        "key_material": p.material,
        "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _faults_frame(faults: list[Fault], stage: str) -> pd.DataFrame:
    rows = [
        {
            "file": f.file,
            "row": f.row,
            "segment_id": f.segment_id,
            "kind": f.kind,
            "message": f.message,
            "stage": stage,
        }
        for f in faults
    ]
    return pd.DataFrame(rows, columns=FAULT_COLUMNS)


def _counts(table: pd.DataFrame, labels: tuple[str, ...]) -> dict[str, dict[str, int]]:
    return {
        split: {
            lab: int(((table["split"] == split) & (table["label"] == lab)).sum()) for lab in labels
        }
        for split in ("train", "val", "test")
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("case-tune", "torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _strict_error(faults: list[Fault], root: Path) -> PrepareError:
    first = faults[0]
    more = f" (and {len(faults) - 1} more, listed above)" if len(faults) > 1 else ""
    return PrepareError(
        f"--strict: {len(faults)} faulty utterance(s) in {root}: first at {first.file} line "
        f"{first.row}: {first.segment_id} [{first.kind}] {first.message}{more}"
    )


def prepare(corpus_dir: str | os.PathLike[str], **options: Any) -> Path:
    """Build (or find) the feature store of a KEMDy20-format folder; return its path.

    Same as :func:`prepare_store` (same keyword options), which also says whether the store
    was reused.
    """
    return prepare_store(corpus_dir, **options).path


def prepare_manifest_store(
    manifest: str | os.PathLike[str],
    *,
    columns: dict[str, str] | None = None,
    labels: tuple[str, ...] | list[str] | None = None,
    neutral_label: str | None = None,
    **options: Any,
) -> PrepareResult:
    """Build (or find) the feature store of a corpus listed in a CSV/JSONL manifest
    (:mod:`data_prep.manifest`); other options as :func:`prepare_store`."""
    read = read_manifest(manifest, columns=columns, labels=labels, neutral_label=neutral_label)
    return prepare_store(read.root, corpus=read, **options)
