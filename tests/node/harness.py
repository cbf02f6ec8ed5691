"""Boot simulated EC2 instances as Debian 12 systemd containers, for tests of the node code.

A `World` is one network namespace holding a bridge (the VPC), an instance metadata service on
169.254.169.254, the VPC resolver, TCP relays to servers the test runs on loopback, and file
servers. `World.boot` starts a `Node`: a systemd-nspawn container on an overlay of a cached
Debian 12 root filesystem (`rootfs`), in a network namespace of its own joined to the bridge,
whose cloud-init fetches its user data from the metadata service as on EC2.

Everything the harness creates carries a random per-run prefix (`kpt` + 4 hex digits) and is
removed by name when the world closes, also on failure: namespaces, mounts, cgroups, containers
and the scratch directory under /var/tmp/kp-harness. The host's own network is never touched:
all addresses live in the namespaces created here. Needs root, systemd-nspawn, nsenter, ip,
overlayfs and (for the first build) debootstrap; `missing_prerequisites` says what is missing.
Facts about this machine behind the choices: /work/shared/NODE-TIER-NOTES.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

SUITE = "bookworm"
PACKAGES = (
    "systemd,systemd-sysv,dbus,cloud-init,python3-boto3,python3-cffi-backend,iproute2,"
    "ca-certificates,curl,conntrack,iptables,socat,tar,systemd-resolved,procps,openssh-server"
)
# Bump when the image configuration below changes meaning without changing its text.
IMAGE_VERSION = 1
# The test AMI's own configuration, as an image builder would bake it in.
IMAGE_FILES = {
    # A container has no DMI that says "AWS", so cloud-init must be told; it then speaks
    # IMDSv1. Networking is static (there is no DHCP server in a World): cloud-init must not
    # render its DHCP configuration over the node's. C.UTF-8 needs no locale-gen on minbase.
    "etc/cloud/cloud.cfg.d/90-kubeplat-test-image.cfg": (
        "datasource_list: [Ec2, None]\n"
        "datasource:\n"
        "  Ec2:\n"
        "    strict_id: false\n"
        "    metadata_urls: ['http://169.254.169.254']\n"
        "    max_wait: 60\n"
        "    timeout: 5\n"
        "network: {config: disabled}\n"
        "locale: C.UTF-8\n"
    ),
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/hostname": "localhost\n",
    # An AMI ships no machine id: each node gets its own.
    "etc/machine-id": "",
}
IMAGE_ENABLE = ("systemd-networkd.service", "systemd-resolved.service")
# Nothing is masked: a bare boot of this image ends "running" with no failed unit (asserted in
# test_harness.py). systemd-sysctl.service skips itself in a container (its condition wants
# /proc/sys writable), so Debian's sysctl.d files stay; only `sysctl --system` fails there.

CACHE_ROOT = Path("/var/cache/kubeplat-tests")
SCRATCH = Path("/var/tmp/kp-harness")
IMDS_IP = "169.254.169.254"
# Versions the stand-in serves; cloud-init 22.4 probes 2021-03-23, 2018-09-24, 2016-09-02 and
# falls back to 2009-04-04; boto3 and the AWS CLI use "latest".
IMDS_VERSIONS = ("2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HarnessError(RuntimeError):
    """The harness could not set up or tear down part of a world."""


# --- small helpers -----------------------------------------------------------------------


def _run(*argv: str, timeout: float = 60) -> str:
    """Run a host command; raise HarnessError with its output when it fails."""
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        raise HarnessError(f"{' '.join(argv)} exited {proc.returncode}: {output}")
    return proc.stdout.decode(errors="replace")


def _in_netns(netns: str, script: str) -> None:
    """Run a shell snippet in a network namespace (e.g. to write its /proc/sys/net)."""
    _run("nsenter", f"--net=/run/netns/{netns}", "sh", "-euc", script)


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below path, deepest first (from /proc/self/mountinfo)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), line.split()[4]))
        if point == path or path in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a directory tree, unmounting anything below it first and never crossing a mount.

    debootstrap mounts /proc and /sys in its target and may leave them on failure; a plain
    rmtree would then walk into the host's.
    """
    if not path.exists():
        return
    for point in _mounts_under(path):
        _run("umount", str(point))
    if _mounts_under(path):
        raise HarnessError(f"refusing to delete {path}: still mounted")
    _run("rm", "-rf", "--one-file-system", "--", str(path), timeout=300)


def _until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll check until it returns something truthy; TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def missing_prerequisites(image: bool = True) -> str | None:
    """Why node tests cannot run here, or None when they can (for pytest.skip); image=False
    for tests that attach instances without containers (World.attach)."""
    if os.geteuid() != 0:
        return "node tests need root (namespaces, overlayfs, systemd-nspawn)"
    if not image:
        missing = [name for name in ("ip", "nsenter") if shutil.which(name) is None]
        return f"missing programs: {', '.join(missing)}" if missing else None
    needed = ["systemd-nspawn", "nsenter", "ip", "mount", "umount"]
    if not _cached_rootfs().is_dir():
        needed.append("debootstrap")
    missing = [name for name in needed if shutil.which(name) is None]
    if missing:
        return f"missing programs: {', '.join(missing)}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    if not _cgroup_roots():
        return "no writable cgroup hierarchy for the containers"
    return None


