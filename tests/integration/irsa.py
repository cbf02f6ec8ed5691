"""A service-account token as the API server signs one, checked as an OpenID Connect relying
party (AWS STS) checks it: against the issuer's published discovery document and JWKS.

The token is signed here with the cluster's own service-account key (a STAND-IN for the API
server, which cannot run here); the check uses PyJWT with the published keys only."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from kubeplat import oidc, pki


def sign(files: Mapping[str, bytes], issuer: str, subject: str, *, key: str = pki.SA_KEY) -> str:
    """A projected service-account token for STS, as kube-apiserver issues it."""
    private = serialization.load_pem_private_key(files[key], password=None)
    algorithm = "RS256" if "RSA" in type(private).__name__ else "ES256"
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": [oidc.AUDIENCE],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    headers = {"kid": oidc.key_id(private.public_key())}
    return jwt.encode(claims, private, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]


def verify(token: str, discovery: bytes, jwks: bytes) -> dict[str, Any]:
    """The token's claims, if a key of the JWKS (by `kid`) verifies it for STS's audience and
    the discovery document's issuer; jwt.InvalidTokenError otherwise."""
    config = json.loads(discovery)
    header = jwt.get_unverified_header(token)
    assert header["alg"] in config["id_token_signing_alg_values_supported"]
    keys = {k["kid"]: k for k in json.loads(jwks)["keys"]}
    if header.get("kid") not in keys:
        raise jwt.InvalidTokenError(f"no published key {header.get('kid')}")
    key = jwt.PyJWK(keys[header["kid"]])
    return dict(
        jwt.decode(
            token,
            key.key,
            algorithms=[keys[header["kid"]]["alg"]],
            audience=oidc.AUDIENCE,
            issuer=config["issuer"],
        )
    )
