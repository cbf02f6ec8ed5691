"""Start real etcd members on 127.0.0.1 for the tests (Debian's etcd-server)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


def require_etcd() -> None:
    if not (shutil.which("etcd") and shutil.which("etcdctl")):
        pytest.skip("etcd and etcdctl are not installed (apt-get install etcd-server etcd-client)")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"


def members(count: int) -> list[Member]:
    ports = free_ports(count * 2)
    return [Member(f"m{i}", ports[2 * i], ports[2 * i + 1]) for i in range(count)]


def start(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(list(args), stdout=handle, stderr=subprocess.STDOUT)


def etcdctl(
    pki: Path, endpoints: Sequence[str], client: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "etcdctl",
            f"--endpoints={','.join(endpoints)}",
            f"--cacert={pki / 'etcd' / 'ca.crt'}",
            f"--cert={pki / client}.crt",
            f"--key={pki / client}.key",
            "--dial-timeout=3s",
            "--command-timeout=5s",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )


def wait_healthy(pki: Path, endpoints: Sequence[str], client: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = etcdctl(pki, endpoints, client, "endpoint", "health")
        last = result.stdout + result.stderr
        if result.returncode == 0 and last.count("is healthy") == len(endpoints):
            return last
        time.sleep(0.5)
    raise AssertionError(f"etcd did not become healthy: {last}")


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
