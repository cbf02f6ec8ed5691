"""The `kubeplat` command ends as soon as its work is done (issue 17's no-op `up`): `entry`
skips Python's teardown of every module, but only once the output is flushed, the exit
handlers have run and no other thread is still working; the exit code is `main`'s."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from kubeplat.cli import entry
mark = Path(sys.argv[1])
atexit.register(lambda: mark.with_suffix(".atexit").write_text("ran"))
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        mark.with_suffix(".thread").write_text("finished")
    threading.Thread(target=late).start()
sys.argv = ["kubeplat", *sys.argv[3:]]
entry()
"""


def run(tmp_path: Path, thread: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "mark"), thread, *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_exit_code_output_and_exit_handlers_are_mains(tmp_path: Path) -> None:
    shown = run(tmp_path, "-", "--help")
    assert shown.returncode == 0, shown.stderr
    # Piped, so block-buffered: all of it arrives, the last command of the list too.
    assert shown.stdout.startswith("Usage: kubeplat") and "validate" in shown.stdout
    assert (tmp_path / "mark.atexit").read_text() == "ran"

    missing = run(tmp_path, "-", "validate", "-e", "nope")
    assert missing.returncode == 1
    assert "Error:" in missing.stderr and "nope" in missing.stderr
    assert run(tmp_path, "-", "no-such-command").returncode == 2


def test_a_thread_still_working_is_waited_for(tmp_path: Path) -> None:
    finished = run(tmp_path, "thread", "--help")
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "mark.thread").read_text() == "finished"
    assert (tmp_path / "mark.atexit").read_text() == "ran"


def test_python_m_kubeplat_is_the_same_command(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "kubeplat", "--version"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "kubeplat" in shown.stdout


def test_a_profile_of_a_command_is_still_written(tmp_path: Path) -> None:
    profiled = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(tmp_path / "prof"), "-m", "kubeplat", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr
    assert (tmp_path / "prof").stat().st_size > 0
