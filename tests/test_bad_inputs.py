"""Bad inputs through the real commands: one line on stderr, exit code 2, no traceback, and
nothing written (issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.search_helpers import cli_env


def _run(tmp: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp,
        env=cli_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    return err


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_search_run_on_a_kemdy20_folder_that_cannot_be_prepared(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "annotation").mkdir(parents=True)  # looks like KEMDy20, holds no CSV
    (corpus / "wav").mkdir()
    proc = _run(
        tmp_path,
        "search.run",
        "--space",
        "case",
        "--data",
        str(corpus),
        "--results-dir",
        str(tmp_path / "results"),
    )
    err = _one_line_error(proc, f"--data {corpus}: cannot prepare this corpus")
    assert err.startswith("search.run: error:") and "no SessNN_eval.csv" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.journal").exists()
    assert not (tmp_path / "results").exists() and not _files(tmp_path / "home" / "stores")


def test_models_train_on_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notastore").mkdir()
    proc = _run(
        tmp_path, "models.train", "--model", "text-only", "--data", str(tmp_path / "notastore")
    )
    _one_line_error(proc, "is not a complete feature store")
    proc = _run(
        tmp_path, "models.train", "--model", "text-only", "--data", str(tmp_path / "missing")
    )
    _one_line_error(proc, "models.train: error: --data")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-frames", "0"], "--max-frames must be >= 1 (got 0)"),
        (["--max-frames", "-5"], "--max-frames must be >= 1 (got -5)"),
        (["--max-tokens", "2"], "--max-tokens must be >= 3 (got 2)"),
        (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
        (["--sessions", "0"], "--sessions must be >= 3 (got 0)"),
        (["--utterances-per-script", "-1"], "--utterances-per-script must be >= 1"),
    ],
)
def test_prepare_rejects_non_positive_sizes(
    tmp_path: Path, monkeypatch, capsys, args: list[str], needle: str
) -> None:
    from data_prep.prepare import main

    monkeypatch.setenv("CASE_TUNE_HOME", str(tmp_path / "home"))
    for source in (["--demo"], ["--kemdy20", str(tmp_path / "corpus")]):
        assert main([*source, *args, "--out", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not _files(tmp_path / "s") and not _files(tmp_path / "home")


def test_finalize_sweep_name_cannot_leave_the_results_folder(tmp_path: Path) -> None:
    # A sweep-looking folder beside the results folder: '../x' would reach it.
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "best_configs.yaml").write_text("top: []\n")
    results = tmp_path / "results"
    results.mkdir()
    before = _files(tmp_path)
    for bad in ("../x", "..", "a/b", "/abs"):
        proc = _run(tmp_path, "search.finalize", "--sweep", bad, "--results-dir", str(results))
        err = _one_line_error(proc, f"--sweep {bad!r}: use letters, digits")
        assert err.startswith("search.finalize: error:")
    assert _files(tmp_path) == before  # nothing read into a finalize, nothing written


def test_search_run_name_is_checked_the_same_way(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        "search.run",
        "--space",
        "case",
        "--name",
        "../x",
        "--results-dir",
        str(tmp_path / "results"),
    )
    _one_line_error(proc, "--name '../x': use letters, digits")
