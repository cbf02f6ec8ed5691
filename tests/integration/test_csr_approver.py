"""The CSR approver program (`kubeplat-node csr-approver`, as kubeplat-csr-approver.service
runs it on control-plane nodes) against the sandbox's EC2 (moto) and an API server STAND-IN.

No Kubernetes API server can be had here: the stand-in on 127.0.0.1 speaks TLS with the
environment's own API server certificate, requires a client certificate the cluster CA signed
(the approver's identity, as the real one does), serves the CSR list, and records approvals
and denials, refusing a stale one with 409 as the API server does (resourceVersion)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubeplat import config, pki
from tests import tls_standin
from tests.unit.test_node_approver import request

pytestmark = pytest.mark.integration


class StandIn(http.server.ThreadingHTTPServer):
    csrs: dict[str, dict[str, Any]]
    decided: list[tuple[str, str, str, str]]  # (csr, condition, message, client CN)


class Handler(http.server.BaseHTTPRequestHandler):
    server: StandIn
    PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"

    def _send(self, code: int, body: Any) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def do_GET(self) -> None:
        assert self.path == self.PATH
        self._send(200, {"items": list(self.server.csrs.values())})

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = self.path.removeprefix(self.PATH + "/").removesuffix("/approval")
        current = self.server.csrs[name]
        if name == "unprocessable":  # the API server refuses this one: the others still go
            self._send(422, {"reason": "Invalid"})
            return
        if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            self._send(409, {"reason": "Conflict"})
            return
        condition = body["status"]["conditions"][-1]
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        client = dict(item[0] for item in peer["subject"])["commonName"]
        self.server.decided.append((name, condition["type"], condition["message"], client))
        current["status"] = body["status"]
        current["metadata"]["resourceVersion"] = str(
            int(current["metadata"]["resourceVersion"]) + 1
        )
        self._send(200, current)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def api_server(pki_dir: Path) -> Iterator[StandIn]:
    server = StandIn(("127.0.0.1", 0), Handler)
    server.csrs, server.decided = {}, []
    with tls_standin.serving(server, pki_dir):
        yield server


def add(server: StandIn, name: str, pem: bytes, username: str, signer: str = "") -> None:
    server.csrs[name] = {
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {
            "request": base64.b64encode(pem).decode(),
            "signerName": signer or "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "server auth"],
            "username": username,
            "groups": ["system:nodes", "system:authenticated"],
        },
        "status": {},
    }


def test_the_approver_approves_its_own_nodes_and_denies_the_rest(  # type: ignore[no-untyped-def]
    aws: str, environments: Path, tmp_path: Path
) -> None:
    env = config.load("example")
    files = pki.ensure(env, {}).files
    pki_dir = tmp_path / "pki"
    for name in ("ca.crt", "apiserver.crt", "apiserver.key"):
        (pki_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (pki_dir / name).write_bytes(files[name])
    # The addons identity the unit gives the approver (apiserver-kubelet-client).
    (pki_dir / "client.crt").write_bytes(files["apiserver-kubelet-client.crt"])
    (pki_dir / "client.key").write_bytes(files["apiserver-kubelet-client.key"])

    ec2 = boto3.client("ec2", region_name="eu-west-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def launch(environment: str) -> dict[str, Any]:
        tags = [
            {"ResourceType": "instance", "Tags": [{"Key": "Environment", "Value": environment}]}
        ]
        made = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.small", TagSpecifications=tags
        )
        return dict(made["Instances"][0])

    # Names of their own: the emulator is shared with the other tests of this worker.
    mine, other, foreign = launch("csr-test"), launch("csr-test"), launch("csr-test-other")

    def node_request(instance: dict[str, Any], ips: tuple[str, ...] = ()) -> tuple[bytes, str]:
        name = instance["PrivateDnsName"]
        pem = request(
            cn=f"system:node:{name}", dns=(name,), ips=ips or (instance["PrivateIpAddress"],)
        )
        return pem, f"system:node:{name}"

    with api_server(pki_dir) as server:
        add(server, "unprocessable", *node_request(mine))
        add(server, "good", *node_request(mine))
        add(server, "claims-another-ip", *node_request(mine, (other["PrivateIpAddress"],)))
        add(server, "other-environment", *node_request(foreign))
        pem, user = node_request(other)
        add(server, "client-signer", pem, user, "kubernetes.io/kube-apiserver-client-kubelet")
        add(server, "not-a-node", pem, "system:serviceaccount:default:x")
        add(server, "stale", *node_request(other))
        server.csrs["stale"]["metadata"]["resourceVersion"] = "7"  # changed since it was listed
        original = Handler.do_GET

        def listing_is_stale(handler: Handler) -> None:
            items = json.loads(json.dumps(list(handler.server.csrs.values())))
            for item in items:
                if item["metadata"]["name"] == "stale":
                    item["metadata"]["resourceVersion"] = "6"
            handler._send(200, {"items": items})

        Handler.do_GET = listing_is_stale  # type: ignore[method-assign]
        try:
            command = [
                sys.executable, "-m", "kubeplat.node", "csr-approver", "--once",
                "--environment", "csr-test", "--region", "eu-west-1",
                "--api", f"https://127.0.0.1:{server.server_address[1]}",
                "--ca", str(pki_dir / "ca.crt"),
                "--cert", str(pki_dir / "client.crt"), "--key", str(pki_dir / "client.key"),
            ]  # fmt: skip
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=60, env={**os.environ}
            )
        finally:
            Handler.do_GET = original  # type: ignore[method-assign]
        assert done.returncode == 0, done.stderr
        decided = {name: (kind, message) for name, kind, message, _ in server.decided}
        assert decided["good"] == (
            "Approved",
            f"{mine['PrivateDnsName']} is {mine['InstanceId']}, and names only its own",
        )
        assert decided["claims-another-ip"] == (
            "Denied",
            f"{other['PrivateIpAddress']} are not {mine['InstanceId']}'s",
        )
        assert decided["not-a-node"][0] == "Denied"
        assert set(decided) == {"good", "claims-another-ip", "not-a-node"}, decided
        assert {client for *_, client in server.decided} == {"kube-apiserver-kubelet-client"}
        assert "good: approved" in done.stderr
        assert "unprocessable: not approved: the API server answered 422" in done.stderr
        assert (
            f"other-environment: pending, no running instance of this environment is named "
            f"{foreign['PrivateDnsName']}" in done.stderr
        )
        assert server.csrs["client-signer"]["status"] == {}  # another signer's: never touched

        # A second pass (another approver, or the next one) decides nothing twice.
        again = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert [d[0] for d in server.decided].count("good") == 1
        assert "stale: approved" in again.stderr  # listed fresh now, it is approved

    # The API server not answering is a line in the journal, not a crash.
    down = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0
    assert "pass failed:" in down.stderr and "Traceback" not in down.stderr
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in (mine, other, foreign)])
