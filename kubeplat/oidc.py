"""Pod roles without the node's role (IRSA): the API server as an OpenID Connect issuer.

The API servers sign service-account tokens with `sa.key` and name as issuer an HTTPS URL in a
bucket dedicated to it (`oidc_bucket_name`, by default `<secrets_bucket_name>-oidc`):
`https://BUCKET.s3.REGION.amazonaws.com/ENV`. kubeplat publishes there the two documents AWS
STS reads to check such a token — the discovery document and the JWKS with the public keys the
API servers accept (during a rotation of the service-account key, both) — readable by anyone,
and nothing else in that bucket is. Terraform registers the issuer as the account's IAM OpenID
Connect provider (audience `sts.amazonaws.com`), which a role's trust policy names.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kubeplat.aws import Aws
    from kubeplat.config import Environment

DISCOVERY = ".well-known/openid-configuration"
JWKS = "keys.json"
AUDIENCE = "sts.amazonaws.com"
# What every service-account token of the cluster was issued by, and addressed to, before the
# issuer moved to the bucket: still accepted, so tokens already handed out keep working.
CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"


def bucket(env: Environment) -> str:
    """The bucket the issuer's documents are published in."""
    return env.oidc_bucket_name or f"{env.secrets_bucket_name}-oidc"


def issuer(env: Environment) -> str:
    """The issuer URL the API servers write into tokens ("" when pod identity is off)."""
    if not env.pod_identity:
        return ""
    return f"https://{bucket(env)}.s3.{env.aws_region}.amazonaws.com/{env.environment}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(public_key: Any) -> str:
    """The `kid` the API server puts in a token's header: base64url (no padding) of the
    SHA-256 of the key's DER SubjectPublicKeyInfo (kube-apiserver's keyIDFromPublicKey)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64url(hashlib.sha256(der).digest())


def _int(value: int, size: int | None = None) -> str:
    length = size if size is not None else (value.bit_length() + 7) // 8
    return _b64url(value.to_bytes(length, "big"))


_CURVES = {"secp256r1": ("P-256", "ES256", 32), "secp384r1": ("P-384", "ES384", 48)}


def jwk(public_key: Any) -> dict[str, str]:
    """One public key as a JSON Web Key, as the API server's own /openid/v1/jwks gives it."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {
            "use": "sig",
            "kty": "RSA",
            "kid": key_id(public_key),
            "alg": "RS256",
            "n": _int(numbers.n),
            "e": _int(numbers.e),
        }
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _CURVES:
        curve, alg, size = _CURVES[public_key.curve.name]
        point = public_key.public_numbers()
        return {
            "use": "sig",
            "kty": "EC",
            "kid": key_id(public_key),
            "crv": curve,
            "alg": alg,
            "x": _int(point.x, size),
            "y": _int(point.y, size),
        }
    raise ValueError(f"a service-account key of type {type(public_key).__name__}")


def documents(env: Environment, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The discovery document and the JWKS, by their names under the environment's prefix."""
    from cryptography.hazmat.primitives import serialization

    from kubeplat import pki

    bundle = pki.trust_bundle(files, "sa")
    keys = []
    for block in bundle.split(b"-----END PUBLIC KEY-----")[:-1]:
        pem = block.strip() + b"\n-----END PUBLIC KEY-----\n"
        keys.append(jwk(serialization.load_pem_public_key(pem)))
    url = issuer(env)
    discovery = {
        "issuer": url,
        "jwks_uri": f"{url}/{JWKS}",
        "authorization_endpoint": "urn:kubernetes:programmatic_authorization",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": sorted({k["alg"] for k in keys}),
        "claims_supported": ["sub", "iss"],
    }
    return {
        DISCOVERY: _json(discovery),
        JWKS: _json({"keys": keys}),
    }


def _json(document: Any) -> bytes:
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def public_policy(name: str, region: str, *, tls_only: bool = True) -> dict[str, Any]:
    """The bucket's policy: anyone may read the issuer documents of any environment, nothing
    else; with `tls_only`, no request without TLS (not where kubeplat itself is told to use
    plain HTTP: the sandbox's emulator)."""
    from kubeplat import state

    arn = f"arn:{state.partition(region)}:s3:::{name}"
    statements = [
        {
            "Sid": "KubeplatIssuerDocuments",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": [f"{arn}/*/{DISCOVERY}", f"{arn}/*/{JWKS}"],
        }
    ]
    if tls_only:
        statements += state.tls_only(name, region)["Statement"]
    return {"Version": "2012-10-17", "Statement": statements}


def publish(aws: Aws, env: Environment, files: Mapping[str, bytes]) -> list[str]:
    """Create the issuer's bucket when missing and write the documents that differ; the names
    written. Nothing when pod identity is off."""
    if not env.pod_identity:
        return []
    from botocore.exceptions import ClientError

    from kubeplat.aws import errors

    name = bucket(env)
    s3 = aws.client("s3")
    wanted = documents(env, files)
    written = []
    with errors(f"publishing the service-account issuer in the bucket {name}", aws):
        for document, body in wanted.items():
            key = f"{env.environment}/{document}"
            try:
                if s3.get_object(Bucket=name, Key=key)["Body"].read() == body:
                    continue
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code == "NoSuchBucket":
                    _create(aws, env, name)
                elif code not in ("NoSuchKey", "404"):
                    raise
            s3.put_object(
                Bucket=name,
                Key=key,
                Body=body,
                ContentType="application/json",
                ServerSideEncryption="AES256",
            )
            written.append(f"s3://{name}/{key}")
    return written


def _create(aws: Aws, env: Environment, name: str) -> None:
    """The issuer's bucket: owner-enforced (no ACLs), public ACLs blocked, a policy that makes
    only the issuer documents public, SSE-S3 (anyone must be able to read them: not SSE-KMS)."""
    from botocore.exceptions import ClientError

    from kubeplat import console, state

    s3 = aws.client("s3")
    state.create_bucket(aws, name)
    s3.put_bucket_ownership_controls(
        Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    )
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    try:
        plain = (aws.endpoint or "").startswith("http://")
        policy = public_policy(name, aws.region, tls_only=not plain)
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException"):
            from kubeplat.errors import KubeplatError

            raise KubeplatError(
                f"the bucket {name} cannot be given its public policy: the caller may not "
                "(s3:PutBucketPolicy) or the account blocks public bucket policies (S3 Block "
                "Public Access)",
                "allow both for this bucket only, or set pod_identity = false",
            ) from None
        raise
    console.status(
        f"created bucket {name} (the service-account issuer: only its two documents are public)",
        "ok",
    )
