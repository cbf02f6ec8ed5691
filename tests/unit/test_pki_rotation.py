"""A staged rotation of every CA and of the service-account key, checked by `openssl verify`:
at no step, and at no moment between two steps (some nodes on the old set, some on the new),
does a node hold a certificate that another node's trust bundle rejects; and a run stopped
after any single write of a step leaves a set the next run completes."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kubeplat import config, pki, render
from kubeplat.errors import KubeplatError
from kubeplat.pipeline import write_order
from kubeplat.store import pki_files
from tests import secretbox_store as apiserver

NOW = dt.datetime.now(dt.UTC)
# Which trust bundle (on every node, in pki/common/) checks each CA's leaves.
TRUSTED_BY = {
    "ca": "common/ca.crt",
    "front-proxy-ca": "common/front-proxy-ca.crt",
    "etcd/ca": "common/etcd/ca.crt",
}


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


def layout(env: config.Environment, files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {f"pki/{k}": v for k, v in render.pki_layout(env, files).items()}


def node_leaves(env: config.Environment, placed: Mapping[str, bytes]) -> dict[str, str]:
    """Every leaf certificate a node holds (bucket name), with the CA that must vouch for it."""
    issuer = {leaf.name: leaf.ca for leaf in pki.leaves(env)}
    found = {}
    for name in placed:
        parts = name.split("/", 2)
        if parts[1] in ("common", "locked") or not name.endswith(".crt"):
            continue
        found[name] = issuer[parts[2][: -len(".crt")]]
    return found


def verify(tmp: Path, bundle: bytes, leaf: bytes) -> subprocess.CompletedProcess[str]:
    (tmp / "bundle.pem").write_bytes(bundle)
    (tmp / "leaf.pem").write_bytes(leaf)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp / "bundle.pem"), str(tmp / "leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )


def assert_trusted(
    env: config.Environment,
    tmp: Path,
    holders: Mapping[str, bytes],
    trusters: Mapping[str, bytes],
) -> None:
    """Every leaf of the set `holders` verifies against the bundles of the set `trusters`."""
    for name, ca in node_leaves(env, holders).items():
        if ca == "kubelet-ca":
            continue
        done = verify(tmp, trusters[f"pki/{TRUSTED_BY[ca]}"], holders[name])
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


def ssh_key_line(private: bytes) -> bytes:
    """The authorized_keys line of an OpenSSH private key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def assert_ssh_reaches(holders: Mapping[str, bytes], trusters: Mapping[str, bytes]) -> None:
    """The key `kubeplat ssh` uses with the set `holders` is authorized by the set `trusters`."""
    key = ssh_key_line(holders["pki/locked/ssh/id_ed25519"])
    assert key in trusters["pki/common/ssh/authorized_keys"].splitlines()


def public_keys(bundle: bytes) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization

    ends = bundle.split(b"-----END PUBLIC KEY-----")
    keys = [serialization.load_pem_public_key(e + b"-----END PUBLIC KEY-----\n") for e in ends[:-1]]
    return [
        k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in keys
    ]


