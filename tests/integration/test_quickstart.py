"""Issue 17: the README's quick start, followed literally by a new user.

The commands are read from README.md itself (the first two ```sh blocks under "## Quick start"),
so that this test fails when the README says something that no longer works. They are typed, one
line at a time, into an interactive bash on a pseudo-terminal, in a clean clone of the committed
repository (HEAD: uncommitted changes of this checkout are not in it, by design) and a fresh
environment: the system's PATH without any virtual environment, an empty HOME, no AWS_*, TF_* or
KUBEPLAT_* variable except KUBEPLAT_TF_MIRROR when this machine has a provider mirror (no
registry access: the one variable the README asks for); the machine's own settings (pip's index
and certificates) stay, as for any user of it. The questions are answered as a user
would: `y` to "Apply these changes?", the environment's name to destroy it.

Nothing else is set. In particular not KUBEPLAT_STATE_DIR: the sandbox's record lives under HOME
(~/.local/state/kubeplat), which is the test's own, and the emulator listens on a free port, so
this user's sandbox never meets another test's. XDG_* variables are dropped for the same reason.

Slow (a `pip install` into a new virtual environment, then a first `up`): 5-7 min, mostly waiting
on the network and Terraform. `.ci/run` runs it in the background, beside the linters.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import _ORIGINAL_MIRROR, REPO

pytestmark = [pytest.mark.integration, pytest.mark.quickstart]

SETUP_TIMEOUT = 15 * 60  # the first block: venv, pip install (1-3 min), first up (2-3 min)
COMMAND_TIMEOUT = 5 * 60  # each command of the next block
# The shell's prompt carries the exit code of the command before it.
PS1 = "<quickstart rc=$?> "
PROMPT = re.compile(rb"<quickstart rc=(\d+)> ")
ANSI = re.compile(
    r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]"
)
# What a user answers: `y` to the apply, the environment's name to the destroy.
Answer = tuple[re.Pattern[bytes], Callable[[re.Match[bytes]], bytes]]
ANSWERS: list[Answer] = [
    (re.compile(rb"Apply these changes\?"), lambda _m: b"y\n"),
    (re.compile(rb"Type the environment's name \(([^)\s]+)\)"), lambda m: m[1] + b"\n"),
]


def quick_start_blocks(readme: str) -> list[list[str]]:
    """The command lines of the ```sh blocks of the README's "Quick start" section, up to the
    test command's block (comments kept for bash; blank and comment-only lines dropped)."""
    _, found, rest = readme.partition("\n## Quick start\n")
    assert found, "README.md has no '## Quick start' section"
    section = rest.split("\n## ", 1)[0]
    blocks = []
    for body in re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M):
        lines = body.replace("\\\n", " ").splitlines()
        commands = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if any(re.match(r"\s*python -m pytest\b", line) for line in commands):
            break  # "Run the tests": not part of the user's first build
        blocks.append(commands)
    return blocks


def in_a_virtual_environment(entry: str) -> bool:
    folder = Path(entry)
    return (folder.parent / "pyvenv.cfg").is_file() or (
        sys.prefix != sys.base_prefix and folder == Path(sys.prefix) / "bin"
    )


def fresh_environment(home: Path) -> dict[str, str]:
    """A new user's shell on this machine: its PATH minus virtual environments, HOME empty,
    nothing of kubeplat's, AWS's, Terraform's or Python's set, only the provider mirror."""
    dropped = ("AWS_", "KUBEPLAT_", "TF_", "PYTHON", "PYTEST_", "XDG_", "CONDA_", "PIP_REQUIRE")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(dropped)
        and name not in ("VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PS1", "PS2", "PROMPT_COMMAND")
        and name not in ("BASH_ENV", "ENV", "CDPATH", "NO_COLOR", "COLUMNS", "LINES")
    }
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    env["PATH"] = os.pathsep.join(p for p in path if not in_a_virtual_environment(p))
    env["HOME"] = str(home)
    env["TERM"] = "xterm-256color"  # what a terminal emulator sets
    env["PS1"] = PS1
    if _ORIGINAL_MIRROR:
        env["KUBEPLAT_TF_MIRROR"] = _ORIGINAL_MIRROR
    return env


def _controlling_terminal() -> None:
    """In the child, after setsid: make the pseudo-terminal its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """An interactive bash on a pseudo-terminal, typed into line by line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.main, tty = pty.openpty()
        # Wide enough that nothing wraps (a long temporary path in the kubeconfig line).
        fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
        self.shell = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"],
            cwd=cwd, env=env, stdin=tty, stdout=tty, stderr=tty,
            start_new_session=True, preexec_fn=_controlling_terminal,
        )  # fmt: skip
        os.close(tty)
        self.shown = b""
        try:
            self._wait_for_prompt(0, 30)
        except (TimeoutError, EOFError):
            self.close()
            raise

    def text(self, start: int = 0) -> str:
        """What the terminal showed from byte `start`, as its lines read at the end: without
        escape sequences, and a line redrawn after a carriage return (a spinner, a progress
        bar) only as last drawn."""
        shown = self.shown[start:].decode(errors="replace").replace("\r\n", "\n")
        lines = (line.rstrip("\r").rsplit("\r", 1)[-1] for line in shown.split("\n"))
        return "\n".join(ANSI.sub("", line) for line in lines)

    def type(self, line: str, timeout: float) -> tuple[int, int]:
        """Type `line` and wait for the next prompt, answering the known questions.
        (exit code, where its output starts in `shown`)."""
        start = len(self.shown)
        os.write(self.main, line.encode() + b"\n")
        return self._wait_for_prompt(start, timeout), start

    def _wait_for_prompt(self, start: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        answered = -1  # questions are looked for after the typed line's echo
        while True:
            prompt = PROMPT.search(self.shown, start)
            if prompt:
                return int(prompt[1])
            if answered < 0 and b"\n" in self.shown[start:]:
                answered = self.shown.index(b"\n", start)
            for question, reply in ANSWERS:
                asked = question.search(self.shown, answered) if answered >= 0 else None
                if asked:
                    os.write(self.main, reply(asked))
                    answered = asked.end()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no prompt after {timeout:.0f} s")
            ready, _, _ = select.select([self.main], [], [], min(left, 5))
            if ready:
                try:
                    chunk = os.read(self.main, 65536)
                except OSError:  # the terminal closed: the shell is gone
                    chunk = b""
                if not chunk:
                    raise EOFError(f"the shell ended (exit {self.shell.poll()})")
                self.shown += chunk

    def close(self) -> None:
        """End the shell and everything in its session (a command still running: under job
        control each command has a process group of its own)."""
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                if os.getsid(int(proc.name)) == self.shell.pid:
                    os.kill(int(proc.name), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(self.shell.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.shell.wait(timeout=10)
        os.close(self.main)


def end_what_this_user_started(home: Path, clone: Path, env: dict[str, str]) -> None:
    """`kubeplat sandbox stop` as that user; then any process of theirs still running (a
    Terraform that a killed kubeplat left, or an emulator that stop could not end), found by
    their HOME, which is this test's own."""
    kubeplat = clone / ".venv" / "bin" / "kubeplat"
    if kubeplat.exists():
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [str(kubeplat), "sandbox", "stop"],
                cwd=clone, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                check=False, timeout=60,
            )  # fmt: skip
    marker = f"HOME={home}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_the_readme_quick_start_builds_the_example_as_written() -> None:
    blocks = quick_start_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2, f"expected the setup block and the next one: {blocks}"
    setup, then = blocks[0], [line for block in blocks[1:] for line in block]
    with tempfile.TemporaryDirectory(
        prefix="kubeplat-quickstart-", ignore_cleanup_errors=True
    ) as scratch:
        home, clone = Path(scratch, "home"), Path(scratch, "kubeplat")
        home.mkdir()
        env = fresh_environment(home)
        for program in ("python3", "git", "terraform"):
            if not any(Path(p, program).is_file() for p in env["PATH"].split(os.pathsep)):
                pytest.skip(f"{program} is not on PATH (outside a virtual environment)")
        subprocess.run(
            ["git", "clone", "--quiet", str(REPO), str(clone)],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        terminal = Terminal(clone, env)
        ran: list[str] = []
        try:
            began = len(terminal.shown)
            for line in setup:
                ran.append(line)
                code, start = terminal.type(line, SETUP_TIMEOUT)
                assert code == 0, f"`{line}` exited {code}:\n{terminal.text(start)[-6000:]}"
            built = terminal.text(began)
            endpoint = re.search(r"^api_endpoint = (https://\S+)$", built, re.M)
            assert endpoint, f"no api_endpoint output:\n{built[-6000:]}"
            kubeconfig = re.search(r"^kubeconfig: (\S+)$", built, re.M)
            assert kubeconfig, f"no kubeconfig line:\n{built[-6000:]}"
            written = clone / kubeconfig[1]  # a relative path is the checkout's
            assert written.is_file(), kubeconfig[0]
            assert written.stat().st_mode & 0o777 == 0o600
            assert "Traceback" not in built, built[-6000:]
            for line in then:
                ran.append(line)
                code, start = terminal.type(line, COMMAND_TIMEOUT)
                shown = terminal.text(start)
                assert code == 0, f"`{line}` exited {code}:\n{shown[-6000:]}"
                assert "Traceback" not in shown, shown[-6000:]
                if re.match(r"kubeplat output\b", line):
                    assert endpoint[1] in shown, shown[-6000:]
        except (TimeoutError, EOFError) as exc:
            pytest.fail(f"`{ran[-1]}`: {exc}:\n{terminal.text()[-6000:]}")
        finally:
            terminal.close()
            end_what_this_user_started(home, clone, env)
