"""A user of kubeplat for the end-to-end tests: their own sandbox, checkouts, Terraform config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kubeplat import terraform
from tests.conftest import REPO, emulator_clients


def make_user(home: Path) -> dict[str, str]:
    """Environment variables of a user whose home is `home` (no AWS_*, KUBEPLAT_*, TF_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBEPLAT_", "TF_"))}
    env.update({"HOME": str(home), "KUBEPLAT_STATE_DIR": str(home / "state"), "NO_COLOR": "1"})
    mirror = os.environ.get("KUBEPLAT_TF_MIRROR")
    config = home / "terraform.rc"
    config.write_text(terraform.mirror_config(mirror) if mirror else "")
    env["TF_CLI_CONFIG_FILE"] = str(config)
    env["CHECKOUT"] = str(checkout(home / "platform"))
    return env


def checkout(path: Path) -> Path:
    """A platform repository: the project's environments/ folder."""
    shutil.copytree(REPO / "environments", path / "environments")
    return path


def kubeplat(
    user: dict[str, str],
    *args: str,
    cwd: str | None = None,
    program: tuple[str, ...] = (sys.executable, "-m", "kubeplat"),
    timeout: float = 1200,
) -> subprocess.CompletedProcess[str]:
    """Run kubeplat (or `program`, a kubeplat of the tests') as that user, without a terminal
    (as in CI)."""
    return subprocess.run(
        [*program, *args],
        cwd=cwd or user["CHECKOUT"],
        env=user,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def clients(user: dict[str, str], *names: str) -> dict[str, object]:
    """boto3 clients of the user's sandbox (started if it was not), one per service name."""
    endpoint = kubeplat(user, "sandbox", "start").stdout.strip()
    return emulator_clients(endpoint, "eu-west-1", names)


def stop_sandbox(user: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "kubeplat", "sandbox", "stop"],
        env=user,
        check=False,
        capture_output=True,
    )


def story(user: dict[str, str], stderr: str, tail: int = 3000) -> str:
    """What a failed run said, for a test's failure message: what it printed before the apply
    (the adoptions and the plan's summary), its last `tail` characters, and the emulator's own
    failures (5xx answers, tracebacks) from the user's sandbox log."""
    head = stderr.split(" applying\n", 1)[0][-3000:]
    log = Path(user["KUBEPLAT_STATE_DIR"], "sandbox.log")
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    trouble = [line for line in lines if re.search(r'" 5\d\d |Traceback', line)][-20:]
    return (
        f"{head}\n[…]\n{stderr[-tail:]}\n"
        f"the emulator's failures: {chr(10).join(trouble) if trouble else 'none'}"
    )
