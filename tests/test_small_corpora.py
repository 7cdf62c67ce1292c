"""Small and uneven corpora: any corpus of 3+ sessions is split, the balance rule relaxed the
least it can, and what each split lacks is recorded and said (issue 14)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.audio import write_pcm16
from data_prep.labels import LABELS
from data_prep.splits import SplitError, balanced_carve, session_split
from models.metrics import absent_note, classification_metrics

ROOT = Path(__file__).resolve().parent.parent
HEADER = [
    ["Numb", "Wav", " ", "Segment ID", "Total Evaluation", " ", " "] + ["Eval", " ", " "] * 10,
    [" ", "start", "end", " ", "Emotion", "Valence", "Arousal"] + ["Emotion", "V", "A"] * 10,
]


def write_random_corpus(
    root: Path, sessions: int = 10, per_session: int = 8, seed: int = 0
) -> Path:
    """KEMDy20 layout, random labels, one tie row, one missing and one empty wav."""
    rng = np.random.default_rng(seed)
    (root / "annotation").mkdir(parents=True)
    for s in range(1, sessions + 1):
        rows = []
        folder = root / "wav" / f"Session{s:02d}"
        folder.mkdir(parents=True)
        for i in range(1, per_session + 1):
            seg = f"Sess{s:02d}_script01_User{2 * s - 1:03d}F_{i:03d}"
            label = str(rng.choice(LABELS))
            if (s, i) == (1, 1):
                label = "happy;neutral"  # a tie: dropped unless --keep-ties
            rows.append(["1", "0.0", "1.0", seg, label, "3.0", "3.1"] + ["neutral", "3", "3"] * 10)
            (folder / f"{seg}.txt").write_bytes(f"문장 {s} {i}\n".encode("cp949"))
            if (s, i) == (2, 1):
                continue  # missing wav
            n = 0 if (s, i) == (2, 2) else 4000 + 100 * i  # one empty wav
            write_pcm16(folder / f"{seg}.wav", 0.3 * np.sin(np.arange(n) * (0.05 + 0.01 * i)))
        text = "\n".join(",".join(r) for r in HEADER + rows) + "\n"
        (root / "annotation" / f"Sess{s:02d}_eval.csv").write_text(text, encoding="utf-8")
    return root


def random_table(sessions: int, per_session: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "session": np.repeat(np.arange(1, sessions + 1), per_session),
            "label": rng.choice(LABELS, sessions * per_session),
            "multi_label": False,
        }
    )


@pytest.mark.parametrize("sessions", [3, 4, 10])
def test_any_corpus_of_three_sessions_splits(sessions: int) -> None:
    table = random_table(sessions, 8, seed=sessions)
    split = session_split(table)
    assert split.train and split.val and split.test
    assert sorted(split.train + split.val + split.test) == list(range(1, sessions + 1))
    # Relaxed only when needed: a strict cut leaves no class out of any split here (every
    # class of these tables is in 2+ sessions).
    assert split.relaxed or not any(split.missing.values())
    # What each split lacks is exactly what its rows lack, and split.json says so.
    where = split.assign(table)
    for name in ("train", "val", "test"):
        have = set(table.loc[where == name, "label"])
        assert split.missing[name] == [c for c in LABELS if c not in have], name
    d = json.loads(json.dumps(split.to_dict()))
    assert d["relaxed"] is split.relaxed and d["missing_classes"] == split.missing
    assert session_split(table).to_dict() == d  # deterministic


def test_relaxation_is_the_least_possible() -> None:
    # Class "fear" is in sessions 1 and 2 only; holding out one of 4 sessions can put it on
    # both sides (hold 1 or 2), "angry" (sessions 3, 4) then stays one-sided only if it must.
    counts = pd.DataFrame(
        {"neutral": [5, 5, 5, 5], "fear": [1, 1, 0, 0], "angry": [0, 0, 1, 1], "sad": [1, 0, 0, 0]},
        index=[1, 2, 3, 4],
    )
    carve = balanced_carve(counts, 3, random.Random(0))
    # No single held-out session has both fear and angry: one of them must be one-sided, and
    # only one (not both, which widening a tolerance would not notice).
    assert carve.relaxed and len(carve.one_sided) == 1
    assert carve.one_sided[0] in ("fear", "angry")
    # A feasible pool is not relaxed: hold out 2 sessions, one fear and one angry session.
    strict = balanced_carve(counts, 2, random.Random(0))
    assert not strict.relaxed and strict.one_sided == []
    assert {1, 2} & set(strict.held_out) and {3, 4} & set(strict.held_out)


def test_fewer_than_three_sessions_is_a_clear_error() -> None:
    with pytest.raises(SplitError, match="need at least 3 sessions"):
        session_split(random_table(2, 8, seed=0))


def test_metrics_over_a_split_missing_a_class_say_so() -> None:
    target = np.array([0, 0, 1, 1, 2, 2])  # classes 3..6 absent
    pred = target.copy()
    m = classification_metrics(pred, target, "val")
    assert m["val_macro_f1"] == pytest.approx(3 / 7)  # the convention: absent classes score 0
    assert m["val_macro_f1_present"] == pytest.approx(1.0)  # over the 3 classes present
    note = absent_note(target, "val")
    assert note and "val split has no rows of" in note and "val_macro_f1_present" in note
    full = classification_metrics(np.arange(7), np.arange(7), "val")
    assert "val_macro_f1_present" not in full and absent_note(np.arange(7), "val") is None


@pytest.fixture(scope="module")
def encoders(demo_store: Path) -> tuple[str, str]:
    m = json.loads((demo_store / "manifest.json").read_text())
    return m["encoders"]["audio"]["path"], m["encoders"]["text"]["path"]


def _prepare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_prep.prepare", *args, "--threads", "1", "--quiet"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_prepare_splits_a_ten_session_random_corpus(tmp_path: Path, encoders) -> None:
    corpus = write_random_corpus(tmp_path / "corpus")
    audio, text = encoders
    out = tmp_path / "stores"
    proc = _prepare(
        "--kemdy20",
        str(corpus),
        "--audio-model",
        audio,
        "--text-model",
        text,
        "--out",
        str(out),
        "--max-frames",
        "64",
        "--max-tokens",
        "16",
    )
    assert proc.returncode == 0, proc.stderr
    (store,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    split = json.loads((store / "split.json").read_text())
    manifest = json.loads((store / "manifest.json").read_text())
    assert split["relaxed"] is True and manifest["split_relaxed"] is True
    assert manifest["missing_classes"] == split["missing_classes"]
    table = pd.read_parquet(store / "utterances.parquet")
    for name in ("train", "val", "test"):
        have = set(table.loc[table["split"] == name, "label"])
        assert split["missing_classes"][name] == [c for c in LABELS if c not in have]
        if split["missing_classes"][name]:
            assert (
                f"missing from {name}: {', '.join(split['missing_classes'][name])}" in proc.stdout
            )
    assert "no session split could put every class in every split" in proc.stdout
    assert len(table) == 10 * 8 - 3  # the tie, the missing and the empty wav are skipped


def test_prepare_two_sessions_is_one_line_error(tmp_path: Path, encoders) -> None:
    corpus = write_random_corpus(tmp_path / "corpus", sessions=2)
    audio, text = encoders
    out = tmp_path / "stores"
    proc = _prepare(
        "--kemdy20", str(corpus), "--audio-model", audio, "--text-model", text, "--out", str(out)
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "need at least 3 sessions" in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
