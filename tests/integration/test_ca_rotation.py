"""A staged rotation of every CA, then of the service-account key, on an environment that runs
in the sandbox, delivered by the real node agent.

Each instance of the sandbox gets the agent program, run with the arguments of the
`kubeplat-agent.service` unit its layer's cloud-config holds (read from the bucket), writing into
a temporary root instead of /etc/kubernetes, with its identity and credentials from an IMDSv2
stand-in and its restarts recorded by `--reload-command` instead of systemctl. Not here: the
agent's health gates (`--readyz`, `--etcd-health`: nothing serves them in the sandbox; the
node-boot tier and tests/integration/test_etcd_ca_rotation.py run etcd for real), and the
kubelet: a STAND-IN (`KubeletStandIn`) does what a kubelet and the controller-manager's signer
do for a kubelet's client certificate, which the agent removes after a kubelet CA rotation — it
writes a new one signed by the kubelet CA the bucket signs with. `openssl
verify` checks, after every step, every node's leaves against every other node's bundles.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from kubeplat import config
from tests import imds_standin
from tests.conftest import ssh_identity
from tests.integration.sandbox_user import kubeplat
from tests.kubelet_certs import kubelet_client as signed_kubelet_client

pytestmark = pytest.mark.integration

WAIT_S = 90


CORE = 4321  # the node user's uid and gid on every node here


def environment(user: dict[str, str]) -> config.Environment:
    return config.load_file(Path(user["CHECKOUT"]) / "environments/example.tfvars")


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(1)


def agent_command(cloudconfig: bytes) -> list[str]:
    """The agent's ExecStart, from the layer's cloud-config as nodes receive it."""
    document = yaml.safe_load(cloudconfig.split(b"\n", 1)[1])
    unit = next(
        f["content"]
        for f in document["write_files"]
        if f["path"] == "/etc/systemd/system/kubeplat-agent.service"
    )
    start = unit.split("ExecStart=", 1)[1].split("\nRestart=", 1)[0]
    return shlex.split(start.replace("\\\n", " "))


def adapted(command: list[str], root: Path, restarts: Path) -> list[str]:
    """The unit's command for a node whose / is `root`: paths moved, health gates left out,
    restarts recorded, every second instead of every 10 s."""
    out = [sys.executable, "-m", "kubeplat.node"]
    args = iter(command[1:])
    for arg in args:
        if arg in ("--readyz", "--etcd-health", "--interval"):
            next(args)
            continue
        if arg in ("--target", "--pki-dir", "--kubelet-client"):
            out += [arg, str(root / next(args).lstrip("/"))]
            continue
        out.append(arg)
    return [
        *out, "--interval", "1", "--root", str(root),
        "--reload-command", f"sh -c 'echo {{unit}} >> {restarts}'",
    ]  # fmt: skip


def paired(ca_pem: bytes, key_pem: bytes) -> bool:
    """Whether the first certificate of `ca_pem` (the one a signer uses) is `key_pem`'s."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from kubeplat import pki

    key = serialization.load_pem_private_key(key_pem, password=None)
    return pki._same_key(x509.load_pem_x509_certificate(ca_pem), key)  # type: ignore[arg-type]


class KubeletStandIn(threading.Thread):
    """STAND-IN for each node's kubelet and the controller-manager's CSR signer: a node whose
    client certificate is gone gets a new one, signed by the kubelet CA the bucket holds now."""

    def __init__(self, s3: Any, bucket: str, prefix: str, nodes: list[Node]) -> None:
        super().__init__(daemon=True)
        self.s3, self.bucket, self.prefix, self.nodes = s3, bucket, prefix, nodes
        self.stop = threading.Event()
        self.issued = 0

    def get(self, name: str) -> bytes:
        key = f"{self.prefix}/pki/{name}"
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for node in self.nodes:
                if not node.kubelet_client.exists():
                    ca_key, ca = (
                        self.get("secure/kubelet-ca.key"),
                        self.get("common/kubelet-ca.crt"),
                    )
                    # A signer signs with a certificate and its own key: read between two writes
                    # of a rotation step, the pair may not match yet; it is read again then.
                    if paired(ca, ca_key):
                        self.give(node, ca, ca_key)

    def give(self, node: Node, ca: bytes, ca_key: bytes) -> None:
        self.issued += 1
        target = node.kubelet_client.with_name(f"kubelet-client-{self.issued}.pem")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(signed_kubelet_client(ca, ca_key, node.id))
        node.kubelet_client.unlink(missing_ok=True)
        node.kubelet_client.symlink_to(target.name)


