"""A tiny manifest corpus for tests: 4 classes, 8 sessions, mixed sample rates and channel
counts, and exactly one row of each fault the manifest reader reports."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = ("calm", "joy", "anger", "grief")  # the --labels order (not sorted on purpose)
SESSIONS = [f"dlg-{c}" for c in "abcdefgh"]  # names, not numbers: numbered 1..8 sorted
PER_SESSION = 6
# (rate, channels) cycling over the rows: every row's audio needs converting but one in five
FORMATS = ((8000, 1), (16000, 1), (22050, 1), (44100, 2), (48000, 2))
PITCH = {"calm": 140.0, "joy": 260.0, "anger": 330.0, "grief": 110.0}

# fault kind -> the 1-based manifest line of its row (the header is line 1)
FAULT_LINES = {
    "missing_wav": 0,
    "unreadable_wav": 0,
    "empty_transcript": 0,
    "unknown_label": 0,
    "missing_column": 0,
    "duplicate_segment": 0,
    "single_utterance_session": 0,
}


def _tone(rng: np.random.Generator, label: str, rate: int, channels: int) -> np.ndarray:
    seconds = float(rng.uniform(0.3, 0.7))
    t = np.arange(int(seconds * rate)) / rate
    f0 = PITCH[label] * float(np.exp(rng.normal(0, 0.03)))
    wave = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)
    return np.stack([wave, 0.8 * wave], axis=1) if channels == 2 else wave


def write_manifest_corpus(root: Path, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Write audio/, texts/ and manifest.csv under ``root``; return the manifest and the
    line of each fault row."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    (root / "texts").mkdir()
    header = [
        "utterance_id",
        "audio",
        "text",
        "text_path",
        "label",
        "session",
        "speaker",
        "valence",
        "arousal",
    ]
    rows: list[list[str]] = []
    k = 0
    for s, session in enumerate(SESSIONS):
        for i in range(PER_SESSION):
            label = CLASSES[(s + i) % len(CLASSES)]
            rate, channels = FORMATS[k % len(FORMATS)]
            uid = f"{session}-{i:02d}"
            audio = root / "audio" / f"{uid}.{'flac' if k % 7 == 3 else 'wav'}"
            sf.write(str(audio), _tone(rng, label, rate, channels), rate)
            text, text_path = f"{label} words number {i} of {session}", ""
            if i == 0:  # transcripts as files, for some rows
                text_path = f"texts/{uid}.txt"
                (root / text_path).write_text(text + "\n", encoding="utf-8")
                text = ""
            speaker = f"{session}-spk{i % 2}"
            rows.append(
                [
                    uid,
                    audio.relative_to(root).as_posix(),
                    text,
                    text_path,
                    label,
                    session,
                    speaker,
                    f"{2.5 + 0.1 * i:.1f}",
                    "3.0",
                ]
            )
            k += 1
    lines = dict(FAULT_LINES)

    def add(kind: str, row: list[str]) -> None:
        rows.append(row)
        lines[kind] = len(rows) + 1  # the header is line 1

    good = rows[1]
    add(
        "missing_wav",
        [
            "x-missing",
            "audio/nowhere.wav",
            "calm words",
            "",
            "calm",
            "dlg-a",
            "dlg-a-spk0",
            "3",
            "3",
        ],
    )
    (root / "audio" / "garbage.wav").write_bytes(b"RIFF not really a wave file at all")
    add(
        "unreadable_wav",
        [
            "x-garbage",
            "audio/garbage.wav",
            "calm words",
            "",
            "calm",
            "dlg-b",
            "dlg-b-spk0",
            "3",
            "3",
        ],
    )
    add("empty_transcript", ["x-empty", good[1], "   ", "", "joy", "dlg-c", "dlg-c-spk0", "3", "3"])
    add(
        "unknown_label",
        ["x-label", good[1], "some words", "", "surprise", "dlg-d", "dlg-d-spk0", "3", "3"],
    )
    add("missing_column", ["x-nospeaker", good[1], "some words", "", "joy", "dlg-e", "", "3", "3"])
    add(
        "duplicate_segment", [good[0], good[1], "again", "", "joy", "dlg-f", "dlg-f-spk0", "3", "3"]
    )
    add(
        "single_utterance_session",
        ["x-alone", good[1], "alone here", "", "calm", "dlg-z", "dlg-z-spk0", "3", "3"],
    )
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return manifest, lines
