"""Write one benchmark's figures into its own section of results/bench.md.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`;
running it again replaces only that section, so the file always holds the latest figures of
every benchmark side by side.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
from pathlib import Path

BENCH_MD = Path(__file__).resolve().parent.parent / "results" / "bench.md"
_HEADER = (
    "# Benchmarks\n\n"
    "Latest figures of every benchmark in `bench/`. Each section says how to rerun it. "
    "Ratios are measured within one run, because this machine is shared and noisy.\n"
)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update_section(name: str, body: str, path: Path = BENCH_MD) -> None:
    """Replace (or append) the section ``name`` of ``path`` with ``body``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = (
        f"<!-- bench:{name} -->\n{body.rstrip()}\n\n"
        f"_Measured {stamp} on {machine()}._\n<!-- /bench:{name} -->"
    )
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
        pattern = re.compile(
            rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda _m: section, text)
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        path.write_text(text, encoding="utf-8")


def publish(name: str, body: str, *, write: bool = True) -> None:
    """Print a bench's report, then (unless ``write`` is False: --no-write) make it section
    ``name`` of bench.md. Printed first so a long run's figures survive a failed write."""
    print(body)
    if write:
        update_section(name, body)
