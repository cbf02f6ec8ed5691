"""CI fails on a skip that is not allow-listed (tests/conftest.py, ALLOWED_SKIPS): a skipped
test proves nothing. Runs pytest itself on a small suite with the repository's conftest."""

from __future__ import annotations

import ast
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


# -- every reason the code can skip with is in tests/README.md ------------------------------------

SKIPPERS = {"skip", "importorskip", "skipif", "_unavailable"}


def _words(node: ast.expr | None) -> list[str]:
    """The literal words of a reason: a string whole, an f-string's constant parts."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [
            part.value.strip(" :")
            for part in node.values
            if isinstance(part, ast.Constant) and isinstance(part.value, str)
        ]
    return []


def skip_reasons(source: str) -> list[str]:
    """What the code in `source` can skip with: the reasons given to pytest.skip, importorskip,
    skipif and the node tier's `_unavailable`, and what `missing_prerequisites` returns."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in SKIPPERS:
                continue
            reason = next((k.value for k in node.keywords if k.arg == "reason"), None)
            if reason is None and name in ("skip", "_unavailable") and node.args:
                reason = node.args[0]
            found += _words(reason)
        elif isinstance(node, ast.FunctionDef) and node.name == "missing_prerequisites":
            found += [
                w for r in ast.walk(node) if isinstance(r, ast.Return) for w in _words(r.value)
            ]
    return [words for words in found if words]


def test_the_reason_finder_reads_every_form_a_skip_takes() -> None:
    source = """
import pytest
pytestmark = pytest.mark.skipif(X, reason="needs x")
pytest.importorskip("y", reason="pip install y")
def f(program):
    pytest.skip(f"{program} is not on PATH (outside): {why}")
    _unavailable("no image")
    pytest.skip(variable)
def missing_prerequisites():
    return "needs root"
    return f"missing programs: {names}"
"""
    assert sorted(skip_reasons(source)) == sorted(
        ["needs x", "pip install y", "is not on PATH (outside)", "no image", "needs root",
         "missing programs"]
    )  # fmt: skip


def test_every_skip_reason_in_the_code_is_in_tests_readme() -> None:
    readme = " ".join((REPO / "tests" / "README.md").read_text().split())
    missing = {
        f"{path.relative_to(REPO)}: {words!r}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        for words in skip_reasons(path.read_text())
        if " ".join(words.split()) not in readme
    }
    assert not missing, "skip reasons tests/README.md does not list: " + "; ".join(sorted(missing))
