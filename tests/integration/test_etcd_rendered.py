"""Three real etcd members, each started with the configuration the secure layer renders."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kubeplat import config, pki, render
from kubeplat.node import etcd as node_etcd
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
    # Before each start, the membership program's `recheck` (a member that never ran decides
    # again from the members as they are then); run below as the unit runs it.
    pre = re.search(r"^ExecStartPre=/opt/kubeplat/bin/kubeplat-node (.*)$", unit, re.MULTILINE)
    assert pre, unit
    recheck = shlex.split(pre.group(1))
    assert recheck[:2] == ["etcd-member", "recheck"]

    members = etcd_cluster.members(3)
    cluster = {m.name: f"https://127.0.0.1:{m.peer_port}" for m in members}
    decision = node_etcd.Decision("start", "", "new", cluster, token="kubeplat-0123456789abcdef")
    processes = []
    try:
        for m in members:
            # This machine's addresses, ports and folders instead of a node's; then what
            # kubeplat-etcd-member does on a node: its own substitution of the placeholders
            # (tests/node/test_etcd_members.py runs the whole program).
            local = tmp_path / f"{m.name}.yml.tmpl"
            local.write_text(
                template.replace("0.0.0.0", "127.0.0.1")
                .replace(":2379", f":{m.client_port}")
                .replace(":2380", f":{m.peer_port}")
                .replace("/etc/kubernetes/pki", str(node_pki))
                .replace("/var/lib/etcd", str(tmp_path / m.name))
            )
            args = SimpleNamespace(template=local, output=tmp_path / f"{m.name}.yml")
            node_etcd.write_config(args, m.name, "127.0.0.1", decision)  # type: ignore[arg-type]
            assert not re.search(r"@[A-Z_]+@", args.output.read_text())  # every one filled
            processes.append(
                etcd_cluster.start(
                    ["etcd", f"--config-file={args.output}"], tmp_path / f"{m.name}.log"
                )
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
        # The membership program's own reading of the members (etcdctl's JSON gives decimal
        # ids): the ids it passes to `member remove` and `member promote` are etcd's own.
        program = node_etcd.Etcdctl(node_pki).members(endpoints)
        assert program is not None
        assert sorted((m.id, m.name) for m in program) == sorted(
            (line.split(", ")[0], line.split(", ")[2]) for line in listed.stdout.splitlines()
        )
        # etcd restarted (Restart=always): its ExecStartPre lets a member that formed the
        # cluster start as configured, without a look at AWS (none answers here).
        for m in members:
            output = tmp_path / f"{m.name}.yml"
            before = output.read_text()
            where = ["--output", str(output), "--data-dir", str(tmp_path / m.name)]
            assert node_etcd.main(recheck[1:] + where) == 0
            assert output.read_text() == before
    finally:
        etcd_cluster.stop(processes)
