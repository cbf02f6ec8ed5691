"""The IAM evaluator the policy tests use (tests/iam_evaluator.py: @cloud-copilot/iam-simulate,
in node), checked on the cases AWS documents, for the operators and shapes our policies use: a
test that trusts an evaluator should know it tells an exact match from a wildcard, a missing
key from a present one, and lets a Deny win; for a role's trust policy as well (who may assume
a pod's role)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import iam_evaluator, iam_mutants
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


# The policy mutation run (tests/iam_mutants.py), on a small policy of our shapes.
SMALL = policy(
    {
        "Sid": "Read",
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": [f"{BUCKET}/dev/pki/common/*", f"{BUCKET}/dev/pki/compute/*"],
    },
    {**LIST_ROLLS, "Sid": "Rolls"},
)


def strong_check(policies: dict[str, Any]) -> None:
    p = policies["p"]
    assert decide(p, "s3:GetObject", f"{BUCKET}/dev/pki/common/ca.crt") == "Allowed"
    assert decide(p, "s3:GetObject", f"{BUCKET}/dev/pki/compute/token") == "Allowed"
    for refused in (
        "dev/pki/secure/x",
        "prod/pki/common/ca.crt",
        "prod/pki/compute/t",
        "dev/pki/x",
    ):
        assert decide(p, "s3:GetObject", f"{BUCKET}/{refused}") != "Allowed", refused
    assert decide(p, "s3:GetObject", f"{BUCKET}-copy/dev/pki/common/ca.crt") != "Allowed"
    assert decide(p, "s3:PutObject", f"{BUCKET}/dev/pki/common/ca.crt") != "Allowed"
    assert decide(p, "s3:ListBucket", BUCKET, {"s3:prefix": "dev/rolls/"}) == "Allowed"
    for prefix in ("dev/rolls/x", "prod/rolls/", "dev/rolls/*"):
        assert decide(p, "s3:ListBucket", BUCKET, {"s3:prefix": prefix}) != "Allowed", prefix
    assert decide(p, "s3:ListBucket", BUCKET) != "Allowed"
    assert decide(p, "s3:ListBucket", f"{BUCKET}-copy", {"s3:prefix": "dev/rolls/"}) != "Allowed"
    assert decide(p, "s3:ListBucketVersions", BUCKET, {"s3:prefix": "dev/rolls/"}) != "Allowed"
    assert decide(p, "s3:GetObject", f"{BUCKET}/dev/rolls/x") != "Allowed"


def test_the_mutants_of_a_policy_are_the_changes_a_careless_edit_makes() -> None:
    made = dict(iam_mutants.mutants(SMALL, "dev"))
    assert "Read: dropped" in made and made["Read: dropped"]["Statement"] == [SMALL["Statement"][1]]
    assert made["Rolls: Effect Deny"]["Statement"][1]["Effect"] == "Deny"
    assert made["Read: + s3:*"]["Statement"][0]["Action"] == ["s3:GetObject", "s3:*"]
    widened = made[f"Read: {BUCKET}/dev/pki/common/* → {BUCKET}/*/pki/common/*"]
    assert widened["Statement"][0]["Resource"][0] == f"{BUCKET}/*/pki/common/*"
    assert f"Read: {BUCKET}/dev/pki/common/* → {BUCKET}/dev/*" in made
    assert f"Read: without {BUCKET}/dev/pki/compute/*" in made
    assert made["Rolls: without StringEquals s3:prefix"]["Statement"][1].get("Condition") is None
    loosened = made["Rolls: s3:prefix dev/rolls/ → StringLike dev/rolls/*"]["Statement"][1]
    assert loosened["Condition"] == {"StringLike": {"s3:prefix": ["dev/rolls/*"]}}
    assert (
        "StringEqualsIfExists"
        in made["Rolls: StringEqualsIfExists s3:prefix"]["Statement"][1]["Condition"]
    )
    assert (
        "StringNotEquals" in made["Rolls: StringNotEquals s3:prefix"]["Statement"][1]["Condition"]
    )
    assert SMALL["Statement"][0]["Resource"][0] == f"{BUCKET}/dev/pki/common/*"  # not changed


def test_a_check_that_asks_too_little_leaves_survivors_and_a_full_one_none() -> None:
    """The mutation run's answer for each mutant is the evaluator's: what a short-cut answered
    (a request no changed statement's action matches) is asked of the evaluator again here."""
    caught = iam_mutants.judge({"p": SMALL}, strong_check, "dev")
    assert len(caught) > 20 and all(caught.values()), [m for m, k in caught.items() if not k]

    def weak_check(policies: dict[str, Any]) -> None:
        p = policies["p"]
        assert decide(p, "s3:GetObject", f"{BUCKET}/dev/pki/common/ca.crt") == "Allowed"

    weak = iam_mutants.judge({"p": SMALL}, weak_check, "dev")
    assert weak["p: Read: dropped"] is True
    assert weak["p: Rolls: dropped"] is False
    assert weak[f"p: Read: {BUCKET}/dev/pki/common/* → *"] is False
    # Every answer the run gave a mutant's request, short-cut or not, is the evaluator's.
    with iam_evaluator.recording() as asked:
        strong_check({"p": SMALL})
    for change, mutant in iam_mutants.mutants(SMALL, "dev"):
        for real in asked:
            assert iam_mutants._added(real, SMALL, trust=False) == []
            request = {**real, "identity": iam_evaluator.given_to_the_library(mutant, "", False)}
            given = iam_evaluator._answers[iam_evaluator._key(request)]["result"]
            fresh = iam_evaluator._send(request)["result"]
            assert given == fresh, (change, request["action"], request["resource"])


def test_many_requests_are_answered_in_one_exchange_as_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = [
        ("s3:GetObject", f"{BUCKET}/dev/pki/{name}", {})
        for name in ("common/ca.crt", "secure/x", "compute/y")
    ] + [("s3:ListBucket", BUCKET, {"s3:prefix": p}) for p in ("dev/rolls/", "dev/")]

    def variant(sid: str) -> dict[str, Any]:  # the same policy, never asked before
        return policy({**SMALL["Statement"][0], "Sid": sid, "Effect": "Deny"}, LIST_ROLLS)

    one_by_one = [decide(variant("one"), *r) for r in requests]
    denied, refused = "ExplicitlyDenied", "ImplicitlyDenied"
    assert one_by_one == [denied, refused, denied, "Allowed", refused]
    exchanges: list[object] = []
    send = iam_evaluator._send
    monkeypatch.setattr(iam_evaluator, "_send", lambda x: exchanges.append(x) or send(x))
    batched = variant("batch")
    iam_evaluator.prefetch([iam_evaluator.request(batched, *r) for r in requests])
    assert [decide(batched, *r) for r in requests] == one_by_one
    assert len(exchanges) == 1 and isinstance(exchanges[0], list) and len(exchanges[0]) == 5
