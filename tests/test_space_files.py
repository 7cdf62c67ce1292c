"""`--space FILE`: a user's own search space, in the spec language of search/spaces.py, read
and validated once before anything starts (one line and exit 2 for a bad one), recorded with
the sweep, and held to on --resume. `python -m search.spaces --dump NAME` writes a named space
as a file to start from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from search.run import main, run_sweep
from search.settings import UsageError, parse_settings, sweep_argv
from search.spaces import dump_space, get_space, load_space_file, sample_config, space_names
from tests.search_helpers import (
    FAST_MODELS,
    REPO,
    case_tune_home,
    cli_env,
    mlflow_runs,
    ray_runtime,  # noqa: F401 - fixture
    read_trials_csv,
    search_store,  # noqa: F401 - fixture
)

# The README's example, verbatim.
EXAMPLE = """\
params:
  model: {choice: [case-attention, case-concat-attention]}
  lr: {loguniform: [1e-4, 3e-3]}
  focal_gamma: {uniform: [0.5, 3.0]}
fixed: {loss: focal, hidden: 64}
"""
NOT_RAY = (
    "import sys\n"
    "from search.run import main\n"
    "rc = main(sys.argv[1:])\n"
    "assert 'ray' not in sys.modules, 'Ray was imported before validation failed'\n"
    "sys.exit(rc)\n"
)


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_readme_shows_the_example_that_is_tested() -> None:
    assert EXAMPLE in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", space_names())
def test_a_dumped_named_space_loads_back_as_the_same_space(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, f"{name}.yaml", dump_space(name))
    loaded = load_space_file(path)
    assert loaded.space == get_space(name)
    assert loaded.text == path.read_text(encoding="utf-8") and len(loaded.sha256) == 64


def test_dump_prints_the_file_and_a_bad_name_is_one_line_exit_2(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "search.spaces", "--dump"]
    kw = {"cwd": tmp_path, "env": cli_env(tmp_path), "capture_output": True, "text": True}
    proc = subprocess.run([*run, "case"], timeout=60, **kw)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == dump_space("case")
    assert yaml.safe_load(proc.stdout)["params"]["model"]["choice"][0] == "case-compressing"
    bad = subprocess.run([*run, "nope"], timeout=60, **kw)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "python -m search.spaces: error: unknown search space 'nope'; valid spaces: "
        "all, baselines, case"
    ]


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads `1e-4` as a string; a space file reads it as 1e-4."""
    space = load_space_file(_write(tmp_path, "s.yaml", EXAMPLE)).space
    assert space["params"]["lr"] == {"loguniform": [1e-4, 3e-3]}
    assert space["fixed"] == {"loss": "focal", "hidden": 64}
    quoted = EXAMPLE.replace("[1e-4, 3e-3]", "['1e-4', 3e-3]")
    with pytest.raises(Exception, match="bounds must be finite numbers"):
        load_space_file(_write(tmp_path, "q.yaml", quoted))


def test_a_json_file_is_the_same_space(tmp_path: Path) -> None:
    as_yaml = load_space_file(_write(tmp_path, "s.yaml", EXAMPLE)).space
    as_json = load_space_file(_write(tmp_path, "s.json", json.dumps(as_yaml))).space
    assert as_json == as_yaml


