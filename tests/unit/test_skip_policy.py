"""CI fails on a skip that is not allow-listed (tests/conftest.py, ALLOWED_SKIPS): a skipped
test proves nothing. Runs pytest itself on a small suite with the repository's conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ALLOWED_SKIPS, REPO

SUITE = """
import pytest

def test_runs():
    assert True

def test_allowed():
    pytest.skip({allowed!r})

def test_{name}():
    pytest.skip("no frobnicator here")
"""


def run(folder: Path, strict: bool, unallowed: bool = True) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    allowed = next(iter(ALLOWED_SKIPS))
    name = "unallowed" if unallowed else "runs_too"
    text = SUITE.format(allowed=allowed, name=name)
    if not unallowed:
        text = text.replace('pytest.skip("no frobnicator here")', "assert True")
    (folder / "test_suite.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "KUBEPLAT_SKIPS"}
    env["PYTHONPATH"] = str(REPO)
    if strict:
        env["KUBEPLAT_SKIPS"] = "strict"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
         "-o", "addopts=", str(folder)],
        capture_output=True, text=True, check=False, env=env, cwd=folder, timeout=120,
    )  # fmt: skip


def test_a_skip_not_allowed_fails_the_strict_run(tmp_path: Path) -> None:
    found = run(tmp_path, strict=True)
    assert found.returncode == 1, found.stdout
    assert "1 passed, 2 skipped" in found.stdout
    assert "test_suite.py::test_unallowed: no frobnicator here (NOT ALLOWED)" in found.stdout
    assert "test_suite.py::test_allowed: root reads any file" in found.stdout
    assert "(allowed: as root (CI)" in found.stdout


def test_outside_ci_skips_are_listed_and_pass(tmp_path: Path) -> None:
    found = run(tmp_path, strict=False)
    assert found.returncode == 0, found.stdout
    assert "no frobnicator here (not in ALLOWED_SKIPS)" in found.stdout


def test_allowed_skips_pass_the_strict_run(tmp_path: Path) -> None:
    found = run(tmp_path, strict=True, unallowed=False)
    assert found.returncode == 0, found.stdout
    assert "2 passed, 1 skipped" in found.stdout
