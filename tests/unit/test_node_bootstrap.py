"""The bootstrap's steps, executed in a temporary root with recorded stand-ins for the commands
they call (apt-get, dnf, dpkg-query, rpm, modprobe, systemctl): what a node would do, quickly.
The node-boot tier (tests/node) runs the same steps on a real Debian 12 under systemd."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace

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


# -- each step's other paths, and the program ---------------------------------------------------


def test_the_steps_of_each_kind_of_node_in_order(root: Path) -> None:
    worker = node(root)
    assert [(s.name, s.deadline_s) for s in worker.steps()] == [
        ("ssh", 0), ("os", 0), ("packages", 900), ("kernel", 30), ("binaries", 900),
        ("configure", 30), ("services", 600),
    ]  # fmt: skip
    member = node(root, roles=["etcd", "control-plane"], background=["kubeplat-addons.service"])
    found = {s.name: s for s in member.steps()}
    assert list(found) == ["ssh", "os", "packages", "kernel", "binaries", "configure", "etcd",
                           "services", "addons"]  # fmt: skip
    assert (found["etcd"].deadline_s, found["etcd"].max_backoff_s) == (1800, 30)
    assert found["addons"].deadline_s == 60


def test_ssh_keys_are_installed_or_the_reason_noted(root: Path) -> None:
    assert node(root).ssh() == "no node user"
    machine = node(root, ssh_user="core", pki_dir="/etc/kubernetes/pki")
    note = machine.ssh()  # no user in /etc/passwd yet, no keys: noted, not fatal
    assert note.startswith("not installed (no keys to install: ")
    assert note.endswith("); the agent tries again")
    (root / "etc/kubernetes/pki/ssh").mkdir(parents=True)
    (root / "etc/kubernetes/pki/ssh/authorized_keys").write_text("ssh-ed25519 AAAA op\n")
    (root / "home/core").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"core:x:{os.getuid()}:{os.getgid()}::/home/core:/bin/sh\n")
    assert machine.ssh() == "home/core/.ssh/authorized_keys: 1 key(s)"
    assert (root / "home/core/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA op\n"
    assert machine.ssh() == "already in place"


def test_packages_need_the_os_step_and_say_what_stayed_missing(root: Path) -> None:
    machine = node(root)
    with pytest.raises(steps.Permanent, match="the os step has not identified this machine"):
        machine.packages()
    machine.check_os()
    (root.parent / "bin/apt-get").write_text('#!/bin/sh\necho "apt-get $*" >> "$KP_ROOT/calls"\n')
    with pytest.raises(
        RuntimeError, match=r"^still missing after install: conntrack iptables socat$"
    ):
        machine.packages()


def test_binaries_say_which_were_installed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step's summary of `fetch.ensure` (whose download and sha256 check are tested in
    tests/unit/test_node_fetch.py): here it is a stand-in saying which it had to fetch."""
    from kubeplat.node import fetch

    asked: list[tuple[str, str]] = []

    def ensure(artifact: dict[str, str], region: str) -> bool:
        asked.append((artifact["name"], region))
        return artifact["name"] == "kubelet"

    monkeypatch.setattr(fetch, "ensure", ensure)
    machine = node(root, artifacts=[{"name": "kubelet"}, {"name": "containerd"}])
    assert machine.binaries() == "installed kubelet"
    assert asked == [("kubelet", "eu-west-1"), ("containerd", "eu-west-1")]
    monkeypatch.setattr(fetch, "ensure", lambda artifact, region: False)
    assert machine.binaries() == "all present"


def test_nothing_to_configure_without_a_kubelet(root: Path) -> None:
    assert node(root).configure() == "nothing to configure"


def test_the_etcd_step_waits_for_the_membership_unit(root: Path) -> None:
    note = node(root).etcd()
    assert calls(root) == ["systemctl start kubeplat-etcd-member.service"]
    assert note == "membership decided (journalctl -u kubeplat-etcd-member)"


def test_the_addons_are_started_not_waited_for(root: Path) -> None:
    machine = node(root, background=["kubeplat-addons.service", "kubeplat-roller.service"])
    assert machine.background() == "started kubeplat-addons.service, kubeplat-roller.service"
    assert calls(root) == [
        "systemctl start --no-block kubeplat-addons.service kubeplat-roller.service"
    ]


def never_starts(root: Path, state: str) -> None:
    """systemctl whose `start` leaves every unit `state`."""
    (root.parent / "bin/systemctl").write_text(
        '#!/bin/sh\necho "systemctl $*" >> "$KP_ROOT/calls"\n'
        f'[ "$1" = is-active ] && echo {state}\nexit 0\n'
    )


def test_a_failed_service_ends_the_step_and_is_reset_for_the_retry(root: Path) -> None:
    never_starts(root, "failed")
    with pytest.raises(RuntimeError, match=r"^not running: containerd.service, kubelet.service$"):
        node(root).services()
    assert calls(root)[-2:] == [
        "systemctl reset-failed containerd.service",
        "systemctl reset-failed kubelet.service",
    ]


