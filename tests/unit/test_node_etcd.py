"""The etcd membership program's decisions (kubeplat/node/etcd.py `decide`), one per situation
an autoscaling group creates. Pure: what each round saw goes in, what to do comes out. The
node-level tier (tests/node/test_etcd_members.py) runs the same program against real etcd."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubeplat.node import etcd
from kubeplat.node.etcd import Member, Seen, _restored_since, decide

A, B, C, D = "i-0a", "i-0b", "i-0c", "i-0d"
HOST = {A: "ip-10-0-0-1.ec2.internal", B: "ip-10-0-0-2.ec2.internal"}
HOST.update({C: "ip-10-0-0-3.ec2.internal", D: "ip-10-0-0-4.ec2.internal"})


def url(iid: str) -> str:
    return f"https://{HOST[iid]}:2380"


def member(iid: str, number: int, name: str | None = None, learner: bool = False) -> Member:
    return Member(format(number, "x"), iid if name is None else name, [url(iid)], learner)


def seen(me: str, live: list[str], members: list[Member] | None = None, **more: object) -> Seen:
    return Seen(me, HOST[me], {i: HOST[i] for i in live}, 3, members, **more)  # type: ignore[arg-type]


RECORD = {"token": "kubeplat-0123", "members": {A: url(A), B: url(B), C: url(C)}, "formed": "T"}


def test_formation_waits_for_the_whole_group_then_the_first_ids_propose() -> None:
    assert decide(seen(A, [A, B])).action == "wait"
    proposal = decide(seen(B, [A, B, C]))
    assert proposal.action == "propose" and proposal.state == "new"
    assert proposal.cluster == {A: url(A), B: url(B), C: url(C)}
    assert proposal.token.startswith("kubeplat-")
    # With a fourth instance already running, only the group's first three form.
    assert decide(seen(D, [A, B, C, D])).action == "wait"


def test_the_record_fixes_members_and_token() -> None:
    started = decide(seen(C, [A, B, C], record=RECORD))
    assert (started.action, started.state, started.token) == ("start", "new", "kubeplat-0123")
    assert started.cluster == RECORD["members"]


def test_never_a_second_cluster_over_a_record() -> None:
    # The whole group was replaced: nobody answers, and none of these formed the cluster.
    waiting = decide(seen(D, [D], record=RECORD))
    assert waiting.action == "wait"
    assert "never forming a second cluster" in waiting.message
    assert "when quorum is lost" in waiting.message


def test_one_replaced_joins_as_a_learner_after_the_gone_member_is_removed() -> None:
    members = [member(A, 1), member(B, 2), member(C, 3)]
    joined = decide(seen(D, [A, B, D], members, quorum=True, record=RECORD))
    assert (joined.action, joined.state) == ("join", "existing")
    assert [m.name for m in joined.remove] == [C]
    assert joined.cluster == {A: url(A), B: url(B), D: url(D)}


def test_no_quorum_means_wait_and_never_form() -> None:
    # Two of three replaced at once: the survivor answers, but cannot reach a quorum.
    members = [member(A, 1), member(B, 2), member(C, 3)]
    waiting = decide(seen(D, [A, D], members, quorum=False, record=RECORD))
    assert waiting.action == "wait" and "lost quorum" in waiting.message
    assert waiting.remove == []


def test_joins_go_one_at_a_time() -> None:
    members = [member(A, 1), member(B, 2), member(C, 3, learner=True)]
    waiting = decide(seen(D, [A, B, C, D], members, quorum=True))
    assert waiting.action == "wait" and f"{C} is joining" in waiting.message


def test_a_learner_whose_instance_died_is_removed_by_the_next_joiner() -> None:
    # C was added (as a learner, never started: no name) and its instance died during boot.
    members = [member(A, 1), member(B, 2), member(C, 3, name="", learner=True)]
    joined = decide(seen(D, [A, B, D], members, quorum=True))
    assert joined.action == "join" and [m.id for m in joined.remove] == ["3"]


def test_an_instance_already_added_starts_as_that_member() -> None:
    # Added before it last stopped (no name until it starts): it must not be added twice.
    members = [member(A, 1), member(B, 2), member(C, 3, name="", learner=True)]
    started = decide(seen(C, [A, B, C], members, quorum=True))
    assert (started.action, started.state) == ("start", "existing")
    assert started.cluster == {A: url(A), B: url(B), C: url(C)}
    # A member added but not started goes into initial-cluster under its id (no name yet).
    members = [member(A, 1), member(B, 2, name=""), member(C, 3)]
    assert decide(seen(C, [A, B, C], members, quorum=True)).cluster == {
        A: url(A),
        "2": url(B),
        C: url(C),
    }


def test_a_reused_private_address_is_another_member() -> None:
    # D got the address C had: the member named C (D's peer URL) is gone and is removed.
    HOST[D] = HOST[C]
    try:
        members = [member(A, 1), member(B, 2), member(C, 3)]
        joined = decide(seen(D, [A, B, D], members, quorum=True))
        assert joined.action == "join" and [m.name for m in joined.remove] == [C]
        assert joined.cluster[D] == url(C)
    finally:
        HOST[D] = "ip-10-0-0-4.ec2.internal"


def test_members_that_answer_but_list_nothing_have_lost_quorum() -> None:
    # etcd 3.5 lists members only with quorum: a lone survivor answers a status, nothing more.
    waiting = decide(seen(D, [A, D], None, record=RECORD, reachable=1))
    assert waiting.action == "wait" and "lost quorum" in waiting.message
    assert "never forming a second cluster" in waiting.message


def test_snapshot_retention_keeps_the_newest_always() -> None:
    from datetime import datetime, timedelta

    from kubeplat.node.etcd import expired

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def snap(hours_ago: float) -> tuple[str, datetime]:
        at = now - timedelta(hours=hours_ago)
        return f"dev/etcd-backups/{at.strftime('%Y%m%dT%H%M%SZ')}-i-0a.db", at

    snapshots = [snap(h) for h in (0.5, 1, 1.5, 2)]
    assert expired(snapshots, keep=2, max_age_days=7, now=now) == [snapshots[2][0], snapshots[3][0]]
    old = [snap(24 * 10), snap(24 * 9), snap(24 * 1)]
    assert expired(old, keep=48, max_age_days=7, now=now) == [old[1][0], old[0][0]]
    # Even when every snapshot is too old, the newest stays.
    ancient = [snap(24 * 30), snap(24 * 31)]
    assert expired(ancient, keep=48, max_age_days=7, now=now) == [ancient[1][0]]


RESTORED = {
    "token": "kubeplat-4567",
    "members": {A: url(A), B: url(B), D: url(D)},
    "formed": "T2",
    "generation": 1,
    "restore": {
        "from": "dev/etcd-backups/20261202T120000Z-i-0a.db",
        "snapshot": "dev/etcd/restore/1.db",
    },
}


def test_a_restore_names_the_members_that_restore_the_snapshot() -> None:
    # Named in a record of a newer generation than its data: restore, whatever answers.
    restoring = decide(seen(D, [A, B, D], record=RESTORED))
    assert (restoring.action, restoring.state, restoring.token) == (
        "restore",
        "new",
        "kubeplat-4567",
    )
    assert restoring.cluster == RESTORED["members"]
    assert "20261202T120000Z-i-0a.db" in restoring.message
    members = [member(A, 1), member(B, 2), member(D, 4)]
    assert decide(seen(D, [A, B, D], members, quorum=True, record=RESTORED)).action == "restore"
    # Once restored (its data is of generation 1), it is a member like any other.
    again = decide(seen(D, [A, B, D], members, quorum=True, record=RESTORED, generation=1))
    assert (again.action, again.state) == ("start", "existing")


def test_after_a_restore_an_instance_it_does_not_name_joins() -> None:
    members = [member(A, 1), member(B, 2), member(D, 4)]
    joined = decide(seen(C, [A, B, C, D], members, quorum=True, record=RESTORED))
    assert (joined.action, joined.state, joined.token) == ("join", "existing", "kubeplat-4567")
    # …and while the restored cluster is not up yet, it waits: never a cluster of its own.
    waiting = decide(seen(C, [A, B, C, D], record=RESTORED))
    assert waiting.action == "wait" and "never forming a second cluster" in waiting.message


def test_the_watch_asks_for_one_restart_per_restore(tmp_path: Path) -> None:
    """After a restore, the watch restarts its member once: a second restart in the middle of
    a long restore (a large snapshot downloading) would start it over and over."""
    asked = tmp_path / "asked"
    (tmp_path / "data.generation").write_text("1\n")
    record = {"generation": 2}
    node = SimpleNamespace(
        formation=SimpleNamespace(read=lambda: record),
        args=SimpleNamespace(
            data_dir=tmp_path / "data", restart_command=f"sh -c 'echo . >> {asked}'"
        ),
        restart_asked=(0, -1e9),
    )
    for _ in range(5):
        assert _restored_since(node) is True  # type: ignore[arg-type]
    assert asked.read_text() == ".\n"
    assert (tmp_path / "data.restore-owed").read_text() == "2\n"  # prepare must not give up
    record["generation"] = 3  # restored once more
    assert _restored_since(node) is True  # type: ignore[arg-type]
    assert asked.read_text() == ".\n.\n"
    (tmp_path / "data.generation").write_text("3\n")  # prepare restored it
    assert _restored_since(node) is False  # type: ignore[arg-type]
    # A restart that fails is tried again, but not before a minute has passed.
    node.args.restart_command = "false"
    record["generation"] = 4
    assert _restored_since(node) is True  # type: ignore[arg-type]
    failed_at = node.restart_asked[1]
    assert _restored_since(node) is True and node.restart_asked[1] == failed_at  # type: ignore[arg-type]


def test_a_member_restarted_for_a_restore_keeps_trying_to_read_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `kubeplat etcd restore`, the watch restarts its member once. If `prepare` then
    cannot read the formation record (the bucket or the metadata service slow for a moment),
    it must not come back as the old member: nothing would restart it for that restore again."""
    from kubeplat.node import etcd as node_etcd

    data = tmp_path / "data"
    (data / "member" / "wal").mkdir(parents=True)  # etcd has run here: it wrote its log
    (data / "member" / "wal" / "0000000000000000-0000000000000000.wal").write_bytes(b"")
    (tmp_path / "etcd.conf.yml").write_text("name: old\n")
    (tmp_path / "data.generation").write_text("1\n")
    failures = {"left": 3}
    reads: list[int] = []

    class FlakyNode:
        def __init__(self, args: object) -> None:
            self.formation = SimpleNamespace(read=self.read)

        def read(self) -> dict[str, int]:
            reads.append(1)
            if failures["left"]:
                failures["left"] -= 1
                raise TimeoutError("the bucket does not answer")
            return {"generation": 1}

    monkeypatch.setattr(node_etcd, "Node", FlakyNode)
    args = SimpleNamespace(data_dir=data, output=tmp_path / "etcd.conf.yml")
    slept: list[float] = []
    # A plain restart (no restore owed): one try, then etcd comes back as it was.
    assert node_etcd.prepare(args, sleep=slept.append) == 0  # type: ignore[arg-type]
    assert len(reads) == 1 and slept == []
    # Restarted by the watch for generation 2: it keeps trying until the record is read.
    (tmp_path / "data.restore-owed").write_text("2\n")
    reads.clear()
    assert node_etcd.prepare(args, sleep=slept.append) == 0  # type: ignore[arg-type]
    assert len(reads) == 3 and len(slept) == 2


