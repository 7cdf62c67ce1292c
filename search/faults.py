"""Failpoints for tests: kill a process exactly where a window could be.

A failpoint facility in the manner of FreeBSD's fail(9) and etcd's gofail: production code
calls ``fault_point(NAME, ...)`` at a few places where a crash would open a window (a trial
between reporting an epoch and Tune registering its checkpoint, the driver just after a
trial's MLflow run became FINISHED (the MLflow writer, which wrote it, kills the driver), a
finalize unit mid-run, finalize's driver right after a unit's record is saved:
``unit_recorded:N`` after the Nth), and tests arm a point through the environment to SIGKILL
the real process there. What they check then does not depend on when a poll happens to see
the process.

Inert unless armed: an unarmed pass costs two ``os.environ`` lookups (the trace and the
point variables) and a string comparison, nothing else; no variable is set outside tests.
The variables:

- ``CASE_TUNE_FAULT=POINT`` or ``POINT:AT`` SIGKILLs the process reaching that point, or the
  process it names (``AT`` narrows it, e.g. ``trial_reported:2`` = after a trial's second
  epoch was reported; ``trial_result:2`` = the driver kills the trial's worker as its second
  epoch's result arrives, before Tune has registered that epoch's checkpoint;
  ``driver_result:3:2`` = the driver kills itself as trial 3's second epoch arrives, the
  other trials mid-epoch; ``trial_suggested:3`` = the driver dies once the study has asked
  trial 3, before Tune has saved it);
- ``CASE_TUNE_FAULT_ONCE=FILE``: only the first process to create FILE is killed, so a retried
  trial or task passes the point the second time;
- ``CASE_TUNE_FAULT_TRACE=FILE``: every pass through every point appends a line
  ``POINT AT WHO PID`` there, which is how a test counts attempts and sees which process ran.

Ray workers inherit the environment of the process that started the Ray node, so for points
in trials and finalize units the variables must be set before Ray starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

FAULT_ENV = "CASE_TUNE_FAULT"
FAULT_ONCE_ENV = "CASE_TUNE_FAULT_ONCE"
FAULT_TRACE_ENV = "CASE_TUNE_FAULT_TRACE"


def fault_point(name: str, at: object = None, who: str = "", victim: int | None = None) -> bool:
    """Trace this pass when asked; SIGKILL this process (or the process ``victim``, e.g. a
    trial's worker seen from the driver) if $CASE_TUNE_FAULT names the point. True when it
    killed ``victim``."""
    trace = os.environ.get(FAULT_TRACE_ENV)
    if trace:
        # One short O_APPEND write per line: lines of concurrent processes do not interleave.
        line = f"{name} {'-' if at is None else at} {who or '-'} {os.getpid()}\n"
        fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or wanted not in (name, f"{name}:{at}"):
        return False
    once = os.environ.get(FAULT_ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False  # another process took the fault already
    pid = victim or os.getpid()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if pid != os.getpid():
        _wait_gone(pid)
    return True


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` has exited, so that what the caller does next meets a dead process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return  # dead, awaiting its parent
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.01)


def read_trace(path: str | os.PathLike[str]) -> list[tuple[str, str, str, int]]:
    """The lines a trace file holds, as (point, at, who, pid)."""
    out = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                out.append((parts[0], parts[1], parts[2], int(parts[3])))
    return out
