"""Real-size smoke: the seed's encoder architectures through `prepare`, and what they cost.

Encoders with the real architectures and random weights, built here and saved with
`save_pretrained` (no download exists here): wav2vec2-large-xlsr's configuration (hidden 1024,
24 layers, 16 heads, seven 512-channel conv layers; about 315 M parameters) and bert-base's
(hidden 768, 12 layers; about 110 M with the vocabulary) with a WordPiece vocabulary trained
locally on the corpus' transcripts. Then `prepare_store` on a few dozen demo utterances at the
seed's limits (512 frames, 128 tokens) gives a store of 512 x 1024 audio and 128 x 768 text.

Reported: extraction seconds per utterance for each encoder (and per second of audio), the
store's bytes per utterance on disk, `prepare`'s own seconds, the extrapolation to KEMDy20's
13,462 utterances, and the peak resident memory of one `train` call per head on this store.

    python -m bench.bench_real_scale [--sessions 3] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
KEMDY20_UTTERANCES = 13_462
# wav2vec2-large-xlsr-53 (kresnik/wav2vec2-large-xlsr-korean's architecture)
XLSR_LARGE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "apply_spec_augment": False,
}
BERT_BASE = {  # klue/bert-base's architecture (its vocabulary is 32k; ours is trained here)
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
PEAK_RSS = r"""
import json, sys
import torch
from data_prep.store import FeatureStore
from models.train import train
torch.set_num_threads(1)
store = FeatureStore.open(sys.argv[1], sealed=("test",))
train({"model": sys.argv[2], "epochs": 1, "batch_size": 64}, store, device="cpu")
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec from the parent (here the
# bench, which held the 1.3 GB audio encoder), VmHWM belongs to this process's own memory.
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"peak_kib": int(status["VmHWM"].split()[0])}))
"""


def build_real_size_encoders(out: Path, transcripts: list[str], seed: int = 0) -> tuple[Path, Path]:
    """Save randomly initialised encoders of the real architectures under ``out``."""
    from transformers import (
        BertConfig,
        BertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    from data_prep.encoders import train_wordpiece

    audio_dir, text_dir = out / "xlsr-large-random", out / "bert-base-random"
    torch.manual_seed(seed)
    Wav2Vec2Model(Wav2Vec2Config(**XLSR_LARGE)).save_pretrained(audio_dir)
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(
        audio_dir
    )
    tok = train_wordpiece(sorted(set(transcripts)), 32_000, 512)
    backend = tok.backend_tokenizer
    config = BertConfig(
        vocab_size=backend.get_vocab_size(), pad_token_id=backend.token_to_id("[PAD]"), **BERT_BASE
    )
    BertModel(config, add_pooling_layer=True).save_pretrained(text_dir)
    tok.save_pretrained(text_dir)
    return audio_dir, text_dir


def time_extraction(
    audio_dir: Path,
    text_dir: Path,
    wavs: list[str],
    texts: list[str],
    batch_size: int,
    device: str = "cpu",
) -> dict[str, float]:
    """Seconds per utterance of each encoder, as `prepare` runs them (same functions), on
    ``device``; on CUDA after one warm-up batch, the clock read after the device is done."""
    from data_prep.encoders import load_audio_encoder, load_text_encoder
    from data_prep.extract import extract_audio, extract_text

    def done() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    n = len(wavs)
    audio = load_audio_encoder(audio_dir, device=device)
    out = np.zeros((n, 512, audio.dim), np.float16)
    lens = np.zeros(n, np.int32)
    kw = dict(max_frames=512, batch_size=batch_size, progress=False)
    if device.startswith("cuda"):  # kernel choice and allocations, not extraction
        extract_audio(audio, wavs[:batch_size], out[:batch_size], lens[:batch_size], **kw)
    t0 = done()
    extract_audio(audio, wavs, out, lens, **kw)
    audio_s = done() - t0
    del audio
    text = load_text_encoder(text_dir, device=device)
    tout = np.zeros((n, 128, text.dim), np.float16)
    tl = np.zeros(n, np.int32)
    pooled = np.zeros((n, text.dim), np.float16)
    t0 = done()
    extract_text(
        text,
        texts,
        tout,
        tl,
        pooled,
        max_tokens=128,
        batch_size=max(32, batch_size),
        progress=False,
    )
    return {"audio": audio_s / n, "text": (done() - t0) / n}


def peak_rss(store: Path, model: str) -> float:
    """Peak RSS (GB) of a fresh process that trains ``model`` for one epoch on ``store``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(store), model],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"] * 1024 / 1e9