def signs(key_pem: bytes, bundle: bytes) -> bool:
    """Whether a token signed with `key_pem` verifies with one of `bundle`'s public keys."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    message = b"header.claims"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    for der in public_keys(bundle):
        public = serialization.load_der_public_key(der)
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                assert isinstance(public, rsa.RSAPublicKey)
                public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            return True
        except Exception:
            continue
    return False


def test_every_step_of_a_staged_rotation_keeps_every_node_trusted(
    env: config.Environment, tmp_path: Path
) -> None:
    before = pki.ensure(env, {}, now=NOW).files
    begun = pki.ensure(env, pki.begin(env, before, list(pki.STAGED), NOW).files, now=NOW)
    assert pki.staged(begun.files) == {name: pki.TRUST for name in pki.STAGED}
    assert not begun.issued, "beginning a rotation issues no leaf"
    reissued = pki.advance(env, begun.files, NOW)
    assert pki.staged(reissued.files) == {name: pki.REISSUE for name in pki.STAGED}
    leaves = {leaf.name for leaf in pki.leaves(env)}
    assert set(reissued.issued) == leaves, "every leaf is reissued by the new CAs"
    assert reissued.reasons["apiserver"] == "ca rotated"
    done = pki.advance(env, reissued.files, NOW)
    assert pki.staged(done.files) == {}
    assert not done.issued

    steps = [layout(env, s) for s in (before, begun.files, reissued.files, done.files)]
    for step in steps:
        assert_trusted(env, tmp_path, step, step)
    for older, newer in itertools.pairwise(steps):
        # Mid-roll: nodes that already run the new step and nodes that do not yet.
        assert_trusted(env, tmp_path, older, newer)
        assert_trusted(env, tmp_path, newer, older)
    # And the CA really changed: the last step's leaves fail against the first step's bundle.
    stale = verify(tmp_path, steps[0]["pki/common/ca.crt"], steps[3]["pki/secure/apiserver.crt"])
    assert stale.returncode != 0
    assert steps[0]["pki/common/ca.crt"].count(b"BEGIN CERTIFICATE") == 1
    assert steps[1]["pki/common/ca.crt"].count(b"BEGIN CERTIFICATE") == 2
    assert steps[3]["pki/common/ca.crt"].count(b"BEGIN CERTIFICATE") == 1

    # The API server verifies service-account tokens with every key of sa.pub: a token signed
    # by the signing key of any step verifies on every node of the step before and after.
    keys = [s["pki/secure/sa.key"] for s in steps]
    pubs = [s["pki/secure/sa.pub"] for s in steps]
    for i in range(len(steps) - 1):
        for key in keys[i : i + 2]:
            for pub in pubs[i : i + 2]:
                assert signs(key, pub)
    assert not signs(keys[0], pubs[3]), "the old key is dropped at the end"

    # SSH: the key `kubeplat ssh` uses at each step is authorized on nodes of that step and of
    # the step before (nodes whose agent has not synced yet); the old key goes at the end.
    ssh_keys = [ssh_key_line(s["pki/locked/ssh/id_ed25519"]) for s in steps]
    authorized = [s["pki/common/ssh/authorized_keys"].splitlines() for s in steps]
    assert [len(a) for a in authorized] == [1, 2, 2, 1]
    for i, key in enumerate(ssh_keys):
        assert key in authorized[i] and key in authorized[max(0, i - 1)], i
    assert ssh_keys[0] == ssh_keys[1] != ssh_keys[2] == ssh_keys[3]
    assert ssh_keys[0] not in authorized[3], "the old SSH key is dropped at the end"

    # The controller-manager signs with kubelet-ca.crt: always exactly one certificate.
    for step in steps:
        assert step["pki/common/kubelet-ca.crt"].count(b"BEGIN CERTIFICATE") == 1
    # No node reads a CA key, the new one's included.
    for step in steps:
        for name in step:
            if name.endswith(".key") and not name.startswith("pki/locked/"):
                assert "ca" not in name.rsplit("/", 1)[-1] or "kubelet-ca" in name, name
            if ".next." in name or ".prev." in name:
                assert name.startswith("pki/locked/"), name


def test_the_bucket_set_reads_back_as_written_at_every_step(env: config.Environment) -> None:
    before = pki.ensure(env, {}, now=NOW).files
    begun = pki.begin(env, before, ["ca", "sa", "ssh", "encryption"], NOW).files
    for files in (before, begun, pki.advance(env, begun, NOW).files):
        again = pki.ensure(env, pki_files(layout(env, files)), now=NOW)
        assert not again.issued
        assert layout(env, again.files) == layout(env, files)


@pytest.mark.parametrize("stage", ["begin", "promote", "drop"])
def test_a_step_stopped_after_any_write_resumes_without_losing_trust(
    env: config.Environment, tmp_path: Path, stage: str
) -> None:
    before = pki.ensure(env, {}, now=NOW).files
    names = ["ca", "etcd/ca", "sa", "ssh", "encryption"]
    begun = pki.ensure(env, pki.begin(env, before, names, NOW).files).files
    reissued = pki.advance(env, begun, NOW).files
    start, goal = {
        "begin": (before, begun),
        "promote": (begun, reissued),
        "drop": (reissued, pki.advance(env, reissued, NOW).files),
    }[stage]
    old, new = layout(env, start), layout(env, goal)
    order = write_order(new)
    writes = [n for n in order if old.get(n) != new[n]]
    assert writes, "the step writes something"
    for count in range(len(writes) + 1):
        bucket = dict(old)
        bucket.update({n: new[n] for n in writes[:count]})
        resumed = pki.ensure(env, pki_files(bucket), now=NOW)
        placed = layout(env, resumed.files)
        assert_trusted(env, tmp_path, placed, placed)
        # Nodes still holding what the bucket had before the write trust it and are trusted.
        assert_trusted(env, tmp_path, bucket, placed)
        assert_trusted(env, tmp_path, placed, bucket)
        # `kubeplat ssh` after the stop reaches nodes of either set.
        assert_ssh_reaches(placed, placed)
        assert_ssh_reaches(placed, old)
        # An API server with the config before the write and one with the resumed config
        # read each other's Secrets.
        assert_secrets_read(bucket, placed)
        phases = pki.staged(resumed.files)
        assert set(phases.values()) <= {pki.TRUST, pki.REISSUE}
    # The locked leftovers go last; what is left then is exactly the goal.
    final = dict(old)
    final.update({n: new[n] for n in writes})
    final = {n: v for n, v in final.items() if n in new}
    assert layout(env, pki.ensure(env, pki_files(final), now=NOW).files) == new


def assert_secrets_read(a: Mapping[str, bytes], b: Mapping[str, bytes]) -> None:
    first, second = a["pki/secure/encryption-config.yaml"], b["pki/secure/encryption-config.yaml"]
    for writer, reader in ((first, second), (second, first)):
        assert apiserver.load(reader, apiserver.store(writer, b"secret")) == b"secret"


def test_a_second_rotation_waits_for_the_first(env: config.Environment) -> None:
    files = pki.begin(env, pki.ensure(env, {}, now=NOW).files, ["etcd/ca"], NOW).files
    with pytest.raises(
        KubeplatError, match=r"a rotation is already in progress: etcd/ca \(trust\)"
    ):
        pki.begin(env, files, ["ca"], NOW)


def test_the_certificate_table_shows_both_cas_while_rotating(env: config.Environment) -> None:
    files = pki.begin(env, pki.ensure(env, {}, now=NOW).files, ["ca"], NOW).files
    names = [row.name for row in pki.describe(files, NOW)]
    assert names[:2] == ["ca", "ca.next"]
    promoted = pki.advance(env, files, NOW).files
    rows = {row.name: row for row in pki.describe(promoted, NOW)}
    assert "ca.prev" in rows and "ca.next" not in rows
    old = x509.load_pem_x509_certificate(files["ca.crt"])
    assert rows["ca.prev"].fingerprint == old.fingerprint(hashes.SHA256()).hex()


GIVEN_SSH = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO6f0f0bX2kM5lq3bHvq0bn3c7z2C8yqcSk8E1XwW1qT op\n"


def test_an_environment_that_brings_its_own_ssh_key_keeps_it_through_every_step(
    env: config.Environment,
) -> None:
    # A CA rotation step must not swap the operator's key for one kubeplat makes.
    files = pki.begin(
        env, pki.ensure(env, {}, now=NOW, ssh_public_key=GIVEN_SSH).files, ["ca"], NOW
    ).files
    for _ in range(2):
        files = pki.advance(env, files, NOW).files
        assert files["ssh/id_ed25519.pub"] == GIVEN_SSH
        assert "ssh/id_ed25519" not in files
        assert render.pki_layout(env, files)["common/ssh/authorized_keys"] == GIVEN_SSH
    with pytest.raises(KubeplatError, match="brings its own SSH key"):
        pki.begin(env, files, ["ssh"], NOW)
    with pytest.raises(KubeplatError, match="brings its own SSH key"):
        pki.ensure(env, files, now=NOW, rotate="ssh", ssh_public_key=GIVEN_SSH)


def test_a_new_ssh_key_before_the_first_up_is_a_new_pair(env: config.Environment) -> None:
    files = pki.ensure(env, {}, now=NOW).files
    again = pki.ensure(env, files, now=NOW, rotate="ssh")
    assert again.reasons == {"ssh": "rotated"}
    assert again.files["ssh/id_ed25519"] != files["ssh/id_ed25519"]
    assert again.files["ssh/id_ed25519.pub"] == (
        ssh_key_line(again.files["ssh/id_ed25519"]) + b"\n"
    )
