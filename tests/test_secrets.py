"""Tracking URIs with credentials: the password never reaches a file or a printed line; the
real URI is used only to connect (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster import mlflow_server  # noqa: F401 - fixture

from search.redact import connect_uri, is_redacted, redact_text, redact_uri, remember
from search.settings import UsageError, parse_settings
from tests.search_helpers import cli_env

SECRET = "s3cretT0ken"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"http://alice:{SECRET}@mlflow.example:5000", "http://alice:***@mlflow.example:5000"),
        (f"postgresql://bob:{SECRET}@db:5432/mlflow", "postgresql://bob:***@db:5432/mlflow"),
        (f"https://{SECRET}@host/x", "https://***@host/x"),
        (f"https://host/api?token={SECRET}&a=1", "https://host/api?token=***&a=1"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown and SECRET not in redact_uri(uri)
    assert is_redacted(shown) == (shown != uri)
    assert connect_uri(remember(uri)) == uri  # the real one stays in memory only
    assert SECRET not in redact_text(f"cmd --tracking-uri {uri} --x 1")


def test_resume_needs_the_password_again(tmp_path: Path) -> None:
    results = tmp_path / "results" / "s"
    results.mkdir(parents=True)
    saved = parse_settings(
        ["--space", "case", "--name", "s", "--tracking-uri", f"http://alice:{SECRET}@h:5000"],
        cwd=tmp_path,
    )
    stored = {**saved.to_dict(), "tracking_uri": redact_uri(saved.tracking_uri)}
    (results / "sweep.json").write_text(json.dumps({"settings": stored}))
    with pytest.raises(UsageError, match="whose password is not stored") as err:
        parse_settings(["--name", "s", "--resume"], cwd=tmp_path)
    assert SECRET not in str(err.value)
    again = parse_settings(
        ["--name", "s", "--resume", "--tracking-uri", f"http://alice:{SECRET}@h:5000"], cwd=tmp_path
    )
    assert again.tracking_uri == f"http://alice:{SECRET}@h:5000"
    with pytest.raises(UsageError, match=r"--tracking-uri http://alice:\*\*\*@other:5000 differs"):
        parse_settings(
            ["--name", "s", "--resume", "--tracking-uri", f"http://alice:{SECRET}@other:5000"],
            cwd=tmp_path,
        )


def _grep(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_no_file_or_printed_line_holds_the_password(
    mlflow_server,  # noqa: F811
    demo_store: Path,
    tmp_path: Path,
) -> None:
    url, _db = mlflow_server
    uri = url.replace("http://", f"http://alice:{SECRET}@")
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env(work)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.run",
            "--space",
            "baselines",
            "--data",
            str(demo_store),
            "--name",
            "sec",
            "--num-samples",
            "2",
            "--max-epochs",
            "1",
            "--warm-start",
            "--tracking-uri",
            uri,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # The summary links the server's UI, which takes no credentials in its address.
    assert f"MLflow UI: open {url.rstrip('/')} " in run.stdout
    fin = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.finalize",
            "--sweep",
            "sec",
            "--tracking-uri",
            uri,
            "--top-k",
            "1",
            "--seeds",
            "0",
            "--epochs",
            "1",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert fin.returncode == 0, fin.stdout[-2000:] + fin.stderr[-2000:]
    for out in (run.stdout, run.stderr, fin.stdout, fin.stderr):
        assert SECRET not in out
    results = work / "results" / "sec"
    for name in ("sweep.json", "best_configs.yaml", "final.md", "final/state.json"):
        text = (results / name).read_text()
        assert SECRET not in text and "alice:***@" in text, name
    # Nothing anywhere in the working folder or CASE_TUNE_HOME (Tune's pickled state too).
    assert _grep(work, SECRET.encode()) == []
