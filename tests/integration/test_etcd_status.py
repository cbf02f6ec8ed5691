"""`kubeplat etcd status` reads what the secure nodes report to the bucket (moto's real S3):
roles, stale members, quorum, the formation record and the latest snapshot. The reports come
from real etcd in tests/node/test_etcd_members.py; here each situation is set up directly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from kubeplat import etcdstatus
from kubeplat.aws import Aws

pytestmark = pytest.mark.integration

BUCKET = "kubeplat-status-secrets"
LOST = "kubeplat-status-lost"


def report(s3: object, instance: str, bucket: str = BUCKET, **fields: object) -> None:
    body = json.dumps({"answers": True, "updated": "2026-12-02T12:00:00Z", **fields}).encode()
    s3.put_object(Bucket=bucket, Key=f"dev/status/secure/{instance}/etcd.json", Body=body)  # type: ignore[attr-defined]


def test_status_from_the_members_reports(aws: str) -> None:
    connection = Aws(boto3.Session(), "eu-west-1", aws)
    s3 = connection.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    members = [
        {"id": "a1", "name": "i-0a", "peer": "https://a:2380", "learner": False},
        {"id": "b2", "name": "i-0b", "peer": "https://b:2380", "learner": False},
        {"id": "c3", "name": "i-0c", "peer": "https://c:2380", "learner": False},
    ]
    leader = {"member": "a1", "leader": "a1", "quorum": True, "db_size": 2097152}
    report(s3, "i-0a", **leader, members=members, cluster="f00d")
    report(s3, "i-0b", member="b2", leader="a1", quorum=True, members=members, cluster="f00d")
    report(s3, "i-0c", member="c3", leader="a1")  # its instance is gone since
    report(s3, "i-0d", member="d4", leader="a1", learner=True)
    s3.put_object(
        Bucket=BUCKET,
        Key="dev/etcd/formation.json",
        Body=json.dumps({"by": "i-0a", "formed": "2026-12-01T00:00:00Z"}).encode(),
    )
    for stamp in ("20261202T110000Z", "20261202T113000Z"):
        s3.put_object(Bucket=BUCKET, Key=f"dev/etcd-backups/{stamp}-i-0a.db", Body=b"snap")
    running = {"i-0a": "running", "i-0b": "running", "i-0d": "running", "i-0e": "pending"}

    found = etcdstatus.read(connection, BUCKET, "dev", running)

    roles = {r.instance_id: r.role for r in found.rows}
    assert roles == {"i-0a": "leader", "i-0b": "follower", "i-0d": "learner", "i-0e": "no report"}
    assert found.quorum is True and found.cluster == "f00d"
    assert found.stale == ["i-0c"]
    assert found.formed is not None and found.formed["by"] == "i-0a"
    assert found.snapshots == 2
    assert found.latest_snapshot == "dev/etcd-backups/20261202T113000Z-i-0a.db"
    assert next(r for r in found.rows if r.instance_id == "i-0a").db_size == 2097152


def test_age_reads_like_a_person_would() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def at(delta: timedelta) -> str:
        return (now - delta).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert etcdstatus.age(at(timedelta(seconds=42)), now) == "42s ago"
    assert etcdstatus.age(at(timedelta(minutes=5)), now) == "5m ago"
    assert etcdstatus.age(at(timedelta(hours=3)), now) == "3h ago"
    assert etcdstatus.age("", now) == "-"


def test_a_member_without_a_leader_means_quorum_is_lost(aws: str) -> None:
    """Two of three instances replaced at once: the survivor answers, has no leader, and its
    linearizable probe fails. The status says quorum is lost (not 'unknown')."""
    connection = Aws(boto3.Session(), "eu-west-1", aws)
    s3 = connection.client("s3")
    s3.create_bucket(Bucket=LOST, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    members = [{"id": "a1", "name": "i-0a", "peer": "https://a:2380", "learner": False}]
    report(s3, "i-0a", LOST, member="a1", leader="0", quorum=False, members=members, cluster="f00d")
    report(s3, "i-0b", LOST, answers=False, member="")
    report(s3, "i-0c", LOST, answers=False, member="")

    found = etcdstatus.read(
        connection, LOST, "dev", dict.fromkeys(["i-0a", "i-0b", "i-0c"], "running")
    )

    roles = {r.instance_id: r.role for r in found.rows}
    assert roles == {"i-0a": "no leader", "i-0b": "down", "i-0c": "down"}
    assert found.quorum is False
