"""The etcd membership program (`kubeplat-node etcd-member`, kubeplat/node/etcd.py) without
etcd: how a member starts (forming from the formation record, joining as a learner, restoring
from a snapshot), what the watch does each round (promoting, removing members whose instance
is gone, letting leaving instances go, serving backups, reporting), the snapshots it takes and
prunes, and the command line. tests/unit/test_node_etcd.py tests `decide` by situation; this
file is the unit tier's (the one mutation testing runs), so it asserts exact etcdctl argument
lists, files and their modes, S3 keys and bodies, log lines and return codes.

STAND-INS, and why (the real etcd runs in tests/integration/test_etcd_rendered.py and in the
node-boot tier, tests/node/test_etcd_*.py, with real systemd):
- etcdctl and etcdutl are RECORDING stand-in scripts (`sh`): they append each argument list to
  a file and answer from canned files in etcd 3.5's own output shapes (`member list -w json`:
  decimal ids, no `name` for a member added but not started, `isLearner` only when true;
  `endpoint status -w json`: a list of {Endpoint, Status}). `snapshot save` writes the canned
  snapshot to its target; `etcdutl snapshot restore` makes a data directory with a WAL.
  The module's `subprocess` is a recording wrapper around the real one, so the timeouts and
  flags each command runs with are asserted too.
- S3 is a RECORDING stand-in in memory (moto runs only in the integration tier): get_object
  (NoSuchKey as botocore raises it), put_object (the conditional write's If-None-Match header
  through the client's before-sign event, refused with 412 as S3 does), delete_object, and
  list_objects_v2 through a paginator (pages of two, no `Contents` when nothing matches). The
  members' status reports go to it through the real health.Reporter.
- EC2 (describe_instances by paginator) and Auto Scaling (instances, groups, lifecycle hooks,
  CompleteLifecycleAction with AWS's ValidationError) are RECORDING stand-ins: moto has no
  lifecycle waits. The instance identity is a fixed aws.Identity instead of the metadata
  service; `aws.client` hands out the stand-ins.
- The clock: the module's own `time`, `datetime` and `now_iso` (never the global modules), so
  pauses, retries and report intervals are tested at their boundaries without sleeping; every
  loop's sleep raises `Stop` after the sleeps a test allows, so no mutant can spin forever.
- The watch's watchdog thread: the module's `threading` is a recording stand-in (the watchdog
  itself is tested on its own, with the stand-in clock).
- The TLS certificate a member serves (served_expiry): a loopback TLS server with
  certificates made here.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kubeplat.node import agent as node_agent
from kubeplat.node import aws, etcd
from kubeplat.node.etcd import Decision, Member, Seen, decide
from tests.conftest import local_zone

BUCKET = "kubeplat-dev-secrets"
PREFIX = "dev"
REGION = "eu-west-1"
GROUP = "dev-kube-secure"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
STAMP = "2026-12-05T12:00:00Z"
EXPIRES = "2031-01-02T03:04:05Z"
A, B, C, D = "i-0a", "i-0b", "i-0c", "i-0d"
HOST = {iid: f"ip-10-0-0-{n}.ec2.internal" for n, iid in enumerate((A, B, C, D), start=1)}
NUMBER = {A: 0xAA01, B: 0xBB02, C: 0xCC03, D: 0xDD04}  # etcd's member ids (JSON: decimal)
CLUSTER = 0xC1C2
RECOVERY = "see kubeplat's README, 'etcd: when quorum is lost'"


def peer(iid: str) -> str:
    return f"https://{HOST[iid]}:2380"


def client(iid: str) -> str:
    return f"https://{HOST[iid]}:2379"


def hexid(iid: str) -> str:
    return format(NUMBER[iid], "x")


def said(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The program's lines since the last look, without its prefix (every line has it)."""
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("kubeplat etcd: ") for line in lines), lines
    return [line.removeprefix("kubeplat etcd: ") for line in lines]


class Stop(BaseException):
    """A stand-in's way to end a loop after the sleeps (or reads) a test allows: not an
    Exception, so that no `except Exception` of the program's loops holds it."""


# --- the stand-ins ------------------------------------------------------------------------


class Clock:
    """The module's `time` STAND-IN: a monotonic and a wall clock that only sleeps move.

    Only the test's own thread moves it: a watchdog thread another test left running (they
    never end) sleeps a real moment instead, so it neither spins nor counts as a sleep here."""

    def __init__(self, allowed: int = 20) -> None:
        self.now = 1000.0
        self.wall = 1_800_000_000.0
        self.slept: list[float] = []
        self.allowed = allowed
        self.owner = threading.get_ident()
        self.on_sleep: Callable[[float], None] | None = None

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def sleep(self, seconds: float) -> None:
        if threading.get_ident() != self.owner:
            time.sleep(0.05)  # another test's thread: not this test's clock to move
            return
        self.slept.append(seconds)
        if len(self.slept) > self.allowed:
            raise Stop(f"slept {len(self.slept)} times")
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        else:
            self.now += seconds


class FixedDatetime(datetime):
    """The module's `datetime` STAND-IN: now is NOW in UTC; a naive now() is an hour ahead (a
    machine in Central Europe), so the program must ask for UTC."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return NOW if tz is not None else NOW.replace(tzinfo=None) + timedelta(hours=1)


def client_error(code: str, status: int, operation: str, message: str = "") -> ClientError:
    error = {"Code": code, "Message": message or code}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class NoSuchKey(ClientError):  # type: ignore[misc]
    """botocore's modelled S3 error for a missing object (a ClientError)."""


class Body:
    """A StreamingBody stand-in recording the sizes asked for; reading on past the end more
    than a few times raises (a loop that never sees the end must not spin)."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)
        self.reads: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        if len(self.reads) > 50:
            raise Stop("read on past the end")
        return self.stream.read(size)


class RecordingS3:
    """The S3 STAND-IN (module docstring): one bucket in memory, recording every call."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, datetime]] = {}
        self.puts: list[tuple[str, bytes, dict[str, str]]] = []  # key, body, signed headers
        self.gets: list[str] = []
        self.bodies: list[Body] = []
        self.deleted: list[str] = []
        self.listed: list[str] = []
        self.failing: dict[str, Exception] = {}  # key → what a get or put of it raises
        self.modified = NOW  # LastModified of the next put
        self.handlers: dict[str, list[Callable[..., None]]] = {}
        self.exceptions = SimpleNamespace(NoSuchKey=NoSuchKey)
        self.meta = SimpleNamespace(
            events=SimpleNamespace(register=self._register, unregister=self._unregister)
        )

    def _register(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers.setdefault(event, []).append(handler)

    def _unregister(self, event: str, handler: Callable[..., None]) -> None:
        if handler in self.handlers.get(event, []):
            self.handlers[event].remove(handler)

    def put(self, key: str, body: bytes | dict[str, Any], modified: datetime = NOW) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.objects[key] = (data, modified)

    def json(self, key: str) -> Any:
        return json.loads(self.objects[key][0])

    def put_object(self, *, Bucket: str, Key: str, Body: Any) -> dict[str, str]:
        assert Bucket == BUCKET, Bucket
        request = SimpleNamespace(headers={})
        for handler in list(self.handlers.get("before-sign.s3.PutObject", [])):
            handler(request=request, event_name="before-sign.s3.PutObject")
        data = Body.read() if hasattr(Body, "read") else bytes(Body)
        self.puts.append((Key, data, dict(request.headers)))
        if Key in self.failing:
            raise self.failing[Key]
        if request.headers.get("If-None-Match") == "*" and Key in self.objects:
            raise client_error("PreconditionFailed", 412, "PutObject")
        self.objects[Key] = (data, self.modified)
        return {"ETag": '"e"'}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        assert Bucket == BUCKET, Bucket
        self.gets.append(Key)
        if Key in self.failing:
            raise self.failing[Key]
        if Key not in self.objects:
            error = {"Code": "NoSuchKey", "Message": "The specified key does not exist."}
            raise NoSuchKey({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 404}}, "Get")
        body = Body(self.objects[Key][0])
        self.bodies.append(body)
        return {"Body": body, "ContentLength": len(self.objects[Key][0])}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        assert Bucket == BUCKET, Bucket
        self.deleted.append(Key)
        self.objects.pop(Key, None)
        return {}

    def get_paginator(self, operation: str) -> Any:
        assert operation == "list_objects_v2", operation
        return SimpleNamespace(paginate=self._paginate)

    def _paginate(self, *, Bucket: str, Prefix: str) -> Iterator[dict[str, Any]]:
        assert Bucket == BUCKET, Bucket
        self.listed.append(Prefix)
        items = [
            {"Key": key, "LastModified": modified, "Size": len(data), "StorageClass": "STANDARD"}
            for key, (data, modified) in sorted(self.objects.items())
            if key.startswith(Prefix)
        ]
        if not items:
            return iter([{"KeyCount": 0, "Prefix": Prefix}])
        pages = [items[at : at + 2] for at in range(0, len(items), 2)]
        return iter([{"KeyCount": len(page), "Contents": page} for page in pages])


