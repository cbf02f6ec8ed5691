"""`kubeplat etcd status`: the secure layer's etcd as its members report it.

Each secure node's `kubeplat-etcd-watch` publishes what its etcd says about itself and the
cluster to `<environment>/status/secure/<instance>/etcd.json` in the secrets bucket (at least
every minute); this reads those reports beside the running instances (EC2), the formation
record and the snapshots, so an operator sees members, leader, health, database size, which
instance each member is, and members whose instance is gone, without reaching the private
subnets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubeplat.aws import Aws, errors
from kubeplat.node.etcd import Formation, list_snapshots


@dataclass
class MemberRow:
    instance_id: str
    state: str  # the instance's EC2 state, or "gone"
    member: str = ""  # etcd member id (hex), "" when the instance reports none
    role: str = "-"  # leader, follower, learner, no leader, down, no report
    db_size: int = 0
    reported: str = ""  # when the report was written
    generation: int = 0  # of the formation record its data belongs to (a restore adds one)
    certificate_expires: str = ""  # of the certificate its etcd serves (read over TLS), or ""

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EtcdStatus:
    rows: list[MemberRow]
    quorum: bool | None  # None: no voting member reports
    cluster: str
    formed: dict[str, Any] | None
    stale: list[str] = field(default_factory=list)  # members whose instance is gone
    snapshots: int = 0
    latest_snapshot: str = ""
    latest_snapshot_time: str = ""
    reports: int = 0  # etcd reports in the bucket, of running instances or not

    def as_json(self) -> dict[str, Any]:
        return {
            "members": [r.as_json() for r in self.rows],
            "quorum": self.quorum,
            "cluster": self.cluster,
            "formed": self.formed,
            "stale_members": self.stale,
            "snapshots": self.snapshots,
            "latest_snapshot": self.latest_snapshot,
            "latest_snapshot_time": self.latest_snapshot_time,
        }


def read(aws: Aws, bucket: str, environment: str, running: dict[str, str]) -> EtcdStatus:
    """The status from the bucket's reports; `running` maps instance id → EC2 state."""
    s3 = aws.client("s3")
    reports: dict[str, dict[str, Any]] = {}
    with errors(f"reading the etcd reports in s3://{bucket}/{environment}/status/secure/", aws):
        base = f"{environment}/status/secure/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for item in page.get("Contents", []):
                instance, _, name = item["Key"][len(base) :].partition("/")
                if name == "etcd.json":
                    body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    reports[instance] = json.loads(body)
        formed = Formation(s3, bucket, environment).read()
        snapshots = sorted(list_snapshots(s3, bucket, f"{environment}/etcd-backups/"))
    rows = []
    for instance in sorted(set(running) | set(reports)):
        report = reports.get(instance, {})
        row = MemberRow(instance, running.get(instance, "gone"))
        if instance in running and report:
            row.member, row.reported = report.get("member", ""), report.get("updated", "")
            row.db_size = int(report.get("db_size", 0))
            row.generation = int(report.get("generation", 0))
            row.certificate_expires = str(report.get("certificate_expires") or "")
            if not report.get("answers"):
                row.role = "down"
            elif report.get("learner"):
                row.role = "learner"
            elif report.get("leader", "0") == "0":
                row.role = "no leader"
            else:
                row.role = "leader" if report.get("leader") == row.member else "follower"
        elif instance in running:
            row.role = "no report"
        else:
            continue  # a report of an instance that is gone: shown as a stale member instead
        rows.append(row)
    # A voting member with no leader answers too: it is the surest sign that quorum is lost.
    voting = [reports[r.instance_id] for r in rows if r.role in ("leader", "follower", "no leader")]
    newest = max(voting, key=lambda r: r.get("updated", ""), default=None)
    members = (newest or {}).get("members", [])
    stale = [m.get("name") or m.get("id", "?") for m in members if m.get("name") not in running]
    latest = snapshots[-1] if snapshots else ("", None)
    return EtcdStatus(
        rows,
        None if newest is None else bool(newest.get("quorum")) and newest.get("leader", "0") != "0",
        (newest or {}).get("cluster", ""),
        formed,
        stale,
        len(snapshots),
        latest[0],
        latest[1].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if latest[1] else "",
        len(reports),
    )


def seconds_since(stamp: str, now: datetime | None = None) -> float:
    """Seconds from an ISO time (a report's `updated`) to now."""
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - then).total_seconds()


def age(stamp: str, now: datetime | None = None) -> str:
    """'42s ago', '5m ago', '3h ago' for an ISO time; '-' when there is none."""
    if not stamp:
        return "-"
    seconds = int(seconds_since(stamp, now))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"
