"""A staged rotation of the etcd CA, on a real three-member etcd cluster over TLS (peers and
clients verified): each member gets each step's files (the secure layer's files of the bucket,
as its agent writes them) and is restarted in turn, as the agents' roll does, while a client
with the API server's certificate writes to the cluster all along. And the reason for the
stages: a member given the new CA's certificates at once is cut off from its peers.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from kubeplat import config, pki, render
from tests.integration import etcd_cluster
from tests.integration.test_pki_consumers import member_args

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


def node_files(env: config.Environment, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """What a secure node's /etc/kubernetes/pki holds for `files`: common/ and secure/."""
    placed = render.pki_layout(env, files)
    return {
        name.split("/", 1)[1]: data
        for name, data in placed.items()
        if name.startswith(("common/", "secure/"))
    }


def install(root: Path, files: Mapping[str, bytes]) -> None:
    """Write a node's PKI as the agent does: a temporary file renamed into place."""
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.chmod(temporary, 0o600 if name.endswith(".key") else 0o644)
        os.replace(temporary, target)


class Writer(threading.Thread):
    """The API server: puts a key through every endpoint, with its own node's files. As the
    API server's etcd client does, a put that fails is tried again (twice, half a second
    apart): a member restarted under load may time a request out while a leader is elected
    (CI once saw "etcdserver: request timed out"), which the API server rides out; a put that
    fails three times in a row is a cluster that stopped serving it (a certificate refused
    fails every time)."""

    ATTEMPTS = 3

    def __init__(self, pki_dir: Path, endpoints: list[str]) -> None:
        super().__init__(daemon=True)
        self.pki_dir, self.endpoints = pki_dir, endpoints
        self.stop = threading.Event()
        self.done = 0
        self.retried: list[str] = []  # put again, and then written
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            said: list[str] = []
            for _attempt in range(self.ATTEMPTS):
                result = etcd_cluster.etcdctl(
                    self.pki_dir, self.endpoints, "apiserver-etcd-client",
                    "put", "k", str(self.done),
                )  # fmt: skip
                if result.returncode == 0:
                    break
                said.append(result.stderr.strip()[-300:])
                time.sleep(0.5)
            if len(said) == self.ATTEMPTS:
                self.failures.append(said[-1])
            else:
                self.done += 1
                self.retried += said
            time.sleep(0.2)


def test_a_staged_etcd_ca_rotation_keeps_the_cluster_serving(
    environments: Path, tmp_path: Path
) -> None:
    etcd_cluster.require_etcd()
    env = config.load("example")
    before = pki.ensure(env, {}, now=NOW).files
    begun = pki.ensure(env, pki.begin(env, before, ["etcd/ca"], NOW).files, now=NOW).files
    reissued = pki.advance(env, begun, NOW).files
    done = pki.advance(env, reissued, NOW).files
    steps = [node_files(env, s) for s in (before, begun, reissued, done)]
    assert steps[1]["etcd/ca.crt"].count(b"BEGIN CERTIFICATE") == 2
    assert steps[3]["etcd/server.crt"] != steps[0]["etcd/server.crt"]

    members = etcd_cluster.members(3)
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    roots = {m.name: tmp_path / m.name / "pki" for m in members}
    data = tmp_path / "data"
    for root in roots.values():
        install(root, steps[0])
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(m: etcd_cluster.Member, state: str = "new") -> None:
        args = member_args(roots[m.name], data, m, cluster)
        args = [a if a != "--initial-cluster-state=new" else f"--initial-cluster-state={state}"
                for a in args]  # fmt: skip
        processes[m.name] = etcd_cluster.start(args, tmp_path / f"{m.name}.log")

    def restart(m: etcd_cluster.Member) -> None:
        etcd_cluster.stop([processes[m.name]])
        start(m, "existing")

    def healthy(m: etcd_cluster.Member) -> None:
        # Each member answers its own health check with its own client certificate, and the
        # cluster has all three members again (peers accept each other's certificates).
        etcd_cluster.wait_healthy(roots[m.name], [x.client_url for x in members],
                                  "etcd/healthcheck-client", timeout=40)  # fmt: skip

    endpoints = [m.client_url for m in members]
    try:
        for m in members:
            start(m)
        healthy(members[0])
        writer = Writer(roots["m0"], endpoints)
        writer.start()
        try:
            for number, step in enumerate(steps[1:], start=1):
                for m in members:  # one member at a time, as the agents take turns
                    install(roots[m.name], step)
                    restart(m)
                    healthy(m)
                    time.sleep(1)  # the writer writes through this state too
                for holder in members:  # every member's leaves verify with every bundle
                    for truster in members:
                        for leaf in ("etcd/peer.crt", "etcd/server.crt"):
                            check = subprocess.run(
                                ["openssl", "verify",
                                 "-CAfile", str(roots[truster.name] / "etcd/ca.crt"),
                                 str(roots[holder.name] / leaf)],
                                capture_output=True, text=True, check=False,
                            )  # fmt: skip
                            assert check.returncode == 0, (number, leaf, check.stdout)
        finally:
            writer.stop.set()
            writer.join(timeout=30)
        assert writer.done > 20, "the client kept writing"
        assert writer.failures == [], writer.failures[:3]
        # A put tried again is a blip, not an outage: never a certificate refused.
        assert not [m for m in writer.retried if "certificate" in m or "tls" in m.lower()], (
            writer.retried[:3]
        )
        got = etcd_cluster.etcdctl(roots["m2"], endpoints, "apiserver-etcd-client", "get", "k")
        assert got.returncode == 0 and got.stdout.split()[-1] == str(writer.done - 1)

        # Without stages: a member that gets a new etcd CA's set at once (what a one-shot
        # rotation would deliver) is rejected by peers that trust only the CA they have.
        abrupt = node_files(env, pki.ensure(env, done, rotate="etcd/ca", now=NOW).files)
        install(roots["m2"], abrupt)
        restart(members[2])
        # It answers its own client (same new CA), but has no quorum: its peers refuse it.
        with pytest.raises(AssertionError, match="did not become healthy"):
            etcd_cluster.wait_healthy(
                roots["m2"], [members[2].client_url], "etcd/healthcheck-client", timeout=15
            )
        log = (tmp_path / "m2.log").read_text(errors="replace")
        assert "certificate" in log, log[-2000:]
    finally:
        etcd_cluster.stop(list(processes.values()))
