"""How the secure layer rolls, as the Terraform module declares it for AWS (the sandbox's
emulator has neither instance refresh nor lifecycle waits, so these parts are read from the
module here; the node's side, completing the hook only after joining, runs for real in
tests/node/test_etcd_joins.py)."""

from __future__ import annotations

from typing import Any

import hcl2

from kubeplat.node.etcd import LIFECYCLE_HOOK
from kubeplat.pipeline import roll_order
from tests.conftest import REPO


def _load(name: str) -> dict[str, Any]:
    with (REPO / "terraform" / name).open() as handle:
        return dict(hcl2.load(handle))


def _unquote(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


def _group_blocks() -> dict[str, dict[str, Any]]:
    for resource in _load("nodes.tf")["resource"]:
        if '"aws_autoscaling_group"' in resource:
            group = resource['"aws_autoscaling_group"']['"node"']
            return {_unquote(k): v for block in group["dynamic"] for k, v in block.items()}
    raise AssertionError("no aws_autoscaling_group.node in terraform/nodes.tf")


def test_a_new_secure_instance_waits_for_its_etcd_member_to_join() -> None:
    hook = _group_blocks()["initial_lifecycle_hook"]
    # On AWS, for the secure group only.
    assert hook["for_each"] == '${each.key == "secure" && !var.sandbox ? [1] : []}'
    (content,) = hook["content"]
    assert _unquote(content["name"]) == LIFECYCLE_HOOK  # the name the node completes
    assert _unquote(content["lifecycle_transition"]) == "autoscaling:EC2_INSTANCE_LAUNCHING"
    # One that never joins is not put in service: it is terminated (and replaced).
    assert _unquote(content["default_result"]) == "ABANDON"
    assert 600 <= content["heartbeat_timeout"] <= 7200


def test_the_secure_layer_is_refreshed_one_instance_at_a_time() -> None:
    (refresh,) = _group_blocks()["instance_refresh"]["content"]
    assert _unquote(refresh["strategy"]) == "Rolling"
    assert refresh["preferences"][0]["min_healthy_percentage"] == "${each.value.min_healthy}"
    (layers,) = [block["secure_layers"] for block in _load("secure.tf")["locals"]]
    # AWS: a minimum healthy percentage of 100 limits a refresh to one instance at a time.
    assert layers["secure"]["min_healthy"] == 100


def test_plan_says_how_the_secure_layer_rolls_and_in_which_order() -> None:
    running = [("secure", "i-0c"), ("secure", "i-0a"), ("secure", "i-0b"), ("compute", "i-1a")]
    said = roll_order(["compute", "secure"], running, sandbox=False, stacked=True)
    secure, compute, together = said
    assert secure.startswith("secure (etcd and the control plane): 3 instances (i-0a, i-0b, i-0c)")
    assert "one at a time" in secure and "only once its etcd member has joined" in secure
    assert compute == (
        "compute: 1 instance (i-1a) replaced with at least 90% of them in service throughout, "
        "each leaving node drained first and each new one in service once its node is Ready"
    )
    assert together.startswith("the groups roll in this order: each later group's refresh starts")
    (half,) = roll_order(["compute"], running, sandbox=False, stacked=True, compute_min_healthy=50)
    assert "at least 50% of them in service" in half
    (surge,) = roll_order(["compute"], running, sandbox=False, stacked=True,
                          compute_min_healthy=100, compute_max_healthy=110)  # fmt: skip
    assert "at least 100% of them in service and at most 110% running throughout (new ones " \
        "launched first)" in surge  # fmt: skip
    # The sandbox has no instance refresh: it says so instead of promising one.
    (sandboxed,) = roll_order(["secure"], running, sandbox=True, stacked=False)
    assert "the sandbox has no instance refresh" in sandboxed
    assert roll_order([], running, sandbox=False, stacked=True) == []
