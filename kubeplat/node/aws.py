"""AWS from a node: instance metadata (IMDSv2) and boto3 clients with the instance role.

`AWS_EC2_METADATA_SERVICE_ENDPOINT` moves the metadata service (tests, and nothing else on
EC2); `AWS_ENDPOINT_URL` moves every AWS API and is passed to boto3 explicitly, because the
botocore of Debian 12 and Amazon Linux 2023 predates the variable and would ignore it.
"""

from __future__ import annotations

import os
import urllib.request
from typing import Any

DEFAULT_IMDS = "http://169.254.169.254"
TIMEOUT_S = 5.0


def imds_base() -> str:
    """The metadata service's root URL."""
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_IMDS).rstrip("/")


def imds(path: str) -> str:
    """One metadata value, read with an IMDSv2 session token (the launch templates require it)."""
    base = imds_base()
    token_request = urllib.request.Request(
        base + "/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    with urllib.request.urlopen(token_request, timeout=TIMEOUT_S) as answer:
        token = answer.read().decode()
    request = urllib.request.Request(
        base + "/latest/" + path.lstrip("/"), headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return str(answer.read().decode())


class Identity:
    """Who this instance is, from the metadata service."""

    def __init__(self, instance_id: str, region: str, private_ip: str, hostname: str) -> None:
        self.instance_id = instance_id
        self.region = region
        self.private_ip = private_ip
        self.hostname = hostname

    @classmethod
    def read(cls) -> Identity:
        return cls(
            imds("meta-data/instance-id"),
            imds("meta-data/placement/region"),
            imds("meta-data/local-ipv4"),
            imds("meta-data/local-hostname"),
        )


def client(service: str, region: str) -> Any:
    """A boto3 client with short timeouts, retries, and the endpoint override when one is set."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "region_name": region,
        "config": Config(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
        ),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    return boto3.client(service, **options)
