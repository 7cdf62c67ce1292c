"""Feature extraction throughput: one at a time vs batched, eager vs ``torch.compile``.

    python -m bench.bench_extract [--sessions 4] [--utterances-per-script 6] [--batch-size 16]

Same corpus (a demo corpus of about 300 utterances), same encoder, same code path
(``data_prep.extract.extract_audio`` / ``extract_text``). Four ways per encoder: one at a
time eager (batch size 1, no compile: how the seed encoded, the baseline), batched eager,
one at a time compiled and batched compiled (``compile=True``: ``torch.compile(model,
dynamic=True)``). The four are timed interleaved, best of ``--repeats``, after warm-up
passes; each compiled way's first pass (compilation, with an empty inductor cache) is timed
on its own. Two random audio encoders: the tiny demo one and a larger one (hidden 256,
4 layers, 128-channel conv stack) whose compute is closer to a real model's; and the tiny
demo BERT. Figures go to results/bench.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bench.report import publish
from data_prep.demo import write_demo_corpus
from data_prep.encoders import (
    DEMO_AUDIO_CONFIG,
    build_demo_encoders,
    load_audio_encoder,
    load_text_encoder,
)
from data_prep.extract import extract_audio, extract_text
from data_prep.kemdy20 import read_corpus

LARGER = {
    **DEMO_AUDIO_CONFIG,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "conv_dim": [128] * 7,
}


def _larger_audio(out: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**LARGER)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(out)
    return out


# (label, batch size key, compile): the baseline first.
WAYS = [
    ("one at a time, eager", "one", False),
    ("batched, eager", "batched", False),
    ("one at a time, compiled", "one", True),
    ("batched, compiled", "batched", True),
]


def _fresh_compile_state(cache_dir: Path) -> None:
    """Forget compiled graphs, and point inductor at an empty on-disk cache."""
    import torch._dynamo
    import torch._inductor.utils

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    torch._dynamo.reset()
    torch._inductor.utils.clear_inductor_caches()


def _measure(
    run: Callable[[int, bool], np.ndarray], sizes: dict[str, int], repeats: int, n: int
) -> dict[str, Any]:
    """Throughput of every way (interleaved, best of ``repeats``) and compile overheads."""
    run(sizes["batched"], False)  # warm-up: page cache, allocator, first-call overheads
    from torch._dynamo.utils import counters

    first: dict[str, float] = {}
    graphs: dict[str, int] = {}
    outputs: dict[str, np.ndarray] = {}
    for label, size, comp in WAYS:
        if comp:  # the first compiled pass compiles; timed apart, excluded from throughput
            before = counters["stats"]["unique_graphs"]
            t0 = time.perf_counter()
            run(sizes[size], True)
            first[label] = time.perf_counter() - t0
            graphs[label] = counters["stats"]["unique_graphs"] - before
    best = {label: float("inf") for label, _, _ in WAYS}
    for _ in range(repeats):
        for label, size, comp in WAYS:
            t0 = time.perf_counter()
            result = run(sizes[size], comp)
            best[label] = min(best[label], time.perf_counter() - t0)
            if size == "batched":
                outputs[label] = result
    base = best[WAYS[0][0]]
    return {
        "utt_s": {label: n / t for label, t in best.items()},
        "ratio": {label: base / t for label, t in best.items()},
        "compile_s": {label: first[label] - best[label] for label in first},
        "graphs": graphs,
        "max_diff": float(np.abs(outputs["batched, compiled"] - outputs["batched, eager"]).max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_extract")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--utterances-per-script", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16, help="audio batch size")
    ap.add_argument("--text-batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-frames", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", default="1", help="torch intra-op thread counts to try, e.g. 1,2")
    args = ap.parse_args(argv)

    old_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_demo_corpus(
            Path(tmp) / "corpus",
            sessions=args.sessions,
            utterances_per_script=args.utterances_per_script,
        )
        table = read_corpus(root).utterances
        paths, texts = table["wav_path"].tolist(), table["text"].tolist()
        n = len(paths)
        audio_dir, text_dir = build_demo_encoders(Path(tmp) / "enc", texts, seed=0)
        encoders = {
            "tiny demo (hidden 64, 2 layers, 32-ch conv)": load_audio_encoder(
                audio_dir, device="cpu"
            ),
            "larger random (hidden 256, 4 layers, 128-ch conv)": load_audio_encoder(
                _larger_audio(Path(tmp) / "larger"), device="cpu"
            ),
        }
        text_enc = load_text_encoder(text_dir, device="cpu")
        durations = [sf.info(p).duration for p in paths]
        rows = []
        load_before = os.getloadavg()[0]
        try:
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)
                for name, enc in encoders.items():
                    out = np.zeros((n, args.max_frames, enc.dim), np.float16)
                    lens = np.zeros(n, np.int32)

                    def run(bs: int, comp: bool, enc=enc, out=out, lens=lens) -> np.ndarray:
                        extract_audio(
                            enc,
                            paths,
                            out,
                            lens,
                            max_frames=args.max_frames,
                            batch_size=bs,
                            progress=False,
                            compile=comp,
                        )
                        return out.astype(np.float32)

                    _fresh_compile_state(Path(tmp) / f"inductor-{threads}-{len(rows)}")
                    res = _measure(run, {"one": 1, "batched": args.batch_size}, args.repeats, n)
                    rows.append((f"audio, {name}", threads, res))
                    print(rows[-1], flush=True)

                tout = np.zeros((n, args.max_tokens, text_enc.dim), np.float16)
                tl = np.zeros(n, np.int32)
                tp = np.zeros((n, text_enc.dim), np.float16)

                def run_text(bs: int, comp: bool, tout=tout, tl=tl, tp=tp) -> np.ndarray:
                    extract_text(
                        text_enc,
                        texts,
                        tout,
                        tl,
                        tp,
                        max_tokens=args.max_tokens,
                        batch_size=bs,
                        progress=False,
                        compile=comp,
                    )
                    return tout.astype(np.float32)

                _fresh_compile_state(Path(tmp) / f"inductor-{threads}-{len(rows)}")
                res = _measure(
                    run_text, {"one": 1, "batched": args.text_batch_size}, args.repeats, n
                )
                rows.append(("text, tiny demo BERT (hidden 64, 2 layers)", threads, res))
                print(rows[-1], flush=True)
        finally:
            if old_cache is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_cache
        load_after = os.getloadavg()[0]

    def cell(res: dict[str, Any], label: str) -> str:
        return f"{res['utt_s'][label]:.1f} ({res['ratio'][label]:.2f}x)"

    def compile_cell(res: dict[str, Any], label: str) -> str:
        g = res["graphs"][label]
        return f"{res['compile_s'][label]:.0f} s, {g} graph{'s' if g != 1 else ''}"

    best_batched = {
        f"{name} ({threads} thread{'s' if threads > 1 else ''})": max(
            res["ratio"]["batched, eager"], res["ratio"]["batched, compiled"]
        )
        for name, threads, res in rows
    }
    met = [k for k, v in best_batched.items() if v >= 3]
    missed = [f"{k}, best {v:.2f}x" for k, v in best_batched.items() if v < 3]
    parts = []
    if met:
        parts.append("met by " + ", ".join(met))
    if missed:
        parts.append("not met by " + "; ".join(missed))
    target = "; ".join(parts)
    lines = [
        "## Feature extraction: one at a time vs batched, eager vs torch.compile",
        "",
        f"`python -m bench.bench_extract` — {n} demo utterances ({np.mean(durations):.1f} s mean, "
        f"{np.max(durations):.1f} s max), CPU, batch {args.batch_size} for audio and "
        f"{args.text_batch_size} for text; the four ways of an encoder timed interleaved, best "
        f"of {args.repeats} passes over the corpus; machine load average {load_before:.1f} "
        f"before, {load_after:.1f} after (shared with other jobs).",
        "",
        "Throughput in utterances/s, and in brackets the ratio to one at a time eager (batch "
        "size 1, no compile: the seed's way, the baseline).",
        "",
        "| encoder | torch threads | one at a time, eager (seed's way) | batched, eager "
        "| one at a time, compiled | batched, compiled | compiling, one at a time "
        "| compiling, batched | max abs diff, compiled vs eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {threads} | "
        + " | ".join(cell(res, label) for label, _, _ in WAYS)
        + f" | {compile_cell(res, 'one at a time, compiled')}"
        + f" | {compile_cell(res, 'batched, compiled')} | {res['max_diff']:.1e} |"
        for name, threads, res in rows
    ]
    lines += [
        "",
        "What the columns mean. *Batched, eager* over *one at a time, eager* is what batching "
        "(length-sorted, padded, masked) alone gives; *one at a time, compiled* is what "
        "`torch.compile` alone gives; *batched, compiled* is both together, which is what "
        f"`python -m data_prep.prepare --compile` does (at batch {args.batch_size} here; "
        "prepare's `--batch-size` defaults to 8). Compilation is excluded from throughput: each "
        "compiled way's first pass over the corpus is timed apart, and *compiling* is that "
        "first pass minus the way's best later pass, with an empty inductor cache (a later "
        "process finds compiled kernels in the on-disk cache and compiles faster), and the "
        "number of graphs dynamo compiled in it (`dynamic=True` still specialises: batch 1, "
        "and batch-size or input-length ranges where the convolution backend choice changes). "
        "*Max abs diff* is over all stored fp16 features of the batched runs, compiled vs eager.",
        "",
        "Batching removes per-call overhead (Python, feature extractor, small-tensor kernels); "
        "it pays most for small models and short utterances (the tiny BERT above), and on a GPU "
        "it is what fills the device. For the larger audio encoder on this CPU, per-call "
        "overhead is small next to the convolutions, and batching alone does not help. "
        "Compiling fuses the elementwise work around the convolutions (for the tiny encoder, a "
        "separate torch.profiler run put about 40% of eager time in the transposes, layer norms "
        "and GELUs of the conv feature encoder and about 41% in the convolutions). "
        f"The issue's target, batched at least 3x one at a time eager: {target}. "
        "Timings vary with the load of this shared machine; ratios within one row are "
        "measured interleaved. Every row uses the same torch thread count (default 1, `--threads 1,2` to compare): "
        "with 2 threads on this shared, loaded 2-core machine an earlier run's figures "
        "collapsed (tiny encoder 1.2 utt/s one at a time, 13.7 utt/s batched); "
        "`python -m data_prep.prepare --threads N` sets it.",
    ]
    publish("extract", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
