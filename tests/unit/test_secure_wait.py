"""`up` waits for the secure layer itself after the apply (pipeline.wait_for_secure), reading
what the group wants at each look: Terraform, which no longer owns the desired capacity, would
wait for the count it read before a lowered maximum scaled the group in, and fail.

Auto Scaling is a RECORDING stand-in here: the emulator puts every instance in service at once,
so it cannot show a group that is still forming."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kubeplat import pipeline
from kubeplat.errors import KubeplatError


class Groups:
    def __init__(self, looks: list[tuple[int, int]]) -> None:
        self.looks = looks  # (desired, in service) at each look; the last one repeats
        self.asked: list[list[str]] = []

    def describe_auto_scaling_groups(self, AutoScalingGroupNames: list[str]) -> dict[str, Any]:
        self.asked.append(AutoScalingGroupNames)
        desired, serving = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        states = ["InService"] * serving + ["Pending:Wait"] * 2
        return {"AutoScalingGroups": [{"DesiredCapacity": desired,
                                       "Instances": [{"LifecycleState": s} for s in states]}]}  # fmt: skip


def prepared(groups: Groups) -> Any:
    aws = SimpleNamespace(client=lambda _name: groups, sandbox=False, endpoint=None)
    return SimpleNamespace(aws=aws, env=SimpleNamespace(environment="dev", platform="kube"))


def summary(action: str, address: str = pipeline.SECURE_GROUP) -> pipeline.PlanSummary:
    return pipeline.PlanSummary(change=1, resources=[(action, address)])


def test_it_waits_until_the_group_has_what_it_wants_now(capsys: pytest.CaptureFixture[str]) -> None:
    groups = Groups([(3, 0), (3, 2), (2, 2)])  # forming, then a lowered maximum: 2 is enough
    pipeline.wait_for_secure(prepared(groups), summary("create"), "kubeplat up -e dev", poll_s=0)
    assert groups.asked == [["dev-kube-secure"]] * 3
    err = capsys.readouterr().err
    assert "secure layer: 0 of 3 instances in service (etcd members joining)" in err
    assert "secure layer: 2 of 3 instances in service" in err


def test_nothing_is_waited_for_when_the_apply_left_the_group_alone() -> None:
    groups = Groups([(3, 0)])
    pipeline.wait_for_secure(prepared(groups), summary("update", 'aws_autoscaling_group.node["compute"]'),
                             "kubeplat up -e dev", poll_s=0)  # fmt: skip
    pipeline.wait_for_secure(prepared(groups), summary("noop"), "kubeplat up -e dev", poll_s=0)
    assert groups.asked == []


def test_a_group_that_never_forms_is_a_clear_error_after_the_timeout() -> None:
    groups = Groups([(3, 1)])
    with pytest.raises(KubeplatError) as raised:
        pipeline.wait_for_secure(prepared(groups), summary("update"), "kubeplat up -e dev",
                                 timeout_s=0, poll_s=0)  # fmt: skip
    assert raised.value.message == (
        "the secure layer has 1 of 3 instances in service after 0 minutes; everything was "
        "applied and nothing was removed"
    )
    assert raised.value.hint.endswith("then run: kubeplat up -e dev")
