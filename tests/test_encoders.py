"""Frozen encoders and batched extraction: determinism, loading, frame rate, equivalence."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.encoders import (
    EncoderError,
    build_demo_encoders,
    encoder_identity,
    load_audio_encoder,
    load_text_encoder,
)
from data_prep.extract import extract_audio, extract_text

TEXTS = [
    "오늘 정말 기분이 좋아요",
    "너무 화가 나서 참을 수가 없어요",
    "그냥 그래요",
    "왜 그랬어 정말 슬퍼",
]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    audio_dir, text_dir = build_demo_encoders(tmp_path_factory.mktemp("enc"), TEXTS, seed=0)
    return load_audio_encoder(audio_dir, device="cpu"), load_text_encoder(text_dir, device="cpu")


def test_demo_encoders_are_deterministic_and_reused(tmp_path, encoders):
    a1, t1 = build_demo_encoders(tmp_path / "one", TEXTS, seed=0)
    a2, t2 = build_demo_encoders(tmp_path / "two", list(reversed(TEXTS)), seed=0)
    assert a1.name == a2.name and t1.name == t2.name  # name hashes config + seed + transcripts
    for x, y in ((a1, a2), (t1, t2)):
        assert encoder_identity(x)["sha256"] == encoder_identity(y)["sha256"]
    # Same request again: the saved copy is reused, not rewritten.
    before = {f.name: f.stat().st_mtime_ns for f in a1.iterdir()}
    assert build_demo_encoders(tmp_path / "one", TEXTS, seed=0) == (a1, t1)
    assert {f.name: f.stat().st_mtime_ns for f in a1.iterdir()} == before
    # A different seed is a different encoder.
    a3, t3 = build_demo_encoders(tmp_path / "one", TEXTS, seed=1)
    assert a3 != a1 and encoder_identity(a3)["sha256"] != encoder_identity(a1)["sha256"]
    assert encoder_identity(t3)["sha256"] != encoder_identity(t1)["sha256"]


def test_loaded_encoders_are_frozen_and_real_classes(encoders):
    audio, text = encoders
    assert type(audio.model).__name__ == "Wav2Vec2Model"
    assert type(text.model).__name__ == "BertModel"
    for enc in encoders:
        assert not enc.model.training
        assert all(not p.requires_grad for p in enc.model.parameters())
    assert audio.dim == 64 and text.dim == 64 and text.has_pooler
    assert audio.use_attention_mask
    ids = text.tokenizer("그냥 그래요")["input_ids"]
    assert text.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "그냥", "그래요", "[SEP]"]


def test_twenty_ms_frames(encoders):
    audio, _ = encoders
    assert (audio.frame_stride, audio.receptive_field) == (320, 400)
    wave = torch.randn(1, 16000)
    with torch.inference_mode():
        frames = audio.model(wave).last_hidden_state.shape[1]
    assert frames == audio.frames_for(16000) == 49
    assert audio.frames_for(audio.samples_for(512)) == 512
    assert audio.frames_for(audio.samples_for(512) - 1) == 511


def test_hub_id_offline_gives_clear_message():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(EncoderError, match=r"--audio-model DIR") as err:
        load_audio_encoder("case-tune-test/not-a-cached-model")
    assert "not in the local Hugging Face cache" in str(err.value)
    with pytest.raises(EncoderError, match=r"--text-model DIR"):
        load_text_encoder("case-tune-test/not-a-cached-model")
    with pytest.raises(EncoderError, match="does not exist"):
        load_text_encoder("./no/such/model/dir")
    ident = encoder_identity("case-tune-test/not-a-cached-model")
    assert ident == {
        "source": "hub",
        "name": "case-tune-test/not-a-cached-model",
        "revision": "main",
        "commit": None,
    }


def test_local_identity_follows_weights(tmp_path, encoders):
    audio_dir, _ = build_demo_encoders(tmp_path, TEXTS, seed=0)
    before = encoder_identity(audio_dir)["sha256"]
    with open(audio_dir / "config.json", "a") as f:
        f.write("\n")
    assert encoder_identity(audio_dir)["sha256"] != before


def _wavs(tmp_path, n: int = 7) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        seconds = 0.3 + 0.45 * i  # varied lengths, so batches really pad
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (120 + 30 * i) * t) + 0.02 * rng.standard_normal(t.size)
        p = tmp_path / f"u{i}.wav"
        sf.write(p, wave.astype(np.float32), 16000, subtype="PCM_16")
        paths.append(str(p))
    return paths


def test_batched_audio_matches_one_at_a_time(tmp_path, encoders):
    audio, _ = encoders
    paths = _wavs(tmp_path)
    max_frames = 100  # shorter than the longest utterances: the cap is exercised too
    runs = []
    for bs in (1, 4):
        out = np.zeros((len(paths), max_frames, audio.dim), np.float16)
        lens = np.zeros(len(paths), np.int32)
        assert (
            extract_audio(
                audio, paths, out, lens, max_frames=max_frames, batch_size=bs, progress=False
            )
            == []
        )
        runs.append((out, lens))
    (single, lens1), (batched, lens4) = runs
    assert np.array_equal(lens1, lens4)
    expected = [min(max_frames, audio.frames_for(sf.info(p).frames)) for p in paths]
    assert lens1.tolist() == expected and max(expected) == max_frames
    for i, n in enumerate(lens1):
        np.testing.assert_allclose(
            batched[i, :n].astype(np.float32),
            single[i, :n].astype(np.float32),
            atol=1e-2,
            rtol=1e-2,
        )
        assert not batched[i, n:].any()  # zero padding
        assert np.abs(single[i, :n]).sum() > 0


def test_batched_text_matches_one_at_a_time(encoders):
    _, text = encoders
    texts = [*TEXTS, "좋아요 " * 40]  # the last one is cut at max_tokens
    runs = []
    for bs in (1, 3):
        out = np.zeros((len(texts), 16, text.dim), np.float16)
        lens = np.zeros(len(texts), np.int32)
        pooled = np.zeros((len(texts), text.dim), np.float16)
        extract_text(text, texts, out, lens, pooled, max_tokens=16, batch_size=bs, progress=False)
        runs.append((out, lens, pooled))
    (o1, l1, p1), (o3, l3, p3) = runs
    assert l1.tolist() == [len(text.tokenizer(t)["input_ids"][:16]) for t in texts]
    assert l1[-1] == 16 and np.array_equal(l1, l3)
    np.testing.assert_allclose(p1.astype(np.float32), p3.astype(np.float32), atol=1e-2)
    for i, n in enumerate(l1):
        # every position, the [PAD] states past the true length included
        np.testing.assert_allclose(
            o3[i].astype(np.float32), o1[i].astype(np.float32), atol=1e-2, rtol=1e-2
        )
        assert (np.abs(o3[i, n:]).sum(axis=-1) > 0).all()


def test_text_keeps_pad_states_as_the_seed_computes_them(encoders):
    """Each transcript padded to max_tokens with a mask (the seed's tokenizer call): the store
    holds BERT's state at every position; the true ones equal an unpadded run's."""
    _, text = encoders
    out = np.zeros((len(TEXTS), 16, text.dim), np.float16)
    lens = np.zeros(len(TEXTS), np.int32)
    pooled = np.zeros((len(TEXTS), text.dim), np.float16)
    extract_text(text, TEXTS, out, lens, pooled, max_tokens=16, batch_size=2, progress=False)
    with torch.inference_mode():
        for i, t in enumerate(TEXTS):
            padded = text.tokenizer(t, padding="max_length", max_length=16, return_tensors="pt")
            ref = text.model(**padded).last_hidden_state[0].numpy()
            alone = text.model(**text.tokenizer(t, return_tensors="pt")).last_hidden_state[0]
            n = int(padded["attention_mask"].sum())
            assert lens[i] == n == alone.shape[0] < 16
            np.testing.assert_allclose(out[i].astype(np.float32), ref, atol=1e-2, rtol=1e-2)
            np.testing.assert_allclose(ref[:n], alone.numpy(), atol=1e-5, rtol=1e-5)
            assert (np.abs(out[i, n:]).sum(axis=-1) > 1.0).all()  # [PAD] states are not zero


def test_bad_wavs_become_faults(tmp_path, encoders):
    audio, _ = encoders
    good = _wavs(tmp_path, 2)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    paths = [good[0], str(silent), str(broken), good[1]]
    out = np.zeros((4, 64, audio.dim), np.float16)
    lens = np.zeros(4, np.int32)
    faults = extract_audio(audio, paths, out, lens, max_frames=64, batch_size=4, progress=False)
    assert [(f.row, f.kind) for f in faults] == [(1, "empty_wav"), (2, "unreadable_wav")]
    assert "broken.wav" in faults[1].message
    assert lens[0] > 0 and lens[3] > 0 and lens[1] == lens[2] == 0
    assert not out[1].any() and not out[2].any()
