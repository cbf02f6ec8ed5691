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
