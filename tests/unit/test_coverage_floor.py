"""The coverage floor `.ci/run` holds the suite to (`.ci/coverage-floor`) only ever goes up:
a commit that lowers it to let a change through fails here."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLOOR = ".ci/coverage-floor"


def floors_in_history() -> list[tuple[str, float]]:
    """Each committed value of the floor, newest first, with its commit."""
    commits = subprocess.run(
        ["git", "-C", str(REPO), "log", "--format=%H", "--", FLOOR],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    found = []
    for commit in commits:
        shown = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{FLOOR}"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if shown.returncode == 0:  # absent in a commit that deleted it: that fails below
            found.append((commit[:12], float(shown.stdout)))
    return found


def test_the_floor_is_a_percentage() -> None:
    floor = float((REPO / FLOOR).read_text())
    assert 0 < floor <= 100


def test_the_floor_never_went_down() -> None:
    current = float((REPO / FLOOR).read_text())
    history = floors_in_history()
    for commit, value in history:
        assert current >= value, f"{FLOOR} is {current}, lower than {value} at {commit}"
    for (newer, high), (older, low) in itertools.pairwise(history):
        assert high >= low, f"{FLOOR} went down from {low} ({older}) to {high} ({newer})"
