"""AWS from a node: instance metadata (IMDSv2) and boto3 clients with the instance role.

`AWS_EC2_METADATA_SERVICE_ENDPOINT` moves the metadata service (tests, and nothing else on
EC2); `AWS_ENDPOINT_URL` moves every AWS API and is passed to boto3 explicitly, because the
botocore of Debian 12 and Amazon Linux 2023 predates the variable and would ignore it.
"""

from __future__ import annotations

import os
import time
import urllib.request
from typing import Any

DEFAULT_IMDS = "http://169.254.169.254"
TIMEOUT_S = 5.0
ATTEMPTS = 3

_session: Any = None


class Activity:
    """What this process is waiting on now (an AWS call, a command) and since when, so that
    a loop that stalls can say on what (`kubeplat-etcd watch`). "" while it waits on nothing."""

    what = ""
    since = 0.0

    @classmethod
    def enter(cls, what: str) -> None:
        cls.what, cls.since = what, time.monotonic()

    @classmethod
    def leave(cls) -> None:
        cls.what = ""


def _calling(model: Any, **_: Any) -> None:
    Activity.enter(f"AWS {model.service_model.service_name} {model.name}")


def _called(**_: Any) -> None:
    Activity.leave()


class NoCredentials(RuntimeError):
    """The metadata service gave no credentials for the instance role (yet)."""


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

    def __init__(
        self, instance_id: str, region: str, private_ip: str, hostname: str, zone: str = ""
    ) -> None:
        self.instance_id = instance_id
        self.region = region
        self.private_ip = private_ip
        self.hostname = hostname
        self.zone = zone

    @classmethod
    def read(cls) -> Identity:
        return cls(
            imds("meta-data/instance-id"),
            imds("meta-data/placement/region"),
            imds("meta-data/local-ipv4"),
            imds("meta-data/local-hostname"),
        )

    @property
    def provider_id(self) -> str:
        """The node's id for the AWS cloud provider (its cloud controller manager, the EBS CSI
        driver): `aws:///ZONE/INSTANCE`. The zone is asked for only here: the agent, which
        never needs it, does not depend on one more answer of the metadata service."""
        if not self.zone:
            self.zone = imds("meta-data/placement/availability-zone")
        return f"aws:///{self.zone}/{self.instance_id}"


def session() -> Any:
    """The process's boto3 session, holding the instance role's credentials.

    botocore asks the metadata service once, with a one-second timeout, and a client made
    while that failed has no credentials for the rest of its life: a long-running agent
    created at a busy moment would fail every call until restarted. So the credentials are
    fetched patiently here and a client is never made without them: `NoCredentials` instead,
    and the next call asks again (the units that call this restart on failure).
    """
    global _session
    import boto3
    import botocore.session

    if _session is None:
        core = botocore.session.get_session()
        core.set_config_variable("metadata_service_timeout", TIMEOUT_S)
        core.set_config_variable("metadata_service_num_attempts", ATTEMPTS)
        _session = boto3.Session(botocore_session=core)
    if _session.get_credentials() is None:  # botocore asks again while it has none
        raise NoCredentials(
            "no AWS credentials: the metadata service gave none for the instance role "
            "(is an instance profile attached?); asking again on the next try"
        )
    return _session


def client(service: str, region: str) -> Any:
    """A boto3 client with short timeouts, retries, and the endpoint override when one is set.

    Raises `NoCredentials` rather than returning a client that could never sign a request.
    """
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
    made = session().client(service, **options)
    made.meta.events.register("before-call", _calling)  # before the first attempt
    made.meta.events.register("after-call", _called)  # after the last (retries included)
    made.meta.events.register("after-call-error", _called)
    return made
