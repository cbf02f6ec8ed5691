"""The node harness itself: instances boot, run their user data, see IMDS, DNS, relays and files.

These prove the simulated world before any product code is booted in it.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.node.harness import HarnessError, NodeSpec, World

pytestmark = pytest.mark.node_boot

USER_DATA = b"""#!/bin/sh
set -eu
hostname > /var/lib/kpt-proof
echo run >> /var/lib/kpt-runs
printf '%s' "${KUBEPLAT_TEST_VARIABLE:-unset}" > /var/lib/kpt-environment
curl -fsS http://10.0.240.2/artifact.txt -o /var/lib/kpt-artifact
curl -fsS http://10.0.240.1:8080/hello -o /var/lib/kpt-relayed
"""


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """An HTTP server on the host's loopback (as moto would be); yields its port."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the host's loopback\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def spec(n: int) -> NodeSpec:
    return NodeSpec(
        instance_id=f"i-0kubeplat0000000{n}",
        private_ip=f"10.0.0.{10 + n}",
        user_data=USER_DATA,
        environment={"KUBEPLAT_TEST_VARIABLE": 'two words and a "quote"'},
    )


def test_two_nodes_boot_run_user_data_and_reach_each_other(
    world: World, tmp_path: Path, loopback_server: int
) -> None:
    (tmp_path / "artifact.txt").write_text("artifact from the mirror\n")
    fetched = world.serve_files(tmp_path, "10.0.240.2")
    world.expose(loopback_server, "10.0.240.1", 8080)

    nodes = [world.boot(spec(0)), world.boot(spec(1))]

    for node in nodes:
        status = node.wait_cloud_init(timeout=300)
        assert status["status"] == "done", (status, node.journal("cloud-final.service"))
        assert status["errors"] == []
        short_name = node.spec.hostname.split(".")[0]
        assert node.read("/var/lib/kpt-proof").decode().strip() == short_name
        assert node.read("/var/lib/kpt-artifact") == b"artifact from the mirror\n"
        assert node.read("/var/lib/kpt-relayed") == b"hello from the host's loopback\n"
        # The image-wide environment reaches cloud-init's units.
        assert node.read("/var/lib/kpt-environment") == b'two words and a "quote"'
        query = node.run("cloud-init", "query", "instance_id")
        assert query.stdout.strip() == node.spec.instance_id, query
        # systemd settles with nothing failed: the image needs no masked units.
        assert node.wait_booted(timeout=120) == "running", node.failed_units()
        assert node.failed_units() == []
        ip = node.spec.private_ip
        assert any(r.client == ip and r.path.endswith("/user-data") for r in world.imds_log)

    assert sorted((r.client, r.method, r.path, r.status) for r in fetched) == [
        ("10.0.0.10", "GET", "/artifact.txt", 200),
        ("10.0.0.11", "GET", "/artifact.txt", 200),
    ]

    first, second = nodes
    # Nodes reach each other by EC2 name, fully qualified and through the search domain.
    second.run("systemd-run", "--unit=kpt-web", "python3", "-m", "http.server", "8000",
               "--directory", "/var/lib")  # fmt: skip
    for name in ("ip-10-0-0-11.ec2.internal", "ip-10-0-0-11"):
        done = first.wait_for(["curl", "-fsS", f"http://{name}:8000/kpt-proof"], timeout=30)
        assert done.stdout.strip() == "ip-10-0-0-11"
    world.add_dns("api.kubeplat.internal", "10.0.0.10")
    assert "10.0.0.10" in second.run("getent", "hosts", "api.kubeplat.internal").stdout
    assert second.run("getent", "hosts", "nothing.example.com").returncode == 2

    # IMDSv2 as boto3 uses it: a token, then the instance profile's credentials.
    credentials = first.run(
        "python3", "-c", "import boto3; print(boto3.Session().get_credentials().access_key)"
    )
    assert credentials.stdout.strip() == "ASIAKUBEPLATTEST0000", credentials.stderr
    assert any(r.client == "10.0.0.10" and r.token for r in world.imds_log)
    first.imds.http_tokens = "required"
    v1 = first.run("curl", "-s", "-o/dev/null", "-w%{http_code}",
                   "http://169.254.169.254/latest/meta-data/instance-id")  # fmt: skip
    assert v1.stdout == "401"


def test_restart_boots_the_same_disk(world: World, node_rootfs: Path) -> None:
    node = world.boot(replace(spec(0), user_data=b"#!/bin/sh\necho run >> /var/lib/kpt-runs\n"))
    assert node.wait_cloud_init()["status"] == "done"
    machine_id = node.read("/etc/machine-id")

    node.restart()

    assert node.wait_cloud_init()["status"] == "done"
    assert node.read("/etc/machine-id") == machine_id
    # Same instance id: cloud-init runs the per-instance user data once only.
    assert node.read("/var/lib/kpt-runs") == b"run\n"
    assert node.console_log().count("--- kubeplat harness: boot") == 2


def test_world_cleans_up_after_a_failure(node_rootfs: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"), World(root=node_rootfs) as world:
        node = world.boot(replace(spec(0), user_data=b""))
        nspawn = node._process.pid if node._process else 0
        raise RuntimeError("the test failed")

    assert world.leftovers() == []
    assert not Path(f"/proc/{nspawn}").exists()
    for command in (["ip", "netns", "list"], ["mount"]):
        assert world.prefix not in subprocess.run(command, capture_output=True, text=True).stdout
    with pytest.raises(HarnessError, match="not running"):
        node.run("true")
