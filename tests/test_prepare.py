"""`python -m data_prep.prepare`: end to end, and its errors (one line, exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.demo import write_demo_corpus
from data_prep.prepare import main
from data_prep.store import FeatureStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_store):
    """A 3-session demo corpus (with its empty wavs) and the demo encoders' folders."""
    m = json.loads((demo_store / "manifest.json").read_text())
    corpus = write_demo_corpus(tmp_path_factory.mktemp("tiny"), sessions=3, utterances_per_script=1)
    return corpus, m["encoders"]["audio"]["path"], m["encoders"]["text"]["path"]


def test_cli_end_to_end(tiny, tmp_path, capsys):
    corpus, audio_dir, text_dir = tiny
    args = [
        "--kemdy20",
        str(corpus),
        "--audio-model",
        audio_dir,
        "--text-model",
        text_dir,
        "--out",
        str(tmp_path),
        "--max-frames",
        "128",
        "--max-tokens",
        "32",
    ]
    cmd = [sys.executable, "-m", "data_prep.prepare", *args, "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stores = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(stores) == 1
    store = stores[0]
    assert f"feature store: {store}" in proc.stdout
    assert f"next: python -m search.run --space case --data {store}" in proc.stdout
    assert "empty_wav" in proc.stderr  # the fault summary
    st = FeatureStore.open(store)
    assert st.key in proc.stdout and (st.max_frames, st.max_tokens) == (128, 32)
    for split in ("train", "val", "test"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(split))
        assert int(line.split()[-1]) == (st.table["split"] == split).sum()
    # Second run (in-process, to save an interpreter start): reused, says so, same store.
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "already prepared, reused" in again and f"feature store: {store}" in again


def test_strict_names_file_and_line(tiny, tmp_path, capsys):
    corpus, audio_dir, text_dir = tiny
    argv = ["--kemdy20", str(corpus), "--audio-model", audio_dir, "--text-model", text_dir]
    code = main([*argv, "--out", str(tmp_path), "--strict", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: --strict:")
    assert "annotation/Sess0" in err and "_eval.csv line " in err and "empty_wav" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--kemdy20", "/no/such/corpus"], "does not exist"),
        (["--kemdy20", "{empty}"], "no 'annotation' folder"),
        (["--text-model", "case-tune-test/not-cached"], "--text-model DIR"),
        (["--audio-model", "./missing/model/dir"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(tiny, tmp_path, capsys, extra, expected):
    corpus, audio_dir, text_dir = tiny
    argv = {"--kemdy20": str(corpus), "--audio-model": audio_dir, "--text-model": text_dir}
    argv.update(dict(zip(extra[::2], extra[1::2], strict=True)))
    empty = tmp_path / "empty"
    empty.mkdir()
    flat = [x.replace("{empty}", str(empty)) for kv in argv.items() for x in kv]
    out = tmp_path / "stores"
    assert main([*flat, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
