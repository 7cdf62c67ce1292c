"""Synthetic feature stores and batches for the models tests.

`make_synthetic_store` writes a real store (through `data_prep.store.StoreWriter`) whose
features carry a planted, learnable signal: every class has a random prototype in text space
and one in audio space; an utterance's real tokens / frames are prototype x strength + noise,
padding is zero as in real stores. A third of the rows carry the signal in text only, a third
in audio only, a third in both, so a fusion model can beat either modality alone. Labels are
neutral-heavy like KEMDy20.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.labels import LABELS
from data_prep.store import StoreWriter

SMALL = {"text_dim": 16, "audio_dim": 12, "max_tokens": 10, "max_frames": 24, "num_classes": 7}


def make_synthetic_store(
    root: str | Path,
    *,
    n: int = 420,
    text_dim: int = 16,
    audio_dim: int = 12,
    max_tokens: int = 10,
    max_frames: int = 24,
    strength: float = 0.6,
    neutral_fraction: float = 0.4,
    sessions: int = 10,
    val_sessions: tuple[int, ...] = (7, 8),
    test_sessions: tuple[int, ...] = (9, 10),
    seed: int = 0,
    key: str | None = None,
) -> Path:
    """Write a synthetic store under ``root`` and return its path."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    probs = np.full(k, (1 - neutral_fraction) / (k - 1))
    probs[0] = neutral_fraction
    labels = rng.choice(k, size=n, p=probs)
    mode = rng.integers(0, 3, size=n)  # 0 both, 1 text only, 2 audio only
    proto_t = rng.standard_normal((k, text_dim)).astype(np.float32)
    proto_a = rng.standard_normal((k, audio_dim)).astype(np.float32)
    text_len = rng.integers(2, max_tokens + 1, size=n).astype(np.int32)
    audio_len = rng.integers(3, max_frames + 1, size=n).astype(np.int32)
    session = 1 + np.arange(n) * sessions // n
    split = np.where(
        np.isin(session, test_sessions),
        "test",
        np.where(np.isin(session, val_sessions), "val", "train"),
    )
    key = key or f"synthetic-{n}-{text_dim}x{max_tokens}-{audio_dim}x{max_frames}-s{seed}"
    with StoreWriter(root, key) as w:
        text = w.create_array("text", (n, max_tokens, text_dim), np.float16)
        pooled = w.create_array("text_pooled", (n, text_dim), np.float16)
        audio = w.create_array("audio", (n, max_frames, audio_dim), np.float16)
        w.create_array("text_len", (n,), np.int32)[:] = text_len
        w.create_array("audio_len", (n,), np.int32)[:] = audio_len
        for i in range(n):
            st = strength if mode[i] in (0, 1) else 0.0
            sa = strength if mode[i] in (0, 2) else 0.0
            tl, al = text_len[i], audio_len[i]
            t = st * proto_t[labels[i]] + rng.standard_normal((tl, text_dim), dtype=np.float32)
            a = sa * proto_a[labels[i]] + rng.standard_normal((al, audio_dim), dtype=np.float32)
            text[i, :tl] = t
            audio[i, :al] = a
            pooled[i] = np.tanh(t.mean(axis=0))
        table = pd.DataFrame(
            {
                "segment_id": [f"Sess{s:02d}_syn_{i:05d}" for i, s in enumerate(session)],
                "session": session.astype(int),
                "script": 1,
                "speaker": [f"User{s:03d}F" for s in session],
                "gender": "F",
                "label": [LABELS[c] for c in labels],
                "label_id": labels.astype(np.int64),
                "labels": [LABELS[c] for c in labels],
                "text": "",
                "wav_path": "",
                "valence": 3.0,
                "arousal": 3.0,
                "split": split,
            }
        )
        w.write_table(table)
        w.write_json("split.json", {"kind": "synthetic"})
        return w.commit({"labels": list(LABELS), "synthetic": True})


def random_batch(
    batch_size: int,
    *,
    text_dim: int = 16,
    audio_dim: int = 12,
    max_tokens: int = 10,
    max_frames: int = 24,
    seed: int = 0,
    **_ignored,
) -> dict[str, torch.Tensor]:
    """A batch dict with random features, zero padding and random true lengths."""
    g = torch.Generator().manual_seed(seed)
    text_len = torch.randint(1, max_tokens + 1, (batch_size,), generator=g)
    audio_len = torch.randint(1, max_frames + 1, (batch_size,), generator=g)
    text = torch.randn(batch_size, max_tokens, text_dim, generator=g)
    audio = torch.randn(batch_size, max_frames, audio_dim, generator=g)
    text *= (torch.arange(max_tokens) < text_len[:, None]).unsqueeze(-1)
    audio *= (torch.arange(max_frames) < audio_len[:, None]).unsqueeze(-1)
    return {
        "text": text,
        "text_len": text_len,
        "text_pooled": torch.randn(batch_size, text_dim, generator=g),
        "audio": audio,
        "audio_len": audio_len,
    }


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, oversubscribed
    machine two OpenMP threads spin-wait for each other (20x slower measured here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
