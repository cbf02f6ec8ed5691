"""Run a node's bootstrap as named steps, each retried, each recorded.

A step is a function that is safe to run again (it checks before it changes). A step that
raises `Retry`-worthy trouble (any exception but `Permanent`) is retried with a growing pause
until its deadline; `Permanent` ends it at once (a digest that does not match twice, an
unsupported operating system). Every start, retry, success and failure is one line on stdout
(the journal, and the console through the unit's `StandardOutput=journal+console`) and is kept
in a status file (`/var/lib/kubeplat/status.json`) that the operator can read on the node and
that the node reports to the secrets bucket.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATUS_PATH = Path("/var/lib/kubeplat/status.json")


class Permanent(Exception):
    """Trouble that another attempt cannot fix; the step fails at once."""


def now_iso() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(message: str) -> None:
    """One line for the journal (and the console)."""
    print(f"kubeplat: {message}", flush=True)


class Step:
    """One idempotent part of the bootstrap."""

    def __init__(
        self,
        name: str,
        run: Callable[[], str | None],
        deadline_s: float = 600.0,
        backoff_s: float = 5.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.name = name
        self.run = run  # returns an optional note ("3 packages installed")
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s


class Status:
    """The node's bootstrap record, kept in a file (written whole, atomically)."""

    def __init__(self, path: Path, identity: dict[str, str]) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            **identity,
            "state": "booting",
            "steps": [],  # in the order they run
            "started": now_iso(),
        }
        # Called with the record after every save (the node publishes it to the bucket).
        self.on_save: Callable[[dict[str, Any]], object] | None = None

    def step(self, name: str) -> dict[str, Any]:
        steps: list[dict[str, Any]] = self.data["steps"]
        for record in steps:
            if record["name"] == name:
                return record
        steps.append({"name": name, "state": "pending", "attempts": 0})
        return steps[-1]

    def save(self) -> None:
        self.data["updated"] = now_iso()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".status.", dir=str(self.path.parent))
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(self.data, handle, indent=1, sort_keys=True)
                handle.write("\n")
            os.chmod(temporary, 0o644)  # no secret in it: operators may read it without sudo
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        if self.on_save is not None:
            self.on_save(self.data)


def run_steps(
    steps: list[Step],
    status: Status,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Run `steps` in order; stop at the first that fails for good. True when all succeeded."""
    for step in steps:
        record = status.step(step.name)
        record.update(state="running", started=now_iso(), error=None)
        status.data["step"] = step.name
        status.save()
        started = clock()
        pause = step.backoff_s
        while True:
            record["attempts"] += 1
            try:
                note = step.run()
            except Exception as exc:  # every failure is recorded; only Permanent is final
                message = _one_line(exc)
                record["error"] = message
                final = isinstance(exc, Permanent) or clock() - started + pause > step.deadline_s
                if final:
                    record.update(state="failed", finished=now_iso())
                    status.data.update(state="failed", error=f"{step.name}: {message}")
                    status.save()
                    say(f"step {step.name} failed after {record['attempts']} attempt(s): {message}")
                    return False
                say(
                    f"step {step.name}: attempt {record['attempts']} failed ({message}); "
                    f"retrying in {pause:.0f}s"
                )
                status.save()
                sleep(pause)
                pause = min(pause * 2, step.max_backoff_s)
                continue
            record.update(state="done", finished=now_iso(), error=None)
            if note:
                record["note"] = note
            say(f"step {step.name} done" + (f": {note}" if note else ""))
            status.save()
            break
    status.data.update(state="done", error=None)
    status.data.pop("step", None)
    status.save()
    return True


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def fail(message: str) -> int:
    """Print a fatal message on stderr; the exit code of a failed program."""
    print(f"kubeplat: {message}", file=sys.stderr, flush=True)
    return 1
