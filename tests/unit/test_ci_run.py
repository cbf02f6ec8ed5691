"""What `.ci/run` promises (issue 20), checked on the script itself: its coverage gate runs for
real on coverage data a test makes, and the run keeps skips strict, the node-boot tier required
and the gate's verdict deciding its exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = (REPO / ".ci" / "run").read_text()

# Four lines, two branches: run with a true argument, 3 of 4 lines and 1 of 2 branches.
MODULE = """import sys
if len(sys.argv) > 1:
    print("one way")
else:
    print("the other")
"""


def apart() -> dict[str, str]:
    """This environment without the measuring of the run around the test (CI measures every
    process of its run: its data file and its start must not reach the test's, nor the test's
    data CI's), and with this interpreter's `python` first on PATH, as .ci/run has it."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")
    }
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return environment


def gate(folder: Path, floor: str) -> subprocess.CompletedProcess[str]:
    (folder / "floor").write_text(floor + "\n")
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "coverage-gate"), "floor"],
        cwd=folder, env=apart(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def measured(tmp_path: Path) -> Path:
    """A folder with one module measured (branches), its data split as parallel runs leave it."""
    (tmp_path / "module.py").write_text(MODULE)
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--branch", "--parallel-mode", "module.py", "x"],
        cwd=tmp_path, env=apart(), capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    assert list(tmp_path.glob(".coverage.*"))
    return tmp_path


def total(output: str) -> float:
    found = re.search(r"^coverage ([\d.]+)% \(branches included\); floor ([\d.]+)%$", output, re.M)
    assert found, output
    return float(found.group(1))


def test_the_gate_passes_at_or_above_the_floor_and_prints_the_figure(measured: Path) -> None:
    done = gate(measured, "60")
    assert done.returncode == 0, done.stdout + done.stderr
    figure = total(done.stdout)
    assert 60 <= figure < 100  # one branch of two never taken
    assert "module.py" in done.stdout  # the report itself, file by file
    assert "raise floor to" in done.stdout  # a point or more above: say to raise it


def test_the_gate_fails_below_the_floor_saying_so(measured: Path) -> None:
    done = gate(measured, "99")
    assert done.returncode == 1
    assert total(done.stdout) < 99
    assert "coverage fell below the floor (floor): a change left code untested" in done.stderr


def test_no_coverage_data_fails_the_gate(tmp_path: Path) -> None:
    done = gate(tmp_path, "10")
    assert done.returncode != 0
    assert "coverage " not in done.stdout


def commands(script: str) -> list[str]:
    """The script's commands, one per logical line (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_every_pytest_run_of_ci_is_strict_about_skips() -> None:
    lines = commands(RUN)
    strict = lines.index("export KUBEPLAT_SKIPS=strict")
    runs = [i for i, line in enumerate(lines) if "python -m pytest" in line]
    assert runs and all(i > strict for i in runs)
    assert not any("KUBEPLAT_SKIPS" in line for line in lines[strict + 1 :])  # never undone


def test_the_readmes_test_command_is_what_ci_runs_and_measures() -> None:
    readme = (REPO / "README.md").read_text()
    lines = commands(RUN)
    main = [line for line in lines if line.endswith("python -m pytest || tests=$?")]
    assert len(main) == 1 and "COVERAGE_PROCESS_START" in main[0]
    assert "python -m pytest" in readme


def test_the_gate_and_every_tier_decide_the_runs_exit() -> None:
    lines = commands(RUN)
    assert "bash .ci/coverage-gate .ci/coverage-floor || coverage=$?" in lines
    verdict = next(line for line in lines if line.startswith('if [ "$tests" != 0 ]'))
    for status in ("$tests", "$quickstart", "$coverage"):
        assert f'"{status}" != 0' in verdict
    assert verdict.endswith("then exit 1; fi")
    assert lines[-1] == "KUBEPLAT_NODE_BOOT_REQUIRED=1 python -m pytest -m node_boot tests/node"
    assert "set -euo pipefail" in lines
