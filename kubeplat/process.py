"""Run a child program, stream its output line by line, and forward interrupts to it.

Terraform must see Ctrl-C (and a CI runner's SIGTERM) as an interrupt so it can save state and
release its lock: the child runs in its own session, kubeplat forwards SIGINT to it and waits
for it to finish instead of dying first. Afterwards `Interrupted` is raised (exit 130).

Terraform must also outlive kubeplat: with `log`, the child writes to that file, never to a
pipe of kubeplat's, and kubeplat follows the file. If kubeplat is killed (SIGKILL, a closed
terminal), nothing the child writes can fail and no signal reaches it from the terminal: it
finishes its run, writes its state and releases its lock by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from kubeplat.errors import KubeplatError


class Interrupted(KubeplatError):
    """The user (or CI) interrupted kubeplat; the child was allowed to stop cleanly."""

    exit_code = 130


@dataclass(frozen=True)
class Result:
    """What a finished child left: its exit code and its whole output."""

    returncode: int
    output: str


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    interrupt_hint: str = "",
    log: Path | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Result:
    """Run `args`, calling `on_line` with each line of output (stdout and stderr merged).

    With `log`, the output goes to that file (0600) and is followed from there; `on_start`
    gets the child's pid once it runs."""
    output: int | None = subprocess.PIPE
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    # The handlers are in place before the child starts: an interrupt never finds it unwatched.
    interrupted: list[int] = []
    children: list[subprocess.Popen[str]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        interrupted.append(signum)
        # Always SIGINT: Terraform treats it as "stop gracefully"; a second one forces it.
        for running in children:
            running.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            child = subprocess.Popen(
                list(args),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError as exc:
            raise KubeplatError(
                f"cannot run {args[0]}: {exc.strerror}", "check it is installed"
            ) from None
        finally:
            if log is not None and isinstance(output, int):
                os.close(output)
        children.append(child)
        if interrupted:
            child.send_signal(signal.SIGINT)
        started = time.monotonic()
        lines: list[str] = []

        def take(line: str) -> None:
            lines.append(line)
            if on_line:
                on_line(line.rstrip("\n"))

        try:
            if on_start is not None:
                on_start(child.pid)
            if log is None:
                assert child.stdout is not None
                for line in child.stdout:
                    take(line)
            else:
                _follow(log, child, take)
            child.wait()
        except BaseException:
            # kubeplat cannot go on (its terminal is gone, a write failed...): the child is
            # asked to stop as on Ctrl-C, and waited for, so it never runs on unrecorded.
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                with contextlib.suppress(BaseException):
                    child.wait()
            raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _record_timing(args, time.monotonic() - started)
    if interrupted:
        raise Interrupted(
            f"interrupted; {Path(args[0]).name} stopped cleanly",
            interrupt_hint,
        )
    return Result(child.returncode, "".join(lines))


def _follow(log: Path, child: subprocess.Popen[str], take: Callable[[str], None]) -> None:
    """Every complete line the child writes to `log`, as it writes it, until it exits (read as
    bytes and decoded a line at a time, so a character split between two writes stays whole)."""
    with open(log, "rb") as reader:
        partial = b""
        while True:
            done = child.poll() is not None  # before reading: nothing written after is lost
            chunk = reader.read()
            if chunk:
                *complete, partial = (partial + chunk).split(b"\n")
                for line in complete:
                    take(line.decode("utf-8", errors="replace") + "\n")
            elif done:
                break
            else:
                # Woken at once by the child's exit (its last lines are read right after).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=0.1)
        if partial:
            take(partial.decode("utf-8", errors="replace"))


def _record_timing(args: Sequence[str], seconds: float) -> None:
    """With KUBEPLAT_TIMINGS=FILE, append how long each child took (for bench/run.py)."""
    target = os.environ.get("KUBEPLAT_TIMINGS")
    if target:
        words = [Path(args[0]).name, *[a for a in args[1:] if not a.startswith("-")][:1]]
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"command": " ".join(words), "seconds": seconds}) + "\n")
