"""What kubeplat's PKI checks notice in a stored PKI, and what they tell the user: a leaf another
CA signed, a damaged or foreign key, the exact edge of the renewal window, a rotation a stopped
run left a step behind, the rows of `kubeplat certs`. (The mutation run, bench/mutation.py,
found these unchecked: each test here fails when the check it names is weakened.)"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kubeplat import config, pki


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


def raised(call: object, *args: object, **kwargs: object) -> pki.KubeplatError:
    with pytest.raises(pki.KubeplatError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


def test_a_leaf_another_ca_signed_is_refused_and_the_reissue_named(
    env: config.Environment,
) -> None:
    """A leaf whose issuer is another of the cluster's CAs (a file copied to the wrong name)
    is refused before its signature is even checked, for ECDSA and RSA PKIs alike; the hint
    is the command that reissues it."""
    for algorithm in ("ecdsa-p256", "rsa-2048"):
        files = pki.ensure(dataclasses.replace(env, key_algorithm=algorithm), {}).files
        wrong = {
            **files,
            "admin.crt": files["etcd/server.crt"],
            "admin.key": files["etcd/server.key"],
        }
        error = raised(pki.ensure, env, wrong)
        assert (error.message, error.hint) == (
            "admin.crt is not signed by ca.crt",
            "reissue it: kubeplat certs --rotate admin",
        ), algorithm


def test_an_rsa_pki_is_checked_as_strictly_as_an_ecdsa_one(env: config.Environment) -> None:
    """With RSA keys a second run verifies every leaf's signature and issues nothing, and a
    leaf of the same name from another RSA PKI (same issuer name, another key) is refused."""
    rsa = dataclasses.replace(env, key_algorithm="rsa-2048")
    files = pki.ensure(rsa, {}).files
    again = pki.ensure(rsa, files)
    assert again.issued == [] and again.files == files
    other = pki.ensure(rsa, {}).files
    foreign = {
        **files,
        "scheduler.crt": other["scheduler.crt"],
        "scheduler.key": other["scheduler.key"],
    }
    assert raised(pki.ensure, rsa, foreign).message == "scheduler.crt is not signed by ca.crt"


def test_a_leaf_is_renewed_from_the_first_second_of_its_window(env: config.Environment) -> None:
    """`cert_renew_days` days before a leaf expires it is renewed, to the second; a second
    earlier it is kept (no node rolls for nothing)."""
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    files = pki.ensure(env, {}, now=issued).files
    expires = x509.load_pem_x509_certificate(files["apiserver.crt"]).not_valid_after_utc
    edge = expires - dt.timedelta(days=env.cert_renew_days)
    kept = pki.ensure(env, files, now=edge - dt.timedelta(seconds=1))
    assert "apiserver" not in kept.issued
    renewed = pki.ensure(env, files, now=edge)
    assert renewed.reasons["apiserver"] == f"expires in {env.cert_renew_days} days"


def test_an_expired_leaf_says_zero_days_and_a_missing_one_says_missing(
    env: config.Environment,
) -> None:
    files = pki.ensure(env, {}, now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)).files
    later = pki.ensure(env, files, now=dt.datetime(2021, 6, 1, tzinfo=dt.UTC))
    assert later.reasons["scheduler"] == "expires in 0 days"  # expired: never a negative count
    partial = {k: v for k, v in files.items() if k != "admin.crt"}
    assert pki.ensure(env, partial, now=dt.datetime(2020, 1, 2, tzinfo=dt.UTC)).reasons == {
        "admin": "missing"
    }


def test_damaged_and_foreign_keys_are_named_with_what_to_do(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    error = raised(pki.ensure, env, {**files, "etcd/peer.key": b"not a key"})
    assert (error.message, error.hint) == (
        "etcd/peer.key is not a PEM private key",
        "restore it, or reissue it: kubeplat certs --rotate etcd/peer",
    )
    edwards = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    error = raised(pki.ensure, env, {**files, "admin.key": edwards})
    assert (error.message, error.hint) == ("admin.key is neither ECDSA nor RSA", "reissue it")
    error = raised(pki.ensure, env, {**files, "admin.crt": b"garbage"})
    assert (error.message, error.hint) == (
        "admin.crt is not a PEM certificate",
        "reissue it: kubeplat certs --rotate admin",
    )


def test_an_environment_that_brings_its_ssh_key_has_none_to_rotate(
    env: config.Environment,
) -> None:
    given = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx operator@example\n"
    files = pki.ensure(env, {}, ssh_public_key=given).files
    now = dt.datetime.now(dt.UTC)
    for error in (
        raised(pki.ensure, env, files, rotate="ssh", ssh_public_key=given),
        raised(pki.begin, env, files, ["ssh"], now),
    ):
        assert (error.message, error.hint) == (
            "this environment brings its own SSH key (ssh_public_key): kubeplat holds no "
            "private key to rotate",
            "put the new public key in the file ssh_public_key names; kubeplat up installs it "
            "on every node",
        )


def test_a_rotation_left_a_step_behind_catches_up_first(env: config.Environment) -> None:
    """A stopped run can leave one rotation at `trust` while another is at `reissue`: the next
    step moves the one behind (whatever order the CAs come in) and leaves the other alone."""
    now = dt.datetime.now(dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    ahead = pki.advance(env, pki.begin(env, files, ["ca"], now).files, now).files
    assert pki.staged(ahead) == {"ca": pki.REISSUE}
    both = pki.begin(env, {k: v for k, v in ahead.items() if k != "ca.prev.crt"}, ["etcd/ca"], now)
    mixed = {**both.files, "ca.prev.crt": ahead["ca.prev.crt"]}
    assert pki.staged(mixed) == {"ca": pki.REISSUE, "etcd/ca": pki.TRUST}
    stepped = pki.advance(env, mixed, now).files
    assert pki.staged(stepped) == {"ca": pki.REISSUE, "etcd/ca": pki.REISSUE}
    assert stepped["etcd/ca.crt"] == mixed["etcd/ca.next.crt"]
    assert stepped["ca.prev.crt"] == mixed["ca.prev.crt"]


def test_a_rotation_step_issues_at_the_time_it_is_given(env: config.Environment) -> None:
    """`advance` issues the leaves the new CA signs at the clock it is given (a run's one
    clock, as the certificates-over-time tests inject it), not the machine's."""
    then = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    files = pki.ensure(env, {}, now=then).files
    stepped = pki.advance(env, pki.begin(env, files, ["front-proxy-ca"], then).files, then).files
    leaf = x509.load_pem_x509_certificate(stepped["front-proxy-client.crt"])
    assert leaf.not_valid_before_utc == then - dt.timedelta(minutes=5)


