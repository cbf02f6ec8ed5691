"""What runs: the environment's instances, from one paginated, filtered DescribeInstances."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubeplat.aws import Aws, errors

LAYER_ORDER = {"secure": 0, "control-plane": 1, "compute": 2}


@dataclass(frozen=True)
class Instance:
    """One row of `kubeplat instances` (the seed's `aws-instances`)."""

    name: str
    private_ip: str
    public_ip: str
    instance_id: str
    state: str
    availability_zone: str
    layer: str
    launch_time: str
    config: str = "-"  # whether it runs its layer's current PKI and manifests (`converged`)
    kubelet: str = "-"  # whether its kubelet's client certificate is the current kubelet CA's

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def instances(aws: Aws, environment: str, layer: str | None = None) -> list[Instance]:
    """The environment's instances (terminated ones left out), sorted by layer then zone."""
    filters = [
        {"Name": "tag:Environment", "Values": [environment]},
        {
            "Name": "instance-state-name",
            "Values": ["pending", "running", "stopping", "stopped", "shutting-down"],
        },
    ]
    if layer:
        filters.append({"Name": "tag:Layer", "Values": [layer]})
    found: list[Instance] = []
    with errors("listing the environment's instances", aws):
        paginator = aws.client("ec2").get_paginator("describe_instances")
        for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": 1000}):
            for reservation in page["Reservations"]:
                found += [_row(item) for item in reservation["Instances"]]
    return sorted(
        found,
        key=lambda i: (
            LAYER_ORDER.get(i.layer, 9),
            i.layer,
            i.availability_zone,
            i.name,
            i.instance_id,
        ),
    )


def _row(item: dict[str, Any]) -> Instance:
    tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
    launched = item.get("LaunchTime")
    return Instance(
        name=tags.get("Name", ""),
        private_ip=item.get("PrivateIpAddress", ""),
        public_ip=item.get("PublicIpAddress", ""),
        instance_id=item["InstanceId"],
        state=item.get("State", {}).get("Name", ""),
        availability_zone=item.get("Placement", {}).get("AvailabilityZone", ""),
        layer=tags.get("Layer", ""),
        launch_time=launched.isoformat() if launched is not None else "",
    )


# What a node's agent reports (status/LAYER/INSTANCE/manifests.json), against the bucket.
CURRENT, NOT_READY, BEHIND, SILENT, NO_REPORT = "current", "not ready", "behind", "silent", "-"
SILENT_AFTER = timedelta(minutes=5)  # the agent reports at least once a minute


def layer_listing(s3: Any, bucket: str, environment: str, layer: str) -> dict[str, str]:
    """What the layer's nodes should run: its PKI and manifests, name → ETag, named as the node
    agent names them (kubeplat/node/agent.py, `Sync.listing`), so both get the same digest."""
    from kubeplat.node.agent import list_prefix

    parts = (
        ("pki/common/", f"{environment}/pki/common/", True),
        (f"pki/{layer}/", f"{environment}/pki/{layer}/", True),
        ("manifests/", f"{environment}/manifests/{layer}/", False),
    )
    return {
        tag + name: etag
        for tag, prefix, tree in parts
        for name, etag in list_prefix(s3, bucket, prefix, tree=tree).items()
    }


def converged(
    aws: Aws, bucket: str, environment: str, rows: list[Instance], now: datetime | None = None
) -> list[Instance]:
    """`rows` with `config` filled from each node's report: current, not ready, behind (runs
    another set: a change still rolling, or stuck), silent (no report for 5 minutes) or -."""
    from kubeplat.node.agent import digest, list_prefix

    now = now or datetime.now(UTC)
    live = [r for r in rows if r.state in ("pending", "running")]
    if not live:
        return rows
    s3 = aws.client("s3")

    def report(row: Instance) -> dict[str, Any]:
        key = f"{environment}/status/{row.layer}/{row.instance_id}/manifests.json"
        try:
            found = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return {}
        return found if isinstance(found, dict) else {}

    with errors(f"reading the nodes' reports in s3://{bucket}/{environment}/status/", aws):
        layers = sorted({r.layer for r in live})
        wanted = {layer: digest(layer_listing(s3, bucket, environment, layer)) for layer in layers}
        # Read only the reports there are (a listing is a page for 1,000 nodes; a node that
        # never reported costs no GET).
        there = {
            layer: set(list_prefix(s3, bucket, f"{environment}/status/{layer}/", tree=True))
            for layer in layers
        }
        have = [r for r in live if f"{r.instance_id}/manifests.json" in there[r.layer]]
        with ThreadPoolExecutor(8) as pool:
            reports = dict(zip([r.instance_id for r in have], pool.map(report, have), strict=True))
    done = []
    for row in rows:
        found = reports.get(row.instance_id) or {}
        label = NO_REPORT
        if found:
            try:
                updated = datetime.strptime(str(found.get("updated")), "%Y-%m-%dT%H:%M:%SZ")
                fresh = now - updated.replace(tzinfo=UTC) < SILENT_AFTER
            except ValueError:
                fresh = False
            if not fresh:
                label = SILENT
            elif found.get("digest") != wanted.get(row.layer):
                label = BEHIND
            elif found.get("kubelet_client") == "old":
                label = BEHIND  # its kubelet still uses a certificate of a rotated kubelet CA
            else:
                label = CURRENT if found.get("ready") else NOT_READY
        kubelet = str(found.get("kubelet_client") or NO_REPORT)
        done.append(replace(row, config=label, kubelet=kubelet))
    return done
