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


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small prepared demo feature store, built once per test session.

    8 demo sessions (about 180 utterances), tiny demo encoders (64-d audio and text),
    DEMO_MAX_FRAMES x DEMO_MAX_TOKENS. Built in a temporary CASE_TUNE_HOME, which is restored after.
    """
    import torch

    from data_prep.prepare import prepare_demo

    threads = torch.get_num_threads()
    # One thread: on a machine shared by parallel test runs, more threads mostly spin.
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("case_tune_home")
    old = os.environ.get("CASE_TUNE_HOME")
    os.environ["CASE_TUNE_HOME"] = str(home)
    try:
        return prepare_demo(
            home / "stores",
            sessions=DEMO_STORE_SESSIONS,
            utterances_per_script=DEMO_STORE_UTTERANCES_PER_SCRIPT,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("CASE_TUNE_HOME", None)
        else:
            os.environ["CASE_TUNE_HOME"] = old
