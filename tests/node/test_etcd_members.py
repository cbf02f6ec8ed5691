"""etcd membership under what an autoscaling group does: formation, reboots, replacements,
scaling, quorum loss, the whole group replaced, backup and restore (etcd_group.py runs them).

Every scenario asserts what a platform team would check: one cluster ID throughout, every key
written before the event still readable after, as many members as running instances once
settled, and nobody stuck — or, where a cluster cannot go on (quorum lost, the whole group
replaced), that no second cluster is formed and the journal says why and what to do.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.node.etcd_group import (  # noqa: F401  (fixtures)
    SANDBOX_IP,
    SETTLE,
    Group,
    emulator_fixture,
    formed,
    group_fixture,
    until,
)
from tests.node.mirror import _etcd_binaries

pytestmark = pytest.mark.node_boot


def test_three_form_one_cluster_exactly_once(group: Group) -> None:
    cluster = formed(group)
    record = group.record()
    assert record is not None and sorted(record["members"]) == sorted(group.members)
    # All three proposed at once; the conditional write let exactly one record stand.
    writers = [m for m in group.members.values() if "formation record written" in m.journal()]
    assert len(writers) == 1, group.explain()
    assert group.clusters_seen == {cluster}

    # What an operator sees, from the members' reports in the bucket.
    def reported() -> dict[str, Any] | None:
        shown = group.status()
        return shown if all(r["member"] for r in shown["members"]) else None

    shown = until(reported, SETTLE, "every member's report", group)
    assert sorted(r["instance_id"] for r in shown["members"]) == sorted(group.members)
    assert sorted(r["role"] for r in shown["members"]) == ["follower", "follower", "leader"]
    assert shown["quorum"] is True and shown["stale_members"] == []
    assert shown["cluster"] == format(cluster, "x")
    assert shown["formed"]["by"] == writers[0].instance_id
    # Each member says when the certificate its etcd serves expires, read over TLS as a client
    # sees it (`kubeplat health` shows the soonest): the group's etcd/server certificate.
    from cryptography import x509

    served = x509.load_pem_x509_certificate(group.files["etcd/server.crt"]).not_valid_after_utc
    for row in shown["members"]:
        assert row["certificate_expires"] == served.strftime("%Y-%m-%dT%H:%M:%SZ"), row


def test_a_reboot_keeps_the_member(group: Group) -> None:
    cluster = formed(group)
    member = next(iter(group.members.values()))
    before = member.status()
    member.power_off()
    member.boot()
    group.settled()
    assert member.status() == before
    assert "restarts as the member it was" in member.journal()
    assert group.get("/kubeplat/before") == "kept" and group.clusters_seen == {cluster}


def test_one_replaced_joins_as_a_learner_and_the_gone_member_is_removed(group: Group) -> None:
    cluster = formed(group)
    old = next(iter(group.members.values()))
    (new,) = group.replace(old)
    members = group.settled()
    assert len(members) == 3 and old.instance_id not in {m["name"] for m in members}
    assert "joining as a learner" in new.journal()
    # The gone member is removed either by the joiner (before it adds itself) or by the
    # leader's watch, whichever sees the instance gone first: both say so.
    removals = [
        m for m in group.members.values() if f"removed member {old.instance_id}" in m.journal()
    ]
    assert removals, group.explain()
    assert "promoted to a voting member" in new.journal()
    assert group.get("/kubeplat/before") == "kept" and group.clusters_seen == {cluster}


def test_scale_three_to_five_and_back(group: Group) -> None:
    cluster = formed(group)
    started = group.scale(5)
    assert len(started) == 2
    assert len(group.settled()) == 5
    # Both booted at once and joined one after the other: never two learners at a time.
    assert group.most_learners <= 1
    for member in started:
        assert "joining as a learner" in member.journal(), group.explain()
        assert "promoted to a voting member" in member.journal(), group.explain()
    group.put("/kubeplat/five", "yes")
    group.scale(3)
    assert len(group.settled()) == 3  # the leader's watch removed the two gone members
    assert group.get("/kubeplat/before") == "kept" and group.get("/kubeplat/five") == "yes"
    assert group.clusters_seen == {cluster}


def test_two_of_three_replaced_at_once_never_forms_a_second_cluster(group: Group) -> None:
    cluster = formed(group)
    members = list(group.members.values())
    new = group.replace(*members[:2])
    survivor = members[2]
    for member in new:
        until(lambda m=member: "lost quorum" in m.journal(), SETTLE, "the quorum message", group)
        assert member.etcd is None  # etcd never started: no new, empty cluster
        assert "never forming a second cluster" in member.journal()
    group.views()
    assert group.clusters_seen == {cluster}
    assert survivor.status() is not None  # the survivor still runs, waiting for recovery
    # The operator is told (from the survivor's report) that quorum is lost.
    until(lambda: group.status()["quorum"] is False, SETTLE, "quorum lost in the status", group)
    # The README's recovery, step by step: the survivor restarts once as a cluster of one with
    # its data; the waiting instances then join it, one at a time.
    conf = survivor.host.dir / "etcd.conf.yml"
    original = conf.read_text()
    survivor.restart_etcd(original + "force-new-cluster: true\n")
    until(lambda: survivor.etcdctl("endpoint", "health").returncode == 0, SETTLE, "health", group)
    survivor.restart_etcd(original)
    assert len(group.settled()) == 3
    assert group.get("/kubeplat/before") == "kept" and group.clusters_seen == {cluster}


def test_the_whole_group_replaced_refuses_to_form_again_and_restore_brings_the_data_back(
    group: Group,
) -> None:
    cluster = formed(group)
    # `kubeplat etcd backup`: the leader's watch takes the snapshot the operator asks for.
    backup = group.kubeplat("backup", "--timeout", "120", timeout=180)
    assert backup.returncode == 0, backup.stderr + group.explain()
    key = backup.stdout.strip()
    assert key.startswith(f"{group.name}/etcd-backups/") and key.endswith(".db")
    group.put("/kubeplat/after-the-backup", "lost")
    record = group.record()
    new = group.replace(*group.members.values())
    for member in new:
        until(
            lambda m=member: "never forming a second cluster" in m.journal(),
            SETTLE,
            "the refusal",
            group,
        )
        assert member.etcd is None
    assert group.record() == record
    group.views()
    assert group.clusters_seen == {cluster}

    # A snapshot that is not there: one line, nothing recorded.
    missing = group.kubeplat("restore", "--snapshot", "20200101T000000Z-i-0.db")
    assert missing.returncode == 1 and "no snapshot 20200101T000000Z-i-0.db" in missing.stderr
    assert "Traceback" not in missing.stderr and group.record() == record

    # `kubeplat etcd restore`: the waiting instances restore the snapshot together.
    restored = group.kubeplat("restore", "--snapshot", key, "--timeout", "240", timeout=300)
    assert restored.returncode == 0, restored.stderr + group.explain()
    assert "restored" in restored.stderr
    after = group.record()
    assert after is not None and after["generation"] == 1
    assert sorted(after["members"]) == sorted(group.members)
    assert after["previous"]["token"] == record["token"]  # type: ignore[index]
    group.settled()
    assert group.get("/kubeplat/before") == "kept"
    assert group.get("/kubeplat/after-the-backup") == ""  # written after the snapshot
    restored_cluster = group.clusters_seen - {cluster}
    assert len(restored_cluster) == 1, group.clusters_seen  # one restored cluster, not three
    for member in group.members.values():
        assert "restoring the cluster from" in member.journal(), group.explain()

    # On a healthy cluster, a restore is refused unless forced.
    refused = group.kubeplat("restore", "--snapshot", key)
    assert refused.returncode == 1 and "has quorum" in refused.stderr, refused.stderr
    assert "--force" in refused.stderr and group.record() == after

    # Refused means refused: no member was restarted by it.
    for member in group.members.values():
        assert "restarting this member" not in member.journal(), group.explain()

    # Forced, the running members follow it: each watch restarts its member, whose data is
    # set aside (kept on disk) before the snapshot is restored again.
    group.put("/kubeplat/after-the-restore", "lost too")
    forced = group.kubeplat(
        "restore", "--snapshot", key, "--force", "--timeout", "240", timeout=300
    )
    assert forced.returncode == 0, forced.stderr + group.explain()
    group.settled()
    assert group.get("/kubeplat/before") == "kept"
    assert group.get("/kubeplat/after-the-restore") == ""
    for member in group.members.values():
        assert "restarting this member" in member.journal(), group.explain()
        kept = member.host.dir / "data.before-generation-2"
        assert (kept / "member").is_dir() and (member.host.dir / "data" / "member").is_dir()
    assert len(group.clusters_seen) == 3  # the first, the restored, the restored again


def test_snapshots_from_the_leader_restore_with_the_keys(group: Group, tmp_path: Path) -> None:
    """A backup that cannot be restored is not a backup: restore one and read the keys."""
    cluster = formed(group)
    group.put("/kubeplat/in-the-snapshot", "yes")
    env = {"AWS_ENDPOINT_URL": f"http://{SANDBOX_IP}"}
    prefix = f"{group.name}/etcd-backups/"
    s3 = group.aws["s3"]

    def snapshots() -> list[str]:
        listed = s3.list_objects_v2(Bucket=group.bucket, Prefix=prefix).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    for round_ in range(3):  # the timer fires on every member; only the leader saves
        for member in group.members.values():
            ran = member.host.run([*member.node_args("snapshot"), "--keep", "2"], env=env)
            assert ran.returncode == 0, ran.stdout + ran.stderr
        assert len(snapshots()) == min(round_ + 1, 2)
        time.sleep(1.1)  # snapshot names are by the second
    newest = snapshots()[-1]
    saved = tmp_path / "snapshot.db"
    saved.write_bytes(s3.get_object(Bucket=group.bucket, Key=newest)["Body"].read())
    # Restore it as etcd's own tools do, into a new single-member cluster on loopback.
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        peer, client = one.getsockname()[1], two.getsockname()[1]
    bins, data = _etcd_binaries(), tmp_path / "restored"
    initial = f"restored=http://127.0.0.1:{peer}"
    restore = subprocess.run(
        [
            str(bins / "etcdutl"),
            "snapshot",
            "restore",
            str(saved),
            f"--data-dir={data}",
            "--name=restored",
            f"--initial-cluster={initial}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    with (tmp_path / "restored.log").open("wb") as log:
        etcd = subprocess.Popen(
            [
                str(bins / "etcd"),
                f"--data-dir={data}",
                "--name=restored",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={initial}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def read() -> str:
            got = subprocess.run(
                [
                    str(bins / "etcdctl"),
                    f"--endpoints=http://127.0.0.1:{client}",
                    "get",
                    "/kubeplat/in-the-snapshot",
                    "--print-value-only",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            return got.stdout.strip()

        assert until(read, 60, "the restored etcd", group) == "yes"
    finally:
        etcd.terminate()
        etcd.wait(timeout=30)
    assert group.clusters_seen == {cluster}
