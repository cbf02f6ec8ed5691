"""The operating systems nodes may run, and what differs between them.

The node reads `/etc/os-release` and looks itself up here: package manager, package names,
where the CA bundle lives. An AMI of another operating system stops the bootstrap at its first
step with a message naming the supported ones (nothing is guessed).
"""

from __future__ import annotations

import shlex
from pathlib import Path


class Family:
    """One supported operating system."""

    def __init__(
        self,
        name: str,
        manager: str,
        packages: tuple[str, ...],
        ca_bundle: str,
    ) -> None:
        self.name = name  # as the environment file's node_os names it
        self.manager = manager  # apt or dnf
        self.packages = packages
        self.ca_bundle = ca_bundle

    def missing_command(self) -> list[str]:
        """The command that lists which of `packages` are not installed (one name a line)."""
        names = " ".join(shlex.quote(p) for p in self.packages)
        if self.manager == "apt":
            check = "dpkg-query -W -f='${db:Status-Abbrev}' %s 2>/dev/null | grep -q '^ii'"
        else:
            check = "rpm -q %s >/dev/null 2>&1"
        return ["sh", "-c", f'for p in {names}; do {check % "$p"} || echo "$p"; done']

    def install_command(self, packages: list[str]) -> list[list[str]]:
        """The commands that install `packages` (no prompt, no recommends)."""
        if self.manager == "apt":
            return [
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            ]
        return [["dnf", "install", "-y", "-q", "--setopt=install_weak_deps=False", *packages]]


# What every node needs beyond the image: conntrack, iptables and socat for the kubelet and
# kube-proxy, tar for nothing of ours (Python extracts archives) but for operators, and boto3
# for the node programs (the user-data stub installs it first, if the image lacks it).
_DEBIAN_LIKE = ("conntrack", "iptables", "socat", "python3-boto3", "ca-certificates")

FAMILIES: dict[tuple[str, str], Family] = {
    ("debian", "12"): Family(
        "debian-12", "apt", _DEBIAN_LIKE, "/etc/ssl/certs/ca-certificates.crt"
    ),
    ("ubuntu", "24.04"): Family(
        "ubuntu-24.04", "apt", _DEBIAN_LIKE, "/etc/ssl/certs/ca-certificates.crt"
    ),
    # Amazon Linux 2023: conntrack is conntrack-tools, iptables is iptables-nft; curl is never
    # installed (curl-minimal conflicts with it, and downloads are done in Python).
    ("amzn", "2023"): Family(
        "al2023",
        "dnf",
        ("conntrack-tools", "iptables-nft", "socat", "python3-boto3", "ca-certificates"),
        "/etc/pki/tls/certs/ca-bundle.crt",
    ),
}


def by_name(name: str) -> Family:
    """The family an environment's `node_os` names."""
    for family in FAMILIES.values():
        if family.name == name:
            return family
    raise KeyError(name)


def os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    """`/etc/os-release` as a mapping (quotes removed)."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            parts = shlex.split(value, comments=False, posix=True) or [""]
            found[key.strip()] = parts[0]
    return found


def detect(path: Path = Path("/etc/os-release")) -> Family | None:
    """This machine's family, or None when it is not a supported one."""
    release = os_release(path)
    return FAMILIES.get((release.get("ID", ""), release.get("VERSION_ID", "")))


def describe(path: Path = Path("/etc/os-release")) -> str:
    """How the machine names itself, for messages."""
    try:
        release = os_release(path)
    except OSError:
        return "an unknown operating system (no /etc/os-release)"
    return release.get("PRETTY_NAME") or f"{release.get('ID', '?')} {release.get('VERSION_ID', '')}"


def supported() -> str:
    """The supported families, for messages."""
    return ", ".join(f.name for f in FAMILIES.values())
