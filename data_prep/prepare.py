"""Corpus -> feature store: read, split by session, run the frozen encoders once, store.

    python -m data_prep.prepare --kemdy20 DIR [--audio-model ID_OR_DIR] [--text-model ID_OR_DIR]
    python -m data_prep.prepare --manifest FILE [--column ROLE=NAME] [--labels A,B,...]
                                [--neutral-label NAME] [--audio-model ...] [--text-model ...]
    python -m data_prep.prepare --demo

A store's key hashes everything that decides its contents (:mod:`data_prep.store_key`). The
key is computed before any encoder is loaded (:mod:`data_prep.plan`), so a second ``prepare``
of the same inputs returns the existing store at once, and a changed input gets a new store
(:mod:`data_prep.build`). Stores are written atomically (see :mod:`data_prep.store`). The
demo's corpus, encoders and store: :mod:`data_prep.demo_store`.

This module is the command line; it also re-exports the preparing API, so
``from data_prep.prepare import prepare_store`` (and the rest of ``__all__``) keeps working.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from data_prep.build import PrepareResult, prepare, prepare_manifest_store, prepare_store
from data_prep.demo_store import (
    DEMO_MAX_FRAMES,
    DEMO_MAX_TOKENS,
    demo_corpus,
    prepare_demo,
    prepare_demo_store,
)
from data_prep.encoders import DEFAULT_AUDIO_MODEL, DEFAULT_TEXT_MODEL
from data_prep.manifest import parse_columns, parse_labels
from data_prep.plan import PREPARE_ERRORS, Plan, PrepareError, plan
from data_prep.store_key import corpus_fingerprint, files_fingerprint, store_key

__all__ = [
    "DEMO_MAX_FRAMES",
    "DEMO_MAX_TOKENS",
    "PREPARE_ERRORS",
    "Plan",
    "PrepareError",
    "PrepareResult",
    "build_parser",
    "corpus_fingerprint",
    "demo_corpus",
    "files_fingerprint",
    "main",
    "plan",
    "prepare",
    "prepare_demo",
    "prepare_demo_store",
    "prepare_manifest_store",
    "prepare_store",
    "store_key",
]


# -- command line ---------------------------------------------------------------------------
def _summary(result: PrepareResult) -> str:
    m = result.manifest
    counts = m["counts"]
    lines = [
        f"feature store: {result.path}" + ("  (already prepared, reused)" if result.reused else ""),
        f"key: {result.key}",
        f"utterances: {m['num_utterances']}  faults: {m['num_faults']}  "
        f"audio {m['max_frames']} x {m['audio_dim']}, text {m['max_tokens']} x {m['text_dim']} (fp16)",
    ]
    labels = m["labels"]
    width = max(5, *(len(lab) for lab in labels))
    lines.append(
        "  "
        + " " * 6
        + " ".join(f"{lab[:width]:>{width}}" for lab in labels)
        + f" {'total':>{width}}"
    )
    for split in ("train", "val", "test"):
        row = [counts[split].get(lab, 0) for lab in labels]
        lines.append(
            f"  {split:<6}" + " ".join(f"{v:>{width}}" for v in row) + f" {sum(row):>{width}}"
        )
    lines += _missing_lines(m)
    lines.append(f"next: python -m search.run --space case --data {result.path}")
    return "\n".join(lines)


def _missing_lines(manifest: dict[str, Any]) -> list[str]:
    """What a small corpus lacks per split, so nobody mistakes a 0 F1 for a bad model."""
    missing = {k: v for k, v in (manifest.get("missing_classes") or {}).items() if v}
    lines = [f"  missing from {split}: {', '.join(labs)}" for split, labs in missing.items()]
    if lines:
        how = (
            "no session split could put every class in every split (see split.json)"
            if manifest.get("split_relaxed")
            else "a class seen in one session only can be in one split only"
        )
        lines.insert(0, f"note: some classes are absent from a split: {how}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Turn a KEMDy20 folder, a CSV/JSONL manifest of any corpus, or the demo "
        "corpus into a feature store.",
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--kemdy20", metavar="DIR", help="KEMDy20 root (holds annotation/ and wav/)")
    src.add_argument(
        "--manifest",
        metavar="FILE",
        help="a .csv or .jsonl manifest, one utterance per row (see data_prep/manifest.py)",
    )
    src.add_argument(
        "--demo", action="store_true", help="the built-in demo corpus and tiny encoders"
    )
    ap.add_argument(
        "--audio-model",
        metavar="ID_OR_DIR",
        default=None,
        help=f"wav2vec2-family hub id or local dir (default {DEFAULT_AUDIO_MODEL}; demo: tiny)",
    )
    ap.add_argument(
        "--text-model",
        metavar="ID_OR_DIR",
        default=None,
        help=f"BERT-family hub id or local dir (default {DEFAULT_TEXT_MODEL}; demo: tiny)",
    )
    ap.add_argument(
        "--out",
        metavar="STORES_ROOT",
        default=None,
        help="folder holding stores (default $CASE_TUNE_HOME/stores)",
    )
    ap.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help=f"audio frames kept, 20 ms each (default 512; demo {DEMO_MAX_FRAMES})",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"text tokens kept, with [CLS]/[SEP] (default 128; demo {DEMO_MAX_TOKENS})",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="utterances per encoder batch")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="run the encoders through torch.compile (needs a C++ compiler on CPU). Same "
        "features within fp16 rounding, same store. Compiling first costs about 1-2 min on "
        "this CPU (less once inductor's on-disk cache holds the kernels), so it can pay only "
        "on large corpora (e.g. real KEMDy20's ~13k utterances, CPU or GPU), not on the demo; "
        "see results/bench.md. If compiling fails, a warning is printed and extraction runs "
        "without it",
    )
    ap.add_argument(
        "--column",
        action="append",
        metavar="ROLE=NAME",
        help="manifest only: the column of a role (repeatable). Roles and defaults: "
        "audio, text, text_path, label, session, speaker, utterance_id, valence, arousal "
        "(each named as itself)",
    )
    ap.add_argument(
        "--labels",
        metavar="A,B,...",
        help="manifest only: the classes, in this order; other labels are faults "
        "(default: the labels found, sorted)",
    )
    ap.add_argument(
        "--neutral-label",
        metavar="NAME",
        help="manifest only: the neutral class, left out of the seed's micro-F1 "
        "(default: none, and that metric is not computed)",
    )
    ap.add_argument("--keep-ties", action="store_true", help="keep multi-label (tied vote) rows")
    ap.add_argument("--strict", action="store_true", help="any faulty utterance is an error")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    ap.add_argument("--sessions", type=int, default=16, help="demo only: number of sessions")
    ap.add_argument(
        "--utterances-per-script",
        type=int,
        default=7,
        help="demo only: turns per speaker and script",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars or notes on stderr")
    return ap


def _check_counts(args: argparse.Namespace) -> None:
    """Lengths, batch sizes and counts must be positive: 0 is an error, not 'the default'."""
    minimum = {
        "max_frames": 1,
        "max_tokens": 3,
        "batch_size": 1,
        "sessions": 3,
        "utterances_per_script": 1,
        "threads": 1,
    }
    for name, low in minimum.items():
        value = getattr(args, name)
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise PrepareError(f"{flag} must be >= {low} (got {value})")


def _manifest_options(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest reader's flags, checked; they mean nothing for the other sources."""
    given = [
        f
        for f, v in (
            ("--column", args.column),
            ("--labels", args.labels),
            ("--neutral-label", args.neutral_label),
        )
        if v is not None
    ]
    if args.manifest is None:
        if given:
            raise PrepareError(
                f"{', '.join(given)}: only with --manifest (KEMDy20's and the "
                "demo's classes are fixed)"
            )
        return {}
    try:
        return {
            "columns": parse_columns(args.column),
            "labels": parse_labels(args.labels),
            "neutral_label": args.neutral_label,
        }
    except ValueError as exc:
        raise PrepareError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_counts(args)
        reader_options = _manifest_options(args)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        _set_up_torch(args)
        result = _prepare_from_args(args, reader_options)
    except PREPARE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no store was written", file=sys.stderr)
        return 130
    print(_summary(result))
    return 0


