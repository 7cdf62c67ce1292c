"""The numbers the search compares: ASHA's rung value and the value TPE learns from."""

from __future__ import annotations

import math
import os

from search.trainable import (
    PACKED_KEY,
    RUNG_METRIC,
    SEARCH_METRIC,
    STAT_METRIC,
    TIE_BREAK,
    epoch_report,
    tie_broken,
    unpacked,
)

ALL_NEUTRAL = 0.126108  # the demo val split's all-neutral macro-F1


def test_exact_f1_ties_are_broken_by_auroc() -> None:
    learned = {"val_macro_f1": ALL_NEUTRAL, "val_macro_auroc": 0.81, "val_loss": 9.0}
    blind = {"val_macro_f1": ALL_NEUTRAL, "val_macro_auroc": 0.52, "val_loss": 0.1}
    assert tie_broken(learned) > tie_broken(blind)  # val loss plays no part


def test_the_tie_break_never_outweighs_an_f1_difference() -> None:
    # About the smallest macro-F1 step one changed prediction makes on a 10,000-row val split
    # (a class F1 of 2TP / (2TP + FP + FN) moves by about 1 / (2 x support) at the most).
    step = 1 / 7 / 20_000
    better_f1 = {"val_macro_f1": ALL_NEUTRAL + step, "val_macro_auroc": 0.0}
    better_auroc = {"val_macro_f1": ALL_NEUTRAL, "val_macro_auroc": 1.0}
    assert tie_broken(better_f1) > tie_broken(better_auroc)
    assert step > TIE_BREAK


def test_undefined_auroc_leaves_f1_alone() -> None:
    assert tie_broken({"val_macro_f1": 0.4, "val_macro_auroc": math.nan}) == 0.4
    assert tie_broken({"val_macro_f1": 0.4}) == 0.4
    assert math.isnan(tie_broken({"val_macro_auroc": 0.7}))


def test_epoch_folders_of_dead_trial_processes_are_removed(tmp_path) -> None:
    """ASHA kills a stopped trial's worker while `tune.report` holds its epoch folder; the
    next trial (or the sweep's end) removes such folders, never a live process's."""
    import subprocess
    import sys

    from search.trainable import CHECKPOINT_PREFIX, remove_orphan_checkpoints

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)  # exited: its pid names no live process (reuse is not instant)
    dead = tmp_path / f"{CHECKPOINT_PREFIX}{dead_pid}-abc123"
    live = tmp_path / f"{CHECKPOINT_PREFIX}{os.getpid()}-def456"
    other = tmp_path / f"{CHECKPOINT_PREFIX}abcdefgh"  # an older name without a pid: unknown owner
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "trial.pt").write_bytes(b"x" * 1024)
    assert remove_orphan_checkpoints(str(tmp_path)) == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_a_stopped_workers_exit_in_a_gc_callback_prints_no_traceback(capfd) -> None:
    """Ray's SIGTERM handler raises SystemExit; landing in a weakref callback it used to print
    'Exception ignored ... SystemExit' into the sweep's output. Other errors still print."""
    import sys
    import weakref

    from search.trainable import quiet_exit_in_callbacks

    def raise_in_callback(exc: BaseException) -> None:
        class Holder:
            pass

        def callback(_ref: object) -> None:
            raise exc

        obj = Holder()
        ref = weakref.ref(obj, callback)  # noqa: F841 - kept alive so the callback runs
        del obj  # the callback runs here; Python can only report its exception

    saved = sys.unraisablehook
    sys.unraisablehook = sys.__unraisablehook__  # a Ray worker's; pytest installs its own
    try:
        raise_in_callback(SystemExit(1))
        assert "SystemExit" in capfd.readouterr().err  # Python's default: a printed traceback
        quiet_exit_in_callbacks()
        quiet_exit_in_callbacks()  # once per worker, however many trials it runs
        raise_in_callback(SystemExit(1))
        assert capfd.readouterr().err == ""
        raise_in_callback(ValueError("a real bug"))
        assert "ValueError: a real bug" in capfd.readouterr().err
    finally:
        sys.unraisablehook = saved


def test_tune_gets_the_numbers_it_acts_on_and_mlflow_every_metric() -> None:
    """An epoch's report: four numbers for Tune (it keeps statistics of every numeric key in
    every save), the rest packed; unpacked, the MLflow callback logs every metric as before."""
    import numpy as np

    from search.tracking import trial_metrics

    metrics = {
        "epoch": 3,
        "val_macro_f1": 0.41,
        STAT_METRIC: 0.4,
        "val_macro_auroc": math.nan,
        "val_f1_happy": np.float32(0.25),
        "train_loss": 1.5,
    }
    report = epoch_report(metrics, 0.4, numerics="threads=1")
    numbers = {k for k, v in report.items() if isinstance(v, int | float)}
    assert numbers == {"epoch", STAT_METRIC, RUNG_METRIC, SEARCH_METRIC}
    assert isinstance(report[PACKED_KEY], str) and report["numerics"] == "threads=1"
    back = unpacked({**report, "training_iteration": 3})
    assert PACKED_KEY not in back and back["training_iteration"] == 3
    assert math.isnan(back["val_macro_auroc"]) and back["val_f1_happy"] == 0.25
    before = {**metrics, "val_f1_happy": 0.25, RUNG_METRIC: 0.4, SEARCH_METRIC: 0.4}
    assert trial_metrics(back) == trial_metrics(before) != {}  # what was logged unpacked
    assert unpacked({"case_tune_error": "boom"}) == {"case_tune_error": "boom"}
