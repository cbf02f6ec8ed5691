"""`kubeplat etcd backup` and `restore` on the operator's side, against moto's real S3: what
they write for the members, what they wait for, and every way they refuse. The members' side
runs for real (etcd snapshots, etcdutl restore) in tests/node/test_etcd_members.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from kubeplat import etcdrecovery
from kubeplat.aws import Aws
from kubeplat.errors import KubeplatError
from kubeplat.store import BucketStore

pytestmark = pytest.mark.integration

RUNNING = {"i-0a": "ip-10-0-0-1.ec2.internal", "i-0b": "ip-10-0-0-2.ec2.internal"}
SNAPSHOT = "dev/etcd-backups/20261202T110000Z-i-0a.db"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def store(aws: str, request: pytest.FixtureRequest) -> BucketStore:
    connection = Aws(boto3.Session(), "eu-west-1", aws)
    bucket = "kubeplat-recovery-" + format(abs(hash(request.node.name)) % 36**6, "x")
    connection.client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    key = connection.client("kms").create_key()["KeyMetadata"]["Arn"]
    made = BucketStore(connection, bucket, "dev", key)
    made.put("etcd-backups/20261202T100000Z-i-0a.db", b"older")
    made.put("etcd-backups/20261202T110000Z-i-0a.db", b"snapshot bytes")
    return made


def report(store: BucketStore, instance: str, **fields: Any) -> None:
    body = {"answers": True, "updated": now(), "cluster": "f00d", **fields}
    store.put(f"status/secure/{instance}/etcd.json", json.dumps(body).encode())


def healthy(store: BucketStore, generation: int = 0) -> None:
    report(store, "i-0a", member="a1", leader="a1", quorum=True, generation=generation)
    report(store, "i-0b", member="b2", leader="a1", quorum=True, generation=generation)


def read(store: BucketStore, name: str) -> dict[str, Any] | None:
    return etcdrecovery._read(store, name)


def test_backup_waits_for_the_leaders_answer(store: BucketStore) -> None:
    healthy(store)

    def leader_answers(_: float) -> None:  # what the leader's watch writes once it saved one
        asked = read(store, "backup-request.json")
        assert asked is not None and asked["id"]
        done = {"id": asked["id"], "key": SNAPSHOT, "message": "saved", "by": "i-0a"}
        store.put("etcd/backup-done.json", json.dumps(done).encode())

    assert etcdrecovery.backup(store, RUNNING, 30, sleep=leader_answers) == SNAPSHOT


def test_backup_says_when_the_leader_failed_or_nobody_answers(store: BucketStore) -> None:
    healthy(store)

    def leader_fails(_: float) -> None:
        asked = read(store, "backup-request.json") or {}
        done = {"id": asked["id"], "key": "", "message": "saving failed: disk full", "by": "i-0a"}
        store.put("etcd/backup-done.json", json.dumps(done).encode())

    with pytest.raises(KubeplatError, match=r"i-0a.*could not take the snapshot: saving failed"):
        etcdrecovery.backup(store, RUNNING, 30, sleep=leader_fails)
    with pytest.raises(KubeplatError, match="no etcd leader answered the backup request within 0s"):
        etcdrecovery.backup(store, RUNNING, 0)


def test_backup_without_a_leader_reporting_is_refused_at_once(store: BucketStore) -> None:
    with pytest.raises(KubeplatError, match="no etcd leader of dev has reported"):
        etcdrecovery.backup(store, RUNNING, 30)
    report(store, "i-0a", member="a1", leader="a1", quorum=True, updated="2026-01-01T00:00:00Z")
    with pytest.raises(KubeplatError, match="no etcd leader of dev has reported"):
        etcdrecovery.backup(store, RUNNING, 30)  # an old report speaks for nobody
    assert read(store, "backup-request.json") is None


def test_backup_without_quorum_is_refused_at_once(store: BucketStore) -> None:
    report(store, "i-0a", member="a1", leader="0", quorum=False)
    with pytest.raises(KubeplatError, match="lost quorum") as raised:
        etcdrecovery.backup(store, RUNNING, 30)
    assert "when quorum is lost" in raised.value.hint
    assert read(store, "backup-request.json") is None  # nothing asked


def test_snapshot_names_are_checked(store: BucketStore) -> None:
    assert etcdrecovery.snapshot_key(store, SNAPSHOT) == SNAPSHOT
    assert etcdrecovery.snapshot_key(store, "20261202T110000Z-i-0a.db") == SNAPSHOT
    with pytest.raises(KubeplatError, match=r"no snapshot nope\.db") as raised:
        etcdrecovery.snapshot_key(store, "nope.db")
    assert SNAPSHOT in raised.value.hint  # the newest, named
    with pytest.raises(KubeplatError, match="is not one of dev's snapshots"):
        etcdrecovery.snapshot_key(store, "prod/etcd-backups/20261202T110000Z-i-0a.db")


def test_restore_is_refused_while_etcd_has_quorum_unless_forced(store: BucketStore) -> None:
    healthy(store)
    with pytest.raises(KubeplatError, match="has quorum \\(leader i-0a\\)") as raised:
        etcdrecovery.restore(store, SNAPSHOT, RUNNING, force=False, timeout_s=None)
    assert "--force" in raised.value.hint
    assert read(store, "formation.json") is None
    forced = etcdrecovery.restore(store, SNAPSHOT, RUNNING, force=True, timeout_s=None)
    assert forced["generation"] == 1


def test_restore_records_a_new_generation_and_waits_for_every_member(store: BucketStore) -> None:
    first = {"token": "kubeplat-old", "members": {"i-0z": "https://z:2380"}, "formed": "T"}
    store.put("etcd/formation.json", json.dumps(first).encode())
    report(store, "i-0a", answers=False, member="")
    said: list[str] = []
    rounds = iter(range(100))

    def members_restore(_: float) -> None:  # the members' watches, reporting generation 1
        if next(rounds) == 1:
            healthy(store, generation=1)

    record = etcdrecovery.restore(
        store, SNAPSHOT, RUNNING, force=False, timeout_s=60, progress=said.append,
        sleep=members_restore,
    )  # fmt: skip
    assert record["generation"] == 1 and record["token"] != "kubeplat-old"
    assert record["members"] == {i: f"https://{h}:2380" for i, h in RUNNING.items()}
    assert record["restore"] == {"from": SNAPSHOT, "snapshot": "dev/etcd/restore/1.db"}
    assert record["previous"]["token"] == "kubeplat-old"
    assert read(store, "formation.json") == record
    s3 = store.aws.client("s3")
    copy = s3.get_object(Bucket=store.bucket, Key="dev/etcd/restore/1.db")
    assert copy["Body"].read() == b"snapshot bytes"
    assert copy["ServerSideEncryption"] == "aws:kms"
    assert said[0].startswith("recorded generation 1") and said[-1].startswith("2 of 2")


def test_a_restore_nobody_follows_says_so(store: BucketStore) -> None:
    report(store, "i-0a", answers=False, member="")
    with pytest.raises(KubeplatError, match="recorded \\(generation 1\\), but after 0s 0 of 2"):
        etcdrecovery.restore(store, SNAPSHOT, RUNNING, force=False, timeout_s=0)


def test_no_secure_instance_no_restore(store: BucketStore) -> None:
    with pytest.raises(KubeplatError, match="no secure instance runs in dev"):
        etcdrecovery.running_members(store)


def test_where_no_member_ever_reported_the_restore_is_recorded_without_waiting(
    store: BucketStore,
) -> None:
    said: list[str] = []
    record = etcdrecovery.restore(
        store, SNAPSHOT, RUNNING, force=False, timeout_s=900, progress=said.append
    )
    assert record["generation"] == 1 and read(store, "formation.json") == record
    assert said[-1].startswith("no etcd member has ever reported here")
