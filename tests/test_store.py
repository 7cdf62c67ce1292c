"""The feature store: contents, alignment, keys, reuse, sealing and atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.demo import write_demo_corpus
from data_prep.encoders import build_demo_encoders, load_audio_encoder, load_text_encoder
from data_prep.extract import extract_audio, extract_text
from data_prep.labels import LABELS
from data_prep.prepare import (
    DEMO_MAX_FRAMES,
    DEMO_MAX_TOKENS,
    plan,
    prepare_demo_store,
    prepare_store,
)
from data_prep.store import (
    FeatureStore,
    SplitSealedError,
    StoreError,
    StoreWriter,
    find_store,
    remove_stale_tmp,
)

ROOT = Path(__file__).resolve().parent.parent


def _inputs(store_path: Path) -> tuple[Path, str, str]:
    m = json.loads((store_path / "manifest.json").read_text())
    return Path(m["corpus"]["path"]), m["encoders"]["audio"]["path"], m["encoders"]["text"]["path"]


def test_arrays_dtypes_lengths_and_padding(demo_store):
    st = FeatureStore.open(demo_store)
    n = len(st.table)
    assert n > 150
    for name in ("text", "text_pooled", "audio"):
        assert getattr(st, name).dtype == np.float16
    for name in ("text_len", "audio_len"):
        assert getattr(st, name).dtype == np.int32
    assert st.audio.shape == (n, DEMO_MAX_FRAMES, 64) and st.text.shape == (n, DEMO_MAX_TOKENS, 64)
    assert (st.audio_len >= 1).all() and (st.audio_len <= st.max_frames).all()
    assert (st.text_len >= 3).all() and (st.text_len <= st.max_tokens).all()
    for arr, lens in ((st.audio, st.audio_len), (st.text, st.text_len)):
        pad = np.arange(arr.shape[1])[None, :] >= lens[:, None]
        beyond = np.abs(np.asarray(arr)[pad].astype(np.float32)).sum(axis=-1)
        if arr is st.audio:
            assert not beyond.any()  # audio: zero beyond the true length
        else:
            assert pad.any() and (beyond > 0).all()  # text: the encoder's [PAD] states
        last = np.asarray(arr)[np.arange(n), lens - 1]
        assert (np.abs(last).sum(axis=1) > 0).all()  # the last valid position is filled
    assert np.isfinite(np.asarray(st.audio, dtype=np.float32)).all()


def test_rows_align_with_table(demo_store):
    """Row i of every array is the utterance in row i of the table: re-encode a few."""
    st = FeatureStore.open(demo_store)
    _, audio_dir, text_dir = _inputs(demo_store)
    audio = load_audio_encoder(audio_dir, device="cpu")
    text = load_text_encoder(text_dir, device="cpu")
    rows = [0, len(st.table) // 2, len(st.table) - 1]
    sub = st.table.iloc[rows]
    a = np.zeros((3, st.max_frames, st.audio_dim), np.float16)
    al = np.zeros(3, np.int32)
    extract_audio(audio, sub["wav_path"].tolist(), a, al, max_frames=st.max_frames, progress=False)
    t = np.zeros((3, st.max_tokens, st.text_dim), np.float16)
    tl = np.zeros(3, np.int32)
    tp = np.zeros((3, st.text_dim), np.float16)
    extract_text(text, sub["text"].tolist(), t, tl, tp, max_tokens=st.max_tokens, progress=False)
    assert al.tolist() == st.audio_len[rows].tolist()
    assert tl.tolist() == st.text_len[rows].tolist()
    for i, r in enumerate(rows):
        np.testing.assert_allclose(
            st.audio[r].astype(np.float32), a[i].astype(np.float32), atol=1e-2
        )
        np.testing.assert_allclose(
            st.text[r].astype(np.float32), t[i].astype(np.float32), atol=1e-2
        )
        np.testing.assert_allclose(
            st.text_pooled[r].astype(np.float32), tp[i].astype(np.float32), atol=1e-2
        )


def test_manifest_split_and_faults(demo_store):
    st = FeatureStore.open(demo_store)
    m = st.manifest
    assert m["labels"] == list(LABELS) and st.num_classes == 7
    assert (m["audio_dim"], m["text_dim"], m["max_frames"], m["max_tokens"]) == (
        64,
        64,
        DEMO_MAX_FRAMES,
        DEMO_MAX_TOKENS,
    )
    assert m["keep_ties"] is False and m["split_seed"] == 0
    assert not st.table["multi_label"].any()
    assert (
        m["encoders"]["audio"]["source"] == "local" and len(m["encoders"]["text"]["sha256"]) == 64
    )
    for key in ("created", "corpus", "versions", "num_faults", "counts"):
        assert key in m
    # Every class in every split, and the counts match the table.
    for split in ("train", "val", "test"):
        got = st.table.loc[st.table["split"] == split, "label"].value_counts()
        assert set(got.index) == set(LABELS), split
        assert {lab: int(got[lab]) for lab in LABELS} == m["counts"][split]
    assert (st.table["label_id"] == st.table["label"].map(LABELS.index)).all()
    # Sessions are disjoint, and split.json agrees with the table's split column.
    info = st.split_info()
    sessions = {s: set(info[s]) for s in ("train", "val", "test")}
    assert not (sessions["train"] & sessions["val"]) and not (sessions["train"] & sessions["test"])
    for split, ss in sessions.items():
        assert set(st.table.loc[st.table["split"] == split, "session"]) == ss
    # The demo corpus has empty wavs: all of them are listed with file and CSV line.
    faults = st.faults()
    assert len(faults) == m["num_faults"] > 0
    assert set(faults["kind"]) == {"empty_wav"}
    assert faults["file"].str.match(r"annotation/Sess\d\d_eval\.csv").all()
    assert (faults["row"] >= 3).all()
    assert not set(faults["segment_id"]) & set(st.table["segment_id"])


def test_sealed_split_raises(demo_store):
    st = FeatureStore.open(demo_store, sealed=("test",))
    with pytest.raises(SplitSealedError, match="sealed"):
        st.indices("test")
    with pytest.raises(SplitSealedError):
        st.labels("test")
    train = st.indices("train")
    assert len(train) > 0 and st.accessed == {"train"}
    assert (st.table["split"].to_numpy()[train] == "train").all()
    assert len(FeatureStore.open(demo_store).indices("test")) > 0


def test_second_prepare_extracts_nothing(demo_store, monkeypatch):
    monkeypatch.setenv("CASE_TUNE_HOME", str(demo_store.parent.parent))
    stamp = {p.name: p.stat().st_mtime_ns for p in demo_store.iterdir()}
    t0 = time.perf_counter()
    result = prepare_demo_store(
        demo_store.parent, sessions=8, utterances_per_script=2, progress=False
    )
    assert result.reused and result.path == demo_store
    assert {p.name: p.stat().st_mtime_ns for p in demo_store.iterdir()} == stamp
    assert time.perf_counter() - t0 < 30


def test_key_follows_every_input(demo_store, tmp_path, monkeypatch):
    corpus, audio_dir, text_dir = _inputs(demo_store)
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    limits = dict(max_frames=DEMO_MAX_FRAMES, max_tokens=DEMO_MAX_TOKENS)
    key = plan(copy, audio_model=audio_dir, text_model=text_dir, **limits).key
    assert key == demo_store.name.replace(corpus.name, "corpus")  # same bytes, same key
    assert plan(copy, audio_model=audio_dir, text_model=text_dir, **limits).key == key

    def key_with(**changes):
        args = dict(audio_model=audio_dir, text_model=text_dir, **limits)
        return plan(copy, **{**args, **changes}).key

    assert key_with(max_frames=256) != key
    assert key_with(max_tokens=64) != key
    assert key_with(keep_ties=True) != key
    assert key_with(split_seed=1) != key
    # Stores of extraction version 1 (text zero past its length, no [PAD] states) are not
    # reused for version 2's content.
    assert FeatureStore.open(demo_store).manifest["key_material"]["extract_version"] == 2
    monkeypatch.setattr("data_prep.store_key.EXTRACT_VERSION", 1)
    assert key_with() != key
    monkeypatch.undo()
    other_audio, _ = build_demo_encoders(tmp_path / "enc", ["아무 말"], seed=1)
    assert key_with(audio_model=other_audio) != key

    txt = sorted((copy / "wav").rglob("*.txt"))[5]
    txt.write_bytes("완전히 다른 문장이에요\n".encode("cp949"))
    assert plan(copy, audio_model=audio_dir, text_model=text_dir).key != key


def test_writer_exception_leaves_no_store(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(tmp_path, "k1") as w:
        w.create_array("audio", (4, 8, 2), np.float16)[:] = 1
        w.write_table(pd.DataFrame({"a": range(4)}))
        raise RuntimeError("boom")
    assert find_store(tmp_path, "k1") is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="missing"), StoreWriter(tmp_path, "k2") as w:
        w.create_array("audio", (4, 8, 2), np.float16)
        w.commit({})
    assert find_store(tmp_path, "k2") is None and list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="not a complete"):
        FeatureStore.open(tmp_path / "k1")


def test_select_rows_keeps_order(tmp_path):
    with StoreWriter(tmp_path, "k") as w:
        a = w.create_array("audio", (5, 3), np.float16)
        a[:] = np.arange(5)[:, None]
        kept = w.select_rows("audio", np.array([True, False, True, True, False]))
        assert kept.shape == (3, 3) and kept[:, 0].tolist() == [0, 2, 3]
        assert sorted(p.name for p in w.tmp.iterdir()) == ["audio.npy"]


@pytest.mark.timeout(180)
def test_sigkill_mid_prepare_leaves_no_store_and_rerun_succeeds(demo_store, tmp_path):
    _, audio_dir, text_dir = _inputs(demo_store)
    corpus = write_demo_corpus(tmp_path / "tiny", sessions=3, utterances_per_script=2)
    root = tmp_path / "stores"
    args = dict(audio_model=audio_dir, text_model=text_dir, max_frames=300)
    key = plan(corpus, **args).key
    cmd = [
        sys.executable,
        "-m",
        "data_prep.prepare",
        "--kemdy20",
        str(corpus),
        "--audio-model",
        audio_dir,
        "--text-model",
        text_dir,
        "--max-frames",
        "300",
        "--out",
        str(root),
        "--batch-size",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = (
                [p for p in root.glob(".tmp-*") if (p / "audio_len.npy").exists()]
                if root.exists()
                else []
            )
            if tmp:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"prepare ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert find_store(root, key) is None
    leftovers = list(root.glob(".tmp-*"))
    assert leftovers  # the killed writer could not clean up ...
    result = prepare_store(corpus, stores_root=root, progress=False, **args)
    assert not result.reused and find_store(root, key) == result.path
    assert not any(p.exists() for p in leftovers)  # ... the next writer did
    assert remove_stale_tmp(root) == []
    st = FeatureStore.open(result.path)
    assert st.max_frames == 300 and (st.audio_len <= 300).all()
