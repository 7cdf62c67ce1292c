"""Where case-tune keeps what it builds: corpora, encoders and feature stores.

Everything lives under one home folder, ``$CASE_TUNE_HOME`` (default ``~/.cache/case-tune``),
so a user can move or wipe it in one place:

    $CASE_TUNE_HOME/corpora/    generated demo corpora
    $CASE_TUNE_HOME/encoders/   tiny demo encoders (saved with ``save_pretrained``)
    $CASE_TUNE_HOME/stores/     feature stores, one folder per key
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CASE_TUNE_HOME"


def case_tune_home() -> Path:
    """The home folder: ``$CASE_TUNE_HOME`` if set, else ``~/.cache/case-tune``."""
    raw = os.environ.get(HOME_ENV, "").strip()
    return Path(raw).expanduser().resolve() if raw else Path.home() / ".cache" / "case-tune"


def stores_root() -> Path:
    """Default folder holding feature stores."""
    return case_tune_home() / "stores"


def corpora_root() -> Path:
    """Default folder holding generated (demo) corpora."""
    return case_tune_home() / "corpora"


def encoders_root() -> Path:
    """Default folder holding locally built (demo) encoders."""
    return case_tune_home() / "encoders"
