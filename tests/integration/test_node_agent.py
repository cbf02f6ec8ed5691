"""The node agent against the sandbox's S3 (moto's server) and a temporary target directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from kubeplat.node import agent as node_agent

pytestmark = pytest.mark.integration

BUCKET = "agent-test"
PREFIX = "dev/manifests/compute/"


@pytest.fixture
def s3(aws: str):  # type: ignore[no-untyped-def]
    client = boto3.client("s3", region_name="eu-west-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


def test_sync_adds_changes_removes_and_keeps_mtimes(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "manifests"
    target.mkdir()
    (target / "not-ours.yaml").write_text("kind: Pod\n")  # a file the agent did not write
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "a.yaml", Body=b"a: 1\n")
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "b.yaml", Body=b"b: 1\n")
    s3.put_object(Bucket=BUCKET, Key="dev/manifests/secure/other.yaml", Body=b"x\n")
    agent = node_agent.Agent(s3, BUCKET, PREFIX, target)
    assert agent.sync_once() == ["+a.yaml", "+b.yaml"]
    os.utime(target / "a.yaml", (1_000_000, 1_000_000))
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "b.yaml", Body=b"b: 2\n")
    assert agent.sync_once() == ["~b.yaml"]
    assert (target / "b.yaml").read_text() == "b: 2\n"
    assert (target / "a.yaml").stat().st_mtime == 1_000_000  # unchanged file untouched
    # Re-uploading identical bytes (new ETag only matters if bytes differ) rewrites nothing.
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "a.yaml", Body=b"a: 1\n")
    assert agent.sync_once() == []
    assert (target / "a.yaml").stat().st_mtime == 1_000_000
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + "a.yaml")
    assert agent.sync_once() == ["-a.yaml"]
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [
        "b.yaml",
        "not-ours.yaml",
    ]
    assert not (target / "other.yaml").exists()


def test_running_agent_picks_up_a_change_within_one_interval(s3, tmp_path: Path, aws: str) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "manifests"
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "pod.yaml", Body=b"v: 1\n")
    interval = 2.0
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "kubeplat.node", "agent", "--bucket", BUCKET, "--prefix", PREFIX,
            "--target", str(target), "--region", "eu-west-1", "--interval", str(interval),
        ],
        env={**os.environ},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for(
            lambda: (
                (target / "pod.yaml").exists() and (target / "pod.yaml").read_text() == "v: 1\n"
            ),
            10,
        )
        s3.put_object(Bucket=BUCKET, Key=PREFIX + "pod.yaml", Body=b"v: 2\n")
        changed_at = time.monotonic()
        _wait_for(lambda: (target / "pod.yaml").read_text() == "v: 2\n", 10)
        took = time.monotonic() - changed_at
        print(f"picked up after {took:.2f}s (interval {interval}s)")
        assert took <= interval + 2.0  # one interval, plus slack for a busy machine
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_readers_never_see_a_partial_file(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "manifests"
    versions = [(b"%d" % i) * 200_000 + b"\n" for i in range(1, 7)]
    agent = node_agent.Agent(s3, BUCKET, PREFIX, target)
    seen: set[bytes] = set()
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for path in list(target.glob("*.yaml")):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                if data not in versions:
                    bad.append(len(data))
                seen.add(data)

    s3.put_object(Bucket=BUCKET, Key=PREFIX + "big.yaml", Body=versions[0])
    agent.sync_once()
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for body in versions[1:]:
            s3.put_object(Bucket=BUCKET, Key=PREFIX + "big.yaml", Body=body)
            agent.sync_once()
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert len(seen) >= 2  # the reader really overlapped the writes
    assert (target / "big.yaml").read_bytes() == versions[-1]


def _wait_for(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
