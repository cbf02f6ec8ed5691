"""A node's AWS credentials come from the metadata service; a slow or empty answer must not
break a long-running node program for good.

The IMDSv2 stand-in on 127.0.0.1 (tests/imds_standin.py) also answers, on the same port, S3's
ListBuckets, recording the access key each request was signed with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from kubeplat.node import aws, health
from tests import imds_standin
from tests.imds_standin import ACCESS_KEY as KEY
from tests.imds_standin import StandIn


def fake_s3(handler: Any) -> None:
    """ListBuckets (and any other call): records the access key the request was signed with."""
    authorization = handler.headers.get("Authorization", "")
    found = re.search(r"Credential=([A-Z0-9]+)/", authorization)
    handler.server.signed_with.append(found.group(1) if found else "")
    handler.answer(200, "<ListAllMyBucketsResult><Buckets/></ListAllMyBucketsResult>")


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[StandIn]:
    with imds_standin.serving(other=fake_s3) as server:
        server.signed_with = []  # type: ignore[attr-defined]
        for name in imds_standin.NO_OTHER_CREDENTIALS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setattr(aws, "_session", None, raising=False)
        yield server


def test_a_slow_metadata_service_still_gives_the_role(standin: StandIn) -> None:
    # botocore alone gives up after one second and the client it made never signs anything.
    standin.credential_delay_s = 1.5
    aws.client("s3", "eu-west-1").list_buckets()
    assert standin.signed_with == [KEY]


def test_no_credentials_is_said_and_asked_again(standin: StandIn) -> None:
    standin.has_role = False
    with pytest.raises(aws.NoCredentials, match="instance role"):
        aws.client("s3", "eu-west-1")
    standin.has_role = True
    aws.client("s3", "eu-west-1").list_buckets()
    assert standin.signed_with == [KEY]


def test_a_reporter_that_started_without_credentials_recovers(standin: StandIn) -> None:
    # The etcd watch and the agent keep one reporter for their whole life.
    identity = aws.Identity("i-0123456789abcdef0", "eu-west-1", "10.0.0.5", "ip-10-0-0-5")
    reporter = health.Reporter("bucket", "env", "secure", identity)
    standin.has_role = False
    assert reporter.publish("etcd", {"health": "ok"}) is False
    standin.has_role = True
    assert reporter.read("i-0123456789abcdef0", "etcd") is None  # a GET, now signed
    assert standin.signed_with == [KEY]
