"""The bootstrap's details a node operator would notice: how long each command may take before
the step gives up on it, the environment the package manager runs in, the exact notes of each
step, the modes of the files it writes, the program's own options, journal lines and record.

Same temporary root and recorded stand-ins as tests/unit/test_node_bootstrap.py; a spy around
subprocess.run keeps the arguments of every command the bootstrap runs (and still runs it)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kubeplat.node import aws, bootstrap, steps
from tests import imds_standin
from tests.unit import test_node_bootstrap as base
from tests.unit.test_node_bootstrap import (
    RecordingS3,
    calls,
    node,
)

# test_node_bootstrap.py's fixtures, by name.
root = base.root

Ran = list[tuple[list[str], dict[str, Any]]]


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> Ran:
    """Every command run through subprocess.run, with its keyword arguments; still run."""
    seen: Ran = []
    real = subprocess.run

    def spy(command: list[str], **kwargs: Any) -> Any:
        seen.append((list(command), kwargs))
        return real(command, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    return seen


def timeouts(ran: Ran) -> list[tuple[str, Any]]:
    return [(" ".join(command), kwargs.get("timeout")) for command, kwargs in ran]


# -- each command's time limit --------------------------------------------------------------------


def test_package_queries_may_take_two_minutes_and_installs_fifteen(root: Path, ran: Ran) -> None:
    machine = node(root)
    machine.check_os()
    machine.packages()
    # The query is a shell loop over dpkg-query, once before and once after the install.
    assert [(c.split()[0], t) for c, t in timeouts(ran)] == [
        ("sh", 120),
        ("apt-get", 900),  # update
        ("apt-get", 900),  # install
        ("sh", 120),
    ]


def test_the_package_manager_runs_without_questions_in_the_node_environment(
    root: Path, ran: Ran
) -> None:
    machine = node(root)
    machine.check_os()
    machine.packages()
    installs = [kwargs["env"] for command, kwargs in ran if command[0] == "apt-get"]
    assert len(installs) == 2
    for env in installs:
        assert env["DEBIAN_FRONTEND"] == "noninteractive"
        assert env["PATH"] == os.environ["PATH"]  # the rest of the environment kept


def test_the_package_manager_sees_debian_frontend_noninteractive(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What apt-get itself finds in its environment (debconf reads the exact name and value),
    whatever the unit's environment says."""
    monkeypatch.setenv("DEBIAN_FRONTEND", "readline")
    stand_in = root.parent / "bin/apt-get"
    stand_in.write_text(
        '#!/bin/sh\necho "apt-get $* [$DEBIAN_FRONTEND]" >> "$KP_ROOT/calls"\n'
        'if [ "$1" = install ]; then shift; for p; do case "$p" in -*) ;; '
        '*) echo "$p" >> "$KP_ROOT/installed";; esac; done; fi\n'
    )
    machine = node(root)
    machine.check_os()
    machine.packages()
    assert [c for c in calls(root) if c.startswith("apt-get")] == [
        "apt-get update -q [noninteractive]",
        "apt-get install -y -q --no-install-recommends conntrack iptables socat [noninteractive]",
    ]


def test_modprobe_may_take_thirty_seconds(root: Path, ran: Ran) -> None:
    node(root).kernel()
    assert timeouts(ran) == [("modprobe overlay", 30), ("modprobe br_netfilter", 30)]


def test_the_etcd_step_waits_at_most_1700_seconds_for_the_membership_unit(
    root: Path, ran: Ran
) -> None:
    node(root).etcd()
    # Less than the step's own 1800 s deadline, so the step records why it ended.
    assert timeouts(ran) == [("systemctl start kubeplat-etcd-member.service", 1700)]


def test_services_commands_are_bounded(root: Path, ran: Ran) -> None:
    node(root).services()
    assert timeouts(ran)[:2] == [
        ("systemctl daemon-reload", 60),
        ("systemctl start --no-block containerd.service kubelet.service", 60),
    ]
    asked = timeouts(ran)[2:]
    assert asked and all(c.startswith("systemctl is-active ") and t == 30 for c, t in asked)


def test_starting_the_addons_is_bounded(root: Path, ran: Ran) -> None:
    node(root, background=["kubeplat-addons.service"]).background()
    assert timeouts(ran) == [("systemctl start --no-block kubeplat-addons.service", 60)]


def test_resetting_a_failed_unit_is_bounded(root: Path, ran: Ran) -> None:
    (root.parent / "bin/systemctl").write_text(
        '#!/bin/sh\necho "systemctl $*" >> "$KP_ROOT/calls"\n'
        '[ "$1" = is-active ] && echo failed\nexit 0\n'
    )
    with pytest.raises(RuntimeError):
        node(root, services=["kubelet.service"]).services()
    assert ("systemctl reset-failed kubelet.service", 30) in timeouts(ran)


