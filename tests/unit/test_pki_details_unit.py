"""The PKI's details a user or a node meets (kubeplat/pki.py) in the unit tier: the exact words
and hints of each damage kubeplat refuses to paper over, the halves of a rotation step a
stopped run left that the next run settles, the service-account key and the bootstrap token's
date a stored set is completed with, and the API servers' EncryptionConfiguration as written.

No stand-ins: every certificate and key is made by `pki` itself and read back with
`cryptography`, as the nodes' TLS stacks read them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from kubeplat import config, pki
from kubeplat.errors import KubeplatError

EXAMPLE = Path(__file__).resolve().parents[2] / "environments" / "example.tfvars"
ISSUED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


@functools.cache
def _made(index: int) -> dict[str, bytes]:
    return dict(pki.ensure(config.load_file(EXAMPLE), {}, now=ISSUED).files)


def full_set(index: int = 0) -> dict[str, bytes]:
    """A complete PKI of the example environment issued at ISSUED; `index` tells two apart
    (each made once per process: keys take time)."""
    return dict(_made(index))


def refused(call: Callable[..., object], *args: object, **kwargs: object) -> KubeplatError:
    with pytest.raises(KubeplatError) as raised:
        call(*args, **kwargs)
    return raised.value


def words(error: KubeplatError) -> tuple[str, str]:
    return error.message, error.hint


# -- a damaged CA: named, with what to do ------------------------------------------------------


def test_a_ca_key_that_is_no_key_is_named_with_the_rotation_that_replaces_it(
    env: config.Environment,
) -> None:
    files = full_set()
    files["etcd/ca.key"] = b"not a key\n"
    assert words(refused(pki.ensure, env, files, now=ISSUED)) == (
        "etcd/ca.key is not a PEM private key",
        "restore it, or reissue it: kubeplat certs --rotate etcd/ca",
    )


def test_a_ca_key_of_another_pair_is_refused_naming_the_pair(env: config.Environment) -> None:
    files = full_set()
    files["front-proxy-ca.key"] = full_set(1)["front-proxy-ca.key"]
    assert words(refused(pki.ensure, env, files, now=ISSUED)) == (
        "front-proxy-ca.key does not belong to front-proxy-ca.crt",
        "restore the pair: front-proxy-ca",
    )


def test_a_ca_is_expired_from_the_second_its_validity_ends(env: config.Environment) -> None:
    files = full_set()
    ends = x509.load_pem_x509_certificate(files["ca.crt"]).not_valid_after_utc
    assert ends == ISSUED + dt.timedelta(days=3650)
    assert words(refused(pki.ensure, env, files, now=ends)) == (
        "the CA ca expired on 2035-12-30",
        "start a new CA: kubeplat certs --rotate ca",
    )


def with_apiserver_of_another_set() -> dict[str, bytes]:
    """A set whose API server certificate and key are another set's (signed by its CA)."""
    files = full_set(1)
    for ext in ("crt", "key"):
        files[f"apiserver.{ext}"] = full_set()[f"apiserver.{ext}"]
    return files


def test_an_unreadable_old_ca_copy_is_named_when_a_leaf_needs_it(
    env: config.Environment,
) -> None:
    # A leaf the current CA did not sign is checked against the old CA's copy (`ca.prev.crt`).
    files = with_apiserver_of_another_set()
    files["ca.prev.crt"] = b"not a certificate\n"
    # A staged copy is restored, never reissued: `--rotate ca.prev` is no command kubeplat takes.
    assert words(refused(pki.ensure, env, files, now=ISSUED)) == (
        "ca.prev.crt is not a PEM certificate",
        "restore it: the secrets bucket keeps earlier versions of ENV/pki/…/ca.prev.crt",
    )


