"""The etcd membership program's details a node operator would notice: Auto Scaling answers
that leave a list out, each journal line reaching the journal as it is said, the bounded wait
for a member's TLS answer, the snapshot a member without a leader does not take, the error of a
restore whose download cannot be made.

The stand-ins (World: recording S3, EC2, Auto Scaling, etcdctl and etcdutl scripts, the clock)
are tests/unit/test_node_etcd_unit.py's."""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubeplat.node import etcd
from tests.unit import test_node_etcd_unit as base
from tests.unit.test_node_etcd_unit import (
    CLUSTER,
    GROUP,
    A,
    D,
    World,
    _certificates,
    client,
    member,
    restoring,
    said,
)

# test_node_etcd_unit.py's fixtures, by name.
world = base.world

# -- Auto Scaling answers without a list ----------------------------------------------------------


class Terse:
    """Auto Scaling answering with the lists left out (as an answer with nothing in them may)."""

    def __init__(self, groups: list[dict[str, Any]] | None = None) -> None:
        self.groups = groups
        self.calls: list[str] = []

    def describe_auto_scaling_instances(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("describe_auto_scaling_instances")
        return {}

    def describe_auto_scaling_groups(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("describe_auto_scaling_groups")
        return {} if self.groups is None else {"AutoScalingGroups": self.groups}

    def describe_lifecycle_hooks(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("describe_lifecycle_hooks")
        return {}

    def complete_lifecycle_action(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("complete_lifecycle_action")
        return {}


def test_an_instance_no_group_lists_is_in_no_group_and_counts_alone() -> None:
    assert etcd.group_of(Terse(), "i-0d") == ""
    assert etcd.desired(Terse(), "i-0d") == 1


@pytest.mark.parametrize("groups", [None, [{"AutoScalingGroupName": GROUP}]])
def test_a_group_answer_without_groups_or_instances_lets_nobody_go(
    world: World, groups: list[dict[str, Any]] | None
) -> None:
    node = world.node()
    node.group = GROUP
    terse = Terse(groups)
    node.autoscaling = terse
    etcd._release_leaving(node, [member(A), member(D)], [client(D)])
    assert terse.calls == ["describe_auto_scaling_groups"]
    assert world.etcdctl.calls() == [] and node.released == set()


# -- the journal ----------------------------------------------------------------------------------


class Journal:
    """stdout as systemd's journal reads it: a pipe; what is not flushed has not arrived."""

    def __init__(self) -> None:
        self.buffered = ""
        self.arrived: list[str] = []

    def write(self, text: str) -> int:
        self.buffered += text
        return len(text)

    def flush(self) -> None:
        self.arrived.append(self.buffered)
        self.buffered = ""


def test_each_line_reaches_the_journal_as_it_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal()
    monkeypatch.setattr(sys, "stdout", journal)
    etcd.say("waiting for quorum\nError: context deadline exceeded")
    assert journal.arrived == [
        "kubeplat etcd: waiting for quorum\n",
        "kubeplat etcd: Error: context deadline exceeded\n",
    ]
    assert journal.buffered == ""


# -- the served certificate -----------------------------------------------------------------------


def test_the_served_certificate_is_waited_for_five_seconds_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An etcd that accepts connections but never answers (stopped, swapping) holds the watch's
    round five seconds at most: the connection's timeout, which the TLS handshake keeps."""
    pki = tmp_path / "pki"
    _certificates(pki, datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC))
    asked: list[tuple[Any, Any]] = []

    def connect(address: Any, timeout: Any = "none given", *rest: Any, **more: Any) -> Any:
        asked.append((address, timeout))
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    assert etcd.served_expiry("127.0.0.1", 2379, pki) == ""
    assert asked == [(("127.0.0.1", 2379), 5)]


# -- snapshots ------------------------------------------------------------------------------------


def test_a_member_that_sees_no_leader_takes_no_snapshot(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """etcdctl leaves `leader` out when there is none (an election): whatever this member's id,
    it is not the leader."""
    state = {"header": {"cluster_id": CLUSTER, "member_id": 1, "raft_term": 3}, "dbSize": 1}
    world.etcdctl.answer(
        "endpoint", "status", out=json.dumps([{"Endpoint": client(D), "Status": state}])
    )
    assert etcd.snapshot(world.args) == 0
    assert said(capsys) == ["snapshot: not the leader; the leader takes it"]
    assert world.s3.puts == []


# -- restore --------------------------------------------------------------------------------------


def test_a_download_that_cannot_be_made_fails_with_its_own_error(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download file refused (a read-only or full disk): that error is the one the journal
    shows (`PermissionError: ...`), not one of the clean-up of a file never made."""
    decision, record, _ = restoring(world, size=1024)
    download = world.tmp / "var" / ".etcd.restore.db"
    real_open = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path) == download:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)  # the module etcd opens with
    with pytest.raises(PermissionError, match="Permission denied"):
        world.node().restore(decision, record)
    assert not download.exists()
    assert world.s3.gets == []
