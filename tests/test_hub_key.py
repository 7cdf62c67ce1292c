"""A store's key for a hub model id is the same before and after the model is downloaded.

Offline: a Hugging Face cache is laid out by hand in a temporary HF_HOME (blobs, a snapshot
of symlinks, refs/main), exactly as a download leaves it, from the demo encoders'
`save_pretrained` folders. It runs in a child process because huggingface_hub reads HF_HOME
once, at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from data_prep.demo import write_demo_corpus

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import hashlib, json, os, sys
from pathlib import Path

from data_prep.prepare import plan, prepare_store

corpus, audio_dir, text_dir, stores = sys.argv[1:5]
cache = Path(os.environ["HF_HOME"]) / "hub"
REPOS = {"case-tune-test/tiny-audio": audio_dir, "case-tune-test/tiny-text": text_dir}

def download(repo, src, commit):
    # What `hf download` / from_pretrained leave: blobs by hash, a snapshot of links, a ref.
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir(exist_ok=True)
    for f in Path(src).iterdir():
        data = f.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)

opts = dict(audio_model="case-tune-test/tiny-audio", text_model="case-tune-test/tiny-text",
            max_frames=64, max_tokens=16)
out = {"before": plan(corpus, **opts).key}
for repo, src in REPOS.items():
    download(repo, src, "a" * 40)
out["after"] = plan(corpus, **opts).key
first = prepare_store(corpus, stores_root=stores, progress=False, **opts)
second = prepare_store(corpus, stores_root=stores, progress=False, **opts)
out["first"] = [first.key, first.reused, first.manifest["encoders"]["audio"]["commit"]]
out["second"] = [second.key, second.reused]
# The hub's main moves on and the new commit is downloaded: same key, and a note says so.
for repo, src in REPOS.items():
    (cache / ("models--" + repo.replace("/", "--")) / "refs" / "main").unlink()
    download(repo, src, "b" * 40)
third = prepare_store(corpus, stores_root=stores, progress=True, **opts)
out["third"] = [third.key, third.reused]
print(json.dumps(out))
"""


def test_hub_key_is_stable_across_the_first_download(demo_store, tmp_path) -> None:
    m = json.loads((demo_store / "manifest.json").read_text())
    corpus = write_demo_corpus(tmp_path / "corpus", sessions=3, utterances_per_script=1)
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    args = [
        str(corpus),
        m["encoders"]["audio"]["path"],
        m["encoders"]["text"]["path"],
        str(tmp_path / "stores"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    key = out["before"]
    assert out["after"] == key  # downloading does not change the key ...
    assert out["first"] == [key, False, "a" * 40]  # ... the manifest records the commit ...
    assert out["second"] == [key, True]  # ... and the second prepare extracts nothing
    assert out["third"] == [key, True]
    assert "cache now holds bbbbbbbbbbbb" in proc.stderr
    assert [p.name for p in (tmp_path / "stores").iterdir() if not p.name.startswith(".")] == [key]
