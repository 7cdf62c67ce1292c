"""Nested cross-validation of the whole search (search.run --outer-folds K, then finalize).

The fast tests check the outer folds of the demo store, the bad inputs and the pooling; the
slow one runs a K=3 set end to end through the command line with every split load audited
(CASE_TUNE_AUDIT_DIR): no fold's sweep ever reads its own test sessions, each fold's
finalize reads only them, and the pooled figures are the folds' own predictions, concatenated.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.outer import outer_splits, write_outer_stores
from data_prep.store import ARRAY_NAMES, FeatureStore
from search.nested import FoldResult, pool
from search.settings import UsageError, parse_settings, sweep_argv
from tests.search_helpers import REPO, cli_env, mlflow_runs

SPACE = """\
params:
  model: {choice: [case-attention, case-concat-attention]}
  lr: {loguniform: [0.001, 0.005]}
fixed: {hidden: 16, faithful: false, audio_frames: 32}
"""


def test_outer_folds_test_every_session_once(demo_store) -> None:
    store = FeatureStore.open(demo_store)
    sessions = sorted(set(store.table["session"].tolist()))
    splits = outer_splits(store, 3)
    assert sorted(s for sp in splits for s in sp.test) == sessions  # each exactly once
    for sp in splits:
        assert sp.train and sp.val and not set(sp.train) & set(sp.val)
        assert sorted([*sp.train, *sp.val, *sp.test]) == sessions


def test_fold_stores_link_the_features_and_are_written_once(demo_store) -> None:
    paths = write_outer_stores(demo_store, 3)
    base = FeatureStore.open(demo_store)
    for k, path in enumerate(paths):
        fold = FeatureStore.open(path, sealed=("test",))
        assert all((path / f"{n}.npy").is_symlink() for n in ARRAY_NAMES)
        assert np.array_equal(fold.audio, base.audio)
        assert (
            fold.manifest["outer"]["fold"] == k and fold.manifest["outer"]["of_store"] == base.key
        )
        test = set(fold.manifest["outer"]["test_sessions"])
        train_val = np.concatenate([fold.indices("train"), fold.indices("val")])
        assert not test & set(fold.table["session"].to_numpy()[train_val].tolist())
    stamps = [(p / "manifest.json").stat().st_mtime_ns for p in paths]
    assert write_outer_stores(demo_store, 3) == paths
    assert [(p / "manifest.json").stat().st_mtime_ns for p in paths] == stamps  # reused


def test_bad_outer_folds_are_one_line_and_exit_2(tmp_path, demo_store, capsys) -> None:
    from search.run import main

    with pytest.raises(UsageError, match="--outer-folds must be 2 or more"):
        parse_settings(sweep_argv(demo_store, "x", tmp_path, outer_folds=1), cwd=tmp_path)
    argv = sweep_argv(demo_store, "many", tmp_path, outer_folds=40)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(argv) == 2
    finally:
        os.chdir(old)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--outer-folds 40" in err[0] and "8 sessions" in err[0], err
    assert not (tmp_path / "results" / "many").exists()  # nothing half-written
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started


def _fold(k: int, gold, sessions, preds, model="case-attention") -> FoldResult:
    return FoldResult(
        k=k,
        sweep=f"s-outer{k}",
        test_sessions=sorted(set(sessions)),
        label=model,
        model=model,
        trial_id=f"t{k}",
        config={"model": model},
        key_params={},
        seeds=sorted(preds),
        scores={"macro_f1": [0.5], "seed_micro_f1": [0.5], "weighted_f1": [0.5]},
        preds=preds,
        gold=np.asarray(gold),
        sessions=np.asarray(sessions),
        num_classes=3,
        neutral_index=0,
    )


def test_pooling_scores_the_concatenated_predictions() -> None:
    from models.metrics import classification_metrics

    a = _fold(0, [0, 1, 2, 1], [1, 1, 2, 2], {0: [0, 1, 1, 1], 42: [0, 1, 2, 0]})
    b = _fold(1, [2, 2, 0], [3, 3, 4], {0: [2, 0, 0], 42: [2, 2, 0]}, model="concat")
    out = pool([a, b])
    gold = [0, 1, 2, 1, 2, 2, 0]
    want = np.mean(
        [
            classification_metrics(np.array(p), np.array(gold), "test", 3, neutral_index=0)[
                "test_macro_f1"
            ]
            for p in ([0, 1, 1, 1, 2, 0, 0], [0, 1, 2, 0, 2, 2, 0])
        ]
    )
    assert out["point"]["macro_f1"] == pytest.approx(want)
    lo, hi = out["ci"]["macro_f1"]
    assert lo <= hi and out["sessions"] == 4 and out["rows"] == 7
    assert (out["family"], out["same_family"], out["folds"]) == ("case-attention", 1, 2)
    assert out["seeds"] == [0, 42]
    # no seed every fold has (a failed final run): nothing to pool, said as such
    c = _fold(2, [1], [5], {7: [1]})
    assert pool([a, c]) == {}


@pytest.mark.slow
def test_a_nested_cv_set_end_to_end(tmp_path, demo_store) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    (tmp_path / "space.yaml").write_text(SPACE)
    env = {**cli_env(tmp_path), "CASE_TUNE_AUDIT_DIR": str(audit)}
    common = ["--results-dir", str(tmp_path / "results")]
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    sweep = ["-m", "search.run", "--space", str(tmp_path / "space.yaml"), "--data"]
    sweep += [str(demo_store), "--name", "nest", "--outer-folds", "3", "--num-samples", "2"]
    sweep += ["--max-epochs", "2", "--tracking-uri", tracking, *common]
    run(*sweep)
    sweep_loads = _loads(audit)
    for f in audit.iterdir():
        f.unlink()
    final = ["-m", "search.finalize", "--sweep", "nest", "--top-k", "1", "--epochs", "3"]
    out = run(*final, *common).stdout
    final_loads = _loads(audit)

    record = json.loads((tmp_path / "results/nest/sweep.json").read_text())["outer"]
    stores = [FeatureStore.open(p) for p in record["stores"]]
    all_sessions = sorted(set(stores[0].table["session"].tolist()))
    assert sorted(s for t in record["test_sessions"] for s in t) == all_sessions
    for store, test in zip(stores, record["test_sessions"], strict=True):
        mine = [x for x in sweep_loads if x["store"] == store.key]
        assert mine and {x["split"] for x in mine} == {"train", "val"}
        assert not set(test) & {s for x in mine for s in x["sessions"]}  # never its test
        read = [x for x in final_loads if x["store"] == store.key and x["split"] == "test"]
        assert read and all(x["sessions"] == sorted(test) for x in read)
    assert not [x for x in sweep_loads if x["split"] == "test"]

    # Pooled = the folds' own test predictions, concatenated (read from their unit records).
    from models.metrics import classification_metrics
    from search.final_report import best_row, build_rows

    golds, preds = [], {}
    for k, store in enumerate(stores):
        fold_dir = tmp_path / "results" / f"nest-outer{k}"
        state = json.loads((fold_dir / "final/state.json").read_text())
        units = [json.loads(p.read_text()) for p in (fold_dir / "final/units").glob("*.json")]
        best = best_row(build_rows(state["candidates"], units))
        golds.append(store.labels("test"))
        for u, e in zip(best.units, best.chosen_epochs, strict=True):
            preds.setdefault(u["seed"], []).extend(u["test_pred"][str(e)])
    gold = np.concatenate(golds)
    n, neutral = stores[0].num_classes, stores[0].neutral_index
    want = np.mean(
        [
            classification_metrics(np.array(p), gold, "test", n, neutral_index=neutral)[
                "test_macro_f1"
            ]
            for p in preds.values()
        ]
    )
    with open(tmp_path / "results/nest/outer.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pooled = rows[-1]
    assert pooled["fold"] == "pooled" and float(pooled["test_macro_f1"]) == pytest.approx(
        want, abs=1e-6
    )
    # outer.csv and final.md agree, row by row
    md = (tmp_path / "results/nest/final.md").read_text()
    for r in rows[:-1]:
        line = next(x for x in md.splitlines() if x.startswith(f"| {r['fold']} ("))
        assert r["trial_id"] in line and r["model"] in line
        assert f"| {100 * float(r['test_macro_f1']):.1f} |" in line
    assert f"| test macro-f1 | {100 * float(pooled['test_macro_f1']):.1f} |" in md
    assert re.search(r"Nested CV nest: pooled test macro-F1 [\d.]+ \[", out)

    # MLflow: one set run, its three fold sweeps nested under it, their trials under them.
    (set_run,) = mlflow_runs(tracking, kind="outer")
    folds = [r for r in mlflow_runs(tracking, kind="sweep")]
    assert sorted(r.info.run_name for r in folds) == [f"nest-outer{k}" for k in range(3)]
    assert all(r.data.tags["mlflow.parentRunId"] == set_run.info.run_id for r in folds)
    assert set_run.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in folds)
    trials = len(mlflow_runs(tracking, kind="trial"))
    assert trials == 6

    # A resume of the finished set reruns nothing; --outer-folds on a plain sweep's resume is
    # refused naming the recorded value.
    run("-m", "search.run", "--name", "nest", "--resume", "--tracking-uri", tracking, *common)
    assert len(mlflow_runs(tracking, kind="trial")) == trials
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--name", "nest-outer0", "--resume"]
        + ["--outer-folds", "3", *common],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "recorded 0" in proc.stderr, proc.stderr


def _loads(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.open()]


def test_audit_is_off_unless_asked(tmp_path, demo_store, monkeypatch) -> None:
    import torch

    from models.data import load_split

    store = FeatureStore.open(demo_store, sealed=("test",))
    monkeypatch.delenv("CASE_TUNE_AUDIT_DIR", raising=False)
    load_split(store, "val", uses=frozenset({"text"}), frames=8, device=torch.device("cpu"))
    monkeypatch.setenv("CASE_TUNE_AUDIT_DIR", str(tmp_path))
    load_split(store, "val", uses=frozenset({"text"}), frames=8, device=torch.device("cpu"))
    (line,) = _loads(tmp_path)
    val = store.table["session"].to_numpy()[store.indices("val")]
    assert line == {
        "store": store.key,
        "split": "val",
        "rows": len(val),
        "sessions": sorted(set(int(s) for s in val)),
    }
    assert os.listdir(tmp_path) == [f"loads-{os.getpid()}.jsonl"]


def test_readme_shows_the_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "--outer-folds" in readme and "outer.csv" in readme
