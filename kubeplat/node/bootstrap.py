"""The node's bootstrap: every boot, bring this instance to what its layer needs.

Run by `kubeplat-bootstrap.service` (the one unit the user-data stub enables) on the first
boot and on every reboot. Each step checks before it changes, so a rerun is quick and safe:

  ssh       the node user's authorized_keys from the PKI (first: a node whose bootstrap fails
            later can still be looked at; a failure here is noted, not fatal: the agent retries)
  os        the image is the operating system the environment names, and a supported one
  packages  the family's packages (conntrack, iptables, socat, boto3…), installed if missing
  kernel    overlay and br_netfilter present; forwarding and bridge netfilter switched on
  binaries  every pinned binary present with its pinned sha256 (`fetch`)
  configure files that depend on this machine (kubelet's resolv.conf, the bootstrap token)
  etcd      (secure layer) the membership unit has decided how this member starts
  services  containerd, kubelet, etcd, the agent: started, and running
  addons    (control plane) the addon service started in the background, not waited for

A step that fails is retried until its deadline; a step that cannot succeed ends the
bootstrap, which then publishes its status and asks to be replaced (`health`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from . import aws, fetch, health, osfamily, sshkeys
from .steps import Permanent, Status, Step, run_steps, say

CONFIG = Path("/etc/kubeplat/node.json")
SYSCTLS = {
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/bridge/bridge-nf-call-ip6tables": "1",
    "net/ipv4/ip_forward": "1",
}


class Bootstrap:
    """The steps of one node, from its rendered configuration (`/etc/kubeplat/node.json`)."""

    def __init__(self, config: dict[str, Any], root: Path = Path("/")) -> None:
        self.config = config
        self.root = root
        self.family: osfamily.Family | None = None

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def steps(self) -> list[Step]:
        roles = self.config["roles"]
        found = [
            Step("ssh", self.ssh, deadline_s=0),
            Step("os", self.check_os, deadline_s=0),
            Step("packages", self.packages, deadline_s=900),
            Step("kernel", self.kernel, deadline_s=30),
            Step("binaries", self.binaries, deadline_s=900),
            Step("configure", self.configure, deadline_s=30),
        ]
        if "etcd" in roles:
            found.append(Step("etcd", self.etcd, deadline_s=1800, max_backoff_s=30))
        found.append(Step("services", self.services, deadline_s=600))
        if self.config.get("background"):
            found.append(Step("addons", self.background, deadline_s=60))
        return found

    def ssh(self) -> str:
        user = self.config.get("ssh_user")
        if not user:
            return "no node user"
        pki = self.path(self.config.get("pki_dir", "/etc/kubernetes/pki"))
        try:
            done = sshkeys.install(pki, user, self.root)
        except (RuntimeError, OSError) as exc:
            return f"not installed ({exc}); the agent tries again"
        return done or "already in place"

    def check_os(self) -> str:
        release = self.path("/etc/os-release")
        family = osfamily.detect(release)
        wanted = self.config["node_os"]
        if family is None:
            raise Permanent(
                f"this image runs {osfamily.describe(release)}, which kubeplat does not support "
                f"(supported: {osfamily.supported()}); set node_os or coreos_image"
            )
        if family.name != wanted:
            raise Permanent(
                f"this image runs {family.name} but the environment says node_os = "
                f'"{wanted}"; make them agree'
            )
        self.family = family
        return family.name

    def packages(self) -> str:
        family = self.family
        if family is None:
            raise Permanent("the os step has not identified this machine")
        listed = _run(family.missing_command(), timeout=120)
        missing = listed.split()
        if not missing:
            return "all present"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in family.install_command(missing):
            _run(command, timeout=900, env=env)
        still = _run(family.missing_command(), timeout=120).split()
        if still:
            raise RuntimeError(f"still missing after install: {' '.join(still)}")
        return "installed " + " ".join(missing)

    def kernel(self) -> str:
        notes = []
        if "overlay" not in self.path("/proc/filesystems").read_text():
            _run(["modprobe", "overlay"], timeout=30)
            notes.append("overlay loaded")
        if not self.path("/proc/sys/net/bridge").is_dir():
            _run(["modprobe", "br_netfilter"], timeout=30)
            notes.append("br_netfilter loaded")
        for key, value in SYSCTLS.items():
            target = self.path("/proc/sys") / key
            if target.read_text().strip() != value:
                target.write_text(value + "\n")
                notes.append(f"{key.replace('/', '.')}={value}")
        return ", ".join(notes) or "already set"

    def binaries(self) -> str:
        region = self.config["region"]
        changed = [a["name"] for a in self.config["artifacts"] if fetch.ensure(a, region)]
        return ("installed " + " ".join(changed)) if changed else "all present"

    def configure(self) -> str:
        done = []
        kubelet = self.config.get("kubelet")
        if kubelet:
            # Where systemd-resolved runs, /etc/resolv.conf names its local stub (127.0.0.53),
            # which pods cannot reach: CoreDNS would forward to itself. The real list is here.
            resolved = self.path("/run/systemd/resolve/resolv.conf")
            resolv = "/run/systemd/resolve/resolv.conf" if resolved.exists() else "/etc/resolv.conf"
            template = self.path(kubelet["config_template"]).read_text()
            template = template.replace("@RESOLV_CONF@", resolv)
            done.append(f"kubelet resolvConf {resolv}")
            if kubelet.get("node_env"):
                # The node's name is the instance's private DNS name, its address the private
                # one, its provider id the instance's: what the AWS cloud controller manager
                # and the EBS CSI driver find the instance by.
                me = aws.Identity.read()
                template = template.replace("@PROVIDER_ID@", me.provider_id)
                args = f"--hostname-override={me.hostname} --node-ip={me.private_ip}"
                _write(self.path(kubelet["node_env"]), f'KUBELET_NODE_ARGS="{args}"\n', 0o644)
                done.append(f"node {me.hostname} ({me.provider_id})")
            _write(self.path(kubelet["config"]), template, 0o644)
            if kubelet.get("bootstrap_template"):
                # It names the token file (tokenFile), which the agent keeps in step.
                text = self.path(kubelet["bootstrap_template"]).read_text()
                _write(self.path(kubelet["bootstrap"]), text, 0o600)
                done.append("bootstrap kubeconfig")
        return ", ".join(done) or "nothing to configure"

    def etcd(self) -> str:
        # The membership program is a unit of its own, restarted with back-off; it returns
        # once it has decided how this member starts (it may wait for the group, another
        # member's join or quorum, saying why in its journal).
        _run(["systemctl", "start", "kubeplat-etcd-member.service"], timeout=1700)
        return "membership decided (journalctl -u kubeplat-etcd-member)"

    def services(self) -> str:
        units = list(self.config["services"])
        _run(["systemctl", "daemon-reload"], timeout=60)
        _run(["systemctl", "start", "--no-block", *units], timeout=60)
        deadline = time.monotonic() + 120
        waiting = units
        while waiting:
            waiting = [u for u in units if _state(u) != "active"]
            if not waiting:
                break
            failed = [u for u in waiting if _state(u) == "failed"]
            if failed or time.monotonic() > deadline:
                for unit in failed:
                    _run(["systemctl", "reset-failed", unit], timeout=30, check=False)
                raise RuntimeError("not running: " + ", ".join(failed or waiting))
            time.sleep(1)
        return "running: " + ", ".join(units)

    def background(self) -> str:
        units = list(self.config["background"])
        _run(["systemctl", "start", "--no-block", *units], timeout=60)
        return "started " + ", ".join(units)


def _state(unit: str) -> str:
    answer = subprocess.run(
        ["systemctl", "is-active", unit], capture_output=True, text=True, timeout=30, check=False
    )
    return answer.stdout.strip()


def _run(
    command: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> str:
    """Run a command; its stdout. A failure raises with the end of its output."""
    try:
        answer = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{command[0]} took more than {timeout:.0f}s") from None
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} is not installed") from None
    if check and answer.returncode != 0:
        tail = (answer.stderr or answer.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"{' '.join(command[:3])} exited {answer.returncode}: {' | '.join(tail)}"
        )
    return answer.stdout


def _write(path: Path, text: str, mode: int) -> None:
    """Write a file atomically with `mode`, only when its content changes."""
    if path.exists() and path.read_text() == text:
        os.chmod(path, mode)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.kubeplat-new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeplat-node bootstrap", description=__doc__)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--status", type=Path, default=Path("/var/lib/kubeplat/status.json"))
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    identity = aws.Identity.read()
    reporter = health.Reporter(config["bucket"], config["prefix"], config["layer"], identity)
    status = Status(
        args.status,
        {
            "environment": config["environment"],
            "layer": config["layer"],
            "instance": identity.instance_id,
            "config_sha256": _config_digest(),
        },
    )
    status.on_save = lambda data: reporter.publish("bootstrap", data)
    say(f"bootstrap of {identity.instance_id} ({config['layer']} layer) starting")
    if run_steps(Bootstrap(config).steps(), status):
        say("bootstrap done")
        return 0
    status.data["health"] = reporter.failed(str(status.data.get("error")))
    status.save()
    return 1


def _config_digest() -> str:
    try:
        return Path("/var/lib/kubeplat/config-sha256").read_text().strip()
    except OSError:
        return ""
