"""The demo corpus: KEMDy20's exact layout and encodings, determinism, and a learnable signal."""

from __future__ import annotations

import csv
import hashlib
import os
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data_prep.demo import RATERS, majority_label, write_demo_corpus
from data_prep.kemdy20 import parse_segment_id, read_corpus
from data_prep.labels import LABELS, NEUTRAL
from data_prep.splits import session_split

SEG_RE = re.compile(r"^Sess\d\d_script\d\d_User\d{3}[MF]_\d{3}$")


def _demo(tmp_path_factory, name: str, **kwargs):
    """One corpus per parameter set per test session (the basetemp is shared)."""
    root = tmp_path_factory.getbasetemp() / f"demo-{name}"
    if not (root / "annotation").is_dir():
        tmp = tmp_path_factory.mktemp(f"building-{name}")
        write_demo_corpus(tmp / "c", **kwargs)
        os.replace(tmp / "c", root)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _demo(tmp_path_factory, "small", sessions=4, utterances_per_script=3, seed=5)


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    return _demo(tmp_path_factory, "default")


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _hashes(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_encodings(small) -> None:
    assert sorted(p.name for p in (small / "annotation").iterdir()) == [
        f"Sess{s:02d}_eval.csv" for s in range(1, 5)
    ]
    assert sorted(p.name for p in (small / "wav").iterdir()) == [
        f"Session{s:02d}" for s in range(1, 5)
    ]
    tags = 0
    for s in range(1, 5):
        rows = _rows(small / "annotation" / f"Sess{s:02d}_eval.csv")
        top, sub = rows[0], rows[1]
        assert top[:5] == ["Numb", "Wav", " ", "Segment ID", "Total Evaluation"]
        assert [top[7 + 3 * i] for i in range(10)] == list(RATERS)
        assert sub[4:7] == ["Emotion", "Valence", "Arousal"] * 1
        assert all(len(r) == 37 for r in rows)
        data = rows[2:]
        assert len(data) == 2 * 6 * 3
        assert [r[0] for r in data] == [str(i) for i in range(1, len(data) + 1)]
        per_speaker_script: dict[tuple[int, str], list[int]] = {}
        for r in data:
            seg = r[3]
            assert SEG_RE.match(seg)
            p = parse_segment_id(seg)
            assert p.session == s
            user = int(p.speaker[4:7])
            assert user in (2 * s - 1, 2 * s)
            assert p.gender == ("F" if user % 2 else "M")
            per_speaker_script.setdefault((p.script, p.speaker), []).append(p.number)
            assert float(r[1]) <= float(r[2])
            txt = small / "wav" / f"Session{s:02d}" / f"{seg}.txt"
            raw = txt.read_bytes()
            text = raw.decode("cp949")
            assert text.endswith("\n") and text.count("\n") == 1 and text.strip()
            tags += bool(re.search(r"[cnlbu]/|\*|\+|/|\(", text))
            info = sf.info(str(txt.with_suffix(".wav")))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (
                16000,
                1,
                "PCM_16",
                "WAV",
            )
        assert sorted(per_speaker_script) == sorted(
            (sc, f"User{u:03d}{'F' if u % 2 else 'M'}")
            for sc in range(1, 7)
            for u in (2 * s - 1, 2 * s)
        )
        assert all(v == [1, 2, 3] for v in per_speaker_script.values())
    assert tags >= 20  # tags sprinkled over a share of the transcripts


def test_rater_cells_match_totals(small) -> None:
    n_ties = 0
    for path in sorted((small / "annotation").glob("*.csv")):
        for r in _rows(path)[2:]:
            emotions = r[7::3]
            val = [int(x) for x in r[8::3]]
            aro = [int(x) for x in r[9::3]]
            assert len(emotions) == 10
            assert set(emotions) <= {
                "neutral",
                "happy",
                "surprise",
                "angry",
                "sad",
                "disqust",
                "fear",
            }
            assert all(1 <= v <= 5 for v in val + aro)
            canon = ["disgust" if e == "disqust" else e for e in emotions]
            assert r[4] == majority_label(canon)
            assert abs(float(r[5]) - np.mean(val)) <= 0.05 + 1e-9
            assert abs(float(r[6]) - np.mean(aro)) <= 0.05 + 1e-9
            n_ties += ";" in r[4]
    assert n_ties >= 4


def test_deterministic_byte_for_byte(tmp_path, small) -> None:
    again = write_demo_corpus(tmp_path / "a", sessions=4, utterances_per_script=3, seed=5)
    assert _hashes(again) == _hashes(small)
    other = write_demo_corpus(tmp_path / "b", sessions=4, utterances_per_script=3, seed=6)
    a, b = _hashes(small), _hashes(other)
    assert a.keys() == b.keys() and a != b


def test_default_corpus_labels_and_audio(default) -> None:
    read = read_corpus(default)
    u = read.utterances
    assert 1200 <= len(u) + len(read.faults) <= 1600
    kinds = [f.kind for f in read.faults]
    assert kinds == ["empty_wav"] * 4  # zero-length and all-zero files, nothing else
    assert any("zero frames" in f.message for f in read.faults)
    assert any("only zero samples" in f.message for f in read.faults)
    assert 20 <= int(u["multi_label"].sum()) <= 80
    single = u[~u["multi_label"]]
    share = single["label"].value_counts(normalize=True)
    assert 0.78 <= share[NEUTRAL] <= 0.88
    assert set(share.index) == set(LABELS)
    assert share.drop(NEUTRAL).idxmax() == "happy"
    # The default split rule leaves every class in every split.
    split = session_split(single)
    for name in ("train", "val", "test"):
        assert set(split.counts[name]) == set(LABELS), name
    # Rated valence follows the class centroids of the real corpus (happy high, angry low).
    v = single.groupby("label")["valence"].mean()
    assert v["happy"] > v[NEUTRAL] + 0.4 and v["angry"] < v[NEUTRAL] - 0.4
    seconds = [sf.info(p).duration for p in u["wav_path"].iloc[::10]]
    assert min(seconds) >= 1.0 and max(seconds) <= 4.0


def _prosody(path: str) -> list[float]:
    """Cheap hand features: log pitch (autocorrelation), its spread and slope, energy, rate."""
    x, sr = sf.read(path, dtype="float32")
    fl, hop = 640, 320
    n = 1 + (len(x) - fl) // hop
    frames = x[np.arange(fl)[None, :] + hop * np.arange(n)[:, None]] * np.hanning(fl)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-6
    voiced = rms > 0.25 * rms.max()
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames[voiced], 2 * fl)) ** 2)[:, :fl]
    lo, hi = sr // 450, sr // 60
    f0 = np.log(sr / (lo + ac[:, lo:hi].argmax(axis=1)))
    t = np.flatnonzero(voiced) / len(rms)
    slope = np.polyfit(t, f0, 1)[0] if len(t) > 2 else 0.0
    onsets = np.sum(np.diff(voiced.astype(int)) == 1)
    return [np.median(f0), f0.std(), slope, np.log(rms[voiced].mean()), onsets / (len(x) / sr)]


