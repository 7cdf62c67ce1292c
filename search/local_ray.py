"""A Ray runtime of this machine's own, reachable from this machine only.

`ray.init(address="local")` on Linux binds the GCS server, the raylet and every worker to all
interfaces (`::`), its runtime-env agent to the machine's external address, and runs with
authentication disabled (`RAY_AUTH_MODE=disabled`, as `search.run` sets for a local runtime):
anyone who reaches those ports could attach a driver and run code as the user. Passing
`_node_ip_address="127.0.0.1"` does not help, since Ray turns a loopback node address into the
machine's external one (`services.resolve_ip_for_localhost`) unless it runs single-node, as it
always does on macOS and Windows. Single-node mode is the switch Ray reads from
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` (`ray_constants.ENABLE_RAY_CLUSTER`): off, the node's
address is 127.0.0.1 and every server of the runtime listens on loopback only
(tests/test_local_ray.py checks each listening socket of a sweep's process tree).

A cluster (`--address`, `RAY_ADDRESS`) is never started here and keeps Ray's own addresses
and token authentication (README, "Security").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

# Ray's opt-in for multi-node clusters on macOS/Windows; "0" makes any platform single-node.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def single_node() -> Iterator[None]:
    """Ray in single-node mode while a runtime starts, restored after.

    The environment variable reaches the processes the runtime starts (raylet, agents,
    workers inherit it); Ray reads it into `ray_constants` once, when first imported, so a
    driver that imported Ray before (search.tracking imports Ray Tune) needs the constant set
    too. Restored so that a later `ray.init` of a cluster in the same process (tests) sees
    Ray's own default; a started runtime keeps its address either way."""
    from ray._private import ray_constants

    old_env = os.environ.get(CLUSTER_SWITCH)
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = old_env


def start_local_ray(**init_kwargs: Any) -> Any:
    """``ray.init(address="local", include_dashboard=False, **init_kwargs)`` on loopback only.

    "local": a new runtime of our own; with no address Ray would join any runtime it finds
    running on this machine (another user's sweep). Returns what `ray.init` returns."""
    import ray

    init_kwargs.setdefault("include_dashboard", False)
    with single_node():
        return ray.init(address="local", **init_kwargs)
