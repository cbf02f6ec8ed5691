"""`kubeplat health`'s judgements (issue 19): each item from the facts it is given."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from kubeplat import health

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def test_a_lock_is_named_with_its_holder_and_age_and_red_once_stale() -> None:
    assert health.lock(None, NOW) == health.Item("state lock", "ok", "free")
    fresh = {"ID": "abc", "Who": "bob@ci", "Operation": "OperationTypePlan",
             "Created": "2026-12-05 11:55:00.123456789 +0000 UTC"}  # fmt: skip
    item = health.lock(fresh, NOW)
    assert item.level == "warn"
    assert item.detail == "held by bob@ci (plan since 2026-12-05 11:55:00 UTC, 5m ago, lock ID abc)"
    stale = {**fresh, "Created": "2026-12-05 09:00:00.1 +0000 UTC"}
    item = health.lock(stale, NOW, "dev")
    assert item.level == "red" and "3h ago" in item.detail
    assert item.detail.endswith("; a run that died? release it: kubeplat unlock -e dev abc")


def test_drift_is_what_the_plan_would_set_back() -> None:
    asg = {"address": 'aws_autoscaling_group.node["compute"]', "type": "aws_autoscaling_group",
           "name": "node"}  # fmt: skip
    # A scale-out: refreshed differently, but the plan leaves it (ignore_changes): not drift.
    scaled = {**asg, "change": {"before": {"desired_capacity": 2, "max_size": 3},
                                "after": {"desired_capacity": 5, "max_size": 3}}}  # fmt: skip
    kept = {**asg, "change": {"actions": ["no-op"], "before": {"desired_capacity": 5},
                              "after": {"desired_capacity": 5}}}  # fmt: skip
    assert health.drift([scaled], [kept]).level == "ok"
    # AWS's computed attributes refreshed (tags_all, an ARN): the plan touches nothing.
    noise = {"address": "aws_iam_role.node", "change": {"before": {"tags_all": {}},
             "after": {"tags_all": {"Environment": "dev"}}}}  # fmt: skip
    assert health.drift([noise], []).level == "ok"
    # The environment file changed since the last apply: planned, but nothing drifted.
    edited = {**asg, "change": {"actions": ["update"], "before": {"max_size": 3},
                                "after": {"max_size": 4}}}  # fmt: skip
    assert health.drift([], [edited]).level == "ok"

    widened = {**asg, "change": {"before": {"desired_capacity": 2, "max_size": 3, "arn": "a"},
                                 "after": {"desired_capacity": 5, "max_size": 6, "arn": "b"}}}  # fmt: skip
    undone = {**asg, "change": {"actions": ["update"], "before": {"desired_capacity": 5,
              "max_size": 6, "arn": "b"}, "after": {"desired_capacity": 5, "max_size": 3}}}  # fmt: skip
    gone = {"address": "aws_lb.api", "change": {"before": {"name": "x"}, "after": None}}
    made = {"address": "aws_lb.api", "change": {"actions": ["create"], "before": None,
            "after": {"name": "x"}}}  # fmt: skip
    item = health.drift([widened, gone, noise], [undone, made])
    assert item.level == "red"
    assert item.detail == (
        'changed outside Terraform: aws_autoscaling_group.node["compute"] (max_size); '
        "aws_lb.api (deleted)"
    )


def test_an_environment_whose_state_holds_nothing_has_no_drift_to_show() -> None:
    """A bucket but no apply yet (an `up` stopped early, or a destroy): every resource would be
    created, none drifted; `health` says so instead of "none"."""
    # `terraform show -json` of a plan over an empty state has no prior_state at all.
    assert not health.built({"format_version": "1.2", "resource_changes": []})
    assert not health.built({"prior_state": {"values": {"root_module": {}}}})
    resource = {"address": "aws_vpc.main", "mode": "managed", "type": "aws_vpc"}
    assert health.built({"prior_state": {"values": {"root_module": {"resources": [resource]}}}})
    nested = {"root_module": {"child_modules": [{"child_modules": [{"resources": [resource]}]}]}}
    assert health.built({"prior_state": {"values": nested}})
    item = health.drift([], [], empty="dev")
    assert (item.level, item.detail) == (
        "warn",
        "not built: its state holds no resource (build it: kubeplat up -e dev)",
    )


def test_certificate_expiry_levels() -> None:
    assert health.expiry("c", NOW + dt.timedelta(days=3), NOW, 30, "served").level == "red"
    assert health.expiry("c", NOW + dt.timedelta(days=20), NOW, 30, "served").level == "warn"
    item = health.expiry("c", NOW + dt.timedelta(days=200), NOW, 30, "served by x")
    assert item.level == "ok" and item.detail == "served by x expires 2027-06-23 (200 days left)"


def test_groups_off_their_desired_capacity_are_red() -> None:
    def group(name: str, desired: int, states: list[str]) -> dict[str, object]:
        return {"AutoScalingGroupName": name, "DesiredCapacity": desired,
                "Instances": [{"LifecycleState": s} for s in states]}  # fmt: skip

    assert health.groups([group("a", 2, ["InService"] * 2)]).level == "ok"
    item = health.groups(
        [group("a", 2, ["InService"] * 2), group("b", 3, ["InService", "Pending"])]
    )
    assert item.level == "red" and item.detail == "in service / desired: b 1 of 3"
    assert health.groups([]).level == "warn"


def test_nodes_behind_or_silent_are_red_unreported_a_warning() -> None:
    def node(i: str, config: str) -> SimpleNamespace:
        return SimpleNamespace(instance_id=i, state="running", config=config)

    assert health.convergence([node("i-1", "current")]).level == "ok"
    item = health.convergence([node("i-1", "current"), node("i-2", "behind")])
    assert item.level == "red" and item.detail == "1 of 2 current; not: i-2 (behind)"
    assert health.convergence([node("i-1", "-"), node("i-2", "-")]).level == "warn"
    assert health.convergence([node("i-1", "current"), node("i-2", "silent")]).level == "red"


def test_etcd_items() -> None:
    status = SimpleNamespace(
        reports=3, rows=[1, 2, 3], quorum=True, stale=["i-gone"],
        latest_snapshot="e/etcd-backups/x.db", latest_snapshot_time="2026-12-05T09:00:00Z",
    )  # fmt: skip
    items = {i.name: i for i in health.etcd(status, NOW)}
    assert items["etcd"].level == "ok"
    assert items["etcd members"].detail == "stale (instance gone): i-gone"
    assert items["etcd snapshot"].level == "red" and "3h ago" in items["etcd snapshot"].detail
    assert health.etcd(None, NOW)[0].level == "warn"
    assert "etcd certificate" not in items  # no member said what it serves


def test_the_soonest_served_etcd_certificate_is_the_one_shown() -> None:
    from kubeplat.etcdstatus import MemberRow

    rows = [
        MemberRow("i-a", "running", certificate_expires="2027-06-01T00:00:00Z"),
        MemberRow("i-b", "running", certificate_expires="2026-12-08T12:00:00Z"),
        MemberRow("i-c", "running"),  # no report of it: left out, not "expired"
    ]
    status = SimpleNamespace(reports=3, rows=rows, quorum=True, stale=[], latest_snapshot="x",
                             latest_snapshot_time="2026-12-05T11:50:00Z")  # fmt: skip
    items = {i.name: i for i in health.etcd(status, NOW, renew_days=30)}
    assert items["etcd certificate"].level == "red"  # within 7 days
    assert items["etcd certificate"].detail.startswith("served by i-b's etcd expires 2026-12-08")
    rows[1].certificate_expires = "2026-12-25T00:00:00Z"
    items = {i.name: i for i in health.etcd(status, NOW, renew_days=30)}
    assert items["etcd certificate"].level == "warn"  # within cert_renew_days
