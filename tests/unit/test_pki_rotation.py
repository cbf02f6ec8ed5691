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
    begun = pki.ensure(env, pki.begin(env, before, [*pki.CAS, "sa"], NOW).files, now=NOW)
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
    begun = pki.begin(env, before, ["ca", "sa"], NOW).files
    for files in (before, begun, pki.advance(env, begun, NOW).files):
        again = pki.ensure(env, pki_files(layout(env, files)), now=NOW)
        assert not again.issued
        assert layout(env, again.files) == layout(env, files)


@pytest.mark.parametrize("stage", ["begin", "promote", "drop"])
def test_a_step_stopped_after_any_write_resumes_without_losing_trust(
    env: config.Environment, tmp_path: Path, stage: str
) -> None:
    before = pki.ensure(env, {}, now=NOW).files
    begun = pki.ensure(env, pki.begin(env, before, ["ca", "etcd/ca", "sa"], NOW).files).files
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
        phases = pki.staged(resumed.files)
        assert set(phases.values()) <= {pki.TRUST, pki.REISSUE}
    # The locked leftovers go last; what is left then is exactly the goal.
    final = dict(old)
    final.update({n: new[n] for n in writes})
    final = {n: v for n, v in final.items() if n in new}
    assert layout(env, pki.ensure(env, pki_files(final), now=NOW).files) == new


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
