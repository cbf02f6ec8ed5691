"""Sandboxes started at the same moment by different users (CI jobs on one machine, or the
test workers) are each their own emulator. kubeplat once chose a free port and then started the
emulator on it: another sandbox could take that port in between, and then answered as this one
(CI saw a fresh environment's launch template "already exist"). Now the emulator binds a port
of the kernel's choosing itself and says which."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import emulator_clients
from tests.integration.sandbox_user import make_user

pytestmark = pytest.mark.integration


def sandbox(user: dict[str, str], verb: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeplat", "sandbox", verb],
        cwd=user["CHECKOUT"], env=user, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_sandboxes_started_together_are_each_their_own(tmp_path: Path) -> None:
    homes = [tmp_path / f"user{n}" for n in range(4)]
    for home in homes:
        home.mkdir()
    users = [make_user(home) for home in homes]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
            started = list(pool.map(lambda u: sandbox(u, "start"), users))
        for done in started:
            assert done.returncode == 0, done.stderr
        endpoints = [done.stdout.strip() for done in started]
        assert len(set(endpoints)) == len(users), endpoints
        for user, endpoint in zip(users, endpoints, strict=True):
            said = Path(user["KUBEPLAT_STATE_DIR"], "sandbox.port").read_text().strip()
            assert endpoint == f"http://127.0.0.1:{said}"
        # What one user makes, no other user's sandbox holds.
        first = emulator_clients(endpoints[0], "eu-west-1", ("s3",))["s3"]
        first.create_bucket(  # type: ignore[attr-defined]
            Bucket="only-in-the-first",
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
        for endpoint in endpoints[1:]:
            other = emulator_clients(endpoint, "eu-west-1", ("s3",))["s3"]
            names = [b["Name"] for b in other.list_buckets()["Buckets"]]  # type: ignore[attr-defined]
            assert "only-in-the-first" not in names, endpoint
        # Asked again, each user gets the same sandbox back.
        assert [sandbox(u, "start").stdout.strip() for u in users] == endpoints
    finally:
        for user in users:
            sandbox(user, "stop")