# --- the cached root filesystem -----------------------------------------------------------


def _cache_key() -> str:
    config = [SUITE, PACKAGES, IMAGE_VERSION, IMAGE_FILES, IMAGE_ENABLE]
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _cached_rootfs() -> Path:
    override = os.environ.get("KUBEPLAT_NODE_ROOTFS_CACHE")
    return Path(override) if override else CACHE_ROOT / f"rootfs-{_cache_key()}"


def cached_rootfs() -> Path | None:
    """The root filesystem when it has been built (rootfs() builds it), else None."""
    target = _cached_rootfs()
    return target if target.is_dir() else None


def _mirror() -> str:
    """The host's Debian mirror (deb822 sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return str(fields["URIs"].split()[0])
    return "http://deb.debian.org/debian"


def rootfs(timeout: float = 1800) -> Path:
    """The Debian 12 root filesystem with the test image's configuration; built once, cached.

    Built in a temporary directory beside the cache and renamed into place, under an exclusive
    file lock, so concurrent pytest-xdist workers build it once and never see half of it.
    """
    target = _cached_rootfs()
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        _until(lambda: _try_lock(lock), timeout, f"the lock on {target}", interval=1)
        if target.is_dir():
            return target
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        building.chmod(0o755)  # it becomes the nodes' "/"; mkdtemp makes it 0700
        try:
            log = building.with_suffix(".log")
            with log.open("wb") as out:
                command = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}"]
                proc = subprocess.run(
                    [*command, SUITE, str(building), _mirror()],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            if proc.returncode != 0:
                raise HarnessError(f"debootstrap failed ({proc.returncode}); see {log}")
            _configure_image(building)
            building.rename(target)
            log.unlink()
        finally:
            _remove_tree(building)
    return target


def _try_lock(lock: Any) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _configure_image(root: Path) -> None:
    """Give a debootstrapped tree the configuration an AMI would have."""
    for relative, content in IMAGE_FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    _run("systemctl", f"--root={root}", "enable", *IMAGE_ENABLE)


# --- servers inside the world's namespace ---------------------------------------------------

_BIND_CHILD = """
import socket, sys
kind, host, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
if kind == "tcp":
    s.listen(128)
socket.send_fds(socket.socket(fileno=int(sys.argv[1])), [b"fd"], [s.fileno()])
"""


def _bind_in(netns: str, kind: str, host: str, port: int) -> socket.socket:
    """A socket bound in another network namespace, for threads of this process to serve.

    A socket keeps the namespace it was created in, so a short-lived child in the namespace
    binds it and hands the descriptor back (Python 3.11 has no os.setns).
    """
    parent, child = socket.socketpair()
    with parent, child:
        child_args = [_BIND_CHILD, str(child.fileno()), kind, host, str(port)]
        proc = subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-I", "-S", "-c", *child_args],
            pass_fds=(child.fileno(),),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(f"binding {kind} {host}:{port}: {proc.stderr.decode().strip()}")
        parent.settimeout(5)
        _msg, fds, _flags, _addr = socket.recv_fds(parent, 16, 1)
    return socket.socket(fileno=fds[0])


class _Threading:
    daemon_threads = True
    block_on_close = False


class _TCPServer(_Threading, socketserver.ThreadingTCPServer):
    pass


class _UDPServer(_Threading, socketserver.ThreadingUDPServer):
    pass


class _HTTPServer(_Threading, http.server.HTTPServer):
    pass


def _serve(
    cls: type[socketserver.TCPServer], handler: Any, sock: socket.socket
) -> socketserver.TCPServer:
    """Serve an already bound socket from a daemon thread of this process."""
    server = cls(sock.getsockname(), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = sock.getsockname()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True).start()
    return server


@dataclass
class Request:
    """One request a world's server answered."""

    client: str
    method: str
    path: str
    status: int
    token: bool = False  # IMDS only: the request carried an IMDSv2 token


