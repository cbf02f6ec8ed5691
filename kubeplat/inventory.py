"""What runs: the environment's instances, from one paginated, filtered DescribeInstances."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
