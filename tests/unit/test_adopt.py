"""Adopting what an interrupted run left (kubeplat/adopt.py), the parts without AWS: reading
Terraform's plan, matching AWS's descriptions to planned creates (the import id of each kind, in
the format the AWS provider documents), deciding what is this environment's, and the import
blocks and commands written. The describe calls and the adoption itself run against the
emulator in tests/integration/test_adopt.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from kubeplat import adopt, config
from kubeplat.aws import Aws
from tests.conftest import REPO

SERVICES = {"ec2", "iam", "elbv2", "autoscaling", "route53"}
TAGS = {"Environment": "example", "Platform": "kube", "ManagedBy": "kubeplat"}


def aws_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def change(address: str, type_name: str, action: str, **extra: Any) -> str:
    """One `planned_change` line of `terraform plan -json` (as Terraform 1.11 writes it)."""
    name, _, key = address.partition("[")
    resource = {
        "addr": address,
        "module": "",
        "resource": address,
        "implied_provider": "aws",
        "resource_type": type_name,
        "resource_name": name.split(".")[1],
        "resource_key": json.loads(key[:-1]) if key else None,
    }
    body = {"resource": resource, "action": action, **extra}
    return json.dumps({"@level": "info", "change": body, "type": "planned_change"})


STREAM = [
    '{"@level":"info","@message":"Terraform 1.11.4","terraform":"1.11.4","type":"version"}',
    change('aws_launch_template.node["compute"]', "aws_launch_template", "create"),
    change('terraform_data.image["compute"]', "terraform_data", "create"),
    change("aws_default_security_group.default", "aws_default_security_group", "create"),
    change('aws_autoscaling_group.node["compute"]', "aws_autoscaling_group", "update"),
    change(
        'aws_iam_role.node["secure"]',
        "aws_iam_role",
        "import",
        importing={"id": "example-kube-secure"},
    ),
    change(
        "aws_lb_target_group.etcd",
        "aws_lb_target_group",
        "update",
        importing={
            "id": "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/example-kube-etcd/ab"
        },
    ),
    "not json",
    '{"changes":{"add":1,"change":1,"import":2,"remove":0,"operation":"plan"},'
    '"type":"change_summary"}',
]


def test_only_creates_of_adoptable_kinds_start_a_search() -> None:
    """A no-op or an ordinary change plans no such create: adoption then costs nothing."""
    assert adopt.creates(STREAM) == ['aws_launch_template.node["compute"]']
    assert adopt.creates(STREAM[3:]) == []


def test_what_the_plan_adopts_is_read_from_its_stream() -> None:
    """`planned_change` carries `importing` for a pure import (action "import") and for an
    import that also changes the resource (its action)."""
    assert adopt.imports(STREAM) == [
        ('aws_iam_role.node["secure"]', "example-kube-secure"),
        (
            "aws_lb_target_group.etcd",
            "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/example-kube-etcd/ab",
        ),
    ]


def show(*changes: dict[str, Any], state: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A `terraform show -json` document."""
    return {
        "resource_changes": list(changes),
        "prior_state": {"values": {"root_module": {"resources": state or []}}},
    }


def resource_change(
    address: str,
    type_name: str,
    after: dict[str, Any],
    unknown: dict[str, Any] | None = None,
    actions: tuple[str, ...] = ("create",),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "address": address,
        "mode": "managed",
        "type": type_name,
        "change": {
            "actions": list(actions),
            "after": after,
            "after_unknown": unknown or {},
            **extra,
        },
    }


def test_planned_values_known_so_far_are_kept_and_unknown_ones_dropped() -> None:
    document = show(
        resource_change(
            'aws_security_group.layer["compute"]', "aws_security_group",
            {"name": "example-kube-compute", "vpc_id": None, "tags": {"Name": "x"}},
            {"vpc_id": True, "id": True},
        ),
        resource_change("aws_vpc.main", "aws_vpc", {"cidr_block": "10.0.0.0/16"}, actions=("no-op",)),
        resource_change(
            "aws_lb.internal", "aws_lb", {"name": "example-kube-int"},
            importing={"id": "arn:lb"},
        ),
        resource_change('terraform_data.image["compute"]', "terraform_data", {"input": None}),
    )  # fmt: skip
    document["resource_changes"].append(
        {**resource_change("data.aws_ami.node", "aws_vpc", {}), "mode": "data"}
    )
    found = adopt.planned(document)
    assert [(p.address, dict(p.after)) for p in found] == [
        (
            'aws_security_group.layer["compute"]',
            {"name": "example-kube-compute", "tags": {"Name": "x"}},
        )
    ]
    assert found[0].name_tag == "x"


