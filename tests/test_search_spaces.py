"""Search spaces: every named space samples valid TrainConfigs through a real Optuna study,
conditional parameters appear exactly when their condition holds, and bad specs are refused."""

from __future__ import annotations

import optuna
import pytest

from models.config import TrainConfig
from search.spaces import (
    CASE_MODELS,
    SEED_CONFIG,
    SpaceError,
    define_by_run,
    get_space,
    sample_config,
    seed_configs,
    seed_points,
    space_names,
    validate_space,
    with_fixed,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONDITIONS = {
    "warmup_ratio": lambda c: c["schedule"] == "linear_warmup",
    "focal_gamma": lambda c: c["loss"] == "focal",
    "contrastive_weight": lambda c: c.get("contrastive", "none") != "none",
    "contrastive_temperature": lambda c: c.get("contrastive", "none") != "none",
}


@pytest.mark.parametrize("name", ["case", "baselines", "all"])
def test_named_space_samples_valid_configs_with_conditionals(name: str) -> None:
    space = with_fixed(get_space(name), {"epochs": 2, "seed": 0})
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=10)
    )
    seen_present = {k: False for k in CONDITIONS}
    seen_absent = {k: False for k in CONDITIONS if name != "baselines" or "contrastive" not in k}
    for i in range(40):
        trial = study.ask()
        config = sample_config(trial, space)
        TrainConfig.from_dict(config)  # raises ConfigError if the space emits a bad config
        assert config["epochs"] == 2 and config["seed"] == 0
        # The Optuna trial holds exactly the sampled parameters (fixed values are not params).
        assert set(trial.params) == set(config) - {"epochs", "seed"}
        for param, holds in CONDITIONS.items():
            if "contrastive" in param and "contrastive" not in config:
                assert param not in config
                continue
            assert (param in config) == holds(config), (param, config)
            if param in seen_absent and not holds(config):
                seen_absent[param] = True
            if holds(config):
                seen_present[param] = True
        if name == "all" and config["model"] not in CASE_MODELS:
            assert "contrastive" not in config  # the contrastive terms are CASE-only
        study.tell(trial, float(i % 7) / 10)
    assert all(seen_absent.values()), seen_absent
    expected_present = {k for k in CONDITIONS if name != "baselines" or "contrastive" not in k}
    assert {k for k, v in seen_present.items() if v} == expected_present


@pytest.mark.parametrize("name", ["case", "baselines", "all"])
def test_seed_configs_are_the_seeds_settings_and_replay_exactly(name: str) -> None:
    space = with_fixed(get_space(name), {"epochs": 3, "seed": 0})
    configs = seed_configs(space)
    models = get_space(name)["params"]["model"]["choice"]
    assert [c["model"] for c in configs] == models
    for config in configs:
        TrainConfig.from_dict(config)
        for key, value in SEED_CONFIG.items():
            if key in config:
                assert config[key] == value
        assert config["lr"] == 2e-5 and config["weight_decay"] == 0.0
        assert "focal_gamma" not in config and "warmup_ratio" not in config
    # Enqueued as Optuna warm starts, the points come back as exactly these configs.
    study = optuna.create_study(direction="maximize")
    for point in seed_points(space):
        study.enqueue_trial(point)
    sampler = define_by_run(space)
    for expected in configs:
        trial = study.ask()
        assert sampler(trial) == expected
        study.tell(trial, 0.0)


def test_unknown_space_lists_the_valid_ones() -> None:
    with pytest.raises(SpaceError) as err:
        get_space("nope")
    for name in space_names():
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"lr": {"loguniform": [0.0, 1.0]}}, "low > 0"),
        ({"lr": {"uniform": [2.0, 1.0]}}, "low 2.0 > high 1.0"),
        ({"lr": {"uniform": [1.0]}}, "[low, high]"),
        ({"lr": {"choice": []}}, "non-empty"),
        ({"lr": {"uniform": [0, 1], "choice": [1]}}, "exactly one"),
        ({"focal_gamma": {"uniform": [0, 1], "when": {"loss": "focal"}}}, "not an earlier"),
        (
            {"loss": {"choice": ["ce"]}, "g": {"uniform": [0, 1], "when": {"loss": "focal"}}},
            "can never hold",
        ),
    ],
)
def test_malformed_space_is_refused_with_the_reason(spec: dict, needle: str) -> None:
    with pytest.raises(SpaceError) as err:
        validate_space({"params": spec})
    assert needle in str(err.value)


def test_zero_below_maps_tiny_weight_decay_to_off() -> None:
    space = validate_space(
        {"params": {"weight_decay": {"loguniform": [1e-6, 1e-1], "zero_below": 1e-5}}}
    )
    assert sample_config(optuna.trial.FixedTrial({"weight_decay": 3e-6}), space) == {
        "weight_decay": 0.0
    }
    assert sample_config(optuna.trial.FixedTrial({"weight_decay": 3e-3}), space) == {
        "weight_decay": 3e-3
    }
