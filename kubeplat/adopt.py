"""Adopting what an interrupted run left in AWS.

A run stopped hard (kubeplat and its Terraform killed, a lost terminal) can leave resources that
Terraform created but never recorded in the environment's state. The next plan creates them
again, and the apply fails on the first name AWS keeps unique ("already exists"), or builds a
second copy of one it does not (a VPC, an address).

So after a plan that creates resources of the kinds in `KINDS` (a no-op or an ordinary change
plans none, and costs nothing here), kubeplat reads what the plan would create from
`terraform show -json` — the names and values Terraform itself computed, never a copy of the
module's naming — and asks AWS for each, a describe call or two per kind. What AWS holds with
this environment's tags (or inside a parent that is this environment's: its VPC, its security
group, its zone) and not in the state is adopted: one `import` block per resource in
`kubeplat_adopt.tf` beside the staged module, and the plan is made again; it shows each as an
import (`planned_change` with `"importing": {"id": …}`), applied with the rest of the plan.
A parent adopted makes its children's ids known, so this repeats (at most `ROUNDS` plans).
What carries another environment's tags, or none where tags are the only proof, stops the run
before anything is applied, naming it and the AWS CLI command that removes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplat import console
from kubeplat.errors import KubeplatError

if TYPE_CHECKING:
    from kubeplat.aws import Aws
    from kubeplat.config import Environment
    from kubeplat.pipeline import Prepared
    from kubeplat.process import Result
    from kubeplat.terraform import Terraform

ADOPT_FILE = "kubeplat_adopt.tf"
# A round adopts what the plan's known values find; a parent adopted (a VPC, a security group)
# makes its children's ids known to the next. The module nests three deep (VPC, subnet,
# route table association).
ROUNDS = 4
MANAGED_BY = "kubeplat"


@dataclass(frozen=True)
class Planned:
    """A resource the plan creates: its address, type and the planned values already known."""

    address: str
    type: str
    after: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.after[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.after.get(key, default)

    @property
    def name_tag(self) -> str | None:
        tags = self.after.get("tags")
        return tags.get("Name") if isinstance(tags, Mapping) else None


@dataclass(frozen=True)
class Candidate:
    """A resource in AWS that a planned create would duplicate."""

    address: str
    type: str
    import_id: str
    # How a person names it, e.g. "launch template example-kube-compute (lt-0abc…)".
    label: str
    # The AWS CLI commands (without `aws`, region or endpoint) that remove it.
    delete: tuple[str, ...]
    # Its tags; None for a kind that has none.
    tags: Mapping[str, str] | None = None
    # Found inside a parent that is this environment's (in its state or adopted with it).
    child: bool = False
    # The id Terraform keeps in its state once adopted, when it is not the import id.
    state_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """(type, id) as the state would hold it."""
        return self.type, self.state_id or self.import_id


@dataclass(frozen=True)
class Blocker:
    """Something in AWS that keeps a planned create from succeeding and that kubeplat does not
    adopt: what it is, why, and the AWS CLI commands that remove it."""

    label: str
    reason: str
    commands: tuple[str, ...]


class Unadoptable(KubeplatError):
    """Resources in AWS block the plan's creates and are not this environment's to adopt."""

    def __init__(self, blockers: Sequence[Blocker]) -> None:
        first = blockers[0]
        more = (
            f" (and {len(blockers) - 1} more: " + ", ".join(b.label for b in blockers[1:]) + ")"
            if len(blockers) > 1
            else ""
        )
        fixes = " ; ".join(c for b in blockers for c in b.commands)
        super().__init__(
            f"{first.label} is in AWS but not in the environment's state, and {first.reason}"
            f"{more}; nothing was applied",
            (f"if it is left over, remove it: {fixes} ; or " if fixes else "remove it, or ")
            + "give this environment's resources other names (its environment or platform); "
            "then run the same command again",
        )
        self.blockers = list(blockers)


# The kinds. Each `fetch` makes the describe call(s) (AWS's descriptions, as dicts); the rest is
# pure: which description a planned create would duplicate, its import id (the format the AWS
# provider documents for the type), how to name it and how to remove it.

Description = Mapping[str, Any]


def _tags(items: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value")) for t in items or ()}


def _own_tags(item: Description) -> dict[str, str]:
    return _tags(item.get("Tags"))


def _no_tags(_item: Description) -> None:
    return None


def _never(_planned: Planned, _item: Description) -> bool:
    return False


def _always(_planned: Planned, _item: Description) -> bool:
    return True


@dataclass(frozen=True)
class Kind:
    """How to find what a planned create of one resource type would duplicate."""

    noun: str
    # The planned values the search needs (an unknown one waits for a later round).
    needs: tuple[str, ...]
    fetch: Callable[[Aws, Environment, list[Planned]], list[Description]]
    matches: Callable[[Planned, Description], bool]
    import_id: Callable[[Description], str]
    label: Callable[[Description], str]
    # The AWS CLI commands (without `aws`, region or endpoint) that remove one.
    delete: Callable[[Description], tuple[str, ...]]
    tags: Callable[[Description], Mapping[str, str] | None] = _own_tags
    # Found inside a parent that is this environment's (in its state, or adopted before).
    child: Callable[[Planned, Description], bool] = _never
    # AWS refuses a second one ("already exists", a duplicate rule, an overlapping CIDR): one
    # that is not this environment's stops the run. Otherwise a second one would merely be made,
    # so only this environment's are adopted and others are left alone.
    unique: bool = True
    # The id Terraform keeps in its state, when it is not the import id.
    state_id: Callable[[Description], str] | None = None

    def match(
        self, type_name: str, items: list[Planned], found: list[Description]
    ) -> list[Candidate]:
        """The candidates among `found` for each planned create in `items`."""
        return [
            Candidate(
                item.address,
                type_name,
                self.import_id(obj),
                self.label(obj),
                self.delete(obj),
                self.tags(obj),
                child=self.child(item, obj),
                state_id=self.state_id(obj) if self.state_id else "",
            )
            for item in items
            for obj in found
            if self.matches(item, obj)
        ]


def _values(items: Iterable[Planned], key: str) -> list[str]:
    return sorted({str(item[key]) for item in items})


def _ec2(aws: Aws, call: str, key: str, filters: Mapping[str, list[str]]) -> list[Description]:
    """One paginated EC2 describe call, filtered."""
    pages = (
        aws.client("ec2")
        .get_paginator(call)
        .paginate(Filters=[{"Name": name, "Values": values} for name, values in filters.items()])
    )
    return [item for page in pages for item in page.get(key, [])]


def _absent(exc: Exception, *codes: str) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in codes


def _each(call: Callable[[str], Description | None], names: Iterable[str]) -> list[Description]:
    """`call` for each name; a name AWS does not know (NoSuchEntity) gives nothing."""
    found = []
    for name in names:
        try:
            item = call(name)
        except Exception as exc:
            if _absent(exc, "NoSuchEntity"):
                continue
            raise
        if item is not None:
            found.append(item)
    return found


def _roles(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    iam = aws.client("iam")

    def one(name: str) -> Description:
        role = iam.get_role(RoleName=name)["Role"]
        # What must go before the role can (asked only of a role that exists: an orphan).
        return {
            **role,
            "PolicyNames": iam.list_role_policies(RoleName=name).get("PolicyNames", []),
            "AttachedPolicies": [
                p["PolicyArn"]
                for p in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", [])
            ],
            "InstanceProfiles": [
                p["InstanceProfileName"]
                for p in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
            ],
        }

    return _each(one, _values(items, "name"))


def _oidc_providers(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    """The account's OpenID Connect providers for the planned URLs (IAM keys a provider by its
    URL without the scheme; its ARN ends with it)."""
    iam = aws.client("iam")
    wanted = {str(i["url"]).removeprefix("https://") for i in items}
    found: list[Description] = []
    for listed in iam.list_open_id_connect_providers().get("OpenIDConnectProviderList", []):
        arn = listed["Arn"]
        if not any(arn.endswith(f":oidc-provider/{url}") for url in wanted):
            continue
        try:
            provider = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
        except Exception as exc:
            if _absent(exc, "NoSuchEntity"):
                continue
            raise
        found.append({**provider, "Arn": arn})
    return found


def role_removal(role: Description) -> tuple[str, ...]:
    name = role["RoleName"]
    return (
        *(f"iam delete-role-policy --role-name {name} --policy-name {policy}"
          for policy in role.get("PolicyNames", [])),
        *(f"iam detach-role-policy --role-name {name} --policy-arn {arn}"
          for arn in role.get("AttachedPolicies", [])),
        *(f"iam remove-role-from-instance-profile --instance-profile-name {profile} "
          f"--role-name {name}" for profile in role.get("InstanceProfiles", [])),
        f"iam delete-role --role-name {name}",
    )  # fmt: skip


def _profiles(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    iam = aws.client("iam")
    return _each(
        lambda name: iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"],
        _values(items, "name"),
    )


def _role_policies(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    iam = aws.client("iam")
    found: list[Description] = []
    for role, name in sorted({(str(i["role"]), str(i["name"])) for i in items}):
        try:
            found.append(iam.get_role_policy(RoleName=role, PolicyName=name))
        except Exception as exc:
            if not _absent(exc, "NoSuchEntity"):
                raise
    return found


def _elb(aws: Aws, items: list[Planned], call: str, key: str, absent: str) -> list[Description]:
    """Load balancers or target groups by name, with their tags. AWS refuses the whole call
    when one name does not exist; then each is asked alone."""
    client = aws.client("elbv2")
    names = _values(items, "name")
    try:
        found = list(getattr(client, call)(Names=names)[key])
    except Exception as exc:
        if not _absent(exc, absent):
            raise
        found = []
        for name in names:
            try:
                found += getattr(client, call)(Names=[name])[key]
            except Exception as inner:
                if not _absent(inner, absent):
                    raise
    arn = "LoadBalancerArn" if key == "LoadBalancers" else "TargetGroupArn"
    tags: dict[str, list[Any]] = {}
    for start in range(0, len(found), 20):  # describe_tags takes 20 ARNs at most
        arns = [item[arn] for item in found[start : start + 20]]
        for description in client.describe_tags(ResourceArns=arns)["TagDescriptions"]:
            tags[description["ResourceArn"]] = description.get("Tags", [])
    return [{**item, "Tags": tags.get(item[arn], [])} for item in found]


def _listeners(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    client = aws.client("elbv2")
    found: list[Description] = []
    for arn in _values(items, "load_balancer_arn"):
        found += client.describe_listeners(LoadBalancerArn=arn)["Listeners"]
    return found


def _port(value: Any) -> int:
    return -1 if value is None else int(value)


def rule_matches(item: Planned, rule: Description) -> bool:
    """Whether an AWS security group rule is the one a planned rule resource describes."""
    egress = item.type == "aws_vpc_security_group_egress_rule"
    protocol = str(item.get("ip_protocol"))
    protocol = "-1" if protocol in ("all", "-1") else protocol
    if (
        rule.get("GroupId") != item.get("security_group_id")
        or bool(rule.get("IsEgress")) != egress
        or str(rule.get("IpProtocol")) != protocol
    ):
        return False
    if protocol != "-1" and (
        _port(rule.get("FromPort")) != _port(item.get("from_port"))
        or _port(rule.get("ToPort")) != _port(item.get("to_port"))
    ):
        return False
    referenced = (rule.get("ReferencedGroupInfo") or {}).get("GroupId")
    return bool(
        rule.get("CidrIpv4") == item.get("cidr_ipv4")
        and rule.get("CidrIpv6") == item.get("cidr_ipv6")
        and rule.get("PrefixListId") == item.get("prefix_list_id")
        and referenced == item.get("referenced_security_group_id")
    )


def _rule_removal(rule: Description) -> tuple[str, ...]:
    way = "egress" if rule.get("IsEgress") else "ingress"
    return (
        f"ec2 revoke-security-group-{way} --group-id {rule['GroupId']} "
        f"--security-group-rule-ids {rule['SecurityGroupRuleId']}",
    )


def _rules(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    groups = _values(items, "security_group_id")
    return _ec2(aws, "describe_security_group_rules", "SecurityGroupRules", {"group-id": groups})


RULE = {
    "needs": ("security_group_id", "ip_protocol"),
    "fetch": _rules,
    "matches": rule_matches,
    "import_id": lambda r: r["SecurityGroupRuleId"],
    "label": lambda r: (
        f"{'egress' if r.get('IsEgress') else 'ingress'} rule {r['SecurityGroupRuleId']} of "
        f"security group {r['GroupId']}"
    ),
    "delete": _rule_removal,
    "child": _always,
}


def _associations(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    """The subnets' route table associations (a subnet has one route table)."""
    filters = {"association.subnet-id": _values(items, "subnet_id")}
    tables = _ec2(aws, "describe_route_tables", "RouteTables", filters)
    return [
        {**association, "RouteTableId": association.get("RouteTableId", table["RouteTableId"])}
        for table in tables
        for association in table.get("Associations", [])
        if association.get("SubnetId") and not association.get("Main")
    ]


