"""Run a child program, stream its output line by line, and forward interrupts to it.

Terraform must see Ctrl-C (and a CI runner's SIGTERM) as an interrupt so it can save state and
release its lock: the child runs in its own session, kubeplat forwards SIGINT to it and waits
for it to finish instead of dying first. Afterwards `Interrupted` is raised (exit 130).
"""

from __future__ import annotations

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
) -> Result:
    """Run `args`, calling `on_line` with each line of output (stdout and stderr merged)."""
    try:
        child = subprocess.Popen(
            list(args),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
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

    started = time.monotonic()
    interrupted: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        interrupted.append(signum)
        # Always SIGINT: Terraform treats it as "stop gracefully"; a second one forces it.
        child.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    lines: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            if on_line:
                on_line(line.rstrip("\n"))
        child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _record_timing(args, time.monotonic() - started)
    if interrupted:
        raise Interrupted(
            f"interrupted; {Path(args[0]).name} stopped cleanly (exit {child.returncode})",
            interrupt_hint,
        )
    return Result(child.returncode, "".join(lines))


def _record_timing(args: Sequence[str], seconds: float) -> None:
    """With KUBEPLAT_TIMINGS=FILE, append how long each child took (for bench/run.py)."""
    target = os.environ.get("KUBEPLAT_TIMINGS")
    if target:
        words = [Path(args[0]).name, *[a for a in args[1:] if not a.startswith("-")][:1]]
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"command": " ".join(words), "seconds": seconds}) + "\n")


def start(args: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a read-only child in the background (its output collected, no signal forwarding);
    the caller waits for it with `communicate()`."""
    return subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
