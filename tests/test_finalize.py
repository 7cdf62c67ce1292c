"""`search.finalize` on a real tiny sweep: real Ray, real MLflow (sqlite), real training.

The module fixture runs a 2-trial sweep through `search.run.run_sweep` (2 of 4 scheduled
epochs each), then a finalize of its 2 configs x 2 seeds x 4 epochs as `python -m
search.finalize`, SIGKILLed (search.faults) right after its first finished unit, with the next
unit in flight and its MLflow run left RUNNING, and resumed. Every assertion below reads the
files and the MLflow record it produced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from models.selection import best_epoch
from search import final_plan as plan
from search import final_report as fr
from search import finalize as fz
from search import tracking
from search.faults import FAULT_ENV
from search.final_records import UNIT
from search.final_unit import run_unit
from tests.search_helpers import case_tune_home, cli_env, run_tiny_sweep

SEEDS = [0, 1]
# No --epochs: the final runs take the sweep's --final-epochs (4), which its trials' schedules
# spanned; the trials ran the first 2 of them.
ARGS = ["--top-k", "2", "--seeds", *map(str, SEEDS)]


def _sweep(tmp: Path, store: Path, name: str = "tiny") -> Path:
    fixed = {"audio_frames": 32}  # short audio: every trial and unit stays cheap
    run_tiny_sweep(
        tmp, store, name, fixed=fixed, num_samples=2, max_epochs=2, final_epochs=4, warm_start=True
    )
    return tmp / "results"


@pytest.fixture(scope="module")
def finalized(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("finalize")
    with case_tune_home(tmp / "home"):
        results = _sweep(tmp, demo_store)
        argv = ["--sweep", "tiny", "--results-dir", str(results), *ARGS]
        first = _killed_after_first_unit(tmp, results, argv)
        units_dir = results / "tiny" / "final" / "units"
        before = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in units_dir.glob("*.json")}
        client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
        running_before = [
            r
            for r in client.search_runs([first_exp(client)], run_view_type=ViewType.ALL)
            if r.info.status == "RUNNING" and r.data.tags.get(tracking.KIND) == "final"
        ]
        resumed = fz.finalize(fz.parse_settings([*argv, "--resume"], cwd=tmp), quiet=True)
    return {
        "tmp": tmp,
        "results": results,
        "first": first,
        "resumed": resumed,
        "before": before,
        "running_before": running_before,
        "client": client,
    }


def _killed_after_first_unit(tmp: Path, results: Path, argv: list[str]) -> SimpleNamespace:
    """`python -m search.finalize` SIGKILLed by search.faults right after its first unit was
    saved and logged, as a killed driver is: nothing of it cleans up. Returns what that driver
    did (the units it trained, by its progress lines; its parent run)."""
    log = tmp / "killed_finalize.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "search.finalize", *argv],
            cwd=tmp,
            env={**cli_env(tmp), FAULT_ENV: "unit_recorded:1"},
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):  # whatever its Ray left behind
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == -signal.SIGKILL, text
    state = json.loads((results / "tiny/final/state.json").read_text())
    trained = re.findall(r"^  \[\d+/\d+\] ", text, flags=re.MULTILINE)
    return SimpleNamespace(units_run=len(trained), parent_run_id=state["parent_run_id"])


def first_exp(client: MlflowClient) -> str:
    return client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id


def _units(results: Path) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted((results / "tiny/final/units").glob("*.json"))
    ]


def _final_runs(client: MlflowClient, parent: str, view=ViewType.ACTIVE_ONLY) -> list:
    return client.search_runs(
        [first_exp(client)],
        filter_string=f"tags.`{tracking.PARENT}` = '{parent}' and tags.`{tracking.KIND}` = 'final'",
        run_view_type=view,
    )


# -- pure pieces ----------------------------------------------------------------------------
def test_epoch_choice_rules() -> None:
    assert plan.fixed_epoch(150) == 120
    assert plan.fixed_epoch(4) == 4  # shorter training: its last epoch


def test_mean_std_format_matches_numpy() -> None:
    vals = [0.3282, 0.3101, 0.3350]
    m, s = np.mean(vals), np.std(vals, ddof=1)
    assert fr.fmt_pm(vals) == f"{100 * m:.2f} ± {100 * s:.2f}"
    assert fr.fmt_pm([0.5]) == "50.00"  # one seed: no spread to show


def test_corpus_kind_from_manifest(demo_store: Path) -> None:
    from data_prep.store import FeatureStore

    assert fr.corpus_kind(FeatureStore.open(demo_store).manifest) == "demo"
    real = {
        "corpus": {"name": "KEMDy20_v1_1"},
        "encoders": {
            "text": {"name": "klue/bert-base"},
            "audio": {"name": "kresnik/wav2vec2-large-xlsr-korean"},
        },
    }
    assert fr.corpus_kind(real) == "kemdy20"
    other = {**real, "encoders": {"text": {"name": "bert-x"}, "audio": {"name": "w2v-y"}}}
    assert fr.corpus_kind(other) == "other"


# -- the command line -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--sweep", "nope"], "no best_configs.yaml"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--models", "case-compresing"], "unknown model family case-compresing"),
        (["--models", "mmm"], "has no scored trial of mmm"),  # known family, not in the sweep
    ],
)
def test_bad_flags_exit_2_with_one_line_before_ray(
    finalized: dict, capsys, tmp_path: Path, extra, needle
) -> None:
    import ray

    results = finalized["results"]
    if "--models" in extra:  # a sweep without a finalize yet, so the family check is reached
        results = tmp_path / "results"
        (results / "tiny").mkdir(parents=True)
        for name in ("best_configs.yaml", "sweep.json"):
            shutil.copy(finalized["results"] / "tiny" / name, results / "tiny" / name)
    argv = ["--sweep", "tiny", "--results-dir", str(results), *extra]
    if "--sweep" in extra:
        argv = argv[2:]
    assert fz.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


# -- the finalize of a real tiny sweep ------------------------------------------------------
def test_table_rows_columns_and_spread(finalized: dict) -> None:
    results = finalized["results"]
    md = (results / "tiny/final.md").read_text()
    head = md.split("## Test scores")[0]
    assert "python -m search.finalize --sweep tiny --results-dir" in head
    assert "Data store key: `demo-" in head and "Date: " in head
    assert all(f"  - {item}" in head for item in fr.NOT_REPRODUCIBLE)  # the protocol note
    assert fr.DEMO_NOTE in md and "published on KEMDy20" not in md
    for heading in fr.HEADINGS.values():
        assert f"| {heading} |" in md
    assert fr.SEED_MICRO_DEFINITION in md
    assert "all-neutral baseline" in md and "fixed epoch 120" in md

    runs = pd.read_csv(results / "tiny/final_runs.csv")
    table = pd.read_csv(results / "tiny/final.csv")
    assert len(table) == 2 and len(runs) == 4
    assert sorted(runs["seed"].unique()) == SEEDS
    for _, row in table.iterrows():
        mine = runs[runs["label"] == row["label"]]
        for m in fr.METRICS:
            vals = mine[f"chosen_test_{m}"].to_numpy()
            assert row[f"chosen_test_{m}_mean"] == pytest.approx(vals.mean())
            assert row[f"chosen_test_{m}_std"] == pytest.approx(vals.std(ddof=1))
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['label']} |"))
        assert fr.fmt_pm(list(mine["chosen_test_macro_f1"])) in line
        epochs = " ".join(str(e) for e in mine["chosen_epoch"])
        assert row["chosen_epochs"] == epochs
    for png in ("final_macro_f1.png", "final_confusion.png"):
        assert (results / "tiny" / png).read_bytes()[:4] == b"\x89PNG"


def test_epoch_chosen_by_validation_from_mlflow_history(finalized: dict) -> None:
    client, parent = finalized["client"], finalized["resumed"].parent_run_id
    runs = _final_runs(client, parent)
    assert len(runs) == 4
    for run in runs:
        rid = run.info.run_id
        val = {m.step: m.value for m in client.get_metric_history(rid, "val_macro_f1")}
        assert sorted(val) == [1, 2, 3, 4]  # validation every epoch
        # chosen where the trailing mean of val macro-F1 peaks (ties: earliest), any epoch
        expected, _ = best_epoch([val[e] for e in sorted(val)])
        test_steps = sorted(m.step for m in client.get_metric_history(rid, "test_macro_f1"))
        assert test_steps == sorted({expected, 4})  # test only at the chosen and fixed epochs
        assert run.data.metrics["chosen_epoch"] == expected
        assert run.data.params["chosen_epoch"] == str(expected)
        assert run.data.tags[tracking.MODEL] in ("case-compressing", "case-attention")
        arts = [a.path for a in client.list_artifacts(rid, "checkpoint")]
        assert arts == [f"checkpoint/epoch_{expected:04d}.pt"]
    parent_run = client.get_run(parent)
    assert parent_run.data.tags[tracking.KIND] == "final"
    assert parent_run.data.tags[tracking.SPACE] == "case"
    assert parent_run.info.status == "FINISHED"
    assert "results/final.md" in [a.path for a in client.list_artifacts(parent, "results")]


def test_seed_0s_final_run_repeats_its_trial_exactly(finalized: dict) -> None:
    """The prefix property: a trial is the beginning of its final run. The sweep ran seed 0
    for 2 of 4 scheduled epochs; finalize's seed-0 run of the same config logs the very same
    numbers for those epochs (bit for bit on CPU), then goes on; seed 1 does not."""
    client = finalized["client"]
    sweep_parent = json.loads((finalized["results"] / "tiny/sweep.json").read_text())[
        "parent_run_id"
    ]
    trials = {
        t.data.tags[tracking.TRIAL_ID]: t
        for t in tracking.trial_runs(client, first_exp(client), sweep_parent)
    }
    checked = 0
    for u in _units(finalized["results"]):
        trial = trials[u["trial_id"]]
        logged = {k for k in trial.data.metrics if k.startswith(("train_", "val_"))}
        logged &= set(u["history"][0])  # not the search's own rung and TPE values
        assert {"train_loss", "val_macro_f1", "val_loss", "val_macro_f1_trailing"} <= logged
        same = all(
            {m.step: m.value for m in client.get_metric_history(trial.info.run_id, key)}
            == {int(h["epoch"]): h[key] for h in u["history"][:2]}
            for key in logged
        )
        assert len(u["history"]) == 4
        assert same == (u["seed"] == 0), (u["unit_id"], u["seed"])
        checked += u["seed"] == 0
    assert checked == 2


def test_test_split_read_only_by_finalize(finalized: dict) -> None:
    client = finalized["client"]
    sweep_parent = json.loads((finalized["results"] / "tiny/sweep.json").read_text())[
        "parent_run_id"
    ]
    trials = tracking.trial_runs(client, first_exp(client), sweep_parent)
    assert len(trials) == 2
    for t in trials:
        assert "test" not in t.data.tags[tracking.SPLITS_READ].split(",")
    for u in _units(finalized["results"]):
        assert u["train_splits_read"] == ["train", "val"]  # training: test sealed
        assert "test" in u["score_splits_read"]  # scoring the checkpoints afterwards


def test_resume_skips_finished_units_and_leaves_no_stale_runs(finalized: dict) -> None:
    first, resumed = finalized["first"], finalized["resumed"]
    assert first.units_run == 1 and len(finalized["before"]) == 1
    assert finalized["running_before"], "the interrupted finalize should leave RUNNING runs"
    assert resumed.units_reused == 1 and resumed.units_run == 3
    assert resumed.parent_run_id == first.parent_run_id
    units_dir = finalized["results"] / "tiny/final/units"
    for name, (mtime, text) in finalized["before"].items():
        assert (units_dir / name).stat().st_mtime_ns == mtime  # not retrained nor rewritten
        assert (units_dir / name).read_text() == text
    client = finalized["client"]
    active = _final_runs(client, resumed.parent_run_id)
    per_unit = [r.data.tags[UNIT] for r in active]
    assert sorted(per_unit) == sorted(u["unit_id"] for u in _units(finalized["results"]))
    assert len(set(per_unit)) == len(per_unit) == 4
    assert all(r.info.status == "FINISHED" for r in active)
    every = _final_runs(client, resumed.parent_run_id, ViewType.ALL)
    assert not [r for r in every if r.info.status == "RUNNING"]
    # The finished unit kept the run it had before the interruption.
    kept = {u["unit_id"]: u["mlflow_run_id"] for u in _units(finalized["results"])}
    assert {r.info.run_id for r in active} == set(kept.values())


def test_the_summary_links_the_sweeps_runs_and_compares_the_final_runs(finalized: dict) -> None:
    from search.mlflow_ui import compare_url, runs_url

    resumed, client = finalized["resumed"], finalized["client"]
    lines = fz.summary(resumed).splitlines()
    db = f"sqlite:///{finalized['tmp'] / 'mlflow.db'}"
    assert f"MLflow UI: mlflow ui --backend-store-uri {db} --host 127.0.0.1 --port 5000" in lines
    exp_id = first_exp(client)
    base = "http://127.0.0.1:5000"
    assert f"Runs:      {runs_url(base, exp_id, 'tiny')}" in lines
    # Every final run, in the plan's order (best candidate first, then by seed).
    records = {u["unit_id"]: u for u in _units(finalized["results"])}
    state = json.loads((finalized["results"] / "tiny/final/state.json").read_text())
    order = [c["key"] for c in state["candidates"]]
    ids = [
        r["mlflow_run_id"]
        for r in sorted(records.values(), key=lambda r: (order.index(r["candidate"]), r["seed"]))
    ]
    assert resumed.run_ids == ids and len(ids) == 4
    compare = f"Compare:   {compare_url(base, exp_id, ids)}  (the final runs, best config first, 4)"
    assert compare in lines
    # The best row's config, floats to 4 significant digits (best_configs.yaml has them all).
    best = resumed.best
    config = next(c["config"] for c in state["candidates"] if c["label"] == best["label"])
    assert best["config"] == config
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in config.items()
        if k not in ("epochs", "seed")
    )
    assert f"           config: {shown}" in lines
    # The finalize's parent run and the experiment say what ran: its first command, its store.
    note = client.get_run(resumed.parent_run_id).data.tags[tracking.NOTE]
    assert note.startswith("final runs of sweep **tiny** (")
    assert f"`python -m search.finalize --sweep tiny --results-dir {finalized['results']}" in note
    described = client.get_experiment(exp_id).tags[tracking.NOTE].splitlines()
    assert [ln[:20] for ln in described[1:]] == ["- sweep **tiny** (20", "- final runs of swee"]
    assert described[-1] == f"- {note}"


def test_changing_test_labels_does_not_change_the_chosen_epoch(
    demo_store: Path, tmp_path: Path
) -> None:
    """Same config and seed on the store and on a copy whose test labels are permuted: the
    training history and the chosen epoch are identical, only the test scores move."""
    from data_prep.store import FeatureStore
    from models.config import TrainConfig

    copy = tmp_path / demo_store.name
    shutil.copytree(demo_store, copy)
    table = pd.read_parquet(copy / "utterances.parquet")
    test = table["split"] == "test"
    rng = np.random.default_rng(0)
    table.loc[test, "label_id"] = rng.integers(0, 7, int(test.sum()))
    table.to_parquet(copy / "utterances.parquet", index=False)
    cfg = TrainConfig.from_dict(
        {"model": "case-compressing", "epochs": 4, "seed": 3, "lr": 1e-3}
    ).to_dict()
    unit = {"unit_id": "u", "candidate": "c", "model": "case-compressing", "seed": 3, "config": cfg}
    a = run_unit(unit, str(demo_store), threads=1, device="cpu")
    b = run_unit(unit, str(copy), threads=1, device="cpu")

    def scores(r: dict) -> list[dict]:  # everything but wall-clock time
        return [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in r["history"]]

    assert scores(a) == scores(b)
    assert a["chosen_epoch"] == b["chosen_epoch"]
    assert a["chosen_epoch"] == best_epoch([h["val_macro_f1"] for h in a["history"]])[0]
    assert a["test_at_checkpoint"] != b["test_at_checkpoint"]
    assert (
        FeatureStore.open(copy).labels("test").tolist()
        != FeatureStore.open(demo_store).labels("test").tolist()
    )


@pytest.mark.slow
def test_killed_driver_resumes_from_the_command_line(demo_store: Path, tmp_path: Path) -> None:
    """SIGKILL the `python -m search.finalize` process after its first finished unit; the
    resumed command trains only the rest and leaves one FINISHED run per unit."""
    env = {**os.environ, "CASE_TUNE_HOME": str(tmp_path / "home")}
    with case_tune_home(tmp_path / "home"):
        results = _sweep(tmp_path, demo_store, name="killme")
    cmd = [
        sys.executable,
        "-m",
        "search.finalize",
        "--sweep",
        "killme",
        "--results-dir",
        str(results),
        *ARGS,
        "--max-concurrent",
        "1",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    units = results / "killme/final/units"
    deadline = time.time() + 300
    while time.time() < deadline and not list(units.glob("*.json")):
        time.sleep(0.5)
    os.killpg(proc.pid, 9)
    proc.wait()

    def trained(path: Path) -> dict:
        # A unit finished just before the kill may have lost its MLflow run with the driver:
        # resume then logs it to a new run and records that run's id in the unit's file. What
        # must not change is what was trained and scored.
        rec = json.loads(path.read_text())
        rec.pop("mlflow_run_id", None)
        return rec

    first = {p.name: trained(p) for p in units.glob("*.json")}
    assert 1 <= len(first) < 4
    out = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(first)} reused" in out.stdout
    assert {p.name: trained(p) for p in units.glob("*.json") if p.name in first} == first
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = json.loads((results / "killme/final/state.json").read_text())["parent_run_id"]
    active = _final_runs(client, parent)
    assert len(active) == 4 and all(r.info.status == "FINISHED" for r in active)
    assert not [r for r in _final_runs(client, parent, ViewType.ALL) if r.info.status == "RUNNING"]


def test_units_are_named_by_what_they_train() -> None:
    cfg = {"model": "case-attention", "lr": 1e-3, "epochs": 2, "seed": 0}
    entry = {"rank": 1, "trial_id": "t1", "model": "case-attention", "config": cfg}
    moved = {**entry, "rank": 5}  # the sweep was extended: same trial, lower rank
    other = {**entry, "config": {**cfg, "lr": 2e-3}}
    (a,) = plan.select_candidates({"top": [entry]}, 1, [])
    (b,) = plan.select_candidates({"top": [moved]}, 1, [])
    (c,) = plan.select_candidates({"top": [other]}, 1, [])
    assert plan.unit_id(a, 0, 150) == plan.unit_id(b, 0, 150)  # rank plays no part
    assert (
        len(
            {
                plan.unit_id(a, 0, 150),
                plan.unit_id(c, 0, 150),
                plan.unit_id(a, 1, 150),
                plan.unit_id(a, 0, 120),
            }
        )
        == 4
    )  # config, seed and epochs each do
    assert plan.unit_id(a, 42, 150).startswith("t1-") and "-s42-e150" in plan.unit_id(a, 42, 150)


def _copy_sweep(finalized: dict, dst: Path) -> Path:
    """The finalized sweep's results and MLflow store under ``dst``, pointing at themselves."""
    src = finalized["tmp"]
    shutil.copytree(src / "results", dst / "results")
    shutil.copy(src / "mlflow.db", dst / "mlflow.db")
    old, new = f"sqlite:///{src / 'mlflow.db'}", f"sqlite:///{dst / 'mlflow.db'}"
    for f in (dst / "results/tiny").rglob("*.json"):
        f.write_text(f.read_text().replace(old, new))
    return dst / "results"