def _set_up_torch(args: argparse.Namespace) -> None:
    """--threads and --device cuda, checked before any corpus is read."""
    if args.threads is not None:
        if args.threads < 1:
            raise PrepareError(f"--threads must be >= 1 (got {args.threads})")
        import torch

        # On a shared machine fewer threads than cores is often faster (less spinning).
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PrepareError("--device cuda: no CUDA device is available (use --device cpu)")


def _prepare_from_args(args: argparse.Namespace, reader_options: dict[str, Any]) -> PrepareResult:
    """The store of the source the flags name (--demo, --manifest or --kemdy20)."""
    common = {
        "stores_root": args.out,
        "max_frames": args.max_frames,
        "max_tokens": args.max_tokens,
        "keep_ties": args.keep_ties,
        "strict": args.strict,
        "split_seed": args.split_seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "progress": not args.quiet,
        "compile": args.compile,
    }
    if args.demo:
        # None lengths and models: the demo's own (prepare_demo_store fills them in).
        return prepare_demo_store(
            args.out,
            sessions=args.sessions,
            utterances_per_script=args.utterances_per_script,
            audio_model=args.audio_model,
            text_model=args.text_model,
            **{k: v for k, v in common.items() if k != "stores_root"},
        )
    common["max_frames"] = 512 if args.max_frames is None else args.max_frames
    common["max_tokens"] = 128 if args.max_tokens is None else args.max_tokens
    common["audio_model"] = args.audio_model or DEFAULT_AUDIO_MODEL
    common["text_model"] = args.text_model or DEFAULT_TEXT_MODEL
    if args.manifest is not None:
        return prepare_manifest_store(args.manifest, **reader_options, **common)
    return prepare_store(args.kemdy20, **common)


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the writer removes its temporary folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