def test_the_bootstrap_token_row_of_kubeplat_certs(env: config.Environment) -> None:
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    token_id = files[pki.BOOTSTRAP_TOKEN].decode().split(".")[0]
    row = pki.describe(files, now)[-1]
    assert (row.name, row.subject, row.issuer, row.fingerprint) == (
        pki.BOOTSTRAP_TOKEN,
        f"token id {token_id}",
        "-",
        "",
    )
    assert row.days_left == (row.expires - now).days > 0
    # A token whose expiry was never recorded (a PKI from before it was) has no row.
    unstamped = {k: v for k, v in files.items() if k != pki.TOKEN_EXPIRATION}
    assert [r.name for r in pki.describe(unstamped, now)][-1] != pki.BOOTSTRAP_TOKEN


def test_the_first_certificate_of_a_bundle(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    bundle = files["ca.crt"] + files["etcd/ca.crt"]
    assert pki.first_certificate(bundle) == files["ca.crt"]
    assert pki.first_certificate(b"no certificate here") == b"no certificate here"


def test_a_staged_rotation_begins_saying_what_it_issued_and_why(env: config.Environment) -> None:
    """`kubeplat certs rotation` prints what the first step issued and why; a second rotation
    while one is staged is refused, naming each one and its step."""
    now = dt.datetime.now(dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    began = pki.begin(env, files, ["ssh", "encryption", "sa", "etcd/ca"], now)
    assert began.issued == ["ssh.next", "encryption.next", "sa.next", "etcd/ca.next"]
    assert began.reasons == {
        "ssh.next": "new, authorized beside the old one",
        "encryption.next": "new, decrypts beside the old one",
        "sa.next": "new, trusted beside the old one",
        "etcd/ca.next": "new, trusted beside the old one",
    }
    error = raised(pki.begin, env, began.files, ["ca"], now)
    assert (error.message, error.hint) == (
        "a rotation is already in progress: encryption (trust), etcd/ca (trust), sa (trust), "
        "ssh (trust)",
        "finish it first: kubeplat certs rotation -e ENV",
    )


def test_a_new_service_account_key_has_the_environments_algorithm(env: config.Environment) -> None:
    rsa_env = dataclasses.replace(env, key_algorithm="rsa-2048")
    now = dt.datetime.now(dt.UTC)
    began = pki.begin(rsa_env, pki.ensure(rsa_env, {}, now=now).files, ["sa"], now)
    key = serialization.load_pem_private_key(began.files["sa.next.key"], password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_an_encryption_keys_name_never_changes() -> None:
    """The API server writes a key's name into every Secret it encrypts and finds the key to
    decrypt one by that name: a kubeplat that named the same key otherwise would leave a
    cluster unable to read its Secrets after an upgrade. (sha256 of "secret" begins 2bb80d53.)"""
    assert pki.encryption_key_name(b"secret\n") == "key-2bb80d537b1da3e3"
    assert pki.encryption_key_name(b"  secret") == pki.encryption_key_name(b"secret")


def test_a_lost_or_half_ca_is_never_replaced_silently(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    gone = {k: v for k, v in files.items() if k not in ("front-proxy-ca.crt", "front-proxy-ca.key")}
    error = raised(pki.ensure, env, gone)
    assert (error.message, error.hint) == (
        "front-proxy-ca.crt and front-proxy-ca.key are missing but front-proxy-client exist, "
        "signed by that CA",
        "restore front-proxy-ca.crt and front-proxy-ca.key, or start a new CA: kubeplat certs "
        "--rotate ca",
    )
    two = {k: v for k, v in files.items() if k not in ("etcd/ca.crt", "etcd/ca.key")}
    assert raised(pki.ensure, env, two).message == (
        "etcd/ca.crt and etcd/ca.key are missing but apiserver-etcd-client, "
        "etcd/healthcheck-client, etcd/server, etcd/peer exist, signed by that CA"
    )
    half = {k: v for k, v in files.items() if k != "etcd/ca.key"}
    error = raised(pki.ensure, env, half)
    assert (error.message, error.hint) == (
        "etcd/ca.key is missing but its other half exists; kubeplat will not replace a CA silently",
        "restore etcd/ca.key, or start a new CA (every node then needs new certificates): "
        "kubeplat certs --rotate etcd/ca",
    )
    error = raised(pki.ensure, env, {**files, "etcd/ca.crt": b"garbage"})
    assert (error.message, error.hint) == (
        "etcd/ca.crt is not a PEM certificate",
        "reissue it: kubeplat certs --rotate etcd/ca",
    )


# DSA is the one OpenSSH key type cryptography still reads that kubeplat does not use (it warns
# that it will stop reading it; then the check this provokes can no longer be reached).
@pytest.mark.filterwarnings("ignore:.*DSA:cryptography.utils.CryptographyDeprecationWarning")
def test_a_damaged_or_foreign_ssh_key_is_named(env: config.Environment) -> None:
    from cryptography.hazmat.primitives.asymmetric import dsa

    files = pki.ensure(env, {}).files
    error = raised(pki.ensure, env, {**files, pki.SSH_KEY: b"not a key"})
    assert (error.message, error.hint) == (
        "ssh/id_ed25519 is not an OpenSSH private key",
        "restore it, or delete ssh/id_ed25519",
    )
    foreign = dsa.generate_private_key(1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )  # fmt: skip
    error = raised(pki.ensure, env, {**files, pki.SSH_KEY: foreign})
    assert (error.message, error.hint) == (
        "ssh/id_ed25519 is not a key kubeplat uses",
        "restore it, or delete ssh/id_ed25519",
    )
    # The next key of a staged SSH rotation, damaged: named, as nodes' trust is built from it.
    staged = {**files, pki.SSH_NEXT: b"not a key"}
    assert raised(pki.trust_bundle, staged, "ssh").message == (
        "ssh/id_ed25519.next.key is not an OpenSSH private key"
    )


def test_the_bootstrap_tokens_renewal(env: config.Environment) -> None:
    """The token is replaced when missing, not a token, its expiry unreadable, or from the
    first second of the renewal window (an expired one says 0 days, never less)."""
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    files = pki.ensure(env, {}, now=issued).files
    expires = pki.token_expiry(files)
    assert expires is not None
    edge = expires - dt.timedelta(days=env.cert_renew_days)

    def reason(stored: dict[str, bytes], now: dt.datetime = issued) -> str | None:
        return pki.ensure(env, stored, now=now).reasons.get(pki.BOOTSTRAP_TOKEN)

    assert reason(files, edge - dt.timedelta(seconds=1)) is None
    assert reason(files, edge) == f"expires in {env.cert_renew_days} days"
    assert reason(files, expires + dt.timedelta(days=3)) == "expires in 0 days"
    assert reason({k: v for k, v in files.items() if k != pki.BOOTSTRAP_TOKEN}) == "missing"
    assert reason({**files, pki.BOOTSTRAP_TOKEN: b"\xff\xfe.not-a-token"}) == (
        "it is not a bootstrap token"
    )
    assert reason({**files, pki.TOKEN_EXPIRATION: b"someday"}) == "its expiry is unreadable"


def test_what_nodes_trust_for_the_service_account_key(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    assert pki.trust_bundle(files, "sa") == files["sa.pub"]  # nothing staged: the key alone
    staged = {**files, "sa.next.key": b"garbage"}
    damaged = raised(pki.trust_bundle, staged, "sa")
    assert damaged.message == "sa.next.key is not a PEM private key"
    # The hint names a command that exists (`--rotate sa.next` is no certificate's name).
    assert "kubeplat certs --rotate sa" in damaged.hint and "sa.next.key" in damaged.hint
    pki._rotation("sa", {})
    assert "--rotate sa.next" not in damaged.hint


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa-2048"])
def test_every_certificate_has_kubeadms_profile(env: config.Environment, algorithm: str) -> None:
    """What TLS clients check, as kubeadm sets it: CAs sign certificates (and CRLs), leaves do
    not; the constraints and key usages are critical, the extended usages and names are not;
    an RSA leaf may encipher keys (RSA key exchange), an ECDSA one has nothing to encipher with;
    a subject's organization comes before its common name; every key has the environment's
    algorithm."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = pki.ensure(dataclasses.replace(env, key_algorithm=algorithm), {}).files
    kind = rsa.RSAPublicKey if algorithm == "rsa-2048" else ec.EllipticCurvePublicKey
    cas = {"ca", "front-proxy-ca", "etcd/ca", "kubelet-ca"}
    names = [n.removesuffix(".crt") for n in files if n.endswith(".crt")]
    assert cas <= set(names) and len(names) > len(cas)
    for name in names:
        cert = x509.load_pem_x509_certificate(files[f"{name}.crt"])
        is_ca = name in cas
        assert isinstance(cert.public_key(), kind), name
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca is is_ca, name
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical, name
        assert usage.value.digital_signature, name
        assert usage.value.key_cert_sign is is_ca and usage.value.crl_sign is is_ca, name
        assert usage.value.key_encipherment is (not is_ca and algorithm == "rsa-2048"), name
        unused = (usage.value.content_commitment, usage.value.data_encipherment)
        assert unused == (False, False) and not usage.value.key_agreement, name
        if algorithm == "rsa-2048":
            assert cert.public_key().key_size == 2048, name  # type: ignore[union-attr]
        for optional in (x509.ExtendedKeyUsage, x509.SubjectAlternativeName):
            try:
                assert not cert.extensions.get_extension_for_class(optional).critical, name
            except x509.ExtensionNotFound:
                assert is_ca or optional is x509.SubjectAlternativeName, name
    admin = x509.load_pem_x509_certificate(files["admin.crt"])
    assert [a.oid for a in admin.subject] == [NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME]


def test_a_leaf_never_outlives_its_ca(env: config.Environment) -> None:
    """Leaves issued a day and a half before their CA expires live one day, not past it."""
    now = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
    ca_days = x509.load_pem_x509_certificate(pki.ensure(env, {}, now=now).files["ca.crt"])
    lifetime = ca_days.not_valid_after_utc - now
    old = pki.ensure(env, {}, now=now - lifetime + dt.timedelta(days=1, hours=12)).files
    renewed = pki.ensure(env, old, now=now)
    ca = x509.load_pem_x509_certificate(renewed.files["ca.crt"])
    assert ca.not_valid_after_utc - now == dt.timedelta(days=1, hours=12)
    leaf = x509.load_pem_x509_certificate(renewed.files["scheduler.crt"])
    assert "scheduler" in renewed.issued
    assert leaf.not_valid_after_utc == now + dt.timedelta(days=1) <= ca.not_valid_after_utc


def test_a_lost_service_account_key_is_never_replaced_silently(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    error = raised(pki.ensure, env, {k: v for k, v in files.items() if k != "sa.key"})
    assert (error.message, error.hint) == (
        "sa.key is missing but sa.pub exists",
        "restore sa.key; a new key would invalidate every service account token",
    )


def test_a_new_pki_says_what_it_issued_and_why(env: config.Environment) -> None:
    """The `PKI: issued NAME (REASON)` lines of a first `up`, in their order."""
    first = pki.ensure(env, {})
    cas = ["ca", "front-proxy-ca", "etcd/ca", "kubelet-ca"]
    leaves = {
        "apiserver": "ca", "apiserver-kubelet-client": "ca", "admin": "ca",
        "controller-manager": "ca", "scheduler": "ca", "front-proxy-client": "front-proxy-ca",
        "apiserver-etcd-client": "etcd/ca", "etcd/healthcheck-client": "etcd/ca",
        "etcd/server": "etcd/ca", "etcd/peer": "etcd/ca",
    }  # fmt: skip
    others = ["sa", "encryption", "ssh", "bootstrap-token"]
    assert first.issued == [*cas, *leaves, *others]
    assert first.reasons == {
        **dict.fromkeys(cas, "missing"),
        **{leaf: f"{ca} is new" for leaf, ca in leaves.items()},
        **dict.fromkeys(others, "missing"),
    }
    rotated = pki.ensure(env, first.files, rotate="encryption")
    assert (rotated.issued, rotated.reasons) == (["encryption"], {"encryption": "rotated"})


def test_a_new_ssh_pair_ends_a_staged_ssh_rotation_and_a_brought_key_drops_kubeplats(
    env: config.Environment,
) -> None:
    now = dt.datetime.now(dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    staged = pki.advance(env, pki.begin(env, files, ["ssh"], now).files, now).files
    assert pki.SSH_PREV in staged
    mid = {**pki.begin(env, files, ["ssh"], now).files, pki.SSH_PREV: staged[pki.SSH_PREV]}
    lost = {k: v for k, v in mid.items() if k != pki.SSH_KEY}  # the private key deleted
    again = pki.ensure(env, lost, now=now)
    assert again.reasons["ssh"] == "rotated"
    assert pki.SSH_NEXT not in again.files and pki.SSH_PREV not in again.files
    given = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx operator@example"
    brought = pki.ensure(env, mid, now=now, ssh_public_key=given).files
    assert brought[pki.SSH_PUB] == given + b"\n"
    assert not {pki.SSH_KEY, pki.SSH_NEXT, pki.SSH_PREV} & set(brought)


def test_every_subject_is_the_name_the_cluster_authorizes(env: config.Environment) -> None:
    """A client certificate's subject is who it is to the API server: RBAC binds
    system:kube-scheduler and system:kube-controller-manager, system:masters is the admin
    group, the API server accepts front-proxy-client as the only request-header client."""
    files = pki.ensure(env, {}).files
    subjects = {
        name.removesuffix(".crt"): x509.load_pem_x509_certificate(data).subject.rfc4514_string()
        for name, data in files.items()
        if name.endswith(".crt")
    }
    assert subjects == {
        "ca": "CN=kubernetes",
        "front-proxy-ca": "CN=front-proxy-ca",
        "etcd/ca": "CN=etcd-ca",
        "kubelet-ca": "CN=kubelet-ca",
        "admin": "CN=kubernetes-admin,O=system:masters",
        "apiserver": "CN=kube-apiserver",
        "apiserver-etcd-client": "CN=kube-apiserver-etcd-client",
        "apiserver-kubelet-client": "CN=kube-apiserver-kubelet-client,O=system:masters",
        "controller-manager": "CN=system:kube-controller-manager",
        "scheduler": "CN=system:kube-scheduler",
        "front-proxy-client": "CN=front-proxy-client",
        "etcd/healthcheck-client": "CN=kube-etcd-healthcheck-client",
        "etcd/peer": "CN=etcd-peer",
        "etcd/server": "CN=etcd-server",
    }


@pytest.mark.parametrize(
    ("region", "internal"),
    [("us-east-1", "*.ec2.internal"), ("eu-west-1", "*.eu-west-1.compute.internal")],
)
def test_etcd_certificates_cover_the_regions_private_dns_names(
    env: config.Environment, region: str, internal: str
) -> None:
    """Members address each other by EC2 private DNS names, which are `ip-….ec2.internal` in
    us-east-1 and `ip-….REGION.compute.internal` elsewhere: a wrong wildcard and no member
    can join."""
    there = dataclasses.replace(env, aws_region=region)
    assert pki.etcd_names(there) == (
        internal,
        f"secure.{env.environment}.{env.dns_zone_name}",
        "localhost",
    )
    files = pki.ensure(there, {}).files
    for name in ("etcd/peer", "etcd/server"):
        sans = x509.load_pem_x509_certificate(files[f"{name}.crt"]).extensions
        names = sans.get_extension_for_class(x509.SubjectAlternativeName).value
        assert internal in names.get_values_for_type(x509.DNSName), name


def test_rotating_the_service_account_key_before_a_cluster_runs(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    rotated = pki.ensure(env, files, rotate="sa")
    assert (rotated.issued, rotated.reasons) == (["sa"], {"sa": "rotated"})
    assert rotated.files["sa.key"] != files["sa.key"] and rotated.files["sa.pub"] != files["sa.pub"]


def test_a_rotated_ca_says_so_for_each_leaf_it_reissues(env: config.Environment) -> None:
    files = pki.ensure(env, {}).files
    rotated = pki.ensure(env, files, rotate="etcd/ca")
    assert rotated.reasons == {
        "etcd/ca": "rotated",
        **dict.fromkeys(
            ["apiserver-etcd-client", "etcd/healthcheck-client", "etcd/server", "etcd/peer"],
            "etcd/ca rotated",
        ),
    }


def test_rotating_one_leaf_says_so_and_an_unknown_name_lists_every_name(
    env: config.Environment,
) -> None:
    files = pki.ensure(env, {}).files
    assert pki.ensure(env, files, rotate="apiserver").reasons == {"apiserver": "rotated"}
    error = raised(pki.ensure, env, files, rotate="apiservr")
    assert (error.message, error.hint) == (
        "no certificate named 'apiservr'",
        "one of: admin, apiserver, apiserver-etcd-client, apiserver-kubelet-client, "
        "bootstrap-token, ca, controller-manager, encryption, etcd/ca, etcd/healthcheck-client, "
        "etcd/peer, etcd/server, front-proxy-ca, front-proxy-client, kubelet-ca, sa, scheduler, "
        "ssh",
    )


def test_a_half_written_rotation_step_is_completed_or_undone(env: config.Environment) -> None:
    """What a run stopped between two writes leaves (kubeplat writes a CA's `prev` copy first,
    then the new certificate, then its key, and removes `next` last), and what the next run
    makes of it: half of a new pair is dropped (the rotation had not begun), a promotion that
    wrote the certificate is completed, one that wrote only `prev` is undone."""
    now = dt.datetime.now(dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    trusting = pki.begin(env, files, ["etcd/ca"], now).files
    for half in ("etcd/ca.next.crt", "etcd/ca.next.key"):
        left = {k: v for k, v in trusting.items() if k != half}
        assert pki.settle(left) == files, half  # as before the rotation began
    new_crt, new_key = trusting["etcd/ca.next.crt"], trusting["etcd/ca.next.key"]
    began = {**trusting, "etcd/ca.prev.crt": files["etcd/ca.crt"]}
    assert pki.settle(began) == trusting  # only `prev` written: still trusting
    wrote_crt = {**began, "etcd/ca.crt": new_crt}
    promoted = pki.settle(wrote_crt)
    assert (promoted["etcd/ca.crt"], promoted["etcd/ca.key"]) == (new_crt, new_key)
    assert promoted["etcd/ca.prev.crt"] == files["etcd/ca.crt"]
    assert "etcd/ca.next.crt" not in promoted and "etcd/ca.next.key" not in promoted
    assert pki.staged(promoted) == {"etcd/ca": pki.REISSUE}
