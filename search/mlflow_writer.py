"""The MLflow writes of a sweep's epochs, in a process of their own beside the Tune driver.

At 64 concurrent trials MLflow's `log_batch` (SQLAlchemy: a session, the run's row, one ORM
object per metric, the latest-metric table) was a third of the driver's CPU, and the driver
is one Python thread: every millisecond spent there is one the controller cannot spend on
results (bench/bench_scale.py, results/bench.md "scale"). A thread would share the GIL; a
process does not. The driver hands each batch over a queue (a pickle of a few numbers) and
goes on.

What is written stays in order (one queue, one writer) and `barrier` waits until everything
handed over is in MLflow: the callback calls it before Tune saves its experiment state, so
the saved state never names an epoch MLflow lacks, and before it reads a run back or deletes
it. A writer whose driver died writes nothing more (the epochs after the last save are
trained and logged again by the resumed sweep); an error in the writer is raised in the driver
at the next barrier or batch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
from typing import Any

_POLL_S = 1.0


def _serve(tracking_uri: str, jobs: Any, acks: Any, parent: int) -> None:
    """The writer's loop: batches in order, an ack per barrier, stop on None or orphaned."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from search.faults import fault_point

    client = MlflowClient(tracking_uri=tracking_uri)
    while True:
        try:
            job = jobs.get(timeout=_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if job is None or os.getppid() != parent:
            return
        kind, payload = job
        if kind == "barrier":
            acks.put(("ack", payload))
            continue
        try:
            if kind == "terminate":
                run_id, status = payload
                client.set_terminated(run_id, status)
                # The driver dies once the run is FINISHED in MLflow, not when handed over; a
                # killed driver's threads take a while to go, and its writer writes no more.
                if status == "FINISHED" and fault_point("run_finished", victim=parent):
                    return
                continue
            run_id, metrics, tags, params = payload
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in metrics],
                tags=[RunTag(k, v) for k, v in tags],
                params=[Param(k, v) for k, v in params],
                synchronous=True,
            )
        except Exception as exc:  # reported to the driver, which raises it
            acks.put(("error", f"{kind} of run {payload[0]}: {type(exc).__name__}: {exc}"))


class WriterError(RuntimeError):
    """The writer process could not write a batch, or died."""


class MlflowWriter:
    """A writer process for one tracking URI (started at once; `close` stops it)."""

    def __init__(self, tracking_uri: str) -> None:
        ctx = mp.get_context("spawn")  # a forked Ray driver (gRPC threads) can deadlock
        self._jobs, self._acks = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(
            target=_serve,
            args=(tracking_uri, self._jobs, self._acks, os.getpid()),
            name="case-tune-mlflow-writer",
            daemon=True,
        )
        self._proc.start()
        self._token = 0

    def log_batch(
        self, run_id: str, metrics: list[Any], tags: list[Any], params: list[Any] = ()
    ) -> None:
        """Hand one run's batch over (``metrics``, ``tags``, ``params`` as MLflow entities,
        within MLflow's limits on one batch)."""
        self._raise_errors()
        rows = [(m.key, m.value, m.timestamp, m.step) for m in metrics]
        pairs = [(t.key, t.value) for t in tags], [(p.key, p.value) for p in params]
        self._jobs.put(("batch", (run_id, rows, *pairs)))

    def set_terminated(self, run_id: str, status: str) -> None:
        """End the run with ``status``, after everything handed over before."""
        self._raise_errors()
        self._jobs.put(("terminate", (run_id, status)))

    def barrier(self, timeout: float = 600.0) -> None:
        """Wait until every batch handed over so far is written."""
        import time

        self._token += 1
        self._jobs.put(("barrier", self._token))
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, payload = self._acks.get(timeout=_POLL_S)
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise WriterError(
                        f"the MLflow writer did not answer within {timeout:.0f} s"
                    ) from None
                continue
            if kind == "error":
                raise WriterError(payload)
            if payload == self._token:
                return

    def _check_alive(self) -> None:
        if not self._proc.is_alive():
            raise WriterError(f"the MLflow writer process died (exit {self._proc.exitcode})")

    def _raise_errors(self) -> None:
        self._check_alive()
        while True:
            try:
                kind, payload = self._acks.get_nowait()
            except queue.Empty:
                return
            if kind == "error":
                raise WriterError(payload)

    def close(self) -> None:
        """Write what is left, then stop the process."""
        try:
            if self._proc.is_alive():
                self.barrier()
        finally:
            with contextlib.suppress(Exception):
                self._jobs.put(None)
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.kill()