BAD = [
    (
        "params:\n  model: {choice: [case-attention]}\n  lr: {log: [1e-4, 3e-3]}\n",
        "params.lr: unknown key 'log'; a parameter takes one of choice, uniform, loguniform, "
        "int and optionally when, zero_below, step",
    ),
    ("parms:\n  model: {choice: [mmm]}\n", "unknown key 'parms'; allowed: params, fixed"),
    (
        "params:\n  model: {choice: [mmm]}\n  lr: {loguniform: [0, 3e-3]}\n",
        "params.lr.loguniform: 'loguniform' needs low > 0, got 0",
    ),
    (
        "params:\n  model: {choice: [mmm]}\n  dropout: {uniform: [0.1]}\n",
        "params.dropout.uniform: needs [low, high], got [0.1]",
    ),
    (
        "params:\n  model: {choice: [mmm]}\n  hidden: {int: [64, 256], zero_below: 80}\n",
        "params.hidden.zero_below: applies to uniform and loguniform only",
    ),
    (
        "params:\n  model: {choice: [mmm]}\n"
        "  focal_gamma: {uniform: [0.5, 2], when: {loss: focal}}\n  loss: {choice: [ce, focal]}\n",
        "params.focal_gamma.when: condition on 'loss', which is not an earlier parameter "
        "(earlier: model)",
    ),
    (
        "params:\n  model: {choice: [mmm]}\n  focal_gamma: {uniform: [0.5, 2], when: {nope: 1}}\n",
        "params.focal_gamma.when: condition on 'nope', which is not an earlier parameter",
    ),
    (
        "params:\n  model: {choice: [mmm]}\n  dropout: {uniform: [0.1, 1.0]}\n",
        "params.dropout: config key 'dropout': 1.0 is outside [0.0, 1.0)",
    ),
    (
        "params:\n  model: {choice: [mmm, nope]}\n",
        "params.model: config key 'model': 'nope' is not one of ['case-compressing',",
    ),
    (
        "params:\n  model: {choice: [mmm]}\n  lrr: {uniform: [0.1, 0.2]}\n",
        "params.lrr: not a TrainConfig key; allowed: amp, audio_frames, batch_size,",
    ),
    (
        "params:\n  model: {choice: [mmm]}\nfixed: {batch_size: 0}\n",
        "fixed.batch_size: config key 'batch_size': 0 is outside [1, inf)",
    ),
    (
        "params:\n  model: {choice: [mmm]}\nfixed: {epochs: 10}\n",
        "fixed.epochs: set by the sweep (--final-epochs); remove it from the file",
    ),
    ("params:\n  lr: {loguniform: [1e-4, 3e-3]}\n", "no model: add params.model"),
    ("params:\n  model: {choice: [mmm]\n", "not valid YAML (while parsing a flow mapping"),
]