class RecordingEc2:
    """EC2's describe_instances STAND-IN: the running secure instances, one reservation each,
    two to a page; `lives` is a list of what successive looks see (the last one stays)."""

    def __init__(self, *lives: dict[str, str]) -> None:
        self.lives = list(lives)
        self.filters: list[Any] = []

    def get_paginator(self, operation: str) -> Any:
        assert operation == "describe_instances", operation
        return SimpleNamespace(paginate=self._paginate)

    def _paginate(self, *, Filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.filters.append(Filters)
        live = self.lives.pop(0) if len(self.lives) > 1 else self.lives[0]
        tags = {f["Name"]: f["Values"] for f in Filters}
        if tags.get("tag:Environment") != ["dev"] or tags.get("tag:Layer") != ["secure"]:
            live = {}  # the instances are dev's secure ones
        reservations = [
            {"ReservationId": f"r-{iid}", "Instances": [{"InstanceId": iid, "PrivateDnsName": dns}]}
            for iid, dns in live.items()
        ]
        return iter(
            [{"Reservations": reservations[at : at + 2]} for at in range(0, len(live), 2)]
            or [{"Reservations": []}]
        )


class RecordingAutoScaling:
    """The Auto Scaling STAND-IN: one group (or none), its desired capacity, the instances'
    lifecycle states, its hooks; records every call. `refuse` holds, per instance, the error
    CompleteLifecycleAction raises for it."""

    def __init__(
        self,
        group: str = GROUP,
        desired: int = 3,
        states: dict[str, str] | None = None,
        hooks: tuple[str, ...] = (etcd.LIFECYCLE_HOOK, etcd.LEAVE_HOOK),
    ) -> None:
        self.group, self.desired, self.states, self.hooks = group, desired, states or {}, hooks
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse: dict[str, Exception] = {}

    def describe_auto_scaling_instances(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("describe_auto_scaling_instances", kwargs))
        (instance,) = kwargs["InstanceIds"]
        if not self.group or instance not in (A, B, C, D):
            return {"AutoScalingInstances": []}
        found = {"InstanceId": instance, "AutoScalingGroupName": self.group}
        return {"AutoScalingInstances": [found | {"LifecycleState": "InService"}]}

    def describe_auto_scaling_groups(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("describe_auto_scaling_groups", kwargs))
        instances = [{"InstanceId": i, "LifecycleState": s} for i, s in self.states.items()]
        group = {"AutoScalingGroupName": self.group, "DesiredCapacity": self.desired}
        return {"AutoScalingGroups": [group | {"Instances": instances}]}

    def describe_lifecycle_hooks(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("describe_lifecycle_hooks", kwargs))
        names = [h for h in self.hooks if h in kwargs["LifecycleHookNames"]]
        return {"LifecycleHooks": [{"LifecycleHookName": h} for h in names]}

    def complete_lifecycle_action(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("complete_lifecycle_action", kwargs))
        if kwargs["InstanceId"] in self.refuse:
            raise self.refuse[kwargs["InstanceId"]]
        return {}

    def completed(self) -> list[dict[str, Any]]:
        return [kw for name, kw in self.calls if name == "complete_lifecycle_action"]


ETCDCTL = r"""#!/bin/sh
# The etcdctl STAND-IN: records each call, answers from answers/WORD1_WORD2[_WORD3]/[N/]
here=$(dirname "$0")
{ for a in "$@"; do printf '%s\037' "$a"; done; echo; } >> "$here/etcdctl.calls"
shift 6
k="$here/answers/$1_$2_$3"
[ -d "$k" ] || k="$here/answers/$1_$2"
n=$(( $(cat "$k/calls" 2>/dev/null || echo 0) + 1 ))
[ -d "$k" ] && echo "$n" > "$k/calls"
d="$k/$n"; [ -d "$d" ] || d="$k"
[ -f "$d/sleep" ] && exec sleep "$(cat "$d/sleep")"
rc=$(cat "$d/rc" 2>/dev/null || echo 0)
if [ "$1 $2" = "snapshot save" ] && [ "$rc" = 0 ]; then cp "$here/snapshot.db" "$3"; fi
cat "$d/out" 2>/dev/null
cat "$d/err" >&2 2>/dev/null
exit "$rc"
"""

ETCDUTL = r"""#!/bin/sh
# The etcdutl STAND-IN: records the call and the downloaded snapshot's mode and size; fails
# with etcdutl.fail's text when that file exists; else makes the data directory.
here=$(dirname "$0")
{ for a in "$@"; do printf '%s\037' "$a"; done; echo; } >> "$here/etcdutl.calls"
stat -c '%a %s' "$3" >> "$here/etcdutl.downloads"
if [ -f "$here/etcdutl.fail" ]; then cat "$here/etcdutl.fail" >&2; exit 2; fi
for a in "$@"; do case "$a" in --data-dir=*) d="${a#--data-dir=}";; esac; done
mkdir -p "$d/member/wal" "$d/member/snap" && cp "$3" "$d/member/snap/db" \
  && echo wal > "$d/member/wal/0000000000000000-0000000000000000.wal"
"""


def _calls(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\x1f")[:-1] for line in path.read_text().splitlines()]


class EtcdctlStandIn:
    """Writes the etcdctl stand-in (ETCDCTL) into `folder` and its canned answers."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.path = folder, folder / "etcdctl"
        self.path.write_text(ETCDCTL)
        self.path.chmod(0o755)
        (folder / "answers").mkdir()
        self.snapshot = b"etcd snapshot " * 1000
        (folder / "snapshot.db").write_bytes(self.snapshot)

    def answer(
        self, *words: str, out: str = "", err: str = "", rc: int = 0, call: int | None = None,
        sleep: float | None = None,
    ) -> None:  # fmt: skip
        where = self.folder / "answers" / "_".join(words)
        if call is not None:
            where = where / str(call)
        where.mkdir(parents=True, exist_ok=True)
        (where / "out").write_text(out)
        (where / "err").write_text(err)
        (where / "rc").write_text(str(rc))
        if sleep is not None:
            (where / "sleep").write_text(str(sleep))

    def calls(self) -> list[list[str]]:
        return _calls(self.folder / "etcdctl.calls")

    def commands(self) -> list[tuple[str, tuple[str, ...]]]:
        """(endpoints, the arguments after etcdctl's connection flags) of each call."""
        found = []
        for call in self.calls():
            assert call[0].startswith("--endpoints="), call
            found.append((call[0].removeprefix("--endpoints="), tuple(call[6:])))
        return found

    def forget(self) -> None:
        (self.folder / "etcdctl.calls").unlink(missing_ok=True)


def listed(iid: str, started: bool = True, learner: bool = False) -> dict[str, Any]:
    """One member as `etcdctl member list -w json` gives it."""
    raw: dict[str, Any] = {"ID": NUMBER[iid], "peerURLs": [peer(iid)]}
    if started:
        raw |= {"name": iid, "clientURLs": [client(iid)]}
    if learner:
        raw["isLearner"] = True
    return raw


def member_list(*members: dict[str, Any]) -> str:
    header = {"cluster_id": CLUSTER, "member_id": NUMBER[A], "raft_term": 3}
    return json.dumps({"header": header, "members": list(members)})


def status(me: str, leader: str | None, learner: bool = False, size: int = 20480) -> str:
    """`etcdctl endpoint status -w json` of this member's etcd."""
    state: dict[str, Any] = {
        "header": {"cluster_id": CLUSTER, "member_id": NUMBER[me], "revision": 7, "raft_term": 3},
        "version": "3.5.17",
        "dbSize": size,
        "raftIndex": 42,
        "raftTerm": 3,
        "raftAppliedIndex": 42,
        "dbSizeInUse": 16384,
    }
    if leader is not None:
        state["leader"] = NUMBER[leader]
    if learner:
        state["isLearner"] = True
    return json.dumps([{"Endpoint": client(me), "Status": state}])


class RecordingSubprocess:
    """The module's `subprocess`, recording each run (its arguments and options) and running it
    for real (the stand-in scripts, `rm -rf`, a restart command)."""

    CompletedProcess = subprocess.CompletedProcess
    TimeoutExpired = subprocess.TimeoutExpired

    def __init__(self) -> None:
        self.runs: list[tuple[list[str], dict[str, Any]]] = []

    def run(self, command: list[str], **options: Any) -> Any:
        self.runs.append((list(command), options))
        return subprocess.run(command, **options)


class World:
    """Everything one instance's program talks to, as stand-ins; `args` as main makes them."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.s3 = RecordingS3()
        self.ec2 = RecordingEc2({i: HOST[i] for i in (A, B, D)})
        self.autoscaling = RecordingAutoScaling()
        self.etcdctl = EtcdctlStandIn(tmp_path / "bin")
        self.etcdutl = tmp_path / "bin" / "etcdutl"
        self.etcdutl.write_text(ETCDUTL)
        self.etcdutl.chmod(0o755)
        self.clock = Clock()
        self.subprocess = RecordingSubprocess()
        self.identity = aws.Identity(D, REGION, "10.0.0.4", HOST[D])
        self.identity_reads = 0
        self.identity_fails: list[Exception] = []
        self.clients: list[tuple[str, str]] = []
        self.expiry_asked: list[tuple[str, int, Path]] = []
        (tmp_path / "var").mkdir()
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "etcd.conf.yml.tmpl").write_text(TEMPLATE)
        self.args = argparse.Namespace(
            command="prepare", environment="dev", bucket=BUCKET, prefix=PREFIX,
            pki=tmp_path / "pki", template=tmp_path / "etc" / "etcd.conf.yml.tmpl",
            output=tmp_path / "etc" / "etcd.conf.yml", data_dir=tmp_path / "var" / "etcd",
            etcdctl=str(self.etcdctl.path), etcdutl=str(self.etcdutl),
            lifecycle_hook=etcd.LIFECYCLE_HOOK, leave_hook=etcd.LEAVE_HOOK, readyz="",
            restart_command=f"sh -c 'echo restarted >> {tmp_path / 'restarts'}'",
            interval=10.0, keep=48, max_age_days=7,
        )  # fmt: skip
        monkeypatch.setattr(aws.Identity, "read", self._identity)
        monkeypatch.setattr(aws, "client", self._client)
        monkeypatch.setattr(etcd, "time", self.clock)
        monkeypatch.setattr(etcd, "datetime", FixedDatetime)
        monkeypatch.setattr(etcd, "now_iso", lambda: STAMP)
        monkeypatch.setattr(etcd, "subprocess", self.subprocess)
        monkeypatch.setattr(etcd, "served_expiry", self._expiry)

    def _identity(self) -> aws.Identity:
        self.identity_reads += 1
        if self.identity_fails:
            raise self.identity_fails.pop(0)
        return self.identity

    def _client(self, service: str, region: str) -> Any:
        self.clients.append((service, region))
        return {"ec2": self.ec2, "autoscaling": self.autoscaling, "s3": self.s3}[service]

    def _expiry(self, host: str, port: int, pki: Path) -> str:
        self.expiry_asked.append((host, port, pki))
        return EXPIRES

    def node(self) -> etcd.Node:
        return etcd.Node(self.args)

    def record(self, **record: Any) -> None:
        self.s3.put(f"{PREFIX}/etcd/formation.json", record)

    def report(self) -> dict[str, Any]:
        return dict(self.s3.json(f"{PREFIX}/status/secure/{D}/etcd.json"))

    def has_run(self) -> None:
        """etcd has run here: its data directory holds a WAL file, its configuration exists."""
        wal = self.args.data_dir / "member" / "wal"
        wal.mkdir(parents=True)
        (wal / "0000000000000000-0000000000000000.wal").write_bytes(b"wal")
        self.args.output.write_text("name: as it was\n")

    def etcdutl_calls(self) -> list[list[str]]:
        return _calls(self.tmp / "bin" / "etcdutl.calls")


TEMPLATE = (
    'name: "@NAME@"\nlisten-peer-urls: "https://@HOST@:2380"\n'
    'initial-cluster: "@INITIAL_CLUSTER@"\ninitial-cluster-state: "@STATE@"\n'
    'initial-cluster-token: "@TOKEN@"\n'
)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    for name in ("KUBEPLAT_PKI", "KUBEPLAT_ETCD_DATA", "KUBEPLAT_ETCDCTL", "KUBEPLAT_ETCDUTL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return World(tmp_path, monkeypatch)


# --- decide: every decision, exactly ------------------------------------------------------


def seen(me: str, live: list[str], members: list[Member] | None = None, **more: Any) -> Seen:
    return Seen(me, HOST[me], {i: HOST[i] for i in live}, 3, members, **more)


def member(iid: str, started: bool = True, learner: bool = False) -> Member:
    return Member.parse(listed(iid, started, learner))


RESTORED: dict[str, Any] = {
    "token": "kubeplat-4567",
    "members": {A: peer(A), B: peer(B), D: peer(D)},
    "formed": "T2",
    "generation": 2,
    "restore": {"from": "dev/etcd-backups/20261202T120000Z-i-0a.db", "snapshot": "dev/etcd/r.db"},
}
FORMED: dict[str, Any] = {"token": "kubeplat-0123", "members": {A: peer(A), D: peer(D)}}
FORMED["formed"] = "T1"


def test_a_member_named_by_a_newer_restore_restores_until_its_data_is_of_that_generation() -> None:
    restoring = Decision(
        "restore",
        "restoring the cluster from dev/etcd-backups/20261202T120000Z-i-0a.db (generation 2, "
        "recorded at T2)",
        "new",
        RESTORED["members"],
        token="kubeplat-4567",
    )
    assert decide(seen(D, [A, B, D], record=RESTORED, generation=1)) == restoring
    # Its data is of generation 2 now: no member answers yet, so it forms with the others.
    formed = decide(seen(D, [A, B, D], record=RESTORED, generation=2))
    assert (formed.action, formed.message) == ("start", "forming the cluster recorded at T2")
    # A record without its origin or time says so with "?".
    bare = RESTORED | {"restore": {"snapshot": "dev/etcd/r.db"}}
    del bare["formed"]
    assert decide(seen(D, [D], record=bare)).message == (
        "restoring the cluster from ? (generation 2, recorded at ?)"
    )
    # Not named by it, or a record of a newer generation that restores nothing: no restore.
    assert decide(seen(C, [C], record=RESTORED)).action == "wait"
    unrestored = {k: v for k, v in RESTORED.items() if k != "restore"}
    assert decide(seen(D, [D], record=unrestored)).action == "start"
    assert decide(seen(D, [D], record=RESTORED | {"restore": {}})).action == "start"


def test_an_instance_that_is_a_member_starts_as_it_with_the_record_token() -> None:
    members = [member(A), member(B, started=False), member(D, learner=True)]
    decision = decide(seen(D, [A, B, D], members, quorum=False, record=FORMED))
    assert decision == Decision(
        "start",
        "this instance is already a member: starting as it",
        "existing",
        {A: peer(A), hexid(B): peer(B), D: peer(D)},
        token="kubeplat-0123",
    )
    assert decision.initial_cluster == f"{hexid(B)}={peer(B)},{A}={peer(A)},{D}={peer(D)}"
    # No record: no token (the configuration's own default then).
    assert decide(seen(D, [A, D], [member(A), member(D)])).token == ""


def test_another_instance_added_but_not_started_is_not_this_one() -> None:
    """A member without a name is this instance only if its peer URL is this instance's."""
    members = [member(A), member(B), member(C, started=False, learner=True)]
    waiting = decide(seen(D, [A, B, C, D], members, quorum=True))
    assert waiting == Decision("wait", f"{peer(C)} is joining; members join one at a time")
    members = [member(A), member(B), member(C, learner=True), member(D, started=False)]
    assert decide(seen(D, [A, B, C, D], members, quorum=True)).action == "start"


def test_members_without_quorum_make_a_joiner_wait_and_say_how_many() -> None:
    members = [member(A), member(B), member(C)]
    assert decide(seen(D, [A, D], members, quorum=False)) == Decision(
        "wait",
        "etcd has lost quorum: members answer but cannot agree (3 members); not joining, and "
        f"never forming a second cluster; {RECOVERY}",
    )
    assert decide(seen(D, [A, B, D], None, reachable=2, record=FORMED)) == Decision(
        "wait",
        "etcd has lost quorum: members answer but cannot agree (2 answering); not joining, and "
        f"never forming a second cluster; {RECOVERY}",
    )


def test_a_joiner_says_how_many_members_it_joins_and_removes() -> None:
    members = [member(A), member(B), member(C)]
    assert decide(seen(D, [A, B, C, D], members, quorum=True, record=FORMED)) == Decision(
        "join",
        "joining as a learner (3 members)",
        "existing",
        {A: peer(A), B: peer(B), C: peer(C), D: peer(D)},
        [],
        "kubeplat-0123",
    )
    # Two learners (one named, one not yet started) both named in the wait.
    members = [member(A), member(B, learner=True), member(C, started=False, learner=True)]
    assert decide(seen(D, [A, B, C, D], members, quorum=True)).message == (
        f"{B}, {peer(C)} is joining; members join one at a time"
    )
    # A gone learner is no join under way: it is removed with the other gone member.
    members = [member(A), member(B), member(C, learner=True)]
    joined = decide(seen(D, [A, D], members, quorum=True))
    assert joined.message == "joining as a learner (1 members, removing 2 whose instance is gone)"
    assert joined.remove == [member(B), member(C, learner=True)]
    assert joined.cluster == {A: peer(A), D: peer(D)}


def test_nobody_answering_forms_from_the_record_or_waits_for_its_members() -> None:
    assert decide(seen(D, [A, D], record=FORMED)) == Decision(
        "start", "forming the cluster recorded at T1", "new", FORMED["members"],
        token="kubeplat-0123",
    )  # fmt: skip
    waiting = decide(seen(C, [A, C], record={"token": 7, "members": {A: peer(A)}}))
    assert waiting == Decision(
        "wait",
        "no member of the cluster formed at ? answers; this instance is not one of its first "
        "members, so it waits for them. If they are all gone, the data is only in the "
        f"snapshots; never forming a second cluster; {RECOVERY}",
    )
    assert decide(seen(A, [A], record={"token": 7, "members": {A: peer(A)}})) == Decision(
        "start", "forming the cluster recorded at ?", "new", {A: peer(A)}, token="7"
    )
    assert decide(seen(C, [C], record=FORMED)).message.startswith(
        "no member of the cluster formed at T1 answers; "
    )


def test_the_first_instances_propose_once_the_whole_group_runs() -> None:
    assert decide(seen(D, [A, D])) == Decision("wait", "2 of 3 instances run; forming when all do")
    proposal = decide(seen(D, [A, B, D]))
    assert (proposal.action, proposal.message, proposal.state) == (
        "propose",
        f"proposing the cluster of {A}, {B}, {D}",
        "new",
    )
    assert proposal.cluster == {A: peer(A), B: peer(B), D: peer(D)}
    assert re.fullmatch(r"kubeplat-[0-9a-f]{16}", proposal.token), proposal.token
    assert decide(seen(D, [A, B, D])).token != proposal.token  # a new token each time
    assert decide(seen(D, [A, B, C, D])) == Decision(
        "wait", "not one of the first members; waiting for them to form"
    )
    one = Seen(A, HOST[A], {A: HOST[A], B: HOST[B]}, 1, None)
    assert decide(one).cluster == {A: peer(A)}


def test_a_member_is_gone_when_its_instance_no_longer_runs() -> None:
    live = {A: HOST[A], B: HOST[B]}
    assert not etcd.gone(member(A), live)
    assert etcd.gone(member(C), live)
    # Not started (no name): by its peer address, any of them.
    assert not etcd.gone(member(B, started=False), live)
    assert etcd.gone(member(C, started=False), live)
    several = Member("1", "", ["https://10.9.9.9:2380", peer(B)])
    assert not etcd.gone(several, live)
    # The first "//" ends the scheme; the last ":" starts the port.
    assert etcd._host_of("https://ip-10-0-0-1.ec2.internal:2380") == "ip-10-0-0-1.ec2.internal"
    assert etcd._host_of("https://a//b:c:2380") == "a//b:c"
    assert etcd._host_of("a:2380") == "a"
    assert etcd.entries([member(A), member(C, started=False)]) == {A: peer(A), hexid(C): peer(C)}
    assert (etcd.generation(None), etcd.generation({}), etcd.generation({"generation": "3"})) == (
        0,
        0,
        3,
    )
    assert Decision("wait", "", cluster={B: "y", A: "x"}).initial_cluster == "i-0a=x,i-0b=y"
    assert Member.parse({"ID": 17}) == Member("11", "", [], False)


# --- etcdctl --------------------------------------------------------------------------------


def test_etcdctl_runs_with_the_node_client_certificate_and_short_timeouts(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered: list[str] = []
    original = aws.Activity.enter

    def enter(what: str) -> None:
        entered.append(what)
        original(what)

    monkeypatch.setattr(aws.Activity, "enter", enter)
    run = etcd.Etcdctl(world.args.pki, str(world.etcdctl.path))
    world.etcdctl.answer("member", "list", out="listed\n", err="warn\n", rc=3)
    done = run([client(A), client(B)], "member", "list", "-w", "json")
    assert (done.returncode, done.stdout, done.stderr) == (3, "listed\n", "warn\n")
    pki = world.args.pki
    assert world.etcdctl.calls() == [
        [
            f"--endpoints={client(A)},{client(B)}",
            f"--cacert={pki}/etcd/ca.crt",
            f"--cert={pki}/etcd/healthcheck-client.crt",
            f"--key={pki}/etcd/healthcheck-client.key",
            "--dial-timeout=3s",
            "--command-timeout=10s",
            "member",
            "list",
            "-w",
            "json",
        ]
    ]
    command, options = world.subprocess.runs[-1]
    assert command[0] == str(world.etcdctl.path)
    assert options == {"capture_output": True, "text": True, "timeout": 30, "check": False}
    assert entered == ["etcdctl member list json"] and aws.Activity.what == ""
    # The default binary is etcdctl from PATH.
    assert etcd.Etcdctl(pki).binary == "etcdctl"


def test_an_etcdctl_that_hangs_is_ended_and_answers_124(world: World) -> None:
    world.etcdctl.answer("endpoint", "health", sleep=5)
    run = etcd.Etcdctl(world.args.pki, str(world.etcdctl.path))
    done = run([client(A)], "endpoint", "health", timeout=0.3)
    assert (done.returncode, done.stdout, done.stderr) == (124, "", "etcdctl timed out")
    assert done.args[0] == str(world.etcdctl.path) and done.args[-2:] == ["endpoint", "health"]
    assert world.subprocess.runs[-1][1]["timeout"] == 0.3
    assert aws.Activity.what == ""


def test_etcdctl_reads_members_reachability_and_quorum(world: World) -> None:
    run = etcd.Etcdctl(world.args.pki, str(world.etcdctl.path))
    # Nobody to ask: no call at all.
    assert run.members([]) is None and run.quorum([]) is False
    assert world.etcdctl.calls() == []
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(C, False, True)))
    assert run.members([client(A), client(B)]) == [
        Member(hexid(A), A, [peer(A)], False),
        Member(hexid(C), "", [peer(C)], True),
    ]
    world.etcdctl.answer("member", "list", out=json.dumps({"header": {}}))
    assert run.members([client(A)]) == []
    world.etcdctl.answer("member", "list", rc=1, err="Error: context deadline exceeded")
    assert run.members([client(A)]) is None
    world.etcdctl.answer("endpoint", "status", out=status(A, A)[:-1] + "," + status(B, A)[1:])
    assert run.reachable([client(A), client(B)]) == 2
    world.etcdctl.answer("endpoint", "status", rc=1, err="Error: no endpoint answers")
    assert run.reachable([client(A)]) == 0
    world.etcdctl.answer("endpoint", "status", out="{not json", rc=1)
    assert run.reachable([client(A)]) == 0
    world.etcdctl.answer("get", "--consistency=l", rc=0)
    assert run.quorum([client(A), client(B)]) is True
    world.etcdctl.answer("get", "--consistency=l", rc=1)
    assert run.quorum([client(A)]) is False
    both, one = f"{client(A)},{client(B)}", client(A)
    assert world.etcdctl.commands() == [
        (both, ("member", "list", "-w", "json")),
        (one, ("member", "list", "-w", "json")),
        (one, ("member", "list", "-w", "json")),
        (both, ("endpoint", "status", "-w", "json")),
        (one, ("endpoint", "status", "-w", "json")),
        (one, ("endpoint", "status", "-w", "json")),
        (both, ("get", "--consistency=l", "/kubeplat/quorum-probe")),
        (one, ("get", "--consistency=l", "/kubeplat/quorum-probe")),
    ]


# --- the formation record -----------------------------------------------------------------


def test_the_formation_record_and_the_objects_beside_it(world: World) -> None:
    formation = etcd.Formation(world.s3, BUCKET, PREFIX)
    assert (formation.base, formation.key) == ("dev/etcd/", "dev/etcd/formation.json")
    assert formation.read() is None and formation.read("backup-done.json") is None
    assert world.s3.gets == ["dev/etcd/formation.json", "dev/etcd/backup-done.json"]
    formation.write("backup-done.json", {"id": "r1", "by": D})
    assert world.s3.puts == [
        ("dev/etcd/backup-done.json", b'{\n "by": "i-0d",\n "id": "r1"\n}', {})
    ]
    assert formation.read("backup-done.json") == {"by": D, "id": "r1"}
    world.s3.put("dev/etcd/formation.json", {"token": "t"})
    assert formation.read() == {"token": "t"}
    # Only a missing object is "no record": any other error is the caller's.
    world.s3.failing["dev/etcd/formation.json"] = client_error("AccessDenied", 403, "GetObject")
    with pytest.raises(ClientError, match="AccessDenied"):
        formation.read()


def test_the_record_is_written_once_the_first_writer_wins(world: World) -> None:
    formation = etcd.Formation(world.s3, BUCKET, PREFIX)
    first = {"token": "kubeplat-1", "members": {D: peer(D)}, "formed": STAMP, "by": D}
    assert formation.create(first) is True
    body = b'{\n "token": "kubeplat-1",\n "members": {\n  "i-0d": "' + peer(D).encode()
    body += b'"\n },\n "formed": "2026-12-05T12:00:00Z",\n "by": "i-0d"\n}'
    assert world.s3.puts == [("dev/etcd/formation.json", body, {"If-None-Match": "*"})]
    assert formation.create(first | {"by": A}) is False  # S3: 412 Precondition Failed
    assert world.s3.json("dev/etcd/formation.json")["by"] == D
    # A conflicting concurrent write (409) lost too; any other error is raised.
    world.s3.failing["dev/etcd/formation.json"] = client_error(
        "ConditionalRequestConflict", 409, "P"
    )
    assert formation.create(first) is False
    world.s3.failing["dev/etcd/formation.json"] = client_error("InternalError", 500, "PutObject")
    with pytest.raises(ClientError, match="InternalError"):
        formation.create(first)
    world.s3.failing["dev/etcd/formation.json"] = ConnectionResetError("reset")
    with pytest.raises(ConnectionResetError):
        formation.create(first)
    # The condition was for those writes only: the client's other writes carry none.
    assert world.s3.handlers == {"before-sign.s3.PutObject": []}
    formation.write("backup-done.json", {})
    assert world.s3.puts[-1] == ("dev/etcd/backup-done.json", b"{}", {})


# --- what AWS says of the group ------------------------------------------------------------


def test_the_live_members_are_the_running_secure_instances_with_an_address(world: World) -> None:
    world.ec2 = RecordingEc2({A: HOST[A], B: "", C: HOST[C], D: HOST[D]})
    assert etcd.live_members(world.ec2, "dev") == {A: HOST[A], C: HOST[C], D: HOST[D]}
    assert world.ec2.filters == [
        [
            {"Name": "tag:Environment", "Values": ["dev"]},
            {"Name": "tag:Layer", "Values": ["secure"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    ]


def test_the_group_and_its_desired_size(world: World) -> None:
    world.autoscaling.desired = 5
    assert etcd.group_of(world.autoscaling, D) == GROUP
    assert etcd.desired(world.autoscaling, D) == 5
    assert world.autoscaling.calls == [
        ("describe_auto_scaling_instances", {"InstanceIds": [D]}),
        ("describe_auto_scaling_instances", {"InstanceIds": [D]}),
        ("describe_auto_scaling_groups", {"AutoScalingGroupNames": [GROUP]}),
    ]
    alone = RecordingAutoScaling(group="")
    assert etcd.group_of(alone, D) == "" and etcd.desired(alone, D) == 1
    assert [name for name, _ in alone.calls] == ["describe_auto_scaling_instances"] * 2


# --- the node -------------------------------------------------------------------------------


def test_a_node_is_this_instance_and_its_services(world: World) -> None:
    node = world.node()
    assert (node.me, node.host, node.region, node.environment) == (D, HOST[D], REGION, "dev")
    assert world.clients == [("ec2", REGION), ("autoscaling", REGION), ("s3", REGION)]
    assert node.ec2 is world.ec2 and node.autoscaling is world.autoscaling
    assert node.formation.s3 is world.s3
    assert (node.formation.bucket, node.formation.key) == (BUCKET, "dev/etcd/formation.json")
    assert node.etcdctl == etcd.Etcdctl(world.args.pki, str(world.etcdctl.path))
    assert (node.reporter.bucket, node.reporter.base) == (BUCKET, "dev/status/secure")
    assert node.reporter.identity is world.identity and node.args is world.args
    assert node.reported == ("", 0.0) and node.restart_asked == (0, -1e9)
    assert node.ready_told is False
    assert (node.last_problem, node.status_said, node.group) == ("", "", "")
    assert node.released == set()
    assert node.peers({D: HOST[D], B: HOST[B], A: HOST[A]}) == [client(A), client(B)]


def test_a_look_asks_the_other_instances_etcd_and_reads_the_record(world: World) -> None:
    world.record(**FORMED)
    (world.tmp / "var" / "etcd.generation").write_text("1\n")
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(B)))
    node = world.node()
    members = [member(A), member(B)]
    live = {A: HOST[A], B: HOST[B], D: HOST[D]}
    assert node.look() == Seen(D, HOST[D], live, 3, members, True, FORMED, 0, 1)
    others = f"{client(A)},{client(B)}"
    assert world.etcdctl.commands() == [
        (others, ("member", "list", "-w", "json")),
        (others, ("get", "--consistency=l", "/kubeplat/quorum-probe")),
    ]
    world.etcdctl.answer("get", "--consistency=l", rc=1)
    assert node.look().quorum is False
    # Members that do not list: how many answer a status (no quorum asked for).
    world.etcdctl.forget()
    world.etcdctl.answer("member", "list", rc=1, err="Error: context deadline exceeded")
    world.etcdctl.answer("endpoint", "status", out=status(A, A), rc=1)
    assert node.look() == Seen(D, HOST[D], live, 3, None, False, FORMED, 1, 1)
    assert world.etcdctl.commands() == [
        (others, ("member", "list", "-w", "json")),
        (others, ("endpoint", "status", "-w", "json")),
    ]
    # Alone: nobody to ask.
    world.etcdctl.forget()
    world.ec2.lives = [{D: HOST[D]}]
    world.autoscaling.desired = 1
    assert node.look() == Seen(D, HOST[D], {D: HOST[D]}, 1, None, False, FORMED, 0, 1)
    assert world.etcdctl.calls() == []


# --- acting on a decision -----------------------------------------------------------------


def test_a_proposal_writes_the_record_once_and_the_loser_follows_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    proposal = Decision("propose", "", "new", {A: peer(A), D: peer(D)}, token="kubeplat-00")
    looked = seen(D, [A, D])
    assert node.act(proposal, looked) is False  # decide again, from the record
    record = {"token": "kubeplat-00", "members": {A: peer(A), D: peer(D)}}
    written = json.dumps(record | {"formed": STAMP, "by": D}, indent=1).encode()
    assert world.s3.objects["dev/etcd/formation.json"][0] == written
    assert said(capsys) == [f"formation record written: {A}={peer(A)},{D}={peer(D)}"]
    assert node.act(proposal, looked) is False
    assert said(capsys) == ["another instance wrote the formation record first: following it"]
    assert world.s3.objects["dev/etcd/formation.json"][0] == written
    assert world.etcdctl.calls() == []


def test_a_joiner_removes_the_gone_members_then_adds_itself_as_a_learner(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    unstarted = Member("ee05", "", ["https://ip-10-0-0-9.ec2.internal:2380"], True)
    join = Decision("join", "", "existing", {}, [member(C), unstarted])
    assert node.act(join, seen(D, [A, B, D])) is True
    others = f"{client(A)},{client(B)}"
    assert world.etcdctl.commands() == [
        (others, ("member", "remove", hexid(C))),
        (others, ("member", "remove", "ee05")),
        (others, ("member", "add", D, f"--peer-urls={peer(D)}", "--learner")),
    ]
    assert said(capsys) == [
        f"removed member {C} (its instance is gone)",
        "removed member ee05 (its instance is gone)",
    ]
    # A refused removal: no add, decide again.
    world.etcdctl.forget()
    world.etcdctl.answer("member", "remove", hexid(C), rc=1, err="Error: unhealthy cluster\n")
    assert node.act(join, seen(D, [A, B, D])) is False
    assert said(capsys) == [f"removing {C} failed: Error: unhealthy cluster"]
    assert [args[1] for _, args in world.etcdctl.commands()] == ["remove"]
    world.etcdctl.answer("member", "remove", hexid(C), rc=0)
    world.etcdctl.answer("member", "remove", "ee05", rc=1, err="no such member")
    assert node.act(join, seen(D, [A, B, D])) is False
    assert said(capsys)[-1] == "removing ee05 failed: no such member"
    # A refused add (another learner got in first): decide again.
    world.etcdctl.forget()
    world.etcdctl.answer("member", "add", rc=1, err=" too many learner members in cluster \n")
    assert node.act(Decision("join", "", "existing"), seen(D, [A, D])) is False
    assert said(capsys) == ["adding this member failed: too many learner members in cluster"]
    assert world.etcdctl.commands() == [
        (client(A), ("member", "add", D, f"--peer-urls={peer(D)}", "--learner"))
    ]


def test_start_writes_the_configuration_and_wait_does_not(world: World) -> None:
    node = world.node()
    assert node.act(Decision("start", "", "new"), seen(D, [A, D])) is True
    assert node.act(Decision("wait", ""), seen(D, [A, D])) is False
    assert world.etcdctl.calls() == [] and world.s3.puts == []


def restoring(world: World, size: int = (5 << 20) // 2) -> tuple[Decision, dict[str, Any], bytes]:
    snapshot = bytes(range(256)) * (size // 256)
    world.s3.put("dev/etcd/restore/2.db", snapshot)
    record = RESTORED | {"restore": {"from": "x", "snapshot": "dev/etcd/restore/2.db"}}
    return decide(seen(D, [A, B, D], record=record, generation=1)), record, snapshot


def test_a_restore_puts_the_snapshot_in_place_of_the_old_data_kept_aside(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    data = world.args.data_dir
    (data / "member" / "wal").mkdir(parents=True)
    (data / "member" / "wal" / "old.wal").write_text("generation 1")
    staging = world.tmp / "var" / "etcd.restoring"
    (staging / "half").mkdir(parents=True)  # an interrupted restore's leftovers
    decision, record, snapshot = restoring(world)
    node = world.node()
    assert node.act(decision, seen(D, [A, B, D], record=record, generation=1)) is True
    assert (data / "member" / "snap" / "db").read_bytes() == snapshot
    assert not (data / "half").exists() and not staging.exists()
    assert data.stat().st_mode & 0o777 == 0o700
    aside = world.tmp / "var" / "etcd.before-generation-2"
    assert (aside / "member" / "wal" / "old.wal").read_text() == "generation 1"
    download = world.tmp / "var" / ".etcd.restore.db"
    assert not download.exists()
    assert (world.tmp / "bin" / "etcdutl.downloads").read_text() == f"600 {len(snapshot)}\n"
    assert world.s3.bodies[-1].reads == [1 << 20] * 4  # 2.5 MiB, a MiB at a time
    assert world.subprocess.runs == [
        (["rm", "-rf", str(staging)], {"check": True}),
        (
            [
                str(world.etcdutl), "snapshot", "restore", str(download),
                f"--data-dir={staging}", f"--name={D}",
                f"--initial-cluster={A}={peer(A)},{B}={peer(B)},{D}={peer(D)}",
                "--initial-cluster-token=kubeplat-4567",
                f"--initial-advertise-peer-urls={peer(D)}",
            ],
            {"capture_output": True, "text": True, "timeout": 1800, "check": False},
        ),
    ]  # fmt: skip
    assert said(capsys) == [f"restored s3://{BUCKET}/dev/etcd/restore/2.db as member {D}"]


def test_a_failed_restore_leaves_the_data_as_it_was(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    data = world.args.data_dir
    (data / "member").mkdir(parents=True)
    decision, record, _ = restoring(world, size=1024)
    download = world.tmp / "var" / ".etcd.restore.db"
    download.write_bytes(b"a longer download, left by an interrupted restore" * 100)
    (world.tmp / "bin" / "etcdutl.fail").write_text("E" * 600 + "snapshot file corrupted\n\n")
    node = world.node()
    assert node.restore(decision, record) is False
    tail = ("E" * 600 + "snapshot file corrupted")[-500:]
    assert said(capsys) == [f"restoring dev/etcd/restore/2.db failed: {tail}"]
    assert (data / "member").is_dir() and not download.exists()
    assert (world.tmp / "bin" / "etcdutl.downloads").read_text().split()[1] == "1024"
    assert not (world.tmp / "var" / "etcd.before-generation-2").exists()
    # The snapshot is not in the bucket: the error is the caller's; no download is left.
    del world.s3.objects["dev/etcd/restore/2.db"]
    with pytest.raises(NoSuchKey):
        node.restore(decision, record)
    assert not download.exists()


def test_old_data_is_set_aside_never_deleted(world: World) -> None:
    data = world.args.data_dir
    assert etcd.set_aside(data, 3) is None
    data.mkdir()
    assert etcd.set_aside(data, 3) is None and not data.exists()  # empty: it just goes
    (data / "member").mkdir(parents=True)
    first = world.tmp / "var" / "etcd.before-generation-3"
    assert etcd.set_aside(data, 3) == first and (first / "member").is_dir()
    (data / "member").mkdir(parents=True)
    again = world.tmp / "var" / "etcd.before-generation-3-1800000000"
    assert etcd.set_aside(data, 3) == again and (again / "member").is_dir()
    assert (first / "member").is_dir() and not data.exists()


def test_the_generation_files_beside_the_data(world: World) -> None:
    data = world.args.data_dir
    assert etcd.local_generation(data) == 0 and etcd.restore_owed(data) == 0
    generation = world.tmp / "var" / "etcd.generation"
    for text, value in (("4\n", 4), ("", 0), (" \n", 0), ("four", 0)):
        generation.write_text(text)
        assert etcd.local_generation(data) == value, text
    (world.tmp / "var" / "etcd.restore-owed").write_text("5\n")
    assert etcd.restore_owed(data) == 5
    assert not etcd.started(data)
    (data / "member" / "wal").mkdir(parents=True)
    assert not etcd.started(data)  # etcd failed before writing its log
    (data / "member" / "wal" / "0.wal").write_bytes(b"")
    assert etcd.started(data)


# --- prepare ----------------------------------------------------------------------------------


def test_a_restarted_member_comes_back_as_it_was(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.has_run()
    (world.tmp / "var" / "etcd.generation").write_text("2\n")
    owed = world.tmp / "var" / "etcd.restore-owed"
    owed.write_text("2\n")
    for newest in (2, 1):
        world.record(**FORMED, generation=newest)
        assert etcd.prepare(world.args, sleep=world.clock.sleep) == 0
        assert said(capsys) == ["a data directory exists: etcd restarts as the member it was"]
        assert not owed.exists()
    assert world.args.output.read_text() == "name: as it was\n"
    assert world.etcdctl.calls() == [] and world.clock.slept == []
    assert world.identity_reads == 2  # one node each time


def test_a_restart_with_the_bucket_unreadable_comes_back_as_it_was(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.has_run()
    (world.tmp / "var" / "etcd.generation").write_text("2\n")
    (world.tmp / "var" / "etcd.restore-owed").write_text("2\n")  # a restore it came back from
    world.s3.failing["dev/etcd/formation.json"] = TimeoutError("read timed out")
    assert etcd.prepare(world.args, sleep=world.clock.sleep) == 0
    assert said(capsys) == [
        "the formation record cannot be read (TimeoutError): etcd restarts as the member it was"
    ]
    assert world.clock.slept == [] and world.args.output.read_text() == "name: as it was\n"


def test_a_member_restarted_for_a_restore_waits_for_the_record_longer_each_time(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.has_run()
    (world.tmp / "var" / "etcd.generation").write_text("2\n")
    (world.tmp / "var" / "etcd.restore-owed").write_text("3\n")
    world.identity_fails = [aws.NoCredentials("none yet")]
    world.s3.failing["dev/etcd/formation.json"] = TimeoutError("read timed out")
    world.record(**FORMED, generation=2)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 7:
            del world.s3.failing["dev/etcd/formation.json"]
        if len(slept) > 7:
            raise Stop

    assert etcd.prepare(world.args, sleep=sleep) == 0
    assert slept == [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0]
    lines = said(capsys)
    why = "this member was restarted for the restore of generation 3: trying again in"
    assert lines == [
        f"the formation record cannot be read (NoCredentials); {why} 5s",
        *(
            f"the formation record cannot be read (TimeoutError); {why} {pause}s"
            for pause in (8, 11, 17, 25, 30, 30)
        ),
        "a data directory exists: etcd restarts as the member it was",
    ]
    assert world.identity_reads == 2  # the node, once made, is kept


def test_a_member_of_an_older_generation_sets_its_data_aside_and_restores(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.has_run()
    (world.tmp / "var" / "etcd.generation").write_text("1\n")
    (world.tmp / "var" / "etcd.restore-owed").write_text("2\n")
    _, record, snapshot = restoring(world, size=4096)
    world.record(**record)
    world.etcdctl.answer("member", "list", rc=1)
    world.etcdctl.answer("endpoint", "status", rc=1)
    assert etcd.prepare(world.args, sleep=world.clock.sleep) == 0
    aside = world.tmp / "var" / "etcd.before-generation-2"
    cluster = f"{A}={peer(A)},{B}={peer(B)},{D}={peer(D)}"
    assert said(capsys) == [
        f"the cluster was restored (generation 2); this member's data of generation 1 is kept "
        f"in {aside}",
        "restoring the cluster from x (generation 2, recorded at T2)",
        f"restored s3://{BUCKET}/dev/etcd/restore/2.db as member {D}",
        f"new cluster {cluster}",
    ]
    assert (aside / "member" / "wal").is_dir()
    assert (world.args.data_dir / "member" / "snap" / "db").read_bytes() == snapshot
    assert (world.tmp / "var" / "etcd.generation").read_text() == "2\n"
    assert not (world.tmp / "var" / "etcd.restore-owed").exists()
    assert f'initial-cluster: "{cluster}"' in world.args.output.read_text()
    assert world.identity_reads == 1 and world.clock.slept == []


def test_a_member_whose_configuration_is_missing_decides_again(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.has_run()
    world.args.output.unlink()
    world.record(**FORMED)
    world.etcdctl.answer("member", "list", rc=1)
    world.etcdctl.answer("endpoint", "status", rc=1)
    assert etcd.prepare(world.args, sleep=world.clock.sleep) == 0
    assert said(capsys) == [
        "forming the cluster recorded at T1",
        f"new cluster {A}={peer(A)},{D}={peer(D)}",
    ]
    assert world.args.output.exists()


def test_the_group_forms_once_all_run_and_the_record_is_written(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.ec2 = RecordingEc2(
        {A: HOST[A], D: HOST[D]}, {A: HOST[A], D: HOST[D]}, {i: HOST[i] for i in (A, B, D)}
    )
    world.etcdctl.answer("member", "list", rc=1, err="Error: context deadline exceeded")
    world.etcdctl.answer("endpoint", "status", rc=1)
    decision = etcd._decide_and_write(world.args, None, world.clock.sleep)
    assert decision is not None and (decision.action, decision.state) == ("start", "new")
    cluster = f"{A}={peer(A)},{B}={peer(B)},{D}={peer(D)}"
    assert said(capsys) == [
        "2 of 3 instances run; forming when all do",
        f"proposing the cluster of {A}, {B}, {D}",
        f"formation record written: {cluster}",
        f"forming the cluster recorded at {STAMP}",
        f"new cluster {cluster}",
    ]
    assert world.clock.slept == [5.0, 7.5, 11.25]
    token = world.s3.json("dev/etcd/formation.json")["token"]
    assert world.args.output.read_text() == (
        f'name: "{D}"\nlisten-peer-urls: "https://{HOST[D]}:2380"\n'
        f'initial-cluster: "{cluster}"\ninitial-cluster-state: "new"\n'
        f'initial-cluster-token: "{token}"\n'
    )
    assert (world.tmp / "var" / "etcd.generation").read_text() == "0\n"


def test_while_aws_does_not_answer_the_member_tries_again_less_and_less_often(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.identity_fails = [aws.NoCredentials("none yet")] * 7
    world.record(**FORMED, generation=4)
    world.etcdctl.answer("member", "list", rc=1)
    world.etcdctl.answer("endpoint", "status", rc=1)
    (world.tmp / "var" / "etcd.restore-owed").write_text("4\n")
    assert etcd._decide_and_write(world.args, None, world.clock.sleep) is not None
    assert world.clock.slept == [5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0]
    lines = said(capsys)
    assert lines[:7] == [
        f"NoCredentials: none yet; trying again in {pause}s" for pause in (5, 8, 11, 17, 25, 30, 30)
    ]
    assert lines[7:] == [
        "forming the cluster recorded at T1",
        f"new cluster {A}={peer(A)},{D}={peer(D)}",
    ]
    assert (world.tmp / "var" / "etcd.generation").read_text() == "4\n"
    assert not (world.tmp / "var" / "etcd.restore-owed").exists()


def test_a_decision_that_must_wait_gives_up_once_its_budget_would_pass(world: World) -> None:
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(B)))
    world.etcdctl.answer("get", "--consistency=l", rc=1)  # no quorum: wait
    assert etcd._decide_and_write(world.args, None, world.clock.sleep, 12.5) is None
    assert world.clock.slept == [5.0, 7.5]  # 12.5 s exactly is within the budget
    world.clock.slept.clear()
    assert etcd._decide_and_write(world.args, None, world.clock.sleep, 12.4) is None
    assert world.clock.slept == [5.0]
    assert not world.args.output.exists()
    assert not (world.tmp / "var" / "etcd.generation").exists()


def test_recheck_gives_up_within_systemds_start_timeout(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    added = Decision("join", "", "existing", {C: peer(C), D: peer(D)})
    etcd.write_config(world.args, D, HOST[D], added)
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(B)))
    world.etcdctl.answer("get", "--consistency=l", rc=1)
    assert etcd.recheck(world.args, sleep=world.clock.sleep) == 1
    assert world.clock.slept == [5.0, 7.5, 11.25]  # 23.75 s; 40.6 would pass the 30 s
    assert said(capsys)[-1] == "etcd cannot start yet: decided nothing in 30s; systemd tries again"
    world.etcdctl.answer("get", "--consistency=l", rc=0)
    assert etcd.recheck(world.args, sleep=world.clock.sleep) == 0
    assert said(capsys) == [
        "joining as a learner (2 members)",
        f"existing cluster {A}={peer(A)},{B}={peer(B)},{D}={peer(D)}",
        f"the members changed since this member was added (it was added to "
        f"{C}={peer(C)},{D}={peer(D)})",
    ]


def test_the_configuration_prepare_wrote_is_read_back_by_key() -> None:
    text = 'initial-cluster: "a=https://h:2380"\ninitial-cluster-state: new\nname: "x"\n'
    assert etcd._configured(text, "initial-cluster") == "a=https://h:2380"
    assert etcd._configured(text, "initial-cluster-state") == "new"
    assert etcd._configured(text, "initial-cluster-token") == ""
    assert etcd._configured("  name: x\n", "name") == ""  # keys start a line


def test_the_configuration_is_the_template_filled_in_and_replaced_whole(world: World) -> None:
    world.args.output.write_text("old\n")
    etcd.write_config(world.args, D, HOST[D], Decision("start", "", "existing", {D: peer(D)}))
    assert world.args.output.read_text() == (
        f'name: "{D}"\nlisten-peer-urls: "https://{HOST[D]}:2380"\n'
        f'initial-cluster: "{D}={peer(D)}"\ninitial-cluster-state: "existing"\n'
        'initial-cluster-token: "kubeplat-dev"\n'
    )
    assert sorted(p.name for p in world.args.output.parent.iterdir()) == [
        "etcd.conf.yml",
        "etcd.conf.yml.tmpl",
    ]


# --- the watch ------------------------------------------------------------------------------


class RecordingThreading:
    """The module's `threading` STAND-IN: records the watchdog thread instead of starting it."""

    def __init__(self) -> None:
        self.threads: list[dict[str, Any]] = []

    def Thread(self, **options: Any) -> Any:  # threading's name
        record = dict(options, started=False, at_first=list(options["args"][0]))
        self.threads.append(record)
        return SimpleNamespace(start=lambda: record.update(started=True))


def test_the_watch_runs_a_round_every_interval_and_survives_a_failing_one(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = RecordingThreading()
    monkeypatch.setattr(etcd, "threading", threads)
    world.identity_fails = [aws.NoCredentials("none yet")]
    rounds: list[tuple[Any, float]] = []

    def one_round(node: etcd.Node) -> None:
        rounds.append((node, threads.threads[0]["args"][0][0]))
        if len(rounds) > 10:
            raise Stop  # a watch that would not end
        if len(rounds) == 1:
            raise RuntimeError("boom")

    monkeypatch.setattr(etcd, "_watch_round", one_round)
    world.args.interval = 7.0
    assert etcd.watch(world.args, rounds=3) == 0
    assert threads.threads == [
        {"target": etcd._watchdog, "args": (threads.threads[0]["args"][0],), "daemon": True,
         "started": True, "at_first": [0.0]},
    ]  # fmt: skip
    assert world.clock.slept == [7.0, 7.0]  # none after the last round
    # The first round found no node (no credentials yet); each round knew when it started.
    assert [when for _, when in rounds] == [1007.0, 1014.0]
    assert rounds[0][0] is rounds[1][0] and world.identity_reads == 2
    assert threads.threads[0]["args"][0] == [0.0]  # between rounds: 0
    assert said(capsys) == ["watch: NoCredentials: none yet", "watch: RuntimeError: boom"]
    # Without a count it goes on until stopped.
    world.clock.allowed = 4
    with pytest.raises(Stop):
        etcd.watch(world.args)
    assert len(rounds) == 2 + 3


def test_a_stalled_round_is_said_once_a_minute_with_what_it_waits_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    monkeypatch.setattr(etcd, "time", clock)
    monkeypatch.setattr(aws.Activity, "what", "")
    monkeypatch.setattr(aws.Activity, "since", 0.0)
    round_started = [0.0]
    # What each sleep finds when it wakes: when the round started, the time, the call it is in.
    wakes = [
        (0.0, 5000.0, ""),
        (1000.0, 1059.9, ""),
        (1000.0, 1060.0, ""),
        (1000.0, 1065.0, ""),
        (1000.0, 1120.0, "etcdctl member list"),
        (2000.0, 2060.0, "AWS s3 GetObject"),
    ]

    def wake(_: float) -> None:
        if not wakes:
            raise Stop
        round_started[0], clock.now, aws.Activity.what = wakes.pop(0)
        aws.Activity.since = clock.now - 30.4

    clock.on_sleep = wake
    with pytest.raises(Stop):
        etcd._watchdog(round_started)
    assert clock.slept == [5.0] * 7
    assert said(capsys) == [
        "watch: this round has run 60s; not waiting on a call",
        "watch: this round has run 120s; waiting on etcdctl member list for 30s",
        "watch: this round has run 60s; waiting on AWS s3 GetObject for 30s",
    ]


def watching(world: World, me_leads: bool = False) -> etcd.Node:
    """A member's watch, its round ready to run: etcd answers here with quorum."""
    node = world.node()
    world.etcdctl.answer("endpoint", "status", out=status(D, D if me_leads else A))
    world.etcdctl.answer("get", "--consistency=l", rc=0)
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(B), listed(D)))
    world.autoscaling.states = {i: "InService" for i in (A, B, D)}
    return node


REPORT = {
    "answers": True, "member": hexid(D), "leader": hexid(A), "learner": False, "db_size": 20480,
    "raft_index": 42, "cluster": "c1c2", "generation": 0, "certificate_expires": EXPIRES,
    "quorum": True, "updated": STAMP,
    "members": [
        {"id": hexid(i), "name": i, "peer": peer(i), "learner": False} for i in (A, B, D)
    ],
}  # fmt: skip


def test_a_follower_reports_its_etcd_and_completes_its_launch_hook(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    (world.tmp / "var" / "etcd.generation").write_text("0\n")
    world.record(**FORMED)
    node = watching(world)
    etcd._watch_round(node)
    assert world.report() == REPORT
    assert world.expiry_asked == [(HOST[D], 2379, world.args.pki)]
    local = client(D)
    assert world.etcdctl.commands() == [
        (local, ("endpoint", "status", "-w", "json")),
        (local, ("get", "--consistency=l", "/kubeplat/quorum-probe")),
        (local, ("member", "list", "-w", "json")),
        (local, ("endpoint", "health", "--cluster")),
    ]
    assert world.autoscaling.completed() == [
        {"LifecycleHookName": etcd.LIFECYCLE_HOOK, "AutoScalingGroupName": GROUP,
         "LifecycleActionResult": "CONTINUE", "InstanceId": D},
    ]  # fmt: skip
    assert said(capsys) == [
        f"watch: etcd answers here; the leader is {hexid(A)}",
        f"ready: a voting member of a healthy cluster; {GROUP} may go on (launch hook "
        f"{etcd.LIFECYCLE_HOOK})",
    ]
    assert node.ready_told is True
    # The next round: no hook again, no leader's work (no look at the instances).
    world.etcdctl.forget()
    world.ec2.filters.clear()
    etcd._watch_round(node)
    assert [args[:2] for _, args in world.etcdctl.commands()] == [
        ("endpoint", "status"),
        ("get", "--consistency=l"),
        ("member", "list"),
    ]
    assert world.ec2.filters == [] and said(capsys) == []


def test_a_follower_whose_members_do_not_list_reports_none(world: World) -> None:
    node = watching(world)
    node.ready_told = False
    world.etcdctl.answer("member", "list", rc=1)
    etcd._watch_round(node)
    assert "members" not in world.report() and world.report()["quorum"] is True
    assert [args[:2] for _, args in world.etcdctl.commands()][-1] == ("member", "list")
    assert node.ready_told is False  # not told without a member list
    world.etcdctl.forget()
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(B), listed(D)))
    world.etcdctl.answer("get", "--consistency=l", rc=1)
    etcd._watch_round(node)
    assert world.report()["quorum"] is False and node.ready_told is False
    assert [args[:2] for _, args in world.etcdctl.commands()][-1] == ("member", "list")


def test_a_learner_asks_the_voting_members_to_promote_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = watching(world)
    world.etcdctl.answer("endpoint", "status", out=status(D, A, learner=True, size=4096))
    world.etcdctl.answer("member", "promote", rc=1, err="Error: can only promote a learner "
                         "member which is in sync with leader")  # fmt: skip
    etcd._watch_round(node)
    assert world.report() == {
        "answers": True, "member": hexid(D), "leader": hexid(A), "learner": True,
        "db_size": 4096, "raft_index": 42, "cluster": "c1c2", "generation": 0,
        "certificate_expires": EXPIRES, "updated": STAMP,
    }  # fmt: skip
    assert world.etcdctl.commands() == [
        (client(D), ("endpoint", "status", "-w", "json")),
        (f"{client(A)},{client(B)}", ("member", "promote", hexid(D))),
    ]
    assert said(capsys) == [f"watch: etcd answers here; the leader is {hexid(A)}"]
    world.etcdctl.answer("member", "promote", rc=0)
    etcd._watch_round(node)
    assert said(capsys) == ["promoted to a voting member"]


def test_the_leader_removes_a_member_whose_instance_is_gone(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = watching(world, me_leads=True)
    node.ready_told = True
    world.ec2.lives = [{A: HOST[A], D: HOST[D]}]
    unstarted = listed(C, started=False, learner=True)
    world.etcdctl.answer("member", "list", out=member_list(listed(A), listed(B), unstarted,
                                                           listed(D)))  # fmt: skip
    world.etcdctl.answer("member", "remove", hexid(C), rc=1, err="Error: unhealthy")
    world.autoscaling.states[A] = "Terminating:Wait"  # still running, leaving the group
    etcd._watch_round(node)
    local = client(D)
    assert world.etcdctl.commands()[3:] == [
        (local, ("member", "remove", hexid(B))),
        (local, ("member", "remove", hexid(C))),
        (local, ("member", "remove", hexid(A))),
    ]
    assert said(capsys) == [
        "watch: etcd answers here; the leader is this member",
        f"removed member {B}: its instance is gone",
        f"removed member {A}: its instance is leaving {GROUP}",
        f"{A} may leave {GROUP} ({etcd.LEAVE_HOOK})",
    ]
    assert world.report()["leader"] == hexid(D)
    # Backups are the leader's too.
    assert world.s3.gets[-1] == "dev/etcd/backup-request.json"


def test_the_leader_lets_its_own_instance_go_once_it_is_the_last_member(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The members whose instance is gone are removed first; a leaving instance whose member
    is then the last is let go without a removal etcd would refuse (its hook would hold it
    until its timeout)."""
    node = watching(world, me_leads=True)
    node.ready_told = True
    world.ec2.lives = [{D: HOST[D]}]
    world.etcdctl.answer("member", "list", out=member_list(listed(B), listed(D)))
    world.etcdctl.answer("member", "remove", hexid(D), rc=1, err="Error: the last member")
    world.autoscaling.states = {D: "Terminating:Wait"}
    etcd._watch_round(node)
    assert world.etcdctl.commands()[3:] == [(client(D), ("member", "remove", hexid(B)))]
    assert [kw["InstanceId"] for kw in world.autoscaling.completed()] == [D]
    assert said(capsys)[-2:] == [
        f"removed member {B}: its instance is gone",
        f"{D} may leave {GROUP} ({etcd.LEAVE_HOOK})",
    ]


def test_a_member_during_an_election_reports_no_leader(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """etcd's JSON leaves out what is zero: no leader (an election), an empty database."""
    node = watching(world)
    state = json.loads(status(D, None))
    for absent in ("dbSize", "raftIndex"):
        del state[0]["Status"][absent]
    world.etcdctl.answer("endpoint", "status", out=json.dumps(state))
    etcd._watch_round(node)
    report = world.report()
    assert (report["leader"], report["db_size"], report["raft_index"]) == ("0", 0, 0)
    assert said(capsys)[0] == "watch: etcd answers here; the leader is 0"


def test_a_leader_not_listed_as_running_removes_nobody(world: World) -> None:
    node = watching(world, me_leads=True)
    node.ready_told = True
    world.ec2.lives = [{A: HOST[A]}]  # this instance missing: the answer is not to be trusted
    etcd._watch_round(node)
    assert [args[:2] for _, args in world.etcdctl.commands()][3:] == []
    assert world.autoscaling.calls == [] and len(world.ec2.filters) == 1
    # Nor when its etcd lists no members.
    world.ec2.lives = [{A: HOST[A], D: HOST[D]}]
    world.etcdctl.answer("member", "list", rc=1)
    etcd._watch_round(node)
    assert world.autoscaling.calls == [] and len(world.ec2.filters) == 2


def test_a_member_whose_etcd_does_not_answer_reports_so(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    reason = "x" * 50 + "Error: dial tcp: connect: connection refused" + "y" * 200
    world.etcdctl.answer("endpoint", "status", rc=1, err=f"first\nsecond\n{reason}\n")
    etcd._watch_round(node)
    assert said(capsys) == [f"watch: etcd does not answer here ({reason[-200:]}); reported so"]
    assert world.report() == {"member": "", "answers": False, "updated": STAMP}
    assert world.etcdctl.commands() == [(client(D), ("endpoint", "status", "-w", "json"))]
    node.status_said = ""
    world.etcdctl.answer("endpoint", "status", rc=1)
    etcd._watch_round(node)
    assert said(capsys) == ["watch: etcd does not answer here (no output); reported so"]


def test_a_member_restarted_for_a_restore_does_nothing_else_that_round(world: World) -> None:
    world.record(**FORMED, generation=1)
    node = world.node()
    etcd._watch_round(node)
    assert (world.tmp / "restarts").read_text() == "restarted\n"
    assert world.etcdctl.calls() == [] and node.restart_asked == (1, -1e9)


def test_the_report_is_published_when_it_changes_and_every_minute(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    key = f"{PREFIX}/status/secure/{D}/etcd.json"

    def published() -> int:
        return len([k for k, _, _ in world.s3.puts if k == key])

    etcd._publish(node, {"answers": False})
    assert world.s3.puts[-1][1] == b'{\n "answers": false,\n "updated": "2026-12-05T12:00:00Z"\n}'
    assert node.reported == ('{"answers": false}', 1000.0)
    world.clock.now = 1059.9
    etcd._publish(node, {"answers": False})
    assert published() == 1
    world.clock.now = 1060.0
    etcd._publish(node, {"answers": False})
    assert published() == 2 and node.reported[1] == 1060.0
    world.clock.now = 1061.0
    etcd._publish(node, {"answers": True, "member": "a"})
    assert published() == 3
    etcd._publish(node, {"member": "a", "answers": True})  # the same report
    assert published() == 3
    # A report the bucket refused is published again at the next chance.
    world.s3.failing[key] = client_error("SlowDown", 503, "PutObject")
    world.clock.now = 1062.0
    etcd._publish(node, {"answers": False})
    assert node.reported == ('{"answers": true, "member": "a"}', 1061.0)
    del world.s3.failing[key]
    etcd._publish(node, {"answers": False})
    assert published() == 5 and node.reported == ('{"answers": false}', 1062.0)
    capsys.readouterr()


# --- the certificate etcd serves ---------------------------------------------------------


def _certificates(folder: Path, not_after: datetime) -> None:
    """An etcd CA, a server certificate for 127.0.0.1 and the health check's client one."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def issue(common: str, key: Any, until: datetime, ca: bool = False) -> x509.Certificate:
        made = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name("etcd-ca"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            made = made.add_extension(x509.SubjectAlternativeName([address]), critical=False)
        return made.sign(ca_key, hashes.SHA256())

    etcd_dir = folder / "etcd"
    etcd_dir.mkdir(parents=True)
    ca = issue("etcd-ca", ca_key, datetime(2036, 1, 1, tzinfo=UTC), ca=True)
    (etcd_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for file, common, until in (
        ("server", "127.0.0.1", not_after),
        ("healthcheck-client", "kube-etcd-healthcheck-client", datetime(2035, 1, 1, tzinfo=UTC)),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = issue(common, key, until)
        (etcd_dir / f"{file}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (etcd_dir / f"{file}.key").write_bytes(pem(key))


def _serving(pki: Path) -> tuple[int, threading.Thread]:
    """A TLS server on loopback as etcd's client port is: its server certificate, a client
    certificate the etcd CA signed required; it serves one connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "etcd" / "server.crt", pki / "etcd" / "server.key")
    context.load_verify_locations(pki / "etcd" / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            try:
                raw, _ = listener.accept()
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    tls.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_the_expiry_reported_is_that_of_the_certificate_etcd_serves(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _certificates(pki, datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC))
    port, server = _serving(pki)
    # Said in UTC, on a machine whose local time is another (5:30 east of UTC here).
    with local_zone("XST-05:30"):
        assert etcd.served_expiry("127.0.0.1", port, pki) == EXPIRES
    server.join(10)
    # Nothing answers, or a server the etcd CA did not sign: unknown.
    closed = socket.create_server(("127.0.0.1", 0))
    unused = closed.getsockname()[1]
    closed.close()
    assert etcd.served_expiry("127.0.0.1", unused, pki) == ""
    other = tmp_path / "other"
    _certificates(other, datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC))
    port, server = _serving(other)
    assert etcd.served_expiry("127.0.0.1", port, pki) == ""
    server.join(10)
    assert etcd.served_expiry("127.0.0.1", unused, tmp_path / "none") == ""


# --- the group's lifecycle hooks ------------------------------------------------------------


def test_leaving_instances_are_removed_one_by_one_but_never_the_last_member(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every instance in Terminating:Wait goes; each member is removed before its instance
    goes, except the last one (etcd refuses, and no cluster would be left)."""
    node = world.node()
    world.autoscaling.states = {
        D: "InService",
        B: "Terminating:Wait",
        C: "Terminating:Wait",
        A: "Terminating:Wait",
    }
    etcd._release_leaving(node, [member(A), member(B), member(D)], [client(D)])
    assert world.etcdctl.commands() == [
        (client(D), ("member", "remove", hexid(A))),
        (client(D), ("member", "remove", hexid(B))),
    ]
    leave = {"LifecycleHookName": etcd.LEAVE_HOOK, "AutoScalingGroupName": GROUP,
             "LifecycleActionResult": "CONTINUE"}  # fmt: skip
    assert world.autoscaling.completed() == [leave | {"InstanceId": i} for i in (A, B, C)]
    assert said(capsys) == [
        f"removed member {A}: its instance is leaving {GROUP}",
        f"{A} may leave {GROUP} ({etcd.LEAVE_HOOK})",
        f"removed member {B}: its instance is leaving {GROUP}",
        f"{B} may leave {GROUP} ({etcd.LEAVE_HOOK})",
        f"{C} may leave {GROUP} ({etcd.LEAVE_HOOK})",
    ]
    assert node.released == {A, B, C} and node.group == GROUP
    assert world.autoscaling.calls[0] == ("describe_auto_scaling_instances", {"InstanceIds": [D]})
    # Released once: the next rounds leave them to their other hooks (the drain).
    world.autoscaling.calls.clear()
    etcd._release_leaving(node, [member(B)], [client(D)])
    assert world.autoscaling.calls == [
        ("describe_auto_scaling_groups", {"AutoScalingGroupNames": [GROUP]})
    ]


def test_the_last_member_stays_when_every_instance_leaves_at_once(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    world.autoscaling.states = {A: "Terminating:Wait", B: "Terminating:Wait"}
    etcd._release_leaving(node, [member(A), member(B)], [client(B)])
    assert world.etcdctl.commands() == [(client(B), ("member", "remove", hexid(A)))]
    assert [kw["InstanceId"] for kw in world.autoscaling.completed()] == [A, B]
    assert said(capsys)[-1] == f"{B} may leave {GROUP} ({etcd.LEAVE_HOOK})"


def test_a_refused_removal_holds_only_that_instance(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    world.autoscaling.states = {A: "Terminating:Wait", B: "Terminating:Wait", D: "InService"}
    world.etcdctl.answer("member", "remove", hexid(A), rc=1, err="Error: unhealthy cluster")
    etcd._release_leaving(node, [member(A), member(B), member(D)], [client(D)])
    assert [args[2] for _, args in world.etcdctl.commands()] == [hexid(A), hexid(B)]
    assert [kw["InstanceId"] for kw in world.autoscaling.completed()] == [B]
    assert node.released == {B}
    assert said(capsys) == [
        f"removed member {B}: its instance is leaving {GROUP}",
        f"{B} may leave {GROUP} ({etcd.LEAVE_HOOK})",
    ]


def test_a_terminate_hook_that_cannot_be_completed_is_tried_again(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    world.args.leave_hook = "custom-leave"
    world.autoscaling.states = {A: "Terminating:Wait", B: "Terminating:Wait", C: "Terminating:Wait"}
    no_action = client_error(
        "ValidationError", 400, "CompleteLifecycleAction",
        f"No active Lifecycle Action found with instance ID {A}",
    )  # fmt: skip
    throttled = client_error("Throttling", 400, "CompleteLifecycleAction", "Rate exceeded")
    world.autoscaling.refuse = {A: no_action, B: throttled, C: ConnectionResetError("reset")}
    etcd._release_leaving(node, [], [client(D)])
    assert said(capsys) == [
        f"{A} may leave {GROUP} (custom-leave)",  # no hook waits for it: gone already
        f"completing the terminate hook of {B} failed ({throttled}); trying again",
        f"completing the terminate hook of {C} failed (reset); trying again",
    ]
    assert node.released == {A}
    assert {kw["LifecycleHookName"] for kw in world.autoscaling.completed()} == {"custom-leave"}
    world.autoscaling.refuse = {}
    etcd._release_leaving(node, [], [client(D)])
    assert node.released == {A, B, C}
    assert [kw["InstanceId"] for kw in world.autoscaling.completed()] == [A, B, C, B, C]


def test_an_instance_outside_any_group_releases_nothing(world: World) -> None:
    world.autoscaling.group = ""
    node = world.node()
    etcd._release_leaving(node, [member(A), member(D)], [client(D)])
    assert [name for name, _ in world.autoscaling.calls] == ["describe_auto_scaling_instances"]
    assert world.etcdctl.calls() == []


def ready_node(world: World) -> etcd.Node:
    node = world.node()
    world.args.lifecycle_hook = "custom-launch"
    world.autoscaling.hooks = ("custom-launch",)
    return node


def test_the_launch_hook_waits_while_a_join_is_under_way_or_a_member_is_unhealthy(
    world: World,
) -> None:
    node = ready_node(world)
    for members in (
        [member(A), member(B)],  # this instance is not a member yet
        [member(A), member(B, learner=True), member(D)],  # a learner catching up
        [member(A), member(B, started=False), member(D)],  # added, not started
    ):
        etcd._tell_ready(node, members, [client(D)])
    assert world.etcdctl.calls() == [] and world.autoscaling.calls == []
    world.etcdctl.answer("endpoint", "health", rc=1)
    etcd._tell_ready(node, [member(A), member(D)], [client(D)])
    assert world.etcdctl.commands() == [(client(D), ("endpoint", "health", "--cluster"))]
    assert world.autoscaling.calls == [] and node.ready_told is False


def test_the_launch_hook_is_completed_once_this_member_votes_in_a_healthy_cluster(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = ready_node(world)
    etcd._tell_ready(node, [member(A), member(D)], [client(D)])
    assert world.autoscaling.calls == [
        ("describe_auto_scaling_instances", {"InstanceIds": [D]}),
        ("describe_lifecycle_hooks",
         {"AutoScalingGroupName": GROUP, "LifecycleHookNames": ["custom-launch"]}),
        ("complete_lifecycle_action",
         {"LifecycleHookName": "custom-launch", "AutoScalingGroupName": GROUP,
          "LifecycleActionResult": "CONTINUE", "InstanceId": D}),
    ]  # fmt: skip
    assert said(capsys) == [
        f"ready: a voting member of a healthy cluster; {GROUP} may go on (launch hook "
        "custom-launch)"
    ]
    assert node.ready_told is True


def test_a_launch_hook_nobody_waits_on_counts_as_ready(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = ready_node(world)
    world.autoscaling.refuse = {D: client_error("ValidationError", 400, "Complete")}
    etcd._tell_ready(node, [member(D)], [client(D)])
    assert said(capsys) == [
        f"ready: a voting member of a healthy cluster; {GROUP} may go on (launch hook "
        "custom-launch)"
    ]
    assert node.ready_told is True
    # No such hook on the group, or no group at all: ready, and nothing to complete.
    for group, hooks in ((GROUP, ()), ("", ("custom-launch",))):
        node = ready_node(world)
        world.autoscaling.calls.clear()
        world.autoscaling.group, world.autoscaling.hooks = group, hooks
        etcd._tell_ready(node, [member(D)], [client(D)])
        assert said(capsys) == [
            "ready: a voting member of a healthy cluster (no launch hook waits for it)"
        ]
        assert node.ready_told is True
        assert "complete_lifecycle_action" not in [name for name, _ in world.autoscaling.calls]
    assert [name for name, _ in world.autoscaling.calls] == ["describe_auto_scaling_instances"]


def test_a_launch_hook_that_cannot_be_completed_is_said_once_and_tried_again(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = ready_node(world)
    throttled = client_error("Throttling", 400, "CompleteLifecycleAction", "Rate exceeded")
    world.autoscaling.refuse = {D: throttled}
    etcd._tell_ready(node, [member(D)], [client(D)])
    etcd._tell_ready(node, [member(D)], [client(D)])
    assert said(capsys) == [
        f"completing the launch hook custom-launch failed ({throttled}); trying again"
    ]
    assert node.ready_told is False and len(world.autoscaling.completed()) == 2
    world.autoscaling.refuse = {D: ConnectionResetError("reset")}
    etcd._tell_ready(node, [member(D)], [client(D)])
    assert said(capsys) == ["completing the launch hook custom-launch failed (reset); trying again"]
    world.autoscaling.refuse = {}
    etcd._tell_ready(node, [member(D)], [client(D)])
    assert node.ready_told is True


def test_on_a_stacked_layer_the_hook_waits_for_the_api_server(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = ready_node(world)
    world.args.readyz = "https://127.0.0.1:6443/readyz"
    ready = [False]
    probed: list[tuple[str, str]] = []

    def readyz(url: str, ca_file: str) -> Callable[[], bool]:
        probed.append((url, ca_file))
        return lambda: ready[0]

    monkeypatch.setattr(node_agent, "readyz", readyz)
    etcd._tell_ready(node, [member(D)], [client(D)])
    etcd._tell_ready(node, [member(D)], [client(D)])
    assert said(capsys) == [
        "etcd ready; waiting for this node's API server (https://127.0.0.1:6443/readyz)"
    ]
    assert probed == [(world.args.readyz, str(world.args.pki / "ca.crt"))] * 2
    assert world.autoscaling.calls == [] and node.ready_told is False
    ready[0] = True
    etcd._tell_ready(node, [member(D)], [client(D)])
    assert node.ready_told is True


# --- a restore seen by the watch ------------------------------------------------------------


def test_the_watch_restarts_its_member_for_a_restore_and_retries_a_failed_restart(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    assert etcd._restored_since(node) is False  # no record
    world.record(**FORMED, generation=2)
    (world.tmp / "var" / "etcd.generation").write_text("2\n")
    assert etcd._restored_since(node) is False  # its data is of that generation
    (world.tmp / "var" / "etcd.generation").write_text("1\n")
    failing = "sh -c 'echo " + "e" * 400 + " >&2; echo refused >&2; exit 1'"
    world.args.restart_command = failing
    assert etcd._restored_since(node) is True
    assert (world.tmp / "var" / "etcd.restore-owed").read_text() == "2\n"
    tail = ("e" * 400 + "\nrefused")[-300:]  # each line of it prefixed in the journal
    assert capsys.readouterr().out == (
        "kubeplat etcd: the cluster was restored (generation 2): restarting this member\n"
        f"kubeplat etcd: restarting failed: {'e' * 292}\nkubeplat etcd: refused\n"
    )
    assert len(tail) == 300
    assert node.restart_asked == (0, 1000.0)
    assert world.subprocess.runs == [
        (["sh", "-c", "echo " + "e" * 400 + " >&2; echo refused >&2; exit 1"],
         {"capture_output": True, "text": True, "timeout": 60, "check": False}),
    ]  # fmt: skip
    world.clock.now = 1059.9
    assert etcd._restored_since(node) is True and len(world.subprocess.runs) == 1
    world.clock.now = 1060.0
    world.args.restart_command = f"sh -c 'echo restarted >> {world.tmp / 'restarts'}'"
    assert etcd._restored_since(node) is True and len(world.subprocess.runs) == 2
    assert node.restart_asked == (2, -1e9)
    world.clock.now = 5000.0
    assert etcd._restored_since(node) is True and len(world.subprocess.runs) == 2  # asked
    capsys.readouterr()


def test_a_restart_that_does_not_answer_is_tried_again_a_minute_later(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = world.node()
    world.record(**FORMED, generation=2)
    (world.tmp / "var" / "etcd.generation").write_text("1\n")
    hung: list[list[str]] = []

    def run(command: list[str], **options: Any) -> Any:
        hung.append(command)
        raise subprocess.TimeoutExpired(command, options["timeout"])

    monkeypatch.setattr(world.subprocess, "run", run)
    assert etcd._restored_since(node) is True
    assert said(capsys)[-1] == "restarting failed: no answer in 60s; trying again in a minute"
    assert node.restart_asked == (0, 1000.0)
    world.clock.now = 1059.9
    assert etcd._restored_since(node) is True and len(hung) == 1
    world.clock.now = 1060.0
    assert etcd._restored_since(node) is True and len(hung) == 2


def test_every_line_of_a_message_is_prefixed(capsys: pytest.CaptureFixture[str]) -> None:
    etcd.say("removing x failed: Error: one\ntwo")
    etcd.say("")
    assert capsys.readouterr().out == (
        "kubeplat etcd: removing x failed: Error: one\nkubeplat etcd: two\nkubeplat etcd: \n"
    )


def test_an_unreadable_record_lets_the_round_go_on(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.s3.failing["dev/etcd/formation.json"] = TimeoutError("read timed out")
    assert etcd._restored_since(world.node()) is False
    assert said(capsys) == ["watch: the formation record cannot be read: TimeoutError"]


# --- snapshots --------------------------------------------------------------------------------


BACKUPS = "dev/etcd-backups/"


def backups(world: World, *hours_ago: float) -> list[str]:
    keys = []
    for hours in hours_ago:
        at = NOW - timedelta(hours=hours)
        keys.append(f"{BACKUPS}{at.strftime('%Y%m%dT%H%M%SZ')}-{A}.db")
        world.s3.put(keys[-1], b"old", modified=at)
    return keys


def test_the_leader_saves_a_snapshot_to_the_bucket_and_prunes_old_ones(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.args.keep = 3
    old = backups(world, 1, 2, 3, 24 * 8)
    world.etcdctl.answer("endpoint", "status", out=status(D, D))
    assert etcd.snapshot(world.args) == 0
    key = f"{BACKUPS}20261205T120000Z-{D}.db"
    assert world.s3.objects[key][0] == world.etcdctl.snapshot
    target = world.tmp / "var" / ".kubeplat-snapshot.db"
    assert world.etcdctl.commands() == [
        (client(D), ("endpoint", "status", "-w", "json")),
        (client(D), ("snapshot", "save", str(target))),
    ]
    assert world.subprocess.runs[-1][1]["timeout"] == 600 and not target.exists()
    assert said(capsys) == [
        f"snapshot: saved s3://{BUCKET}/{key} (14000 bytes)",
        f"snapshot: deleted {old[2]} (retention)",
        f"snapshot: deleted {old[3]} (retention)",
    ]
    assert world.s3.deleted == [old[2], old[3]] and world.s3.listed == [BACKUPS]


def test_snapshots_older_than_the_age_go_but_the_newest_stays(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.args.max_age_days = 1
    old = backups(world, 24, 24 + 1 / 3600, 24 * 30)  # a day old exactly stays
    node = world.node()
    etcd._retain(node, NOW)
    assert world.s3.deleted == [old[1], old[2]]
    assert said(capsys) == [f"snapshot: deleted {k} (retention)" for k in old[1:]]
    world.s3.deleted.clear()
    world.s3.objects.clear()
    ancient = backups(world, 24 * 30)
    etcd._retain(node, NOW)
    assert world.s3.deleted == [] and list(world.s3.objects) == ancient


def test_the_snapshots_listed_are_every_page_of_the_prefix(world: World) -> None:
    keys = backups(world, 1, 2, 3, 4, 5)
    world.s3.put("dev/etcd/formation.json", b"{}")
    found = etcd.list_snapshots(world.s3, BUCKET, BACKUPS)
    assert found == sorted((k, world.s3.objects[k][1]) for k in keys)
    assert etcd.list_snapshots(world.s3, BUCKET, "dev/nothing/") == []


def test_retention_keeps_the_newest_by_count_and_by_age() -> None:
    def snap(hours: float) -> tuple[str, datetime]:
        at = NOW - timedelta(hours=hours)
        return f"{BACKUPS}{at.strftime('%Y%m%dT%H%M%SZ')}.db", at

    snapshots = [snap(h) for h in (3, 1, 2)]
    assert etcd.expired(snapshots, 2, 7, NOW) == [snapshots[0][0]]
    assert etcd.expired(snapshots, 1, 7, NOW) == [snapshots[2][0], snapshots[0][0]]
    assert etcd.expired(snapshots, 3, 7, NOW) == []
    aged = [snap(0), snap(48), snap(48 + 1 / 3600)]
    assert etcd.expired(aged, 48, 2, NOW) == [aged[2][0]]
    # The name says when it was taken (a copy uploaded again later is no newer).
    copied = [(snap(1)[0], NOW), (snap(0)[0], NOW - timedelta(hours=5))]
    assert etcd.expired(copied, 1, 7, NOW) == [copied[0][0]]


def test_only_the_leader_takes_snapshots(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    for leader in (A, None):
        world.etcdctl.answer("endpoint", "status", out=status(D, leader))
        assert etcd.snapshot(world.args) == 0
        assert said(capsys) == ["snapshot: not the leader; the leader takes it"]
    assert [args[0] for _, args in world.etcdctl.commands()] == ["endpoint", "endpoint"]
    assert world.s3.puts == []


def test_a_snapshot_that_fails_says_why_and_deletes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    old = backups(world, 1, 2, 3)
    world.args.keep = 1
    reason = "w" * 400 + "\nError: context deadline exceeded\n"
    world.etcdctl.answer("endpoint", "status", rc=1, err=reason)
    assert etcd.snapshot(world.args) == 1
    tail = reason.strip()[-300:]
    first, last = tail.splitlines()
    assert capsys.readouterr().out == (
        f"kubeplat etcd: snapshot: etcd does not answer here: {first}\nkubeplat etcd: {last}\n"
    )
    world.etcdctl.answer("endpoint", "status", out=status(D, D))
    world.etcdctl.answer("snapshot", "save", rc=5, err=reason)
    target = world.tmp / "var" / ".kubeplat-snapshot.db"
    target.write_bytes(b"a part left by an earlier try")
    assert etcd.snapshot(world.args) == 1
    assert capsys.readouterr().out == (
        f"kubeplat etcd: snapshot: saving failed: {first}\nkubeplat etcd: {last}\n"
    )
    assert not target.exists() and world.s3.deleted == [] and sorted(world.s3.objects) == old[::-1]
    # The bucket refuses the upload: the error is raised, the local copy removed all the same.
    world.etcdctl.answer("snapshot", "save", rc=0)
    key = f"{BACKUPS}20261205T120000Z-{D}.db"
    world.s3.failing[key] = client_error("AccessDenied", 403, "PutObject")
    with pytest.raises(ClientError):
        etcd.snapshot(world.args)
    assert not target.exists() and world.s3.deleted == []


def test_a_snapshot_at_a_given_time_is_named_by_it(world: World) -> None:
    world.etcdctl.answer("endpoint", "status", out=status(D, D))
    at = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert etcd.snapshot(world.args, now=at) == 0
    assert f"{BACKUPS}20270102T030405Z-{D}.db" in world.s3.objects


def test_the_leader_serves_an_operators_backup_request_once(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    node = world.node()
    request, done = "dev/etcd/backup-request.json", "dev/etcd/backup-done.json"
    etcd._serve_backup(node)
    assert world.s3.gets == [request] and world.s3.puts == []
    world.s3.put(request, {"by": "alice"})  # no id: not a request
    etcd._serve_backup(node)
    assert world.s3.gets == [request] * 2 and world.s3.puts == []
    world.args.keep = 1
    old = backups(world, 1)
    world.s3.put(request, {"id": "r1", "by": "alice"})
    etcd._serve_backup(node)
    key = f"{BACKUPS}20261205T120000Z-{D}.db"
    assert world.s3.json(done) == {
        "id": "r1", "key": key, "message": f"saved s3://{BUCKET}/{key} (14000 bytes)",
        "by": D, "at": STAMP,
    }  # fmt: skip
    assert said(capsys) == [
        "backup: alice asked for a snapshot",
        f"snapshot: deleted {old[0]} (retention)",
    ]
    # Served: the next rounds leave it.
    puts = len(world.s3.puts)
    etcd._serve_backup(node)
    assert len(world.s3.puts) == puts and said(capsys) == []
    # A failed snapshot is answered too; nothing is pruned.
    world.etcdctl.answer("snapshot", "save", rc=1, err="Error: no space left on device")
    world.s3.put(request, {"id": "r2"})
    etcd._serve_backup(node)
    assert world.s3.json(done) == {
        "id": "r2", "key": "", "message": "saving failed: Error: no space left on device",
        "by": D, "at": STAMP,
    }  # fmt: skip
    assert said(capsys) == ["backup: an operator asked for a snapshot"]
    assert world.s3.deleted == [old[0]]


# --- the command line -----------------------------------------------------------------------

REQUIRED = ["--environment", "dev", "--bucket", BUCKET, "--prefix", PREFIX]


def dispatching(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, argparse.Namespace]]:
    """Each command recorded instead of run, answering a code of its own."""
    ran: list[tuple[str, argparse.Namespace]] = []
    for code, name in enumerate(("prepare", "recheck", "watch", "snapshot"), start=11):

        def command(args: argparse.Namespace, name: str = name, code: int = code) -> int:
            ran.append((name, args))
            return code

        monkeypatch.setattr(etcd, name, command)
    return ran


def test_each_command_runs_what_its_unit_runs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = dispatching(monkeypatch)
    assert etcd.main(REQUIRED) == 11
    for command, code in (("prepare", 11), ("recheck", 12), ("watch", 13), ("snapshot", 14)):
        assert etcd.main([command, *REQUIRED]) == code
    assert [name for name, _ in ran] == ["prepare", "prepare", "recheck", "watch", "snapshot"]
    assert vars(ran[0][1]) == {
        "command": "prepare", "environment": "dev", "bucket": BUCKET, "prefix": PREFIX,
        "pki": Path("/etc/kubernetes/pki"), "template": Path("/etc/etcd/etcd.conf.yml.tmpl"),
        "output": Path("/etc/etcd/etcd.conf.yml"), "data_dir": Path("/var/lib/etcd"),
        "etcdctl": "etcdctl", "etcdutl": "etcdutl", "lifecycle_hook": "kubeplat-etcd-joined",
        "leave_hook": "kubeplat-etcd-leave", "readyz": "",
        "restart_command": "systemctl restart --no-block kubeplat-etcd-member.service",
        "interval": 10.0, "keep": 48, "max_age_days": 7,
    }  # fmt: skip


def test_the_node_image_moves_the_tools_and_folders_by_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = dispatching(monkeypatch)
    monkeypatch.setenv("KUBEPLAT_PKI", "/srv/pki")
    monkeypatch.setenv("KUBEPLAT_ETCD_DATA", "/srv/etcd")
    monkeypatch.setenv("KUBEPLAT_ETCDCTL", "/opt/etcd/etcdctl")
    monkeypatch.setenv("KUBEPLAT_ETCDUTL", "/opt/etcd/etcdutl")
    etcd.main(["watch", *REQUIRED])
    args = ran[0][1]
    assert (args.pki, args.data_dir) == (Path("/srv/pki"), Path("/srv/etcd"))
    assert (args.etcdctl, args.etcdutl) == ("/opt/etcd/etcdctl", "/opt/etcd/etcdutl")


def test_every_option_is_read(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = dispatching(monkeypatch)
    etcd.main(
        ["snapshot", "--environment", "prod", "--bucket", "b", "--prefix", "p", "--pki", "/k",
         "--template", "/t", "--output", "/o", "--data-dir", "/d", "--etcdctl", "ctl",
         "--etcdutl", "utl", "--lifecycle-hook", "lh", "--leave-hook", "vh", "--readyz", "u",
         "--restart-command", "rc", "--interval", "2.5", "--keep", "5", "--max-age-days", "3"]
    )  # fmt: skip
    assert vars(ran[0][1]) == {
        "command": "snapshot", "environment": "prod", "bucket": "b", "prefix": "p",
        "pki": Path("/k"), "template": Path("/t"), "output": Path("/o"), "data_dir": Path("/d"),
        "etcdctl": "ctl", "etcdutl": "utl", "lifecycle_hook": "lh", "leave_hook": "vh",
        "readyz": "u", "restart_command": "rc", "interval": 2.5, "keep": 5, "max_age_days": 3,
    }  # fmt: skip


def test_the_help_names_the_program_and_what_its_options_do(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = dispatching(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        etcd.main(["--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert shown.startswith("usage: kubeplat-node etcd-member [-h] --environment ENVIRONMENT")
    assert "[{prepare,recheck,watch,snapshot}]" in shown
    assert (
        "--readyz READYZ watch: complete the launch hook only once this answers "
        "--restart-command RESTART_COMMAND how `watch` restarts this member after a restore "
        "--interval INTERVAL"
    ) in shown
    assert "kubeplat etcd membership: the secure layer's cluster is formed once" in shown
    for wrong in (
        REQUIRED[2:],
        [*REQUIRED[:2], *REQUIRED[4:]],
        REQUIRED[:4],
        ["start", *REQUIRED],
    ):
        with pytest.raises(SystemExit) as exited:
            etcd.main(wrong)
        assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err and ran == []


def command_line(world: World, command: str) -> list[str]:
    args = world.args
    return [
        command, *REQUIRED, "--pki", str(args.pki), "--template", str(args.template),
        "--output", str(args.output), "--data-dir", str(args.data_dir),
        "--etcdctl", args.etcdctl, "--etcdutl", args.etcdutl, "--interval", "7",
    ]  # fmt: skip


def test_prepare_on_the_only_instance_forms_a_cluster_of_one(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.ec2.lives = [{D: HOST[D]}]
    world.autoscaling.desired = 1
    prepare = etcd.prepare
    monkeypatch.setattr(etcd, "prepare", lambda args: prepare(args, sleep=world.clock.sleep))
    assert etcd.main(command_line(world, "prepare")) == 0
    assert said(capsys) == [
        f"proposing the cluster of {D}",
        f"formation record written: {D}={peer(D)}",
        f"forming the cluster recorded at {STAMP}",
        f"new cluster {D}={peer(D)}",
    ]
    assert world.clock.slept == [5.0] and world.etcdctl.calls() == []
    assert 'initial-cluster-state: "new"' in world.args.output.read_text()
    assert world.s3.json("dev/etcd/formation.json")["by"] == D
    # etcd.service's recheck then starts it as configured (it forms from the record).
    assert etcd.main(command_line(world, "recheck")) == 0
    assert said(capsys) == []


def test_recheck_before_prepare_fails_the_start(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert etcd.main(command_line(world, "recheck")) == 1
    assert said(capsys) == ["no configuration yet: kubeplat-etcd-member.service decides first"]


def test_the_snapshot_timer_on_the_leader(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.etcdctl.answer("endpoint", "status", out=status(D, D))
    assert etcd.main(command_line(world, "snapshot")) == 0
    key = f"{BACKUPS}20261205T120000Z-{D}.db"
    assert said(capsys) == [f"snapshot: saved s3://{BUCKET}/{key} (14000 bytes)"]


def test_the_watch_service_reports_each_interval(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(etcd, "threading", RecordingThreading())
    world.clock.allowed = 0
    world.etcdctl.answer("endpoint", "status", rc=1)
    with pytest.raises(Stop):
        etcd.main(command_line(world, "watch"))
    assert world.clock.slept == [7.0]
    assert world.report() == {"member": "", "answers": False, "updated": STAMP}
    assert said(capsys) == ["watch: etcd does not answer here (no output); reported so"]
