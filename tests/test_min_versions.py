"""pyproject.toml's minimum versions are the real ones, and code newer than them is caught.

Python: `vermin` reads every source file and names the standard-library and syntax features
newer than requires-python (e.g. hashlib.file_digest is 3.11); ruff's target-version follows
requires-python, so its pyupgrade rules (`ruff check`) speak of the same minimum.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SOURCES = ["data_prep", "models", "search", "bench", "tests"]
VERMIN = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())"]


def _min_python() -> str:
    spec = PYPROJECT["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(3\.\d+)", spec)
    assert match, f"requires-python should be a plain lower bound, got {spec!r}"
    return match.group(1)


def test_ruff_targets_the_declared_minimum_python() -> None:
    target = PYPROJECT["tool"]["ruff"]["target-version"]
    assert target == "py" + _min_python().replace(".", "")


def test_no_standard_library_use_newer_than_requires_python() -> None:
    pytest.importorskip("vermin", reason="pip install -e '.[test]' installs vermin")
    minimum = _min_python()
    cmd = [
        *VERMIN,
        f"-t={minimum}-",
        "--violations",
        "--no-tips",
        "--eval-annotations",
        "--backport",
        "dataclasses",
        *SOURCES,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vermin_catches_a_use_newer_than_the_minimum(tmp_path) -> None:
    pytest.importorskip("vermin", reason="pip install -e '.[test]' installs vermin")
    (tmp_path / "new.py").write_text(
        "import hashlib\nhashlib.file_digest(open(__file__, 'rb'), 'sha256')\n"
    )
    cmd = [*VERMIN, "-t=3.10-", "--violations", "--no-tips", "new.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "file_digest" in proc.stdout


def test_every_dependency_has_a_lower_bound_met_here() -> None:
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lows, f"{req.name}: no minimum version"
        assert Version(md.version(req.name)) >= max(lows), req.name
