"""Opt-in ``torch.compile`` extraction: same features as eager, eager fallback, CLI plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import data_prep.extract as extract_mod
from data_prep.demo import write_demo_corpus
from data_prep.encoders import build_demo_encoders, load_audio_encoder, load_text_encoder
from data_prep.extract import extract_audio, extract_text
from data_prep.prepare import main
from data_prep.store import FeatureStore

TEXTS = [
    "오늘 정말 기분이 좋아요",
    "너무 화가 나서 참을 수가 없어요",
    "그냥 그래요",
    "왜 그랬어 정말 슬퍼",
]
# Compiled and eager kernels round differently; stored features are fp16 (about 1e-3 relative),
# so agreement is asked at the fp16-rounding level, as for batched vs one at a time.
TOL = {"atol": 1e-2, "rtol": 1e-2}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    audio_dir, text_dir = build_demo_encoders(tmp_path_factory.mktemp("enc"), TEXTS, seed=0)
    return load_audio_encoder(audio_dir, device="cpu"), load_text_encoder(text_dir, device="cpu")


def _wavs(tmp_path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        t = np.arange(int(16000 * (0.4 + 0.5 * i))) / 16000  # varied lengths: padded batches
        wave = 0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t) + 0.02 * rng.standard_normal(t.size)
        p = tmp_path / f"u{i}.wav"
        sf.write(p, wave.astype(np.float32), 16000, subtype="PCM_16")
        paths.append(str(p))
    return paths


def _audio(enc, paths, **kw):
    out = np.zeros((len(paths), 80, enc.dim), np.float16)
    lens = np.zeros(len(paths), np.int32)
    assert extract_audio(enc, paths, out, lens, max_frames=80, progress=False, **kw) == []
    return out, lens


def _text(enc, texts, **kw):
    out = np.zeros((len(texts), 16, enc.dim), np.float16)
    lens = np.zeros(len(texts), np.int32)
    pooled = np.zeros((len(texts), enc.dim), np.float16)
    extract_text(enc, texts, out, lens, pooled, max_tokens=16, progress=False, **kw)
    return out, lens, pooled


@pytest.mark.slow
def test_compiled_matches_eager(tmp_path, encoders, capsys):
    """Real inductor compilation (tens of seconds on CPU): same features within fp16 rounding."""
    audio, text = encoders
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Two padded batches of 2 of different lengths: one dynamic-shape graph serves both
        # (a batch of 1 would be specialised and compiled again).
        paths = _wavs(tmp_path, 4)
        eager, lens = _audio(audio, paths, batch_size=2)
        compiled, lens_c = _audio(audio, paths, batch_size=2, compile=True)
        t_eager = _text(text, TEXTS, batch_size=2)
        t_comp = _text(text, TEXTS, batch_size=2, compile=True)
    finally:
        torch.set_num_threads(threads)
    assert "warning" not in capsys.readouterr().err  # really compiled, no eager fallback
    assert np.array_equal(lens, lens_c) and lens.tolist() == [19, 44, 69, 80]
    np.testing.assert_allclose(compiled.astype(np.float32), eager.astype(np.float32), **TOL)
    assert np.abs(eager).sum() > 0
    for a, b in zip(t_comp, t_eager, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **TOL)


def test_compile_failure_falls_back_to_eager(tmp_path, encoders, monkeypatch, capsys):
    """A compiled model that raises (as with no C++ compiler): one warning, eager features."""
    audio, text = encoders
    paths = _wavs(tmp_path, 3)
    eager, lens = _audio(audio, paths, batch_size=2)
    t_eager = _text(text, TEXTS, batch_size=3)

    calls = []

    def broken_compile(model, **kwargs):
        assert kwargs.get("dynamic") is True

        def run(*a, **k):
            calls.append(type(model).__name__)
            raise RuntimeError("C++ compile error: no compiler\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    # A fresh model object, so that no compiled wrapper cached on the fixture's is reused.
    monkeypatch.setattr(audio, "model", _fresh(audio.model))
    monkeypatch.setattr(text, "model", _fresh(text.model))
    got, got_lens = _audio(audio, paths, batch_size=2, compile=True)
    t_got = _text(text, TEXTS, batch_size=3, compile=True)
    assert calls == ["Wav2Vec2Model", "BertModel"]  # one failed attempt each, then eager
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("warning: compiled ") for e in err)
    assert "audio encoder failed (RuntimeError: C++ compile error: no compiler)" in err[0]
    assert "continuing without compile" in err[0] and "text encoder" in err[1]
    assert np.array_equal(got, eager) and np.array_equal(got_lens, lens)
    for a, b in zip(t_got, t_eager, strict=True):
        assert np.array_equal(a, b)


def _fresh(model):
    import copy

    m = copy.copy(model)  # shares the weights; its own __dict__, so no cached compiled wrapper
    m.__dict__.pop(extract_mod._COMPILED_ATTR, None)
    return m


def test_cli_compile_reaches_extraction_and_keeps_the_key(tmp_path, encoders, monkeypatch):
    """--compile reaches both extractors and torch.compile; the store key does not change."""
    audio, text = encoders
    corpus = write_demo_corpus(tmp_path / "corpus", sessions=3, utterances_per_script=1)
    seen = {}
    for name in ("extract_audio", "extract_text"):
        real = getattr(extract_mod, name)

        def spy(*a, _real=real, _name=name, **k):
            seen.setdefault(_name, []).append(k.get("compile"))
            return _real(*a, **k)

        monkeypatch.setattr(extract_mod, name, spy)
    compiled = []
    # Stand-in for torch.compile (real compilation is the slow test above): records the call
    # and returns the eager model, so the run stays fast.
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: compiled.append((type(model).__name__, kw)) or model
    )
    argv = [
        "--kemdy20",
        str(corpus),
        "--audio-model",
        str(audio.identity["path"]),
        "--text-model",
        str(text.identity["path"]),
        "--max-frames",
        "64",
        "--max-tokens",
        "16",
        "--quiet",
    ]
    assert main([*argv, "--out", str(tmp_path / "eager")]) == 0
    assert main([*argv, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    assert seen == {"extract_audio": [False, True], "extract_text": [False, True]}
    assert [c[0] for c in compiled] == ["Wav2Vec2Model", "BertModel"]
    assert all(c[1] == {"dynamic": True} for c in compiled)
    stores = [
        FeatureStore.open(next(p for p in (tmp_path / d).iterdir() if not p.name.startswith(".")))
        for d in ("eager", "compiled")
    ]
    assert stores[0].key == stores[1].key
    m0, m1 = (json.loads((s.path / "manifest.json").read_text()) for s in stores)
    assert m0["key_material"] == m1["key_material"]


@pytest.mark.slow
def test_no_cxx_compiler_falls_back_to_eager(tmp_path, encoders, monkeypatch, capsys):
    """A real inductor failure (the C++ compiler is missing): warning, then eager features."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    import torch._inductor.utils

    audio, _ = encoders
    paths = _wavs(tmp_path, 2)
    eager, lens = _audio(audio, paths, batch_size=2)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing cached
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    monkeypatch.setattr(audio, "model", _fresh(audio.model))
    torch._dynamo.reset()
    torch._inductor.utils.clear_inductor_caches()
    try:
        got, got_lens = _audio(audio, paths, batch_size=2, compile=True)
    finally:
        torch._dynamo.reset()
        torch._inductor.utils.clear_inductor_caches()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: compiled audio encoder failed (")
    assert np.array_equal(got, eager) and np.array_equal(got_lens, lens)
