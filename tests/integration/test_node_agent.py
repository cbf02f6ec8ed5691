"""The node agent against the sandbox's S3 (moto's server) and a temporary target directory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from kubeplat import inventory
from kubeplat.node import agent as node_agent
from tests import imds_standin
from tests.kubelet_certs import kubelet_client

pytestmark = pytest.mark.integration

BUCKET = "agent-test"
PREFIX = "dev/manifests/compute/"


@pytest.fixture
def s3(aws: str):  # type: ignore[no-untyped-def]
    client = boto3.client("s3", region_name="eu-west-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


def test_sync_adds_changes_removes_and_keeps_mtimes(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "manifests"
    target.mkdir()
    (target / "not-ours.yaml").write_text("kind: Pod\n")  # a file the agent did not write
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "a.yaml", Body=b"a: 1\n")
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "b.yaml", Body=b"b: 1\n")
    s3.put_object(Bucket=BUCKET, Key="dev/manifests/secure/other.yaml", Body=b"x\n")
    agent = node_agent.Agent(s3, BUCKET, PREFIX, target)
    assert agent.sync_once() == ["+a.yaml", "+b.yaml"]
    os.utime(target / "a.yaml", (1_000_000, 1_000_000))
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "b.yaml", Body=b"b: 2\n")
    assert agent.sync_once() == ["~b.yaml"]
    assert (target / "b.yaml").read_text() == "b: 2\n"
    assert (target / "a.yaml").stat().st_mtime == 1_000_000  # unchanged file untouched
    # Re-uploading identical bytes (new ETag only matters if bytes differ) rewrites nothing.
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "a.yaml", Body=b"a: 1\n")
    assert agent.sync_once() == []
    assert (target / "a.yaml").stat().st_mtime == 1_000_000
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + "a.yaml")
    assert agent.sync_once() == ["-a.yaml"]
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [
        "b.yaml",
        "not-ours.yaml",
    ]
    assert not (target / "other.yaml").exists()


def test_running_agent_picks_up_a_change_within_one_interval(s3, tmp_path: Path, aws: str) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "manifests"
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "pod.yaml", Body=b"v: 1\n")
    interval = 2.0
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "kubeplat.node", "agent", "--bucket", BUCKET, "--prefix", PREFIX,
            "--target", str(target), "--region", "eu-west-1", "--interval", str(interval),
        ],
        env={**os.environ},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for(
            lambda: (
                (target / "pod.yaml").exists() and (target / "pod.yaml").read_text() == "v: 1\n"
            ),
            10,
        )
        s3.put_object(Bucket=BUCKET, Key=PREFIX + "pod.yaml", Body=b"v: 2\n")
        changed_at = time.monotonic()
        _wait_for(lambda: (target / "pod.yaml").read_text() == "v: 2\n", 10)
        took = time.monotonic() - changed_at
        print(f"picked up after {took:.2f}s (interval {interval}s)")
        assert took <= interval + 2.0  # one interval, plus slack for a busy machine
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_readers_never_see_a_partial_file(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "manifests"
    versions = [(b"%d" % i) * 200_000 + b"\n" for i in range(1, 7)]
    agent = node_agent.Agent(s3, BUCKET, PREFIX, target)
    seen: set[bytes] = set()
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for path in list(target.glob("*.yaml")):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                if data not in versions:
                    bad.append(len(data))
                seen.add(data)

    s3.put_object(Bucket=BUCKET, Key=PREFIX + "big.yaml", Body=versions[0])
    agent.sync_once()
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for body in versions[1:]:
            s3.put_object(Bucket=BUCKET, Key=PREFIX + "big.yaml", Body=body)
            agent.sync_once()
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert len(seen) >= 2  # the reader really overlapped the writes
    assert (target / "big.yaml").read_bytes() == versions[-1]


ENV = "dev"
RELOADS = {
    "etcd.service": ("etcd/ca.crt", "etcd/server.crt", "etcd/server.key"),
    "kubelet.service": ("ca.crt",),
}
PKI = {
    "common/ca.crt": b"ca 1\n",
    "common/etcd/ca.crt": b"etcd ca 1\n",
    "secure/etcd/server.crt": b"etcd server 1\n",
    "secure/etcd/server.key": b"etcd server key 1\n",
    "secure/apiserver.crt": b"apiserver 1\n",
    "secure/kubelet-ca.key": b"kubelet ca key 1\n",
    "secure/encryption-config.yaml": b"keys 1\n",
}
MANIFESTS = {
    "kube-apiserver.yaml": b'metadata:\n  annotations:\n    kubeplat.io/pki: "@PKI:apiserver.crt,ca.crt,encryption-config.yaml@"\n',
    "kube-scheduler.yaml": b'metadata:\n  annotations:\n    kubeplat.io/pki: "@PKI:scheduler.crt@"\n',
}


def put(s3, name: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=BUCKET, Key=f"{ENV}/{name}", Body=body)


def secure_node(s3, root: Path, restart) -> node_agent.Sync:  # type: ignore[no-untyped-def]
    """A secure node's agent (as its unit runs it), whose PKI the user-data stub wrote at boot."""
    for name, body in PKI.items():
        path = root / "pki" / name.split("/", 1)[1]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(body)
    return secure_node_again(s3, root, restart)


