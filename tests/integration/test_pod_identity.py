"""Pod roles (IRSA): the service-account issuer's documents published in a bucket of their own
(moto's S3), whose keys verify the tokens the cluster's service-account key signs, through a
rotation of that key; only those documents public; a bad bucket name refused before anything
runs. `up` creating the IAM OpenID Connect provider is in test_main_job."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import boto3
import jwt
import pytest

from kubeplat import config, oidc, pki, render
from kubeplat.aws import Aws
from kubeplat.errors import KubeplatError
from tests.conftest import enforce_iam
from tests.integration import irsa

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
SUBJECT = "system:serviceaccount:kube-system:ebs-csi-controller-sa"


@pytest.fixture
def world(aws: str, environments: Path) -> tuple[config.Environment, Aws]:
    env = config.load("example")
    # Each test its own bucket: the emulator is shared by the session.
    env = dataclasses.replace(env, oidc_bucket_name=f"oidc-{id(env):x}")
    return env, Aws(boto3.Session(), "eu-west-1", aws)


def published(session: Aws, env: config.Environment) -> tuple[bytes, bytes]:
    s3 = session.client("s3")
    prefix = f"{env.environment}/"
    get = s3.get_object
    discovery = get(Bucket=oidc.bucket(env), Key=prefix + oidc.DISCOVERY)
    jwks = get(Bucket=oidc.bucket(env), Key=prefix + oidc.JWKS)
    assert discovery["ContentType"] == jwks["ContentType"] == "application/json"
    return discovery["Body"].read(), jwks["Body"].read()


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa-2048"])
def test_the_published_keys_verify_a_token_the_service_account_key_signs(
    world: tuple[config.Environment, Aws], algorithm: str
) -> None:
    env, session = world
    env = dataclasses.replace(env, key_algorithm=algorithm)
    files = pki.ensure(env, {}, now=NOW).files
    written = oidc.publish(session, env, files)
    assert len(written) == 2
    assert oidc.publish(session, env, files) == []  # unchanged: nothing written again
    discovery, jwks = published(session, env)
    issuer = oidc.issuer(env)
    assert issuer == f"https://{env.oidc_bucket_name}.s3.eu-west-1.amazonaws.com/example"
    assert json.loads(discovery)["issuer"] == issuer
    assert json.loads(discovery)["jwks_uri"] == issuer + "/keys.json"
    claims = irsa.verify(irsa.sign(files, issuer, SUBJECT), discovery, jwks)
    assert claims["sub"] == SUBJECT
    # A token of another key (another cluster), or naming another issuer, is refused.
    other = pki.ensure(env, {}, now=NOW).files
    with pytest.raises(jwt.InvalidTokenError):
        irsa.verify(irsa.sign(other, issuer, SUBJECT), discovery, jwks)
    with pytest.raises(jwt.InvalidTokenError):
        irsa.verify(irsa.sign(files, issuer + "x", SUBJECT), discovery, jwks)
    # The API servers name that issuer, and still accept the tokens issued before it.
    layer = render.layers(env)[0]
    manifest = render.manifests(env, layer)["manifests/secure/kube-apiserver.yaml"].decode()
    assert f"--service-account-issuer={issuer}\n" in manifest
    assert "--service-account-issuer=https://kubernetes.default.svc.cluster.local\n" in manifest
    assert manifest.index(issuer) < manifest.index("kubernetes.default.svc.cluster.local")
    assert f"--service-account-jwks-uri={issuer}/keys.json" in manifest


def test_a_service_account_key_rotation_reaches_the_published_keys_at_each_step(
    world: tuple[config.Environment, Aws],
) -> None:
    env, session = world
    before = pki.ensure(env, {}, now=NOW).files
    oidc.publish(session, env, before)
    old_token = irsa.sign(before, oidc.issuer(env), SUBJECT)
    begun = pki.begin(env, before, ["sa"], NOW).files
    # The new key beside the old: the keys change, the discovery document does not.
    keys = f"s3://{oidc.bucket(env)}/{env.environment}/keys.json"
    assert oidc.publish(session, env, begun) == [keys]
    signing = pki.advance(env, begun, NOW).files  # the new key signs, the old still accepted
    oidc.publish(session, env, signing)
    discovery, jwks = published(session, env)
    assert len(json.loads(jwks)["keys"]) == 2
    new_token = irsa.sign(signing, oidc.issuer(env), SUBJECT)
    for token in (old_token, new_token):
        assert irsa.verify(token, discovery, jwks)["sub"] == SUBJECT
    done = pki.advance(env, signing, NOW).files
    oidc.publish(session, env, done)
    discovery, jwks = published(session, env)
    assert irsa.verify(new_token, discovery, jwks)["sub"] == SUBJECT
    with pytest.raises(jwt.InvalidTokenError):
        irsa.verify(old_token, discovery, jwks)


def test_only_the_two_documents_are_public(world: tuple[config.Environment, Aws]) -> None:
    env, session = world
    oidc.publish(session, env, pki.ensure(env, {}, now=NOW).files)
    s3 = session.client("s3")
    name = oidc.bucket(env)
    block = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    assert block["BlockPublicAcls"] and block["IgnorePublicAcls"]
    controls = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]
    assert controls["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    policy = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])
    public = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert public == [
        {
            "Sid": "KubeplatIssuerDocuments",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": [
                f"arn:aws:s3:::{name}/*/.well-known/openid-configuration",
                f"arn:aws:s3:::{name}/*/keys.json",
            ],
        }
    ]
    # Not SSE-KMS: anyone must be able to read them.
    head = s3.head_object(Bucket=name, Key=f"{env.environment}/keys.json")
    assert head["ServerSideEncryption"] == "AES256"
    # On AWS (not the plain-HTTP emulator) requests without TLS are refused too.
    assert [s["Sid"] for s in oidc.public_policy(name, "eu-west-1")["Statement"]] == [
        "KubeplatIssuerDocuments",
        "KubeplatTLSOnly",
    ]


def test_off_publishes_nothing_and_keeps_the_in_cluster_issuer(
    world: tuple[config.Environment, Aws],
) -> None:
    env, session = world
    off = dataclasses.replace(env, pod_identity=False)
    assert oidc.publish(session, off, pki.ensure(off, {}, now=NOW).files) == []
    assert oidc.issuer(off) == ""
    layer = render.layers(off)[0]
    manifest = render.manifests(off, layer)["manifests/secure/kube-apiserver.yaml"].decode()
    assert "--service-account-issuer=https://kubernetes.default.svc.cluster.local" in manifest
    assert "--service-account-jwks-uri" not in manifest


def test_a_bucket_that_may_not_be_made_public_is_one_line_with_the_way_out(
    enforcing: str, environments: Path
) -> None:
    """The emulator does not apply S3 Block Public Access; a caller denied the policy gets the
    same refusal from AWS (AccessDenied), and the same message."""
    env = config.load("example")
    allowed = [
        "s3:CreateBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "s3:PutBucketOwnershipControls",
        "s3:PutBucketPublicAccessBlock",
        "s3:PutEncryptionConfiguration",
        # moto (5.2.6) authorizes these by their API names rather than AWS's IAM action names:
        "s3:PutPublicAccessBlock",
        "s3:PutBucketEncryption",
        "s3:ListObjectsV2",
    ]
    keys = enforce_iam(enforcing, "ci", allowed)
    caller = Aws(
        boto3.Session(aws_access_key_id=keys["id"], aws_secret_access_key=keys["secret"]),
        "eu-west-1",
        enforcing,
    )
    with pytest.raises(KubeplatError) as info:
        oidc.publish(caller, env, pki.ensure(env, {}, now=NOW).files)
    message = str(info.value)
    assert message.startswith("the bucket kubeplat-example-secrets-oidc cannot be given its public")
    assert "\n" not in message
    assert "pod_identity = false" in (info.value.hint or "")
    # Nothing was published in a bucket that is not what kubeplat says it is.
    s3 = caller.client("s3")
    listed = s3.list_objects_v2(Bucket="kubeplat-example-secrets-oidc")
    assert listed.get("KeyCount", 0) == 0
