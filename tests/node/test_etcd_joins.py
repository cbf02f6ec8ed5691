"""etcd membership when things go wrong around a join: five formed at once, a member added
whose instance dies before its etcd starts, `member list` failing for a while, the leader
killed in the middle of a join, a member removed between a join and its start, a new instance
on a gone member's address (etcd_group.py runs them: real etcd, the real program, the
emulator's Auto Scaling).

Each asserts one cluster ID throughout, every key written before still readable after, as many
members as running instances once settled, never two learners at once, and nobody stuck.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.node.etcd_group import (  # noqa: F401  (fixtures)
    SETTLE,
    Group,
    emulator_fixture,
    formed,
    group_fixture,
    until,
)
from tests.node.mirror import _etcd_binaries

pytestmark = pytest.mark.node_boot


def assert_settled_with_the_data(group: Group, cluster: int) -> None:
    members = group.settled()
    assert sorted(m["name"] for m in members) == sorted(group.members)
    assert group.get("/kubeplat/before") == "kept"
    assert group.clusters_seen == {cluster}
    assert group.most_learners <= 1


@pytest.mark.parametrize("group", [5], indirect=True)
def test_five_form_one_cluster_exactly_once(group: Group) -> None:
    cluster = formed(group)
    record = group.record()
    assert record is not None and sorted(record["members"]) == sorted(group.members)
    assert len(group.members) == 5
    writers = [m for m in group.members.values() if "formation record written" in m.journal()]
    assert len(writers) == 1, group.explain()
    assert_settled_with_the_data(group, cluster)


def test_a_new_instance_goes_in_service_only_once_it_has_joined(group: Group) -> None:
    """The launch hook (terraform/nodes.tf) holds each new instance until its watch completes
    it: after its member was promoted and every member is healthy. That is what makes an
    instance refresh replace the next instance only then. (The relay that answers
    CompleteLifecycleAction is a stand-in: the emulator has no lifecycle actions.)"""
    cluster = formed(group)
    assert group.stand_in is not None
    stand_in, first = group.stand_in, set(group.members)
    until(lambda: stand_in.who() >= first, SETTLE, "the first members' hooks", group)
    old = next(iter(group.members.values()))
    (new,) = group.replace(old)
    # The stand-in records the completion as the request arrives; the watch says "ready" once
    # the answer is back: wait for both (CI once read the journal in between).
    until(
        lambda: new.instance_id in stand_in.who() and "ready: a voting member" in new.journal(),
        SETTLE,
        "the new one's hook",
        group,
    )
    journal = new.journal()
    assert journal.index("promoted to a voting member") < journal.index("ready: a voting member")
    assert_settled_with_the_data(group, cluster)
    for call in stand_in.completed:
        assert call["LifecycleHookName"] == "kubeplat-etcd-joined"
        assert call["AutoScalingGroupName"] == group.asg
        assert call["LifecycleActionResult"] == "CONTINUE"
    # Each instance once: the first three when formed, then the one that joined.
    assert sorted(c["InstanceId"] for c in stand_in.completed) == sorted(first | {new.instance_id})


def test_a_leaving_member_is_removed_before_its_instance_goes(group: Group) -> None:
    """An instance leaving the group (a refresh, a scale-in, kubeplat roll) is held by the
    terminate hook (terraform/nodes.tf) until the etcd leader has removed its member: the
    members left are all alive, and only then may the instance go. The leader itself leaving
    removes its own member. (Terminating:Wait is the stand-in relay's: the emulator holds no
    instance in a lifecycle wait.)"""
    cluster = formed(group)
    assert group.stand_in is not None
    stand_in = group.stand_in
    for which in ("a follower", "the leader"):
        leader = group.leader()
        leaving = (
            leader
            if which == "the leader"
            else next(m for m in group.members.values() if m is not leader)
        )
        stayed = [m for m in group.members.values() if m is not leaving]
        stand_in.leaving.add(leaving.instance_id)

        def released(leaving: Any = leaving) -> bool:
            return any(
                c["InstanceId"] == leaving.instance_id
                and c["LifecycleHookName"] == "kubeplat-etcd-leave"
                for c in stand_in.completed
            )

        until(released, SETTLE, f"the leave hook of {which}", group)
        # Before the instance goes: its member is not in the cluster any more, the others are
        # (asked of one that stays), and the cluster answers.
        listed = stayed[0].etcdctl("member", "list", "-w", "json")
        assert listed.returncode == 0, listed.stderr
        names = {m.get("name", "") for m in json.loads(listed.stdout)["members"]}
        assert names == {m.instance_id for m in stayed}, group.explain()
        assert "its instance is leaving" in "".join(m.journal() for m in group.members.values())
        group.replace(leaving)
        assert_settled_with_the_data(group, cluster)


def test_a_member_added_that_never_starts_is_removed_by_the_next_joiner(group: Group) -> None:
    cluster = formed(group)
    old = next(iter(group.members.values()))
    group.next_boots.append({"hold": True})  # its instance dies right after `member add`
    (dead,) = group.replace(old)
    until(lambda: "existing cluster" in dead.journal(), SETTLE, "the dying one's add", group)
    assert dead.etcd is None
    # The group replaces the dead instance; its joiner finds a learner that never started.
    (joiner,) = group.replace(dead)
    assert_settled_with_the_data(group, cluster)
    # Removed by the joiner, or by the leader's watch if it saw the instance gone first: either
    # way the learner that never started did not block the join.
    by_joiner = "removing 1" in joiner.journal()
    by_watch = any(  # a member that never started has no name: the watch names it by id
        re.search(r"removed member [0-9a-f]+: its instance is gone", member.journal())
        for member in group.members.values()
        if member is not joiner
    )
    assert by_joiner or by_watch, group.explain()
    assert dead.instance_id not in {m["name"] for m in group.settled()}
    assert group.stand_in is not None and dead.instance_id not in group.stand_in.who()


def test_member_list_failing_during_a_join_is_waited_out(group: Group, tmp_path: Path) -> None:
    cluster = formed(group)
    # An etcdctl whose first three `member list` fail, as on a timeout or a dropped connection.
    flaky = tmp_path / "etcdctl"
    flaky.write_text(
        "#!/bin/sh\n"
        f'count=$(cat "{tmp_path}/failed" 2>/dev/null || echo 0)\n'
        'case " $* " in *" member list "*)\n'
        '  if [ "$count" -lt 3 ]; then\n'
        f'    echo $((count + 1)) > "{tmp_path}/failed"\n'
        '    echo "Error: context deadline exceeded" >&2; exit 1\n'
        "  fi;;\n"
        "esac\n"
        f'exec {_etcd_binaries() / "etcdctl"} "$@"\n'
    )
    flaky.chmod(flaky.stat().st_mode | stat.S_IXUSR)
    group.next_boots.append({"etcdctl_bin": str(flaky)})
    old = next(iter(group.members.values()))
    (new,) = group.replace(old)
    assert_settled_with_the_data(group, cluster)
    assert (tmp_path / "failed").read_text().strip() == "3"  # it did fail, three times
    assert "joining as a learner" in new.journal(), group.explain()
    assert "promoted to a voting member" in new.journal(), group.explain()


def test_the_leader_killed_during_a_join(group: Group) -> None:
    cluster = formed(group)
    (joiner,) = group.scale(4)
    until(lambda: "joining as a learner" in joiner.journal(), SETTLE, "the join", group)
    leader = group.leader()
    (replacement,) = group.replace(leader)
    assert_settled_with_the_data(group, cluster)
    assert len(group.members) == 4
    assert "promoted to a voting member" in joiner.journal(), group.explain()
    assert "promoted to a voting member" in replacement.journal(), group.explain()


def test_a_member_removed_between_a_join_and_its_start(group: Group) -> None:
    """The joiner's `prepare` added it and wrote the four members it saw; before its etcd
    started, another instance left the group and the leader removed that member. etcd refuses a
    list that is not the cluster's ("member count is unequal") and systemd would start it with
    that list forever: etcd.service's ExecStartPre (`recheck`) writes the list as it is now.
    (CI once saw this with the leader killed during a join; here it happens every time.)"""
    cluster = formed(group)
    group.next_boots.append({"paused": True})  # its etcd waits until the test lets it start
    (joiner,) = group.scale(4)
    until(lambda: "existing cluster" in joiner.journal(), SETTLE, "the join's add", group)
    assert joiner.etcd is None
    leader = group.leader()
    leaving = next(m for m in group.members.values() if m not in (leader, joiner))
    group.aws["autoscaling"].terminate_instance_in_auto_scaling_group(
        InstanceId=leaving.instance_id, ShouldDecrementDesiredCapacity=True
    )
    group.sync()

    def removed() -> bool:
        listed = leader.etcdctl("member", "list", "-w", "json")
        if listed.returncode != 0:
            return False
        names = {m.get("name", "") for m in json.loads(listed.stdout)["members"]}
        return leaving.instance_id not in names

    until(removed, SETTLE, "the leaving member's removal", group)
    joiner.paused = False
    assert_settled_with_the_data(group, cluster)
    assert len(group.members) == 3
    journal = joiner.journal()
    assert "the members changed since this member was added" in journal, group.explain()
    assert "promoted to a voting member" in journal, group.explain()


def test_a_reused_private_address_is_another_member(group: Group) -> None:
    cluster = formed(group)
    old = next(iter(group.members.values()))
    address = old.host.spec.private_ip
    group.aws["autoscaling"].terminate_instance_in_auto_scaling_group(
        InstanceId=old.instance_id, ShouldDecrementDesiredCapacity=True
    )
    group.sync()
    # A new instance on the gone member's address (and so its DNS name). AWS frees a
    # terminated instance's address at once; the emulator never does, so the new instance is
    # launched into a twin subnet (same CIDR, another VPC), which our program cannot tell apart.
    ec2 = group.aws["ec2"]
    (subnet,) = ec2.describe_subnets(SubnetIds=[group.subnet])["Subnets"]
    twin = ec2.create_subnet(
        VpcId=ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"],
        CidrBlock=subnet["CidrBlock"],
        AvailabilityZone=subnet["AvailabilityZone"],
    )["Subnet"]["SubnetId"]
    ec2.run_instances(
        ImageId="ami-0deb1200000000a64",
        InstanceType="t3.small",
        MinCount=1,
        MaxCount=1,
        SubnetId=twin,
        PrivateIpAddress=address,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "Environment", "Value": group.name},
                    {"Key": "Layer", "Value": "secure"},
                ],
            }
        ],
    )
    (new,) = group.sync()
    assert new.host.spec.private_ip == address and new.instance_id != old.instance_id
    assert new.host.spec.hostname == old.host.spec.hostname
    assert_settled_with_the_data(group, cluster)
    # The gone member went (by its instance id: removed by the newcomer, or by the leader's
    # watch if it saw the instance gone first), and the newcomer joined under its own.
    by_joiner = "removing 1" in new.journal()
    by_watch = any(
        f"removed member {old.instance_id}: its instance is gone" in member.journal()
        for member in group.members.values()
        if member is not new
    )
    assert by_joiner or by_watch, group.explain()
    assert old.instance_id not in {m["name"] for m in group.settled()}
    assert "promoted to a voting member" in new.journal(), group.explain()
