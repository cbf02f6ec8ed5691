"""The environment's API server as the operator reaches it: the server its admin kubeconfig
(written by `kubeplat up`) names, the cluster CA, the admin client certificate.

Used by the rehearsal (PodDisruptionBudgets, deprecated APIs in use). In the sandbox no API
server runs: only a server on this machine's loopback is asked there, never the emulator's
made-up load balancer name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT_S = 10.0


class Unreachable(Exception):
    """The API server could not be asked; the message says why, in words."""


class ApiServer:
    """GETs against one API server with the admin client certificate."""

    def __init__(self, server: str, files: Mapping[str, bytes]) -> None:
        self.server = server.rstrip("/")
        from kubeplat import pki

        bundle = pki.trust_bundle(files, "ca")  # both CAs during a rotation
        self.context = ssl.create_default_context(cadata=bundle.decode())
        # ssl takes a certificate chain only from files: a private directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="kubeplat-") as folder:
            cert, key = Path(folder, "admin.crt"), Path(folder, "admin.key")
            cert.write_bytes(files["admin.crt"])
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(files["admin.key"])
            self.context.load_cert_chain(cert, key)

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.server + path, headers={"Accept": "*/*"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self.context) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as exc:
            raise Unreachable(f"{self.server}{path} answered {exc.code} {exc.reason}") from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"{self.server} did not answer: {reason}") from None

    def json(self, path: str) -> Any:
        try:
            return json.loads(self.get(path))
        except ValueError:
            raise Unreachable(f"{self.server}{path} did not answer JSON") from None


def server_of(kubeconfig: Path) -> str:
    """The server URL of a kubeconfig kubeplat wrote ("" when there is none)."""
    import yaml

    try:
        document = yaml.safe_load(kubeconfig.read_text())
        return str(document["clusters"][0]["cluster"]["server"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return ""


def loopback(server: str) -> bool:
    host = urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect(kubeconfig: Path, files: Mapping[str, bytes], *, sandbox: bool) -> ApiServer:
    """The API server of the environment; Unreachable says why not."""
    server = server_of(kubeconfig)
    if not server:
        raise Unreachable(f"no kubeconfig at {kubeconfig} yet (kubeplat up writes it)")
    if sandbox and not loopback(server):
        raise Unreachable("the sandbox runs no API server")
    if not {"ca.crt", "admin.crt", "admin.key"} <= set(files):
        raise Unreachable("the admin certificate is not in the PKI")
    return ApiServer(server, files)