def test_on_a_stacked_layer_the_launch_hook_waits_for_the_api_server(tmp_path: Path) -> None:
    """A new secure member of a stacked layer goes in service (its launch hook completed) only
    once the API server beside it answers /readyz: a roll then never takes the next member
    while this one's API server is not serving. A loopback stand-in answers /readyz (no API
    server runs here); etcd and Auto Scaling are recorded stand-ins."""
    import http.server
    import ssl

    from kubeplat import config, pki
    from tests.tls_standin import running

    env = config.load(str(Path(__file__).resolve().parents[2] / "environments" / "example.tfvars"))
    for name, data in pki.ensure(env, {}).files.items():
        if name in ("ca.crt", "apiserver.crt", "apiserver.key"):
            (tmp_path / name).write_bytes(data)

    ready = [False]

    class Readyz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if ready[0] and self.path == "/readyz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    completed: list[dict[str, str]] = []
    autoscaling = SimpleNamespace(
        describe_auto_scaling_instances=lambda **_: {
            "AutoScalingInstances": [{"AutoScalingGroupName": "dev-kube-secure"}]
        },
        describe_lifecycle_hooks=lambda **_: {"LifecycleHooks": [{"LifecycleHookName": "h"}]},
        complete_lifecycle_action=lambda **kw: completed.append(kw),
    )
    member = etcd.Member("1", "i-new", ["https://10.0.0.5:2380"], False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # /readyz is anonymous: no client cert
    context.load_cert_chain(tmp_path / "apiserver.crt", tmp_path / "apiserver.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with running(server):
        url = f"https://127.0.0.1:{server.server_address[1]}/readyz"
        node = SimpleNamespace(
            me="i-new", autoscaling=autoscaling, ready_told=False, last_problem="",
            etcdctl=lambda *a: SimpleNamespace(returncode=0),
            args=SimpleNamespace(readyz=url, pki=tmp_path, lifecycle_hook="h"),
        )  # fmt: skip
        etcd._tell_ready(node, [member], ["https://10.0.0.5:2379"])  # type: ignore[arg-type]
        assert completed == [] and not node.ready_told
        assert node.last_problem.startswith("etcd ready; waiting for this node's API server")
        ready[0] = True
        etcd._tell_ready(node, [member], ["https://10.0.0.5:2379"])  # type: ignore[arg-type]
    assert [c["InstanceId"] for c in completed] == ["i-new"] and node.ready_told


class LeavingGroup:
    """A RECORDING Auto Scaling stand-in (the emulator holds no instance in Terminating:Wait
    and has no CompleteLifecycleAction): instances' lifecycle states as the test sets them."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.completed: list[str] = []

    def describe_auto_scaling_instances(self, **_: object) -> dict[str, object]:
        return {"AutoScalingInstances": [{"AutoScalingGroupName": "dev-kube-secure"}]}

    def describe_auto_scaling_groups(self, **_: object) -> dict[str, object]:
        instances = [{"InstanceId": i, "LifecycleState": s} for i, s in self.states.items()]
        return {"AutoScalingGroups": [{"Instances": instances}]}

    def complete_lifecycle_action(self, **kwargs: str) -> None:
        assert kwargs["LifecycleHookName"] == "kubeplat-etcd-leave"
        assert kwargs["LifecycleActionResult"] == "CONTINUE"
        self.states[kwargs["InstanceId"]] = "Terminating:Proceed"
        self.completed.append(kwargs["InstanceId"])


def leaving_node(states: dict[str, str], refuse: bool = False) -> SimpleNamespace:
    calls: list[tuple[str, ...]] = []

    def etcdctl(_endpoints: list[str], *args: str) -> SimpleNamespace:
        calls.append(args)
        return SimpleNamespace(returncode=1 if refuse else 0)

    return SimpleNamespace(
        me="i-a", autoscaling=LeavingGroup(states), etcdctl=etcdctl, calls=calls, group="",
        released=set(), args=SimpleNamespace(leave_hook="kubeplat-etcd-leave"),
    )  # fmt: skip


def test_a_leaving_member_is_removed_before_its_instance_goes() -> None:
    """The leader removes the member of an instance in Terminating:Wait, then completes the
    terminate hook: one old and one new member (a single-member layer being replaced) leave a
    working cluster of one, not two members of which one is gone (no quorum)."""
    old, new = (
        Member("a1", "i-a", ["https://10.0.0.5:2380"]),
        Member("b2", "i-b", ["https://10.0.0.6:2380"]),
    )
    node = leaving_node({"i-a": "InService", "i-b": "InService"})
    etcd._release_leaving(node, [old, new], [])  # type: ignore[arg-type]
    assert node.calls == [] and node.autoscaling.completed == []  # nobody leaves

    node.autoscaling.states["i-b"] = "Terminating:Wait"
    etcd._release_leaving(node, [old, new], [])  # type: ignore[arg-type]
    assert node.calls == [("member", "remove", "b2")]
    assert node.autoscaling.completed == ["i-b"]
    etcd._release_leaving(node, [old], [])  # type: ignore[arg-type]
    assert node.calls == [("member", "remove", "b2")]  # once


def test_the_last_member_is_never_removed_and_a_refused_removal_holds_the_instance() -> None:
    only = Member("a1", "i-a", ["https://10.0.0.5:2380"])
    node = leaving_node({"i-a": "Terminating:Wait"})
    etcd._release_leaving(node, [only], [])  # type: ignore[arg-type]
    assert node.calls == [] and node.autoscaling.completed == ["i-a"]  # it goes, etcd kept

    two = [only, Member("b2", "i-b", ["https://10.0.0.6:2380"])]
    refused = leaving_node({"i-a": "InService", "i-b": "Terminating:Wait"}, refuse=True)
    etcd._release_leaving(refused, two, [])  # type: ignore[arg-type]
    assert refused.calls == [("member", "remove", "b2")]
    assert refused.autoscaling.completed == []  # held: the next round tries again


def test_a_stalled_watch_round_says_what_it_waits_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A round of the watch that stalls (the bucket slow to answer) holds back what only the
    leader does; its journal says so, naming the call it waits on, while it waits."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubeplat.node import aws

    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(20)
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(aws, "_session", None)
    s3 = aws.client("s3", "us-east-1")
    call = threading.Thread(target=lambda: s3.get_object(Bucket="b", Key="k"), daemon=True)
    round_started = [time.monotonic()]
    try:
        call.start()
        threading.Thread(
            target=etcd._watchdog, args=(round_started, 0.3, 0.05), daemon=True
        ).start()
        deadline = time.monotonic() + 10
        said = ""
        while "waiting on" not in said and time.monotonic() < deadline:
            time.sleep(0.05)
            said += capsys.readouterr().out
        assert "kubeplat etcd: watch: this round has run" in said
        assert "waiting on AWS s3 GetObject for" in said
    finally:
        release.set()
        call.join(10)
        server.shutdown()
    assert aws.Activity.what == ""  # the call returned: it waits on nothing now
    round_started[0] = 0.0  # between rounds: nothing to say
    capsys.readouterr()
    time.sleep(0.4)
    assert "this round" not in capsys.readouterr().out


def test_etcdctl_says_what_it_runs_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeplat.node import aws

    seen: list[str] = []
    fake = tmp_path / "etcdctl"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    runner = etcd.Etcdctl(tmp_path, str(fake))
    original = aws.Activity.enter

    def enter(what: str) -> None:
        seen.append(what)
        original(what)

    monkeypatch.setattr(aws.Activity, "enter", enter)
    runner(["https://h:2379"], "member", "remove", "8e9e05c52164694d")
    assert seen == ["etcdctl member remove 8e9e05c52164694d"]
    assert aws.Activity.what == ""


def test_the_watch_says_when_its_etcd_stops_answering_and_who_leads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The watch's journal says, once per change, that the local etcd stopped answering (with
    etcdctl's reason) or answers again and which member leads: a member whose reports say
    `answers: false`, or whose leader moved, is then explained by its journal. etcdctl and the
    bucket are recorded stand-ins (one round's logic; the node tier runs real etcd)."""
    import json

    answer = {"rc": 1, "leader": 0xA}
    published: list[dict[str, object]] = []

    class Etcdctl:
        def __call__(self, _endpoints: list[str], *args: str) -> SimpleNamespace:
            assert args == ("endpoint", "status", "-w", "json")
            status = {"header": {"member_id": 0xB, "cluster_id": 0xC}, "leader": answer["leader"]}
            if answer["rc"]:
                stderr = "warn\nError: context deadline exceeded\n"
                return SimpleNamespace(returncode=1, stdout="", stderr=stderr)
            return SimpleNamespace(returncode=0, stdout=json.dumps([{"Status": status}]))

        def quorum(self, _endpoints: list[str]) -> bool:
            return True

        def members(self, _endpoints: list[str]) -> list[Member]:
            return [Member("b", "i-b", ["https://10.0.0.2:2380"])]

    node = SimpleNamespace(
        host="127.0.0.1", etcdctl=Etcdctl(), status_said="", ready_told=True, reported=("", 0.0),
        me="i-b", environment="dev",  # the leader's round goes on only while its instance runs:
        ec2=SimpleNamespace(get_paginator=lambda _: SimpleNamespace(paginate=lambda **_: [])),
        formation=SimpleNamespace(read=lambda: None),
        reporter=SimpleNamespace(publish=lambda _what, report: published.append(report) or True),
        args=SimpleNamespace(data_dir=tmp_path / "data", pki=tmp_path / "pki"),
    )  # fmt: skip

    def rounds(n: int) -> list[str]:
        for _ in range(n):
            etcd._watch_round(node)  # type: ignore[arg-type]
        return capsys.readouterr().out.splitlines()

    assert rounds(3) == [
        "kubeplat etcd: watch: etcd does not answer here (Error: context deadline exceeded);"
        " reported so"
    ]
    assert published[-1]["answers"] is False
    answer["rc"] = 0
    assert rounds(3) == ["kubeplat etcd: watch: etcd answers here; the leader is a"]
    assert published[-1]["answers"] is True and published[-1]["leader"] == "a"
    answer["leader"] = 0xB
    assert rounds(2) == ["kubeplat etcd: watch: etcd answers here; the leader is this member"]
    answer["rc"] = 1
    assert len(rounds(2)) == 1


def test_a_member_as_etcdctl_lists_it_in_json() -> None:
    """etcdctl's JSON gives ids as decimal numbers; `member remove` and `member promote` take
    them in hexadecimal, as its table shows them (10276657743932975437 is 8e9e05c52164694d,
    the id of etcd's default single member). A member added but not started has no name.
    tests/integration/test_etcd_rendered.py compares the two against real etcd."""
    listed = {"ID": 10276657743932975437, "name": "i-0a", "peerURLs": [url(A)], "isLearner": True}
    assert Member.parse(listed) == Member("8e9e05c52164694d", "i-0a", [url(A)], True)
    assert Member.parse({"ID": 255, "peerURLs": [url(B)]}) == Member("ff", "", [url(B)], False)


TEMPLATE = (
    'name: "@NAME@"\ninitial-cluster: "@INITIAL_CLUSTER@"\n'
    'initial-cluster-state: "@STATE@"\ninitial-cluster-token: "@TOKEN@"\n'
)


def _member_files(tmp_path: Path) -> SimpleNamespace:
    (tmp_path / "data" / "member" / "snap").mkdir(parents=True)  # what a failed etcd leaves
    (tmp_path / "etcd.conf.yml.tmpl").write_text(TEMPLATE)
    return SimpleNamespace(
        data_dir=tmp_path / "data",
        template=tmp_path / "etcd.conf.yml.tmpl",
        output=tmp_path / "etcd.conf.yml",
        environment="dev",
    )


class _Looking:
    """A Node whose look sees `what` (a Seen, or a callable making one)."""

    def __init__(self, what: object) -> None:
        self.what, self.me, self.host, self.acted = what, D, HOST[D], []

    def look(self) -> Seen:
        return self.what() if callable(self.what) else self.what  # type: ignore[return-value]

    def act(self, decision: etcd.Decision, seen: Seen) -> bool:
        self.acted.append(decision.action)
        return decision.action in ("start", "join")


def test_a_member_whose_etcd_never_ran_starts_with_the_members_as_they_are_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """prepare added this member and wrote the four members it saw; one of them was removed
    (its instance gone) before etcd started. etcd refuses a list that is not the cluster's
    ("member count is unequal"), and systemd would start it with that list forever: before each
    start of a member that never ran, etcd.service's `recheck` writes the list as it is now."""
    args = _member_files(tmp_path)
    added = {A: url(A), B: url(B), C: url(C), D: url(D)}
    etcd.write_config(args, D, HOST[D], etcd.Decision("join", "", "existing", added, token="t"))
    unstarted = Member("d", "", [url(D)], learner=True)
    now = seen(D, [A, B, D], [member(A, 1), member(B, 2), unstarted], quorum=True)
    monkeypatch.setattr(etcd, "Node", lambda args: _Looking(now))
    assert etcd.recheck(args, sleep=lambda s: None) == 0  # type: ignore[arg-type]
    config = args.output.read_text()
    assert f'initial-cluster: "{A}={url(A)},{B}={url(B)},{D}={url(D)}"' in config
    assert 'initial-cluster-state: "existing"' in config
    said = capsys.readouterr().out
    assert "the members changed since this member was added" in said, said
    # The same list: said nothing of a change.
    assert etcd.recheck(args, sleep=lambda s: None) == 0  # type: ignore[arg-type]
    assert "changed" not in capsys.readouterr().out
    # prepare too (a reboot before etcd ever ran) decides again instead of reusing the list.
    old = etcd.Decision("join", "", "existing", {C: url(C), D: url(D)})
    etcd.write_config(args, D, HOST[D], old)
    assert etcd.prepare(args, sleep=lambda s: None) == 0  # type: ignore[arg-type]
    assert f"{B}={url(B)}" in args.output.read_text()


def test_a_member_that_has_run_or_forms_the_cluster_starts_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _member_files(tmp_path)

    def no_look(args: object) -> None:
        raise AssertionError("looked at the cluster")

    monkeypatch.setattr(etcd, "Node", no_look)
    # Forming: the formation record fixed the members for good.
    etcd.write_config(args, D, HOST[D], etcd.Decision("start", "", "new", {D: url(D)}))
    assert etcd.recheck(args) == 0  # type: ignore[arg-type]
    # Has run: etcd's log exists; it restarts as the member it was.
    etcd.write_config(args, D, HOST[D], etcd.Decision("start", "", "existing", {D: url(D)}))
    (args.data_dir / "member" / "wal").mkdir()
    (args.data_dir / "member" / "wal" / "0000000000000000-0000000000000000.wal").write_bytes(b"")
    assert etcd.started(args.data_dir)
    assert etcd.recheck(args) == 0  # type: ignore[arg-type]
    before = args.output.read_text()
    assert etcd.recheck(args) == 0 and args.output.read_text() == before  # type: ignore[arg-type]


def test_a_recheck_that_must_wait_fails_the_start_for_systemd_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _member_files(tmp_path)
    # No configuration yet: the member unit decides first.
    assert etcd.recheck(args) == 1  # type: ignore[arg-type]
    assert "kubeplat-etcd-member.service decides first" in capsys.readouterr().out
    added = etcd.Decision("join", "", "existing", {A: url(A), D: url(D)})
    etcd.write_config(args, D, HOST[D], added)
    before = args.output.read_text()
    lost = seen(D, [A, B, D], [member(A, 1), member(B, 2)], quorum=False)
    looking = _Looking(lost)
    monkeypatch.setattr(etcd, "Node", lambda args: looking)
    slept: list[float] = []
    assert etcd.recheck(args, sleep=slept.append, budget_s=12) == 1  # type: ignore[arg-type]
    said = capsys.readouterr().out
    assert "etcd has lost quorum" in said and "etcd cannot start yet" in said, said
    assert slept == [5.0]  # 5 s, then 7.5 s would pass the 12 s
    assert args.output.read_text() == before  # nothing written
