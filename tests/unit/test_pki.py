"""The PKI: kubeadm's set, right usages and SANs, created once, renewed and rotated on demand."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeplat import config, pki, render

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
KUBEADM_FILES = [
    "ca", "apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-ca",
    "front-proxy-client", "etcd/ca", "etcd/server", "etcd/peer", "etcd/healthcheck-client",
    "admin", "controller-manager", "scheduler",
]  # fmt: skip


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


def cert(files: dict[str, bytes], name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files[f"{name}.crt"])


def test_full_set_with_kubeadm_names(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    for name in KUBEADM_FILES:
        assert f"{name}.crt" in files and f"{name}.key" in files, name
    for name in ("sa.key", "sa.pub", "ssh/id_ed25519", "ssh/id_ed25519.pub", "bootstrap-token"):
        assert name in files
    assert re.fullmatch(rb"[a-z0-9]{6}\.[a-z0-9]{16}", files["bootstrap-token"])
    assert files["ssh/id_ed25519.pub"].startswith(b"ssh-ed25519 ")
    assert b"OPENSSH PRIVATE KEY" in files["ssh/id_ed25519"]


def usages(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(c: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("apiserver", {SERVER}),
        ("apiserver-kubelet-client", {CLIENT}),
        ("apiserver-etcd-client", {CLIENT}),
        ("front-proxy-client", {CLIENT}),
        ("etcd/server", {SERVER, CLIENT}),
        ("etcd/peer", {SERVER, CLIENT}),
        ("etcd/healthcheck-client", {CLIENT}),
        ("admin", {CLIENT}),
        ("controller-manager", {CLIENT}),
        ("scheduler", {CLIENT}),
    ],
)
def test_usages(env: config.Environment, name: str, expected: set[x509.ObjectIdentifier]) -> None:
    c = cert(pki.ensure(env, {}).files, name)
    assert usages(c) == expected
    assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_cas_are_cas_for_ten_years(env: config.Environment) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    for name in ("ca", "front-proxy-ca", "etcd/ca"):
        c = cert(files, name)
        assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert c.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        assert (c.not_valid_after_utc - now).days == 3650
    assert (cert(files, "apiserver").not_valid_after_utc - now).days == 365


def test_apiserver_sans(env: config.Environment) -> None:
    dns, ips = sans(cert(pki.ensure(env, {}).files, "apiserver"))
    assert {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "kube.example.example.internal",
        "localhost",
    } <= dns
    assert ips == {"10.96.0.1", "127.0.0.1"}


def test_etcd_sans_cover_discovery_names(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    for name in ("etcd/server", "etcd/peer"):
        dns, ips = sans(cert(files, name))
        assert dns == {
            "*.eu-west-1.compute.internal",
            "secure.example.example.internal",
            "localhost",
        }
        assert ips == {"127.0.0.1"}


def test_subjects_and_issuers(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    admin = cert(files, "admin")
    assert (
        admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    )
    assert (
        cert(files, "controller-manager").subject.rfc4514_string()
        == "CN=system:kube-controller-manager"
    )
    assert cert(files, "apiserver-etcd-client").issuer == cert(files, "etcd/ca").subject
    assert cert(files, "front-proxy-client").issuer == cert(files, "front-proxy-ca").subject


def test_ecdsa_by_default_rsa_on_request(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    assert isinstance(cert(files, "apiserver").public_key(), ec.EllipticCurvePublicKey)
    rsa_env = config.Environment(**{**env.__dict__, "key_algorithm": "rsa-2048"})
    files = pki.ensure(rsa_env, {}).files
    key = cert(files, "apiserver").public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048


def test_second_run_issues_nothing(env: config.Environment) -> None:
    first = pki.ensure(env, {}).files
    second = pki.ensure(env, first)
    assert second.issued == []
    assert second.files == first


def test_rotate_one_leaf_changes_only_it(env: config.Environment) -> None:
    first = pki.ensure(env, {}).files
    rotated = pki.ensure(env, first, rotate="apiserver")
    assert rotated.issued == ["apiserver"]
    assert set(rotated.changed(first)) == {"apiserver.crt", "apiserver.key"}


def test_rotate_ca_reissues_every_certificate(env: config.Environment) -> None:
    first = pki.ensure(env, {}).files
    rotated = pki.ensure(env, first, rotate="ca")
    changed = rotated.changed(first)
    assert {f"{n}.crt" for n in KUBEADM_FILES} <= set(changed)
    # Not certificates: the service-account key, the SSH key and the bootstrap token stay.
    assert not {"sa.key", "ssh/id_ed25519", "bootstrap-token"} & set(changed)


def test_rotate_etcd_ca_reissues_only_its_tree(env: config.Environment) -> None:
    first = pki.ensure(env, {}).files
    rotated = pki.ensure(env, first, rotate="etcd/ca")
    assert set(rotated.issued) == {
        "etcd/ca", "etcd/server", "etcd/peer", "etcd/healthcheck-client", "apiserver-etcd-client",
    }  # fmt: skip


def test_unknown_rotate_name(env: config.Environment) -> None:
    with pytest.raises(pki.KubeplatError, match="no certificate named 'apiservr'"):
        pki.ensure(env, {}, rotate="apiservr")


def test_missing_leaf_is_regenerated_alone(env: config.Environment) -> None:
    first = pki.ensure(env, {}).files
    partial = {k: v for k, v in first.items() if k != "scheduler.key"}
    again = pki.ensure(env, partial)
    assert again.issued == ["scheduler"]
    assert again.files["ca.crt"] == first["ca.crt"]


def test_leaves_near_expiry_are_renewed(env: config.Environment) -> None:
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=340)
    old = pki.ensure(env, {}, now=then).files
    renewed = pki.ensure(env, old)
    assert set(renewed.issued) == set(KUBEADM_FILES) - {"ca", "front-proxy-ca", "etcd/ca"} | {
        "bootstrap-token"
    }
    assert set(renewed.reasons.values()) == {"expires in 24 days"}
    assert renewed.files["ca.crt"] == old["ca.crt"]


def test_the_renewal_window_is_the_environments(env: config.Environment) -> None:
    now = dt.datetime.now(dt.UTC)
    old = pki.ensure(env, {}, now=now - dt.timedelta(days=275)).files  # 90 days left
    assert dataclasses.replace(env, cert_renew_days=90).cert_renew_days == 90
    renewed = pki.ensure(dataclasses.replace(env, cert_renew_days=90), old, now=now)
    assert "apiserver" in renewed.issued
    kept = pki.ensure(dataclasses.replace(env, cert_renew_days=89), old, now=now)
    assert kept.issued == [] and kept.files == old


def test_a_changed_name_reissues_the_certificates_that_carry_it(
    env: config.Environment,
) -> None:
    old = pki.ensure(env, {}).files
    moved = pki.ensure(dataclasses.replace(env, dns_zone_name="other.example"), old)
    # The API server's name and etcd's client name are under the zone; nothing else is.
    assert sorted(moved.issued) == ["apiserver", "etcd/peer", "etcd/server"]
    assert set(moved.reasons.values()) == {"its names changed"}
    again = pki.ensure(dataclasses.replace(env, dns_zone_name="other.example"), moved.files)
    assert again.issued == []


@pytest.mark.parametrize("lost", ["ca.key", "ca.crt", "etcd/ca.key"])
def test_half_a_ca_is_an_error_never_a_new_ca(env: config.Environment, lost: str) -> None:
    files = pki.ensure(env, {}).files
    del files[lost]
    with pytest.raises(pki.PKIError, match=f"{re.escape(lost)} is missing") as info:
        pki.ensure(env, files)
    assert "--rotate" in info.value.hint


def test_lost_ca_with_leaves_is_an_error(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    del files["ca.crt"], files["ca.key"]
    with pytest.raises(
        pki.PKIError, match=re.escape("ca.crt and ca.key are missing but apiserver")
    ):
        pki.ensure(env, files)


def test_damaged_files_are_named(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    with pytest.raises(pki.PKIError, match=re.escape("admin.crt is not a PEM certificate")):
        pki.ensure(env, {**files, "admin.crt": b"garbage"})
    # A leaf whose halves do not match (a run stopped between writing them) is reissued.
    mended = pki.ensure(env, {**files, "admin.key": files["scheduler.key"]})
    assert mended.reasons == {"admin": "its key did not match its certificate"}
    other = pki.ensure(env, {}).files
    with pytest.raises(pki.PKIError, match=re.escape("admin.crt is not signed by ca.crt")):
        pki.ensure(env, {**files, "admin.crt": other["admin.crt"], "admin.key": other["admin.key"]})


def test_given_public_key_replaces_generated_pair(env: config.Environment) -> None:
    given = b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 operator@example\n"
    files = pki.ensure(env, {}, ssh_public_key=given).files
    assert files["ssh/id_ed25519.pub"] == given
    assert "ssh/id_ed25519" not in files


def test_private_files_are_known() -> None:
    for name in ("ca.key", "etcd/peer.key", "sa.key", "ssh/id_ed25519", "bootstrap-token"):
        assert pki.is_private(name)
    for name in ("ca.crt", "sa.pub", "ssh/id_ed25519.pub"):
        assert not pki.is_private(name)


def test_local_store_modes(env: config.Environment, tmp_path: Path) -> None:
    from kubeplat.pkistore import LocalStore

    store = LocalStore(tmp_path / "cache" / "pki")
    files = pki.ensure(env, {}).files
    store.save(files)
    assert store.load() == files
    for path in store.root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif pki.is_private(path.relative_to(store.root).as_posix()):
            assert mode == 0o600, path
        else:
            assert mode & 0o077 in (0o044, 0o000), path
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert not list(store.root.rglob(".*.tmp"))


def test_ip_sans_parse(env: config.Environment) -> None:
    _, ips = sans(cert(pki.ensure(env, {}).files, "apiserver"))
    for ip in ips:
        ipaddress.ip_address(ip)


def test_the_bootstrap_token_expires_and_is_renewed_or_rotated(env: config.Environment) -> None:
    now = dt.datetime.now(dt.UTC)
    first = pki.ensure(env, {}, now=now).files
    token = first["bootstrap-token"].decode()
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
    assert pki.token_expiry(first) == (now + dt.timedelta(days=365)).replace(microsecond=0)
    row = {r.name: r for r in pki.describe(first, now)}["bootstrap-token"]
    assert row.subject == f"token id {token[:6]}" and row.days_left in (364, 365)
    assert token[7:] not in repr(pki.describe(first, now)), "the secret part is never shown"
    # Kept while far from its end; replaced within cert_renew_days of it, or on request.
    assert pki.ensure(env, first, now=now + dt.timedelta(days=200)).issued == []
    late = pki.ensure(env, first, now=now + dt.timedelta(days=300))
    assert re.fullmatch(r"expires in 6[45] days", late.reasons["bootstrap-token"])
    assert late.files["bootstrap-token"] != first["bootstrap-token"]
    rotated = pki.ensure(env, first, now=now, rotate="bootstrap-token")
    assert rotated.issued == ["bootstrap-token"] and rotated.reasons["bootstrap-token"] == "rotated"
    # A PKI from before tokens expired: the token is kept and given a date.
    older = {k: v for k, v in first.items() if k != "bootstrap-token-expiration"}
    dated = pki.ensure(env, older, now=now)
    assert dated.issued == [] and dated.files["bootstrap-token"] == first["bootstrap-token"]
    assert pki.token_expiry(dated.files) is not None
    # Damaged: replaced, saying why.
    bad = pki.ensure(env, {**first, "bootstrap-token": b"not a token"}, now=now)
    assert bad.reasons["bootstrap-token"] == "it is not a bootstrap token"
    unreadable = pki.ensure(env, {**first, "bootstrap-token-expiration": b"soon"}, now=now)
    assert unreadable.reasons["bootstrap-token"] == "its expiry is unreadable"
    # Only the control plane gets the date (it gives it to the cluster); both get the token.
    placed = render.pki_layout(env, first)
    assert placed["secure/bootstrap-token-expiration"] == first["bootstrap-token-expiration"]
    assert "compute/bootstrap-token-expiration" not in placed
    assert placed["compute/bootstrap-token"] == first["bootstrap-token"]
