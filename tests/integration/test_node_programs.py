"""The node programs against real services: downloads from an HTTP mirror on loopback and an S3
mirror in the emulator, health reports to the emulator's Auto Scaling, and control-plane nodes
taking turns through status objects in its S3 (moto's server, the sandbox's emulator)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubeplat.node import agent, fetch, health, steps
from kubeplat.node import aws as node_aws

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
BUCKET = "node-programs"


class Mirror:
    """An HTTP artifact mirror on loopback that counts what it serves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    served = Mirror(tmp_path / "mirror")
    served.root.mkdir()
    yield served
    served.server.shutdown()


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def artifact(name: str, url: str, data: bytes, install: dict[str, Any]) -> dict[str, Any]:
    arch = fetch.arch()
    digest = hashlib.sha256(data).hexdigest()
    return {"name": name, "urls": {arch: url}, "sha256": {arch: digest}, "install": install}


def test_pinned_binaries_are_checked_installed_once_and_refused_when_wrong(
    mirror: Mirror, tmp_path: Path
) -> None:
    record = tmp_path / "artifacts.json"
    kubelet = b"#!/bin/sh\necho kubelet\n"
    (mirror.root / "kubelet").write_bytes(kubelet)
    etcd = tarball(
        {
            "etcd-v3.5.21-linux-amd64/etcd": b"etcd",
            "etcd-v3.5.21-linux-amd64/etcdctl": b"etcdctl",
            "etcd-v3.5.21-linux-amd64/README.md": b"docs",
            "../escape": b"never",
        }
    )
    (mirror.root / "etcd.tar.gz").write_bytes(etcd)
    bindir = tmp_path / "usr/local/bin"
    wanted = [
        artifact(
            "kubelet",
            f"{mirror.url}/kubelet",
            kubelet,
            {"kind": "bin", "dest": f"{bindir}/kubelet"},
        ),
        artifact(
            "etcd",
            f"{mirror.url}/etcd.tar.gz",
            etcd,
            {
                "kind": "tar",
                "dest": str(bindir),
                "strip": 1,
                "only": ["etcd", "etcdctl"],
                "check": ["etcd"],
            },
        ),
    ]
    assert [fetch.ensure(a, REGION, record) for a in wanted] == [True, True]
    assert (bindir / "kubelet").read_bytes() == kubelet
    assert (bindir / "kubelet").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in bindir.iterdir()) == ["etcd", "etcdctl", "kubelet"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "usr/local/escape").exists()
    # A reboot or a retried bootstrap downloads nothing that is in place.
    served = len(mirror.requests)
    assert [fetch.ensure(a, REGION, record) for a in wanted] == [False, False]
    assert len(mirror.requests) == served

    # The mirror serves a different file under a pinned name: fetched twice, never installed.
    (bindir / "kubelet").unlink()
    (mirror.root / "kubelet").write_bytes(b"#!/bin/sh\necho tampered\n")
    before = len(mirror.requests)
    with pytest.raises(steps.Permanent, match="does not match the pinned"):
        fetch.ensure(wanted[0], REGION, record)
    assert len(mirror.requests) == before + 2
    assert not (bindir / "kubelet").exists()


def test_a_missing_file_is_final_an_unreachable_mirror_is_retried(
    mirror: Mirror, tmp_path: Path
) -> None:
    missing = artifact(
        "runc", f"{mirror.url}/runc.amd64", b"x", {"kind": "bin", "dest": str(tmp_path / "runc")}
    )
    with pytest.raises(steps.Permanent, match="HTTP 404"):
        fetch.ensure(missing, REGION, tmp_path / "record.json")
    mirror.server.shutdown()
    mirror.server.server_close()
    with pytest.raises(fetch.Transient):
        fetch.ensure(missing, REGION, tmp_path / "record.json")


def test_an_s3_mirror_is_read_with_the_node_role(aws: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(
            Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    data = b"\x7fELF runc"
    key = "kubeplat/github.com/opencontainers/runc/releases/download/v1.3.2/runc.amd64"
    s3.put_object(Bucket="artifacts", Key=key, Body=data)
    runc = artifact(
        "runc", f"s3://artifacts/{key}", data, {"kind": "bin", "dest": str(tmp_path / "runc")}
    )
    assert fetch.ensure(runc, REGION, tmp_path / "record.json")
    assert (tmp_path / "runc").read_bytes() == data
    gone = artifact(
        "runc",
        "s3://artifacts/kubeplat/nothing",
        data,
        {"kind": "bin", "dest": str(tmp_path / "x")},
    )
    with pytest.raises(steps.Permanent, match="NoSuchKey"):
        fetch.ensure(gone, REGION, tmp_path / "record2.json")


@pytest.fixture
def group(aws: str) -> Iterator[dict[str, Any]]:
    """An autoscaling group of three running instances in the emulator, and the bucket."""
    ec2 = boto3.client("ec2", region_name=REGION)
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    name = f"nodes-{id(ec2)}"
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": "ami-0deb1200000000a64", "InstanceType": "t3.small"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template},
        MinSize=3,
        MaxSize=3,
        AvailabilityZones=[f"{REGION}a"],
        Tags=[
            {"Key": "Environment", "Value": name, "PropagateAtLaunch": True},
            {"Key": "Layer", "Value": "secure", "PropagateAtLaunch": True},
        ],
    )
    instances = sorted(
        i["InstanceId"]
        for i in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ][0]["Instances"]
    )
    yield {"name": name, "instances": instances, "ec2": ec2, "autoscaling": autoscaling, "s3": s3}
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)