# -- systemctl as it really answers ---------------------------------------------------------------


def real_systemctl(root: Path, state: str, reset_fails: bool = False) -> None:
    """systemctl that, like the real one, exits 3 from `is-active` for a unit not active; and
    whose `reset-failed` may fail too."""
    reset = "exit 1" if reset_fails else "exit 0"
    (root.parent / "bin/systemctl").write_text(
        '#!/bin/sh\necho "systemctl $*" >> "$KP_ROOT/calls"\n'
        f'case "$1" in is-active) echo {state}; exit 3;; reset-failed) echo nope >&2; {reset};; '
        "esac\nexit 0\n"
    )


def test_a_failed_unit_is_reported_though_is_active_exits_non_zero(root: Path) -> None:
    real_systemctl(root, "failed")
    with pytest.raises(RuntimeError, match=r"^not running: kubelet.service$"):
        node(root, services=["kubelet.service"]).services()


def test_a_reset_that_fails_does_not_hide_which_unit_failed(root: Path) -> None:
    real_systemctl(root, "failed", reset_fails=True)
    with pytest.raises(RuntimeError, match=r"^not running: kubelet.service$"):
        node(root, services=["kubelet.service"]).services()
    assert calls(root)[-1] == "systemctl reset-failed kubelet.service"


def test_services_are_asked_every_second_for_two_minutes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(bootstrap, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    monkeypatch.setattr(bootstrap, "_state", lambda unit: "activating")
    with pytest.raises(RuntimeError, match=r"^not running: kubelet.service$"):
        node(root, services=["kubelet.service"]).services()
    assert set(pauses) == {1}
    assert clock[0] == 121.0  # the first question after 120 s ends it


# -- each step's note -----------------------------------------------------------------------------


def test_the_kernel_note_lists_every_change_in_order(root: Path) -> None:
    assert node(root).kernel() == (
        "overlay loaded, br_netfilter loaded, net.bridge.bridge-nf-call-iptables=1, "
        "net.bridge.bridge-nf-call-ip6tables=1, net.ipv4.ip_forward=1"
    )


def test_binaries_name_every_one_installed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubeplat.node import fetch

    monkeypatch.setattr(fetch, "ensure", lambda artifact, region: True)
    machine = node(root, artifacts=[{"name": "kubelet"}, {"name": "containerd"}])
    assert machine.binaries() == "installed kubelet containerd"


def test_packages_without_the_os_step_say_exactly_so(root: Path) -> None:
    with pytest.raises(steps.Permanent) as raised:
        node(root).packages()
    assert str(raised.value) == "the os step has not identified this machine"


def test_configure_writes_the_kubelet_files_world_readable_and_says_what_it_did(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "etc/kubeplat").mkdir()
    (root / "etc/kubeplat/kubelet-config.yaml").write_text('resolvConf: "@RESOLV_CONF@"\n')
    (root / "etc/kubeplat/bootstrap-kubelet.conf").write_text("tokenFile: t\n")
    kubelet = {
        "config_template": "/etc/kubeplat/kubelet-config.yaml",
        "config": "/var/lib/kubelet/config.yaml",
        "node_env": "/etc/kubernetes/kubelet-node.env",
        "bootstrap_template": "/etc/kubeplat/bootstrap-kubelet.conf",
        "bootstrap": "/etc/kubernetes/bootstrap-kubelet.conf",
    }
    meta = {
        "instance-id": "i-0abc",
        "placement/region": "eu-west-1",
        "placement/availability-zone": "eu-west-1b",
        "local-ipv4": "10.0.144.7",
        "local-hostname": "ip-10-0-144-7",
    }
    with imds_standin.serving(meta) as server:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        note = node(root, kubelet=kubelet).configure()
    assert note == (
        "kubelet resolvConf /etc/resolv.conf, node ip-10-0-144-7 (aws:///eu-west-1b/i-0abc), "
        "bootstrap kubeconfig"
    )
    for written in ("var/lib/kubelet/config.yaml", "etc/kubernetes/kubelet-node.env"):
        assert stat.S_IMODE((root / written).stat().st_mode) == 0o644, written


def test_a_secret_file_is_never_readable_by_others_even_before_its_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is created with the mode: between its creation and the final chmod a
    0600 file (the bootstrap kubeconfig) is never group- or world-readable."""
    modes: list[int] = []
    real_chmod = os.chmod

    def chmod(path: Any, mode: int) -> None:
        modes.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", chmod)  # the module bootstrap chmods with
    old = os.umask(0o022)
    try:
        bootstrap._write(tmp_path / "secret.conf", "token\n", 0o600)
    finally:
        os.umask(old)
    assert modes == [0o600]


def test_a_path_is_placed_under_the_root_whatever_its_first_letter(root: Path) -> None:
    machine = node(root)
    assert machine.path("/X11/xorg.conf") == root / "X11/xorg.conf"
    assert machine.path("/etc/kubeplat") == root / "etc/kubeplat"


# -- ssh keys: where the PKI is -------------------------------------------------------------------


def test_ssh_keys_are_read_from_the_default_pki_folder(root: Path) -> None:
    note = node(root, ssh_user="core").ssh()
    assert f"no keys to install: {root}/etc/kubernetes/pki/ssh/authorized_keys:" in note


def test_ssh_keys_are_read_from_the_configured_pki_folder(root: Path) -> None:
    note = node(root, ssh_user="core", pki_dir="/opt/pki").ssh()
    assert f"no keys to install: {root}/opt/pki/ssh/authorized_keys:" in note


def test_each_step_runs_its_own_function(root: Path) -> None:
    member = node(root, roles=["etcd"], background=["kubeplat-addons.service"])
    found = {s.name: s.run for s in member.steps()}
    assert found["etcd"] == member.etcd
    assert found["addons"] == member.background
    assert found["services"] == member.services


# -- the program ----------------------------------------------------------------------------------


def redirected(root: Path) -> Any:
    """pathlib.Path for bootstrap.main: every absolute path lands under `root`."""

    def path(*parts: Any) -> Path:
        found = Path(*parts)
        return root / str(found).lstrip("/") if found.is_absolute() else found

    return path


def run_program(
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    digest: str | None,
) -> tuple[int, RecordingS3]:
    config = {
        "environment": "dev", "layer": "compute", "bucket": "kubeplat-dev-secrets",
        "prefix": "dev", "region": "eu-west-1", "node_os": "debian-12",
        "roles": ["worker"], "artifacts": [], "services": ["kubelet.service"],
    }  # fmt: skip
    (tmp_path / "node.json").write_text(json.dumps(config))
    monkeypatch.setattr(bootstrap, "CONFIG", tmp_path / "node.json")
    monkeypatch.setattr(bootstrap, "Path", redirected(root))
    if digest is not None:
        (root / "var/lib/kubeplat").mkdir(parents=True)
        (root / "var/lib/kubeplat/config-sha256").write_text(digest + "\n")
    s3 = RecordingS3()
    monkeypatch.setattr(aws, "client", lambda service, region: s3)

    class OnThisRoot(bootstrap.Bootstrap):
        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config, root=root)

    monkeypatch.setattr(bootstrap, "Bootstrap", OnThisRoot)
    meta = {"instance-id": "i-0abc", "placement/region": "eu-west-1",
            "local-ipv4": "10.0.1.5", "local-hostname": "ip-10-0-1-5"}  # fmt: skip
    with imds_standin.serving(meta) as server:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url)
        code = bootstrap.main(argv)
    return code, s3


def test_the_program_reads_its_defaults_and_records_the_configuration_digest(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run as its unit runs it (no option): the configuration from /etc/kubeplat/node.json, the
    record in /var/lib/kubeplat/status.json with the digest of the rendered configuration."""
    code, s3 = run_program(root, tmp_path, monkeypatch, [], digest="ab12cd")
    assert code == 0
    record = json.loads((root / "var/lib/kubeplat/status.json").read_text())
    assert record["config_sha256"] == "ab12cd"
    assert json.loads(s3.put["kubeplat-dev-secrets/dev/status/compute/i-0abc/bootstrap.json"]) == (
        record
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "kubeplat: bootstrap of i-0abc (compute layer) starting"
    assert lines[-1] == "kubeplat: bootstrap done"


def test_without_a_digest_file_the_record_has_an_empty_digest(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative path (the test's directory): the program's paths are redirected under root.
    code, _ = run_program(root, tmp_path, monkeypatch, ["--status", "status.json"], digest=None)
    assert code == 0
    assert json.loads((tmp_path / "status.json").read_text())["config_sha256"] == ""


def test_the_program_names_itself_in_its_usage_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as raised:
        bootstrap.main(["--no-such-option"])
    assert raised.value.code == 2
    assert capsys.readouterr().err.startswith("usage: kubeplat-node bootstrap [-h] [--config ")
    with pytest.raises(SystemExit):
        bootstrap.main(["--help"])
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: kubeplat-node bootstrap [-h]")
    assert "The node's bootstrap: every boot, bring this instance to what its layer" in help_text
