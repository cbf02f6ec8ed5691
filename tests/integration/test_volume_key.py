"""A customer-managed KMS key for the nodes' encrypted volumes: Auto Scaling must be allowed to
use it, or every launch fails and the groups stay empty. kubeplat grants that before it builds
anything, and a caller who may not is told how, in one line. Against moto's server, with its
IAM enforcement for the caller who may not."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from kubeplat import config, state
from kubeplat.aws import Aws, AwsError
from tests.conftest import enforce_iam

pytestmark = pytest.mark.integration

ROLE = "AWSServiceRoleForAutoScaling"


def session(endpoint: str, key_id: str = "a", secret: str = "b") -> Aws:
    return Aws(
        boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=secret),
        "eu-west-1",
        endpoint,
    )


def grants_to_autoscaling(aws: Aws, key_arn: str) -> list[dict[str, object]]:
    grants = aws.client("kms").list_grants(KeyId=key_arn)["Grants"]
    return [g for g in grants if str(g["GranteePrincipal"]).endswith(f"/{ROLE}")]


def test_bootstrap_grants_autoscaling_the_key_once(aws: str, environments: Path) -> None:
    env = config.load("example")
    caller = session(aws)
    kms = caller.client("kms")
    key = kms.create_key(Description="customer managed")["KeyMetadata"]
    created = state.volume_key_access(caller, env, key)
    assert created is True
    (grant,) = grants_to_autoscaling(caller, key["Arn"])
    assert set(state.VOLUME_OPERATIONS) <= set(grant["Operations"])  # type: ignore[call-overload]
    assert (
        caller.client("iam")
        .get_role(RoleName=ROLE)["Role"]["Path"]
        .startswith("/aws-service-role/")
    )
    # A second run finds both and adds nothing.
    assert state.volume_key_access(caller, env, key) is False
    assert len(grants_to_autoscaling(caller, key["Arn"])) == 1


def restricted_caller(endpoint: str, allowed: list[str]) -> Aws:
    keys = enforce_iam(endpoint, "ci", allowed)
    return session(endpoint, keys["id"], keys["secret"])


def test_a_caller_who_may_not_grant_is_told_how(enforcing: str, environments: Path) -> None:
    env = config.load("example")
    admin = session(enforcing)
    key = admin.client("kms").create_key(Description="customer managed")["KeyMetadata"]
    admin.client("iam").create_service_linked_role(AWSServiceName="autoscaling.amazonaws.com")
    caller = restricted_caller(enforcing, ["iam:GetRole", "kms:DescribeKey", "kms:ListGrants"])
    with pytest.raises(AwsError) as info:
        state.volume_key_access(caller, env, key)
    message = str(info.value)
    assert "does not let Auto Scaling encrypt the nodes' volumes" in message
    assert "\n" not in message
    assert f"aws kms create-grant --key-id {key['Arn']}" in (info.value.hint or "")


def test_a_caller_who_may_not_create_the_role_is_told_how(
    enforcing: str, environments: Path
) -> None:
    env = config.load("example")
    admin = session(enforcing)
    key = admin.client("kms").create_key(Description="customer managed")["KeyMetadata"]
    caller = restricted_caller(enforcing, ["iam:GetRole", "kms:*"])
    with pytest.raises(AwsError) as info:
        state.volume_key_access(caller, env, key)
    assert f"the account has no {ROLE} role yet" in str(info.value)
    assert "aws iam create-service-linked-role" in (info.value.hint or "")
