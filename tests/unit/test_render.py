"""Rendering: SPEC's layout, deterministic bytes, small secret-free user_data, right PKI split."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from kubeplat import config, pki, render
from kubeplat.errors import KubeplatError
from tests.conftest import REPO


@pytest.fixture
def env(environments: Path) -> config.Environment:
    return config.load("example")


@pytest.fixture
def files(env: config.Environment) -> dict[str, bytes]:
    return pki.ensure(env, {}).files


def test_spec_layout(env: config.Environment, files: dict[str, bytes]) -> None:
    out = render.bundle(env, files)
    for name in (
        "cloudconfig/master",
        "cloudconfig/worker",
        "userdata/secure",
        "userdata/compute",
        "manifests/secure/kube-apiserver.yaml",
        "manifests/secure/kube-controller-manager.yaml",
        "manifests/secure/kube-scheduler.yaml",
        "manifests/compute/kube-proxy.yaml",
        "manifests/compute/kube-flannel.yaml",
        "pki/common/ca.crt",
        "pki/secure/etcd/server.key",
        "pki/compute/bootstrap-token",
        "pki/locked/ca.key",
        "kubeconfig/admin.conf",
    ):
        assert name in out, name
    assert not any(name.startswith("partials") or "/partials/" in name for name in out)


def test_same_inputs_same_bytes(env: config.Environment, files: dict[str, bytes]) -> None:
    assert render.bundle(env, files) == render.bundle(env, dict(files))


def test_userdata_small_and_secret_free(env: config.Environment, files: dict[str, bytes]) -> None:
    readme = (REPO / "README.md").read_text()
    said = re.search(r"the stub each instance boots with \(about (\d+) KB\)", readme)
    assert said, "README.md no longer says how big the stub is"
    separate = dataclasses.replace(env, topology="separate")
    for layout in (env, separate):
        out = render.bundle(layout, files)
        stubs = {name: data for name, data in out.items() if name.startswith("userdata/")}
        assert len(stubs) == len(render.layers(layout))
        for name, data in stubs.items():
            print(f"{name}: {len(data)} bytes (limit {render.USERDATA_LIMIT})")
            assert len(data) < render.USERDATA_LIMIT
            assert b"PRIVATE KEY" not in data
            assert files["bootstrap-token"] not in data
            assert data.startswith(b"#!/bin/sh\n"), name
            # What the README says of its size holds (to the nearest kilobyte).
            assert round(len(data) / 1000) == int(said.group(1)), name


def test_cloudconfigs_are_standard_and_hold_no_secret(
    env: config.Environment, files: dict[str, bytes]
) -> None:
    out = render.bundle(env, files)
    for name in ("cloudconfig/master", "cloudconfig/worker"):
        text = out[name]
        assert text.startswith(b"#cloud-config\n")
        document = yaml.safe_load(text)
        assert "coreos" not in document
        assert b"PRIVATE KEY" not in text and files["bootstrap-token"] not in text
        paths = [f["path"] for f in document["write_files"]]
        assert "/opt/kubeplat/bin/kubeplat-node" in paths
        assert "packages" not in document  # installed per operating system by the bootstrap


def test_stub_names_its_configuration_by_digest(
    env: config.Environment, files: dict[str, bytes]
) -> None:
    out = render.bundle(env, files)
    digest = hashlib.sha256(out["cloudconfig/master"]).hexdigest().encode()
    assert digest in out["userdata/secure"]
    assert b"s3://kubeplat-example-secrets/example/" in out["userdata/secure"]


def test_a_change_rolls_only_its_layer(env: config.Environment, files: dict[str, bytes]) -> None:
    before = render.bundle(env, files)
    bigger = dataclasses.replace(env, etcd_version="3.5.23")  # only the secure layer runs etcd
    after = render.bundle(bigger, files)
    assert after["userdata/secure"] != before["userdata/secure"]
    assert after["userdata/compute"] == before["userdata/compute"]


def test_pki_split(env: config.Environment, files: dict[str, bytes]) -> None:
    layout = render.pki_layout(env, files)
    node_prefixes = ("common/", "secure/", "compute/")
    for name in layout:
        if name.startswith(node_prefixes):
            base = name.split("/", 1)[1]
            assert base not in ("ca.key", "front-proxy-ca.key", "etcd/ca.key", "admin.key"), name
            # The node user's public keys only: the SSH private key stays locked.
            assert not base.startswith("ssh/") or base == "ssh/authorized_keys", name
    assert layout["common/ssh/authorized_keys"] == files["ssh/id_ed25519.pub"]
    assert {
        "locked/ssh/id_ed25519",
        "locked/ca.key",
        "locked/etcd/ca.key",
        "locked/front-proxy-ca.key",
        "locked/admin.key",
    } <= set(layout)
    compute = {n for n in layout if n.startswith("compute/")}
    assert compute == {"compute/bootstrap-token"}  # workers join with the token, no shared key
    assert layout["common/client-ca-bundle.crt"] == files["ca.crt"] + files["kubelet-ca.crt"]


def test_separate_topology_adds_a_control_plane_layer(
    env: config.Environment, files: dict[str, bytes]
) -> None:
    separate = dataclasses.replace(env, topology="separate")
    out = render.bundle(separate, files)
    assert "cloudconfig/control-plane" in out and "userdata/control-plane" in out
    assert "manifests/control-plane/kube-apiserver.yaml" in out
    # The etcd layer runs no control plane, but is on the pod network like every node.
    assert sorted(n for n in out if n.startswith("manifests/secure/")) == [
        "manifests/secure/kube-flannel.yaml",
        "manifests/secure/kube-proxy.yaml",
    ]
    assert (
        b"--etcd-servers=https://secure.example.example.internal:2379"
        in out["manifests/control-plane/kube-apiserver.yaml"]
    )
    assert "pki/control-plane/apiserver.key" in out and "pki/secure/apiserver.key" not in out


def agent_unit(out: dict[str, bytes], cloudconfig: str) -> str:
    config = yaml.safe_load(out[f"cloudconfig/{cloudconfig}"])
    found = [f["content"] for f in config["write_files"] if f["path"].endswith("agent.service")]
    return str(found[0])


@pytest.mark.parametrize("topology", ["stacked", "separate"])
def test_each_component_is_told_of_the_pki_files_it_reads(
    env: config.Environment, files: dict[str, bytes], topology: str
) -> None:
    """The node agent restarts a unit, or changes a static pod's manifest, when a PKI file it
    reads changes: render names those files, from the flags and kubeconfigs that read them."""
    out = render.bundle(dataclasses.replace(env, topology=topology), files)
    api_layer = "secure" if topology == "stacked" else "control-plane"

    def names(manifest: str) -> set[str]:
        found = re.search(rb'kubeplat.io/pki: "@PKI:([^@]*)@"', out[manifest])
        assert found, manifest
        return set(found.group(1).decode().split(","))

    apiserver = names(f"manifests/{api_layer}/kube-apiserver.yaml")
    assert {"apiserver.crt", "apiserver.key", "client-ca-bundle.crt", "etcd/ca.crt"} <= apiserver
    assert "etcd/server.crt" not in apiserver
    # Read through its kubeconfig, not a flag:
    assert "controller-manager.crt" in names(f"manifests/{api_layer}/kube-controller-manager.yaml")
    assert names(f"manifests/{api_layer}/kube-scheduler.yaml") == {
        "ca.crt", "scheduler.crt", "scheduler.key"
    }  # fmt: skip
    assert names("manifests/compute/kube-proxy.yaml") == {"ca.crt"}
    secure = agent_unit(out, "master")
    assert re.search(
        r"--reload etcd.service=etcd/ca.crt,etcd/peer.crt,etcd/peer.key,etcd/server.crt,"
        r"etcd/server.key ",
        secure,
    )
    assert "--pki-prefix example/pki/secure/" in secure and "--roll example/secure" in secure
    assert "--etcd-health https://127.0.0.1:2379/health" in secure
    assert ("--readyz" in secure) == (topology == "stacked")
    compute = agent_unit(out, "worker")
    assert "--reload kubelet.service=ca.crt " in compute and "etcd.service" not in compute
    assert "--report example/compute" in compute and "--roll" not in compute


@pytest.mark.parametrize("topology", ["stacked", "separate"])
def test_kubelet_serving_certificates_come_from_approved_csrs(
    env: config.Environment, files: dict[str, bytes], topology: str
) -> None:
    """Kubelets ask for their serving certificate (serverTLSBootstrap), the control plane runs
    the approver, and the API server checks kubelets with the kubelet CA bundle the bucket's
    common prefix holds (so every node, and each API server, gets it)."""
    out = render.bundle(dataclasses.replace(env, topology=topology), files)
    api_layer = "secure" if topology == "stacked" else "control-plane"
    cloudconfigs = {"secure": "master", "control-plane": "control-plane", "compute": "worker"}
    for layer, name in cloudconfigs.items():
        if f"cloudconfig/{name}" not in out:
            continue
        written = {
            f["path"]: f["content"]
            for f in yaml.safe_load(out[f"cloudconfig/{name}"])["write_files"]
        }
        kubelet = yaml.safe_load(written["/etc/kubeplat/kubelet-config.yaml"])
        assert kubelet["serverTLSBootstrap"] is True and kubelet["rotateCertificates"] is True
        node = json.loads(written["/etc/kubeplat/node.json"])
        approver = "/etc/systemd/system/kubeplat-csr-approver.service"
        runs = layer == api_layer
        assert (approver in written) == runs, layer
        assert ("kubeplat-csr-approver.service" in node["services"]) == runs, layer
        if runs:
            assert f"--environment {env.environment} " in written[approver]
        agent = written["/etc/systemd/system/kubeplat-agent.service"]
        assert "--kubelet-serving /var/lib/kubelet/pki/kubelet-server-current.pem" in agent
        assert "--ssh-user core" in agent
    apiserver = out[f"manifests/{api_layer}/kube-apiserver.yaml"].decode()
    flag = "--kubelet-certificate-authority=/etc/kubernetes/pki/kubelet-serving-ca.crt"
    assert flag in apiserver
    assert out["pki/common/kubelet-serving-ca.crt"] == files["kubelet-ca.crt"]
    rotating = pki.begin(env, files, ["kubelet-ca"], dt.datetime.now(dt.UTC)).files
    bundle = render.bundle(env, rotating)["pki/common/kubelet-serving-ca.crt"]
    assert bundle == rotating["kubelet-ca.crt"] + rotating["kubelet-ca.next.crt"]


def test_missing_template_value_is_a_clear_error(env: config.Environment) -> None:
    with pytest.raises(
        KubeplatError, match=re.escape("missing value in template partials/node/kubeconfig.yaml.j2")
    ):
        render._render("partials/node/kubeconfig.yaml.j2", {"environment": "x"})


def test_admin_kubeconfig(env: config.Environment, files: dict[str, bytes]) -> None:
    document = yaml.safe_load(render.admin_kubeconfig(env, files))
    assert document["clusters"][0]["cluster"]["server"] == "https://kube.example.example.internal"
    assert document["users"][0]["user"]["client-key-data"]


def test_render_cli_writes_layout_twice_identically(
    kubeplat, environments: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    assert kubeplat("render", "-e", "example", "--out", "one").code == 0
    result = kubeplat("render", "-e", "example", "--out", "two")
    assert result.code == 0, result.err
    one = {
        p.relative_to(tmp_path / "one"): p.read_bytes()
        for p in (tmp_path / "one").rglob("*")
        if p.is_file()
    }
    two = {
        p.relative_to(tmp_path / "two"): p.read_bytes()
        for p in (tmp_path / "two").rglob("*")
        if p.is_file()
    }
    assert one == two and len(one) > 40
    assert (tmp_path / "one" / "kubeconfig" / "admin.conf").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "one" / "pki" / "locked" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert "userdata/secure" in result.out


def test_render_into_a_file_is_refused(kubeplat, environments: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "afile").write_text("x")
    result = kubeplat("render", "-e", "example", "--out", "afile")
    assert result.code == 2  # click: not a directory
    assert "Traceback" not in result.err
