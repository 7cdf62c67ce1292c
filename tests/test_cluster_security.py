"""The cluster configs pass a security review: services on 127.0.0.1, Ray token auth on, no
world-writable mount, nothing private synced to the nodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "search" / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))
# chmod giving write to others: 777, 0666, -R 757, o+w, a+rwx, ugo+w ...
WORLD_WRITABLE = re.compile(r"chmod\s+(-\S+\s+)*([0-7]?[0-7][0-7][2367]\b|[ugo]*[oa][ugo]*\+\w*w)")


def _commands(config: dict) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [c for k in keys for c in config.get(k) or []]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_nothing_listens_on_every_interface(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "0.0.0.0" not in text and "::/0" not in text
    commands = _commands(prepare_config(yaml.safe_load(text)))
    for cmd in commands:
        if "mlflow server" in cmd:
            assert re.search(r"--host[ =]127\.0\.0\.1\b", cmd), cmd
        if "ray start --head" in cmd:
            assert re.search(r"--dashboard-host[ =]127\.0\.0\.1\b", cmd), cmd
    assert any("mlflow server" in c for c in commands)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_token_auth_stays_on(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", text, re.I)
    config = prepare_config(yaml.safe_load(text))
    starts = [c for c in _commands(config) if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    # drivers and `ray job` on the nodes use the token too
    assert "RAY_AUTH_MODE=token" in " ".join(config["setup_commands"])
    # every node gets the token the user made with `ray get-auth-token --generate`
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_world_writable_mount(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not WORLD_WRITABLE.search(text)


def test_the_world_writable_pattern_has_teeth() -> None:
    for bad in (
        "chmod 777 /mnt/x",
        "sudo chmod -R 0777 /x",
        "chmod o+w /x",
        "chmod a+rwx /x",
        "chmod 666 f",
        "chmod 1777 /tmp/x",
    ):
        assert WORLD_WRITABLE.search(bad), bad
    for ok in ("chmod 750 /mnt/x", "chmod 0755 /x", "chmod u+w /x", "chmod g+w /x"):
        assert not WORLD_WRITABLE.search(ok), ok


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_corpora_venvs_and_tracking_dbs_are_not_synced(path: Path) -> None:
    config = prepare_config(yaml.safe_load(path.read_text(encoding="utf-8")))
    excluded = set(config.get("rsync_exclude") or [])
    for pattern in ("**/.venv", "**/venv", "**/*.db", "**/mlruns", "**/KEMDy20*", "**/*.wav"):
        assert pattern in excluded, pattern
    assert ".gitignore" in (config.get("rsync_filter") or [])


def test_aws_installs_the_efs_client_and_documents_nfs() -> None:
    path = CLUSTER_DIR / "aws-gpu.yaml"
    text = path.read_text(encoding="utf-8")
    config = prepare_config(yaml.safe_load(text))
    install = " ".join(config["initialization_commands"] + config["setup_commands"])
    assert re.search(r"install .*(nfs-common|amazon-efs-utils)", install)
    mount = next(c for c in config["setup_commands"] if "mount " in c)
    assert "-t nfs4" in mount or "-t efs" in mount
    header = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    assert "mount target" in header and "2049" in header and "security group" in header
