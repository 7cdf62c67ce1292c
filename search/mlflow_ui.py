"""What the end summaries say about MLflow's UI: how to start it, and links that open on a
sweep's runs and on a comparison of its best runs.

MLflow 3's UI opens on its GenAI home, and an experiment without a kind on a "Traces / Usage"
overview with no run in sight; `?workflowType=machine_learning` on the experiment's runs page
opens straight on the runs table (tests/test_mlflow_ui.py loads the printed link in headless
Chromium). The routes are the UI's own (mlflow/server/js: `/experiments/:experimentId/runs`,
and `getCompareRunPageRoute`: `/compare-runs?runs=[...]&experiments=[...]`, JSON lists).

Nothing here imports MLflow: the summaries are printed after the work, from plain values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

from search.redact import redact_uri

UI_HOST = "127.0.0.1"  # never all interfaces: the UI has no authentication
UI_PORT = 5000  # `mlflow ui`'s default, given explicitly so the links match the command
# search.trainable.STAT_METRIC, the selection statistic every trial and final run logs (not
# imported: this module stays free of torch and Ray).
SORT_METRIC = "val_macro_f1_trailing"
COMPARE_MAX = 8  # runs side by side on the compare page: more no longer fit a screen


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_base(tracking_uri: str) -> str | None:
    """The UI's address: a tracking server's own (without credentials), `mlflow ui`'s on
    this machine for a local store; None where the UI is not ours to link (Databricks)."""
    if _is_server(tracking_uri):
        parts = urlsplit(tracking_uri)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")
    if tracking_uri.startswith("databricks"):
        return None
    return f"http://{UI_HOST}:{UI_PORT}"


def ui_command(tracking_uri: str) -> str:
    """How to start (or reach) the UI of ``tracking_uri``, as the summaries print it."""
    if _is_server(tracking_uri):
        return f"open {ui_base(tracking_uri)} (the `mlflow server` you track to)"
    if tracking_uri.startswith("databricks"):
        return "open the experiment in your Databricks workspace"
    return (
        f"mlflow ui --backend-store-uri {redact_uri(tracking_uri)} "
        f"--host {UI_HOST} --port {UI_PORT}"
    )


def _json_param(values: Sequence[str]) -> str:
    # The UI reads these with JSON.parse after URL-decoding; encoded, the link stays one
    # clickable word in a terminal (quotes and brackets end most terminals' links).
    return quote(json.dumps(list(values), separators=(",", ":")), safe="")


def runs_url(base: str, experiment_id: str, sweep: str | None = None) -> str:
    """The experiment's runs table; with ``sweep``, only that sweep's runs (its sweep run,
    trials and final runs all carry its `case_tune.sweep` tag), best first by the selection
    statistic. Sorted by anything but the start time, the table lists them flat: by start
    time it folds trials under their collapsed sweep run."""
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if sweep:
        url += "&searchFilter=" + quote(f"tags.`case_tune.sweep` = '{sweep}'", safe="")
        url += "&orderByKey=" + quote(f"metrics.`{SORT_METRIC}`", safe="") + "&orderByAsc=false"
    return url


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare-runs page for ``run_ids`` (at most COMPARE_MAX of them)."""
    runs = _json_param(list(run_ids)[:COMPARE_MAX])
    return f"{base}/#/compare-runs?runs={runs}&experiments={_json_param([experiment_id])}"


def ui_lines(
    tracking_uri: str,
    experiment_id: str | None,
    compare_ids: Sequence[str],
    what: str,
    *,
    sweep: str | None = None,
) -> list[str]:
    """The summary's MLflow lines: the command, the link to ``sweep``'s runs, the compare
    link (``what`` says which runs it compares), each where it applies."""
    lines = [f"MLflow UI: {ui_command(tracking_uri)}"]
    base = ui_base(tracking_uri)
    if base is None or not experiment_id:
        return lines
    lines.append(f"Runs:      {runs_url(base, experiment_id, sweep)}")
    if compare_ids:
        shown = min(len(compare_ids), COMPARE_MAX)
        lines.append(
            f"Compare:   {compare_url(base, experiment_id, compare_ids)}  ({what}, {shown})"
        )
    return lines
