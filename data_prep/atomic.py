"""Writes that a reader (or a crash) never sees half done: a temporary sibling, then a rename.

A rename within one folder is atomic on POSIX file systems, so another process sees the old
file or folder or the new one, and a killed writer leaves at most a hidden temporary behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine: how a temporary named after its writer's
    pid is known to be orphaned (the store's build folders, trials' epoch folders)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sibling(final: Path) -> Path:
    # pid + random: two writers of the same path never share a temporary
    return final.parent / f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (parents created) so that ``path`` is never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """UTF-8 ``text`` to ``path``, as `write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def build_dir_atomic(
    final: Path, build: Callable[[Path], None], done: Callable[[Path], bool]
) -> Path:
    """Run ``build(tmp)`` in a fresh temporary folder and rename it to ``final``.

    ``done(final)`` says whether ``final`` is complete already: then nothing is built, and
    losing a race to another writer of the same folder is not an error.
    """
    final = Path(final)
    if done(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final)
    try:
        tmp.mkdir()
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not done(final):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
