"""bench/gpu_check's dry run: the prepared GPU check runs here, on the CPU, end to end.

No GPU is at hand where CI runs; the dry run takes every step of the check (the CUDA tests,
packed trials, resident vs streamed, extraction, the demo sweep and finalize) at small sizes,
so the script a GPU machine will run has run before it gets there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_timed_pass_measures_the_wait_for_data(tmp_path) -> None:
    from bench.gpu_check import DRY_SIZES, Plan, timed_pass, write_store
    from data_prep.store import FeatureStore
    from models.train import Trainer

    plan = Plan(dry=True, utterances=96, sizes=DRY_SIZES)
    store = FeatureStore.open(write_store(tmp_path, plan), sealed=("test",))
    assert write_store(tmp_path, plan) == store.path  # written once per check
    trainer = Trainer({"model": "case-compressing", "batch_size": 32}, store, eval_splits=())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    wait = timed_pass(trainer)
    assert 0.0 < wait < 1.0
    after = list(trainer.model.parameters())
    assert any(not b.equal(a) for b, a in zip(before, after, strict=True))  # it trained


@pytest.mark.slow
def test_the_dry_run_takes_every_step_in_under_three_minutes() -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--no-write"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("## GPU check") :]
    steps = re.findall(r"^\| (\w+) \|", table, flags=re.M)
    assert {"tests", "packing", "split", "prepare", "demo"} <= set(steps), table
    assert "failed" not in table
    assert re.search(r"\| tests \| `pytest -m gpu` \| \d+ skipped", table), table
    # packed trials and the split comparison ran and measured something
    assert re.search(r"2 trial\(s\) of 1/2 GPU.*\| [\d.]+ \([\d.]+x of 1\)", table), table
    assert (
        len(
            re.findall(
                r"^\| split \| (resident|streamed), fp32 \((bf|fp)16 asked", table, flags=re.M
            )
        )
        == 4
    )
    assert re.search(r"\| demo \| its pick vs the CPU run's", table), table
    assert took < 180, f"the dry run took {took:.0f} s"