def reporter(group: dict[str, Any], instance: str) -> health.Reporter:
    identity = node_aws.Identity(instance, REGION, "10.0.0.1", "ip-10-0-0-1.ec2.internal")
    return health.Reporter(BUCKET, group["name"], "secure", identity)


def health_of(group: dict[str, Any], instance: str) -> str:
    found = group["autoscaling"].describe_auto_scaling_instances(InstanceIds=[instance])
    return str(found["AutoScalingInstances"][0]["HealthStatus"]).upper()  # AWS says HEALTHY


def test_a_node_that_cannot_finish_asks_to_be_replaced_until_the_cap(group: dict[str, Any]) -> None:
    first, second, third = group["instances"]
    assert health_of(group, first) == "HEALTHY"
    said = reporter(group, first).failed("binaries: sha256 mismatch", cap=2)
    assert "marked unhealthy" in said
    assert health_of(group, first) == "UNHEALTHY"
    assert "marked unhealthy" in reporter(group, second).failed("binaries: sha256 mismatch", cap=2)
    # Two replacements within the hour: the third failed node stays, and says why.
    said = reporter(group, third).failed("binaries: sha256 mismatch", cap=2)
    assert "left in service" in said and "cap 2" in said
    assert health_of(group, third) == "HEALTHY"
    markers = group["s3"].list_objects_v2(
        Bucket=BUCKET, Prefix=f"{group['name']}/status/secure/replaced/"
    )
    assert len(markers["Contents"]) == 2


def test_status_reports_are_published_and_read_back(group: dict[str, Any]) -> None:
    first, second, _ = group["instances"]
    assert reporter(group, first).publish("bootstrap", {"state": "done"})
    assert reporter(group, second).read(first, "bootstrap") == {"state": "done"}
    assert reporter(group, second).read(second, "bootstrap") is None


def test_control_plane_nodes_take_turns_and_a_bad_set_stops_at_the_first(
    group: dict[str, Any], tmp_path: Path
) -> None:
    s3, ec2 = group["s3"], group["ec2"]
    prefix = f"{group['name']}/manifests/secure/"
    ready = dict.fromkeys(group["instances"], True)
    nodes = {}
    for instance in group["instances"]:
        roll = agent.Roll(
            lambda: agent.running_instances(ec2, group["name"], "secure"),
            reporter(group, instance),
            instance,
            lambda instance=instance: ready[instance],
            ready_timeout_s=1,
            poll_s=0.1,
        )
        nodes[instance] = (agent.Agent(s3, BUCKET, prefix, tmp_path / instance), roll)
    a, b, c = group["instances"]

    def step(instance: str) -> bytes | None:
        sync, roll = nodes[instance]
        roll.step(sync)
        path = tmp_path / instance / "kube-apiserver.yaml"
        return path.read_bytes() if path.exists() else None

    s3.put_object(Bucket=BUCKET, Key=prefix + "kube-apiserver.yaml", Body=b"v: 1\n")
    # First sets are applied at once, in any order: nothing runs yet that a turn protects.
    assert [step(n) for n in (c, b, a)] == [b"v: 1\n"] * 3

    s3.put_object(Bucket=BUCKET, Key=prefix + "kube-apiserver.yaml", Body=b"v: 2\n")
    assert step(c) == b"v: 1\n"  # waits for a and b
    assert step(b) == b"v: 1\n"  # waits for a
    assert step(a) == b"v: 2\n"  # first in order: goes, then reports ready
    assert step(c) == b"v: 1\n"  # b has not gone yet
    assert step(b) == b"v: 2\n"
    assert step(c) == b"v: 2\n"

    # A set that keeps the first API server from answering stops the roll there.
    ready[a] = False
    s3.put_object(Bucket=BUCKET, Key=prefix + "kube-apiserver.yaml", Body=b"v: broken\n")
    assert step(a) == b"v: broken\n"
    assert reporter(group, b).read(a, "manifests")["ready"] is False  # type: ignore[index]
    assert [step(b), step(c), step(b), step(c)] == [b"v: 2\n"] * 4

    # The fix arrives: a takes it first, and the roll goes on.
    ready[a] = True
    s3.put_object(Bucket=BUCKET, Key=prefix + "kube-apiserver.yaml", Body=b"v: 3\n")
    assert [step(c), step(b), step(a), step(b), step(c)] == [
        b"v: 2\n",
        b"v: 2\n",
        b"v: 3\n",
        b"v: 3\n",
        b"v: 3\n",
    ]

    # A node that is gone is not waited for.
    ec2.terminate_instances(InstanceIds=[a])
    s3.put_object(Bucket=BUCKET, Key=prefix + "kube-apiserver.yaml", Body=b"v: 4\n")
    assert step(b) == b"v: 4\n"
