"""kubeplat etcd membership: the secure layer's cluster is formed once, members join one at a
time, and members whose instance is gone are removed while quorum holds.

Four commands, each run by a systemd unit:

  etcd-member prepare  (kubeplat-etcd-member.service, before etcd.service): decide how this
                       instance's etcd starts, and write its configuration;
  etcd-member recheck  (etcd.service's ExecStartPre): before each start of a member that has
                       never run, decide again from the member list as it is then;
  etcd-member watch    (kubeplat-etcd-watch.service, beside etcd.service): promote this member
                       once it has caught up (it joins as a learner); on the leader remove
                       members whose instance is gone and take the snapshots an operator asks
                       for (`kubeplat etcd backup`); restart this member when an operator
                       restored the cluster from a snapshot (`kubeplat etcd restore`);
  etcd-member snapshot (kubeplat-etcd-snapshot.timer): on the leader, save a snapshot to
                       <prefix>/etcd-backups/ in the secrets bucket and apply the retention.

A member's name is its instance id. `prepare` looks at the environment's running secure
instances (EC2), asks the other instances' etcd for the member list and for a quorum read, and
reads the environment's formation record (`<prefix>/etcd/formation.json` in the secrets
bucket), then decides (`decide`, pure):

- etcd has run here (its data directory holds a log): etcd restarts as the member it was;
- a member answers and this instance is one (added before it last stopped): start `existing`;
- a member answers with quorum: remove the members whose instance is gone, add this one as a
  learner (etcd holds one learner at a time, so joins go one by one; another joiner's learner
  means wait), start `existing`;
- a member answers without quorum: quorum is lost. Say so and wait; never form a cluster;
- nobody answers and the formation record names this instance: the cluster is being formed
  (or all its members restart): start `new` with the record's members and token;
- nobody answers and a record exists without this instance: the cluster formed before is
  unreachable. Say so and wait; never form a second one (restore from a snapshot instead);
- nobody answers and no record exists: once the group's desired number of instances run, the
  lowest instance ids propose the record; the first conditional write wins and fixes the
  members and the cluster token for good.

A restore (`kubeplat etcd restore`) rewrites the record with a higher generation, the running
instances as members, a new token and a copy of the snapshot (`<prefix>/etcd/restore/G.db`).
An instance whose data is of an older generation sets it aside (never deleted:
`<data-dir>.before-generation-G`); an instance the record names restores the snapshot with
`etcdutl snapshot restore` as that member, and they form the restored cluster together; any
other instance joins it as a learner, as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import aws, health
from .steps import now_iso

PEER_PORT = 2380
CLIENT_PORT = 2379
RECOVERY = "see kubeplat's README, 'etcd: when quorum is lost'"
# Objects beside the formation record (under <prefix>/etcd/): an operator's backup request and
# the leader's answer to it.
BACKUP_REQUEST = "backup-request.json"
BACKUP_DONE = "backup-done.json"
# How `watch` restarts this member after a restore: etcd.service requires the member unit, so
# systemd stops etcd, runs `prepare` again (which sets the data aside and restores), starts etcd.
RESTART_COMMAND = "systemctl restart --no-block kubeplat-etcd-member.service"
# The secure group's launch hook: a new instance goes in service (and an instance refresh
# replaces the next one) only once `watch` completes it, when this instance is a voting member
# of a healthy cluster (terraform/nodes.tf).
LIFECYCLE_HOOK = "kubeplat-etcd-joined"
# The secure group's terminate hook: an instance leaving the group (a refresh, a scale-in,
# kubeplat roll) waits in Terminating:Wait until the leader has removed its member, so that the
# members left count only live ones (two members of which one is gone have no quorum; one
# removed first leaves a working cluster of one).
LEAVE_HOOK = "kubeplat-etcd-leave"


def say(message: str) -> None:
    """One journal line per line of `message` (an etcdctl error's tail may hold several), each
    with the program's prefix."""
    for line in message.splitlines() or [""]:
        print(f"kubeplat etcd: {line}", flush=True)


@dataclass
class Member:
    id: str  # hexadecimal, as etcdctl takes it
    name: str  # the instance id; "" while added but not started
    peer_urls: list[str]
    learner: bool = False

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Member:
        return cls(
            format(int(raw["ID"]), "x"),
            raw.get("name", ""),
            list(raw.get("peerURLs", [])),
            bool(raw.get("isLearner", False)),
        )


@dataclass
class Seen:
    """What one round of `prepare` observed."""

    me: str
    host: str
    live: dict[str, str]  # instance id → private DNS name, the running secure instances
    desired: int
    members: list[Member] | None  # None: no member answered
    quorum: bool = False  # a linearizable read succeeded
    record: dict[str, Any] | None = None  # the formation record
    reachable: int = 0  # other members whose etcd answers at all (a status needs no quorum)
    generation: int = 0  # the generation of this instance's data (0: formed, not restored)


@dataclass
class Decision:
    action: str  # start, join, propose, restore, wait
    message: str
    state: str = ""  # new or existing
    cluster: dict[str, str] = field(default_factory=dict)  # name → peer URL
    remove: list[Member] = field(default_factory=list)
    token: str = ""

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{name}={url}" for name, url in sorted(self.cluster.items()))


def peer_url(host: str) -> str:
    return f"https://{host}:{PEER_PORT}"


def _host_of(url: str) -> str:
    return url.split("//", 1)[-1].rsplit(":", 1)[0]


def gone(member: Member, live: dict[str, str]) -> bool:
    """The member's instance no longer runs (by its name, or for a member added but never
    started, by its peer address)."""
    if member.name:
        return member.name not in live
    hosts = set(live.values())
    return not any(_host_of(url) in hosts for url in member.peer_urls)


def entries(members: Iterable[Member]) -> dict[str, str]:
    """initial-cluster entries of members: etcd matches them to the cluster by peer URL, so a
    member not started yet (no name) goes by its id."""
    return {m.name or m.id: m.peer_urls[0] for m in members}


def generation(record: dict[str, Any] | None) -> int:
    """A formation record's generation: 0 as formed, one more for each restore."""
    return int((record or {}).get("generation", 0))


def decide(seen: Seen) -> Decision:
    mine = peer_url(seen.host)
    record = seen.record
    if (
        record is not None
        and record.get("restore")
        and seen.me in record["members"]
        and seen.generation < generation(record)
    ):
        return Decision(
            "restore",
            f"restoring the cluster from {record['restore'].get('from', '?')} "
            f"(generation {generation(record)}, recorded at {record.get('formed', '?')})",
            "new",
            dict(record["members"]),
            token=str(record["token"]),
        )
    if seen.members is not None:
        me = [m for m in seen.members if m.name == seen.me or (not m.name and mine in m.peer_urls)]
        others = [m for m in seen.members if m not in me]
        if me:
            return Decision(
                "start",
                "this instance is already a member: starting as it",
                "existing",
                {**entries(others), seen.me: mine},
                token=_token(seen),
            )
        if not seen.quorum:
            return _quorum_lost(f"{len(seen.members)} members")
        stale = [m for m in others if gone(m, seen.live)]
        joining = [m for m in others if m.learner and m not in stale]
        if joining:
            names = ", ".join(m.name or m.peer_urls[0] for m in joining)
            return Decision("wait", f"{names} is joining; members join one at a time")
        return Decision(
            "join",
            f"joining as a learner ({len(others) - len(stale)} members"
            + (f", removing {len(stale)} whose instance is gone" if stale else "")
            + ")",
            "existing",
            {**entries(m for m in others if m not in stale), seen.me: mine},
            stale,
            _token(seen),
        )
    if seen.reachable:
        return _quorum_lost(f"{seen.reachable} answering")
    if record is not None:
        members = dict(record["members"])
        if seen.me in members:
            return Decision(
                "start",
                f"forming the cluster recorded at {record.get('formed', '?')}",
                "new",
                members,
                token=str(record["token"]),
            )
        return Decision(
            "wait",
            f"no member of the cluster formed at {record.get('formed', '?')} answers; this "
            "instance is not one of its first members, so it waits for them. If they are all "
            "gone, the data is only in the snapshots; never forming a second cluster; " + RECOVERY,
        )
    if len(seen.live) < seen.desired:
        return Decision(
            "wait", f"{len(seen.live)} of {seen.desired} instances run; forming when all do"
        )
    first = sorted(seen.live)[: seen.desired]
    if seen.me not in first:
        return Decision("wait", "not one of the first members; waiting for them to form")
    return Decision(
        "propose",
        f"proposing the cluster of {', '.join(first)}",
        "new",
        {iid: peer_url(seen.live[iid]) for iid in first},
        token="kubeplat-" + secrets.token_hex(8),
    )


def _quorum_lost(counted: str) -> Decision:
    return Decision(
        "wait",
        f"etcd has lost quorum: members answer but cannot agree ({counted}); not joining, and "
        "never forming a second cluster; " + RECOVERY,
    )


def _token(seen: Seen) -> str:
    return str((seen.record or {}).get("token", ""))


# --- what the decisions act on ------------------------------------------------------------


@dataclass
class Etcdctl:
    """etcdctl with the node's client certificate."""

    pki: Path
    binary: str = "etcdctl"

    def __call__(self, endpoints: list[str], *args: str, timeout: float = 30) -> Any:
        command = [
            self.binary,
            f"--endpoints={','.join(endpoints)}",
            f"--cacert={self.pki}/etcd/ca.crt",
            f"--cert={self.pki}/etcd/healthcheck-client.crt",
            f"--key={self.pki}/etcd/healthcheck-client.key",
            "--dial-timeout=3s",
            "--command-timeout=10s",
            *args,
        ]
        aws.Activity.enter(f"etcdctl {' '.join(a for a in args if not a.startswith('-'))}")
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, "", "etcdctl timed out")
        finally:
            aws.Activity.leave()

    def members(self, endpoints: list[str]) -> list[Member] | None:
        if not endpoints:
            return None
        listed = self(endpoints, "member", "list", "-w", "json")
        if listed.returncode != 0:
            return None
        return [Member.parse(m) for m in json.loads(listed.stdout).get("members", [])]

    def reachable(self, endpoints: list[str]) -> int:
        """How many of the endpoints' etcd answer at all (a status needs no quorum)."""
        answer = self(endpoints, "endpoint", "status", "-w", "json")
        try:
            return len(json.loads(answer.stdout or "[]"))
        except ValueError:
            return 0

    def quorum(self, endpoints: list[str]) -> bool:
        """A linearizable read succeeds: a quorum of members agrees."""
        if not endpoints:
            return False
        probe = self(endpoints, "get", "--consistency=l", "/kubeplat/quorum-probe")
        return bool(probe.returncode == 0)


