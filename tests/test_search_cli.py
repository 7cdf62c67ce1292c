"""`python -m search.run` refuses bad flags before Ray starts: one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search.settings import UsageError, parse_settings
from search.spaces import space_names
from tests.search_helpers import REPO, cli_env

CHECK = (
    "import sys\n"
    "from search.run import main\n"
    "rc = main(sys.argv[1:])\n"
    "assert 'ray' not in sys.modules, 'Ray was imported before validation failed'\n"
    "sys.exit(rc)\n"
)


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHECK, *args, "--results-dir", str(tmp / "results")],
        cwd=tmp,
        env=cli_env(tmp),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_space_name_exits_2_before_ray_and_lists_valid_spaces(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--space", "nope")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("search.run: error:")
    for name in space_names():
        assert name in lines[0]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--space", "case", "--max-epochs", "-3"], "--max-epochs must be a positive integer"),
        (["--space", "case", "--num-samples", "0"], "--num-samples must be a positive integer"),
        (["--space", "case", "--cpus-per-trial", "-0.5"], "--cpus-per-trial must be > 0"),
        (["--space", "case", "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
        (["--space", "case", "--data", "/no/such/folder"], "no such file or folder"),
        (["--space", "case", "--max-epochs", "ten"], "invalid int value"),
        (["--name", "ghost", "--resume"], "no sweep 'ghost'"),
        (["--resume"], "--resume needs --name"),
        (["--max-epochs", "3"], "--space is required"),
        (["--space", "case", "--max-concurrent", "4", "--lag", "3"], "give --lag >= --max-con"),
    ],
)
def test_bad_values_fail_fast_with_one_clear_line(tmp_path: Path, args, needle) -> None:
    with pytest.raises(UsageError) as err:
        parse_settings([*args, "--results-dir", str(tmp_path / "r")], cwd=tmp_path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_a_folder_that_is_neither_store_nor_corpus_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _run(tmp_path, "--space", "case", "--data", str(tmp_path / "empty"))
    assert proc.returncode == 2
    assert "neither a feature store" in proc.stderr


def test_runs_as_a_plain_script_too(tmp_path: Path) -> None:
    # `ray submit` runs the file, not the module: the repo root must be found from the path.
    proc = subprocess.run(
        [sys.executable, str(REPO / "search" / "run.py"), "--space", "nope"],
        cwd=tmp_path,
        env={**cli_env(tmp_path), "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "valid spaces" in proc.stderr


def test_defaults_and_paths_are_resolved(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CASE_TUNE_HOME", str(tmp_path / "home"))
    s = parse_settings(["--space", "case"], cwd=tmp_path)
    assert s.data_kind == "demo" and s.num_samples >= 24 and s.max_concurrent == 2
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    # Optuna's journal file, beside MLflow (search/ledger.py)
    assert s.optuna_storage == f"journal:///{str(tmp_path.resolve() / 'optuna.journal')[1:]}"
    assert s.storage_path == str((tmp_path / "home" / "ray_results").resolve())
    assert Path(s.results_dir) == (tmp_path / "results").resolve()
    assert s.name.startswith("case-")
    # With a tracking server, the study goes with the results (not the cwd, which under
    # `ray job submit` is a temporary copy).
    http = parse_settings(
        [
            "--space",
            "case",
            "--tracking-uri",
            "http://127.0.0.1:5000",
            "--results-dir",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path / "home",
    )
    journal = (tmp_path / "out" / "optuna.journal").resolve()
    assert http.optuna_storage == f"journal:///{str(journal)[1:]}"


def test_the_searcher_is_the_replay_benchmarks_choice_and_old_sweeps_resume_as_they_ran(
    tmp_path: Path, monkeypatch
) -> None:
    from search.run import sweep_sampler
    from search.settings import SweepSettings

    monkeypatch.setenv("CASE_TUNE_HOME", str(tmp_path / "home"))
    s = parse_settings(["--space", "case", "--seed", "3"], cwd=tmp_path)
    assert (s.prior_weight, s.reduction_factor, s.startup_trials) == (2.0, 4, 10)
    tpe = sweep_sampler(s).build(11)
    assert tpe._parzen_estimator_parameters.prior_weight == 2.0
    assert tpe._n_startup_trials == 10
    # A sweep.json written before the prior weight was a setting resumes with Optuna's 1.0,
    # and its recorded reduction factor stays.
    old = {k: v for k, v in s.to_dict().items() if k != "prior_weight"}
    restored = SweepSettings.from_dict({**old, "reduction_factor": 3})
    assert (restored.prior_weight, restored.reduction_factor) == (1.0, 3)
    assert sweep_sampler(restored).options == {"n_startup_trials": 10}
    assert SweepSettings.from_dict(s.to_dict()) == s


def test_reproducible_and_async_are_one_choice(tmp_path: Path, monkeypatch) -> None:
    from search.settings import REPRODUCIBLE

    monkeypatch.setenv("CASE_TUNE_HOME", str(tmp_path / "home"))
    base = ["--space", "case", "--results-dir", str(tmp_path / "r")]
    assert parse_settings(base, cwd=tmp_path).reproducible is REPRODUCIBLE
    assert parse_settings([*base, "--reproducible"], cwd=tmp_path).reproducible is True
    assert parse_settings([*base, "--async"], cwd=tmp_path).reproducible is False
    with pytest.raises(UsageError, match="not allowed with"):
        parse_settings([*base, "--async", "--reproducible"], cwd=tmp_path)


def test_summaries_show_a_config_to_4_significant_digits() -> None:
    from search.cli import config_text

    config = {
        "model": "mmm",
        "dropout": 0.2659025011319377,
        "lr": 0.0020170071498284135,
        "hidden": 128,
        "faithful": False,
        "weight_decay": 1e-05,
        "epochs": 150,
        "seed": 0,
    }
    assert config_text(config) == (
        "model=mmm, dropout=0.2659, lr=0.002017, hidden=128, faithful=False, weight_decay=1e-05"
    )


def test_the_lag_defaults_to_the_width_and_old_sweeps_keep_it(tmp_path: Path, monkeypatch) -> None:
    """--lag L: the sweep records L; a sweep.json from before the flag (lag 0) resumes with
    trial k waiting for trial k - W, as it ran; the searcher, sampler and ASHA get L, Tune W."""
    from search.run import build_tuner, sweep_asha, sweep_sampler
    from search.settings import SweepSettings
    from search.spaces import get_space

    monkeypatch.setenv("CASE_TUNE_HOME", str(tmp_path / "home"))
    base = ["--space", "case", "--results-dir", str(tmp_path / "r"), "--max-concurrent", "4"]
    assert parse_settings(base, cwd=tmp_path).window == 4
    wide = [*base[:-1], "16"]
    assert parse_settings(wide, cwd=tmp_path).window == 32  # from 16 slots on: twice
    s = parse_settings([*base, "--lag", "8"], cwd=tmp_path)
    assert (s.lag, s.window, s.max_concurrent) == (8, 8, 4)
    old = SweepSettings.from_dict({k: v for k, v in s.to_dict().items() if k != "lag"})
    assert (old.lag, old.window) == (0, 4)
    assert sweep_sampler(s).window == 8
    asha = sweep_asha(s, s.num_samples)
    assert (asha.lag, asha.first) == (8, 4)
    tuner = build_tuner(s, get_space("case"), [], trainable=lambda c: None, points=None)
    ordered = tuner._local_tuner._tune_config.search_alg
    assert (ordered.window, ordered.max_concurrent) == (8, 4)