class Node:
    def __init__(self, row: dict[str, str], root: Path) -> None:
        self.id, self.layer, self.root = row["instance_id"], row["layer"], root
        self.restarts = root / "restarts.log"

    @property
    def pki(self) -> Path:
        return self.root / "etc/kubernetes/pki"

    def file(self, name: str) -> bytes:
        return (self.pki / name).read_bytes()

    @property
    def kubelet_client(self) -> Path:
        return self.root / "var/lib/kubelet/pki/kubelet-client-current.pem"

    def restarted(self) -> list[str]:
        return self.restarts.read_text().split() if self.restarts.exists() else []

    def authorized_keys(self) -> list[bytes]:
        """The node user's authorized_keys, as sshd would read them (none yet: [])."""
        path = self.root / "home/core/.ssh/authorized_keys"
        return path.read_bytes().splitlines() if path.exists() else []


@contextmanager
def agents(
    s3: Any,
    env: config.Environment,
    endpoint: str,
    rows: list[dict[str, str]],
    booted: dict[str, bytes],
    tmp: Path,
) -> Iterator[list[Node]]:
    """One agent a node; `booted` is the bucket's pki/ when the nodes booted."""
    bucket, prefix = env.secrets_bucket_name, env.environment
    roles = {"secure": "master", "control-plane": "control-plane", "compute": "worker"}
    nodes, programs = [], []
    with ExitStack() as stack:
        for row in rows:
            node = Node(row, tmp / row["instance_id"])
            nodes.append(node)
            # The node user, as cloud-init creates it from the cloud-config.
            (node.root / "etc").mkdir(parents=True)
            (node.root / "etc/passwd").write_text(f"core:x:{CORE}:{CORE}::/home/core:/bin/sh\n")
            (node.root / "home/core").mkdir(parents=True)
            # What the user-data stub wrote at boot: the layer's PKI as the bucket held it.
            for key, body in booted.items():
                for part in ("common", node.layer):
                    if key.startswith(f"{prefix}/pki/{part}/"):
                        target = node.pki / key.split(f"/pki/{part}/", 1)[1]
                        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                        target.write_bytes(body)
            # The kubelet's client certificate from its boot, signed by the boot's kubelet CA
            # (made long enough ago that the agent may ask for a new one at once).
            node.kubelet_client.parent.mkdir(parents=True)
            (node.kubelet_client.parent / "kubelet-client-boot.pem").write_bytes(
                signed_kubelet_client(
                    booted[f"{prefix}/pki/common/kubelet-ca.crt"],
                    booted[f"{prefix}/pki/secure/kubelet-ca.key"],
                    node.id,
                )
            )
            node.kubelet_client.symlink_to("kubelet-client-boot.pem")
            os.utime(node.kubelet_client, (1_000_000, 1_000_000), follow_symlinks=False)
            cloudconfig = s3.get_object(
                Bucket=bucket, Key=f"{prefix}/cloudconfig/{roles[node.layer]}"
            )["Body"].read()
            command = adapted(agent_command(cloudconfig), node.root, node.restarts)
            meta = {
                "instance-id": node.id,
                "placement/region": env.aws_region,
                "placement/availability-zone": row["availability_zone"],
                "local-ipv4": row["private_ip"],
                "local-hostname": f"ip-{row['private_ip'].replace('.', '-')}.internal",
            }
            imds = stack.enter_context(imds_standin.serving(meta))
            child_env = {
                k: v for k, v in os.environ.items() if k not in imds_standin.NO_OTHER_CREDENTIALS
            }
            child_env.update(
                AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url,
                AWS_ENDPOINT_URL=endpoint,
                AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
                AWS_CONFIG_FILE=str(tmp / "none"),
            )
            log = (node.root / "agent.log").open("w")
            programs.append(
                subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT)
            )
        kubelets = KubeletStandIn(s3, bucket, prefix, nodes)
        kubelets.start()
        try:
            yield nodes
        finally:
            kubelets.stop.set()
            for program in programs:
                program.terminate()
            for program in programs:
                program.wait(timeout=20)


