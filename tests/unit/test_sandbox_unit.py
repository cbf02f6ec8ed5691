"""The sandbox's record and the emulator it names: an emulator that is slow to answer is waited
for, never replaced by a second (which would start empty and leave every sandbox environment
behind in the first); one that runs and never answers is an error naming it and the way out,
and `sandbox stop` ends it; a pid the record names that now runs another program is not taken
for the emulator. The "emulators" here are small HTTP servers started for the test (no moto):
what is checked is how kubeplat finds, waits for and ends the process its record names."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubeplat import sandbox
from kubeplat.errors import KubeplatError

# An HTTP server on a loopback port of the kernel's choosing (printed first) that waits DELAY
# seconds before each answer (a negative DELAY: it never answers). The last argument only puts
# the emulator's module name in its command line, as kubeplat's own emulator has it.
SERVER = """
import http.server, sys, time
delay = float(sys.argv[1])
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if delay < 0:
            time.sleep(3600)
        time.sleep(delay)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"moto")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBEPLAT_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def emulator(state: Path) -> Iterator[Callable[..., sandbox.Sandbox]]:
    """Start a stand-in emulator answering after `delay` seconds (never, when negative) and
    record it as the user's sandbox."""
    started: list[subprocess.Popen[str]] = []

    def start(delay: float, name: str = "kubeplat.sandbox_world") -> sandbox.Sandbox:
        child = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(delay), name],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        started.append(child)
        assert child.stdout is not None
        port = int(child.stdout.readline())
        (state / "sandbox.json").write_text(json.dumps({"pid": child.pid, "port": port}))
        return sandbox.Sandbox(child.pid, port)

    yield start
    for child in started:
        child.kill()
        child.wait(timeout=10)


@pytest.fixture
def no_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting another emulator fails the test."""

    def launch(*_args: object, **_kwargs: object) -> None:
        pytest.fail("a second emulator was started while the recorded one runs")

    monkeypatch.setattr(sandbox, "launch", launch)


def test_an_emulator_slow_to_answer_is_waited_for_not_replaced(
    emulator: Callable[..., sandbox.Sandbox], no_second: None
) -> None:
    box = emulator(3.0)  # longer than one attempt's first wait once was (2 s)
    assert sandbox.ensure() == box
    assert sandbox.current() == box


def test_an_emulator_that_never_answers_is_an_error_naming_it_and_the_way_out(
    emulator: Callable[..., sandbox.Sandbox],
    no_second: None,
    monkeypatch: pytest.MonkeyPatch,
    state: Path,
) -> None:
    monkeypatch.setattr(sandbox, "PATIENCE_S", 1.0)
    box = emulator(-1)
    with pytest.raises(KubeplatError) as raised:
        sandbox.ensure()
    assert str(raised.value) == (
        f"the sandbox (pid {box.pid}, {box.endpoint}) runs but has not answered for 1 seconds"
    )
    assert raised.value.hint == (
        f"see {state / 'sandbox.log'}; to start it afresh (every sandbox environment's data is "
        "lost): kubeplat sandbox stop && kubeplat sandbox start"
    )
    # The record still names it: nothing replaced it.
    assert json.loads((state / "sandbox.json").read_text())["pid"] == box.pid


def test_status_of_an_emulator_that_never_answers_is_one_error_line(
    emulator: Callable[..., sandbox.Sandbox],
    monkeypatch: pytest.MonkeyPatch,
    kubeplat: Callable[..., object],
) -> None:
    monkeypatch.setattr(sandbox, "PATIENCE_S", 1.0)
    box = emulator(-1)
    result = kubeplat("sandbox", "status")
    assert result.code == 1  # type: ignore[attr-defined]
    errors = [line for line in result.err.splitlines() if line.startswith("Error:")]  # type: ignore[attr-defined]
    assert errors == [f"Error: the sandbox (pid {box.pid}, {box.endpoint}) runs but has not "
                      "answered for 1 seconds"]  # fmt: skip
    assert "Traceback" not in result.err  # type: ignore[attr-defined]


def test_stop_ends_an_emulator_that_never_answers(
    emulator: Callable[..., sandbox.Sandbox], state: Path
) -> None:
    box = emulator(-1)
    assert sandbox.stop() == box
    deadline = time.monotonic() + 15
    while sandbox._is_emulator(box.pid):
        assert time.monotonic() < deadline, "the silent emulator still runs after stop"
        time.sleep(0.1)
    assert not (state / "sandbox.json").exists()
    assert sandbox.current() is None


def test_a_recorded_pid_now_running_another_program_is_not_the_sandbox(
    emulator: Callable[..., sandbox.Sandbox],
) -> None:
    emulator(0.0, name="some-other-program")
    assert sandbox.recorded() is None
    assert sandbox.current() is None


def test_an_answering_emulator_is_the_current_sandbox(
    emulator: Callable[..., sandbox.Sandbox], no_second: None
) -> None:
    box = emulator(0.0)
    assert sandbox.recorded() == box
    assert sandbox.current() == box
