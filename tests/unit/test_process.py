"""kubeplat.process: a child whose output goes to a log file, followed by kubeplat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kubeplat import process

CHILD = """
import signal, sys, time
marker = sys.argv[1]
def stop(*_):
    open(marker, "w").write("stopped cleanly")
    sys.exit(3)
signal.signal(signal.SIGINT, stop)
print("first", flush=True)
sys.stdout.write("split: ")
sys.stdout.flush()
time.sleep(0.3)
sys.stdout.buffer.write("\\u2502".encode()[:1])
sys.stdout.flush()
time.sleep(0.3)
sys.stdout.buffer.write("\\u2502".encode()[1:] + b" done\\n")
sys.stdout.flush()
if len(sys.argv) > 2:
    time.sleep(60)
"""


def test_every_line_is_followed_from_the_log_and_a_split_character_stays_whole(
    tmp_path: Path,
) -> None:
    seen: list[str] = []
    log = tmp_path / "logs" / "run.log"
    result = process.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "marker")], on_line=seen.append, log=log
    )
    assert result.returncode == 0
    assert seen == ["first", "split: │ done"]
    assert log.read_text() == "first\nsplit: │ done\n"
    assert log.stat().st_mode & 0o777 == 0o600


def test_when_kubeplat_cannot_go_on_the_child_is_stopped_cleanly_and_waited_for(
    tmp_path: Path,
) -> None:
    """A failure in kubeplat while it follows (its terminal gone, say) never leaves the child
    running unrecorded: it is interrupted as on Ctrl-C and waited for."""
    marker = tmp_path / "marker"

    def broken(line: str) -> None:
        raise OSError(5, "Input/output error")

    pids: list[int] = []
    with pytest.raises(OSError, match="Input/output error"):
        process.run(
            [sys.executable, "-c", CHILD, str(marker), "hold"],
            on_line=broken,
            log=tmp_path / "run.log",
            on_start=pids.append,
        )
    assert marker.read_text() == "stopped cleanly"
    assert not Path(f"/proc/{pids[0]}").exists()
