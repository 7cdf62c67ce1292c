"""Shared test set-up: offline, quiet, no Ray token files or usage stats."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


# -- feature store for tests (owner: data_prep foundation) ----------------------------------
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Small enough to build in a few seconds; every class is in train, val and test.
DEMO_STORE_SESSIONS = 8
DEMO_STORE_UTTERANCES_PER_SCRIPT = 2
# Big enough (about 550 utterances, 10-15 training rows per emotion) for learnability tests:
# with the small store's one val row per emotion a macro-F1 comparison is a coin toss.
DEMO_MEDIUM_UTTERANCES_PER_SCRIPT = 6


def _build_demo_store(
    tmp_path_factory: pytest.TempPathFactory, name: str, utterances_per_script: int
) -> Path:
    """A demo store built in a temporary CASE_TUNE_HOME (restored after), one torch thread."""
    import torch

    from data_prep.prepare import prepare_demo

    threads = torch.get_num_threads()
    # One thread: on a machine shared by parallel test runs, more threads mostly spin.
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp(name)
    old = os.environ.get("CASE_TUNE_HOME")
    os.environ["CASE_TUNE_HOME"] = str(home)
    try:
        return prepare_demo(
            home / "stores",
            sessions=DEMO_STORE_SESSIONS,
            utterances_per_script=utterances_per_script,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("CASE_TUNE_HOME", None)
        else:
            os.environ["CASE_TUNE_HOME"] = old


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small prepared demo feature store, built once per test session.

    8 demo sessions (about 180 utterances), tiny demo encoders (64-d audio and text),
    DEMO_MAX_FRAMES x DEMO_MAX_TOKENS. Built in a temporary CASE_TUNE_HOME, which is restored after.
    """
    return _build_demo_store(tmp_path_factory, "case_tune_home", DEMO_STORE_UTTERANCES_PER_SCRIPT)


@pytest.fixture(scope="session")
def demo_store_medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``demo_store`` with 6 utterances per script (about 550 utterances, ~10 s to build),
    for tests that compare what models learn from the demo's signal."""
    return _build_demo_store(
        tmp_path_factory, "case_tune_home_medium", DEMO_MEDIUM_UTTERANCES_PER_SCRIPT
    )
