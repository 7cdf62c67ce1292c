"""The cluster launcher configs validate offline with Ray's own preparation and schema."""

from __future__ import annotations

import copy
import re
import shlex
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


def _example_sweep_args(path: Path) -> list[str]:
    """The `search/run.py` flags of the `ray submit` example in the config's header comment."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = " ".join(header).replace("\\ ", " ")
    match = re.search(r"ray submit \S+ search/run\.py -- (.*?)(?:$| [A-Z][a-z]+ )", text)
    assert match, f"{path.name}: no `ray submit ... search/run.py -- ...` example in its header"
    return shlex.split(match.group(1))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_documented_submit_command_parses(path: Path) -> None:
    from search.settings import build_parser

    parser = build_parser()
    args = parser.parse_args(_example_sweep_args(path))  # a wrong flag exits here
    assert args.address == "auto"
    assert args.tracking_uri.startswith("http://")  # the head's shared tracking server
    assert 0 < args.gpus_per_trial < 1  # several trials share a GPU
    # search.run runs 2 trials at once by default: a cluster example must ask for more, at
    # least enough to fill one GPU (the autoscaler adds workers only for pending trials).
    assert args.max_concurrent is not None and args.max_concurrent >= 1 / args.gpus_per_trial
    # The store sits on the shared mount that every node's CASE_TUNE_HOME points at.
    home = re.search(r"CASE_TUNE_HOME=(\S+)", " ".join(_load(path)["setup_commands"])).group(1)
    assert args.data.startswith(home + "/stores/")


# What the AWS worker's packing assumes (see the comment in aws-gpu.yaml): an A10G's memory,
# the CUDA context and a batch's activations at the seed's sizes (64 x 512 x 1024 fp32 input
# is 128 MB; 2 GB is a generous bound for a CASE head's forward and backward).
A10G_BYTES = 24e9
CUDA_CONTEXT_BYTES = 0.5e9
ACTIVATION_BYTES = 2e9


def test_gpu_workers_cap_the_resident_split_to_their_gpu_share() -> None:
    path = CLUSTER_DIR / "aws-gpu.yaml"
    prepared = prepare_config(_load(path))
    start = " ".join(prepared["worker_start_ray_commands"])
    cap = float(re.search(r"CASE_TUNE_RESIDENT_MAX_BYTES=(\S+) ray start", start).group(1))
    share = _example_sweep_args(path)
    gpus = float(share[share.index("--gpus-per-trial") + 1])
    assert cap + CUDA_CONTEXT_BYTES + ACTIVATION_BYTES <= gpus * A10G_BYTES
