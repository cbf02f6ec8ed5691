"""The PKI checked by its real consumers: openssl, and a real etcd cluster over TLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kubeplat import config, pki
from kubeplat.pkistore import LocalStore
from tests.integration import etcd_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def pki_dir(environments: Path, tmp_path: Path) -> Path:
    env = config.load("example")
    store = LocalStore(tmp_path / "pki")
    store.save(pki.ensure(env, {}).files)
    return store.root


def test_openssl_verifies_every_leaf_against_its_ca(pki_dir: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    env = config.load("example")
    for leaf in pki.leaves(env):
        purpose = "sslserver" if pki.SERVER in leaf.usages else "sslclient"
        result = subprocess.run(
            [
                "openssl", "verify", "-x509_strict", "-purpose", purpose,
                "-CAfile", str(pki_dir / f"{leaf.ca}.crt"), str(pki_dir / f"{leaf.name}.crt"),
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, (leaf.name, result.stdout, result.stderr)
        # …and not against another CA.
        other = "etcd/ca" if leaf.ca != "etcd/ca" else "ca"
        wrong = subprocess.run(
            ["openssl", "verify", "-CAfile", str(pki_dir / f"{other}.crt"), str(pki_dir / f"{leaf.name}.crt")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert wrong.returncode != 0, leaf.name


def member_args(pki_dir: Path, data: Path, m: etcd_cluster.Member, cluster: str) -> list[str]:
    etcd = pki_dir / "etcd"
    return [
        "etcd", f"--name={m.name}", f"--data-dir={data / m.name}",
        f"--listen-client-urls={m.client_url}", f"--advertise-client-urls={m.client_url}",
        f"--listen-peer-urls={m.peer_url}", f"--initial-advertise-peer-urls={m.peer_url}",
        f"--initial-cluster={cluster}", "--initial-cluster-state=new",
        "--initial-cluster-token=kubeplat-test",
        f"--cert-file={etcd / 'server.crt'}", f"--key-file={etcd / 'server.key'}",
        f"--trusted-ca-file={etcd / 'ca.crt'}", "--client-cert-auth",
        f"--peer-cert-file={etcd / 'peer.crt'}", f"--peer-key-file={etcd / 'peer.key'}",
        f"--peer-trusted-ca-file={etcd / 'ca.crt'}", "--peer-client-cert-auth",
    ]  # fmt: skip


def test_etcd_serves_the_apiserver_client_and_refuses_admin(pki_dir: Path, tmp_path: Path) -> None:
    etcd_cluster.require_etcd()
    (m,) = etcd_cluster.members(1)
    proc = etcd_cluster.start(
        member_args(pki_dir, tmp_path, m, f"{m.name}={m.peer_url}"), tmp_path / "etcd.log"
    )
    try:
        etcd_cluster.wait_healthy(pki_dir, [m.client_url], "etcd/healthcheck-client")
        put = etcd_cluster.etcdctl(
            pki_dir, [m.client_url], "apiserver-etcd-client", "put", "k", "v"
        )
        assert put.returncode == 0, put.stderr
        got = etcd_cluster.etcdctl(pki_dir, [m.client_url], "apiserver-etcd-client", "get", "k")
        assert got.stdout.split() == ["k", "v"]
        # admin is signed by the cluster CA, not etcd's: the TLS handshake is refused.
        refused = etcd_cluster.etcdctl(pki_dir, [m.client_url], "admin", "get", "k")
        assert refused.returncode != 0
        assert "k\nv" not in refused.stdout
    finally:
        etcd_cluster.stop([proc])
    log = (tmp_path / "etcd.log").read_text()
    assert "bad certificate" in log or "certificate" in log


def test_three_members_form_a_cluster_over_peer_tls(pki_dir: Path, tmp_path: Path) -> None:
    etcd_cluster.require_etcd()
    members = etcd_cluster.members(3)
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    procs = [
        etcd_cluster.start(member_args(pki_dir, tmp_path, m, initial), tmp_path / f"{m.name}.log")
        for m in members
    ]
    try:
        endpoints = [m.client_url for m in members]
        etcd_cluster.wait_healthy(pki_dir, endpoints, "apiserver-etcd-client")
        listed = etcd_cluster.etcdctl(
            pki_dir, endpoints[:1], "apiserver-etcd-client", "member", "list"
        )
        assert listed.returncode == 0, listed.stderr
        assert sorted(line.split(", ")[2] for line in listed.stdout.splitlines()) == [
            "m0",
            "m1",
            "m2",
        ]
        assert all("https://127.0.0.1" in line for line in listed.stdout.splitlines())
        put = etcd_cluster.etcdctl(pki_dir, endpoints[:1], "apiserver-etcd-client", "put", "x", "1")
        assert put.returncode == 0
        got = etcd_cluster.etcdctl(pki_dir, endpoints[2:], "apiserver-etcd-client", "get", "x")
        assert got.stdout.split() == ["x", "1"]  # replicated to another member over peer TLS
    finally:
        etcd_cluster.stop(procs)