def planned(type_name: str, address: str, **after: Any) -> adopt.Planned:
    return adopt.Planned(address, type_name, after)


SG = "sg-0123"
RULE_BASE = {"GroupId": SG, "SecurityGroupRuleId": "sgr-1", "IsEgress": False}

# (planned create, what AWS describes, the import id; the AWS provider's documented formats)
MAPPINGS = [
    (
        planned("aws_launch_template", 'aws_launch_template.node["compute"]',
                name="example-kube-compute"),
        {"LaunchTemplateName": "example-kube-compute", "LaunchTemplateId": "lt-0abc"},
        "lt-0abc",
    ),
    (
        planned("aws_autoscaling_group", 'aws_autoscaling_group.node["secure"]',
                name="example-kube-secure"),
        {"AutoScalingGroupName": "example-kube-secure"},
        "example-kube-secure",
    ),
    (
        planned("aws_iam_role", 'aws_iam_role.node["secure"]', name="example-kube-secure"),
        {"RoleName": "example-kube-secure"},
        "example-kube-secure",
    ),
    (
        planned("aws_iam_openid_connect_provider", "aws_iam_openid_connect_provider.pods[0]",
                url="https://b-oidc.s3.eu-west-1.amazonaws.com/example"),
        {"Url": "b-oidc.s3.eu-west-1.amazonaws.com/example",
         "Arn": "arn:aws:iam::123456789012:oidc-provider/b-oidc.s3.eu-west-1.amazonaws.com/example"},
        "arn:aws:iam::123456789012:oidc-provider/b-oidc.s3.eu-west-1.amazonaws.com/example",
    ),
    (
        planned("aws_iam_instance_profile", 'aws_iam_instance_profile.node["secure"]',
                name="example-kube-secure"),
        {"InstanceProfileName": "example-kube-secure", "Roles": []},
        "example-kube-secure",
    ),
    (
        planned("aws_iam_role_policy", 'aws_iam_role_policy.node["secure"]',
                role="example-kube-secure", name="example-kube-secure"),
        {"RoleName": "example-kube-secure", "PolicyName": "example-kube-secure"},
        "example-kube-secure:example-kube-secure",
    ),
    (
        planned("aws_lb", "aws_lb.api_public", name="example-kube-api"),
        {"LoadBalancerName": "example-kube-api", "LoadBalancerArn": "arn:lb/api"},
        "arn:lb/api",
    ),
    (
        planned("aws_lb_target_group", "aws_lb_target_group.etcd", name="example-kube-etcd"),
        {"TargetGroupName": "example-kube-etcd", "TargetGroupArn": "arn:tg/etcd"},
        "arn:tg/etcd",
    ),
    (
        planned("aws_lb_listener", "aws_lb_listener.etcd", load_balancer_arn="arn:lb/int",
                port=2379),
        {"LoadBalancerArn": "arn:lb/int", "Port": 2379, "ListenerArn": "arn:listener/1"},
        "arn:listener/1",
    ),
    (
        planned("aws_security_group", 'aws_security_group.layer["compute"]', vpc_id="vpc-1",
                name="example-kube-compute"),
        {"VpcId": "vpc-1", "GroupName": "example-kube-compute", "GroupId": SG},
        SG,
    ),
    (
        planned("aws_vpc_security_group_ingress_rule",
                'aws_vpc_security_group_ingress_rule.ssh_compute["127.0.0.1/32"]',
                security_group_id=SG, ip_protocol="tcp", from_port=22, to_port=22,
                cidr_ipv4="127.0.0.1/32"),
        {**RULE_BASE, "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "CidrIpv4": "127.0.0.1/32"},
        "sgr-1",
    ),
    (
        planned("aws_vpc_security_group_ingress_rule",
                "aws_vpc_security_group_ingress_rule.compute_internal",
                security_group_id=SG, ip_protocol="-1", referenced_security_group_id=SG),
        {**RULE_BASE, "IpProtocol": "-1", "FromPort": -1, "ToPort": -1,
         "ReferencedGroupInfo": {"GroupId": SG}},
        "sgr-1",
    ),
    (
        planned("aws_vpc_security_group_egress_rule", 'aws_vpc_security_group_egress_rule.all["secure"]',
                security_group_id=SG, ip_protocol="-1", cidr_ipv4="0.0.0.0/0"),
        {**RULE_BASE, "IsEgress": True, "IpProtocol": "-1", "FromPort": -1, "ToPort": -1,
         "CidrIpv4": "0.0.0.0/0"},
        "sgr-1",
    ),
    (
        planned("aws_subnet", "aws_subnet.private[1]", vpc_id="vpc-1", cidr_block="10.0.144.0/20"),
        {"VpcId": "vpc-1", "CidrBlock": "10.0.144.0/20", "SubnetId": "subnet-1"},
        "subnet-1",
    ),
    (
        planned("aws_route_table_association", "aws_route_table_association.private[1]",
                subnet_id="subnet-1", route_table_id="rtb-1"),
        {"SubnetId": "subnet-1", "RouteTableId": "rtb-1", "RouteTableAssociationId": "rtbassoc-1"},
        "subnet-1/rtb-1",
    ),
    (
        planned("aws_route53_record", "aws_route53_record.kube", zone_id="Z1",
                name="kube.example.example.internal", type="A"),
        {"HostedZoneId": "Z1", "Name": "kube.example.example.internal.", "Type": "A"},
        "Z1_kube.example.example.internal_A",
    ),
    (
        planned("aws_route53_zone", "aws_route53_zone.cluster", name="example.example.internal"),
        {"Id": "/hostedzone/Z1", "Name": "example.example.internal.", "Config": {}},
        "Z1",
    ),
    (
        planned("aws_vpc", "aws_vpc.main", cidr_block="10.0.0.0/16", tags={"Name": "example-kube"}),
        {"VpcId": "vpc-1", "CidrBlock": "10.0.0.0/16", "Tags": aws_tags({"Name": "example-kube"})},
        "vpc-1",
    ),
    (
        planned("aws_eip", "aws_eip.nat", tags={"Name": "example-kube-nat"}),
        {"AllocationId": "eipalloc-1", "Tags": aws_tags({"Name": "example-kube-nat"})},
        "eipalloc-1",
    ),
    (
        planned("aws_nat_gateway", "aws_nat_gateway.main", subnet_id="subnet-1"),
        {"NatGatewayId": "nat-1", "SubnetId": "subnet-1"},
        "nat-1",
    ),
    (
        planned("aws_route_table", "aws_route_table.public", vpc_id="vpc-1",
                tags={"Name": "example-kube-public"}),
        {"RouteTableId": "rtb-1", "VpcId": "vpc-1", "Tags": aws_tags({"Name": "example-kube-public"})},
        "rtb-1",
    ),
    (
        planned("aws_internet_gateway", "aws_internet_gateway.main", vpc_id="vpc-1"),
        {"InternetGatewayId": "igw-1", "Attachments": [{"VpcId": "vpc-1"}]},
        "igw-1",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("item", "described", "import_id"), MAPPINGS, ids=lambda v: str(v)[:40])
def test_each_kind_maps_what_aws_describes_to_its_address_and_import_id(
    item: adopt.Planned, described: dict[str, Any], import_id: str
) -> None:
    kind = adopt.KINDS[item.type]
    assert all(item.get(need) is not None for need in kind.needs)
    [candidate] = kind.match(item.type, [item], [described])
    assert (candidate.address, candidate.import_id) == (item.address, import_id)
    assert candidate.delete and all(c.split()[0] in SERVICES for c in candidate.delete)


def test_every_kind_of_the_module_that_aws_names_uniquely_is_known() -> None:
    """Each resource type of terraform/*.tf that AWS refuses twice (a name, a CIDR, a rule, a
    port) or that would be built twice is searched for."""
    module = "".join(p.read_text() for p in (REPO / "terraform").glob("*.tf"))
    types = set(re.findall(r'^resource "(aws_\w+)"', module, re.MULTILINE))
    # The default security group is adopted by Terraform itself on create; a lifecycle hook is
    # put again over one of the same name (PutLifecycleHook creates or updates): never refused.
    assert types - set(adopt.KINDS) == {
        "aws_default_security_group",
        "aws_autoscaling_lifecycle_hook",
    }
    assert {m[0].type for m in MAPPINGS} == set(adopt.KINDS)


def test_a_rule_matches_only_its_own_direction_ports_and_source() -> None:
    item = planned(
        "aws_vpc_security_group_ingress_rule", "r", security_group_id=SG, ip_protocol="tcp",
        from_port=6443, to_port=6443, cidr_ipv4="10.0.0.0/8",
    )  # fmt: skip
    rule = {**RULE_BASE, "IpProtocol": "tcp", "FromPort": 6443, "ToPort": 6443,
            "CidrIpv4": "10.0.0.0/8"}  # fmt: skip
    assert adopt.rule_matches(item, rule)
    assert not adopt.rule_matches(item, {**rule, "IsEgress": True})
    assert not adopt.rule_matches(item, {**rule, "ToPort": 6444})
    assert not adopt.rule_matches(item, {**rule, "CidrIpv4": "127.0.0.1/32"})
    assert not adopt.rule_matches(item, {**rule, "GroupId": "sg-other"})
    assert not adopt.rule_matches(
        item, {**rule, "CidrIpv4": None, "ReferencedGroupInfo": {"GroupId": SG}}
    )


def test_a_zone_left_before_its_tags_were_set_is_known_by_its_comment() -> None:
    item = planned("aws_route53_zone", "aws_route53_zone.cluster", name="example.example.internal",
                   comment="kubeplat example")  # fmt: skip
    zone = {"Id": "/hostedzone/Z1", "Name": "example.example.internal.", "Tags": [],
            "Config": {"Comment": "kubeplat example"}}  # fmt: skip
    [vouched] = adopt.KINDS["aws_route53_zone"].match(item.type, [item], [zone])
    other = {**zone, "Config": {"Comment": "someone else's"}}
    [unknown] = adopt.KINDS["aws_route53_zone"].match(item.type, [item], [other])
    assert vouched.child and not unknown.child


def candidate(
    type_name: str = "aws_launch_template", import_id: str = "lt-1", **kw: Any
) -> adopt.Candidate:
    defaults: dict[str, Any] = {
        "address": f"{type_name}.x",
        "label": f"{type_name} {import_id}",
        "delete": (f"ec2 delete {import_id}",),
        "tags": TAGS,
    }
    defaults.update(kw)
    return adopt.Candidate(type=type_name, import_id=import_id, **defaults)


def test_what_carries_this_environments_tags_is_adopted(environments: Path) -> None:
    env = config.load("example")
    ours = candidate()
    assert adopt.decide(env, [ours], set()) == ([ours], [])


def test_another_environments_resource_in_the_way_stops_the_run(environments: Path) -> None:
    env = config.load("example")
    theirs = candidate(tags={**TAGS, "Environment": "other"})
    adopted, blockers = adopt.decide(env, [theirs], set())
    assert adopted == []
    assert [(b.label, b.commands) for b in blockers] == [(theirs.label, theirs.delete)]
    assert "belongs to environment 'other', not 'example'" in blockers[0].reason


def test_a_hand_made_resource_without_our_tags_is_not_adopted(environments: Path) -> None:
    env = config.load("example")
    _adopted, blockers = adopt.decide(env, [candidate(tags={})], set())
    assert "does not carry this environment's tags" in blockers[0].reason
    # Inside a parent of this environment's (a rule of its security group), no tags are needed;
    # another environment's tags still stop it.
    assert adopt.decide(env, [candidate(tags={}, child=True)], set())[1] == []
    assert adopt.decide(env, [candidate(tags={"Environment": "x"}, child=True)], set())[1]


def test_another_environments_copy_of_a_kind_aws_allows_twice_is_left_alone(
    environments: Path,
) -> None:
    env = config.load("example")
    theirs = candidate("aws_vpc", "vpc-2", tags={**TAGS, "Environment": "other"})
    assert adopt.decide(env, [theirs], set()) == ([], [])
    first, second = candidate("aws_vpc", "vpc-1"), candidate("aws_vpc", "vpc-2")
    adopted, [blocker] = adopt.decide(env, [second, first], set())
    assert adopted == [] and "2 VPCs carry this environment's name and tags" in blocker.reason
    assert blocker.commands == second.delete  # keep one, remove the other


def test_what_the_state_holds_is_never_adopted_again(environments: Path) -> None:
    env = config.load("example")
    document = show(
        state=[
            {"mode": "managed", "type": "aws_iam_instance_profile",
             "values": {"id": "example-kube-secure", "arn": "arn:profile"}},
            {"mode": "data", "type": "aws_iam_role", "values": {"id": "example-kube-compute"}},
        ]
    )  # fmt: skip
    held = adopt.state_ids(document)
    assert ("aws_iam_instance_profile", "example-kube-secure") in held
    profile = candidate("aws_iam_instance_profile", "example-kube-secure")
    # A role shares its profile's name; a data source's id is not the state's resource.
    role = candidate("aws_iam_role", "example-kube-secure", address='aws_iam_role.node["secure"]')
    data_named = candidate(
        "aws_iam_role", "example-kube-compute", address='aws_iam_role.node["compute"]'
    )
    assert adopt.decide(env, [profile, role, data_named], held)[0] == [data_named, role]


def test_import_blocks_are_valid_hcl_with_each_address_and_id() -> None:
    text = adopt.import_blocks(
        [
            candidate(address='aws_launch_template.node["compute"]', import_id="lt-0abc"),
            candidate(address='aws_vpc_security_group_ingress_rule.pod_network["compute<-secure"]',
                      import_id="odd${id}"),
        ]
    )  # fmt: skip
    blocks = hcl2.loads(text)["import"]
    assert [(b["to"], b["id"]) for b in blocks] == [
        ('${aws_launch_template.node["compute"]}', '"lt-0abc"'),
        ('${aws_vpc_security_group_ingress_rule.pod_network["compute<-secure"]}', '"odd$${id}"'),
    ]


def test_commands_name_the_region_and_in_the_sandbox_its_endpoint_and_keys() -> None:
    sandbox = Aws(None, "eu-west-1", "http://127.0.0.1:5000", True,  # type: ignore[arg-type]
                  {"AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox"})  # fmt: skip
    assert adopt.command(sandbox, "ec2 delete-launch-template --launch-template-id lt-1") == (
        "AWS_ACCESS_KEY_ID=sandbox AWS_SECRET_ACCESS_KEY=sandbox aws ec2 delete-launch-template "
        "--launch-template-id lt-1 --region eu-west-1 --endpoint-url http://127.0.0.1:5000"
    )
    real = Aws(None, "us-east-1", None, False, {"AWS_PROFILE": "ops"})  # type: ignore[arg-type]
    assert adopt.command(real, "iam delete-role --role-name r") == (
        "aws iam delete-role --role-name r --region us-east-1 --profile ops"
    )


def test_the_error_is_one_line_naming_each_and_the_hint_every_command() -> None:
    error = adopt.Unadoptable(
        [
            adopt.Blocker("launch template a (lt-1)", "its tags say so", ("aws x 1",)),
            adopt.Blocker("IAM role b", "its tags say so", ("aws y 1", "aws y 2")),
        ]
    )
    assert "\n" not in error.message and "\n" not in error.hint
    assert error.message.startswith("launch template a (lt-1) is in AWS but not in the")
    assert "(and 1 more: IAM role b)" in error.message
    assert error.message.endswith("nothing was applied")
    assert "remove it: aws x 1 ; aws y 1 ; aws y 2 ; or give" in error.hint
