"""Upgrades and scaling in the sandbox (issue 19), with the real Terraform and AWS provider.

- A group's desired capacity is the operator's once set: a scale-out survives `plan` and `up`,
  and a raised minimum still moves it up (AWS's rule, which the emulator follows).
- The rehearsal: `plan` and `upgrade-check` state an upgrade's skew, checks and roll; a red
  item (a downgrade of the control plane's minor version) stops `up` and `apply` before
  anything is uploaded or applied; `--force` goes ahead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeplat import artifacts
from kubeplat.node import roller
from tests.integration.sandbox_user import clients, kubeplat, make_user, stop_sandbox

pytestmark = pytest.mark.integration

VERSIONS = sorted(artifacts.KUBERNETES, key=lambda v: tuple(int(p) for p in v.split(".")))


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = make_user(tmp_path_factory.mktemp("upgrade"))
    yield env
    stop_sandbox(env)


def set_vars(user: dict[str, str], **values: object) -> None:
    path = Path(user["CHECKOUT"], "environments", "example.tfvars")
    text = path.read_text()
    for name, value in values.items():
        shown = f'"{value}"' if isinstance(value, str) else str(value)
        text, count = re.subn(rf"(?m)^{name}\s*=.*$", f"{name} = {shown}", text)
        if not count:
            text += f"{name} = {shown}\n"
    path.write_text(text)


def desired(user: dict[str, str]) -> int:
    asg = clients(user, "autoscaling")["autoscaling"]
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["example-kube-compute"])[  # type: ignore[attr-defined]
        "AutoScalingGroups"
    ]
    return int(group["DesiredCapacity"])


def test_a_scale_out_survives_up_and_a_raised_minimum_moves_it(user: dict[str, str]) -> None:
    first = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert first.returncode == 0, first.stderr[-3000:]
    assert desired(user) == 2
    # The operator (or a cluster autoscaler) scales the compute layer out.
    asg = clients(user, "autoscaling")["autoscaling"]
    asg.set_desired_capacity(AutoScalingGroupName="example-kube-compute", DesiredCapacity=3)  # type: ignore[attr-defined]

    plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode", "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]  # nothing to change: not "set it back to 2"
    again = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert again.returncode == 0, again.stderr[-3000:]
    assert desired(user) == 3

    # A minimum above the group's size moves it up (AWS raises the desired capacity with it).
    set_vars(user, compute_asg_min=4, compute_asg_max=5)
    raised = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert raised.returncode == 0, raised.stderr[-3000:]
    assert desired(user) == 4
    set_vars(user, compute_asg_min=2, compute_asg_max=3)
    lowered = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert lowered.returncode == 0, lowered.stderr[-3000:]
    assert desired(user) == 3  # AWS's rule too: a lowered maximum caps it


def test_nothing_to_roll_is_nothing_to_rehearse(user: dict[str, str]) -> None:
    plan = kubeplat(user, "plan", "-e", "example", "-o", "json", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout[-6000:] + plan.stderr[-3000:]
    check = kubeplat(user, "upgrade-check", "-e", "example")
    assert check.returncode == 0, check.stderr[-3000:]
    assert "nothing rolls and no version moves: nothing to rehearse" in check.stderr
    assert "control plane stays at 1.33.5" in check.stderr  # the example file's version


def secrets(user: dict[str, str]) -> set[tuple[str, str]]:
    """Every version of every object in the secrets bucket, and its delete markers."""
    s3 = clients(user, "s3")["s3"]
    pages = s3.get_paginator("list_object_versions").paginate(Bucket="kubeplat-example-secrets")  # type: ignore[attr-defined]
    return {
        (v["Key"], v["VersionId"])
        for page in pages
        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
    }


def template_versions(user: dict[str, str]) -> dict[str, int]:
    ec2 = clients(user, "ec2")["ec2"]
    found = ec2.describe_launch_templates()["LaunchTemplates"]  # type: ignore[attr-defined]
    return {t["LaunchTemplateName"]: t["LatestVersionNumber"] for t in found}


def test_an_upgrade_is_rehearsed_and_a_red_item_stops_up_until_forced(
    user: dict[str, str], tmp_path: Path
) -> None:
    older, newer = VERSIONS[-2], VERSIONS[-1]
    assert (older, newer) == ("1.33.5", "1.34.2")  # one minor apart: the upgrade Kubernetes allows
    # One minor version up: green (in the sandbox etcd's reports are a warning: nothing runs).
    set_vars(user, kubernetes_version=newer)
    plan = kubeplat(user, "plan", "-e", "example", "-o", "json", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stderr[-3000:]
    found = json.loads(plan.stdout)["rehearsal"]
    assert found["upgrade"] is True and found["red"] == 0
    checks = {c["check"]: c for c in found["checks"]}
    assert checks["version skew"]["level"] == "ok"
    assert checks["version skew"]["detail"] == f"control plane {older} → {newer}: one step"
    assert checks["kubelet skew"]["level"] == "ok"
    assert checks["etcd health"]["level"] == "warn"
    assert "the sandbox's instances run nothing" in checks["etcd health"]["detail"]
    assert [s["layer"] for s in found["roll"]] == ["secure", "compute"]
    assert [len(b) for b in found["roll"][0]["batches"]] == [1, 1, 1]
    assert found["estimate_seconds"] > 0
    shown = kubeplat(user, "upgrade-check", "-e", "example")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "[ok] version skew: control plane 1.33.5 → 1.34.2: one step" in shown.stderr
    assert (
        "[warn] running versions: not read: the sandbox runs no API server; the skew is judged "
        "from the versions the bucket gives nodes"
    ) in shown.stderr
    assert "  secure: 3 batch(es): " in shown.stderr
    up = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-3000:]
    assert "upgrade check (kubeplat upgrade-check):" in up.stderr

    # Back down a minor version: red. `upgrade-check` says so and exits 1; `up` and `apply`
    # refuse with nothing uploaded or applied.
    set_vars(user, kubernetes_version=older)
    check = kubeplat(user, "upgrade-check", "-e", "example")
    assert check.returncode == 1
    assert "[RED] version skew: control plane 1.34.2 → 1.33.5 is a downgrade" in check.stderr
    assert (
        "[RED] kubelet skew: kubelets run 1.34.2, newer than the API server 1.33.5" in check.stderr
    )
    assert "Error: upgrade check: 2 red item(s): version skew; kubelet skew" in check.stderr
    before, templates = secrets(user), template_versions(user)
    refused = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert refused.returncode == 1
    error = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert error == [
        "Error: upgrade check: version skew: control plane 1.34.2 → 1.33.5 is a downgrade of a "
        "minor version, which Kubernetes does not support (etcd holds objects the newer API "
        "server wrote); set kubernetes_version back to 1.34.x (and 1 more); nothing was uploaded "
        "or applied"
    ]
    assert "Hint: fix it and run again, or roll anyway: kubeplat up -e example --force" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr
    saved = tmp_path / "down.tfplan"
    planned = kubeplat(user, "plan", "-e", "example", "--out", str(saved))
    assert planned.returncode == 0, planned.stderr[-3000:]
    applied = kubeplat(user, "apply", "-e", "example", str(saved), "--auto-approve")
    assert applied.returncode == 1
    assert "Error: upgrade check: version skew:" in applied.stderr
    after = secrets(user)
    assert (sorted(after - before), sorted(before - after)) == ([], [])
    assert template_versions(user) == templates

    forced = kubeplat(user, "up", "-e", "example", "--auto-approve", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert secrets(user) - before  # uploaded now
    assert kubeplat(user, "upgrade-check", "-e", "example").returncode == 0


def test_every_group_has_the_drain_and_ready_hooks_and_the_roll_settings(
    user: dict[str, str],
) -> None:
    """What the roll controller relies on, as the emulator's Auto Scaling API holds it (it
    keeps lifecycle hooks and tags; it holds no instance in a lifecycle wait, so what the
    controller does with them is tested in tests/unit/test_node_roller.py)."""
    asg = clients(user, "autoscaling")["autoscaling"]

    def hooks(group: str) -> dict[str, tuple[str, str, int]]:
        found = asg.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]  # type: ignore[attr-defined]
        return {
            h["LifecycleHookName"]: (
                h["LifecycleTransition"], h["DefaultResult"], h["HeartbeatTimeout"]
            )
            for h in found
        }  # fmt: skip

    assert hooks("example-kube-compute") == {
        "kubeplat-drain": ("autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE", 900),
        "kubeplat-node-ready": ("autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON", 1800),
    }
    assert hooks("example-kube-secure") == {
        "kubeplat-drain": ("autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE", 900),
        "kubeplat-etcd-leave": ("autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE", 600),
    }
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["example-kube-compute"])[  # type: ignore[attr-defined]
        "AutoScalingGroups"
    ]
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in group["Tags"]}
    assert tags["kubeplat:min-healthy"] == ("90", False)
    assert tags["kubeplat:max-healthy"] == ("100", False)
    assert tags["kubeplat:drain-timeout"] == ("600", False)
    assert tags["kubeplat:instance-warmup"] == ("60", False)  # the example's grace period

    # A shorter drain, a smaller share kept in service and a surge change the hook and tags,
    # and roll no node.
    set_vars(
        user, node_drain_timeout=120, compute_roll_min_healthy=50, compute_roll_max_healthy=120
    )
    before = template_versions(user)
    changed = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert template_versions(user) == before
    assert hooks("example-kube-compute")["kubeplat-drain"][2] == 420
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["example-kube-compute"])[  # type: ignore[attr-defined]
        "AutoScalingGroups"
    ]
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert (tags["kubeplat:min-healthy"], tags["kubeplat:max-healthy"]) == ("50", "120")
    assert tags["kubeplat:drain-timeout"] == "120"


def test_roll_asks_the_controller_through_the_groups(user: dict[str, str]) -> None:
    s3 = clients(user, "s3")["s3"]
    groups = {"secure": "example-kube-secure", "compute": "example-kube-compute"}

    def asked() -> dict[str, str]:
        """What the roll controller sees, read as it reads it (a listing of ENV/rolls/)."""
        found = roller.roll_requests(s3, "kubeplat-example-secrets", "example")
        return {groups[layer]: when.isoformat() for layer, when in found.items()}

    one = kubeplat(user, "roll", "-e", "example", "--layer", "compute")
    assert one.returncode == 0, one.stderr[-3000:]
    assert list(asked()) == ["example-kube-compute"]
    assert re.search(r"roll asked of example-kube-compute at \d{4}-\d\d-\d\dT", one.stderr)
    assert "the sandbox runs no roll controller" in one.stderr  # and says nothing happens here
    # The request is no change of Terraform's: the next plan changes nothing (a tag on the
    # group would be taken away by the next apply) and health finds no drift.
    plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    assert "roll-requested" not in plan.stdout + plan.stderr
    well = kubeplat(user, "health", "-e", "example", "-o", "json")
    (report,) = json.loads(well.stdout)
    (drift,) = [item for item in report["checks"] if item["check"] == "drift"]
    assert drift["level"] == "ok", drift
    first = asked()["example-kube-compute"]
    every = kubeplat(user, "roll", "-e", "example")
    assert every.returncode == 0, every.stderr[-3000:]
    assert set(asked()) == {"example-kube-secure", "example-kube-compute"}
    assert asked()["example-kube-compute"] >= first  # asked again: a newer request
    assert every.stderr.index("example-kube-secure") < every.stderr.index("example-kube-compute")

    wrong = kubeplat(user, "roll", "-e", "example", "--layer", "workers")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "Error: --layer workers: environment example has no such layer" in wrong.stderr
    assert "Hint: its layers: secure, compute" in wrong.stderr


def test_the_secure_layer_scales_in_without_a_stale_wait(user: dict[str, str]) -> None:
    """A lowered secure maximum makes AWS scale the layer in. Terraform, which no longer owns
    the desired capacity, would wait (45 minutes) for the count it read before and fail; kubeplat
    waits itself for what the group wants now, so `up` ends at once."""
    set_vars(user, secure_asg_min=1, secure_asg_max=1)
    smaller = kubeplat(user, "up", "-e", "example", "--auto-approve", timeout=600)
    assert smaller.returncode == 0, smaller.stderr[-3000:]
    asg = clients(user, "autoscaling")["autoscaling"]
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["example-kube-secure"])[  # type: ignore[attr-defined]
        "AutoScalingGroups"
    ]
    assert (group["DesiredCapacity"], len(group["Instances"])) == (1, 1)