class Formation:
    """The environment's formation record: written once (a conditional put), read by all."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.base = s3, bucket, f"{prefix}/etcd/"
        self.key = self.base + "formation.json"

    def read(self, name: str = "formation.json") -> dict[str, Any] | None:
        """The record (or another object beside it), None when there is none: one GET (the
        node role may list etcd/, so S3 answers a missing object with NoSuchKey, not 403)."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.base + name)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body))

    def write(self, name: str, document: dict[str, Any]) -> None:
        body = json.dumps(document, indent=1, sort_keys=True).encode()
        self.s3.put_object(Bucket=self.bucket, Key=self.base + name, Body=body)

    def create(self, record: dict[str, Any]) -> bool:
        """Write the record unless one exists; False when another was first."""

        def only_if_absent(request: Any, **_: Any) -> None:
            request.headers["If-None-Match"] = "*"  # older botocore has no IfNoneMatch

        event = "before-sign.s3.PutObject"
        self.s3.meta.events.register(event, only_if_absent)
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=json.dumps(record, indent=1).encode()
            )
        except Exception as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):
                return False
            raise
        finally:
            self.s3.meta.events.unregister(event, only_if_absent)
        return True


def live_members(ec2: Any, environment: str) -> dict[str, str]:
    """Instance id → private DNS name of the environment's pending and running secure instances."""
    members: dict[str, str] = {}
    paginator = ec2.get_paginator("describe_instances")
    filters = [
        {"Name": "tag:Environment", "Values": [environment]},
        {"Name": "tag:Layer", "Values": ["secure"]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]},
    ]
    for page in paginator.paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                if instance.get("PrivateDnsName"):
                    members[instance["InstanceId"]] = instance["PrivateDnsName"]
    return members