def test_an_old_ca_copy_with_a_key_kubeplat_never_makes_vouches_for_nothing(
    env: config.Environment,
) -> None:
    # An Ed25519 certificate named as the cluster CA is: no leaf counts as signed by it.
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    foreign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(ISSUED)
        .not_valid_after(ISSUED + dt.timedelta(days=3650))
        .sign(key, None)
    )
    files = with_apiserver_of_another_set()
    files["ca.prev.crt"] = foreign.public_bytes(serialization.Encoding.PEM)
    assert words(refused(pki.ensure, env, files, now=ISSUED)) == (
        "apiserver.crt is not signed by ca.crt",
        "reissue it: kubeplat certs --rotate apiserver",
    )


def test_kubeplat_certs_names_a_certificate_it_cannot_read() -> None:
    assert words(refused(pki.describe, {"etcd/ca.crt": b"not a certificate\n"})) == (
        "etcd/ca.crt is not a PEM certificate",
        "reissue it: kubeplat certs --rotate etcd/ca",
    )
    staged = {**full_set(), "etcd/ca.next.crt": b"not a certificate\n"}
    assert words(refused(pki.describe, staged)) == (
        "etcd/ca.next.crt is not a PEM certificate",
        "restore it: the secrets bucket keeps earlier versions of ENV/pki/…/etcd/ca.next.crt",
    )


# -- the service-account key ---------------------------------------------------------------------


