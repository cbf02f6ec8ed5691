"""The bootstrap's steps, executed in a temporary root with recorded stand-ins for the commands
they call (apt-get, dnf, dpkg-query, rpm, modprobe, systemctl): what a node would do, quickly.
The node-boot tier (tests/node) runs the same steps on a real Debian 12 under systemd."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from kubeplat.node import bootstrap, steps
from tests import imds_standin

STANDINS = {
    # A package database: one name a line in $KP_ROOT/installed.
    "dpkg-query": 'p="$(eval echo \\${$#})"; grep -qx "$p" "$KP_ROOT/installed" && printf "ii "',
    "rpm": 'grep -qx "$2" "$KP_ROOT/installed" || exit 1',
    "apt-get": 'if [ "$1" = install ]; then shift; for p; do case "$p" in -*) ;; *) echo "$p" >> "$KP_ROOT/installed";; esac; done; fi',
    "dnf": 'shift; for p; do case "$p" in -*) ;; *) echo "$p" >> "$KP_ROOT/installed";; esac; done',
    "modprobe": '[ "$1" = br_netfilter ] || exit 0; mkdir -p "$KP_ROOT/proc/sys/net/bridge"; for k in bridge-nf-call-iptables bridge-nf-call-ip6tables; do echo 0 > "$KP_ROOT/proc/sys/net/bridge/$k"; done',
    "systemctl": 'case "$1" in is-active) cat "$KP_ROOT/state-$2" 2>/dev/null || echo inactive;; start) shift; for u; do case "$u" in -*) ;; *) echo active > "$KP_ROOT/state-$u";; esac; done;; esac',
}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine: /etc/os-release, /proc, and stand-ins that log every call."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / "proc/filesystems").write_text("nodev\tsysfs\nnodev\tproc\n")
    (root / "proc/sys/net/ipv4/ip_forward").write_text("0\n")
    (root / "installed").write_text("ca-certificates\npython3-boto3\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in STANDINS.items():
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "$KP_ROOT/calls"\n{body}\nexit 0\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("KP_ROOT", str(root))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return root


def calls(root: Path) -> list[str]:
    path = root / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def node(root: Path, node_os: str = "debian-12", **extra: object) -> bootstrap.Bootstrap:
    config = {
        "environment": "dev",
        "layer": "compute",
        "region": "eu-west-1",
        "node_os": node_os,
        "roles": ["worker"],
        "artifacts": [],
        "services": ["containerd.service", "kubelet.service"],
        **extra,
    }
    return bootstrap.Bootstrap(config, root=root)


def test_packages_installs_what_is_missing_once(root: Path) -> None:
    machine = node(root)
    assert machine.check_os() == "debian-12"
    note = machine.packages()
    assert note == "installed conntrack iptables socat"
    installs = [c for c in calls(root) if c.startswith("apt-get")]
    assert installs == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends conntrack iptables socat",
    ]
    assert machine.packages() == "all present"  # a reboot, a retry: nothing to do
    assert not any(c.startswith("apt-get") for c in calls(root))


def test_amazon_linux_uses_dnf_and_its_own_names(root: Path) -> None:
    (root / "etc/os-release").write_text('ID="amzn"\nVERSION_ID="2023"\n')
    machine = node(root, "al2023")
    machine.check_os()
    machine.packages()
    installs = [c for c in calls(root) if c.startswith("dnf")]
    assert installs == [
        "dnf install -y -q --setopt=install_weak_deps=False conntrack-tools iptables-nft socat"
    ]


def test_an_image_of_another_system_stops_at_once_with_both_names(root: Path) -> None:
    (root / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    with pytest.raises(
        steps.Permanent,
        match=re.escape('runs ubuntu-24.04 but the environment says node_os = "debian-12"'),
    ):
        node(root).check_os()
    (root / "etc/os-release").write_text(
        'ID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40"\n'
    )
    with pytest.raises(
        steps.Permanent, match=re.escape("Fedora Linux 40, which kubeplat does not support")
    ):
        node(root).check_os()


def test_kernel_loads_only_what_is_missing_and_sets_forwarding(root: Path) -> None:
    machine = node(root)
    note = machine.kernel()
    assert calls(root) == ["modprobe overlay", "modprobe br_netfilter"]
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "1\n"
    assert (root / "proc/sys/net/bridge/bridge-nf-call-iptables").read_text() == "1\n"
    assert "overlay loaded" in note and "net.ipv4.ip_forward=1" in note
    # Built into the kernel, or loaded before: nothing is loaded, nothing rewritten.
    (root / "proc/filesystems").write_text("nodev\toverlay\n")
    assert machine.kernel() == "already set"
    assert calls(root) == []


@pytest.mark.parametrize("resolved", [True, False])
def test_configure_points_the_kubelet_at_the_real_resolver_list(root: Path, resolved: bool) -> None:
    if resolved:
        (root / "run/systemd/resolve").mkdir(parents=True)
        (root / "run/systemd/resolve/resolv.conf").write_text("nameserver 10.0.0.2\n")
    (root / "etc/kubeplat").mkdir()
    (root / "etc/kubeplat/kubelet-config.yaml").write_text('resolvConf: "@RESOLV_CONF@"\n')
    template = "tokenFile: /etc/kubernetes/pki/bootstrap-token\n"
    (root / "etc/kubeplat/bootstrap-kubelet.conf").write_text(template)
    kubelet = {
        "config_template": "/etc/kubeplat/kubelet-config.yaml",
        "config": "/var/lib/kubelet/config.yaml",
        "bootstrap_template": "/etc/kubeplat/bootstrap-kubelet.conf",
        "bootstrap": "/etc/kubernetes/bootstrap-kubelet.conf",
    }
    node(root, kubelet=kubelet).configure()
    want = "/run/systemd/resolve/resolv.conf" if resolved else "/etc/resolv.conf"
    assert (root / "var/lib/kubelet/config.yaml").read_text() == f'resolvConf: "{want}"\n'
    written = root / "etc/kubernetes/bootstrap-kubelet.conf"
    # It names the token file the agent keeps in step (a rotated token is the one it uses).
    assert written.read_text() == template
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_services_are_started_and_waited_for(root: Path) -> None:
    machine = node(root)
    assert machine.services() == "running: containerd.service, kubelet.service"
    assert calls(root)[:2] == [
        "systemctl daemon-reload",
        "systemctl start --no-block containerd.service kubelet.service",
    ]


def test_a_whole_bootstrap_records_every_step(root: Path, tmp_path: Path) -> None:
    status = steps.Status(tmp_path / "status.json", {"instance": "i-1"})
    machine = node(root, node_os="debian-12")
    plan = [s for s in machine.steps() if s.name in ("os", "packages", "kernel", "services")]
    assert steps.run_steps(plan, status)
    record = json.loads((tmp_path / "status.json").read_text())
    assert [(s["name"], s["state"]) for s in record["steps"]] == [
        ("os", "done"),
        ("packages", "done"),
        ("kernel", "done"),
        ("services", "done"),
    ]


def test_configure_names_the_node_after_its_instance(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet registers as the instance's private DNS name, with its private address and
    its provider id (what the AWS cloud controller manager and the EBS CSI driver find it by),
    read from the instance metadata (an IMDSv2 stand-in here)."""
    (root / "etc/kubeplat").mkdir()
    template = 'resolvConf: "@RESOLV_CONF@"\nproviderID: "@PROVIDER_ID@"\n'
    (root / "etc/kubeplat/kubelet-config.yaml").write_text(template)
    kubelet = {
        "config_template": "/etc/kubeplat/kubelet-config.yaml",
        "config": "/var/lib/kubelet/config.yaml",
        "node_env": "/etc/kubernetes/kubelet-node.env",
    }
    meta = {
        "instance-id": "i-0abc",
        "placement/region": "eu-west-1",
        "placement/availability-zone": "eu-west-1b",
        "local-ipv4": "10.0.144.7",
        "local-hostname": "ip-10-0-144-7.eu-west-1.compute.internal",
    }
    with imds_standin.serving(meta) as server:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        note = node(root, kubelet=kubelet).configure()
    assert "node ip-10-0-144-7.eu-west-1.compute.internal (aws:///eu-west-1b/i-0abc)" in note
    config = (root / "var/lib/kubelet/config.yaml").read_text()
    assert 'providerID: "aws:///eu-west-1b/i-0abc"' in config
    assert (root / "etc/kubernetes/kubelet-node.env").read_text() == (
        'KUBELET_NODE_ARGS="--hostname-override=ip-10-0-144-7.eu-west-1.compute.internal '
        '--node-ip=10.0.144.7"\n'
    )


def test_the_account_comes_from_the_instance_identity_document(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What apply-addons gives the cluster as the account its addons' roles live in."""
    from kubeplat.node import cli

    with imds_standin.serving({}) as server:
        document = json.dumps({"accountId": "210987654321", "region": "eu-west-1"})
        server.dynamic["instance-identity/document"] = document
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        assert cli.main(["account"]) == 0
        assert capsys.readouterr().out == "210987654321\n"
    with imds_standin.serving({}) as server:  # no document: one line, exit 1
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        assert cli.main(["account"]) == 1
        assert "kubeplat-node account: no identity document" in capsys.readouterr().err
