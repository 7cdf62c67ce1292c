"""Where a sweep's Optuna study (its ledger: trial numbers, draws, rung values, results) lives.

New sweeps keep it in Optuna's journal file (`JournalStorage` over `JournalFileBackend`):
every write is one appended line and every read comes from an in-memory replica that catches
up on the lines added since. The sqlite `RDBStorage` reread every running trial from the
database for each parameter TPE sampled and committed each parameter on its own: at 64
concurrent trials a suggestion cost 130 ms of the driver's CPU against 29 ms with the journal
(300 trials in the study; bench/bench_scale.py, results/bench.md "scale"). The journal is
Optuna's storage for exactly this (many writers or many trials, no database server) and is
safe on a network file system (its lock is a symlink).

A storage is named by a string recorded in sweep.json: ``journal:///ABS/PATH`` for a journal,
an SQLAlchemy URL (``sqlite:///...``) for sweeps recorded before, which open as they ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOURNAL = "journal:///"
JOURNAL_FILE = "optuna.journal"


def journal_spec(path: Path) -> str:
    """The storage string of a journal file at ``path``."""
    return f"{JOURNAL}{Path(path).resolve().as_posix().lstrip('/')}"


def is_journal(spec: str) -> bool:
    return spec.startswith(JOURNAL)


def journal_path(spec: str) -> Path:
    return Path("/" + spec[len(JOURNAL) :])


def open_storage(spec: Any) -> Any:
    """The Optuna storage ``spec`` names (a storage object is returned as it is); the journal's
    folder is created when missing."""
    import optuna

    if not isinstance(spec, str):
        return spec
    if is_journal(spec):
        from optuna.storages.journal import JournalFileBackend

        path = journal_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.get_storage(spec)


def load_study(spec: Any, name: str, **kwargs: Any) -> Any:
    """`optuna.load_study` of study ``name`` in the storage ``spec`` names."""
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(spec), **kwargs)


def study_exists(spec: Any, name: str) -> bool:
    """Whether the storage holds a study ``name`` (False where it cannot be read, or where a
    journal file does not exist yet)."""
    import optuna

    if isinstance(spec, str) and is_journal(spec) and not journal_path(spec).exists():
        return False
    try:
        return name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(spec))}
    except Exception:
        return False
