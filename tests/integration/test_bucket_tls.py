"""The buckets kubeplat creates on AWS refuse plain HTTP (a TLS-only bucket policy). moto's
server evaluates bucket policies and speaks plain HTTP: it is the real consumer here, and
refuses what AWS would refuse."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from kubeplat import state
from kubeplat.aws import Aws

pytestmark = pytest.mark.integration


def test_a_bucket_kubeplat_creates_refuses_plain_http(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on AWS (no endpoint of kubeplat's own); boto3 itself is pointed at the emulator.
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    on_aws = Aws(boto3.Session(), "eu-west-1", None, sandbox=False)
    key = on_aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    assert state.ensure_bucket(on_aws, "kubeplat-tls-only", key)
    s3 = on_aws.client("s3")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="kubeplat-tls-only", Key="dev/pki/x", Body=b"secret")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # Where kubeplat is told to use plain HTTP (the sandbox), its buckets have no such policy.
    sandbox = Aws(boto3.Session(), "eu-west-1", aws, sandbox=True)
    assert state.ensure_bucket(sandbox, "kubeplat-tls-sandbox", key)
    sandbox.client("s3").put_object(Bucket="kubeplat-tls-sandbox", Key="k", Body=b"x")


def test_the_policy_names_both_the_bucket_and_its_objects_in_each_partition() -> None:
    policy = state.tls_only("b", "cn-north-1")
    (statement,) = policy["Statement"]
    assert statement["Resource"] == ["arn:aws-cn:s3:::b", "arn:aws-cn:s3:::b/*"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert state.tls_only("b", "eu-west-1")["Statement"][0]["Resource"][0] == "arn:aws:s3:::b"


def test_an_existing_bucket_without_the_policy_is_named_and_secured_on_request(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    on_aws = Aws(boto3.Session(), "eu-west-1", None, sandbox=False)
    s3 = on_aws.client("s3")
    name = "kubeplat-made-long-ago"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    theirs = {
        "Sid": "TeamKeepsThis",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:DeleteBucket",
        "Resource": f"arn:aws:s3:::{name}",
    }
    s3.put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]})
    )
    s3.put_object(Bucket=name, Key="dev/x", Body=b"plain HTTP gets in")
    assert state.accepts_plain_http(on_aws, name)
    key = on_aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    assert not state.ensure_bucket(on_aws, name, key), "an existing bucket is not changed"

    assert state.add_tls_only(on_aws, name)
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=name, Key="dev/y", Body=b"secret")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # What was stored: theirs kept, ours added (read as the emulator's own admin would).
    merged = state.with_tls_only(
        {"Version": "2012-10-17", "Statement": [theirs]}, name, "eu-west-1"
    )
    assert [s["Sid"] for s in merged["Statement"]] == ["TeamKeepsThis", "KubeplatTLSOnly"]
    assert state.with_tls_only(merged, name, "eu-west-1") == merged, "added once"


def test_which_statements_refuse_plain_http() -> None:
    ours = state.tls_only("b", "eu-west-1")["Statement"][0]
    assert state._refuses_plain_http(ours)
    assert state._refuses_plain_http({**ours, "Principal": {"AWS": ["*"]}, "Action": ["*"]})
    assert state._refuses_plain_http(
        {**ours, "Condition": {"Bool": {"aws:SecureTransport": False}}}
    )
    assert not state._refuses_plain_http({**ours, "Effect": "Allow"})
    assert not state._refuses_plain_http({**ours, "Action": "s3:GetObject"})
    assert not state._refuses_plain_http({**ours, "Principal": {"AWS": "arn:aws:iam::1:root"}})
    assert not state._refuses_plain_http(
        {**ours, "Condition": {"Bool": {"aws:SecureTransport": "true"}}}
    )
