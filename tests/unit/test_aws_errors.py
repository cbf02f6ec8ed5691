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


def test_a_service_linked_role_created_meanwhile_is_used(environments: Path) -> None:
    """Two runs find no Auto Scaling role and both create it: AWS refuses the second ("has been
    taken"), which then goes on to the grant, as if it had created it (AWS's answers stubbed:
    the emulator serialises the two)."""
    from kubeplat import state

    env = config.load("example")
    session = boto3.Session(
        aws_access_key_id="a", aws_secret_access_key="b", region_name="eu-west-1"
    )
    connection = aws.Aws(session, "eu-west-1")
    key_arn = "arn:aws:kms:eu-west-1:123456789012:key/0d4a3c9e-1111-2222-3333-444455556666"
    role = "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/"
    role += state.AUTOSCALING_ROLE
    with Stubber(connection.client("iam")) as iam, Stubber(connection.client("kms")) as kms:
        iam.add_client_error("get_role", service_error_code="NoSuchEntity", http_status_code=404)
        iam.add_client_error(
            "create_service_linked_role",
            service_error_code="InvalidInput",
            service_message=f"Service role name {state.AUTOSCALING_ROLE} has been taken",
            http_status_code=400,
        )
        kms.add_response("list_grants", {"Grants": []})
        kms.add_response(
            "create_grant",
            {"GrantId": "g", "GrantToken": "t"},
            expected_params={
                "KeyId": key_arn,
                "GranteePrincipal": role,
                "Operations": list(state.VOLUME_OPERATIONS),
                "Name": state.GRANT_NAME,
            },
        )
        assert state.volume_key_access(connection, env, {"Arn": key_arn}) is True
        kms.assert_no_pending_responses()