def test_demo_is_learnable_and_fusion_helps(default) -> None:
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    u = read_corpus(default).utterances
    u = u[~u["multi_label"]].reset_index(drop=True)
    held_out = u["session"].isin(session_split(u).test).to_numpy()
    fit = ~held_out
    y = u["label"].to_numpy()
    audio = pd.DataFrame([_prosody(p) for p in u["wav_path"]])
    # The audio cue is relative to each speaker's voice: normalise per speaker.
    audio = audio.groupby(u["speaker"].to_numpy()).transform(lambda c: (c - c.mean()) / c.std())
    words = CountVectorizer(token_pattern=r"\S+").fit(u["text"][fit]).transform(u["text"])

    def macro_f1(x) -> float:
        model = LogisticRegression(max_iter=3000, class_weight="balanced")
        model.fit(x[fit], y[fit])
        return f1_score(y[held_out], model.predict(x[held_out]), average="macro")

    f_audio = macro_f1(audio.to_numpy())
    f_text = macro_f1(words.tocsr())
    f_both = macro_f1(hstack([words, csr_matrix(audio.to_numpy())]).tocsr())
    all_neutral = f1_score(y[held_out], np.full(held_out.sum(), NEUTRAL), average="macro")
    assert all_neutral < 0.15
    assert f_audio > 0.3 and f_text > 0.3
    assert f_both > max(f_audio, f_text) + 0.1


def _masked_mean(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    keep = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return (x * keep[..., None]).sum(axis=1) / keep.sum(axis=1, keepdims=True)


def test_signal_survives_the_frozen_demo_encoders(demo_store_medium) -> None:
    """What the models see: masked-mean frames / tokens of the tiny random encoders.

    The hand-feature test above normalises per speaker; the models get neither that nor
    loudness (wav2vec2 normalises each waveform). Before the demo's voice cues were made
    absolute, the audio probe here sat at the all-neutral score.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from data_prep.store import FeatureStore

    st = FeatureStore.open(demo_store_medium)
    audio = _masked_mean(st.audio, st.audio_len)
    text = _masked_mean(st.text, st.text_len)
    y = st.table["label_id"].to_numpy()
    fit = st.indices("train")
    held_out = np.concatenate([st.indices("val"), st.indices("test")])

    def macro_f1(x: np.ndarray) -> float:
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced")
        )
        model.fit(x[fit], y[fit])
        pred = model.predict(x[held_out])
        return f1_score(y[held_out], pred, labels=range(7), average="macro", zero_division=0)

    all_neutral = f1_score(
        y[held_out], np.zeros(len(held_out), int), labels=range(7), average="macro", zero_division=0
    )
    f_audio, f_text = macro_f1(audio), macro_f1(text)
    f_both = macro_f1(np.hstack([audio, text]))
    scores = (all_neutral, f_audio, f_text, f_both)
    assert f_audio > all_neutral + 0.04, scores
    assert f_text > all_neutral + 0.2, scores
    assert f_both > max(f_audio, f_text), scores