def test_resumed_finalize_after_ranks_moved_retrains_nothing_finished(
    finalized: dict, tmp_path: Path, capsys
) -> None:
    """A better trial lands at rank 1 (as when a sweep is extended): resuming the finalize
    keeps the former #1's finished units (same files, same contents) and trains only the
    new config's."""
    import yaml

    results = _copy_sweep(finalized, tmp_path)
    best = results / "tiny/best_configs.yaml"
    doc = yaml.safe_load(best.read_text())
    newcomer = {
        **doc["top"][0],
        "trial_id": "newcomer_00009",
        "mlflow_run_id": "",
        "config": {**doc["top"][0]["config"], "lr": 3e-3},
    }
    doc["top"] = [newcomer, *doc["top"]]
    for rank, e in enumerate(doc["top"], 1):
        e["rank"] = rank
    best.write_text(yaml.safe_dump(doc, sort_keys=False))
    units = results / "tiny/final/units"
    former_first = doc["top"][1]["trial_id"]
    kept = {p.name: p.read_text() for p in units.glob(f"{former_first}-*.json")}
    assert len(kept) == len(SEEDS)
    argv = ["--sweep", "tiny", "--results-dir", str(results), *ARGS, "--resume"]
    assert fz.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{4 + len(SEEDS)} runs" not in out  # sanity: the plan is top-2 x seeds
    assert f"({len(SEEDS)} trained now, {len(SEEDS)} reused)" in out, out
    assert {p.name: p.read_text() for p in units.glob(f"{former_first}-*.json")} == kept
    assert len(list(units.glob("newcomer_00009-*.json"))) == len(SEEDS)


