"""The shared ``main`` of the search commands (search.run, search.finalize): parse, work,
report, with the same answers to a usage error and to Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from search.settings import UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

S = TypeVar("S")
R = TypeVar("R")


def run_cli(
    prog: str,
    parse: Callable[[], S],
    work: Callable[[S], R],
    *,
    resume: Callable[[S | None], str],
    summary: Callable[[R], str],
    exit_code: Callable[[R], int] = lambda _: 0,
) -> int:
    """``work(parse())``, then its summary on stdout and ``exit_code(outcome)`` (default 0).

    A usage error is one line on stderr and EXIT_USAGE (no traceback: the user mistyped);
    Ctrl-C tells how to continue (``resume(settings)``, settings None if parsing was cut)."""
    settings = None
    try:
        settings = parse()
        outcome = work(settings)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; continue with {resume(settings)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(outcome), flush=True)
    return exit_code(outcome)


# What the summaries leave out of a config: the same for every trial of a sweep.
SWEEP_KEYS = ("epochs", "seed")


def config_text(config: Mapping[str, Any]) -> str:
    """A config for a summary line: floats to 4 significant digits (dropout=0.2659), the
    sweep-wide keys left out. Full precision is in trials.csv and best_configs.yaml."""
    return ", ".join(
        f"{k}={format(v, '.4g') if isinstance(v, float) else v}"
        for k, v in config.items()
        if k not in SWEEP_KEYS
    )
