"""A feature store's key: what decides its contents, hashed before any encoder is loaded.

The key hashes the corpus bytes (annotation CSVs, transcripts, wavs; a manifest corpus: the
manifest and every audio and transcript file it names), the table read from them and its
split, the encoders' identities, the length limits, ``keep_ties`` and the split seed. The
same inputs give the same key (and the existing store); a changed input gets a new store.

Corpus fingerprint: every byte streamed through sha256 (about 1.7 GB/s here, so about 1-2 s
plus disk reads for KEMDy20's ~2 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

# Bump when extraction changes what ends up in a store (so old stores are not reused).
# 2: text keeps the encoder's states at [PAD] positions (every transcript padded to max_tokens).
EXTRACT_VERSION = 2
TEST_FRACTION = 0.2
VAL_FRACTION = 0.125


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


def table_digest(table: pd.DataFrame) -> str:
    """sha256 of the reader's and the splitter's output, so a change in either code gives a
    new key."""
    cols = ["segment_id", "session", "label", "labels", "text", "split"]
    blob = table[cols].to_csv(index=False).encode()
    return hashlib.sha256(blob).hexdigest()


def key_material(
    *,
    fingerprint: dict[str, Any],
    table: pd.DataFrame,
    audio: dict[str, Any],
    text: dict[str, Any],
    max_frames: int,
    max_tokens: int,
    keep_ties: bool,
    split_seed: int,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the key hashes (``audio``/``text``: the encoders' key identities)."""
    material = {
        "extract_version": EXTRACT_VERSION,
        "corpus": fingerprint["sha256"],
        "table": table_digest(table),
        "audio": audio,
        "text": text,
        "max_frames": max_frames,
        "max_tokens": max_tokens,
        "keep_ties": keep_ties,
        "split_seed": split_seed,
        "split_fractions": [TEST_FRACTION, VAL_FRACTION],
    }
    if manifest is not None:
        # Only for manifest corpora: KEMDy20's keys stay as they were before manifests.
        material["manifest"] = manifest
    return material


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:40] or "corpus"


def store_key(material: dict[str, Any], corpus_name: str) -> str:
    """``<corpus name>-<16 hex digits of the material's sha256>``."""
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return f"{_slug(corpus_name)}-{digest[:16]}"