class _ImdsHandler(http.server.BaseHTTPRequestHandler):
    """IMDSv2 and IMDSv1, answering each instance (by source address) from its own tree."""

    server_version = "EC2ws"
    sys_version = ""
    world: World

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        token = "X-aws-ec2-metadata-token" in self.headers
        self.world.imds_log.append(
            Request(self.client_address[0], self.command, self.path, status, token)
        )

    def do_PUT(self) -> None:
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if self.path != "/latest/api/token":
            return self._reply(404)
        if "X-Forwarded-For" in self.headers:
            return self._reply(403)
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self._reply(400)
        token = secrets.token_urlsafe(32)
        self.world._tokens[token] = (self.client_address[0], time.monotonic() + int(ttl))
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        self._reply(200, token.encode(), headers)

    def do_GET(self) -> None:
        ip = self.client_address[0]
        instance = self.world.instances.get(ip)
        if instance is None:
            return self._reply(404)
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is not None:
            owner, expiry = self.world._tokens.get(token, ("", 0.0))
            if owner != ip or time.monotonic() > expiry:
                return self._reply(401)
        elif instance.http_tokens == "required":
            return self._reply(401)
        path = self.path.split("?")[0]
        if path == "/":
            return self._reply(200, "\n".join(IMDS_VERSIONS).encode())
        version, _, rest = path.lstrip("/").partition("/")
        if version not in IMDS_VERSIONS:
            return self._reply(404)
        node: Any = instance.tree
        for part in [p for p in rest.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                return self._reply(404)
            node = node[part]
        if isinstance(node, dict):
            listing = [f"{k}/" if isinstance(v, dict) else k for k, v in node.items()]
            return self._reply(200, "\n".join(listing).encode())
        self._reply(200, node if isinstance(node, bytes) else str(node).encode())

    do_HEAD = do_GET


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    """Static files (GET, HEAD, 404), recording every request."""

    log: list[Request]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if str(code).isdigit() else 0
        self.log.append(Request(self.client_address[0], self.command, self.path, status))


_EC2_NAME = re.compile(r"^ip-(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})(\..*)?$")


def _dns_reply(
    query: bytes,
    lookup: Callable[[str], str | None],
    reverse: Callable[[str], str | None] = lambda ip: None,
) -> bytes | None:
    """Answer one DNS query: A records for known names, PTR records for known addresses (as
    the VPC resolver answers an instance's private address with its private DNS name), NODATA
    for other types, else NXDOMAIN."""
    if len(query) < 12:
        return None
    qid, flags, qdcount, _an, _ns, arcount = struct.unpack("!6H", query[:12])
    if flags & 0x8000:
        return None
    rd = flags & 0x0100
    if qdcount != 1 or (flags >> 11) & 0xF:
        return struct.pack("!6H", qid, 0x8080 | rd | 4, 0, 0, 0, 0)  # NOTIMP
    pos, labels = 12, []
    while pos < len(query) and query[pos] != 0:
        length = query[pos]
        labels.append(query[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if pos + 5 > len(query):
        return struct.pack("!6H", qid, 0x8080 | rd | 1, 0, 0, 0, 0)  # FORMERR
    qtype, qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
    question = query[12 : pos + 5]
    name = b".".join(labels).decode("ascii", "replace").lower()
    answers = b""
    if name.endswith(".in-addr.arpa"):
        octets = name.removesuffix(".in-addr.arpa").split(".")[::-1]
        found = reverse(".".join(octets)) if len(octets) == 4 else None
        if found and qtype == 12 and qclass == 1:
            encoded = b"".join(bytes([len(p)]) + p.encode() for p in found.split(".")) + b"\0"
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 12, 1, 60, len(encoded)) + encoded
    else:
        found = lookup(name)
        if found is not None and qtype == 1 and qclass == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(found)
    edns = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0) if arcount else b""
    header = struct.pack(
        "!6H", qid, 0x8480 | rd | (3 if found is None else 0), 1, bool(answers), 0, bool(edns)
    )
    return header + question + answers + edns


# --- nodes -------------------------------------------------------------------------------


@dataclass
class NodeSpec:
    """What EC2 would know about an instance at launch."""

    instance_id: str
    private_ip: str
    user_data: bytes = b""
    hostname: str = ""  # EC2 private DNS name; default ip-A-B-C-D.ec2.internal (moto's style)
    region: str = "us-east-1"
    availability_zone: str = ""  # default: region + "a"
    role: str | None = "kubeplat-node"  # IAM role of the instance profile; None for none
    environment: dict[str, str] = field(default_factory=dict)  # image-wide, all units see it
    instance_type: str = "t3.medium"
    image_id: str = "ami-0kubeplattest00"
    account_id: str = "123456789012"
    nspawn_args: tuple[str, ...] = ()  # extra systemd-nspawn options (capabilities, binds)

    def __post_init__(self) -> None:
        self.hostname = self.hostname or "ip-{}.ec2.internal".format(
            self.private_ip.replace(".", "-")
        )
        self.availability_zone = self.availability_zone or f"{self.region}a"


@dataclass
class Instance:
    """The metadata service's record of one instance; tests may change it while it runs.

    tree maps path segments to sub-trees (directories) or leaves (str or bytes), as served
    under /<version>/; http_tokens "required" refuses IMDSv1, as the instance option does.
    """

    tree: dict[str, Any]
    http_tokens: str = "optional"


def _instance_tree(spec: NodeSpec, mac: str, subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    """The metadata an EC2 instance with this spec would see."""
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    suffix = spec.instance_id.removeprefix("i-")[:17]
    nic = {
        "device-number": "0",
        "interface-id": f"eni-{suffix}",
        "local-hostname": spec.hostname,
        "local-ipv4s": spec.private_ip,
        "mac": mac,
        "owner-id": spec.account_id,
        "security-group-ids": "sg-0kubeplattest00",
        "security-groups": "kubeplat-node",
        "subnet-id": "subnet-0kubeplattest0",
        "subnet-ipv4-cidr-block": str(subnet),
        "vpc-id": "vpc-0kubeplattest00",
        "vpc-ipv4-cidr-block": str(subnet),
        "vpc-ipv4-cidr-blocks": str(subnet),
    }
    meta: dict[str, Any] = {
        "ami-id": spec.image_id,
        "ami-launch-index": "0",
        "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "hostname": spec.hostname,
        "instance-action": "none",
        "instance-id": spec.instance_id,
        "instance-life-cycle": "on-demand",
        "instance-type": spec.instance_type,
        "local-hostname": spec.hostname,
        "local-ipv4": spec.private_ip,
        "mac": mac,
        "network": {"interfaces": {"macs": {mac: nic}}},
        "placement": {"availability-zone": spec.availability_zone, "region": spec.region},
        "profile": "default-hvm",
        "reservation-id": f"r-{suffix}",
        "security-groups": "kubeplat-node",
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    if spec.role:
        meta["iam"] = {
            "info": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": stamp,
                    "InstanceProfileArn": f"arn:aws:iam::{spec.account_id}:instance-profile/"
                    + spec.role,
                    "InstanceProfileId": "AIPAKUBEPLATTEST0000",
                }
            ),
            "security-credentials": {spec.role: json.dumps(fake_credentials(now))},
        }
    document = {
        "accountId": spec.account_id,
        "architecture": "x86_64",
        "availabilityZone": spec.availability_zone,
        "imageId": spec.image_id,
        "instanceId": spec.instance_id,
        "instanceType": spec.instance_type,
        "pendingTime": stamp,
        "privateIp": spec.private_ip,
        "region": spec.region,
        "version": "2017-09-30",
    }
    tree: dict[str, Any] = {
        "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
        "meta-data": meta,
    }
    if spec.user_data:
        tree["user-data"] = spec.user_data
    return tree


def fake_credentials(now: datetime | None = None, hours: float = 6) -> dict[str, str]:
    """Temporary credentials in the IMDS format, valid for `hours` (any key works with moto)."""
    now = now or datetime.now(UTC)
    return {
        "Code": "Success",
        "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIAKUBEPLATTEST0000",
        "SecretAccessKey": "kubeplat-test-secret-access-key-000000000",
        "Token": "kubeplat-test-session-token",
        "Expiration": (now + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _quote(assignment: str) -> str:
    """One systemd DefaultEnvironment= word."""
    return '"' + assignment.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cgroup_roots() -> list[Path]:
    """Where a container's cgroup goes: the v2 and name=systemd trees of a hybrid host."""
    hybrid = [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd")]
    if all(p.is_dir() for p in hybrid):
        return hybrid
    return [Path("/sys/fs/cgroup")] if Path("/sys/fs/cgroup/cgroup.procs").exists() else []


def _pids_in(cgroups: Sequence[Path]) -> list[int]:
    """Every process in these cgroups and the cgroups below them."""
    pids: set[int] = set()
    for cgroup in cgroups:
        # os.walk, not rglob: the container's systemd adds and removes cgroups meanwhile.
        for directory, _subdirs, _files in os.walk(cgroup):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
    return sorted(pids)


def _leader_of(name: str) -> int | None:
    """A container's PID 1: the process in its cgroup whose innermost PID is 1."""
    for pid in _pids_in([root / name for root in _cgroup_roots()]):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
            if found and len(found[1].split()) > 1 and found[1].split()[-1] == "1":
                return pid
    return None


class Node:
    """One booted instance: a systemd-nspawn container in its own network namespace.

    Every step of a boot registers its undo on a stack as soon as it succeeded, so stop()
    deletes exactly what this boot created (never a same-named object of someone else's).
    """

    def __init__(self, world: World, spec: NodeSpec, name: str, root: Path) -> None:
        self.world, self.spec, self.name = world, spec, name
        self.mac = "0e:00:" + ":".join(f"{int(b):02x}" for b in spec.private_ip.split("."))
        self.dir = world.dir / name
        self.merged = self.dir / "merged"
        self.console = self.dir / "console.log"
        self.started_at = 0.0  # time.monotonic() when the last boot started
        self.boots = 0
        self._root = root
        self._process: subprocess.Popen[bytes] | None = None
        self._leader_pid: int | None = None
        self._undo = contextlib.ExitStack()

    @property
    def imds(self) -> Instance:
        """This instance's record in the metadata service (change it to change IMDS)."""
        return self.world.instances[self.spec.private_ip]

    # lifecycle

    def _start(self) -> None:
        name, undo = self.name, self._undo
        _run("ip", "netns", "add", name)
        undo.callback(_run, "ip", "netns", "delete", name)  # takes the veth pair with it
        _in_netns(name, _NO_IPV6)
        veth = ("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "-n", self.world.netns, *veth)
        _run("ip", "-n", name, "link", "set", "eth0", "address", self.mac)
        _run("ip", "-n", self.world.netns, "link", "set", name, "master", "br0", "up")
        for part in ("upper", "work", "merged"):
            (self.dir / part).mkdir(parents=True, exist_ok=True)
        layers = f"lowerdir={self._root},upperdir={self.dir}/upper,workdir={self.dir}/work"
        _run("mount", "-t", "overlay", "overlay", "-o", layers, str(self.merged))
        undo.callback(_run, "umount", str(self.merged))
        if self.boots == 0:
            self._write_instance_files()
        cgroups = [root / name for root in _cgroup_roots()]
        for cgroup in cgroups:
            cgroup.mkdir()
            undo.callback(_remove_cgroup, cgroup)
        # The launcher joins its own cgroups before it becomes nspawn (no preexec_fn: threads).
        join = "".join(f"echo $$ > {cgroup}/cgroup.procs && " for cgroup in cgroups)
        nspawn = [
            *("nsenter", f"--net=/run/netns/{name}", "systemd-nspawn", "--boot"),
            *("--register=no", "--keep-unit", f"--directory={self.merged}", f"--machine={name}"),
            # Not counted as private networking, so nspawn would drop CAP_NET_ADMIN.
            f"--network-namespace-path=/run/netns/{name}",
            "--capability=CAP_NET_ADMIN",
            *("--resolv-conf=off", "--timezone=off", "--link-journal=no"),
            *self.spec.nspawn_args,
        ]
        with self.console.open("ab") as console:
            console.write(f"\n--- kubeplat harness: boot {self.boots + 1} ---\n".encode())
            console.flush()
            self._process = subprocess.Popen(
                ["sh", "-c", f'{join}exec "$@"', "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # /proc/sys/net writable, as an instance owns its network sysctls (forwarding,
                # bridge netfilter); the rest of /proc/sys stays read-only (the host's kernel).
                env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
            )
        undo.callback(self._power_off)
        self.started_at = time.monotonic()
        self.boots += 1
        self._leader_pid = _until(self._find_leader, 60, f"{name}'s PID 1")

    def _write_instance_files(self) -> None:
        """What differs between instances of one image: identity and the network it sits on."""
        world, spec = self.world, self.spec
        files = {
            "etc/machine-id": uuid.uuid4().hex + "\n",
            "etc/hostname": spec.hostname.split(".")[0] + "\n",
            # The VPC's DHCP would give these; a World has no DHCP server.
            "etc/systemd/network/10-kubeplat-eth0.network": (
                "[Match]\nName=eth0\n\n[Network]\n"
                f"Address={spec.private_ip}/{world.subnet.prefixlen}\n"
                f"Gateway={world.gateway}\nDNS={world.resolver}\n"
                f"Domains={spec.hostname.partition('.')[2]}\n"
                "LinkLocalAddressing=no\nIPv6AcceptRA=no\n\n"
                f"[Route]\nDestination={IMDS_IP}/32\nScope=link\n"
            ),
        }
        if spec.environment:
            words = " ".join(_quote(f"{k}={v}") for k, v in spec.environment.items())
            files["etc/systemd/system.conf.d/50-kubeplat-image-environment.conf"] = (
                f"[Manager]\nDefaultEnvironment={words}\n"
            )
        for relative, content in files.items():
            target = self.merged / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.write_text(content)

    def _cgroup_pids(self) -> list[int]:
        return _pids_in([root / self.name for root in _cgroup_roots()])

    def _find_leader(self) -> int | None:
        """The container's PID 1 (fails at once when nspawn has exited)."""
        if not self.running:
            raise HarnessError(f"{self.name}: systemd-nspawn exited:\n{self.console_log()[-3000:]}")
        return _leader_of(self.name)

    def _power_off(self, timeout: float = 30) -> None:
        """SIGTERM to nspawn (the container halts); SIGKILL after timeout; reap what is left."""
        process, self._process, self._leader_pid = self._process, None, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for pid in self._cgroup_pids():  # only processes of this container's own cgroup
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _until(lambda: not self._cgroup_pids(), 10, f"{self.name}'s processes to end")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Power off and undo the boot (overlay, cgroups, namespace); the disk (upper) stays."""
        self._undo.close()

    def restart(self) -> None:
        """Reboot: power off and boot the same disk (upper directory) again."""
        self.stop()
        self._start()

    # looking inside

    def _leader(self) -> int:
        if not self.running or self._leader_pid is None:
            raise HarnessError(
                f"{self.name} is not running; console:\n{self.console_log()[-2000:]}"
            )
        return self._leader_pid

    def run(
        self, *argv: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (its namespaces and root), as a login would.

        The environment is PATH, LANG and the image-wide variables of the spec. On timeout
        the whole process group is killed, and TimeoutExpired raised.
        """
        env = {"PATH": PATH, "LANG": "C.UTF-8", **self.spec.environment}
        command = ["nsenter", f"--target={self._leader()}", "--mount", "--uts", "--ipc"]
        command += ["--net", "--pid", "--root", "--wd", "--", *argv]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nsenter --pid forks: kill its child too
            proc.communicate()
            raise
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def path(self, p: str) -> Path:
        """Host path of p on the node's disk (the merged overlay; /run and /tmp are not there)."""
        return self.merged / p.lstrip("/")

    def read(self, p: str) -> bytes:
        """A file as the container sees it (through its mount namespace while it runs)."""
        if self.running:
            return Path(f"/proc/{self._leader()}/root", p.lstrip("/")).read_bytes()
        return self.path(p).read_bytes()

    def wait_for(
        self, check: Callable[[], Any] | Sequence[str], timeout: float = 60, interval: float = 0.5
    ) -> Any:
        """Wait for a predicate to hold, or a command in the container to succeed.

        Returns the predicate's value (or the command's CompletedProcess). Fails at once when
        the container stops, and after timeout with the last result and the console's tail.
        """
        last: Any = None

        def attempt() -> Any:
            nonlocal last
            self._leader()
            if callable(check):
                last = check()
                return last
            last = self.run(*check, timeout=30)
            return last if last.returncode == 0 else None

        try:
            return _until(attempt, timeout, getattr(check, "__name__", str(check)), interval)
        except TimeoutError as error:
            tail = self.console_log()[-2000:]
            raise TimeoutError(f"{self.name}: {error}; last: {last!r}\nconsole:\n{tail}") from None

    def cloud_init_status(self) -> dict[str, Any]:
        """`cloud-init status --long --format json` (status: not run, running, done, error)."""
        proc = self.run("cloud-init", "status", "--long", "--format", "json")
        try:
            result: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise HarnessError(f"cloud-init status: {proc.stdout}{proc.stderr}") from None
        return result

    def wait_cloud_init(self, timeout: float = 300) -> dict[str, Any]:
        """Wait until cloud-init has finished (done, error or disabled); return its status."""

        def cloud_init_finished() -> dict[str, Any] | None:
            status = self.cloud_init_status()
            return None if status["status"] in ("not run", "running") else status

        result: dict[str, Any] = self.wait_for(cloud_init_finished, timeout, interval=1)
        return result

    def wait_booted(self, timeout: float = 300) -> str:
        """Wait for systemd to finish booting; return its state ("running" or "degraded")."""

        def boot_settled() -> str | None:
            state = self.run("systemctl", "is-system-running").stdout.strip()
            return None if state in ("initializing", "starting", "") else state

        return str(self.wait_for(boot_settled, timeout))

    def failed_units(self) -> list[str]:
        """Names of the units systemd holds as failed."""
        proc = self.run("systemctl", "list-units", "--state=failed", "--plain", "--no-legend")
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]

    def journal(self, unit: str | None = None) -> str:
        """This boot's journal, or one unit's."""
        proc = self.run("journalctl", "-b", "--no-pager", *(["-u", unit] if unit else []))
        return proc.stdout

    def console_log(self) -> str:
        """Everything the container printed on its console (all boots)."""
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def memory(self) -> int:
        """Bytes of memory the container (and its nspawn) use: the sum of proportional sizes."""
        total = 0
        for pid in self._cgroup_pids():
            with contextlib.suppress(OSError):
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
                total += int(found[1]) * 1024 if found else 0
        return total


_NO_IPV6 = "for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done"


class Host:
    """An instance without a container: a network namespace holding the instance's address,
    for programs a test runs directly (etcd and its membership program, say).

    Programs run with `ip netns exec`, which also gives them the VPC resolver as
    /etc/resolv.conf (from /etc/netns/NAME/, created here and deleted on stop).
    """

    def __init__(self, world: World, spec: NodeSpec, name: str) -> None:
        self.world, self.spec, self.name = world, spec, name
        self.mac = "0e:00:" + ":".join(f"{int(b):02x}" for b in spec.private_ip.split("."))
        self.dir = world.dir / name
        self.processes: list[subprocess.Popen[bytes]] = []
        self._undo = contextlib.ExitStack()

    def _start(self) -> None:
        name, world, undo = self.name, self.world, self._undo
        _run("ip", "netns", "add", name)
        undo.callback(_run, "ip", "netns", "delete", name)
        _in_netns(name, _NO_IPV6)
        veth = ("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        _run("ip", "-n", world.netns, *veth)
        _run("ip", "-n", world.netns, "link", "set", name, "master", "br0", "up")
        inside = ("ip", "-n", name)
        _run(*inside, "link", "set", "eth0", "address", self.mac)
        _run(*inside, "link", "set", "lo", "up")
        _run(
            *inside,
            "addr",
            "add",
            f"{self.spec.private_ip}/{world.subnet.prefixlen}",
            "dev",
            "eth0",
        )
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "route", "add", f"{IMDS_IP}/32", "dev", "eth0", "scope", "link")
        _run(*inside, "route", "add", "default", "via", world.gateway)
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True)
        undo.callback(shutil.rmtree, etc, True)
        (etc / "resolv.conf").write_text(f"nameserver {world.resolver}\n")
        self.dir.mkdir(parents=True, exist_ok=True)
        undo.callback(self._kill)

    def popen(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a program in the instance's network (its output appended to log)."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a program in the instance's network and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Stop one program (its whole session) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)

    def _kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process)
        self.processes.clear()

    def stop(self) -> None:
        """Power the instance off: its programs killed, its namespace deleted."""
        self._undo.close()


def _remove_cgroup(cgroup: Path) -> None:
    """rmdir a cgroup and whatever nspawn or the container's systemd made below it."""
    for directory, _subdirs, _files in os.walk(cgroup, topdown=False):
        os.rmdir(directory)


# --- the world ---------------------------------------------------------------------------


class World:
    """One VPC: a bridge in a namespace of its own, with IMDS, DNS, relays and file servers.

    A context manager; leaving it stops every node and deletes everything it created.
    """

    def __init__(self, subnet: str = "10.0.0.0/16", root: Path | None = None) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        self.gateway = str(self.subnet.network_address + 1)
        self.resolver = str(self.subnet.network_address + 2)  # the VPC's "+2" resolver
        self.prefix = "kpt" + secrets.token_hex(2)
        self.netns = f"{self.prefix}w"
        self.dir = SCRATCH / self.prefix
        self.nodes: list[Node] = []
        self.hosts: list[Host] = []
        self.instances: dict[str, Instance] = {}  # by private IP
        self.imds_log: list[Request] = []
        self.dns_names: dict[str, str] = {}
        self._root = root
        self._tokens: dict[str, tuple[str, float]] = {}
        self._addresses = {self.gateway}
        self._relayed: set[socket.socket] = set()
        self._undo = contextlib.ExitStack()

    def __enter__(self) -> World:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every node and server and delete everything this world created, by name."""
        self._undo.close()

    def _open(self) -> None:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir()
        self._undo.callback(_remove_tree, self.dir)
        _run("ip", "netns", "add", self.netns)
        self._undo.callback(_run, "ip", "netns", "delete", self.netns)
        _in_netns(self.netns, _NO_IPV6)
        ip = ("ip", "-n", self.netns)
        _run(*ip, "link", "set", "lo", "up")
        _run(*ip, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _run(*ip, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", "br0")
        _run(*ip, "link", "set", "br0", "up")
        self._undo.callback(self._close_relayed)
        imds = type("Imds", (_ImdsHandler,), {"world": self})
        self._serve(_HTTPServer, imds, "tcp", IMDS_IP, 80)
        world = self

        class Dns(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                if isinstance(self.request, tuple):  # UDP
                    data, sock = self.request
                    if reply := _dns_reply(data, world.lookup, world.reverse):
                        sock.sendto(reply, self.client_address)
                    return
                data = self.request.recv(2)
                query = self.request.recv(struct.unpack("!H", data)[0]) if len(data) == 2 else b""
                if reply := _dns_reply(query, world.lookup, world.reverse):
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        self._serve(_UDPServer, Dns, "udp", self.resolver, 53)
        self._serve(_TCPServer, Dns, "tcp", self.resolver, 53)

    def _serve(self, cls: type[Any], handler: Any, kind: str, ip: str, port: int) -> int:
        """Serve ip:port inside the world from a thread of this process; the bound port."""
        if ip not in self._addresses:  # a /32: nodes reach it through the subnet's on-link route
            _run("ip", "-n", self.netns, "addr", "add", f"{ip}/32", "dev", "br0")
            self._addresses.add(ip)
        sock = _bind_in(self.netns, kind, ip, port)
        server = _serve(cls, handler, sock)
        self._undo.callback(server.server_close)
        self._undo.callback(server.shutdown)
        return int(sock.getsockname()[1])

    def _close_relayed(self) -> None:
        for sock in list(self._relayed):
            with contextlib.suppress(OSError):
                sock.close()

    # services

    def lookup(self, name: str) -> str | None:
        """What the VPC resolver answers for name: registered names, then ip-A-B-C-D.*."""
        name = name.lower().rstrip(".")
        if name in self.dns_names:
            return self.dns_names[name]
        match = _EC2_NAME.match(name)
        if match and all(int(octet) < 256 for octet in match.groups()[:4]):
            return ".".join(match.groups()[:4])
        return None

    def reverse(self, ip: str) -> str | None:
        """What the VPC resolver answers for a PTR query: the private DNS name of an instance."""
        if ip not in self.instances:
            return None
        for machine in reversed([*self.nodes, *self.hosts]):  # the latest holder of the address
            if machine.spec.private_ip == ip:
                return machine.spec.hostname
        return None

    def add_dns(self, name: str, ip: str) -> None:
        """Make the resolver answer name (an A record) with ip."""
        self.dns_names[name.lower().rstrip(".")] = ip

    def expose(self, host_port: int, ip: str, port: int | None = None) -> str:
        """Listen on ip:port in the world and relay each connection to 127.0.0.1:host_port.

        Lets nodes reach a server the test runs on the host's loopback (moto, an API stub).
        Returns "ip:port".
        """
        world = self

        class Relay(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(("127.0.0.1", host_port), timeout=10)
                upstream.settimeout(None)
                world._relayed.update((upstream, self.request))
                try:
                    back = threading.Thread(target=_pump, args=(upstream, self.request))
                    back.start()
                    _pump(self.request, upstream)
                    back.join()
                finally:
                    world._relayed.difference_update((upstream, self.request))
                    upstream.close()

        bound = self._serve(_TCPServer, Relay, "tcp", ip, host_port if port is None else port)
        return f"{ip}:{bound}"

    def serve_files(self, directory: Path | str, ip: str, port: int = 80) -> list[Request]:
        """Serve a directory over HTTP on ip:port in the world (an artifact mirror).

        Returns the list the server appends each request to, for asserting what was fetched.
        """
        log: list[Request] = []
        handler = type("Files", (_FileHandler,), {"log": log})
        self._serve(_HTTPServer, partial(handler, directory=str(directory)), "tcp", ip, port)
        return log

    # nodes

    def boot(self, spec: NodeSpec) -> Node:
        """Start an instance: its IMDS record, DNS name, namespace, disk and container."""
        ip = ipaddress.IPv4Address(spec.private_ip)
        reserved = {self.gateway, self.resolver, *self.instances}
        if ip not in self.subnet or str(ip) in reserved or ip == self.subnet.broadcast_address:
            raise HarnessError(f"{ip} is not a free address in {self.subnet}")
        node = Node(self, spec, f"{self.prefix}n{len(self.nodes)}", self._root or rootfs())
        self.instances[spec.private_ip] = Instance(_instance_tree(spec, node.mac, self.subnet))
        self.add_dns(spec.hostname, spec.private_ip)
        self.nodes.append(node)
        self._undo.callback(node.stop)
        node._start()
        return node

    def attach(self, spec: NodeSpec) -> Host:
        """Start an instance without a container (Host): its IMDS record, DNS name, network."""
        ip = ipaddress.IPv4Address(spec.private_ip)
        reserved = {self.gateway, self.resolver, *self.instances}
        if ip not in self.subnet or str(ip) in reserved or ip == self.subnet.broadcast_address:
            raise HarnessError(f"{ip} is not a free address in {self.subnet}")
        host = Host(self, spec, f"{self.prefix}h{len(self.hosts)}")
        self.instances[spec.private_ip] = Instance(_instance_tree(spec, host.mac, self.subnet))
        self.add_dns(spec.hostname, spec.private_ip)
        self.hosts.append(host)
        self._undo.callback(host.stop)
        host._start()
        return host

    def detach(self, host: Host) -> None:
        """Terminate an instance started by attach: its address is free again afterwards."""
        host.stop()
        self.instances.pop(host.spec.private_ip, None)
        self.dns_names.pop(host.spec.hostname.lower(), None)

    def leftovers(self) -> list[str]:
        """What of this world is still on the host: namespaces, mounts, cgroups, processes."""
        netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
        found = [f"netns {name}" for name in netns if name.startswith(self.prefix)]
        found += [f"mount {point}" for point in _mounts_under(self.dir)]
        found += [f"cgroup {c}" for r in _cgroup_roots() for c in r.glob(f"{self.prefix}*")]
        found += [f"nspawn of {node.name}" for node in self.nodes if node.running]
        found += [f"/etc/netns/{h.name}" for h in self.hosts if Path("/etc/netns", h.name).exists()]
        return found + ([f"directory {self.dir}"] if self.dir.exists() else [])


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction of a relayed connection until end of file, then pass the EOF on."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


# --- after a killed run ---------------------------------------------------------------------


def clean(prefix: str = "kpt") -> list[str]:
    """Delete every world a killed test run left behind (all worlds: run it only when no node
    test is running). Returns what it removed. `python -m tests.node.harness clean`."""
    if not re.fullmatch(r"kpt[0-9a-f]{0,4}", prefix):
        raise HarnessError(f"{prefix!r} is not a harness prefix (kpt + up to 4 hex digits)")
    removed: list[str] = []
    cgroups = [c for root in _cgroup_roots() for c in root.glob(f"{prefix}*")]

    def pids() -> list[int]:
        return _pids_in(cgroups)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(TimeoutError):
            _until(lambda: not pids(), 30, "the containers to stop")
    for cgroup in cgroups:
        for directory, _subdirs, _files in sorted(os.walk(cgroup), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        removed.append(f"cgroup {cgroup}")
    for world in sorted(SCRATCH.glob(f"{prefix}*")) if SCRATCH.is_dir() else []:
        _remove_tree(world)
        removed.append(f"directory {world}")
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    ours = {os.stat(f"/run/netns/{n}").st_ino for n in netns if n.startswith(prefix)}
    for proc in Path("/proc").glob("[0-9]*"):  # programs run in a Host's network (etcd…)
        with contextlib.suppress(OSError):
            if os.stat(proc / "ns" / "net").st_ino in ours:
                os.kill(int(proc.name), signal.SIGKILL)
    for name in sorted(n for n in netns if n.startswith(prefix)):
        _run("ip", "netns", "delete", name)
        removed.append(f"netns {name}")
    for etc in sorted(Path("/etc/netns").glob(f"{prefix}*")) if Path("/etc/netns").is_dir() else []:
        shutil.rmtree(etc)
        removed.append(f"directory {etc}")
    return removed


def enter(name: str, command: Sequence[str] = ("/bin/bash",)) -> int:
    """Run a command (a shell) in a running node, e.g. `python -m tests.node.harness enter
    kpt1a2bn0`."""
    pid = _leader_of(name)
    if pid is not None:
        nsenter = ["nsenter", f"--target={pid}", "--mount", "--uts", "--ipc"]
        nsenter += ["--net", "--pid", "--root", "--wd", "--", *command]
        env = {"PATH": PATH, "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "")}
        return subprocess.call(nsenter, env=env)
    print(f"no running node named {name}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["clean"] and len(sys.argv) <= 3:
        for line in clean(*sys.argv[2:3]):
            print(f"removed {line}")
    elif sys.argv[1:2] == ["enter"] and len(sys.argv) >= 3:
        sys.exit(enter(sys.argv[2], sys.argv[3:] or ["/bin/bash"]))
    else:
        sys.exit("usage: python -m tests.node.harness clean [PREFIX] | enter NODE [COMMAND…]")