def verify(tmp: Path, bundle: bytes, leaf: bytes) -> bool:
    (tmp / "bundle.pem").write_bytes(bundle)
    (tmp / "leaf.pem").write_bytes(leaf)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp / "bundle.pem"), str(tmp / "leaf.pem")],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def assert_every_node_trusts_every_other(nodes: list[Node], tmp: Path) -> None:
    for holder in nodes:
        for leaf, bundle in (
            ("apiserver.crt", "ca.crt"),
            ("etcd/peer.crt", "etcd/ca.crt"),
            ("etcd/server.crt", "etcd/ca.crt"),
            ("apiserver-etcd-client.crt", "etcd/ca.crt"),
            ("front-proxy-client.crt", "front-proxy-ca.crt"),
        ):
            if not (holder.pki / leaf).exists():
                continue
            for truster in nodes:
                assert verify(tmp, truster.file(bundle), holder.file(leaf)), (
                    f"{truster.id} does not trust {holder.id}'s {leaf}"
                )


def authorized_line(private: bytes) -> bytes:
    """The authorized_keys line of an OpenSSH private key, as ssh-keygen prints it."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private, password=None)
    return key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def certificates(bundle: bytes) -> int:
    return bundle.count(b"-----BEGIN CERTIFICATE-----")


def test_a_staged_rotation_reaches_every_node_and_sticks(
    user: dict[str, str], tmp_path: Path
) -> None:
    up = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-3000:]
    env = environment(user)
    endpoint = kubeplat(user, "sandbox", "status").stdout.strip()
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=env.aws_region,
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
    )
    rows = json.loads(kubeplat(user, "instances", "-e", "example", "-o", "json").stdout)
    assert {r["layer"] for r in rows} == {"secure", "compute"}

    def configs() -> list[str]:
        listed = kubeplat(user, "instances", "-e", "example", "-o", "json")
        return [r["config"] for r in json.loads(listed.stdout)]

    def bucket_pki() -> dict[str, str]:
        listing = s3.list_objects_v2(Bucket=env.secrets_bucket_name, Prefix="example/pki/")
        return {i["Key"]: i["ETag"] for i in listing["Contents"]}

    def rotation(*extra: str) -> subprocess.CompletedProcess[str]:
        done = kubeplat(user, "certs", "rotation", "-e", "example", *extra)
        assert done.returncode == 0, done.stderr
        return done

    def all_current() -> bool:
        return configs() == ["current"] * len(rows)

    listing = s3.list_objects_v2(Bucket=env.secrets_bucket_name, Prefix="example/pki/")
    booted = {
        item["Key"]: s3.get_object(Bucket=env.secrets_bucket_name, Key=item["Key"])["Body"].read()
        for item in listing["Contents"]
    }

    # Without agents nothing reports: the step waits and says for whom, and changes nothing.
    begun = kubeplat(user, "certs", "-e", "example", "--rotate", "ca")
    assert begun.returncode == 0, begun.stderr
    assert "rotation of ca, etcd/ca, front-proxy-ca, kubelet-ca: now at step 1 of 3" in begun.stderr
    before = bucket_pki()
    waiting = rotation()
    assert "step 1 of 3" in waiting.stderr
    assert f"the next step waits: {len(rows)} node(s) do not run this step yet" in waiting.stderr
    assert "(no report" in waiting.stderr  # and why: these nodes never reported
    again = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "PKI: rotation of ca, etcd/ca, front-proxy-ca, kubelet-ca: step 1 of 3" in again.stderr
    assert bucket_pki() == before, "up neither reverts nor skips a step"

    with agents(s3, env, endpoint, rows, booted, tmp_path / "nodes") as nodes:
        wait_for("every node runs step 1", all_current)
        for node in nodes:
            assert certificates(node.file("ca.crt")) == 2
            assert certificates(node.file("etcd/ca.crt")) == 2
            assert "kubelet.service" in node.restarted()  # it reads ca.crt
            if node.layer == "secure":
                assert "etcd.service" in node.restarted()  # etcd/ca.crt
        assert_every_node_trusts_every_other(nodes, tmp_path)

        step2 = rotation()
        assert "now at step 2 of 3: the new one signs" in step2.stderr
        assert "issued etcd/peer (etcd/ca rotated)" in step2.stderr
        wait_for("every node runs step 2", all_current)
        assert_every_node_trusts_every_other(nodes, tmp_path)
        # Every kubelet was made to ask for a certificate of the new kubelet CA, and has one.
        new_kubelet_ca = nodes[0].file("kubelet-ca.crt")
        for node in nodes:
            log = (node.root / "agent.log").read_text()
            assert (
                "restarting kubelet.service: its client certificate is signed by a kubelet CA"
                in log
            )

        def kubelets_current() -> bool:
            listed = kubeplat(user, "instances", "-e", "example", "-o", "json")
            return [r["kubelet"] for r in json.loads(listed.stdout)] == ["current"] * len(rows)

        # A node between the removal of its certificate and the new one reports nothing about
        # it: wait for every node to report the new one, then check each with openssl.
        wait_for("every node reports its kubelet's certificate as current", kubelets_current)
        for node in nodes:
            client = node.kubelet_client.read_bytes()
            assert verify(tmp_path, new_kubelet_ca, client.split(b"-----BEGIN PRIVATE")[0])
        old_ca = nodes[0].file("ca.crt").split(b"-----END CERTIFICATE-----")[1]

        step3 = rotation()
        assert "finished: the old one is trusted no more" in step3.stderr
        wait_for("every node runs the finished set", all_current)
        for node in nodes:
            assert certificates(node.file("ca.crt")) == 1
            assert old_ca.strip() not in node.file("ca.crt")
        assert_every_node_trusts_every_other(nodes, tmp_path)
        assert "no rotation in progress" in rotation().stderr

        # The service-account key: its last step waits for tokens to turn over (a day).
        assert kubeplat(user, "certs", "-e", "example", "--rotate", "sa").returncode == 0
        wait_for("every node runs sa step 1", all_current)
        secure = [n for n in nodes if n.layer == "secure"]
        assert all(n.file("sa.pub").count(b"BEGIN PUBLIC KEY") == 2 for n in secure)
        old_key = secure[0].file("sa.key")
        assert "now at step 2 of 3" in rotation().stderr
        wait_for("every node runs sa step 2", all_current)
        assert all(n.file("sa.key") != old_key for n in secure)
        held = rotation()
        assert re.search(
            r"the next step waits: service-account tokens signed by the old key may be in use "
            r"until \d{4}-\d\d-\d\d \d\d:\d\d UTC",
            held.stderr,
        )
        forced = rotation("--force")
        assert "taking the next rotation step anyway (--force)" in forced.stderr
        assert "finished" in forced.stderr
        wait_for("every node runs the finished sa set", all_current)
        assert all(n.file("sa.pub").count(b"BEGIN PUBLIC KEY") == 1 for n in secure)
        for node in nodes:
            assert not (node.pki / "sa.key").exists() or node.layer == "secure"

        # The SSH key pair: authorized beside the old one, then used, then the old one dropped;
        # `kubeplat ssh` uses the key every node authorizes at each step.
        def ssh_key() -> bytes:
            printed = kubeplat(user, "ssh", "-e", "example", "--print", rows[0]["instance_id"])
            assert printed.returncode == 0, printed.stderr
            key = ssh_identity(printed.stdout)
            assert oct(key.stat().st_mode & 0o777) == "0o600"
            return authorized_line(key.read_bytes())

        first = ssh_key()
        assert all(n.authorized_keys() == [first] for n in nodes), "installed at the agent's start"
        assert all((n.root / "home/core/.ssh").stat().st_uid == CORE for n in nodes)
        begun = kubeplat(user, "certs", "-e", "example", "--rotate", "ssh")
        assert begun.returncode == 0, begun.stderr
        assert "the new key is authorized beside the old one" in begun.stderr
        wait_for("every node runs ssh step 1", all_current)
        assert ssh_key() == first
        assert all(len(n.authorized_keys()) == 2 and first in n.authorized_keys() for n in nodes)
        assert "kubeplat ssh uses the new key" in rotation().stderr
        second = ssh_key()
        assert second != first
        wait_for("every node runs ssh step 2", all_current)
        assert all(second in n.authorized_keys() for n in nodes)
        assert "finished" in rotation().stderr
        wait_for("every node runs the finished ssh set", all_current)
        assert all(n.authorized_keys() == [second] for n in nodes)
        # No node was replaced for it: the launch templates do not change.
        plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode")
        assert plan.returncode == 0, plan.stderr[-3000:]

    # A later up keeps all of it, and writes the admin kubeconfig for the new CA.
    after = bucket_pki()
    final = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert final.returncode == 0, final.stderr[-3000:]
    assert "rotation" not in final.stderr and "issued" not in final.stderr
    assert bucket_pki() == after
    admin = yaml.safe_load(env.kubeconfig_path.read_text())
    ca_data = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(ca_data) == nodes[0].file("ca.crt")
    # The sandbox's buckets are reached over plain HTTP: their policy is not kubeplat's to judge.
    listed = kubeplat(user, "buckets", "-e", "example")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("not checked (kubeplat talks plain HTTP here)") == 2
