"""The same sweep on a Ray cluster: several nodes, a submitted job, a tracking server.

Real Ray, Optuna and MLflow on this machine, tiny sweeps (2 trials x 2 epochs):
- a multi-node `ray.cluster_utils.Cluster` joined through `--address`, whose head has no CPU,
  so every trial must land on the worker node (checked against Ray's actor table), while MLflow
  logging from the driver still nests every trial under the sweep run;
- fractional GPUs: `--gpus-per-trial 0.25` asks Ray for a quarter GPU, so four trials pack
  onto one GPU and a fifth waits;
- `ray start` + `ray job submit --working-dir` of `python search/run.py ... --address auto`;
- an `mlflow server` as the tracking store, runs arriving over HTTP.

Every Ray runtime started here is stopped by process id in a `finally`: other Ray runtimes of
parallel test runs may live on this machine, so `ray stop` (which stops them all) is not used.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.search_helpers import FAST_MODELS, REPO, metric_history, mlflow_runs, tiny_settings

SPACE = {
    "params": {"model": {"choice": FAST_MODELS}, "lr": {"choice": [1e-3, 3e-3]}},
    "fixed": {"hidden": 64, "faithful": False},
}
TRIALS = 2
EPOCHS = 2
# The packages a submitted job needs; everything else stays out of the uploaded zip.
JOB_PACKAGES = ("data_prep", "models", "search")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_settings(tmp: Path, store: Path, name: str, **overrides):
    overrides = {
        "num_samples": TRIALS,
        "max_epochs": EPOCHS,
        "max_concurrent": TRIALS,
        "scheduler": "fifo",
        "warm_start": False,
        "seed": 0,
        **overrides,
    }
    return tiny_settings(tmp, store, name, **overrides)


def _assert_nested_runs(tracking_uri: str, name: str, trials: int = TRIALS) -> None:
    """One FINISHED sweep run named ``name``; ``trials`` FINISHED trial runs nested under it,
    each with a full per-epoch val history and a store that served train and val only."""
    sweeps = [r for r in mlflow_runs(tracking_uri, kind="sweep") if r.info.run_name == name]
    assert len(sweeps) == 1, [r.info.run_name for r in sweeps]
    parent = sweeps[0]
    assert parent.info.status == "FINISHED"
    runs = [
        r
        for r in mlflow_runs(tracking_uri, kind="trial")
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(runs) == trials
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        assert run.data.tags["case_tune.splits_read"] == "train,val"
        hist = metric_history(tracking_uri, run.info.run_id, "val_macro_f1")
        assert sorted(hist) == list(range(1, EPOCHS + 1))


# -- processes this module starts, stopped by id --------------------------------------------
def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live, non-zombie process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), cmd)
    return table


def _processes_matching(patterns: list[str]) -> set[int]:
    """Processes whose command line matches a pattern, and all their descendants."""
    table = _process_table()
    pids = {p for p, (_, cmd) in table.items() if any(re.search(pat, cmd) for pat in patterns)}
    while True:
        children = {p for p, (pp, _) in table.items() if pp in pids and p not in pids}
        if not children:
            break
        pids |= children
    pids.discard(os.getpid())
    return pids


def _terminate(pids: set[int], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``grace`` seconds (Ray's own order)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            pids = pids & set(_process_table())
            if not pids:
                return
            time.sleep(0.3)


# -- 1. several nodes ----------------------------------------------------------------------
@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head without CPUs (trials cannot go there) and one worker with 2 CPUs and a GPU
    declared to Ray (a placeholder: trials still train on CPU here)."""
    import ray
    from ray.cluster_utils import Cluster

    from data_prep.device import DEVICE_ENV

    if ray.is_initialized():  # a leftover connection would make init_ray ignore --address
        ray.shutdown()
    # The declared GPU is not real: its trials train on the CPU (the nodes' workers inherit it).
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    cluster = Cluster(
        initialize_head=True,
        connect=False,  # the sweep itself connects, through --address
        head_node_args={"num_cpus": 0, "resources": {"head_node": 1}, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=2, num_gpus=1, resources={"worker_node": 1})
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_sweep_on_a_multi_node_cluster_runs_trials_on_the_worker(
    two_node_cluster, demo_store, tmp_path
) -> None:
    import ray
    from ray.tune import ExperimentAnalysis
    from ray.util.placement_group import placement_group, remove_placement_group

    from search.run import run_sweep
    from search.trainable import make_trainable

    cluster, worker = two_node_cluster
    head_id, worker_id = cluster.head_node.node_id, worker.node_id
    settings = _cluster_settings(
        tmp_path, demo_store, "multinode", address=cluster.address, gpus_per_trial=0.25
    )
    outcome = run_sweep(settings, space=SPACE, quiet=True)
    assert not ray.is_initialized()  # run_sweep disconnected; the cluster lives on
    assert outcome.num_trials == TRIALS and outcome.num_failed == 0

    # Where the trials ran: Ray's actor table (GCS) against each trial's reported pid.
    actors = [
        a
        for a in cluster.global_state.actor_table(None).values()
        if a["ActorClassName"] == "ImplicitFunc"  # Tune's actor for a function trainable
    ]
    assert actors
    assert {a["Address"]["NodeID"] for a in actors} == {worker_id} != {head_id}
    trials = ExperimentAnalysis(str(settings.experiment_path)).trials
    assert len(trials) == TRIALS
    assert {t.last_result["pid"] for t in trials} <= {a["Pid"] for a in actors}
    # Logged from the driver: the trial nodes never touched the sqlite store.
    _assert_nested_runs(settings.tracking_uri, "multinode")

    # Packing: a trial's request under --gpus-per-trial 0.25 is a quarter GPU, so the worker's
    # one GPU takes four at once (CPU would allow eight) and a fifth waits.
    ray.init(address=cluster.address, logging_level="WARNING")
    request = make_trainable(demo_store, cpus=0.25, gpus=settings.gpus_per_trial)._resources
    assert request.bundles == [{"CPU": 0.25, "GPU": 0.25}]
    groups = [placement_group(request.bundles) for _ in range(5)]
    try:
        assert [g.wait(timeout_seconds=10) for g in groups[:4]] == [True] * 4
        assert groups[4].wait(timeout_seconds=2) is False
        placed = {
            node
            for g in groups[:4]
            for node in ray.util.placement_group_table(g)["bundles_to_node_id"].values()
        }
        assert placed == {worker_id}
    finally:
        for g in groups:
            remove_placement_group(g)


def test_trials_carry_the_store_path_not_its_data(demo_store) -> None:
    """What Ray ships to a trial node is a path; each process memory-maps the store there."""
    import numpy as np
    from ray import cloudpickle

    from search.trainable import make_trainable, open_sealed_store

    store_bytes = sum(f.stat().st_size for f in Path(demo_store).iterdir())
    shipped = len(cloudpickle.dumps(make_trainable(demo_store, cpus=1, gpus=0.25)))
    assert shipped < 50_000 < store_bytes // 20, (shipped, store_bytes)
    store = open_sealed_store(str(Path(demo_store).resolve()))
    for name in ("text", "audio", "text_pooled"):
        assert isinstance(getattr(store, name), np.memmap), name


def test_gpus_per_trial_flag_becomes_the_trial_resource_request(demo_store, tmp_path) -> None:
    from search.settings import parse_settings
    from search.trainable import make_trainable

    settings = parse_settings(
        [
            "--space",
            "case",
            "--data",
            str(demo_store),
            "--gpus-per-trial",
            "0.25",
            "--cpus-per-trial",
            "2",
            "--address",
            "auto",
        ],
        cwd=tmp_path,
    )
    assert settings.address == "auto"
    trainable = make_trainable(
        demo_store, cpus=settings.cpus_per_trial, gpus=settings.gpus_per_trial
    )
    assert trainable._resources.bundles == [{"CPU": 2.0, "GPU": 0.25}]


# -- 2. ray start + ray job submit -----------------------------------------------------------
def _ray_cli() -> str:
    found = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    assert Path(found).exists(), "the `ray` command is not installed"
    return found


@pytest.mark.slow
def test_job_submitted_to_a_started_cluster_runs_the_sweep(demo_store, tmp_path) -> None:
    # A short temp dir of our own: Ray's unix socket paths live under it (107-byte limit),
    # and its path is how this test finds, and stops, only the processes it started.
    ray_tmp = tempfile.mkdtemp(prefix="ctray", dir="/tmp")
    gcs, dash, client, agent = (_free_port() for _ in range(4))
    env = dict(
        os.environ,
        CASE_TUNE_HOME=str(tmp_path / "home"),  # Tune's storage_path, inherited by the job
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        HF_HUB_OFFLINE="1",
    )
    work = tmp_path / "job"
    for pkg in JOB_PACKAGES:
        shutil.copytree(REPO / pkg, work / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", work)
    size = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    assert size < 2_000_000, f"working dir of {size} bytes is uploaded with every job"
    db = tmp_path / "mlflow.db"
    results = tmp_path / "results"
    try:
        start = subprocess.run(
            [
                _ray_cli(),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--dashboard-agent-listen-port={agent}",
                f"--ray-client-server-port={client}",
                f"--temp-dir={ray_tmp}",
                "--disable-usage-stats",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert start.returncode == 0, start.stderr[-3000:]
        job = subprocess.run(
            [
                _ray_cli(),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dash}",
                "--working-dir",
                str(work),
                "--",
                sys.executable,
                "search/run.py",
                "--space",
                "case",
                "--data",
                str(demo_store),
                "--num-samples",
                str(TRIALS),
                "--max-epochs",
                str(EPOCHS),
                "--no-warm-start",
                "--address",
                "auto",
                "--tracking-uri",
                f"sqlite:///{db}",
                "--results-dir",
                str(results),
                "--name",
                "job-sweep",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        log = job.stdout + job.stderr
        assert job.returncode == 0, log[-4000:]
        assert re.search(r"Job '\w+' succeeded", log), log[-4000:]
        assert "Sweep job-sweep: 2 trials, 0 failed" in log
    finally:
        _terminate(_processes_matching([re.escape(ray_tmp), rf"127\.0\.0\.1:{gcs}\b"]))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not _processes_matching([re.escape(ray_tmp)])
    _assert_nested_runs(f"sqlite:///{db}", "job-sweep")
    assert (results / "job-sweep" / "leaderboard.md").is_file()
    # The job's Tune state went under the CASE_TUNE_HOME the cluster was started with.
    # (in a folder of its own: the name plus a per-sweep suffix, see SweepSettings.tune_name)
    assert [p.name for p in (tmp_path / "home" / "ray_results").glob("job-sweep-*") if p.is_dir()]


# -- 3. an MLflow tracking server ------------------------------------------------------------
@pytest.fixture
def mlflow_server(tmp_path):
    from bench.mlflow_server import mlflow_server as serve

    try:
        with serve(tmp_path) as server:
            yield server.url, server.db
    except RuntimeError as exc:  # it did not start
        pytest.fail(str(exc))


@pytest.mark.slow
def test_sweep_logs_to_a_tracking_server_over_http(mlflow_server, demo_store, tmp_path) -> None:
    import ray

    from search.run import run_sweep

    url, server_db = mlflow_server
    if ray.is_initialized():
        ray.shutdown()
    (tmp_path / "sweep").mkdir()
    settings = _cluster_settings(tmp_path / "sweep", demo_store, "http-sweep", tracking_uri=url)
    # No --address: run_sweep starts a local Ray runtime and shuts it down again.
    outcome = run_sweep(settings, space=SPACE, quiet=True)
    assert not ray.is_initialized()
    assert outcome.num_trials == TRIALS and outcome.num_failed == 0
    _assert_nested_runs(url, "http-sweep")  # read back over HTTP
    # ...and they are in the server's own store, not in some local file.
    assert server_db.is_file()
    _assert_nested_runs(f"sqlite:///{server_db}", "http-sweep")
    assert not list((tmp_path / "sweep").glob("mlflow.db"))


# -- 4. a node lost mid-sweep ----------------------------------------------------------------
NODE_LOSS_EPOCHS = 6
NODE_LOSS_AFTER = 2  # a trial's node goes once it has reported this many epochs there


@pytest.mark.slow
def test_a_trial_whose_node_is_lost_continues_from_its_checkpoint_on_another(
    demo_store, tmp_path, monkeypatch
) -> None:
    """Two worker nodes. Once a trial has reported (and checkpointed) two epochs, its node is
    removed without warning, the node's processes killed with it. Tune restarts that trial
    from its last checkpoint on the other node (FailureConfig), and the sweep ends with every
    trial accounted for once: one MLflow run each, one history with every epoch once, nothing
    left RUNNING."""
    import threading

    import ray
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster
    from ray.tune import ExperimentAnalysis

    from search.faults import FAULT_TRACE_ENV, read_trace
    from search.run import run_sweep

    trace = tmp_path / "trace.txt"
    # Nodes started from here give their workers this environment: each trial traces its
    # start and every epoch it reported, with its process id.
    monkeypatch.setenv(FAULT_TRACE_ENV, str(trace))
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 0,  # trials never run on the head (the driver's node)
            "include_dashboard": False,
            # Declare a silent node dead after ~2 s rather than Ray's default ~15 s.
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
        },
    )
    try:
        workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        settings = _cluster_settings(
            tmp_path, demo_store, "nodeloss", address=cluster.address, max_epochs=NODE_LOSS_EPOCHS
        )
        # The sweep runs in a thread: Ray removes nodes from the main thread only.
        ended: dict[str, object] = {}

        def sweep() -> None:
            try:
                ended["outcome"] = run_sweep(settings, space=SPACE, quiet=True)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                ended["error"] = exc

        def actors() -> list[dict]:
            return [
                a
                for a in cluster.global_state.actor_table(None).values()
                if a["ActorClassName"] == "ImplicitFunc"
            ]

        driver = threading.Thread(target=sweep, daemon=True)
        driver.start()
        victim, lost = None, None
        deadline = time.monotonic() + 400
        while lost is None and driver.is_alive() and time.monotonic() < deadline:
            mid_way = [
                (who, pid)
                for point, at, who, pid in read_trace(trace)
                if point == "trial_reported" and NODE_LOSS_AFTER <= int(at) < NODE_LOSS_EPOCHS
            ]
            if mid_way:
                victim, pid = mid_way[0]
                node_id = next(a["Address"]["NodeID"] for a in actors() if a["Pid"] == pid)
                lost = next(w for w in workers if w.node_id == node_id)
                doomed = [
                    a["Pid"]
                    for a in actors()
                    if a["Address"]["NodeID"] == node_id and a["State"] == "ALIVE"
                ]
                cluster.remove_node(lost, allow_graceful=False)
                # A lost machine takes its processes with it; a killed raylet leaves its
                # workers running (they talk to the driver directly) until Ray notices.
                for p in doomed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
            time.sleep(0.1)
        driver.join(timeout=600)
        assert not driver.is_alive(), "the sweep did not end"
        if "error" in ended:
            raise ended["error"]
        assert lost is not None, "no trial reported its epochs"
        outcome = ended["outcome"]
        node_of = {a["Pid"]: a["Address"]["NodeID"] for a in actors()}
        final = _finalize_losing_a_node(cluster, tmp_path, trace)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()

    assert outcome.num_trials == TRIALS and outcome.num_failed == 0 and not outcome.interrupted
    trials = {t.trial_id: t for t in ExperimentAnalysis(str(settings.experiment_path)).trials}
    assert len(trials) == TRIALS and victim in trials
    client = MlflowClient(settings.tracking_uri)
    active = {
        r.data.tags["case_tune.trial_id"]: r
        for r in mlflow_runs(settings.tracking_uri, kind="trial")
    }
    assert set(active) == set(trials)  # one live run per trial
    for tid, t in trials.items():
        assert t.status == "TERMINATED" and t.last_result["training_iteration"] == NODE_LOSS_EPOCHS
        run = active[tid]
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
        assert sorted(steps) == list(range(1, NODE_LOSS_EPOCHS + 1)), steps  # no gap, no repeat
    everything = mlflow_runs(settings.tracking_uri, deleted=True)
    assert not [r for r in everything if r.info.status == "RUNNING"]
    sweep_runs = [r for r in everything if r.data.tags.get("case_tune.kind") == "sweep"]
    assert len(sweep_runs) == 1 and sweep_runs[0].info.status == "FINISHED"

    # The victim: restarted once, on the other node, from its last checkpoint on the lost one.
    t = trials[victim]
    assert t.num_failures == 1 and active[victim].data.tags["case_tune.restarts"] == "1"
    epochs = [
        (int(at), node_of.get(pid))
        for point, at, who, pid in read_trace(trace)
        if point == "trial_reported" and who == victim
    ]
    before = [e for e, node in epochs if node == lost.node_id]
    after = [e for e, node in epochs if node != lost.node_id]
    assert len({e for e, _ in epochs}) == len(epochs), epochs  # no epoch trained twice
    assert (
        before
        and after
        and {n for e, n in epochs if e in after} <= {w.node_id for w in workers if w is not lost}
    ), epochs
    restored_at = NODE_LOSS_EPOCHS - t.last_result["iterations_since_restore"]
    assert max(before) <= restored_at < min(after) == restored_at + 1, (epochs, restored_at)
    # Its run is the one that was running on the lost node (never replaced).
    victims = [r for r in everything if r.data.tags.get("case_tune.trial_id") == victim]
    assert len(victims) == 1

    # Then finalize on the same cluster: the unit whose node goes is run again on another one.
    outcome_f, unit_starts, removed = final
    assert not outcome_f.failed and outcome_f.units_run == 1
    assert len(unit_starts) == 2, unit_starts  # started, lost with its node, run again
    assert unit_starts[0][0] == removed != unit_starts[1][0]
    settings_f = outcome_f.out_dir
    assert len(list((settings_f / "units").glob("*.json"))) == 1
    finals = [
        r
        for r in mlflow_runs(settings.tracking_uri, kind="final", deleted=True)
        if r.data.tags.get("mlflow.parentRunId") == outcome_f.parent_run_id
    ]
    assert len(finals) == 1 and finals[0].info.status == "FINISHED"


def _finalize_losing_a_node(cluster, tmp_path: Path, trace: Path):
    """Finalize the sweep's best config (one seed) on ``cluster``; once its unit has started,
    remove that unit's node and kill the unit's process. Returns the outcome, the unit's
    starts as (node id, pid), and the removed node's id."""
    import threading

    from search import finalize as fz
    from search.faults import read_trace

    cluster.add_node(num_cpus=2)  # somewhere to go (Ray adds nodes from this thread only)
    cluster.wait_for_nodes()
    settings = fz.parse_settings(
        [
            "--sweep",
            "nodeloss",
            "--results-dir",
            str(tmp_path / "results"),
            "--top-k",
            "1",
            "--seeds",
            "0",
            "--epochs",
            "8",
            "--address",
            cluster.address,
        ]
    )
    ended: dict[str, object] = {}

    def run() -> None:
        try:
            ended["outcome"] = fz.finalize(settings, quiet=True)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            ended["error"] = exc

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    removed = None
    deadline = time.monotonic() + 300
    while removed is None and driver.is_alive() and time.monotonic() < deadline:
        starts = [(who, pid) for point, _, who, pid in read_trace(trace) if point == "unit_start"]
        if starts:
            time.sleep(1.0)  # mid-way through its epochs (it writes nothing until done)
            node_id, pid = starts[0]
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)
            with contextlib.suppress(ProcessLookupError):  # the machine's processes go too
                os.kill(pid, signal.SIGKILL)
            removed = node_id
        time.sleep(0.1)
    driver.join(timeout=400)
    assert not driver.is_alive(), "finalize did not end"
    if "error" in ended:
        raise ended["error"]
    assert removed is not None, "the unit never started"
    starts = [(who, pid) for point, _, who, pid in read_trace(trace) if point == "unit_start"]
    return ended["outcome"], starts, removed
