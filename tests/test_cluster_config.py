"""The cluster launcher configs validate offline with Ray's own preparation and schema."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "search" / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_both_providers_are_shipped() -> None:
    providers = {_load(p)["provider"]["type"] for p in CONFIGS}
    assert {"aws", "local"} <= providers


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path: Path) -> None:
    prepared = prepare_config(_load(path))
    validate_config(prepared)
    setup = " ".join(prepared["setup_commands"])
    # Every node installs case-tune from the mounted project and sees one feature-store home.
    assert "pip install" in setup and "~/case-tune" in setup
    assert "CASE_TUNE_HOME=" in setup
    assert "~/case-tune" in prepared["file_mounts"]
    head_setup = " ".join(prepared["head_setup_commands"])
    assert "mlflow server" in head_setup


def test_gpu_workers_autoscale() -> None:
    prepared = prepare_config(_load(CLUSTER_DIR / "aws-gpu.yaml"))
    worker = prepared["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))


def test_schema_rejects_a_broken_config() -> None:
    # The validation must have teeth: an unknown top-level field is refused.
    broken = copy.deepcopy(_load(CLUSTER_DIR / "aws-gpu.yaml"))
    broken["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
