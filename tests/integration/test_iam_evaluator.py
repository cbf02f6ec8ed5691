"""The IAM evaluator the policy tests use (tests/iam_evaluator.py: @cloud-copilot/iam-simulate,
in node), checked on the cases AWS documents, for the operators and shapes our policies use: a
test that trusts an evaluator should know it tells an exact match from a wildcard, a missing
key from a present one, and lets a Deny win."""

from __future__ import annotations

from typing import Any

import pytest

from tests.iam_evaluator import decide

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
