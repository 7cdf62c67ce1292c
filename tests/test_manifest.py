"""Any corpus through a CSV/JSONL manifest (issue 15): the reader and its faults, classes from
the data, audio of any rate, the store key, the demo both ways, and a 4-class corpus through
prepare, a sweep and a finalize with real Ray, Optuna and MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mlflow import MlflowClient

from data_prep.demo import MANIFEST_NAME, write_demo_corpus
from data_prep.kemdy20 import CorpusError
from data_prep.labels import LABELS
from data_prep.manifest import read_manifest
from data_prep.prepare import main as prepare_main
from data_prep.prepare import prepare_manifest_store, prepare_store
from data_prep.store import ARRAY_NAMES, FeatureStore
from models.metrics import bootstrap_scores, classification_metrics
from tests.manifest_corpus import CLASSES, FAULT_LINES, SESSIONS, write_manifest_corpus
from tests.search_helpers import case_tune_home, cli_env, run_tiny_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    return write_manifest_corpus(tmp_path_factory.mktemp("manifest_corpus"))


@pytest.fixture(scope="module")
def encoders(demo_store: Path) -> tuple[str, str]:
    """The tiny demo encoders' folders (built with the session's demo store)."""
    m = json.loads((demo_store / "manifest.json").read_text())
    return m["encoders"]["audio"]["path"], m["encoders"]["text"]["path"]


def _opts(encoders: tuple[str, str], out: Path) -> dict:
    return {
        "audio_model": encoders[0],
        "text_model": encoders[1],
        "stores_root": out,
        "max_frames": 48,
        "max_tokens": 16,
        "progress": False,
    }


# -- the reader -----------------------------------------------------------------------------
def test_reader_lists_each_fault_with_file_and_line(corpus) -> None:
    manifest, lines = corpus
    read = read_manifest(manifest, labels=CLASSES)
    got = {f.kind: (f.file, f.row) for f in read.faults}
    assert got == {kind: ("manifest.csv", line) for kind, line in lines.items()}
    assert set(got) == set(FAULT_LINES)  # one of each, nothing else
    t = read.utterances
    assert len(t) == len(SESSIONS) * 6
    assert read.label_names == CLASSES and read.neutral_label is None
    # Session names sorted and numbered 1..8; the names are kept for the store.
    assert read.session_names == {i + 1: name for i, name in enumerate(SESSIONS)}
    assert sorted(t["session"].unique()) == list(range(1, 9))
    row = t.set_index("segment_id").loc["dlg-c-00"]  # transcript read from texts/*.txt
    assert row["text"] == "anger words number 0 of dlg-c" and row["session"] == 3
    assert row["csv_file"] == "manifest.csv" and row["csv_row"] == 2 + 2 * 6
    with pytest.raises(CorpusError, match=r"manifest\.csv:50: x-missing \[missing_wav\]"):
        read_manifest(manifest, labels=CLASSES, strict=True)


def test_classes_come_from_the_data_sorted_without_labels(corpus) -> None:
    read = read_manifest(corpus[0])
    # Without --labels every label found is a class, sorted (row order never matters),
    # and the out-of-list row is no fault.
    assert read.label_names == ("anger", "calm", "grief", "joy", "surprise")
    assert "unknown_label" not in {f.kind for f in read.faults}


def test_jsonl_renamed_columns_and_integer_sessions(tmp_path, corpus) -> None:
    manifest = corpus[0]
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(12)
    with open(tmp_path / "list.jsonl", "w", encoding="utf-8") as fh:
        for r in rows.to_dict("records"):
            wav = str(manifest.parent / r["audio"])  # absolute paths are taken as they are
            obj = {
                "id": r["utterance_id"],
                "wav": wav,
                "emotion": r["label"],
                "dialogue": int(r["session"][-1], 16) + 90,
                "spk": r["speaker"],
                "sentence": r["text"] or "from a file",
            }
            fh.write(json.dumps(obj) + "\n")
    cols = {
        "utterance_id": "id",
        "audio": "wav",
        "label": "emotion",
        "session": "dialogue",
        "speaker": "spk",
        "text": "sentence",
    }
    read = read_manifest(tmp_path / "list.jsonl", columns=cols, neutral_label="calm")
    assert len(read.utterances) == 12 and not read.faults
    assert sorted(read.utterances["session"].unique()) == [100, 101]  # integers kept
    assert read.neutral_label == "calm"
    with pytest.raises(CorpusError, match="not a class"):
        read_manifest(tmp_path / "list.jsonl", columns=cols, neutral_label="neutral")
    with pytest.raises(CorpusError, match=r"no column for label \(column 'label'\).*--column"):
        read_manifest(tmp_path / "list.jsonl", columns={**cols, "label": "label"})


# -- metrics without a neutral class ------------------------------------------------------
def test_seed_micro_f1_needs_a_neutral_class() -> None:
    pred, gold = [0, 1, 2, 2], [0, 1, 1, 2]
    with_neutral = classification_metrics(pred, gold, "val", 3, 0, ["n", "a", "b"])
    without = classification_metrics(pred, gold, "val", 3, None, ["n", "a", "b"])
    assert with_neutral["val_seed_micro_f1"] == pytest.approx(2 / 3)
    assert set(with_neutral) - set(without) == {"val_seed_micro_f1"}
    assert without["val_macro_f1"] == with_neutral["val_macro_f1"]
    reps = bootstrap_scores([pred], gold, 3, n_boot=20, neutral_index=None)
    assert set(reps) == {"macro_f1", "weighted_f1", "micro_f1"}


def test_the_split_rule_leaves_only_the_named_neutral_class_free() -> None:
    from data_prep.splits import session_split

    rng = np.random.default_rng(3)
    table = pd.DataFrame(
        {
            "session": np.repeat(np.arange(1, 11), 12),
            "label": rng.choice(["neutral", "x", "y"], 120),
        }
    )
    named = session_split(table, neutral="neutral", label_order=("neutral", "x", "y"))
    assert set(named.test_carve.fractions) == {"x", "y"}
    unnamed = session_split(table, neutral=None, label_order=("neutral", "x", "y"))
    assert set(unnamed.test_carve.fractions) == {"neutral", "x", "y"}  # "neutral" is a class


def test_a_manifest_corpus_is_never_reported_as_kemdy20() -> None:
    from search import final_report as fr

    seed_encoders = {
        "text": {"name": "klue/bert-base"},
        "audio": {"name": "kresnik/wav2vec2-large-xlsr-korean"},
    }
    listed = {"corpus": {"kind": "manifest", "name": "iemocap"}, "encoders": seed_encoders}
    assert fr.corpus_kind(listed) == "other"  # seed encoders, but not the seed's corpus
    assert fr.corpus_kind({**listed, "corpus": {"kind": "kemdy20", "name": "K"}}) == "kemdy20"


# -- prepare ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(corpus, encoders, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("manifest_stores")
    opts = _opts(encoders, out)
    first = prepare_manifest_store(corpus[0], labels=CLASSES, **opts)
    again = prepare_manifest_store(corpus[0], labels=CLASSES, **opts)
    return {"out": out, "opts": opts, "first": first, "again": again}


def test_store_follows_the_manifest_classes(prepared, corpus) -> None:
    store = FeatureStore.open(prepared["first"].path)
    assert store.num_classes == 4 and store.label_names == list(CLASSES)
    assert store.neutral_label is None and store.neutral_index is None
    t = store.table
    assert (t["label_id"] == t["label"].map({c: i for i, c in enumerate(CLASSES)})).all()
    assert store.manifest["session_names"] == {str(i + 1): n for i, n in enumerate(SESSIONS)}
    assert store.manifest["corpus"]["kind"] == "manifest"
    faults = store.faults()
    assert sorted(zip(faults["kind"], faults["row"], strict=True)) == sorted(
        (k, line) for k, line in corpus[1].items()
    )
    assert set(faults["file"]) == {"manifest.csv"}
    # Every usable row was extracted (mixed rates, stereo and FLAC included).
    assert len(t) == len(SESSIONS) * 6 and (store.audio_len > 0).all()


def test_models_train_cli_follows_the_store(prepared, capsys) -> None:
    from models.train import main as train_main

    path = prepared["first"].path
    assert train_main(["--model", "text-only", "--data", str(path), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    store = FeatureStore.open(path)
    majority = CLASSES[store.baseline_class()]
    assert f"all-{majority} val: macro" in out and "all-neutral" not in out
    assert "seed_micro" not in out and "seed micro" not in out and " macro " in out


def test_same_manifest_twice_is_extracted_once(prepared, corpus, tmp_path) -> None:
    first, again = prepared["first"], prepared["again"]
    assert again.reused and again.key == first.key and again.path == first.path
    # Another copy of the corpus with one audio file changed gets another key.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(corpus[0].parent, copy)
    from data_prep.prepare import plan

    def key_of(labels: tuple[str, ...]) -> str:  # the copy's key, all else as prepared
        return plan(
            copy,
            corpus=read_manifest(copy / "manifest.csv", labels=labels),
            audio_model=prepared["opts"]["audio_model"],
            text_model=prepared["opts"]["text_model"],
            max_frames=48,
            max_tokens=16,
        ).key

    assert key_of(CLASSES) == first.key  # contents, not location
    wav = copy / "audio" / "dlg-a-01.wav"
    data, sr = sf.read(str(wav))
    sf.write(str(wav), data * 0.5, sr)
    changed = key_of(CLASSES)
    assert changed != first.key
    # The classes' order is part of the key too (label ids depend on it).
    assert key_of(CLASSES[::-1]) not in (first.key, changed)


def test_audio_of_any_rate_and_channels_is_converted_once(tmp_path, encoders) -> None:
    """The same sound at 16 kHz mono and at 44.1 kHz stereo gives nearly the same frames:
    both are 16 kHz mono when encoded."""
    from scipy.signal import resample_poly

    from data_prep.encoders import load_audio_encoder
    from data_prep.extract import extract_audio, load_wav

    rng = np.random.default_rng(1)
    t = np.arange(12000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    sf.write(str(tmp_path / "a.wav"), wave, 16000)
    hi = resample_poly(wave, 441, 160)
    sf.write(str(tmp_path / "b.wav"), np.stack([hi, hi], axis=1), 44100, subtype="FLOAT")
    loaded = load_wav(str(tmp_path / "b.wav"), 16000)
    assert loaded.ndim == 1 and loaded.size == wave.size
    enc = load_audio_encoder(encoders[0], device="cpu")
    out = np.zeros((2, 40, enc.dim), np.float16)
    lens = np.zeros(2, np.int32)
    faults = extract_audio(
        enc,
        [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")],
        out,
        lens,
        max_frames=40,
        progress=False,
    )
    assert not faults and lens[0] == lens[1] > 0
    a, b = out[0, : lens[0]].astype(np.float32), out[1, : lens[1]].astype(np.float32)
    cos = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
    assert cos > 0.99


# -- the demo, both ways --------------------------------------------------------------------
def test_demo_through_kemdy20_and_manifest_gives_the_same_store(tmp_path, encoders) -> None:
    root = write_demo_corpus(tmp_path / "demo", sessions=5, utterances_per_script=1, manifest=True)
    opts = _opts(encoders, tmp_path / "stores")
    folder = FeatureStore.open(prepare_store(root, **opts).path)
    listed = FeatureStore.open(
        prepare_manifest_store(
            root / MANIFEST_NAME, labels=LABELS, neutral_label="neutral", **opts
        ).path
    )
    assert folder.path != listed.path  # two stores, built from two sources...
    cols = [
        "segment_id",
        "session",
        "speaker",
        "label",
        "label_id",
        "text",
        "wav_path",
        "valence",
        "arousal",
        "split",
    ]
    pd.testing.assert_frame_equal(folder.table[cols], listed.table[cols])  # ...same rows
    assert len(folder.table) > 50
    for name in ARRAY_NAMES:  # same features
        np.testing.assert_array_equal(getattr(folder, name), getattr(listed, name), err_msg=name)
    for split in ("train", "val", "test"):  # same splits
        assert folder.split_info()[split] == listed.split_info()[split]
    assert (folder.label_names, folder.neutral_label) == (listed.label_names, "neutral")
    # The same faulty utterances, each named by its own source file and line.
    assert sorted(folder.faults()["segment_id"]) == sorted(listed.faults()["segment_id"])
    assert set(listed.faults()["file"]) == {MANIFEST_NAME}


def test_demo_cli_writes_a_manifest(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.demo",
            "--out",
            str(tmp_path / "d"),
            "--sessions",
            "3",
            "--utterances-per-script",
            "1",
            "--manifest",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    listed = pd.read_csv(tmp_path / "d" / MANIFEST_NAME)
    assert list(listed.columns[:5]) == ["utterance_id", "audio", "text", "label", "session"]
    assert set(listed["label"]) <= set(LABELS) and listed["session"].tolist()[0] == 1
    assert f"--manifest {tmp_path / 'd' / MANIFEST_NAME}" in proc.stdout


# -- command lines ----------------------------------------------------------------------------
def _prepare_argv(corpus: tuple, encoders: tuple, out: Path, *extra: str) -> list[str]:
    """`python -m data_prep.prepare` of the test corpus, its classes in order, into ``out``."""
    return [
        "--manifest",
        str(corpus[0]),
        "--labels",
        ",".join(CLASSES),
        "--audio-model",
        encoders[0],
        "--text-model",
        encoders[1],
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--strict"], "error: --strict: 7 faulty utterance(s)"),
        (["--neutral-label", "neutral"], "--neutral-label 'neutral' is not a class of"),
        (["--column", "mood=emotion"], "unknown role 'mood'"),
        (["--column", "label=emotion"], "no column for label (column 'emotion')"),
        (["--labels", "calm,,joy"], "expected comma-separated class names"),
    ],
)
def test_prepare_manifest_usage_errors(corpus, encoders, tmp_path, capsys, extra, needle) -> None:
    argv = _prepare_argv(corpus, encoders, tmp_path, "--quiet", *extra)
    assert prepare_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no store


def test_manifest_flags_need_a_manifest(capsys) -> None:
    assert prepare_main(["--demo", "--neutral-label", "calm"]) == 2
    assert "--neutral-label: only with --manifest" in capsys.readouterr().err


def test_search_run_takes_a_manifest_file(corpus, tmp_path) -> None:
    from search.settings import UsageError, parse_settings

    s = parse_settings(["--space", "case", "--data", str(corpus[0])], cwd=tmp_path)
    assert (s.data_kind, s.data) == ("manifest", str(corpus[0].resolve()))
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(UsageError, match="a file must be a manifest"):
        parse_settings(["--space", "case", "--data", str(other)], cwd=tmp_path)


def test_search_run_prepares_a_manifest_or_says_why_not(corpus, tmp_path) -> None:
    bad = tmp_path / "renamed.csv"
    text = corpus[0].read_text(encoding="utf-8").replace(",label,", ",emotion,", 1)
    bad.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.run",
            "--space",
            "case",
            "--data",
            str(bad),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"search.run: error: --data {bad}: cannot prepare this corpus:")
    assert "no column for label (column 'label')" in err and "--column label=emotion" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


# -- prepare, sweep, finalize ---------------------------------------------------------------
def test_four_class_manifest_corpus_through_prepare_sweep_and_finalize(
    corpus, encoders, tmp_path, capsys
) -> None:
    """The CLI prepares the 4-class corpus; a 2-trial sweep and a finalize run on it. The
    metric names follow the store's classes and, with no neutral class, the seed's micro-F1
    appears nowhere: not in MLflow, not in the leaderboard, not in final.md or final.csv."""
    from search import finalize as fz

    stores = tmp_path / "stores"
    argv = _prepare_argv(
        corpus,
        encoders,
        stores,
        "--max-frames",
        "48",
        "--max-tokens",
        "16",
        "--threads",
        "1",
    )
    assert prepare_main(argv) == 0
    out = capsys.readouterr()
    for kind in FAULT_LINES:  # the faults are summarised on stderr
        assert f"{kind}: 1" in out.err
    store_path = Path(out.out.split("feature store: ")[1].split()[0])
    header = next(ln for ln in out.out.splitlines() if "total" in ln).split()
    assert header == [*CLASSES, "total"]
    store = FeatureStore.open(store_path)
    assert store.num_classes == 4

    with case_tune_home(tmp_path / "home"):
        run_tiny_sweep(
            tmp_path, store_path, "m4", num_samples=2, max_epochs=2, final_epochs=3, warm_start=True
        )
        fin = fz.parse_settings(
            [
                "--sweep",
                "m4",
                "--results-dir",
                str(tmp_path / "results"),
                "--top-k",
                "1",
                "--seeds",
                "0",
            ],
            cwd=tmp_path,
        )
        outcome = fz.finalize(fin, quiet=True)
    assert not outcome.failed

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("case-tune").experiment_id
    runs = client.search_runs([exp])
    trials = [r for r in runs if r.data.tags.get("case_tune.kind") == "trial"]
    finals = [r for r in runs if r.data.tags.get("case_tune.kind") == "final"]
    units = [r for r in finals if "mlflow.parentRunId" in r.data.tags]  # not finalize's own run
    assert len(trials) == 2 and len(units) == 1 and len(finals) == 2
    for run in trials:
        keys = set(run.data.metrics)
        assert {
            "val_macro_f1",
            "val_weighted_f1",
            "val_micro_f1",
            "val_loss",
            "train_macro_f1",
        } <= keys
        assert {f"val_f1_{c}" for c in CLASSES} <= keys
        assert not {k for k in keys if "seed_micro" in k}
    unit_keys = set(units[0].data.metrics)
    assert {f"chosen_test_f1_{c}" for c in CLASSES} | {"chosen_test_macro_f1"} <= unit_keys
    for run in finals:
        assert not {k for k in run.data.metrics if "seed_micro" in k}

    sweep_dir = tmp_path / "results" / "m4"
    board = (sweep_dir / "leaderboard.md").read_text()
    assert "seed micro" not in board and "val weighted-F1" in board
    assert not [c for c in pd.read_csv(sweep_dir / "trials.csv").columns if "seed_micro" in c]
    md = (sweep_dir / "final.md").read_text()
    assert "Seed Micro-F1" not in md and "names no neutral class" in md
    majority = CLASSES[int(np.argmax(np.bincount(store.labels("train"), minlength=4)))]
    assert f"*all-{majority} baseline (same test split)*" in md
    assert "| " + " | ".join(CLASSES) + " |" in md  # per-class F1 of the best row
    assert "published on KEMDy20" not in md
    final_csv = pd.read_csv(sweep_dir / "final.csv")
    assert "chosen_test_macro_f1_mean" in final_csv.columns
    assert not [c for c in final_csv.columns if "seed_micro" in c]


def test_the_readme_manifest_example_reads_cleanly(tmp_path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Any corpus")[1].split("```csv\n")[1].split("```")[0]
    assert len(block.strip().splitlines()) == 5  # the five-line example
    (tmp_path / "corpus.csv").write_text(block, encoding="utf-8")
    rng = np.random.default_rng(0)
    for line in block.strip().splitlines()[1:]:
        audio = tmp_path / line.split(",")[1]
        audio.parent.mkdir(parents=True, exist_ok=True)
        rate = 44100 if "44k" in audio.parts else 16000
        sf.write(str(audio), 0.1 * rng.standard_normal(rate // 2), rate)
    read = read_manifest(tmp_path / "corpus.csv", neutral_label="neutral")
    assert not read.faults and len(read.utterances) == 4
    assert read.label_names == ("angry", "happy", "neutral", "sad")