def test_a_service_still_starting_after_two_minutes_ends_the_step(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    never_starts(root, "activating")
    clock = [0.0]
    pace = SimpleNamespace(  # the step's own clock only (not the time module subprocess uses)
        monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + 60)
    )
    monkeypatch.setattr(bootstrap, "time", pace)
    with pytest.raises(RuntimeError, match=r"^not running: containerd.service, kubelet.service$"):
        node(root).services()
    assert clock[0] == 180.0  # asked at 0, 60, 120 (not yet past), 180: past the 120 s
    assert not [c for c in calls(root) if "reset-failed" in c]  # nothing failed to reset


def test_a_command_that_fails_says_how_with_the_end_of_its_output(tmp_path: Path) -> None:
    failing = "printf 'one\\ntwo\\nthree\\nfour\\n' >&2; exit 3"
    with pytest.raises(RuntimeError) as raised:
        bootstrap._run(["sh", "-c", failing, "x"], timeout=10)
    assert str(raised.value) == f"sh -c {failing} exited 3: two | three | four"
    assert bootstrap._run(["sh", "-c", "echo out; exit 3"], timeout=10, check=False) == "out\n"
    with pytest.raises(RuntimeError, match=r"^sleep took more than 0s$"):
        bootstrap._run(["sleep", "5"], timeout=0.2)
    with pytest.raises(RuntimeError, match=r"^no-such-program-here is not installed$"):
        bootstrap._run(["no-such-program-here"], timeout=10)
    env = {"PATH": os.environ["PATH"], "ONLY": "this"}
    assert bootstrap._run(["sh", "-c", "echo $ONLY"], timeout=10, env=env) == "this\n"


def test_a_file_is_written_whole_and_only_when_it_changes(tmp_path: Path) -> None:
    target = tmp_path / "etc/kubernetes/kubelet-node.env"
    bootstrap._write(target, "A=1\n", 0o600)
    assert target.read_text() == "A=1\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    before = target.stat().st_ino
    target.chmod(0o666)
    bootstrap._write(target, "A=1\n", 0o644)  # the same text: the mode set, the file kept
    assert target.stat().st_ino == before and stat.S_IMODE(target.stat().st_mode) == 0o644
    bootstrap._write(target, "A=2\n", 0o600)  # replaced (a new inode), never half-written
    assert target.read_text() == "A=2\n" and target.stat().st_ino != before
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["kubelet-node.env"]


class RecordingS3:
    """The secrets bucket as the bootstrap writes its reports there (a RECORDING stand-in:
    moto runs in the integration tier, which boots whole nodes against it)."""

    def __init__(self) -> None:
        self.put: dict[str, bytes] = {}
        self.health: list[dict[str, object]] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:
        self.put[f"{Bucket}/{Key}"] = Body

    def get_paginator(self, name: str) -> object:
        return SimpleNamespace(paginate=lambda **_: [{"Contents": []}])

    def set_instance_health(self, **kwargs: object) -> None:
        self.health.append(kwargs)


@pytest.mark.parametrize("works", [True, False])
def test_the_program_runs_the_steps_and_publishes_its_record(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, works: bool
) -> None:
    """`kubeplat-node bootstrap` as its unit runs it, on the temporary root: its record (who,
    which layer, which configuration) saved and published after every step; a step that fails
    for good marks the instance unhealthy (replaced by its group) and the program exits 1."""
    from kubeplat.node import aws

    config = {
        "environment": "dev", "layer": "compute", "bucket": "kubeplat-dev-secrets",
        "prefix": "dev", "region": "eu-west-1", "node_os": "debian-12" if works else "al2023",
        "roles": ["worker"], "artifacts": [], "services": ["kubelet.service"],
    }  # fmt: skip
    (tmp_path / "node.json").write_text(json.dumps(config))
    s3 = RecordingS3()
    monkeypatch.setattr(aws, "client", lambda service, region: s3)

    class OnThisRoot(bootstrap.Bootstrap):
        def __init__(self, config: dict[str, object]) -> None:
            super().__init__(config, root=root)

    monkeypatch.setattr(bootstrap, "Bootstrap", OnThisRoot)
    meta = {"instance-id": "i-0abc", "placement/region": "eu-west-1",
            "local-ipv4": "10.0.1.5", "local-hostname": "ip-10-0-1-5"}  # fmt: skip
    status = tmp_path / "status.json"
    with imds_standin.serving(meta) as server:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        code = bootstrap.main(["--config", str(tmp_path / "node.json"), "--status", str(status)])
    record = json.loads(status.read_text())
    assert (record["environment"], record["layer"], record["instance"]) == (
        "dev",
        "compute",
        "i-0abc",
    )
    published = json.loads(s3.put["kubeplat-dev-secrets/dev/status/compute/i-0abc/bootstrap.json"])
    assert published == record
    if works:
        assert code == 0 and record["state"] == "done"
        assert [s["name"] for s in record["steps"]][-1] == "services"
        assert s3.health == []
    else:
        assert code == 1 and record["state"] == "failed"
        assert record["error"].startswith("os: this image runs debian-12 but the environment says")
        assert record["health"].startswith("marked unhealthy (os: this image runs debian-12")
        assert s3.health == [{"InstanceId": "i-0abc", "HealthStatus": "Unhealthy",
                              "ShouldRespectGracePeriod": False}]  # fmt: skip