def _records(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    client = aws.client("route53")
    found: list[Description] = []
    for item in items:
        sets = client.list_resource_record_sets(
            HostedZoneId=item["zone_id"],
            StartRecordName=item["name"],
            StartRecordType=item["type"],
            MaxItems="1",
        )["ResourceRecordSets"]
        found += [{**s, "HostedZoneId": _zone_id(item["zone_id"])} for s in sets]
    return found


def _zone_id(zone: str) -> str:
    return str(zone).rsplit("/", 1)[-1]


def _record_name(name: str) -> str:
    """A record's name as the module writes it (Route 53 answers with a final dot, and `*`
    spelled \\052)."""
    return str(name).rstrip(".").replace("\\052", "*").lower()


def record_id(zone: str, name: str, kind: str) -> str:
    """The AWS provider's import id of a record: zone id, name, type, joined by `_`."""
    return f"{_zone_id(zone)}_{_record_name(name)}_{kind}"


def _record_matches(item: Planned, record: Description) -> bool:
    return (
        record["HostedZoneId"] == _zone_id(item["zone_id"])
        and _record_name(record.get("Name", "")) == _record_name(item["name"])
        and record.get("Type") == item["type"]
    )


def _record_removal(record: Description) -> tuple[str, ...]:
    batch = {"Changes": [{"Action": "DELETE", "ResourceRecordSet": {
        k: v for k, v in record.items() if k != "HostedZoneId"}}]}  # fmt: skip
    return (
        f"route53 change-resource-record-sets --hosted-zone-id {record['HostedZoneId']} "
        f"--change-batch '{json.dumps(batch)}'",
    )


def _tagged(env: Environment, items: list[Planned]) -> dict[str, list[str]]:
    """Filters for this environment's resources by Name tag: of a kind AWS lets exist twice,
    another environment's are no concern."""
    return {
        "tag:Name": sorted({str(i.name_tag) for i in items}),
        "tag:Environment": [env.environment],
        "tag:ManagedBy": [MANAGED_BY],
    }


def _name_tag(item: Planned, obj: Description) -> bool:
    return _tags(obj.get("Tags")).get("Name") == item.name_tag


def _zones(aws: Aws, _env: Environment, items: list[Planned]) -> list[Description]:
    client = aws.client("route53")
    found: list[Description] = []
    for name in sorted({str(i["name"]).rstrip(".") for i in items}):
        zones = client.list_hosted_zones_by_name(DNSName=name, MaxItems="20")["HostedZones"]
        for zone in zones:
            if zone["Name"].rstrip(".") != name:
                continue  # (not asked whether it is private: the sandbox's emulator says not)
            tags = client.list_tags_for_resource(
                ResourceType="hostedzone", ResourceId=_zone_id(zone["Id"])
            )
            found.append({**zone, "Tags": tags.get("ResourceTagSet", {}).get("Tags", [])})
    return found


def _zone_vouched(item: Planned, zone: Description) -> bool:
    """Tags are set after the zone is made: a run stopped in between leaves a zone without
    them, known by the comment the module gives it ("kubeplat <environment>")."""
    comment = zone.get("Config", {}).get("Comment")
    return not zone.get("Tags") and bool(comment) and comment == item.get("comment")


KINDS: dict[str, Kind] = {
    "aws_vpc": Kind(
        "VPC",
        ("cidr_block", "tags"),
        lambda aws, env, items: _ec2(aws, "describe_vpcs", "Vpcs", _tagged(env, items)),
        lambda i, v: _name_tag(i, v) and v.get("CidrBlock") == i["cidr_block"],
        lambda v: v["VpcId"],
        lambda v: f"VPC {_tags(v.get('Tags')).get('Name')} ({v['VpcId']})",
        lambda v: (f"ec2 delete-vpc --vpc-id {v['VpcId']}",),
        unique=False,
    ),
    "aws_subnet": Kind(
        "subnet",
        ("vpc_id", "cidr_block"),
        lambda aws, _env, items: _ec2(
            aws, "describe_subnets", "Subnets", {"vpc-id": _values(items, "vpc_id")}
        ),
        lambda i, s: s.get("VpcId") == i["vpc_id"] and s.get("CidrBlock") == i["cidr_block"],
        lambda s: s["SubnetId"],
        lambda s: f"subnet {s['CidrBlock']} ({s['SubnetId']})",
        lambda s: (f"ec2 delete-subnet --subnet-id {s['SubnetId']}",),
        child=_always,
    ),
    "aws_internet_gateway": Kind(
        "internet gateway",
        ("vpc_id",),
        lambda aws, _env, items: _ec2(
            aws,
            "describe_internet_gateways",
            "InternetGateways",
            {"attachment.vpc-id": _values(items, "vpc_id")},
        ),
        lambda i, g: any(a.get("VpcId") == i["vpc_id"] for a in g.get("Attachments", [])),
        lambda g: g["InternetGatewayId"],
        lambda g: f"internet gateway {g['InternetGatewayId']}",
        lambda g: (
            *(
                f"ec2 detach-internet-gateway --internet-gateway-id {g['InternetGatewayId']} "
                f"--vpc-id {a['VpcId']}"
                for a in g.get("Attachments", [])
            ),
            f"ec2 delete-internet-gateway --internet-gateway-id {g['InternetGatewayId']}",
        ),
        child=_always,
    ),
    "aws_eip": Kind(
        "elastic IP",
        ("tags",),
        lambda aws, env, items: list(
            aws.client("ec2").describe_addresses(
                Filters=[{"Name": k, "Values": v} for k, v in _tagged(env, items).items()]
            )["Addresses"]
        ),
        _name_tag,
        lambda a: a["AllocationId"],
        lambda a: f"elastic IP {a.get('PublicIp')} ({a['AllocationId']})",
        lambda a: (f"ec2 release-address --allocation-id {a['AllocationId']}",),
        unique=False,
    ),
    "aws_nat_gateway": Kind(
        "NAT gateway",
        ("subnet_id",),
        lambda aws, _env, items: _ec2(
            aws,
            "describe_nat_gateways",
            "NatGateways",
            {"subnet-id": _values(items, "subnet_id"), "state": ["pending", "available"]},
        ),
        lambda i, n: n.get("SubnetId") == i["subnet_id"],
        lambda n: n["NatGatewayId"],
        lambda n: f"NAT gateway {n['NatGatewayId']}",
        lambda n: (f"ec2 delete-nat-gateway --nat-gateway-id {n['NatGatewayId']}",),
        child=_always,
        unique=False,
    ),
    "aws_route_table": Kind(
        "route table",
        ("vpc_id", "tags"),
        lambda aws, _env, items: _ec2(
            aws,
            "describe_route_tables",
            "RouteTables",
            {"vpc-id": _values(items, "vpc_id"), "tag:Name": [str(i.name_tag) for i in items]},
        ),
        lambda i, t: t.get("VpcId") == i["vpc_id"] and _name_tag(i, t),
        lambda t: t["RouteTableId"],
        lambda t: f"route table {_tags(t.get('Tags')).get('Name')} ({t['RouteTableId']})",
        lambda t: (f"ec2 delete-route-table --route-table-id {t['RouteTableId']}",),
        child=_always,
        unique=False,
    ),
    "aws_route_table_association": Kind(
        "route table association",
        ("subnet_id", "route_table_id"),
        _associations,
        # A subnet has one route table: the import names the one it has (an update then moves
        # it to the planned one if they differ).
        lambda i, a: a.get("SubnetId") == i["subnet_id"],
        lambda a: f"{a['SubnetId']}/{a['RouteTableId']}",
        lambda a: f"route table association of subnet {a['SubnetId']} ({a['RouteTableId']})",
        lambda a: (
            f"ec2 disassociate-route-table --association-id {a['RouteTableAssociationId']}",
        ),
        tags=_no_tags,
        child=_always,
        state_id=lambda a: str(a["RouteTableAssociationId"]),
    ),
    "aws_security_group": Kind(
        "security group",
        ("vpc_id", "name"),
        lambda aws, _env, items: _ec2(
            aws,
            "describe_security_groups",
            "SecurityGroups",
            {"vpc-id": _values(items, "vpc_id"), "group-name": _values(items, "name")},
        ),
        lambda i, g: g.get("VpcId") == i["vpc_id"] and g.get("GroupName") == i["name"],
        lambda g: g["GroupId"],
        lambda g: f"security group {g['GroupName']} ({g['GroupId']})",
        lambda g: (f"ec2 delete-security-group --group-id {g['GroupId']}",),
        child=_always,
    ),
    "aws_vpc_security_group_ingress_rule": Kind("ingress rule", **RULE),  # type: ignore[arg-type]
    "aws_vpc_security_group_egress_rule": Kind("egress rule", **RULE),  # type: ignore[arg-type]
    "aws_iam_role": Kind(
        "IAM role",
        ("name",),
        _roles,
        lambda i, r: r.get("RoleName") == i["name"],
        lambda r: r["RoleName"],
        lambda r: f"IAM role {r['RoleName']}",
        role_removal,
    ),
    "aws_iam_openid_connect_provider": Kind(
        "IAM OpenID Connect provider",
        ("url",),
        _oidc_providers,
        lambda i, p: (
            str(p.get("Url", "")).removeprefix("https://") == str(i["url"]).removeprefix("https://")
        ),
        lambda p: p["Arn"],
        lambda p: f"IAM OpenID Connect provider {p['Arn']}",
        lambda p: (
            f"iam delete-open-id-connect-provider --open-id-connect-provider-arn {p['Arn']}",
        ),
    ),
    "aws_iam_role_policy": Kind(
        "IAM role policy",
        ("role", "name"),
        _role_policies,
        lambda i, p: (p.get("RoleName"), p.get("PolicyName")) == (i["role"], i["name"]),
        lambda p: f"{p['RoleName']}:{p['PolicyName']}",
        lambda p: f"inline policy {p['PolicyName']} of IAM role {p['RoleName']}",
        lambda p: (
            f"iam delete-role-policy --role-name {p['RoleName']} --policy-name {p['PolicyName']}",
        ),
        tags=_no_tags,
        child=_always,
    ),
    "aws_iam_instance_profile": Kind(
        "IAM instance profile",
        ("name",),
        _profiles,
        lambda i, p: p.get("InstanceProfileName") == i["name"],
        lambda p: p["InstanceProfileName"],
        lambda p: f"IAM instance profile {p['InstanceProfileName']}",
        lambda p: (
            *(
                f"iam remove-role-from-instance-profile --instance-profile-name "
                f"{p['InstanceProfileName']} --role-name {r['RoleName']}"
                for r in p.get("Roles", [])
            ),
            f"iam delete-instance-profile --instance-profile-name {p['InstanceProfileName']}",
        ),
    ),
    "aws_launch_template": Kind(
        "launch template",
        ("name",),
        lambda aws, _env, items: _ec2(
            aws,
            "describe_launch_templates",
            "LaunchTemplates",
            {"launch-template-name": _values(items, "name")},
        ),
        lambda i, t: t.get("LaunchTemplateName") == i["name"],
        lambda t: t["LaunchTemplateId"],
        lambda t: f"launch template {t['LaunchTemplateName']} ({t['LaunchTemplateId']})",
        lambda t: (f"ec2 delete-launch-template --launch-template-id {t['LaunchTemplateId']}",),
    ),
    "aws_autoscaling_group": Kind(
        "autoscaling group",
        ("name",),
        lambda aws, _env, items: list(
            aws.client("autoscaling").describe_auto_scaling_groups(
                AutoScalingGroupNames=_values(items, "name")
            )["AutoScalingGroups"]
        ),
        lambda i, g: g.get("AutoScalingGroupName") == i["name"],
        lambda g: g["AutoScalingGroupName"],
        lambda g: f"autoscaling group {g['AutoScalingGroupName']}",
        lambda g: (
            "autoscaling delete-auto-scaling-group --auto-scaling-group-name "
            f"{g['AutoScalingGroupName']} --force-delete",
        ),
    ),
    "aws_lb": Kind(
        "load balancer",
        ("name",),
        lambda aws, _env, items: _elb(
            aws, items, "describe_load_balancers", "LoadBalancers", "LoadBalancerNotFound"
        ),
        lambda i, lb: lb.get("LoadBalancerName") == i["name"],
        lambda lb: lb["LoadBalancerArn"],
        lambda lb: f"load balancer {lb['LoadBalancerName']} ({lb['LoadBalancerArn']})",
        lambda lb: (f"elbv2 delete-load-balancer --load-balancer-arn {lb['LoadBalancerArn']}",),
    ),
    "aws_lb_target_group": Kind(
        "target group",
        ("name",),
        lambda aws, _env, items: _elb(
            aws, items, "describe_target_groups", "TargetGroups", "TargetGroupNotFound"
        ),
        lambda i, tg: tg.get("TargetGroupName") == i["name"],
        lambda tg: tg["TargetGroupArn"],
        lambda tg: f"target group {tg['TargetGroupName']} ({tg['TargetGroupArn']})",
        lambda tg: (f"elbv2 delete-target-group --target-group-arn {tg['TargetGroupArn']}",),
    ),
    "aws_lb_listener": Kind(
        "listener",
        ("load_balancer_arn", "port"),
        _listeners,
        lambda i, ls: (
            (ls.get("LoadBalancerArn"), _port(ls.get("Port")))
            == (i["load_balancer_arn"], _port(i["port"]))
        ),
        lambda ls: ls["ListenerArn"],
        lambda ls: f"listener :{ls['Port']} of load balancer {ls['LoadBalancerArn']}",
        lambda ls: (f"elbv2 delete-listener --listener-arn {ls['ListenerArn']}",),
        tags=_no_tags,
        child=_always,
    ),
    "aws_route53_zone": Kind(
        "DNS zone",
        ("name",),
        _zones,
        lambda i, z: z["Name"].rstrip(".") == str(i["name"]).rstrip("."),
        lambda z: _zone_id(z["Id"]),
        lambda z: f"DNS zone {z['Name'].rstrip('.')} ({_zone_id(z['Id'])})",
        lambda z: (f"route53 delete-hosted-zone --id {_zone_id(z['Id'])}",),
        child=_zone_vouched,
        unique=False,
    ),
    "aws_route53_record": Kind(
        "DNS record",
        ("zone_id", "name", "type"),
        _records,
        _record_matches,
        lambda r: record_id(r["HostedZoneId"], r["Name"], r["Type"]),
        lambda r: f"DNS record {_record_name(r['Name'])} {r['Type']} ({r['HostedZoneId']})",
        _record_removal,
        tags=_no_tags,
        child=_always,
    ),
}


# Reading Terraform's plan.


def _messages(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            yield message


def creates(lines: Iterable[str]) -> list[str]:
    """The addresses the plan (`terraform plan -json`'s stream) creates of a kind kubeplat can
    adopt: the only ones an interrupted run may have left in AWS."""
    found = []
    for message in _messages(lines):
        if message.get("type") != "planned_change":
            continue
        change = message.get("change", {})
        resource = change.get("resource", {})
        if change.get("action") == "create" and resource.get("resource_type") in KINDS:
            found.append(str(resource.get("addr", "")))
    return found


def imports(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(address, import id) of every resource the plan adopts, from `terraform plan -json`'s
    stream: a `planned_change` whose change carries `importing` (action "import" when nothing
    else changes, else the update or replace that follows the import)."""
    found = []
    for message in _messages(lines):
        if message.get("type") != "planned_change":
            continue
        change = message.get("change", {})
        importing = change.get("importing")
        if isinstance(importing, dict):
            address = str(change.get("resource", {}).get("addr", ""))
            found.append((address, str(importing.get("id", ""))))
    return found


def planned(document: Mapping[str, Any]) -> list[Planned]:
    """The resources of an adoptable kind that a plan (`terraform show -json`) creates, with
    their planned values that are known (an unknown one waits on another create)."""
    found = []
    for change in document.get("resource_changes", []):
        if change.get("mode") != "managed" or change.get("type") not in KINDS:
            continue
        body = change.get("change", {})
        if body.get("actions") != ["create"] or body.get("importing"):
            continue
        after = body.get("after") or {}
        unknown = body.get("after_unknown") or {}
        known = {k: v for k, v in after.items() if v is not None and unknown.get(k) is not True}
        found.append(Planned(str(change["address"]), str(change["type"]), known))
    return found


def state_ids(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(type, id) and (type, ARN) of everything the state holds: a resource in it is never
    adopted a second time (the type counts: a role and its instance profile share a name)."""
    ids: set[tuple[str, str]] = set()
    stack = [document.get("prior_state", {}).get("values", {}).get("root_module", {})]
    while stack:
        module = stack.pop()
        stack += module.get("child_modules", [])
        for resource in module.get("resources", []):
            if resource.get("mode") == "managed":
                values = resource.get("values") or {}
                kind = str(resource.get("type"))
                ids |= {(kind, str(values[k])) for k in ("id", "arn") if values.get(k)}
    return ids


# Deciding.


def verdict(candidate: Candidate, env: Environment) -> str:
    """Why `candidate` is not this environment's to adopt; "" when it is."""
    tags = candidate.tags or {}
    for key, ours in (("Environment", env.environment), ("Platform", env.platform)):
        if tags.get(key) and tags[key] != ours:
            return f"its tags say it belongs to {key.lower()} {tags[key]!r}, not {ours!r}"
    if tags.get("ManagedBy") and tags["ManagedBy"] != MANAGED_BY:
        return f"its tags say it is managed by {tags['ManagedBy']!r}"
    if candidate.child:
        return ""  # its parent (VPC, subnet, group, zone, role, load balancer) is ours
    if tags.get("Environment") != env.environment or tags.get("ManagedBy") != MANAGED_BY:
        return (
            f"it does not carry this environment's tags (Environment = {env.environment!r}, "
            f"ManagedBy = {MANAGED_BY!r})"
        )
    return ""


def decide(
    env: Environment, found: Iterable[Candidate], in_state: set[tuple[str, str]]
) -> tuple[list[Candidate], list[Blocker]]:
    """What to adopt (one per address), and what stops the run: a resource in the way that is
    not this environment's, or several of this environment's for one address."""
    by_address: dict[str, list[Candidate]] = {}
    for candidate in found:
        if candidate.key not in in_state:
            by_address.setdefault(candidate.address, []).append(candidate)
    adopted: list[Candidate] = []
    blockers: list[Blocker] = []
    for address, group in sorted(by_address.items()):
        kind = KINDS[group[0].type]
        ours = sorted((c for c in group if not verdict(c, env)), key=lambda c: c.import_id)
        theirs = [c for c in group if verdict(c, env)]
        if kind.unique:  # in the way of the create: never adopted, never left in place silently
            blockers += [
                Blocker(c.label, verdict(c, env) + ", so kubeplat does not adopt it", c.delete)
                for c in theirs
            ]
        if len(ours) > 1:
            ids = ", ".join(c.import_id for c in ours)
            blockers.append(
                Blocker(
                    ours[-1].label,
                    f"{len(ours)} {kind.noun}s carry this environment's name and tags for "
                    f"{address} ({ids}): kubeplat cannot tell which one to adopt",
                    tuple(command for c in ours[1:] for command in c.delete),
                )
            )
        elif ours and not (kind.unique and theirs):
            adopted.append(ours[0])
    return adopted, blockers


def lookup(aws: Aws, env: Environment, items: Iterable[Planned]) -> list[Candidate]:
    """What AWS holds that the planned creates would duplicate (their values that a search
    needs must be known), a describe call or two per kind."""
    from kubeplat import aws as aws_module

    by_type: dict[str, list[Planned]] = {}
    for item in items:
        kind = KINDS[item.type]
        if all(item.get(need) not in (None, "", {}) for need in kind.needs):
            by_type.setdefault(item.type, []).append(item)
    found: list[Candidate] = []
    for type_name, group in sorted(by_type.items()):
        kind = KINDS[type_name]
        with aws_module.errors(f"looking for {kind.noun}s an interrupted run left", aws):
            found += kind.match(type_name, group, kind.fetch(aws, env, group))
    return found


def command(aws: Aws, text: str) -> str:
    """An AWS CLI command run as kubeplat runs: the environment's profile and region, and in
    the sandbox its endpoint and credentials."""
    where = f" --region {aws.region}"
    if aws.child_env.get("AWS_PROFILE"):
        where += f" --profile {aws.child_env['AWS_PROFILE']}"
    before = ""
    if aws.endpoint:
        where += f" --endpoint-url {aws.endpoint}"
    if aws.sandbox:
        before = "".join(
            f"{name}={aws.child_env[name]} "
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if aws.child_env.get(name)
        )
    return f"{before}aws {text}{where}"


def import_blocks(adopted: Iterable[Candidate]) -> str:
    """`kubeplat_adopt.tf`: one import block per resource adopted."""
    text = [
        "# Written by kubeplat for one plan (kubeplat/adopt.py) and removed after it: resources\n"
        "# an interrupted run left in AWS, adopted into the state.\n"
    ]
    for candidate in adopted:
        import_id = json.dumps(candidate.import_id).replace("${", "$${").replace("%{", "%%{")
        text.append(f"\nimport {{\n  to = {candidate.address}\n  id = {import_id}\n}}\n")
    return "".join(text)


def _show(tf: Terraform, plan_file: Path) -> dict[str, Any]:
    from kubeplat import terraform

    result = tf.run("show", "-json", str(plan_file), on_line=lambda _line: None, check=False)
    if result.returncode != 0:
        raise tf.failure("show", result)
    try:
        document = terraform.json_document(result.output)
    except ValueError:
        raise tf.failure("show", result) from None
    return document if isinstance(document, dict) else {}


def adopt(
    prepared: Prepared,
    tf: Terraform,
    plan_file: Path,
    lines: list[str],
    replan: Callable[[], Result],
) -> Result | None:
    """After a plan (its `-json` lines in `lines`, saved to `plan_file`): adopt what an
    interrupted run left, planning again with an import block for each; None when there was
    nothing to adopt (the plan stands), else the last plan's result (`lines` then holds its
    stream). Raises `Unadoptable` when something in the way is not this environment's."""
    from kubeplat.pipeline import check_plan_file

    env, aws = prepared.env, prepared.aws
    chosen: dict[str, Candidate] = {}
    result: Result | None = None
    path = tf.module / ADOPT_FILE
    try:
        for _round in range(ROUNDS):
            if not creates(lines):
                break
            check_plan_file(plan_file)
            document = _show(tf, plan_file)
            wanted = [p for p in planned(document) if p.address not in chosen]
            taken = state_ids(document) | {c.key for c in chosen.values()}
            found, problems = decide(env, lookup(aws, env, wanted), taken)
            if problems:
                raise Unadoptable(
                    [
                        Blocker(b.label, b.reason, tuple(command(aws, c) for c in b.commands))
                        for b in problems
                    ]
                )
            if not found:
                break
            for candidate in found:
                chosen[candidate.address] = candidate
                console.status(
                    f"adopting {candidate.label} as {candidate.address}: in AWS with this "
                    "environment's name and tags but not in its state (left by an interrupted "
                    "run)",
                    "warn",
                )
            path.write_text(import_blocks(chosen.values()))
            lines.clear()
            result = replan()
            if result.returncode not in (0, 2):
                break
    finally:
        path.unlink(missing_ok=True)
    return result
