"""How kube-apiserver stores a Secret in etcd under an EncryptionConfiguration, and reads it
back: the tests' STAND-IN for the API server (it cannot run here), built on libsodium's
secretbox (PyNaCl), which is the XSalsa20-Poly1305 construction the API server's secretbox
provider uses (k8s.io/apiserver .../value/encrypt/secretbox: a random 24-byte nonce, then the
sealed box), behind its prefix `k8s:enc:secretbox:v1:<key name>:`.

Reading follows the API server: the providers in order, a value read by the first whose prefix
it carries (`identity` has none, but never reads a value that says it is encrypted)."""

from __future__ import annotations

import base64
from typing import Any

import yaml
from nacl.secret import SecretBox
from nacl.utils import random

PREFIX = b"k8s:enc:secretbox:v1:"
ENCRYPTED = b"k8s:enc:"


class Unreadable(Exception):
    """No provider of the configuration reads the stored value."""


def providers(config: bytes, resource: str = "secrets") -> list[dict[str, Any]]:
    """The providers the configuration gives `resource`, in order (none: stored as is)."""
    document = yaml.safe_load(config)
    assert document["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert document["kind"] == "EncryptionConfiguration"
    for entry in document["resources"]:
        if resource in entry["resources"]:
            return list(entry["providers"])
    return [{"identity": {}}]


def _box(key: dict[str, str]) -> SecretBox:
    secret = base64.b64decode(key["secret"], validate=True)
    assert len(secret) == 32, "a secretbox key is 32 bytes"
    return SecretBox(secret)


def store(config: bytes, plaintext: bytes) -> bytes:
    """What the API server writes to etcd: the first provider's transformation."""
    first = providers(config)[0]
    if "identity" in first:
        return plaintext
    key = first["secretbox"]["keys"][0]
    sealed = _box(key).encrypt(plaintext, random(SecretBox.NONCE_SIZE))
    return PREFIX + key["name"].encode() + b":" + bytes(sealed)


def load(config: bytes, stored: bytes) -> bytes:
    """What the API server reads from etcd, or Unreadable."""
    for provider in providers(config):
        if "identity" in provider:
            if not stored.startswith(ENCRYPTED):
                return stored
            continue
        for key in provider["secretbox"]["keys"]:
            prefix = PREFIX + key["name"].encode() + b":"
            if stored.startswith(prefix):
                return bytes(_box(key).decrypt(stored[len(prefix) :]))
    raise Unreadable(stored[:40])
