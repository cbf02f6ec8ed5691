"""Three real etcd members, each started with the configuration the secure layer renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeplat import config, pki, render
from kubeplat.pkistore import LocalStore
from tests.integration import etcd_cluster

pytestmark = pytest.mark.integration


def test_rendered_etcd_configuration_forms_a_tls_cluster(
    environments: Path, tmp_path: Path
) -> None:
    etcd_cluster.require_etcd()
    env = config.load("example")
    files = pki.ensure(env, {}).files
    bundle = render.bundle(env, files)
    # The secure layer's PKI, as a node gets it: pki/common + pki/secure → /etc/kubernetes/pki.
    node_pki = tmp_path / "pki"
    LocalStore(node_pki).save(
        {
            name.split("/", 2)[2]: data
            for name, data in bundle.items()
            if name.startswith(("pki/common/", "pki/secure/"))
        }
    )
    master = yaml.safe_load(bundle["cloudconfig/master"])
    template = next(
        f["content"] for f in master["write_files"] if f["path"] == "/etc/etcd/etcd.conf.yml.tmpl"
    )
    unit = next(
        f["content"]
        for f in master["write_files"]
        if f["path"] == "/etc/systemd/system/etcd.service"
    )
    assert "--config-file=/etc/etcd/etcd.conf.yml" in unit

    members = etcd_cluster.members(3)
    initial = ",".join(f"{m.name}=https://127.0.0.1:{m.peer_port}" for m in members)
    processes = []
    try:
        for m in members:
            # What kubeplat-etcd-member does on a node, with this machine's addresses and ports
            # (tests/node/test_etcd_members.py runs the program itself).
            text = (
                template.replace("@NAME@", m.name)
                .replace("@HOST@", "127.0.0.1")
                .replace("@INITIAL_CLUSTER@", initial)
                .replace("@STATE@", "new")
                .replace("@TOKEN@", "kubeplat-0123456789abcdef")
                .replace("0.0.0.0", "127.0.0.1")
                .replace(":2379", f":{m.client_port}")
                .replace(":2380", f":{m.peer_port}")
                .replace("/etc/kubernetes/pki", str(node_pki))
                .replace("/var/lib/etcd", str(tmp_path / m.name))
            )
            conf = tmp_path / f"{m.name}.yml"
            conf.write_text(text)
            processes.append(
                etcd_cluster.start(["etcd", f"--config-file={conf}"], tmp_path / f"{m.name}.log")
            )
        endpoints = [f"https://127.0.0.1:{m.client_port}" for m in members]
        # Clients as the control plane uses them: the apiserver's etcd client certificate.
        health = etcd_cluster.wait_healthy(node_pki, endpoints, "apiserver-etcd-client")
        assert health.count("is healthy") == 3
        listed = etcd_cluster.etcdctl(
            node_pki, endpoints, "apiserver-etcd-client", "member", "list"
        )
        assert sorted(line.split(", ")[2] for line in listed.stdout.splitlines()) == [
            "m0",
            "m1",
            "m2",
        ]
    finally:
        etcd_cluster.stop(processes)
