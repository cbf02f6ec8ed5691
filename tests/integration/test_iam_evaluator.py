"""The IAM evaluator the policy tests use (tests/iam_evaluator.py: @cloud-copilot/iam-simulate,
in node), checked on the cases AWS documents, for the operators and shapes our policies use: a
test that trusts an evaluator should know it tells an exact match from a wildcard, a missing
key from a present one, and lets a Deny win; for a role's trust policy as well (who may assume
a pod's role)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.iam_evaluator import decide, decide_trust

pytestmark = pytest.mark.integration

BUCKET = "arn:aws:s3:::b"


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


LIST_ROLLS = {
    "Effect": "Allow",
    "Action": "s3:ListBucket",
    "Resource": BUCKET,
    "Condition": {"StringEquals": {"s3:prefix": "dev/rolls/"}},
}


def test_string_equals_is_exact_and_string_like_takes_wildcards() -> None:
    exact = policy(LIST_ROLLS)
    assert decide(exact, "s3:ListBucket", BUCKET, {"s3:prefix": "dev/rolls/"}) == "Allowed"
    for other in ("dev/", "dev/rolls/x", "dev/rolls", "DEV/rolls/", "*"):
        assert decide(exact, "s3:ListBucket", BUCKET, {"s3:prefix": other}) != "Allowed", other
    like = policy({**LIST_ROLLS, "Condition": {"StringLike": {"s3:prefix": "dev/rolls/*"}}})
    assert decide(like, "s3:ListBucket", BUCKET, {"s3:prefix": "dev/rolls/x"}) == "Allowed"
    assert decide(like, "s3:ListBucket", BUCKET, {"s3:prefix": "dev/other"}) != "Allowed"


def test_a_condition_on_a_missing_key_does_not_hold() -> None:
    assert decide(policy(LIST_ROLLS), "s3:ListBucket", BUCKET) == "ImplicitlyDenied"


def test_resources_match_by_wildcard_and_an_explicit_deny_wins() -> None:
    rules = policy(
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{BUCKET}/dev/*"},
        {"Effect": "Deny", "Action": "s3:*", "Resource": f"{BUCKET}/dev/pki/locked/*"},
    )
    assert decide(rules, "s3:GetObject", f"{BUCKET}/dev/pki/secure/a.key") == "Allowed"
    assert decide(rules, "s3:GetObject", f"{BUCKET}/dev/pki/locked/ca.key") == "ExplicitlyDenied"
    assert decide(rules, "s3:GetObject", f"{BUCKET}/prod/x") == "ImplicitlyDenied"
    assert decide(rules, "s3:PutObject", f"{BUCKET}/dev/x") == "ImplicitlyDenied"


def test_kms_through_one_service_only() -> None:
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    rules = policy(
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key,
            "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
        }
    )
    via_s3 = {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
    assert decide(rules, "kms:Decrypt", key, via_s3) == "Allowed"
    assert decide(rules, "kms:Decrypt", key, {"kms:ViaService": "ec2.eu-west-1.amazonaws.com"}) != (
        "Allowed"
    )
    assert decide(rules, "kms:Decrypt", key) != "Allowed"
    # S3's encryption context (renamed for the library, in policy and request alike).
    context = "kms:EncryptionContext:aws:s3:arn"
    scoped = policy(
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key,
            "Condition": {"StringLike": {context: f"{BUCKET}/dev/pki/compute/*"}},
        }
    )
    assert decide(scoped, "kms:Decrypt", key, {context: f"{BUCKET}/dev/pki/compute/t"}) == "Allowed"
    assert decide(scoped, "kms:Decrypt", key, {context: f"{BUCKET}/dev/pki/secure/k"}) != "Allowed"


def test_a_request_it_cannot_evaluate_fails_the_test_rather_than_reading_as_denied() -> None:
    with pytest.raises(AssertionError, match="not evaluated"):
        decide(policy(LIST_ROLLS), "s3:GetObject", f"{BUCKET}/x", {"s3:prefix": "dev/"})
    with pytest.raises(AssertionError):
        decide(policy(LIST_ROLLS), "s3:NoSuchAction", BUCKET)


# A pod's role (IRSA): the account's OpenID Connect provider for the cluster's issuer, and the
# claims of a service-account token it passes on.
ISSUER = "kubeplat-dev-secrets-oidc.s3.eu-west-1.amazonaws.com/dev"
PROVIDER = f"arn:aws:iam::123456789012:oidc-provider/{ISSUER}"
ROLE = "arn:aws:iam::123456789012:role/dev-kube-ebs-csi"
WEB = "sts:AssumeRoleWithWebIdentity"
OWN = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
OTHER = "system:serviceaccount:default:app"


def trust(operator: str = "StringEquals", subject: str = OWN) -> dict[str, Any]:
    condition: dict[str, dict[str, str]] = {"StringEquals": {f"{ISSUER}:aud": "sts.amazonaws.com"}}
    condition.setdefault(operator, {})[f"{ISSUER}:sub"] = subject
    return policy(
        {
            "Effect": "Allow",
            "Action": WEB,
            "Principal": {"Federated": PROVIDER},
            "Condition": condition,
        }
    )


def token(subject: str = OWN, audience: str = "sts.amazonaws.com") -> dict[str, str]:
    return {f"{ISSUER}:sub": subject, f"{ISSUER}:aud": audience}


def test_a_trust_policy_admits_its_service_account_only_and_a_widening_shows() -> None:
    """A role for one service account that any pod could take would pass unnoticed if the
    evaluator read `StringLike` as `StringEquals` (what an audit found of a hand-written one)."""
    assert decide_trust(trust(), PROVIDER, WEB, ROLE, token()) == "Allowed"
    assert decide_trust(trust(), PROVIDER, WEB, ROLE, token(OTHER)) == "ImplicitlyDenied"
    # StringEquals takes a `*` as itself: still the one service account only.
    starred = trust("StringEquals", "system:serviceaccount:*")
    assert decide_trust(starred, PROVIDER, WEB, ROLE, token(OTHER)) == "ImplicitlyDenied"
    # Widened to StringLike: any service account of the cluster may take the role.
    widened = trust("StringLike", "system:serviceaccount:*")
    assert decide_trust(widened, PROVIDER, WEB, ROLE, token(OTHER)) == "Allowed"
    assert decide_trust(widened, PROVIDER, WEB, ROLE, token()) == "Allowed"


def test_a_trust_policy_refuses_another_audience_a_missing_claim_and_other_principals() -> None:
    cluster = "https://kubernetes.default.svc.cluster.local"
    assert decide_trust(trust(), PROVIDER, WEB, ROLE, token(audience=cluster)) == "ImplicitlyDenied"
    assert decide_trust(trust(), PROVIDER, WEB, ROLE, {f"{ISSUER}:sub": OWN}) == "ImplicitlyDenied"
    assert decide_trust(trust(), PROVIDER, WEB, ROLE, {f"{ISSUER}:aud": "sts.amazonaws.com"}) == (
        "ImplicitlyDenied"
    )
    # The same issuer's provider in another account; a role of the account; plain AssumeRole.
    elsewhere = PROVIDER.replace("123456789012", "210987654321")
    assert decide_trust(trust(), elsewhere, WEB, ROLE, token()) == "ImplicitlyDenied"
    node = "arn:aws:iam::123456789012:role/dev-kube-compute"
    assert decide_trust(trust(), node, "sts:AssumeRole", ROLE) == "ImplicitlyDenied"
    assert decide_trust(trust(), PROVIDER, "sts:AssumeRole", ROLE) == "ImplicitlyDenied"


def test_a_service_principal_is_admitted_by_name() -> None:
    nodes = policy(
        {
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Principal": {"Service": "ec2.amazonaws.com"},
        }
    )
    assert decide_trust(nodes, "ec2.amazonaws.com", "sts:AssumeRole", ROLE) == "Allowed"
    assert decide_trust(nodes, "lambda.amazonaws.com", "sts:AssumeRole", ROLE) == "ImplicitlyDenied"


def test_a_claim_it_does_not_take_fails_the_test_rather_than_reading_as_denied() -> None:
    with pytest.raises(AssertionError, match="not evaluated"):
        decide_trust(trust(), PROVIDER, WEB, ROLE, {**token(), f"{ISSUER}:amr": "x"})
