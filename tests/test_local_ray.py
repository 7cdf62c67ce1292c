"""A local Ray runtime (no --address) listens on loopback only: a real sweep's process tree,
the driver and every process it started (GCS, raylet, agents, workers), has no listening
socket on any other address (issue 25: the runtime runs without authentication)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from search.local_ray import CLUSTER_SWITCH, start_local_ray
from search.settings import sweep_argv
from tests.search_helpers import cli, cli_env, search_store  # noqa: F401


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or addr).is_loopback


def _listening(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket listening in ``root``'s tree."""
    found = set()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for proc in procs:
        try:
            name = proc.name()
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:  # a worker that just exited
            continue
        found |= {(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == "LISTEN"}
    return found


def _names(sockets: set[tuple[str, str, int]]) -> set[str]:
    return {name for name, _ip, _port in sockets}


def test_a_local_runtime_listens_on_loopback_only() -> None:
    """What the benches and the tests' shared runtime start: every server on 127.0.0.1, and
    Ray's switch restored for a later cluster in the same process."""
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        ray.shutdown()  # a runtime left by an earlier module (shut down by its fixture anyway)
    before = (os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER)
    start_local_ray(num_cpus=1, logging_level="WARNING")
    try:
        # A worker's view too (a function Ray's workers import by name).
        assert ray.get(ray.remote(ray.util.get_node_ip_address).remote()) == "127.0.0.1"
        sockets = _listening(psutil.Process())
    finally:
        ray.shutdown()
    assert {"gcs_server", "raylet"} <= _names(sockets), sockets
    assert [s for s in sockets if not _is_loopback(s[1])] == []
    assert (os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER) == before


@pytest.mark.slow  # about 60 s on 2 cores: a real sweep in a subprocess
def test_a_sweep_without_address_listens_on_loopback_only(
    tmp_path: Path,
    search_store: Path,  # noqa: F811
) -> None:
    argv = sweep_argv(search_store, "loopback", tmp_path, num_samples=3, max_epochs=2)
    env = {**cli_env(tmp_path), "CASE_TUNE_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    seen: set[tuple[str, str, int]] = set()
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(
            cli(*argv), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        driver = psutil.Process(proc.pid)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= _listening(driver)
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "sweep.log").read_text()
    assert proc.wait() == 0, out[-3000:]
    # The runtime really ran under the driver: its servers and a trial's worker were seen.
    names = _names(seen)
    assert {"gcs_server", "raylet"} <= names, (names, out[-2000:])
    assert any(n.startswith("ray::") for n in names), names
    assert [s for s in seen if not _is_loopback(s[1])] == []
