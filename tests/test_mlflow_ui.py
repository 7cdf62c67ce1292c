"""The end summaries' MLflow lines: the command that starts the UI and links that open on a
sweep's runs and on a comparison of its best runs. The slow test starts the real `mlflow ui`
on a real sweep's store and renders the printed link in headless Chromium (MLflow's UI is a
JavaScript app: only a browser shows what a user sees)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from search.mlflow_ui import COMPARE_MAX, compare_url, runs_url, ui_lines
from tests.search_helpers import (
    FAST_MODELS,
    case_tune_home,
    mlflow_runs,
    ray_runtime,  # noqa: F401 - fixture
    run_tiny_sweep,
    search_store,  # noqa: F401 - fixture
)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _hash_query(url: str) -> dict[str, str]:
    """The query of a hash route (`#/path?a=1`), decoded."""
    fragment = urlsplit(url).fragment
    return {k: v[0] for k, v in parse_qs(fragment.partition("?")[2]).items()}


def test_a_local_store_gets_mlflow_ui_on_loopback_and_links_to_its_runs() -> None:
    lines = ui_lines("sqlite:////w/mlflow.db", "7", ["r1", "r2"], "the best trials", sweep="s1")
    assert lines[0] == (
        "MLflow UI: mlflow ui --backend-store-uri sqlite:////w/mlflow.db --host 127.0.0.1 --port 5000"
    )
    runs = lines[1].removeprefix("Runs:      ")
    assert runs.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    query = _hash_query(runs)
    assert query == {
        "workflowType": "machine_learning",
        "searchFilter": "tags.`case_tune.sweep` = 's1'",
        "orderByKey": "metrics.`val_macro_f1_trailing`",
        "orderByAsc": "false",
    }
    compare = lines[2].removeprefix("Compare:   ")
    url, _, what = compare.partition("  ")
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?")
    query = _hash_query(url)
    assert json.loads(query["runs"]) == ["r1", "r2"]
    assert json.loads(query["experiments"]) == ["7"]
    assert what == "(the best trials, 2)"
    # One word in a terminal: no quote, bracket or space a terminal's link detection stops at.
    assert not re.search(r"[\s\"\[\]'`]", url + runs)


def test_a_tracking_server_is_opened_not_started_and_its_password_never_shown() -> None:
    lines = ui_lines("https://me:s3cret@mlflow.lab:8443/", "3", ["r"], "x", sweep="s")
    assert lines[0] == "MLflow UI: open https://mlflow.lab:8443 (the `mlflow server` you track to)"
    assert (
        lines[1]
        .removeprefix("Runs:      ")
        .startswith("https://mlflow.lab:8443/#/experiments/3/runs?workflowType=machine_learning")
    )
    assert "s3cret" not in "\n".join(lines) and "me:" not in "\n".join(lines)
    assert ui_lines("databricks", "3", ["r"], "x") == [
        "MLflow UI: open the experiment in your Databricks workspace"
    ]


def test_the_compare_link_holds_at_most_compare_max_runs() -> None:
    ids = [f"r{i}" for i in range(COMPARE_MAX + 3)]
    query = _hash_query(compare_url("http://h", "1", ids))
    assert json.loads(query["runs"]) == ids[:COMPARE_MAX]
    assert (
        runs_url("http://h", "1") == "http://h/#/experiments/1/runs?workflowType=machine_learning"
    )


# -- the real UI in a real browser --------------------------------------------------------
def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "no headless browser: this test renders MLflow's UI in Chromium; install it with "
        "`apt-get install -y chromium` (.ci/run does so when it is missing)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow ui exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow ui did not answer at {url} in {timeout:.0f} s")


def _rendered_text(browser: str, url: str, profile: Path, budget_ms: int) -> str:
    """The page's text once its scripts ran: Chromium's DOM after ``budget_ms`` of virtual
    time (it fast-forwards timers while the page waits), scripts and styles removed."""
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # root in CI; the page is our own local UI
            "--disable-gpu",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", proc.stdout, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


@pytest.fixture
def mlflow_ui_server(tmp_path: Path):
    """Start `mlflow ui` on a store: yields (start(uri) -> base URL); stopped after."""
    procs: list[subprocess.Popen] = []

    def start(tracking_uri: str) -> str:
        port = _free_port()
        log = tmp_path / "mlflow-ui.log"
        cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri]
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port)],
            stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            start_new_session=True,  # its server workers go with it
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        _wait_up(f"{base}/health", proc, log)
        return base

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.slow
def test_the_printed_runs_link_opens_on_the_sweeps_runs_in_a_browser(
    tmp_path: Path,
    search_store: Path,  # noqa: F811
    ray_runtime,  # noqa: F811
    mlflow_ui_server,
) -> None:
    from search.run import summary

    browser = _browser()
    with case_tune_home(tmp_path / "home"):
        outcome = run_tiny_sweep(
            tmp_path,
            search_store,
            "ui-sweep",
            fixed={"model": FAST_MODELS[0], "hidden": 64},
            num_samples=3,
            max_epochs=2,
        )
    printed = summary(outcome)
    command = next(ln for ln in printed.splitlines() if ln.startswith("MLflow UI: "))
    assert command.endswith(" --host 127.0.0.1 --port 5000")
    uri = command.split("--backend-store-uri ")[1].split(" ")[0]
    link = next(ln for ln in printed.splitlines() if ln.startswith("Runs: ")).split()[1]
    compare = next(ln for ln in printed.splitlines() if ln.startswith("Compare: ")).split()[1]

    base = mlflow_ui_server(uri)
    trials = mlflow_runs(uri, kind="trial")
    assert len(trials) == 3
    names = [r.info.run_name for r in trials]
    text = ""
    for budget in (15000, 40000):  # a loaded machine may need more time to render
        text = _rendered_text(
            browser, link.replace("http://127.0.0.1:5000", base), tmp_path / "p", budget
        )
        if all(n in text for n in names):
            break
    # The runs table, flat: the sweep's run and each of its trials, and nothing else.
    assert "Run Name" in text, text[:3000]
    assert outcome.name in text and all(n in text for n in names), text[:3000]
    assert "4 matching runs" in text, text[:3000]
    # Not the GenAI overview an experiment opens on without the link's workflowType.
    assert "Token Usage" not in text and "Traces 0" not in text, text[:3000]
    # The experiment's description says what ran: the sweep's command and store.
    assert f"sweep {outcome.name} (" in text and str(search_store) in text, text[:3000]

    shown = _rendered_text(
        browser, compare.replace("http://127.0.0.1:5000", base), tmp_path / "p", 40000
    )
    top = json.loads(_hash_query(compare)["runs"])
    assert top == outcome.top_run_ids and len(top) >= 1
    assert f"Comparing {len(top)} Runs from 1 Experiment" in shown, shown[:3000]
    assert all(run_id in shown for run_id in top)