def test_pki_reaches_the_node_and_restarts_exactly_what_reads_it(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name, body in PKI.items():
        put(s3, f"pki/{name}", body)
    for name, body in MANIFESTS.items():
        put(s3, f"manifests/secure/{name}", body)
    put(s3, "pki/compute/bootstrap-token", b"not this layer's\n")
    restarted: list[str] = []
    node = secure_node(s3, tmp_path, restarted.append)
    manifests, pki = tmp_path / "manifests", tmp_path / "pki"

    # Boot: the files are those the stub wrote; nothing to restart; placeholders filled.
    node.sync_once()
    assert restarted == []
    apiserver = (manifests / "kube-apiserver.yaml").read_text()
    assert "@PKI" not in apiserver and "kubeplat.io/pki:" in apiserver
    assert not (pki / "bootstrap-token").exists()
    os.utime(manifests / "kube-scheduler.yaml", (1_000_000, 1_000_000))
    os.utime(manifests / "kube-apiserver.yaml", (1_000_000, 1_000_000))

    # A reissued etcd server certificate: written 0600/0644, etcd restarted, no pod touched.
    put(s3, "pki/secure/etcd/server.crt", b"etcd server 2\n")
    put(s3, "pki/secure/etcd/server.key", b"etcd server key 2\n")
    assert sorted(node.sync_once()) == [
        "~pki/secure/etcd/server.crt",
        "~pki/secure/etcd/server.key",
    ]
    assert restarted == ["etcd.service"]
    assert (pki / "etcd/server.key").read_bytes() == b"etcd server key 2\n"
    assert (pki / "etcd/server.key").stat().st_mode & 0o777 == 0o600
    assert (pki / "etcd/server.crt").stat().st_mode & 0o777 == 0o644
    assert (manifests / "kube-apiserver.yaml").stat().st_mtime == 1_000_000

    # The API server's certificate: its manifest changes (so the kubelet restarts that pod),
    # the scheduler's does not; no unit restarts.
    put(s3, "pki/secure/apiserver.crt", b"apiserver 2\n")
    assert node.sync_once() == ["~pki/secure/apiserver.crt", "~manifests/kube-apiserver.yaml"]
    assert restarted == ["etcd.service"]
    assert (manifests / "kube-apiserver.yaml").read_text() != apiserver
    assert (manifests / "kube-scheduler.yaml").stat().st_mtime == 1_000_000

    # A step of an encryption key rotation: the config is written 0600, the API server restarts.
    put(s3, "pki/secure/encryption-config.yaml", b"keys 2\n")
    assert node.sync_once() == [
        "~pki/secure/encryption-config.yaml",
        "~manifests/kube-apiserver.yaml",
    ]
    assert (pki / "encryption-config.yaml").stat().st_mode & 0o777 == 0o600
    assert restarted == ["etcd.service"]

    # The cluster CA: the kubelet restarts and the API server's pod again.
    put(s3, "pki/common/ca.crt", b"ca 2\n")
    assert node.sync_once() == ["~pki/common/ca.crt", "~manifests/kube-apiserver.yaml"]
    assert restarted == ["etcd.service", "kubelet.service"]

    # A key the layer may no longer hold leaves the node.
    s3.delete_object(Bucket=BUCKET, Key=f"{ENV}/pki/secure/kubelet-ca.key")
    assert node.sync_once() == ["-pki/secure/kubelet-ca.key"]
    assert not (pki / "kubelet-ca.key").exists()
    assert node.sync_once() == []


def test_a_restart_owed_when_the_agent_died_is_done_when_it_starts_again(
    s3, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    for name, body in PKI.items():
        put(s3, f"pki/{name}", body)
    restarted: list[str] = []
    secure_node(s3, tmp_path, restarted.append).sync_once()
    put(s3, "pki/common/etcd/ca.crt", b"etcd ca 2\n")

    def killed(unit: str) -> None:
        raise KeyboardInterrupt  # the agent dies between writing the file and the restart

    with pytest.raises(KeyboardInterrupt):
        secure_node_again(s3, tmp_path, killed).sync_once()
    assert (tmp_path / "pki/etcd/ca.crt").read_bytes() == b"etcd ca 2\n"
    again = secure_node_again(s3, tmp_path, restarted.append)
    assert again.pending() == ["etcd.service"]
    assert again.sync_once() == []  # nothing left to write, but the restart is owed
    assert restarted == ["etcd.service"]
    assert again.pending() == []


def secure_node_again(s3, root: Path, restart) -> node_agent.Sync:  # type: ignore[no-untyped-def]
    """The same node's agent, started again (its files and state as they are)."""
    manifests = node_agent.Agent(s3, BUCKET, f"{ENV}/manifests/secure/", root / "manifests")
    pki = [
        node_agent.Agent(s3, BUCKET, f"{ENV}/pki/{p}/", root / "pki", tree=True)
        for p in ("common", "secure")
    ]
    return node_agent.Sync(manifests, pki, RELOADS, restart)


def test_the_agent_program_reloads_a_unit_and_reports_what_it_runs(  # type: ignore[no-untyped-def]
    s3, tmp_path: Path, aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent as its unit runs it, against the sandbox's S3, with its identity and
    credentials from an IMDSv2 stand-in; `--reload-command` records what it would restart."""
    for name, body in PKI.items():
        put(s3, f"pki/{name}", body)
    for name, body in MANIFESTS.items():
        put(s3, f"manifests/secure/{name}", body)
    for name, body in PKI.items():  # what the user-data stub wrote at boot
        path = tmp_path / "pki" / name.split("/", 1)[1]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(body)
    restarts = tmp_path / "restarts.log"
    meta = {
        "instance-id": "i-0agent00000000001",
        "placement/region": "eu-west-1",
        "local-ipv4": "10.0.0.9",
        "local-hostname": "ip-10-0-0-9.eu-west-1.compute.internal",
    }
    with imds_standin.serving(meta) as imds:
        env = {k: v for k, v in os.environ.items() if k not in imds_standin.NO_OTHER_CREDENTIALS}
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.url
        env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
        program = subprocess.Popen(
            [
                sys.executable, "-m", "kubeplat.node", "agent", "--bucket", BUCKET,
                "--interval", "1", "--prefix", f"{ENV}/manifests/secure/",
                "--target", str(tmp_path / "manifests"),
                "--pki-prefix", f"{ENV}/pki/common/", "--pki-prefix", f"{ENV}/pki/secure/",
                "--pki-dir", str(tmp_path / "pki"),
                "--reload", "etcd.service=etcd/ca.crt,etcd/server.crt,etcd/server.key",
                "--reload", "kubelet.service=ca.crt",
                "--reload-command", f"sh -c 'echo {{unit}} >> {restarts}'",
                "--report", f"{ENV}/secure",
            ],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            report_key = f"{ENV}/status/secure/i-0agent00000000001/manifests.json"

            def reported() -> dict:  # type: ignore[type-arg]
                body = s3.get_object(Bucket=BUCKET, Key=report_key)["Body"].read()
                return json.loads(body)  # type: ignore[no-any-return]

            def runs_the_bucket() -> bool:
                # As `kubeplat instances` computes what the layer should run:
                wanted = node_agent.digest(inventory.layer_listing(s3, BUCKET, ENV, "secure"))
                try:
                    return bool(reported()["digest"] == wanted)
                except s3.exceptions.NoSuchKey:
                    return False

            _wait_for(runs_the_bucket, 30)
            assert not restarts.exists()  # the files were those the node booted with
            put(s3, "pki/secure/etcd/server.crt", b"etcd server 2\n")
            _wait_for(lambda: restarts.exists() and restarts.read_text() == "etcd.service\n", 30)
            assert (tmp_path / "pki/etcd/server.crt").read_bytes() == b"etcd server 2\n"
            _wait_for(runs_the_bucket, 30)  # the operator can see the node has converged
            assert reported()["ready"] is True
        except AssertionError as failed:
            failure = str(failed)
        else:
            failure = ""
        finally:
            program.terminate()
            _, stderr = program.communicate(timeout=10)
    assert not failure, f"{failure}; the agent said:\n{stderr}"
    assert "restarting etcd.service: a file it reads changed" in stderr, stderr


def test_instances_say_which_nodes_run_the_current_set(s3, aws: str) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    import boto3

    from kubeplat.aws import Aws

    for name, body in PKI.items():
        put(s3, f"pki/{name}", body)
    for name, body in MANIFESTS.items():
        put(s3, f"manifests/secure/{name}", body)
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    current = node_agent.digest(inventory.layer_listing(s3, BUCKET, ENV, "secure"))

    def report(instance: str, digest: str, ready: bool, age: timedelta, **more: str) -> None:
        stamp = (now - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = json.dumps({"digest": digest, "ready": ready, "updated": stamp, **more})
        put(s3, f"status/secure/{instance}/manifests.json", body.encode())

    report("i-1", current, True, timedelta(seconds=30), kubelet_client="current")
    report("i-2", current, False, timedelta(seconds=30))
    report("i-3", "an older set", True, timedelta(seconds=30))
    report("i-4", current, True, timedelta(minutes=6))
    # Its kubelet still uses a certificate of a kubelet CA being rotated out.
    report("i-6", current, True, timedelta(seconds=30), kubelet_client="old")
    rows = [
        inventory.Instance(f"n{i}", "", "", f"i-{i}", "running", "eu-west-1a", "secure", "")
        for i in range(1, 7)
    ]
    found = inventory.converged(Aws(boto3.Session(), "eu-west-1", aws), BUCKET, ENV, rows, now)
    assert [r.config for r in found] == [
        "current", "not ready", "behind", "silent", "-", "behind"
    ]  # fmt: skip
    # A new certificate in the bucket: every node is behind until its agent reports it.
    put(s3, "pki/secure/apiserver.crt", b"apiserver 2\n")
    found = inventory.converged(Aws(boto3.Session(), "eu-west-1", aws), BUCKET, ENV, rows, now)
    assert found[0].config == "behind"


def _wait_for(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_kubelet_whose_certificate_a_retired_kubelet_ca_signed_asks_for_a_new_one(
    s3, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Step 2 of a kubelet-ca rotation: the controller-manager signs with the new kubelet CA,
    so a kubelet's client certificate signed by the old one is removed and the kubelet
    restarted (the real kubelet then asks for a new one with its bootstrap token: not run
    here, there is no kubelet); the node reports it until its certificate is current."""
    import datetime as dt

    from kubeplat import config, pki

    env = config.load_file(Path(__file__).parents[2] / "environments/example.tfvars")
    now = dt.datetime.now(dt.UTC)
    files = pki.ensure(env, {}, now=now).files
    begun = pki.begin(env, files, ["kubelet-ca"], now).files
    promoted = pki.advance(env, begun, now).files

    def kubelet_cert(ca: str, ca_key: str) -> bytes:
        return kubelet_client(ca_files[ca], ca_files[ca_key], "ip-10-0-0-9")

    ca_files = {"old": begun["kubelet-ca.crt"], "old.key": begun["kubelet-ca.key"],
                "new": promoted["kubelet-ca.crt"], "new.key": promoted["kubelet-ca.key"]}  # fmt: skip
    # The agent reads key ids from DER by hand: they match what cryptography reads.
    from cryptography import x509

    new_ca = x509.load_pem_x509_certificate(ca_files["new"])
    ski = new_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert node_agent.key_ids(ca_files["new"])[0] == ski
    assert node_agent.key_ids(kubelet_cert("new", "new.key"))[1] == ski
    assert node_agent.key_ids(kubelet_cert("old", "old.key"))[1] not in (ski, None)

    put(s3, "pki/common/kubelet-ca.crt", ca_files["old"])
    kubelet = tmp_path / "var/lib/kubelet/pki"
    kubelet.mkdir(parents=True)
    (kubelet / "kubelet-client-2026.pem").write_bytes(kubelet_cert("old", "old.key"))
    current = kubelet / "kubelet-client-current.pem"
    current.symlink_to("kubelet-client-2026.pem")
    os.utime(current, (1_000_000, 1_000_000), follow_symlinks=False)
    restarted: list[str] = []
    node = secure_node_again(s3, tmp_path, restarted.append)
    node.kubelet_client = current
    node.sync_once()
    assert node.kubelet_client_state() == "current" and restarted == []

    put(s3, "pki/common/kubelet-ca.crt", ca_files["new"])  # step 2: the new one signs
    node.sync_once()
    assert restarted == ["kubelet.service"]
    assert not current.exists() and not current.is_symlink()
    # The kubelet got a certificate from a controller-manager that still signed with the old
    # CA: not asked again at once (a retry every KUBELET_RETRY_S), and reported as old.
    (kubelet / "kubelet-client-2027.pem").write_bytes(kubelet_cert("old", "old.key"))
    current.symlink_to("kubelet-client-2027.pem")
    node.sync_once()
    assert restarted == ["kubelet.service"] and node.kubelet_client_state() == "old"
    os.utime(current, (1_000_000, 1_000_000), follow_symlinks=False)
    node.sync_once()
    assert restarted == ["kubelet.service"] * 2
    (kubelet / "kubelet-client-2028.pem").write_bytes(kubelet_cert("new", "new.key"))
    current.symlink_to("kubelet-client-2028.pem")
    os.utime(current, (1_000_000, 1_000_000), follow_symlinks=False)
    node.sync_once()
    assert restarted == ["kubelet.service"] * 2 and node.kubelet_client_state() == "current"


def test_a_kubelet_serving_certificate_of_a_retired_kubelet_ca_is_asked_for_again(
    s3, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The serving certificate (approved CSR, signer kubelet-serving, signed with kubelet-ca
    too) is watched like the client one: after step 2 of a kubelet-ca rotation an old one is
    removed and the kubelet restarted once for both, so it asks again (the approver approves
    it; not run here, there is no kubelet); the node is `old` until both are current."""
    import datetime as dt

    from kubeplat import config, pki

    env = config.load_file(Path(__file__).parents[2] / "environments/example.tfvars")
    now = dt.datetime.now(dt.UTC)
    begun = pki.begin(env, pki.ensure(env, {}, now=now).files, ["kubelet-ca"], now).files
    promoted = pki.advance(env, begun, now).files
    old = (begun["kubelet-ca.crt"], begun["kubelet-ca.key"])
    new = (promoted["kubelet-ca.crt"], promoted["kubelet-ca.key"])

    put(s3, "pki/common/kubelet-ca.crt", old[0])
    kubelet = tmp_path / "var/lib/kubelet/pki"
    kubelet.mkdir(parents=True)
    links = {}
    for kind in ("client", "server"):
        (kubelet / f"kubelet-{kind}-1.pem").write_bytes(kubelet_client(*old, "ip-10-0-0-9"))
        links[kind] = kubelet / f"kubelet-{kind}-current.pem"
        links[kind].symlink_to(f"kubelet-{kind}-1.pem")
        os.utime(links[kind], (1_000_000, 1_000_000), follow_symlinks=False)
    restarted: list[str] = []
    node = secure_node_again(s3, tmp_path, restarted.append)
    node.kubelet_client, node.kubelet_serving = links["client"], links["server"]
    node.sync_once()
    assert node.kubelet_client_state() == "current" and restarted == []

    put(s3, "pki/common/kubelet-ca.crt", new[0])  # step 2: the new one signs
    node.sync_once()
    assert restarted == ["kubelet.service"], "one restart for both certificates"
    assert not links["client"].is_symlink() and not links["server"].is_symlink()
    # The client one comes back new, the serving one not yet: still `old`.
    (kubelet / "kubelet-client-2.pem").write_bytes(kubelet_client(*new, "ip-10-0-0-9"))
    links["client"].symlink_to("kubelet-client-2.pem")
    (kubelet / "kubelet-server-2.pem").write_bytes(kubelet_client(*old, "ip-10-0-0-9"))
    links["server"].symlink_to("kubelet-server-2.pem")
    node.sync_once()
    assert node.kubelet_client_state() == "old" and restarted == ["kubelet.service"]
    os.utime(links["server"], (1_000_000, 1_000_000), follow_symlinks=False)
    node.sync_once()
    assert restarted == ["kubelet.service"] * 2
    assert links["client"].is_symlink() and not links["server"].is_symlink()
    (kubelet / "kubelet-server-3.pem").write_bytes(kubelet_client(*new, "ip-10-0-0-9"))
    links["server"].symlink_to("kubelet-server-3.pem")
    node.sync_once()
    assert node.kubelet_client_state() == "current" and restarted == ["kubelet.service"] * 2
