"""The demo: its corpus (written once under ``$CASE_TUNE_HOME/corpora``), its tiny encoders
and its feature store, which `search.run` and `models.train` use when given no data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from data_prep import paths
from data_prep.atomic import build_dir_atomic
from data_prep.build import PrepareResult, prepare_store
from data_prep.encoders import build_demo_encoders
from data_prep.kemdy20 import read_corpus

# The demo's utterances last at most 4 s (200 frames of 20 ms) and its transcripts need fewer
# than 16 word pieces, so its store keeps exactly that: padding to the seed's 512 x 128 would
# make every demo trial several times slower while adding only zeros.
DEMO_MAX_FRAMES = 200
DEMO_MAX_TOKENS = 16


def _demo_source_digest() -> str:
    # The demo corpus is a function of demo.py (and its helpers): regenerate when they change.
    import data_prep.audio as audio_mod
    import data_prep.demo as demo_mod

    h = hashlib.sha256()
    for mod in (demo_mod, audio_mod):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:8]


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