def main(argv: list[str] | None = None) -> dict:
    from bench.report import publish
    from data_prep.demo import write_demo_corpus
    from data_prep.kemdy20 import read_corpus
    from data_prep.prepare import prepare_store
    from data_prep.store import FeatureStore
    from models.registry import list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3, help="demo sessions (about 12 utt each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--models", default="all", help="heads whose peak RSS is measured")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="build everything under DIR and keep it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench-real-")
    work = Path(args.keep) if args.keep else Path(tmp_ctx.name)
    try:
        corpus = write_demo_corpus(work / "corpus", sessions=args.sessions, utterances_per_script=1)
        read = read_corpus(corpus)
        table = read.utterances
        wavs, texts = table["wav_path"].tolist(), table["text"].tolist()
        seconds = float(sum(sf.info(p).duration for p in wavs))
        t0 = time.perf_counter()
        audio_dir, text_dir = build_real_size_encoders(work / "encoders", texts)
        build_s = time.perf_counter() - t0
        per_utt = time_extraction(audio_dir, text_dir, wavs, texts, args.batch_size)
        t0 = time.perf_counter()
        result = prepare_store(
            corpus,
            audio_model=audio_dir,
            text_model=text_dir,
            stores_root=work / "stores",
            max_frames=512,
            max_tokens=128,
            batch_size=args.batch_size,
            progress=False,
            corpus=read,
        )
        prepare_s = time.perf_counter() - t0
        store = FeatureStore.open(result.path)
        n = len(store.table)
        on_disk = sum(f.stat().st_size for f in result.path.rglob("*") if f.is_file())
        shapes = {k: tuple(getattr(store, k).shape[1:]) for k in ("audio", "text")}
        models = list_models() if args.models == "all" else args.models.split(",")
        rss = {m: peak_rss(result.path, m) for m in models}
    finally:
        if not args.keep:
            tmp_ctx.cleanup()
    figures = {
        "utterances": n,
        "audio_seconds": seconds,
        "per_utt": per_utt,
        "prepare_s": prepare_s,
        "bytes_per_utt": on_disk / n,
        "shapes": shapes,
        "rss_gb": rss,
        "build_s": build_s,
    }
    print(json.dumps(figures, indent=1))
    mean_dur = seconds / len(wavs)
    total_h = (per_utt["audio"] + per_utt["text"]) * KEMDY20_UTTERANCES / 3600
    lines = [
        "## Real-size smoke: the seed's encoder architectures through `prepare`",
        "",
        f"`python -m bench.bench_real_scale` — randomly initialised encoders of the real "
        f"architectures saved with `save_pretrained` (wav2vec2-large-xlsr: hidden 1024, 24 "
        f"layers, 512-channel convs; bert-base: hidden 768, 12 layers, WordPiece vocabulary "
        f"trained here; built in {build_s:.0f} s), `prepare` on {len(wavs)} demo utterances "
        f"({mean_dur:.1f} s of audio each on average) at 512 frames x 128 tokens; CPU, "
        f"{args.threads} torch threads, encoder batch {args.batch_size}, a shared 2-core machine.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| audio extraction, s / utterance (xlsr-large) | {per_utt['audio']:.2f} |",
        f"| audio extraction, s / second of audio | {per_utt['audio'] / mean_dur:.2f} |",
        f"| text extraction, s / utterance (bert-base) | {per_utt['text']:.3f} |",
        f"| `prepare` wall time for the {n} utterances | {prepare_s:.0f} s |",
        f"| store on disk, bytes / utterance | {figures['bytes_per_utt'] / 1e6:.2f} MB |",
        f"| store shapes per utterance | audio {shapes['audio'][0]} x {shapes['audio'][1]}, "
        f"text {shapes['text'][0]} x {shapes['text'][1]} (fp16) |",
        f"| KEMDy20 ({KEMDY20_UTTERANCES:,} utterances) on this CPU, extrapolated | "
        f"{total_h:.1f} h |",
        f"| KEMDy20 store on disk, extrapolated | "
        f"{figures['bytes_per_utt'] * KEMDY20_UTTERANCES / 1e9:.1f} GB |",
        "",
        "Peak resident memory of one process that trains each head for one epoch on this "
        f"store (batch 64, {n} rows: the split is resident; fresh interpreter with torch "
        "imported, so about 0.3-0.4 GB of it is the interpreter and torch):",
        "",
        "| model | peak RSS (GB) |",
        "|---|---:|",
        *[f"| {m} | {v:.2f} |" for m, v in rss.items()],
        "",
        "Seconds per training epoch per 1,000 utterances at these sizes, for every head: the "
        "`bench_train` section above (same shapes, synthetic features).",
    ]
    publish("real_scale", "\n".join(lines), write=not args.no_write)
    return figures


if __name__ == "__main__":
    main()
