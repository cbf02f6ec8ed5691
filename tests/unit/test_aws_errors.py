"""botocore's errors become one-line errors with a hint, at the edge.

Expired credentials cannot be produced by the emulator (it issues no expiring sessions), so this
one case uses botocore's own Stubber to return AWS's ExpiredToken answer: the fake stands in for
AWS's reply only; the mapping under test is the real code.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from kubeplat import aws, config


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("ExpiredToken", "your AWS credentials have expired"),
        ("InvalidClientTokenId", "your AWS credentials are not valid for this account"),
        ("AccessDenied", "the caller lacks permission"),
    ],
)
def test_sts_errors_are_one_line_with_a_hint(environments: Path, code: str, hint: str) -> None:
    env = config.load("example")
    session = boto3.Session(
        aws_access_key_id="a", aws_secret_access_key="b", region_name="eu-west-1"
    )
    connection = aws.Aws(session, "eu-west-1")
    client = connection.client("sts")
    with Stubber(client) as stub:
        stub.add_client_error("get_caller_identity", service_error_code=code, service_message="no")
        with pytest.raises(aws.AwsError) as info:
            aws.check_account(connection, env)
    assert info.value.message == f"checking the caller's AWS account: {code}: no"
    assert hint in info.value.hint
