"""Small wav helpers: write 16 kHz mono PCM-16 exactly, and say what is wrong with a wav file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16, rounded and clipped (ints are passed through)."""
    x = np.asarray(samples)
    if x.dtype == np.int16:
        return x
    # Converting ourselves (instead of letting libsndfile do it) keeps files byte-identical
    # across libsndfile versions.
    return np.clip(np.rint(x.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def write_pcm16(path: str | os.PathLike[str], samples: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM WAV; float input is taken as [-1, 1]."""
    data = to_pcm16(samples)
    if data.ndim != 1:
        raise ValueError(f"{path}: expected mono samples (1-D), got shape {data.shape}")
    sf.write(str(path), data, sr, subtype="PCM_16", format="WAV")


def wav_problem(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``None`` if ``path`` holds audio (any format soundfile reads); else ``(kind, message)``.

    kinds: ``missing_wav``, ``unreadable_wav``, ``empty_wav`` (zero frames or only zeros).
    """
    p = Path(path)
    if not p.is_file():
        return "missing_wav", f"audio file not found: {p}"
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError) as exc:
        return "unreadable_wav", f"cannot read audio file {p}: {exc}"
    if info.frames == 0:
        return "empty_wav", f"audio file has zero frames: {p}"
    try:
        data, _ = sf.read(str(p), dtype="int16", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        return "unreadable_wav", f"cannot read the samples of audio file {p}: {exc}"
    if not np.any(data):
        return "empty_wav", f"audio file holds only zero samples ({info.frames} frames): {p}"
    return None