@pytest.mark.parametrize(("text", "needle"), BAD)
def test_a_bad_space_file_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, needle: str
) -> None:
    _write(tmp_path, "mine.yaml", text)
    with pytest.raises(UsageError) as err:
        parse_settings(["--space", "mine.yaml", "--results-dir", "r"], cwd=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--space mine.yaml: {needle}"), message


def test_on_the_command_line_a_bad_file_exits_2_before_ray(tmp_path: Path) -> None:
    _write(tmp_path, "mine.yaml", BAD[0][0])
    proc = subprocess.run(
        [sys.executable, "-c", NOT_RAY, "--space", "mine.yaml", "--results-dir", "r"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"search.run: error: --space mine.yaml: {BAD[0][1]}"
    ]
    missing = subprocess.run(
        [sys.executable, "-c", NOT_RAY, "--space", "gone.yaml", "--results-dir", "r"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "search.run: error: --space gone.yaml: cannot read the space file (No such file or "
        "directory)"
    )


def test_a_named_space_still_works_and_an_unknown_one_lists_them(tmp_path: Path) -> None:
    assert parse_settings(["--space", "baselines"], cwd=tmp_path).space_spec is None
    with pytest.raises(UsageError, match=r"valid spaces: all, baselines, case, or a \.yaml"):
        parse_settings(["--space", "nope"], cwd=tmp_path)


# -- a sweep of a file's space -------------------------------------------------------------
@pytest.fixture(scope="module")
def file_sweep(tmp_path_factory, search_store, ray_runtime):  # noqa: F811
    tmp = tmp_path_factory.mktemp("file-space")
    _write(tmp, "mine.yaml", EXAMPLE)
    argv = sweep_argv(search_store, "mine", tmp, space="mine.yaml", num_samples=2, max_epochs=1)
    with case_tune_home(tmp / "home"):
        settings = parse_settings(argv, cwd=tmp)
        outcome = run_sweep(settings, quiet=True)
    return {"tmp": tmp, "argv": argv, "settings": settings, "outcome": outcome}


@pytest.mark.slow  # a real sweep (about 30 s on 2 cores, with Ray's start)
def test_a_sweep_samples_the_files_space_and_records_the_file(file_sweep: dict) -> None:
    settings, outcome = file_sweep["settings"], file_sweep["outcome"]
    path = file_sweep["tmp"] / "mine.yaml"
    assert outcome.num_trials == 2
    rows = read_trials_csv(settings.sweep_dir / "trials.csv")
    assert len(rows) == 2
    for run in mlflow_runs(settings.tracking_uri, kind="trial"):
        config = json.loads(run.data.tags["case_tune.config"])
        assert config["model"] in FAST_MODELS
        assert 1e-4 <= config["lr"] <= 3e-3
        assert 0.5 <= config["focal_gamma"] <= 3.0
        assert config["hidden"] == 64 and config["loss"] == "focal"
        assert set(config) == {"model", "lr", "focal_gamma", "loss", "hidden", "epochs", "seed"}
    manifest = json.loads(settings.manifest_path.read_text())
    recorded = manifest["settings"]
    assert recorded["space"] == str(path.resolve()) == manifest["space_name"]
    assert recorded["space_text"] == EXAMPLE
    assert recorded["space_sha256"] == load_space_file(path).sha256
    expected = {**load_space_file(path).space}
    expected["fixed"] = {**expected["fixed"], "epochs": settings.horizon, "seed": settings.seed}
    assert manifest["space"] == expected
    client = MlflowClient(settings.tracking_uri)
    params = client.get_run(outcome.parent_run_id).data.params
    assert params["space_sha256"] == recorded["space_sha256"]
    artifact = client.download_artifacts(outcome.parent_run_id, "space/mine.yaml")
    assert Path(artifact).read_text(encoding="utf-8") == EXAMPLE


@pytest.mark.slow  # the same sweep, resumed
def test_resume_with_the_file_changed_is_an_error_naming_flag_and_record(
    file_sweep: dict, capsys, monkeypatch
) -> None:
    tmp, settings = file_sweep["tmp"], file_sweep["settings"]
    monkeypatch.chdir(tmp)  # --space mine.yaml is relative to where the command runs
    path = tmp / "mine.yaml"
    resume = [*file_sweep["argv"], "--resume"]
    before = settings.manifest_path.read_bytes()
    assert parse_settings(resume).resume is True  # unchanged: resumes as recorded
    try:
        path.write_text(EXAMPLE.replace("3e-3", "1e-2"), encoding="utf-8")
        assert main(resume) == 2
        old = settings.space_sha256[:12]
        new = load_space_file(path).sha256[:12]
        assert capsys.readouterr().err.splitlines() == [
            f"search.run: error: --resume: --space {path.resolve()} (sha256 {new}) differs from "
            f"sweep 'mine''s recorded {path.resolve()} (sha256 {old}): the file changed; drop "
            "the flag to resume the sweep as recorded, or start a new sweep"
        ]
        # Without the flag, the sweep resumes with the space it recorded.
        i = resume.index("--space")
        resumed = parse_settings(resume[:i] + resume[i + 2 :])
        assert resumed.space_spec == settings.space_spec and resumed.space_text == EXAMPLE
    finally:
        path.write_text(EXAMPLE, encoding="utf-8")
    assert settings.manifest_path.read_bytes() == before


def test_trials_of_the_files_space_are_valid_configs(tmp_path: Path) -> None:
    import optuna

    from models.config import TrainConfig

    space = load_space_file(_write(tmp_path, "s.yaml", EXAMPLE)).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        TrainConfig.from_dict(sample_config(study.ask(), space))
