"""The sandbox: an AWS emulator (moto's server) on 127.0.0.1, one per user.

Like the AWS account it stands for, it is shared by every checkout and every command of the
user: started in the background the first time a sandbox environment needs it, reused after,
ended (with its data) by `kubeplat sandbox stop`. Its record lives in the user's state
directory (`$KUBEPLAT_STATE_DIR`, else `$XDG_STATE_HOME/kubeplat`, else ~/.local/state/kubeplat).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeplat.errors import KubeplatError

ACCESS_KEY = "sandbox"  # the emulator accepts any credentials; these name it in logs
SECRET_KEY = "sandbox"


@dataclass(frozen=True)
class Sandbox:
    """A running emulator."""

    pid: int
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def state_dir() -> Path:
    """Where the user's sandbox record and log live."""
    explicit = os.environ.get("KUBEPLAT_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kubeplat"


def _record() -> Path:
    return state_dir() / "sandbox.json"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (directory / "sandbox.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# How long a running emulator may take to answer before kubeplat says it does not. moto serves
# one request at a time in effect (its threads share one interpreter), so a busy emulator (a
# Terraform apply, a large describe call) can take seconds; one that lives is never replaced by a
# second, which would start empty and leave the user's environments behind in the first.
PATIENCE_S = 30.0


def _answers(endpoint: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=timeout):
            return True
    except OSError:
        return False


def _is_emulator(pid: int) -> bool:
    """Whether `pid` runs (and, where /proc tells, is a kubeplat sandbox emulator: a pid the
    record names may have been given to another program since)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: the pid alone
    return b"kubeplat.sandbox_world" in command


def recorded() -> Sandbox | None:
    """The sandbox the user's record names, when its emulator still runs (answering or not)."""
    try:
        data = json.loads(_record().read_text())
        box = Sandbox(int(data["pid"]), int(data["port"]))
    except (OSError, ValueError, KeyError):
        return None
    return box if _is_emulator(box.pid) else None


def current() -> Sandbox | None:
    """The user's running sandbox, or None. An emulator that runs but does not answer within
    `PATIENCE_S` is an error, never taken for a stopped one."""
    box = recorded()
    if box is None:
        return None
    deadline = time.monotonic() + PATIENCE_S
    while not _answers(box.endpoint, timeout=min(5.0, PATIENCE_S)):
        if not _is_emulator(box.pid):
            return None  # it ended meanwhile
        if time.monotonic() >= deadline:
            raise KubeplatError(
                f"the sandbox (pid {box.pid}, {box.endpoint}) runs but has not answered for "
                f"{PATIENCE_S:.0f} seconds",
                f"see {state_dir() / 'sandbox.log'}; to start it afresh (every sandbox "
                "environment's data is lost): kubeplat sandbox stop && kubeplat sandbox start",
            )
        time.sleep(0.5)
    return box


class NotStarted(RuntimeError):
    """The emulator exited, or did not answer in time."""


def launch(port_file: Path, output: Any, *, detached: bool) -> tuple[subprocess.Popen[bytes], int]:
    """Start the emulator (kubeplat.sandbox_world) and wait, bounded, until it answers; (its
    process, its port). It binds a port of the kernel's choosing itself and writes it to
    `port_file`: a port chosen here could be taken by another program (another user's sandbox)
    before the emulator bound it, and that program's emulator would then answer as this one.
    `detached`: in a session of its own, outliving the caller (Ctrl-C there does not reach it)."""
    port_file.unlink(missing_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-m", "kubeplat.sandbox_world", "--port-file", str(port_file)],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=detached,
    )
    deadline = time.monotonic() + 30
    port = 0
    while not port or not _answers(f"http://127.0.0.1:{port}"):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise NotStarted()
        if not port and port_file.exists():
            port = int(port_file.read_text())
        time.sleep(0.1)
    return child, port


def ensure() -> Sandbox:
    """The running sandbox, started in the background when there is none."""
    with _locked():
        running = current()
        if running:
            return running
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise KubeplatError(
                "the sandbox needs the AWS emulator, which is not installed",
                "install it: pip install 'kubeplat[sandbox]'",
            )
        log = state_dir() / "sandbox.log"
        try:
            with log.open("ab") as handle:
                child, port = launch(state_dir() / "sandbox.port", handle, detached=True)
        except NotStarted:
            raise KubeplatError(
                "the sandbox did not start", f"see {log}; then: kubeplat sandbox start"
            ) from None
        box = Sandbox(child.pid, port)
        _record().write_text(json.dumps({"pid": box.pid, "port": box.port}))
        return box


def stop() -> Sandbox | None:
    """End the user's sandbox and its data; the one that was running, or None. One that runs
    but does not answer is ended too."""
    with _locked():
        running = recorded()
        if running:
            with contextlib.suppress(OSError):
                os.kill(running.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not _is_emulator(running.pid):  # gone (or a zombie of this process's)
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(OSError):
                    os.kill(running.pid, signal.SIGKILL)
        _record().unlink(missing_ok=True)
        return running


def environ(box: Sandbox, region: str) -> dict[str, str]:
    """What boto3 and Terraform need to talk to the sandbox instead of AWS."""
    return {
        "AWS_ENDPOINT_URL": box.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