def sa_public(files: dict[str, bytes]) -> bytes:
    return (
        serialization.load_pem_private_key(files["sa.key"], password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_a_missing_service_account_key_is_made_with_the_environments_algorithm(
    env: config.Environment,
) -> None:
    stored = {k: v for k, v in full_set().items() if k not in ("sa.key", "sa.pub")}
    files = pki.ensure(dataclasses.replace(env, key_algorithm="rsa-2048"), stored, now=ISSUED).files
    key = serialization.load_pem_private_key(files["sa.key"], password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert files["sa.pub"] == sa_public(files)


@pytest.mark.parametrize("prev", [False, True])
def test_a_service_account_key_that_is_no_key_is_named_with_its_rotation(
    env: config.Environment, prev: bool
) -> None:
    files = full_set()
    if prev:  # the old key's public half of a staged rotation: compared with the key first
        files["sa.prev.pub"] = full_set(1)["sa.pub"]
    files["sa.key"] = b"not a key\n"
    assert words(refused(pki.ensure, env, files, now=ISSUED)) == (
        "sa.key is not a PEM private key",
        "restore it, or reissue it: kubeplat certs --rotate sa",
    )


@pytest.mark.parametrize("missing", ["sa.key", "sa.pub"])
def test_rotating_a_service_account_key_with_a_half_missing_makes_a_new_pair(
    env: config.Environment, missing: str
) -> None:
    stored = {k: v for k, v in full_set().items() if k != missing}
    result = pki.ensure(env, stored, now=ISSUED, rotate="sa")
    assert result.reasons["sa"] == "rotated"
    assert result.files["sa.key"] != full_set()["sa.key"]
    assert result.files["sa.pub"] == sa_public(result.files)


def test_rotating_the_service_account_key_before_anything_exists(env: config.Environment) -> None:
    result = pki.ensure(env, {}, now=ISSUED, rotate="sa")
    assert result.reasons["sa"] == "rotated"
    assert result.files["sa.pub"] == sa_public(result.files)


def test_a_staged_service_account_key_that_is_no_key_says_where_its_versions_are() -> None:
    files = full_set()
    files["sa.next.key"] = b"not a key\n"
    assert words(refused(pki.trust_bundle, files, "sa")) == (
        "sa.next.key is not a PEM private key",
        "restore it (ENV/pki/locked/sa.next.key in the secrets bucket keeps its versions), "
        "or delete it there and stage the rotation again: kubeplat certs --rotate sa",
    )


# -- the halves a stopped rotation step left ---------------------------------------------------


def ssh_public(private: bytes) -> bytes:
    key = serialization.load_ssh_private_key(private, password=None)
    return (
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )


# (the leftover file, what it holds: the same as what the set already uses)
LEFTOVERS: list[tuple[str, Callable[[dict[str, bytes]], bytes]]] = [
    ("ca.prev.crt", lambda files: files["ca.crt"]),  # a promotion that had only begun
    (pki.SSH_NEXT, lambda files: files[pki.SSH_KEY]),  # promoted, `next` not yet removed
    (pki.SSH_PREV, lambda files: ssh_public(files[pki.SSH_KEY])),
    (pki.ENCRYPTION_PREV, lambda files: files[pki.ENCRYPTION_KEY]),
    ("sa.next.key", lambda files: files["sa.key"]),
    ("sa.prev.pub", sa_public),
]


@pytest.mark.parametrize(("leftover", "holds"), LEFTOVERS, ids=[n for n, _ in LEFTOVERS])
def test_a_leftover_copy_of_what_the_set_uses_ends_the_rotation_step(
    env: config.Environment, leftover: str, holds: Callable[[dict[str, bytes]], bytes]
) -> None:
    stored = full_set()
    stored[leftover] = holds(stored)
    settled = pki.settle(stored)
    assert settled == full_set()
    assert pki.staged(settled) == {}
    assert leftover not in pki.ensure(env, stored, now=ISSUED).files


def test_a_leftover_is_kept_while_it_differs_from_what_the_set_uses() -> None:
    stored = full_set()
    other = full_set(1)
    stored |= {
        "ca.prev.crt": other["ca.crt"],
        pki.SSH_PREV: ssh_public(other[pki.SSH_KEY]),
        pki.ENCRYPTION_PREV: other[pki.ENCRYPTION_KEY],
        "sa.prev.pub": other["sa.pub"],
    }
    assert pki.settle(stored) == stored


# -- the bootstrap token ------------------------------------------------------------------------


def test_a_token_made_before_tokens_expired_gets_a_date_a_year_ahead(
    env: config.Environment,
) -> None:
    stored = {k: v for k, v in full_set().items() if k != pki.TOKEN_EXPIRATION}
    now = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    result = pki.ensure(env, stored, now=now)
    assert result.files[pki.BOOTSTRAP_TOKEN] == stored[pki.BOOTSTRAP_TOKEN]
    assert result.files[pki.TOKEN_EXPIRATION] == b"2027-03-01T12:30:00Z\n"
    assert pki.BOOTSTRAP_TOKEN not in result.issued


# -- the API servers' EncryptionConfiguration ----------------------------------------------------

KEY = b"c2VjcmV0Ym94IGtleSBvZiB0aGlydHktdHdvIGJ5dGVzIQ==\n"
NEXT = b"YW5vdGhlciBzZWNyZXRib3gga2V5IG9mIDMyIGJ5dGVzIQ==\n"


def test_the_encryption_configuration_is_written_in_the_api_servers_order() -> None:
    files = {pki.ENCRYPTION_KEY: KEY, pki.ENCRYPTION_NEXT: NEXT}
    key, nxt = pki.encryption_key_name(KEY), pki.encryption_key_name(NEXT)
    # By default the current key encrypts: secretbox first, identity only reads what is plain.
    assert pki.encryption_config(files).decode() == (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        "- resources:\n"
        "  - secrets\n"
        "  providers:\n"
        "  - secretbox:\n"
        "      keys:\n"
        f"      - name: {key}\n"
        f"        secret: {KEY.strip().decode()}\n"
        f"      - name: {nxt}\n"
        f"        secret: {NEXT.strip().decode()}\n"
        "  - identity: {}\n"
    )


# -- trust bundles as the bucket holds them ------------------------------------------------------


def test_a_bundle_is_cut_after_its_first_end_line_even_when_that_is_its_first_line() -> None:
    end = b"-----END CERTIFICATE-----"
    ca = full_set()["ca.crt"]
    assert pki.first_certificate(ca + full_set(1)["ca.crt"]) == ca
    assert pki.first_certificate(end + b"\n" + ca) == end + b"\n"
    assert pki.first_certificate(b"no block\n") == b"no block\n"
