"""Corpus -> feature store: read, split by session, run the frozen encoders once, store.

    python -m data_prep.prepare --kemdy20 DIR [--audio-model ID_OR_DIR] [--text-model ID_OR_DIR]
    python -m data_prep.prepare --manifest FILE [--column ROLE=NAME] [--labels A,B,...]
                                [--neutral-label NAME] [--audio-model ...] [--text-model ...]
    python -m data_prep.prepare --demo

A store's key hashes everything that decides its contents: the corpus bytes (annotation CSVs,
transcripts, wavs), the table read from them and its split, the encoders' identities, the
length limits, ``keep_ties`` and the split seed. The key is computed before any encoder is
loaded, so a second ``prepare`` of the same inputs returns the existing store at once, and a
changed input gets a new store. Stores are written atomically (see :mod:`data_prep.store`).

Corpus fingerprint: every byte of ``annotation/*.csv`` and ``wav/**/*.{wav,txt}`` (a
manifest corpus: the manifest and every audio and transcript file it names) streamed
through sha256 (about 1.7 GB/s here, so about 1-2 s plus disk reads for KEMDy20's ~2 GB).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import paths
from data_prep.atomic import build_dir_atomic
from data_prep.device import resolve_device
from data_prep.encoders import (
    DEFAULT_AUDIO_MODEL,
    DEFAULT_TEXT_MODEL,
    EncoderError,
    build_demo_encoders,
    commit_changes,
    encoder_identity,
    identity_for_key,
    load_audio_encoder,
    load_text_encoder,
)
from data_prep.extract import ExtractionError
from data_prep.kemdy20 import CorpusError, CorpusRead, Fault, format_fault_summary, read_corpus
from data_prep.manifest import parse_columns, parse_labels, read_manifest
from data_prep.splits import SplitError, session_split
from data_prep.store import MANIFEST, StoreError, StoreWriter, find_store

# Bump when extraction changes what ends up in a store (so old stores are not reused).
# 2: text keeps the encoder's states at [PAD] positions (every transcript padded to max_tokens).
EXTRACT_VERSION = 2
TEST_FRACTION = 0.2
VAL_FRACTION = 0.125
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


class PrepareError(RuntimeError):
    """Preparing a store failed for a reason the user can fix (message says how)."""


# Everything preparing a corpus raises for a bad corpus, encoder or store (one line each);
# callers turn these into a usage error instead of a traceback.
PREPARE_ERRORS = (PrepareError, CorpusError, EncoderError, StoreError, SplitError, ExtractionError)


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    key: str
    reused: bool  # True when an existing store was found and nothing was extracted
    manifest: dict[str, Any]


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# -- identity -------------------------------------------------------------------------------
def corpus_fingerprint(root: str | os.PathLike[str]) -> dict[str, Any]:
    """sha256 over the relative paths, sizes and bytes of every corpus file the reader uses."""
    base = Path(root)
    files = sorted(
        [*base.glob("annotation/*.csv"), *base.glob("wav/**/*.wav"), *base.glob("wav/**/*.txt")]
    )
    return files_fingerprint(base, files)


def files_fingerprint(base: Path, files: list[Path]) -> dict[str, Any]:
    """sha256 over the paths (relative to ``base`` where inside it), sizes and bytes of
    ``files``, in the order given."""
    h = hashlib.sha256()
    total = 0
    for f in files:
        rel = f.relative_to(base).as_posix() if f.is_relative_to(base) else f.as_posix()
        size = f.stat().st_size
        total += size
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return {"sha256": h.hexdigest(), "files": len(files), "bytes": total}


def _table_digest(table: pd.DataFrame) -> str:
    # The reader's and the splitter's output, so a change in either code gives a new key.
    cols = ["segment_id", "session", "label", "labels", "text", "split"]
    blob = table[cols].to_csv(index=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "corpus"


def store_key(material: dict[str, Any], corpus_name: str) -> str:
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return f"{_slug(corpus_name)}-{digest[:16]}"


# -- helpers --------------------------------------------------------------------------------
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


# -- prepare --------------------------------------------------------------------------------
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
    if (corpus is None or corpus.kind == "kemdy20") and not root.is_dir():
        raise PrepareError(f"corpus folder {root} does not exist")
    read = corpus if corpus is not None else read_corpus(root)
    table = read.utterances.copy()
    n_ties = int(table["multi_label"].sum())
    if not keep_ties:
        table = table[~table["multi_label"]].reset_index(drop=True)
    where = read.source or root
    try:
        split = session_split(
            table,
            test_fraction=TEST_FRACTION,
            val_fraction=VAL_FRACTION,
            seed=split_seed,
            neutral=read.neutral_label,
            label_order=read.label_names,
        )
    except SplitError as exc:
        raise PrepareError(f"cannot split {where}: {exc}") from exc
    table["split"] = split.assign(table).to_numpy()
    label_id = {name: i for i, name in enumerate(read.label_names)}
    table["label_id"] = table["label"].map(label_id).astype("int64")

    audio_id = encoder_identity(audio_model)
    text_id = encoder_identity(text_model)
    if read.kind == "manifest":
        fingerprint = files_fingerprint(read.root, read.files)
    else:
        fingerprint = corpus_fingerprint(root)
    material = {
        "extract_version": EXTRACT_VERSION,
        "corpus": fingerprint["sha256"],
        "table": _table_digest(table),
        "audio": identity_for_key(audio_id),
        "text": identity_for_key(text_id),
        "max_frames": max_frames,
        "max_tokens": max_tokens,
        "keep_ties": keep_ties,
        "split_seed": split_seed,
        "split_fractions": [TEST_FRACTION, VAL_FRACTION],
    }
    if read.kind == "manifest":
        # The classes, their order and the neutral one decide label ids and metrics. (Only
        # here: KEMDy20's fixed classes are in its reader, and its keys stay as they were.)
        material["manifest"] = {**read.options, "label_names": list(read.label_names)}
    name = read.source.stem if read.source is not None else root.name
    key = store_key(material, name)
    return Plan(root, read, table, split, n_ties, audio_id, text_id, fingerprint, material, key)


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
    """Build (or find) the feature store of ``corpus_dir``; see the module docstring.

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
    root, read, table, key = p.root, p.read, p.table, p.key
    where = read.source or root
    _say(progress, f"read {len(read.utterances)} utterances from {where}")
    if read.faults:
        _say(progress, format_fault_summary(read.faults))
        if strict:
            raise _strict_error(read.faults, where)
    out_root = Path(stores_root).expanduser().resolve() if stores_root else paths.stores_root()

    existing = find_store(out_root, key)
    if existing is not None:  # fast path: no encoder is loaded
        manifest = json.loads((existing / MANIFEST).read_text(encoding="utf-8"))
        if strict and manifest.get("num_faults", 0):
            raise PrepareError(
                f"--strict: store {existing} was prepared with {manifest['num_faults']} "
                f"faulty utterance(s); see {existing / 'faults.csv'}"
            )
        _say(progress, f"store {key} already prepared; nothing to extract")
        for recorded in manifest.get("encoders", {}).values():
            note = commit_changes(recorded)
            if note:
                _say(progress, note)
        return PrepareResult(existing, key, True, manifest)

    dev = resolve_device(device)
    _say(progress, f"loading encoders on {dev}: audio {audio_model}, text {text_model}")
    audio_enc = load_audio_encoder(audio_model, device=dev, identity=p.audio_id)
    text_enc = load_text_encoder(text_model, device=dev, identity=p.text_id)

    from data_prep.extract import extract_audio, extract_text

    faults = _faults_frame(read.faults, "read")
    n = len(table)
    with StoreWriter(out_root, key) as writer:
        audio = writer.create_array("audio", (n, max_frames, audio_enc.dim), np.float16)
        audio_len = writer.create_array("audio_len", (n,), np.int32)
        bad = extract_audio(
            audio_enc,
            table["wav_path"].tolist(),
            audio,
            audio_len,
            max_frames=max_frames,
            batch_size=batch_size,
            progress=progress,
            compile=compile,
        )
        if bad:
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
            _say(progress, "while extracting: " + format_fault_summary(lost))
            if strict:
                raise _strict_error(lost, where)
            faults = pd.concat([faults, _faults_frame(lost, "extract")], ignore_index=True)
            keep = np.ones(n, dtype=bool)
            keep[[f.row for f in bad]] = False
            writer.select_rows("audio", keep)
            writer.select_rows("audio_len", keep)
            table = table[keep].reset_index(drop=True)
            n = len(table)
        text = writer.create_array("text", (n, max_tokens, text_enc.dim), np.float16)
        text_len = writer.create_array("text_len", (n,), np.int32)
        text_pooled = writer.create_array("text_pooled", (n, text_enc.dim), np.float16)
        extract_text(
            text_enc,
            table["text"].tolist(),
            text,
            text_len,
            text_pooled,
            max_tokens=max_tokens,
            batch_size=max(32, batch_size),
            progress=progress,
            compile=compile,
        )
        writer.write_table(table[TABLE_COLUMNS])
        writer.write_text("faults.csv", faults.to_csv(index=False))
        writer.write_json(
            "split.json",
            {**p.split.to_dict(), "test_fraction": TEST_FRACTION, "val_fraction": VAL_FRACTION},
        )
        manifest = {
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "corpus": {
                "kind": read.kind,
                "path": str(read.source or root),
                "name": read.source.stem if read.source is not None else root.name,
                **{f"fingerprint_{k}": v for k, v in p.fingerprint.items()},
            },
            # as loaded: a hub id's commit is known once it is downloaded (not in the key)
            "encoders": {"audio": audio_enc.identity, "text": text_enc.identity},
            "max_frames": max_frames,
            "max_tokens": max_tokens,
            "audio_dim": audio_enc.dim,
            "text_dim": text_enc.dim,
            "audio_frame_ms": 1000 * audio_enc.frame_stride / audio_enc.sampling_rate,
            "text_pooled": "pooler_output" if text_enc.has_pooler else "cls",
            # label_id = position here; models, metrics and reports follow this list.
            "labels": list(read.label_names),
            # The class the seed's micro-F1 leaves out; null: that metric is not computed.
            "neutral_label": read.neutral_label,
            "session_names": {str(k): v for k, v in sorted(read.session_names.items())},
            "num_utterances": n,
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
        path = writer.commit(manifest)
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    return PrepareResult(path, key, False, manifest)


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


# -- demo -----------------------------------------------------------------------------------
def _demo_source_digest() -> str:
    # The demo corpus is a function of demo.py (and its helpers): regenerate when they change.
    import data_prep.audio as audio_mod
    import data_prep.demo as demo_mod

    h = hashlib.sha256()
    for mod in (demo_mod, audio_mod):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:8]