def test_top_k_beyond_what_the_sweep_recorded_is_said(
    finalized: dict, tmp_path: Path, capsys
) -> None:
    results = _copy_sweep(finalized, tmp_path)
    shutil.rmtree(results / "tiny/final")
    recorded = len(
        plan.load_best_configs(
            fz.parse_settings(["--sweep", "tiny", "--results-dir", str(results)])
        )["top"]
    )
    argv = [
        "--sweep",
        "tiny",
        "--results-dir",
        str(results),
        "--top-k",
        "9",
        "--seeds",
        "0",
        "--epochs",
        "2",
    ]
    assert fz.main(argv) == 0
    out = capsys.readouterr().out
    note = (
        f"--top-k 9: sweep tiny recorded {recorded} scored config(s) in best_configs.yaml; "
        f"finalizing those {recorded}"
    )
    assert f"note: {note}" in out and f"Note:      {note}" in out
    assert f"Finalize tiny: {recorded} runs" in out


def test_a_unit_whose_worker_dies_is_rerun_and_one_that_raises_is_not(
    finalized: dict, tmp_path: Path, monkeypatch
) -> None:
    """The good config's unit loses its worker process once (SIGKILL as it starts, see
    search.faults): Ray runs it again and it finishes. The other config is made to raise
    (NonFiniteLossError): it runs once and is recorded failed, with its error."""
    import ray
    import yaml

    from search.faults import FAULT_ENV, FAULT_ONCE_ENV, FAULT_TRACE_ENV, read_trace

    results = _copy_sweep(finalized, tmp_path)
    shutil.rmtree(results / "tiny/final")
    best = results / "tiny/best_configs.yaml"
    doc = yaml.safe_load(best.read_text())
    doc["top"][1]["config"]["lr"] = 1e30  # diverges in its first epoch
    best.write_text(yaml.safe_dump(doc, sort_keys=False))
    argv = [
        "--sweep",
        "tiny",
        "--results-dir",
        str(results),
        "--top-k",
        "2",
        "--seeds",
        "0",
        "--epochs",
        "2",
    ]
    settings = fz.parse_settings(argv)
    good, bad = (plan.unit_id(c, 0, 2) for c in plan.select_candidates(doc, 2, []))
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv(FAULT_ENV, f"unit_start:{good}")
    monkeypatch.setenv(FAULT_ONCE_ENV, str(tmp_path / "killed"))
    monkeypatch.setenv(FAULT_TRACE_ENV, str(trace))
    if ray.is_initialized():  # workers must inherit the variables: a runtime of its own
        ray.shutdown()
    outcome = fz.finalize(settings, quiet=True)

    starts = [(at, pid) for point, at, _, pid in read_trace(trace) if point == "unit_start"]
    good_pids = [pid for at, pid in starts if at == good]
    assert len(good_pids) == 2 and good_pids[0] != good_pids[1]  # killed, then run again
    assert [at for at, _ in starts].count(bad) == 1  # raised: not run again
    assert (tmp_path / "killed").exists()
    assert [p.stem for p in settings.units_dir.glob("*.json")] == [good]
    assert len(outcome.failed) == 1 and outcome.failed[0].startswith(bad)
    assert "NonFiniteLossError" in outcome.failed[0]

    client = MlflowClient(settings.tracking_uri)
    runs = _final_runs(client, outcome.parent_run_id, view=ViewType.ALL)
    by_unit = {r.data.tags[UNIT]: r for r in runs}
    assert len(runs) == len(by_unit) == 2  # one run per unit, the rerun included
    assert by_unit[good].info.status == "FINISHED"
    assert by_unit[bad].info.status == "FAILED"
    assert "NonFiniteLossError" in by_unit[bad].data.tags[tracking.ERROR]