def group_of(autoscaling: Any, instance_id: str) -> str:
    """The autoscaling group this instance belongs to ("" when none)."""
    found = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
    groups = [i["AutoScalingGroupName"] for i in found.get("AutoScalingInstances", [])]
    return str(groups[0]) if groups else ""


def desired(autoscaling: Any, instance_id: str) -> int:
    name = group_of(autoscaling, instance_id)
    if not name:
        return 1
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    return int(group["AutoScalingGroups"][0]["DesiredCapacity"])


class Node:
    """This instance and the services `prepare` and `watch` talk to."""

    def __init__(self, args: argparse.Namespace) -> None:
        identity = aws.Identity.read()
        self.me, self.host, self.region = identity.instance_id, identity.hostname, identity.region
        self.environment = args.environment
        self.ec2 = aws.client("ec2", self.region)
        self.autoscaling = aws.client("autoscaling", self.region)
        self.formation = Formation(aws.client("s3", self.region), args.bucket, args.prefix)
        self.etcdctl = Etcdctl(args.pki, args.etcdctl)
        self.reporter = health.Reporter(args.bucket, args.prefix, "secure", identity)
        self.reported: tuple[str, float] = ("", 0.0)
        self.args = args
        # The generation a restart was asked for, and when the last try failed.
        self.restart_asked: tuple[int, float] = (0, -1e9)
        self.ready_told = False  # the group's launch hook is completed (or there is none)
        self.last_problem = ""
        self.status_said = ""  # what the watch last said of the local etcd (said on a change)
        self.group = ""  # this instance's autoscaling group, once known
        self.released: set[str] = set()  # leaving instances whose terminate hook it completed

    def peers(self, live: dict[str, str]) -> list[str]:
        """The client URLs of the other running instances' etcd."""
        return [f"https://{d}:{CLIENT_PORT}" for i, d in sorted(live.items()) if i != self.me]

    def look(self) -> Seen:
        live = live_members(self.ec2, self.environment)
        others = self.peers(live)
        members = self.etcdctl.members(others) if others else None
        return Seen(
            self.me,
            self.host,
            live,
            desired(self.autoscaling, self.me),
            members,
            self.etcdctl.quorum(others) if members is not None else False,
            self.formation.read(),
            self.etcdctl.reachable(others) if others and members is None else 0,
            local_generation(self.args.data_dir),
        )

    def act(self, decision: Decision, seen: Seen) -> bool:
        """Carry a decision out; True when the configuration may be written."""
        others = self.peers(seen.live)
        if decision.action == "propose":
            record = {
                "token": decision.token,
                "members": decision.cluster,
                "formed": now_iso(),
                "by": self.me,
            }
            if self.formation.create(record):
                say(f"formation record written: {decision.initial_cluster}")
            else:
                say("another instance wrote the formation record first: following it")
            return False  # decide again, from the record
        if decision.action == "join":
            for member in decision.remove:
                removed = self.etcdctl(others, "member", "remove", member.id)
                if removed.returncode != 0:
                    say(f"removing {member.name or member.id} failed: {removed.stderr.strip()}")
                    return False
                say(f"removed member {member.name or member.id} (its instance is gone)")
            added = self.etcdctl(
                others, "member", "add", self.me, f"--peer-urls={peer_url(self.host)}", "--learner"
            )
            if added.returncode != 0:
                say(f"adding this member failed: {added.stderr.strip()}")
                return False
        if decision.action == "restore":
            return self.restore(decision, seen.record or {})
        return decision.action in ("start", "join")

    def restore(self, decision: Decision, record: dict[str, Any]) -> bool:
        """etcdutl snapshot restore of the record's snapshot as this member, into a staging
        directory first (an interrupted restore starts over), then in place of the data."""
        data, key = self.args.data_dir, record["restore"]["snapshot"]
        staging = data.with_name(data.name + ".restoring")
        download = data.with_name(f".{data.name}.restore.db")
        subprocess.run(["rm", "-rf", str(staging)], check=True)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            with os.fdopen(os.open(download, flags, 0o600), "wb") as saved:
                body = self.formation.s3.get_object(Bucket=self.formation.bucket, Key=key)["Body"]
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    saved.write(chunk)
            restored = subprocess.run(
                [
                    self.args.etcdutl, "snapshot", "restore", str(download),
                    f"--data-dir={staging}", f"--name={self.me}",
                    f"--initial-cluster={decision.initial_cluster}",
                    f"--initial-cluster-token={decision.token}",
                    f"--initial-advertise-peer-urls={peer_url(self.host)}",
                ],
                capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
        finally:
            download.unlink(missing_ok=True)
        if restored.returncode != 0:
            say(f"restoring {key} failed: {restored.stderr.strip()[-500:]}")
            return False
        set_aside(data, generation(record))
        os.replace(staging, data)
        data.chmod(0o700)
        say(f"restored s3://{self.formation.bucket}/{key} as member {self.me}")
        return True


def _generation_file(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".generation")


def _read_generation(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def local_generation(data_dir: Path) -> int:
    """The generation of the formation record this instance's data belongs to."""
    return _read_generation(_generation_file(data_dir))


def set_aside(data_dir: Path, newer: int) -> Path | None:
    """Move data of an older generation out of the way (never deleted); an empty directory
    just goes."""
    if not data_dir.exists():
        return None
    if not any(data_dir.iterdir()):
        data_dir.rmdir()
        return None
    target = data_dir.with_name(f"{data_dir.name}.before-generation-{newer}")
    if target.exists():
        target = target.with_name(f"{target.name}-{int(time.time())}")
    os.replace(data_dir, target)
    return target


def _restore_owed_file(data_dir: Path) -> Path:
    """Where the watch writes the generation it restarted this member for."""
    return data_dir.with_name(data_dir.name + ".restore-owed")


def restore_owed(data_dir: Path) -> int:
    """The generation of a restore the watch restarted this member for (0: none)."""
    return _read_generation(_restore_owed_file(data_dir))


def started(data_dir: Path) -> bool:
    """etcd has run here as a member: it wrote its log (as etcd itself tells, by a WAL file).
    A member whose etcd failed before that (a peer gone between `member add` and the start)
    has only an empty member directory, and must be decided again."""
    wal = data_dir / "member" / "wal"
    return wal.is_dir() and any(wal.iterdir())


def prepare(args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> int:
    node: Node | None = None
    if started(args.data_dir) and args.output.exists():
        # A reboot or a restart: etcd comes back as the member it was, unless the cluster was
        # restored since. If the bucket cannot be read now, it comes back all the same, unless
        # the watch restarted it for a restore: then it keeps trying (a member that came back
        # as it was would never be restarted for that restore again).
        here, owed = local_generation(args.data_dir), restore_owed(args.data_dir)
        pause = 5.0
        while True:
            try:
                node = node or Node(args)
                record = node.formation.read()
                break
            except Exception as exc:
                if owed <= here:
                    say(
                        f"the formation record cannot be read ({type(exc).__name__}): etcd "
                        "restarts as the member it was"
                    )
                    return 0
                say(
                    f"the formation record cannot be read ({type(exc).__name__}); this member "
                    f"was restarted for the restore of generation {owed}: trying again in "
                    f"{pause:.0f}s"
                )
                sleep(pause)
                pause = min(pause * 1.5, 30.0)
        if generation(record) <= here:
            say("a data directory exists: etcd restarts as the member it was")
            _restore_owed_file(args.data_dir).unlink(missing_ok=True)
            return 0
        aside = set_aside(args.data_dir, generation(record))
        say(
            f"the cluster was restored (generation {generation(record)}); this member's data "
            f"of generation {here} is kept in {aside}"
        )
    _decide_and_write(args, node, sleep)
    return 0


def _decide_and_write(
    args: argparse.Namespace,
    node: Node | None,
    sleep: Callable[[float], None],
    budget_s: float | None = None,
) -> Decision | None:
    """Look, decide and act until etcd may start; then write its configuration. None when
    waiting on would pass `budget_s` seconds of pauses."""
    pause, last, waited = 5.0, "", 0.0
    while True:
        try:
            node = node or Node(args)  # the metadata service may not answer at first
            seen = node.look()
            decision = decide(seen)
            if decision.message != last:
                say(decision.message)
                last = decision.message
            if node.act(decision, seen):
                break
        except Exception as exc:  # AWS or etcd unreachable for now: try again
            say(f"{type(exc).__name__}: {exc}; trying again in {pause:.0f}s")
        if budget_s is not None and waited + pause > budget_s:
            return None
        sleep(pause)
        waited += pause
        pause = min(pause * 1.5, 30.0)
    assert node is not None
    write_config(args, node.me, node.host, decision)
    _generation_file(args.data_dir).write_text(f"{generation(seen.record)}\n")
    _restore_owed_file(args.data_dir).unlink(missing_ok=True)
    say(f"{decision.state} cluster {decision.initial_cluster}")
    return decision


def _configured(text: str, key: str) -> str:
    """A value of the configuration `prepare` wrote ("" when it is not there)."""
    found = re.search(rf'^{re.escape(key)}:\s*"?([^"\n]*)"?\s*$', text, re.MULTILINE)
    return found.group(1) if found else ""


def recheck(
    args: argparse.Namespace,
    sleep: Callable[[float], None] = time.sleep,
    budget_s: float = 30.0,
) -> int:
    """etcd.service's ExecStartPre: before each start of a member that has never run, decide
    again from the member list as it is now. `prepare` wrote the list it saw when it added this
    member; if a member was removed since (its instance gone), etcd refuses that list ("member
    count is unequal") and, started again with it by systemd, would refuse it forever.

    A member that has run, or one forming the cluster from the formation record (fixed for
    good), starts as configured, without a look. A decision that must wait (quorum lost,
    another join) gives up after `budget_s` seconds of pauses, so that etcd's start fails within
    systemd's start timeout (90 s by default, the ExecStartPre's looks and etcd's own start
    included) and systemd tries again in a few seconds (etcd.service: Restart=always)."""
    if started(args.data_dir):
        return 0
    try:
        text = args.output.read_text()
    except FileNotFoundError:
        say("no configuration yet: kubeplat-etcd-member.service decides first")
        return 1
    if _configured(text, "initial-cluster-state") == "new":
        return 0
    before = _configured(text, "initial-cluster")
    decision = _decide_and_write(args, None, sleep, budget_s)
    if decision is None:
        say(f"etcd cannot start yet: decided nothing in {budget_s:.0f}s; systemd tries again")
        return 1
    if decision.initial_cluster != before:
        say(f"the members changed since this member was added (it was added to {before})")
    return 0


def write_config(args: argparse.Namespace, name: str, host: str, decision: Decision) -> None:
    text = args.template.read_text()
    for key, value in (
        ("@NAME@", name),
        ("@HOST@", host),
        ("@INITIAL_CLUSTER@", decision.initial_cluster),
        ("@STATE@", decision.state),
        ("@TOKEN@", decision.token or f"kubeplat-{args.environment}"),
    ):
        text = text.replace(key, value)
    temporary = args.output.with_name(f".{args.output.name}.new")
    temporary.write_text(text)
    os.replace(temporary, args.output)


def watch(args: argparse.Namespace, rounds: int | None = None) -> int:
    """Promote this member once it has caught up; on the leader, remove members whose
    instance is gone (etcd refuses a removal that would lose quorum)."""
    node: Node | None = None  # made in the loop: the metadata service may not answer at first
    done = 0
    round_started = [0.0]  # 0 between rounds
    threading.Thread(target=_watchdog, args=(round_started,), daemon=True).start()
    while rounds is None or done < rounds:
        done += 1
        round_started[0] = time.monotonic()
        try:
            node = node or Node(args)
            _watch_round(node)
        except Exception as exc:
            say(f"watch: {type(exc).__name__}: {exc}")
        round_started[0] = 0.0
        if rounds is None or done < rounds:
            time.sleep(args.interval)
    return 0


def _say_on_change(node: Node, key: str, message: str) -> None:
    """Say how the local etcd answers when that changes (it went down, came back, another
    member leads): the journal then tells why this member's reports look as they do, without
    a line every round."""
    if key != node.status_said:
        node.status_said = key
        say(message)


def _watchdog(round_started: list[float], after_s: float = 60.0, every_s: float = 5.0) -> None:
    """Say when a round of the watch has run for `after_s` (and each `after_s` after that)
    and what it waits on: a round that stalls holds back what only the leader does (removing
    leaving members, backups, its status report), and its journal should say why."""
    warned = (0.0, 0)
    while True:
        time.sleep(every_s)
        started = round_started[0]
        if not started:
            continue
        ran = time.monotonic() - started
        step = int(ran // after_s)
        if step < 1 or warned == (started, step):
            continue
        warned = (started, step)
        what, since = aws.Activity.what, aws.Activity.since
        doing = (
            f"waiting on {what} for {time.monotonic() - since:.0f}s"
            if what
            else "not waiting on a call"
        )
        say(f"watch: this round has run {ran:.0f}s; {doing}")


def _watch_round(node: Node) -> None:
    if _restored_since(node):
        return
    local = [f"https://{node.host}:{CLIENT_PORT}"]
    status = node.etcdctl(local, "endpoint", "status", "-w", "json")
    if status.returncode != 0:
        lines = (status.stderr or "").strip().splitlines()
        why = lines[-1][-200:] if lines else "no output"
        _say_on_change(node, "down", f"watch: etcd does not answer here ({why}); reported so")
        _publish(node, {"member": "", "answers": False})
        return  # etcd is not up (yet)
    found = json.loads(status.stdout)[0]["Status"]
    mine = format(int(found["header"]["member_id"]), "x")
    leader = format(int(found.get("leader", 0)), "x")
    leading = "this member" if leader == mine else leader
    _say_on_change(node, f"leader {leader}", f"watch: etcd answers here; the leader is {leading}")
    report: dict[str, Any] = {
        "answers": True,
        "member": mine,
        "leader": leader,
        "learner": bool(found.get("isLearner")),
        "db_size": int(found.get("dbSize", 0)),
        "raft_index": int(found.get("raftIndex", 0)),
        "cluster": format(int(found["header"]["cluster_id"]), "x"),
        "generation": local_generation(node.args.data_dir),
        "certificate_expires": served_expiry(node.host, CLIENT_PORT, node.args.pki),
    }
    if report["learner"]:
        _publish(node, report)
        # A learner serves no member API: ask the voting members to promote it (they refuse
        # until it has caught up with the leader; the next round tries again).
        live = live_members(node.ec2, node.environment)
        others = node.peers(live)
        promoted = node.etcdctl(others, "member", "promote", mine)
        if promoted.returncode == 0:
            say("promoted to a voting member")
        return
    report["quorum"] = node.etcdctl.quorum(local)
    members = node.etcdctl.members(local)
    if members is not None:
        report["members"] = [
            {"id": m.id, "name": m.name, "peer": m.peer_urls[0], "learner": m.learner}
            for m in members
        ]
    _publish(node, report)
    if not node.ready_told and report["quorum"] and members is not None:
        _tell_ready(node, members, local)
    if leader != mine:
        return
    live = live_members(node.ec2, node.environment)
    if members is None or node.me not in live:
        return  # an answer that does not list this instance is not to be trusted
    remaining = []
    for member in members:
        if member.name != node.me and member.id != mine and gone(member, live):
            removed = node.etcdctl(local, "member", "remove", member.id)
            if removed.returncode == 0:
                say(f"removed member {member.name or member.id}: its instance is gone")
                continue
        remaining.append(member)
    _release_leaving(node, remaining, local)  # never the last member: counted after those
    _serve_backup(node)


def served_expiry(host: str, port: int, pki: Path) -> str:
    """When the certificate this member's etcd serves expires (ISO 8601, UTC), read from a TLS
    connection to it as its clients make one, not from the file: what etcd serves is what
    clients get, a renewed file it has not reloaded included. "" when it cannot be read."""
    import socket
    import ssl

    try:
        context = ssl.create_default_context(cafile=str(pki / "etcd" / "ca.crt"))
        context.check_hostname = False  # verified against the etcd CA; the name is ours
        context.load_cert_chain(
            str(pki / "etcd" / "healthcheck-client.crt"),
            str(pki / "etcd" / "healthcheck-client.key"),
        )
        with socket.create_connection((host, port), timeout=5) as raw:  # noqa: SIM117 (3.9)
            with context.wrap_socket(raw) as tls:
                not_after = str((tls.getpeercert() or {}).get("notAfter", ""))
        seconds = ssl.cert_time_to_seconds(not_after)
    except (OSError, ValueError):
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _release_leaving(node: Node, members: list[Member], local: list[str]) -> None:
    """As the leader: remove the member of each instance leaving the group (Terminating:Wait)
    before it goes, then let it go (complete the group's terminate hook). The last member is
    never removed (etcd refuses, and there would be no cluster left); its instance goes anyway."""
    group = node.group = node.group or group_of(node.autoscaling, node.me)
    if not group:
        return
    released = node.released
    found = node.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    leaving = sorted(
        i["InstanceId"]
        for g in found.get("AutoScalingGroups", [])
        for i in g.get("Instances", [])
        if i.get("LifecycleState") == "Terminating:Wait"
    )
    for instance in leaving:
        if instance in released:
            continue  # another hook (the drain) still holds it
        member = next((m for m in members if m.name == instance), None)
        if member is not None and len(members) > 1:
            removed = node.etcdctl(local, "member", "remove", member.id)
            if removed.returncode != 0:
                continue  # the next round tries again; the hook's timeout lets it go at worst
            say(f"removed member {instance}: its instance is leaving {group}")
            members = [m for m in members if m is not member]
        try:
            node.autoscaling.complete_lifecycle_action(
                LifecycleHookName=node.args.leave_hook,
                AutoScalingGroupName=group,
                LifecycleActionResult="CONTINUE",
                InstanceId=instance,
            )
        except Exception as exc:
            error = getattr(exc, "response", {}).get("Error", {})
            if error.get("Code") != "ValidationError":  # ValidationError: no hook waits for it
                say(f"completing the terminate hook of {instance} failed ({exc}); trying again")
                continue
        say(f"{instance} may leave {group} ({node.args.leave_hook})")
        released.add(instance)


def _tell_ready(node: Node, members: list[Member], local: list[str]) -> None:
    """Once this instance is a voting member, no join is under way and every member is
    healthy: complete the group's launch hook, so that the instance goes in service and an
    instance refresh may replace the next one (never while this one is still joining)."""
    if node.me not in {m.name for m in members} or any(m.learner or not m.name for m in members):
        return  # a join is under way
    if node.etcdctl(local, "endpoint", "health", "--cluster").returncode != 0:
        return
    if node.args.readyz and not _api_ready(node.args.readyz, node.args.pki / "ca.crt"):
        problem = f"etcd ready; waiting for this node's API server ({node.args.readyz})"
        if problem != node.last_problem:
            say(problem)
            node.last_problem = problem
        return
    hook, group = node.args.lifecycle_hook, group_of(node.autoscaling, node.me)
    hooks = (
        node.autoscaling.describe_lifecycle_hooks(
            AutoScalingGroupName=group, LifecycleHookNames=[hook]
        ).get("LifecycleHooks", [])
        if group
        else []
    )
    if not hooks:
        say("ready: a voting member of a healthy cluster (no launch hook waits for it)")
        node.ready_told = True
        return
    try:
        node.autoscaling.complete_lifecycle_action(
            LifecycleHookName=hook,
            AutoScalingGroupName=group,
            LifecycleActionResult="CONTINUE",
            InstanceId=node.me,
        )
    except Exception as exc:
        error = getattr(exc, "response", {}).get("Error", {})
        if error.get("Code") != "ValidationError":
            problem = f"completing the launch hook {hook} failed ({exc}); trying again"
            if problem != node.last_problem:
                say(problem)
                node.last_problem = problem
            return
        # No action waits for this instance: it went in service already (a restarted watch).
    say(f"ready: a voting member of a healthy cluster; {group} may go on (launch hook {hook})")
    node.ready_told = True


def _api_ready(url: str, ca_file: Path) -> bool:
    """Whether the API server at `url` (its /readyz, anonymous) answers ready: on a stacked
    layer a new member goes in service only once the API server beside it does too."""
    from .agent import readyz

    return readyz(url, str(ca_file))()


def _restored_since(node: Node, every_s: float = 60.0) -> bool:
    """The cluster was restored from a snapshot since this member's data was made: restart
    this member once (its `prepare` sets the data aside and restores or joins, however long
    that takes; a failed restart is tried again after a minute). True while that is so."""
    try:
        newer = generation(node.formation.read())
    except Exception as exc:  # the bucket unreadable for now: the rest of the round goes on
        say(f"watch: the formation record cannot be read: {type(exc).__name__}")
        return False
    if newer <= local_generation(node.args.data_dir):
        return False
    asked, failed_at = node.restart_asked
    if asked == newer or time.monotonic() - failed_at < every_s:
        return True  # asked already (prepare is at work), or the last try failed just now
    say(f"the cluster was restored (generation {newer}): restarting this member")
    _restore_owed_file(node.args.data_dir).write_text(f"{newer}\n")  # prepare must not give up
    try:
        ran = subprocess.run(
            shlex.split(node.args.restart_command),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        say("restarting failed: no answer in 60s; trying again in a minute")
        node.restart_asked = (asked, time.monotonic())
        return True
    if ran.returncode == 0:
        node.restart_asked = (newer, -1e9)
    else:
        say(f"restarting failed: {ran.stderr.strip()[-300:]}")
        node.restart_asked = (asked, time.monotonic())
    return True


def _serve_backup(node: Node) -> None:
    """On the leader: the snapshot an operator asked for (`kubeplat etcd backup`), once."""
    request = node.formation.read(BACKUP_REQUEST)
    if not request or not request.get("id"):
        return
    done = node.formation.read(BACKUP_DONE)
    if done and done.get("id") == request["id"]:
        return
    say(f"backup: {request.get('by', 'an operator')} asked for a snapshot")
    now = datetime.now(timezone.utc)
    key, message = _take_snapshot(node, now)
    answer = {"id": request["id"], "key": key or "", "message": message, "by": node.me}
    node.formation.write(BACKUP_DONE, {**answer, "at": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
    if key:
        _retain(node, now)


def _publish(node: Node, report: dict[str, Any], every_s: float = 60.0) -> None:
    """`status/secure/INSTANCE/etcd.json`, for `kubeplat etcd status`: when it changes, and
    at least every minute (its `updated` says how fresh it is)."""
    text = json.dumps(report, sort_keys=True)
    last, when = node.reported
    if text == last and time.monotonic() - when < every_s:
        return
    stamped = {**report, "updated": now_iso()}
    if node.reporter.publish("etcd", stamped):
        node.reported = (text, time.monotonic())


def snapshot(args: argparse.Namespace, now: datetime | None = None) -> int:
    """On the leader only: save a snapshot, upload it to <prefix>/etcd-backups/ (encrypted with
    the bucket's key), then delete snapshots beyond --keep or older than --max-age-days (the
    newest always stays). On any other member: nothing."""
    node = Node(args)
    local = [f"https://{node.host}:{CLIENT_PORT}"]
    status = node.etcdctl(local, "endpoint", "status", "-w", "json")
    if status.returncode != 0:
        say(f"snapshot: etcd does not answer here: {status.stderr.strip()[-300:]}")
        return 1
    found = json.loads(status.stdout)[0]["Status"]
    if found.get("leader", 0) != found["header"]["member_id"]:
        say("snapshot: not the leader; the leader takes it")
        return 0
    now = now or datetime.now(timezone.utc)
    key, message = _take_snapshot(node, now)
    say(f"snapshot: {message}")
    if key is None:
        return 1
    _retain(node, now)
    return 0


def _take_snapshot(node: Node, now: datetime) -> tuple[str | None, str]:
    """Save this member's snapshot to the bucket: its key (None when it failed) and what
    happened, in words."""
    args, local = node.args, [f"https://{node.host}:{CLIENT_PORT}"]
    key = f"{args.prefix}/etcd-backups/{now.strftime('%Y%m%dT%H%M%SZ')}-{node.me}.db"
    target = args.data_dir.parent / ".kubeplat-snapshot.db"
    try:
        saved = node.etcdctl(local, "snapshot", "save", str(target), timeout=600)
        if saved.returncode != 0:
            return None, f"saving failed: {saved.stderr.strip()[-300:]}"
        size = target.stat().st_size
        with target.open("rb") as body:
            node.formation.s3.put_object(Bucket=args.bucket, Key=key, Body=body)
    finally:
        target.unlink(missing_ok=True)
    return key, f"saved s3://{args.bucket}/{key} ({size} bytes)"


def _retain(node: Node, now: datetime) -> None:
    args, s3 = node.args, node.formation.s3
    backups = f"{args.prefix}/etcd-backups/"
    for old in expired(list_snapshots(s3, args.bucket, backups), args.keep, args.max_age_days, now):
        s3.delete_object(Bucket=args.bucket, Key=old)
        say(f"snapshot: deleted {old} (retention)")


def list_snapshots(s3: Any, bucket: str, prefix: str) -> list[tuple[str, datetime]]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found.append((item["Key"], item["LastModified"]))
    return found


def expired(
    snapshots: list[tuple[str, datetime]], keep: int, max_age_days: int, now: datetime
) -> list[str]:
    """The snapshots retention deletes: beyond the newest `keep`, or older than the age; the
    newest one never."""
    newest_first = sorted(snapshots, key=lambda s: s[0], reverse=True)
    oldest = now.timestamp() - max_age_days * 86400
    return [
        key
        for index, (key, modified) in enumerate(newest_first)
        if index > 0 and (index >= keep or modified.timestamp() < oldest)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeplat-node etcd-member", description=__doc__)
    parser.add_argument(
        "command",
        choices=("prepare", "recheck", "watch", "snapshot"),
        nargs="?",
        default="prepare",
    )
    parser.add_argument("--environment", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    env = os.environ.get
    parser.add_argument(
        "--pki", type=Path, default=Path(env("KUBEPLAT_PKI", "/etc/kubernetes/pki"))
    )
    parser.add_argument("--template", type=Path, default=Path("/etc/etcd/etcd.conf.yml.tmpl"))
    parser.add_argument("--output", type=Path, default=Path("/etc/etcd/etcd.conf.yml"))
    parser.add_argument(
        "--data-dir", type=Path, default=Path(env("KUBEPLAT_ETCD_DATA", "/var/lib/etcd"))
    )
    parser.add_argument("--etcdctl", default=env("KUBEPLAT_ETCDCTL", "etcdctl"))
    parser.add_argument("--etcdutl", default=env("KUBEPLAT_ETCDUTL", "etcdutl"))
    parser.add_argument("--lifecycle-hook", default=LIFECYCLE_HOOK)
    parser.add_argument("--leave-hook", default=LEAVE_HOOK)
    parser.add_argument(
        "--readyz", default="", help="watch: complete the launch hook only once this answers"
    )
    parser.add_argument(
        "--restart-command",
        default=RESTART_COMMAND,
        help="how `watch` restarts this member after a restore",
    )
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--keep", type=int, default=48)
    parser.add_argument("--max-age-days", type=int, default=7)
    args = parser.parse_args(argv)
    if args.command == "watch":
        return watch(args)
    if args.command == "snapshot":
        return snapshot(args)
    if args.command == "recheck":
        return recheck(args)
    return prepare(args)


if __name__ == "__main__":
    sys.exit(main())