# The demo's utterances last at most 4 s (200 frames of 20 ms) and its transcripts need fewer
# than 16 word pieces, so its store keeps exactly that: padding to the seed's 512 x 128 would
# make every demo trial several times slower while adding only zeros.
DEMO_MAX_FRAMES = 200
DEMO_MAX_TOKENS = 16


def demo_corpus(sessions: int = 16, seed: int = 0, utterances_per_script: int = 7) -> Path:
    """Write (once) the demo corpus under ``$CASE_TUNE_HOME/corpora`` and return its root."""
    from data_prep.demo import write_demo_corpus

    name = f"demo-{sessions}s{utterances_per_script}u-seed{seed}-{_demo_source_digest()}"
    return build_dir_atomic(
        paths.corpora_root() / name,
        lambda tmp: write_demo_corpus(
            tmp, sessions=sessions, seed=seed, utterances_per_script=utterances_per_script
        ),
        lambda folder: (folder / "annotation").is_dir(),
    )


def prepare_demo_store(
    stores_root: str | os.PathLike[str] | None = None,
    *,
    sessions: int = 16,
    seed: int = 0,
    utterances_per_script: int = 7,
    audio_model: str | os.PathLike[str] | None = None,
    text_model: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> PrepareResult:
    """The demo corpus, the tiny demo encoders (unless models are given) and its store."""
    if kwargs.get("max_frames") is None:
        kwargs["max_frames"] = DEMO_MAX_FRAMES
    if kwargs.get("max_tokens") is None:
        kwargs["max_tokens"] = DEMO_MAX_TOKENS
    root = demo_corpus(sessions, seed, utterances_per_script)
    read = read_corpus(root)
    if audio_model is None or text_model is None:
        audio_dir, text_dir = build_demo_encoders(
            paths.encoders_root(), read.utterances["text"].tolist(), seed
        )
        audio_model = audio_model or audio_dir
        text_model = text_model or text_dir
    return prepare_store(
        root,
        audio_model=audio_model,
        text_model=text_model,
        stores_root=stores_root,
        corpus=read,
        **kwargs,
    )


def prepare_demo(
    stores_root: str | os.PathLike[str] | None = None,
    *,
    sessions: int = 16,
    seed: int = 0,
    **kwargs: Any,
) -> Path:
    """Path of the demo feature store, built on first use and reused afterwards."""
    return prepare_demo_store(stores_root, sessions=sessions, seed=seed, **kwargs).path


# -- command line ---------------------------------------------------------------------------
def _summary(result: PrepareResult) -> str:
    m = result.manifest
    counts = m["counts"]
    lines = [
        f"feature store: {result.path}" + ("  (already prepared, reused)" if result.reused else ""),
        f"key: {result.key}",
        f"utterances: {m['num_utterances']}  faults: {m['num_faults']}  "
        f"audio {m['max_frames']} x {m['audio_dim']}, text {m['max_tokens']} x {m['text_dim']} (fp16)",
    ]
    labels = m["labels"]
    width = max(5, *(len(lab) for lab in labels))
    lines.append(
        "  "
        + " " * 6
        + " ".join(f"{lab[:width]:>{width}}" for lab in labels)
        + f" {'total':>{width}}"
    )
    for split in ("train", "val", "test"):
        row = [counts[split].get(lab, 0) for lab in labels]
        lines.append(
            f"  {split:<6}" + " ".join(f"{v:>{width}}" for v in row) + f" {sum(row):>{width}}"
        )
    lines += _missing_lines(m)
    lines.append(f"next: python -m search.run --space case --data {result.path}")
    return "\n".join(lines)


def _missing_lines(manifest: dict[str, Any]) -> list[str]:
    """What a small corpus lacks per split, so nobody mistakes a 0 F1 for a bad model."""
    missing = {k: v for k, v in (manifest.get("missing_classes") or {}).items() if v}
    lines = [f"  missing from {split}: {', '.join(labs)}" for split, labs in missing.items()]
    if lines:
        how = (
            "no session split could put every class in every split (see split.json)"
            if manifest.get("split_relaxed")
            else "a class seen in one session only can be in one split only"
        )
        lines.insert(0, f"note: some classes are absent from a split: {how}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Turn a KEMDy20 folder, a CSV/JSONL manifest of any corpus, or the demo "
        "corpus into a feature store.",
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--kemdy20", metavar="DIR", help="KEMDy20 root (holds annotation/ and wav/)")
    src.add_argument(
        "--manifest",
        metavar="FILE",
        help="a .csv or .jsonl manifest, one utterance per row (see data_prep/manifest.py)",
    )
    src.add_argument(
        "--demo", action="store_true", help="the built-in demo corpus and tiny encoders"
    )
    ap.add_argument(
        "--audio-model",
        metavar="ID_OR_DIR",
        default=None,
        help=f"wav2vec2-family hub id or local dir (default {DEFAULT_AUDIO_MODEL}; demo: tiny)",
    )
    ap.add_argument(
        "--text-model",
        metavar="ID_OR_DIR",
        default=None,
        help=f"BERT-family hub id or local dir (default {DEFAULT_TEXT_MODEL}; demo: tiny)",
    )
    ap.add_argument(
        "--out",
        metavar="STORES_ROOT",
        default=None,
        help="folder holding stores (default $CASE_TUNE_HOME/stores)",
    )
    ap.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help=f"audio frames kept, 20 ms each (default 512; demo {DEMO_MAX_FRAMES})",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"text tokens kept, with [CLS]/[SEP] (default 128; demo {DEMO_MAX_TOKENS})",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="utterances per encoder batch")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="run the encoders through torch.compile (needs a C++ compiler on CPU). Same "
        "features within fp16 rounding, same store. Compiling first costs about 1-2 min on "
        "this CPU (less once inductor's on-disk cache holds the kernels), so it can pay only "
        "on large corpora (e.g. real KEMDy20's ~13k utterances, CPU or GPU), not on the demo; "
        "see results/bench.md. If compiling fails, a warning is printed and extraction runs "
        "without it",
    )
    ap.add_argument(
        "--column",
        action="append",
        metavar="ROLE=NAME",
        help="manifest only: the column of a role (repeatable). Roles and defaults: "
        "audio, text, text_path, label, session, speaker, utterance_id, valence, arousal "
        "(each named as itself)",
    )
    ap.add_argument(
        "--labels",
        metavar="A,B,...",
        help="manifest only: the classes, in this order; other labels are faults "
        "(default: the labels found, sorted)",
    )
    ap.add_argument(
        "--neutral-label",
        metavar="NAME",
        help="manifest only: the neutral class, left out of the seed's micro-F1 "
        "(default: none, and that metric is not computed)",
    )
    ap.add_argument("--keep-ties", action="store_true", help="keep multi-label (tied vote) rows")
    ap.add_argument("--strict", action="store_true", help="any faulty utterance is an error")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    ap.add_argument("--sessions", type=int, default=16, help="demo only: number of sessions")
    ap.add_argument(
        "--utterances-per-script",
        type=int,
        default=7,
        help="demo only: turns per speaker and script",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars or notes on stderr")
    return ap


def _check_counts(args: argparse.Namespace) -> None:
    """Lengths, batch sizes and counts must be positive: 0 is an error, not 'the default'."""
    minimum = {
        "max_frames": 1,
        "max_tokens": 3,
        "batch_size": 1,
        "sessions": 3,
        "utterances_per_script": 1,
        "threads": 1,
    }
    for name, low in minimum.items():
        value = getattr(args, name)
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise PrepareError(f"{flag} must be >= {low} (got {value})")


def _manifest_options(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest reader's flags, checked; they mean nothing for the other sources."""
    given = [
        f
        for f, v in (
            ("--column", args.column),
            ("--labels", args.labels),
            ("--neutral-label", args.neutral_label),
        )
        if v is not None
    ]
    if args.manifest is None:
        if given:
            raise PrepareError(
                f"{', '.join(given)}: only with --manifest (KEMDy20's and the "
                "demo's classes are fixed)"
            )
        return {}
    try:
        return {
            "columns": parse_columns(args.column),
            "labels": parse_labels(args.labels),
            "neutral_label": args.neutral_label,
        }
    except ValueError as exc:
        raise PrepareError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_counts(args)
        reader_options = _manifest_options(args)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    common = {
        "stores_root": args.out,
        "max_frames": args.max_frames,
        "max_tokens": args.max_tokens,
        "keep_ties": args.keep_ties,
        "strict": args.strict,
        "split_seed": args.split_seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "progress": not args.quiet,
        "compile": args.compile,
    }
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise PrepareError(f"--threads must be >= 1 (got {args.threads})")
            import torch

            # On a shared machine fewer threads than cores is often faster (less spinning).
            torch.set_num_threads(args.threads)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise PrepareError("--device cuda: no CUDA device is available (use --device cpu)")
        if args.demo:
            result = prepare_demo_store(
                args.out,
                sessions=args.sessions,
                utterances_per_script=args.utterances_per_script,
                audio_model=args.audio_model,
                text_model=args.text_model,
                **{k: v for k, v in common.items() if k != "stores_root"},
            )
        else:
            common["max_frames"] = 512 if args.max_frames is None else args.max_frames
            common["max_tokens"] = 128 if args.max_tokens is None else args.max_tokens
            common["audio_model"] = args.audio_model or DEFAULT_AUDIO_MODEL
            common["text_model"] = args.text_model or DEFAULT_TEXT_MODEL
            if args.manifest is not None:
                result = prepare_manifest_store(args.manifest, **reader_options, **common)
            else:
                result = prepare_store(args.kemdy20, **common)
    except PREPARE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no store was written", file=sys.stderr)
        return 130
    print(_summary(result))
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the writer removes its temporary folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
