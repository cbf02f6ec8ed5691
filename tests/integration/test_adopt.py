"""Issue 17: after an interrupted run, the next `up` converges without manual cleanup. The real
Terraform and AWS provider against the sandbox: the example environment is built once, then
what a run stopped hard leaves is made — resources in AWS that the state does not hold
(`terraform state rm`, which is exactly what a lost state write leaves), and one made by hand
with the environment's names and tags — and `up` adopts each (the same AWS id back in the
state, nothing created twice) and converges. One carrying another environment's tags stops
the run before anything is applied, with the command that removes it; that command works. A
group left with the allow-all egress rule AWS gives every new group is adopted with that rule.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sandbox_user import clients, kubeplat, story

pytestmark = pytest.mark.integration

TAGS = [
    {"Key": "Environment", "Value": "example"},
    {"Key": "Platform", "Value": "kube"},
    {"Key": "ManagedBy", "Value": "kubeplat"},
]


def terraform(user: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A Terraform command on the example environment's own working copy and remote state,
    run the way kubeplat runs it."""
    code = (
        "import sys\n"
        "from kubeplat import pipeline\n"
        "tf = pipeline.terraform_for(pipeline.deployed('example', None, False))\n"
        "result = tf.run(*sys.argv[1:], check=False, on_line=lambda _line: None)\n"
        "print(result.output)\n"
        "sys.exit(result.returncode)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=user["CHECKOUT"], env=user, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip


def state(user: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The environment's state: each managed resource's address and attributes."""
    pulled = terraform(user, "state", "pull")
    assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]
    document = json.loads(pulled.stdout[pulled.stdout.find("{") : pulled.stdout.rfind("}") + 1])
    found = {}
    for resource in document["resources"]:
        if resource["mode"] != "managed":
            continue
        for instance in resource["instances"]:
            key = instance.get("index_key")
            suffix = "" if key is None else f"[{json.dumps(key)}]"
            found[f"{resource['type']}.{resource['name']}{suffix}"] = instance["attributes"]
    return found


def forget(user: dict[str, str], *addresses: str) -> None:
    """What a run stopped before its state write leaves: in AWS, not in the state."""
    removed = terraform(user, "state", "rm", *addresses)
    assert removed.returncode == 0, removed.stdout[-2000:] + removed.stderr[-2000:]


def shows(user: dict[str, str]) -> set[str]:
    """The logs of the `terraform show` runs this environment's working copy keeps."""
    return {
        p.name for p in Path(user["CHECKOUT"], ".kubeplat", "example", "logs").glob("*-show.log")
    }


@pytest.fixture(scope="module")
def built(user: dict[str, str]) -> Iterator[dict[str, str]]:
    """The example environment, built once for the module."""
    up = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-3000:]
    yield user


# What an interrupted build leaves, one of each kind that AWS refuses a second of: a name (launch
# template, role, instance profile, target group), a port (listener), a rule, a CIDR (subnet),
# a subnet's one route table, a URL (the OpenID Connect provider).
LEFT = [
    'aws_launch_template.node["compute"]',
    "aws_iam_openid_connect_provider.pods[0]",
    'aws_iam_role.node["secure"]',
    'aws_iam_instance_profile.node["secure"]',
    "aws_lb_target_group.etcd",
    "aws_lb_listener.etcd",
    'aws_vpc_security_group_ingress_rule.ssh_compute["127.0.0.1/32"]',
    "aws_subnet.private[1]",
    "aws_route_table_association.private[1]",
]


def adopted(stderr: str, address: str) -> bool:
    return f"as {address}: in AWS with this environment's name and tags" in stderr


def test_an_interrupted_runs_leftovers_are_adopted_with_their_aws_ids(
    built: dict[str, str],
) -> None:
    """Leftovers exactly as the module made them: the plan only imports them."""
    before = state(built)
    forget(built, *LEFT)
    up = kubeplat(built, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-4000:]
    assert all(adopted(up.stderr, address) for address in LEFT), up.stderr[-4000:]
    # The summary names each adoption with its AWS id; the apply imports them.
    assert f"to adopt ({len(LEFT)}," in up.stderr, up.stderr[-4000:]
    assert f"  {LEFT[0]}  ({before[LEFT[0]]['id']})" in up.stderr, up.stderr[-4000:]
    after = state(built)
    for address in LEFT:  # the same AWS object, not a new one
        assert after.get(address, {}).get("id") == before[address]["id"], address
    plan = kubeplat(built, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr[-3000:]


def test_a_hand_made_orphan_and_a_lost_vpc_are_adopted_and_up_converges(
    built: dict[str, str],
) -> None:
    """A launch template made by hand with the environment's name and tags, and the VPC and a
    security group gone from the state (their children stay in it): adopted over two plans,
    then applied, and nothing is built twice."""
    aws = clients(built, "ec2", "autoscaling")
    ec2 = aws["ec2"]
    before = state(built)
    lost = ["aws_vpc.main", 'aws_security_group.layer["compute"]']
    forget(built, *lost, 'aws_launch_template.node["secure"]')
    # As a run stopped right after AWS made it would leave it: the name and tags the module gives
    # it; its data is not the module's, so the plan updates it (the emulator keeps a launch
    # template's tags as they were made).
    ec2.delete_launch_template(  # type: ignore[attr-defined]
        LaunchTemplateId=before['aws_launch_template.node["secure"]']["id"]
    )
    made = ec2.create_launch_template(  # type: ignore[attr-defined]
        LaunchTemplateName="example-kube-secure",
        LaunchTemplateData={"InstanceType": "t3.small"},
        TagSpecifications=[
            {
                "ResourceType": "launch-template",
                "Tags": [*TAGS, {"Key": "Layer", "Value": "secure"}],
            }
        ],
    )["LaunchTemplate"]["LaunchTemplateId"]

    up = kubeplat(built, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-4000:]
    assert "Traceback" not in up.stderr and "already exists" not in up.stderr
    for address in [*lost, 'aws_launch_template.node["secure"]']:
        assert adopted(up.stderr, address), up.stderr[-4000:]

    after = state(built)
    for address in lost:
        assert after[address]["id"] == before[address]["id"], address
    assert after['aws_launch_template.node["secure"]']["id"] == made
    assert after['aws_launch_template.node["secure"]']["latest_version"] == 2  # the module's data
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Environment", "Values": ["example"]}])  # type: ignore[attr-defined]
    assert [v["VpcId"] for v in vpcs["Vpcs"]] == [before["aws_vpc.main"]["id"]]
    templates = ec2.describe_launch_templates()["LaunchTemplates"]  # type: ignore[attr-defined]
    assert sorted(t["LaunchTemplateName"] for t in templates) == [
        "example-kube-compute",
        "example-kube-secure",
    ]
    groups = aws["autoscaling"].describe_auto_scaling_groups()["AutoScalingGroups"]  # type: ignore[attr-defined]
    secure = next(g for g in groups if g["AutoScalingGroupName"] == "example-kube-secure")
    assert secure["LaunchTemplate"]["LaunchTemplateId"] == made

    # Converged: nothing left to do, and a plan with nothing to create asks nothing more (no
    # `terraform show`, no describe call) and leaves no import file behind.
    shown = shows(built)
    plan = kubeplat(built, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "adopting" not in plan.stderr
    assert shows(built) <= shown
    assert not list(Path(built["CHECKOUT"], ".kubeplat", "example", "module").glob("kubeplat_*"))


def test_another_environments_resource_in_the_way_stops_the_run_with_the_command_that_removes_it(
    built: dict[str, str],
) -> None:
    ec2 = clients(built, "ec2")["ec2"]
    before = state(built)
    address = 'aws_launch_template.node["compute"]'
    forget(built, address)
    ec2.delete_launch_template(LaunchTemplateId=before[address]["id"])  # type: ignore[attr-defined]
    theirs = ec2.create_launch_template(  # type: ignore[attr-defined]
        LaunchTemplateName="example-kube-compute",
        LaunchTemplateData={"InstanceType": "t3.small"},
        TagSpecifications=[
            {
                "ResourceType": "launch-template",
                "Tags": [{**t, "Value": "other"} if t["Key"] == "Environment" else t for t in TAGS],
            }
        ],
    )["LaunchTemplate"]["LaunchTemplateId"]

    up = kubeplat(built, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 1, up.stderr[-3000:]
    errors = [line for line in up.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: launch template example-kube-compute ({theirs}) is in AWS but not in the "
        "environment's state, and its tags say it belongs to environment 'other', not "
        "'example', so kubeplat does not adopt it; nothing was applied"
    ]
    assert "applying" not in up.stderr and "Traceback" not in up.stderr
    assert address not in state(built)  # nothing imported, nothing applied
    assert [t["LaunchTemplateId"] for t in ec2.describe_launch_templates()["LaunchTemplates"]  # type: ignore[attr-defined]
            if t["LaunchTemplateName"] == "example-kube-compute"] == [theirs]  # fmt: skip

    # The hint's command, run as printed, removes it; then `up` converges.
    hint = next(line for line in up.stderr.splitlines() if line.startswith("Hint:"))
    printed = re.search(r"remove it: (.*?) ; or give", hint)
    assert printed is not None, hint
    words = shlex.split(printed.group(1))
    assignments = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    assert argv[:3] == ["aws", "ec2", "delete-launch-template"]
    if shutil.which("aws"):
        plain = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        done = subprocess.run(
            argv, env={**plain, **assignments}, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
    else:  # no AWS CLI here: the same call
        lt = argv[argv.index("--launch-template-id") + 1]
        ec2.delete_launch_template(LaunchTemplateId=lt)  # type: ignore[attr-defined]
    again = kubeplat(built, "up", "-e", "example", "--auto-approve")
    assert again.returncode == 0, story(built, again.stderr)
    assert state(built)[address]["id"] != theirs
    plan = kubeplat(built, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr[-3000:]


def test_a_group_left_with_the_egress_rule_aws_gives_every_new_group_is_adopted_with_it(
    built: dict[str, str],
) -> None:
    """Terraform killed between AWS making a security group and revoking the allow-all egress
    rule AWS gives every new group: the group is in AWS, bare but for that rule, and nothing of
    it is in the state. `up` adopts the group, then that rule as the module's own egress rule
    (the same rule; only its description differs), creates the rest, and converges."""
    ec2 = clients(built, "ec2")["ec2"]
    address = 'aws_security_group.layer["compute"]'
    before = state(built)
    group = before[address]["id"]
    on_it = sorted(
        a
        for a, values in before.items()
        if a.startswith("aws_vpc_security_group_") and values.get("security_group_id") == group
    )
    assert 'aws_vpc_security_group_egress_rule.all["compute"]' in on_it
    forget(built, address, *on_it)
    rules = ec2.describe_security_group_rules(  # type: ignore[attr-defined]
        Filters=[{"Name": "group-id", "Values": [group]}]
    )["SecurityGroupRules"]
    ingress = [r["SecurityGroupRuleId"] for r in rules if not r["IsEgress"]]
    egress = [r["SecurityGroupRuleId"] for r in rules if r["IsEgress"]]
    ec2.revoke_security_group_ingress(GroupId=group, SecurityGroupRuleIds=ingress)  # type: ignore[attr-defined]
    ec2.revoke_security_group_egress(GroupId=group, SecurityGroupRuleIds=egress)  # type: ignore[attr-defined]
    ec2.authorize_security_group_egress(  # type: ignore[attr-defined]
        GroupId=group, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    (default,) = [
        r["SecurityGroupRuleId"]
        for r in ec2.describe_security_group_rules(  # type: ignore[attr-defined]
            Filters=[{"Name": "group-id", "Values": [group]}]
        )["SecurityGroupRules"]
    ]

    up = kubeplat(built, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-4000:]
    rule = 'aws_vpc_security_group_egress_rule.all["compute"]'
    assert adopted(up.stderr, address) and adopted(up.stderr, rule), up.stderr[-4000:]
    after = state(built)
    assert after[address]["id"] == group
    assert after[rule]["id"] == default
    assert sorted(a for a, v in after.items() if v.get("security_group_id") == group) == on_it
    plan = kubeplat(built, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr[-3000:]
