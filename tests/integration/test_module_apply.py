"""The Terraform root module, applied for real to the sandbox emulator (moto's server).

The real Terraform binary and AWS provider; a local state here (the S3 backend is the main
job's test). Instances are emulated: moto records them as running but boots nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubeplat import config, pki, render, terraform
from tests import iam_evaluator, iam_mutants
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def tf(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["terraform", f"-chdir={workdir}", *args, "-no-color"],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def applied(aws: str, environments: Path, terraform_cli_config: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = config.load("example")
    kms = boto3.client("kms")
    try:  # other tests on this emulator may have made the sandbox key already
        kms.describe_key(KeyId=env.kms_master_id)
    except kms.exceptions.NotFoundException:
        kms.create_alias(
            AliasName=env.kms_master_id, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"]
        )
    files = pki.ensure(env, {}).files
    bundle = render.bundle(env, files)
    workdir = tmp_path / "module"
    shutil.copytree(REPO / "terraform", workdir)
    (workdir / "backend_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    inputs = terraform.variables(env, bundle)
    (workdir / "kubeplat.auto.tfvars.json").write_text(json.dumps(inputs))
    init = tf(workdir, "init", "-input=false")
    assert init.returncode == 0, init.stdout + init.stderr
    apply = tf(workdir, "apply", "-auto-approve", "-input=false")
    try:
        assert apply.returncode == 0, apply.stdout[-3000:] + apply.stderr
        yield env, workdir, files
    finally:
        destroy = tf(workdir, "destroy", "-auto-approve", "-input=false")
        assert destroy.returncode == 0, destroy.stdout[-3000:] + destroy.stderr


def test_apply_builds_both_layers_then_destroys(applied) -> None:  # type: ignore[no-untyped-def]
    """One apply (it takes minutes) checks the groups, instances, templates, roles and state."""
    env, workdir, files = applied
    check_groups_and_instances(workdir, files)
    policies, ebs_role = iam_policies(workdir)
    check_policies_with_parliament(
        {"node_secure": policies["secure"], "node_compute": policies["compute"],
         "ebs_policy": policies["ebs"], "ebs_trust": policies["ebs trust"]}
    )  # fmt: skip
    key = boto3.client("kms").describe_key(KeyId=env.kms_master_id)["KeyMetadata"]["Arn"]
    check_policies(env, key, ebs_role, policies)
    check_every_policy_mutant_is_caught(env, key, ebs_role, policies)


# The mutants of the policies no check catches, each with why (tests/iam_mutants.py): none
# lets any request through that the real policy refuses, or refuses one it lets through.
_VIA = "kms:ViaService {0}.eu-west-1.amazonaws.com → StringLike {0}.eu-west-1.amazonaws.com*"
_NO_LONGER_SERVICE = "no AWS service's name extends {}.eu-west-1.amazonaws.com"
_LOCKED = (
    "arn:aws:s3:::kubeplat-example-secrets/{0}/pki{1}/* → "
    "arn:aws:s3:::kubeplat-example-secrets/*/pki{1}/*"
)
_LINKED = (
    "arn:aws:iam::123456789012:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
    "AWSServiceRoleForElasticLoadBalancing"
)
EQUIVALENT_MUTANTS: dict[str, str] = {
    **{
        f"{layer}: {sid}: {_VIA.format('s3')}": _NO_LONGER_SERVICE.format("s3")
        for layer in ("secure", "compute")
        for sid in ("Decrypt", "EncryptStatus")
    },
    "ebs: EncryptWithTheEnvironmentsKey: " + _VIA.format("ec2"): _NO_LONGER_SERVICE.format("ec2"),
    **{
        f"{layer}: ListOwnConfigurationVersions: + s3:*": "the only other action that takes "
        "s3:prefix is s3:ListBucket, which ListOwnPrefixes allows for this prefix already"
        for layer in ("secure", "compute")
    },
    **{
        f"{layer}: NeverLocked: {_LOCKED.format('example', part)}": "it refuses more, not less: "
        "another environment's CA keys, which no Allow of this environment's roles reaches"
        for layer in ("secure", "compute")
        for part in ("/locked", "-staging")
    },
    "ebs trust: statement 1: + sts:*": "its conditions are the web identity token's claims, "
    "which no other STS request carries",
    **{
        "ebs trust: statement 1: StringEqualsIfExists kubeplat-example-secrets-oidc.s3.eu-west-1"
        f".amazonaws.com/example:{claim}": "STS refuses a token without sub, and one whose aud "
        "is not a client id of the OpenID Connect provider, before any policy"
        for claim in ("sub", "aud")
    },
    "ebs: ManageClusterVolumes: arn:aws:ec2:*:*:volume/* → *": "its actions authorize on a "
    "volume, and Attach/Detach also on an instance, which AttachToInstances allows already",
    "ebs: TagOnCreation: + ec2:*": "only ec2:CreateTags takes ec2:CreateAction",
    "ebs: TagOnCreation: ec2:CreateAction CreateVolume → StringLike CreateVolume*": "no EC2 "
    "action's name extends CreateVolume",
    "secure: CloudControllerLinkedRole: + iam:*": "only iam:CreateServiceLinkedRole takes "
    "iam:AWSServiceName",
    "secure: CloudControllerLinkedRole: StringEqualsIfExists iam:AWSServiceName": "IAM always "
    "sets iam:AWSServiceName on iam:CreateServiceLinkedRole",
    **{
        f"secure: CloudControllerLinkedRole: {_LINKED} → {wider}": "IAM names a service-linked "
        "role after its service, which the condition fixes"
        for wider in (
            "arn:aws:iam::123456789012:role/*",
            "arn:aws:iam::123456789012:role/aws-service-role/*",
            "arn:aws:iam::123456789012:role/aws-service-role/elasticloadbalancing.amazonaws.com/*",
        )
    },
    "secure: CloudControllerLinkedRole: iam:AWSServiceName elasticloadbalancing.amazonaws.com → "
    "StringLike elasticloadbalancing.amazonaws.com*": "no AWS service's name extends "
    "elasticloadbalancing.amazonaws.com",
    **{
        f"secure: {sid}: without {action}": "the secure layer is the API layer (stacked): "
        f"{other} allows it too"
        for sid, other in (
            ("CloudControllerRead", "Discovery"),
            ("Discovery", "CloudControllerRead"),
        )
        for action in ("autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances")
    },
    "secure: ReportToTheGroup: without autoscaling:CompleteLifecycleAction": "the secure layer "
    "is the API layer (stacked): RollTheLayers allows it on every group of the environment",
}


def check_every_policy_mutant_is_caught(
    env: config.Environment, key: str, ebs_role: str, policies: dict[str, dict[str, Any]]
) -> None:
    """Issue 20: every mutant of every policy is caught by check_policies, or listed above."""
    caught = iam_mutants.judge(
        policies, lambda given: check_policies(env, key, ebs_role, given), env.environment
    )
    survivors = {mutant for mutant, killed in caught.items() if not killed}
    print(f"IAM policy mutants: {len(caught) - len(survivors)} of {len(caught)} caught")
    assert survivors <= set(EQUIVALENT_MUTANTS), sorted(survivors - set(EQUIVALENT_MUTANTS))
    assert set(EQUIVALENT_MUTANTS) <= survivors, sorted(set(EQUIVALENT_MUTANTS) - survivors)


def iam_policies(workdir: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """Every IAM policy the module makes, by name: each layer's permissions (`secure`,
    `compute`), the EBS CSI driver's (`ebs`), and the trust policies (`secure trust`, `compute
    trust` as IAM holds them, `ebs trust`); and the EBS CSI driver's role ARN."""
    nodes = json.loads(tf(workdir, "output", "-json", "node_policies").stdout)
    ebs = json.loads(tf(workdir, "output", "-json", "ebs_csi_role").stdout)
    policies = {layer: json.loads(document) for layer, document in nodes.items()}
    policies["ebs"], policies["ebs trust"] = json.loads(ebs["policy"]), json.loads(ebs["trust"])
    iam = boto3.client("iam")
    for layer in nodes:
        role = iam.get_role(RoleName=f"example-kube-{layer}")["Role"]
        policies[f"{layer} trust"] = role["AssumeRolePolicyDocument"]
    return policies, ebs["arn"]


def check_policies(
    env: config.Environment, key: str, ebs_role: str, policies: dict[str, dict[str, Any]]
) -> None:
    """What each role may do, judged by the evaluator: every check of the policies, given the
    documents (the mutation run hands it mutants)."""
    check_node_roles_read_their_own_prefixes_only(env, key, policies)
    check_the_bucket_matrix(env, policies)
    check_the_key_matrix(env, key, policies)
    check_listings_and_versions(env, policies)
    check_the_groups_and_discovery(env, policies)
    check_the_cloud_controller(env, policies)
    check_the_node_roles_trust(policies)
    check_the_ebs_drivers_own_role(key, ebs_role, policies)


# What parliament (an IAM policy linter) reports that is right as written, with why.
PARLIAMENT_EXPECTED = {
    # Attaching a volume is authorized on the volume and on the instance: one statement for
    # each, so that the cluster-tag condition binds the volume (as AWS's own EBS CSI policy).
    ("ebs_policy", "RESOURCE_MISMATCH"),
    # A role's trust policy names no resource, and an account's own OpenID Connect provider is
    # not one of the federation sources parliament knows.
    ("ebs_trust", "MALFORMED"),
    ("ebs_trust", "UNKNOWN_FEDERATION_SOURCE"),
}


def check_policies_with_parliament(policies: dict[str, dict[str, Any]]) -> None:
    """Every policy the module makes, through parliament: nothing but the expected findings."""
    parliament = pytest.importorskip("parliament", reason="pip install parliament (dev extra)")
    for name, document in sorted(policies.items()):
        found = parliament.analyze_policy_string(
            json.dumps(document), ignore_private_auditors=True
        ).findings
        unexpected = [f for f in found if (name, f.issue) not in PARLIAMENT_EXPECTED]
        assert not unexpected, (name, [(f.issue, f.detail) for f in unexpected])


def check_the_node_roles_trust(policies: dict[str, dict[str, Any]]) -> None:
    """A node role is assumed by EC2 (for the instance profile) and by nothing else: not
    another service, not the account's own users and roles, not a web identity."""
    for layer in ("secure", "compute"):

        def assumes(principal: str, action: str = "sts:AssumeRole", layer: str = layer) -> bool:
            trust, role = policies[f"{layer} trust"], f"arn:aws:iam::123456789012:role/{layer}"
            return iam_evaluator.decide_trust(trust, principal, action, role) == "Allowed"

        assert assumes("ec2.amazonaws.com"), layer
        assert not assumes("lambda.amazonaws.com"), layer
        assert not assumes("ecs-tasks.amazonaws.com"), layer
        assert not assumes("arn:aws:iam::123456789012:role/someone"), layer
        assert not assumes("arn:aws:iam::210987654321:root"), layer
        assert not assumes("ec2.amazonaws.com", "sts:AssumeRoleWithWebIdentity"), layer


def check_the_ebs_drivers_own_role(
    key: str, ebs_role: str, policies: dict[str, dict[str, Any]]
) -> None:
    """Issue 18: only the driver's service account, with a token for STS, may assume it; it
    manages only the cluster's volumes, and uses the key only through EC2."""
    trust, policy = policies["ebs trust"], policies["ebs"]
    issuer = "kubeplat-example-secrets-oidc.s3.eu-west-1.amazonaws.com/example"
    provider = f"arn:aws:iam::123456789012:oidc-provider/{issuer}"
    assert [statement["Principal"] for statement in trust["Statement"]] == [{"Federated": provider}]

    def assumes(subject: str, audience: str, principal: str = provider) -> bool:
        claims = {f"{issuer}:sub": subject, f"{issuer}:aud": audience}
        web = "sts:AssumeRoleWithWebIdentity"
        return iam_evaluator.decide_trust(trust, principal, web, ebs_role, claims) == "Allowed"

    own = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
    assert assumes(own, "sts.amazonaws.com")
    assert not assumes("system:serviceaccount:default:app", "sts.amazonaws.com")
    assert not assumes("system:serviceaccount:kube-system:ebs-csi-node-sa", "sts.amazonaws.com")
    assert not assumes(own, "https://kubernetes.default.svc.cluster.local")
    # The same issuer's provider in another account: its tokens are not this cluster's.
    assert not assumes(own, "sts.amazonaws.com", provider.replace("123456789012", "210987654321"))
    assert iam_evaluator.decide_trust(trust, provider, "sts:AssumeRole", ebs_role) != "Allowed"
    volume = "arn:aws:ec2:eu-west-1:123456789012:volume/vol-1"
    tag = "kubernetes.io/cluster/example-kube"
    assert allowed(policy, "ec2:CreateVolume", volume, context={f"aws:RequestTag/{tag}": "owned"})
    assert not allowed(policy, "ec2:CreateVolume", volume)
    mine = {f"ec2:ResourceTag/{tag}": "owned"}
    for action in ("ec2:DeleteVolume", "ec2:AttachVolume", "ec2:ModifyVolume"):
        assert allowed(policy, action, volume, context=mine), action
        assert not allowed(policy, action, volume), action  # another cluster's, or untagged
    through_ec2 = {"kms:ViaService": "ec2.eu-west-1.amazonaws.com"}
    assert allowed(policy, "kms:GenerateDataKeyWithoutPlaintext", key, context=through_ec2)
    assert not allowed(policy, "kms:Decrypt", key)  # a ciphertext handed to KMS directly
    grant = {"kms:GrantIsForAWSResource": "true"}
    assert allowed(policy, "kms:CreateGrant", key, context=grant)
    assert not allowed(
        policy, "kms:CreateGrant", key, context={"kms:GrantIsForAWSResource": "false"}
    )
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::kubeplat-example-secrets/example/x")
    # A projected token's audience and a service account's name are whatever a pod spec says:
    # only the exact ones.
    assert not assumes(own, "sts.amazonaws.com.x")
    assert not assumes(f"{own}2", "sts.amazonaws.com")
    check_what_the_ebs_driver_does(key, policy)


# What the EBS CSI driver's controller calls (AWS's own policy for it, without snapshots).
EBS_DESCRIBES = (
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeSnapshots",
    "ec2:DescribeVolumes",
    "ec2:DescribeVolumesModifications",
    "ec2:DescribeVolumeStatus",
)
EBS_KEY_USES = (
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
)


def check_what_the_ebs_driver_does(key: str, policy: dict[str, Any]) -> None:
    for action in EBS_DESCRIBES:
        assert allowed(policy, action, "*"), action
    volume = "arn:aws:ec2:eu-west-1:123456789012:volume/vol-1"
    instance = "arn:aws:ec2:eu-west-1:123456789012:instance/i-0123"
    snapshot = "arn:aws:ec2:eu-west-1::snapshot/snap-1"
    tag = "kubernetes.io/cluster/example-kube"
    created, mine = {f"aws:RequestTag/{tag}": "owned"}, {f"ec2:ResourceTag/{tag}": "owned"}
    for action in ("ec2:AttachVolume", "ec2:DetachVolume"):
        assert allowed(policy, action, instance), action
        assert allowed(policy, action, volume, context=mine), action
        assert not allowed(policy, action, volume), action
    assert allowed(policy, "ec2:DetachVolume", volume, context=mine)
    for value in ("x", "owned2"):
        assert not allowed(
            policy, "ec2:CreateVolume", volume, context={f"aws:RequestTag/{tag}": value}
        )
        for action in ("ec2:DeleteVolume", "ec2:AttachVolume", "ec2:DetachVolume"):
            other = {f"ec2:ResourceTag/{tag}": value}
            assert not allowed(policy, action, volume, context=other), (action, value)
    assert not allowed(policy, "ec2:CreateVolume", snapshot, context=created)
    assert not allowed(policy, "ec2:CreateSnapshot", volume, context=created)
    assert not allowed(policy, "ec2:CreateSnapshot", volume, context=mine)
    assert not allowed(policy, "ec2:TerminateInstances", instance)
    assert not allowed(policy, "ec2:TerminateInstances", instance, context=mine)
    # Tags only as a volume is created (the cluster's tag is how the driver's volumes are told).
    creating = {"ec2:CreateAction": "CreateVolume"}
    assert allowed(policy, "ec2:CreateTags", volume, context=creating)
    assert not allowed(policy, "ec2:CreateTags", volume)
    assert not allowed(policy, "ec2:CreateTags", volume, context={"ec2:CreateAction": "Other"})
    assert not allowed(policy, "ec2:CreateTags", instance, context=creating)
    assert not allowed(policy, "ec2:CreateTags", snapshot, context=creating)
    # The environment's key, only through EC2.
    through_ec2 = {"kms:ViaService": "ec2.eu-west-1.amazonaws.com"}
    other_key = key.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    moved = [
        key.replace(":eu-west-1:", ":us-east-1:"),
        key.replace(":123456789012:", ":210987654321:"),
        other_key,
    ]
    for action in EBS_KEY_USES:
        assert allowed(policy, action, key, context=through_ec2), action
        assert not allowed(
            policy, action, key, context={"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
        )
        for arn in moved:
            assert not allowed(policy, action, arn, context=through_ec2), (action, arn)
    grant = {"kms:GrantIsForAWSResource": "true"}
    assert not allowed(policy, "kms:CreateGrant", key)
    for action in ("kms:RevokeGrant", "kms:ListGrants"):  # its grants are EBS's to manage
        assert not allowed(policy, action, key, context=grant), action
    for arn in moved:
        assert not allowed(policy, "kms:CreateGrant", arn, context=grant), arn
    for action in ("kms:ScheduleKeyDeletion", "kms:PutKeyPolicy", "kms:DisableKey"):
        assert not allowed(policy, action, key, context=through_ec2), action
        assert not allowed(policy, action, key), action


def check_groups_and_instances(workdir: Path, files: dict[str, bytes]) -> None:
    groups = {
        g["AutoScalingGroupName"]: g
        for g in boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    }
    secure, compute = groups["example-kube-secure"], groups["example-kube-compute"]
    assert (secure["MinSize"], secure["MaxSize"], secure["DesiredCapacity"]) == (3, 3, 3)
    assert (compute["MinSize"], compute["MaxSize"], compute["DesiredCapacity"]) == (2, 3, 2)
    assert compute["HealthCheckGracePeriod"] == 60
    for group, layer in ((secure, "secure"), (compute, "compute")):
        tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in group["Tags"]}
        assert tags["Name"] == (f"example-{layer}", True)
        assert tags["Environment"] == ("example", True)
        assert tags["Layer"] == (layer, True)
    running: dict[str, int] = {}
    for reservation in boto3.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:Environment", "Values": ["example"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]:
        for instance in reservation["Instances"]:
            layer = {t["Key"]: t["Value"] for t in instance["Tags"]}["Layer"]
            running[layer] = running.get(layer, 0) + 1
    assert running == {"secure": 3, "compute": 2}
    templates = boto3.client("ec2").describe_launch_templates()["LaunchTemplates"]
    templates = [t for t in templates if t["LaunchTemplateName"].startswith("example-")]
    assert len(templates) == 2
    # What the cloud controller manager finds the cluster's resources by (issue 18): every
    # subnet with its load balancer role, each layer's one security group, every instance.
    cluster = ("kubernetes.io/cluster/example-kube", "owned")
    for group in (secure, compute):
        assert {t["Key"]: t["Value"] for t in group["Tags"]}[cluster[0]] == cluster[1]
    ec2 = boto3.client("ec2")
    subnets = ec2.describe_subnets(Filters=[{"Name": "tag:Environment", "Values": ["example"]}])
    roles = []
    for subnet in subnets["Subnets"]:
        tags = {t["Key"]: t["Value"] for t in subnet["Tags"]}
        assert tags[cluster[0]] == cluster[1]
        roles.append(
            (
                tags["Tier"],
                tags.get("kubernetes.io/role/elb"),
                tags.get("kubernetes.io/role/internal-elb"),
            )
        )
    assert set(roles) == {("public", "1", None), ("private", None, "1")}
    groups_of_layers = ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{cluster[0]}", "Values": [cluster[1]]}]
    )["SecurityGroups"]
    assert sorted(g["GroupName"] for g in groups_of_layers) == [
        "example-kube-compute",
        "example-kube-secure",
    ]
    for template in templates:
        data = boto3.client("ec2").describe_launch_template_versions(
            LaunchTemplateId=template["LaunchTemplateId"]
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        # One hop: a pod (its own network namespace, a hop further) cannot reach the node's
        # role credentials; pods use roles of their own (IRSA).
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    # An unchanged second run changes nothing: no node would roll.
    plan = tf(workdir, "plan", "-detailed-exitcode", "-input=false")
    assert plan.returncode == 0, plan.stdout[-3000:]
    # No private key in Terraform's state.
    state = (workdir / "terraform.tfstate").read_text()
    assert "PRIVATE KEY" not in state
    assert files["bootstrap-token"].decode() not in state


def allowed(
    policy: dict[str, Any],
    action: str,
    resource: str,
    prefix: str | None = None,
    context: dict[str, str] | None = None,
) -> bool:
    """Whether a role's permission policy `policy` allows the request (`prefix` is `s3:prefix`,
    `context` the other keys), by AWS's evaluation as a maintained library implements it
    (tests/iam_evaluator.py; a trust policy goes through its decide_trust)."""
    known = dict(context or {})
    if prefix is not None:
        known["s3:prefix"] = prefix
    return iam_evaluator.allowed(policy, action, resource, known)


# Each node role × each object of the secrets bucket × each action: what it may do (G get,
# P put, D delete), by AWS's evaluation. Everything not listed is refused.
OBJECTS: dict[str, dict[str, str]] = {
    "cloudconfig/master": {"secure": "G"},
    "cloudconfig/worker": {"compute": "G"},
    "cloudconfig/master.x": {},
    "cloudconfig/worker.x": {},
    "pki/common/ca.crt": {"secure": "G", "compute": "G"},
    "pki/secure/etcd/peer.key": {"secure": "G"},
    "pki/secure/encryption-config.yaml": {"secure": "G"},
    "pki/compute/bootstrap-token": {"compute": "G"},
    "pki/locked/ca.key": {},
    "pki/locked/encryption/secretbox.key": {},
    "pki-staging/0a1b/pki/secure/apiserver.key": {},
    "manifests/secure/kube-apiserver.yaml": {"secure": "G"},
    "manifests/compute/kube-proxy.yaml": {"compute": "G"},
    "status/secure/i-0123/bootstrap.json": {"secure": "GP"},
    "status/compute/i-0123/bootstrap.json": {"compute": "GP"},
    "etcd/formation.json": {"secure": "GP"},
    "etcd/backup-done.json": {"secure": "GP"},
    "etcd/backup-request.json": {"secure": "G"},
    "etcd/restore/1.db": {"secure": "G"},
    "etcd/other.json": {},
    "etcd-backups/20261202T120000Z-i-0a.db": {"secure": "PD"},
    "rolls/compute.json": {},
    f"staged/{'0' * 64}": {},
    "other/x": {},
}
# …and each prefix listed (s3:ListBucket with s3:prefix).
LISTINGS: dict[str, set[str]] = {
    "cloudconfig/master": {"secure"},  # its own cloud-config (absent reads as 404, not 403)
    "cloudconfig/worker": {"compute"},
    "pki/common/": {"secure", "compute"},
    "pki/secure/": {"secure"},
    "pki/compute/": {"compute"},
    "manifests/secure/": {"secure"},
    "manifests/compute/": {"compute"},
    "status/secure/": {"secure"},
    "status/compute/": {"compute"},
    "etcd/formation.json": {"secure"},
    "etcd-backups/": {"secure"},
    "rolls/": {"secure"},  # the roll controller (the API layer, stacked here)
    "pki/locked/": set(),
    "pki/": set(),
    "staged/": set(),
    "": set(),
}


def check_the_bucket_matrix(env: config.Environment, policies: dict[str, dict[str, Any]]) -> None:
    policies = {layer: policies[layer] for layer in ("secure", "compute")}
    bucket = f"arn:aws:s3:::{env.secrets_bucket_name}"
    actions = {"G": "s3:GetObject", "P": "s3:PutObject", "D": "s3:DeleteObject"}
    found, wanted = {}, {}
    for name, expected in OBJECTS.items():
        for layer, policy in policies.items():
            for letter, action in actions.items():
                key = (name, layer, action)
                resource = f"{bucket}/{env.environment}/{name}"
                found[key] = allowed(policy, action, resource)
                wanted[key] = letter in expected.get(layer, "")
                # Another environment's object of the same name: never.
                elsewhere = f"{bucket}/prod/{name}"
                assert not allowed(policy, action, elsewhere), (name, layer, action)
    for prefix, layers in LISTINGS.items():
        for layer, policy in policies.items():
            key = (f"list {prefix or '(everything)'}", layer, "s3:ListBucket")
            found[key] = allowed(
                policy, "s3:ListBucket", bucket, prefix=f"{env.environment}/{prefix}"
            )
            wanted[key] = layer in layers
    wrong = sorted(k for k in found if found[k] != wanted[k])
    assert not wrong, [(*k, "allowed" if found[k] else "refused") for k in wrong]


def check_node_roles_read_their_own_prefixes_only(
    env: config.Environment, key: str, policies: dict[str, dict[str, Any]]
) -> None:
    bucket = f"arn:aws:s3:::{env.secrets_bucket_name}"
    obj = f"{bucket}/{env.environment}"
    secure, compute = policies["secure"], policies["compute"]
    assert allowed(secure, "s3:GetObject", f"{obj}/cloudconfig/master")
    assert allowed(secure, "s3:GetObject", f"{obj}/pki/secure/etcd/peer.key")
    assert allowed(secure, "s3:GetObject", f"{obj}/pki/common/ca.crt")
    assert allowed(secure, "s3:GetObject", f"{obj}/manifests/secure/kube-apiserver.yaml")
    assert allowed(secure, "s3:ListBucket", bucket, prefix=f"{env.environment}/manifests/secure/")
    assert allowed(compute, "s3:GetObject", f"{obj}/pki/compute/bootstrap-token")
    # kms:Decrypt only through S3, for what the layer may read (or the bucket, with a Bucket Key).

    def decrypts(policy: dict[str, Any], arn: str, via: str = f"s3.{env.aws_region}") -> bool:
        context = {
            "kms:EncryptionContext:aws:s3:arn": arn,
            "kms:ViaService": f"{via}.amazonaws.com",
        }
        return allowed(policy, "kms:Decrypt", key, context=context)

    assert decrypts(compute, f"{obj}/pki/compute/bootstrap-token")
    assert decrypts(compute, bucket)  # objects under an S3 Bucket Key
    assert not decrypts(compute, f"{obj}/pki/secure/etcd/peer.key")
    assert not decrypts(compute, f"{obj}/pki/locked/ca.key")
    assert not decrypts(compute, f"{obj}/pki/compute/bootstrap-token", via=f"ec2.{env.aws_region}")
    assert not allowed(compute, "kms:Decrypt", key)  # a ciphertext handed to KMS directly
    assert decrypts(secure, f"{obj}/etcd/formation.json")
    assert not decrypts(compute, f"{obj}/etcd/formation.json")
    # The CA keys and a staged PKI stay refused whatever is allowed beside them: with every S3
    # action on the whole bucket added to a node's policy.
    everything = {"Effect": "Allow", "Action": "s3:*", "Resource": f"{bucket}/*"}
    for policy in (secure, compute):
        added = {**policy, "Statement": [*policy["Statement"], everything]}
        assert allowed(added, "s3:GetObject", f"{obj}/other/x")
        for name in ("pki/locked/ca.key", "pki-staging/0a1b/pki/secure/apiserver.key"):
            for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
                assert not allowed(added, action, f"{obj}/{name}"), (name, action)
    for policy in (secure, compute):
        assert not allowed(policy, "s3:GetObject", f"{obj}/pki/locked/ca.key")
        assert not allowed(policy, "s3:GetObject", f"{obj}/pki/locked/admin.key")
        # A new PKI before it is published (issue 16): its CA keys too.
        assert not allowed(policy, "s3:GetObject", f"{obj}/pki-staging/0a1b/pki/locked/ca.key")
        assert not allowed(
            policy, "s3:GetObject", f"{obj}/pki-staging/0a1b/pki/secure/apiserver.key"
        )
        assert not allowed(policy, "s3:ListBucket", bucket, prefix=f"{env.environment}/pki/locked/")
        # Manifests staged for after the apply (issue 16): no node runs them before.
        assert not allowed(policy, "s3:GetObject", f"{obj}/staged/{'0' * 64}")
        assert not allowed(policy, "s3:ListBucket", bucket, prefix=f"{env.environment}/staged/")
        assert not allowed(policy, "s3:PutObject", f"{obj}/manifests/secure/x.yaml")
    # The AWS cloud controller manager (issue 18) runs with the API layer's role: it reads, and
    # makes load balancers; it changes or deletes only what carries the cluster's tag.
    tag = "aws:ResourceTag/kubernetes.io/cluster/example-kube"
    group = "arn:aws:ec2:eu-west-1:123456789012:security-group/sg-1"
    balancer = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/net/a/1"
    assert allowed(secure, "elasticloadbalancing:CreateLoadBalancer", balancer)
    assert not allowed(  # another region's (or account's)
        secure,
        "elasticloadbalancing:CreateLoadBalancer",
        balancer.replace("eu-west-1", "us-east-1"),
    )
    assert allowed(secure, "ec2:DescribeSubnets", "*")
    assert allowed(secure, "ec2:AuthorizeSecurityGroupIngress", group, context={tag: "owned"})
    assert not allowed(secure, "ec2:AuthorizeSecurityGroupIngress", group)
    assert not allowed(
        secure, "elasticloadbalancing:DeleteLoadBalancer", balancer, context={tag: "x"}
    )
    assert allowed(
        secure, "elasticloadbalancing:DeleteLoadBalancer", balancer, context={tag: "owned"}
    )
    assert not allowed(secure, "ec2:CreateVolume", "*")  # volumes are the EBS CSI driver's
    assert not allowed(secure, "ec2:CreateRoute", "*")  # no cloud routes: flannel's network
    linked = {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}
    elb_role = (
        "arn:aws:iam::123456789012:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
        "AWSServiceRoleForElasticLoadBalancing"
    )
    assert allowed(secure, "iam:CreateServiceLinkedRole", elb_role, context=linked)
    assert not allowed(
        secure, "iam:CreateServiceLinkedRole", elb_role, context={"iam:AWSServiceName": "x"}
    )
    assert not allowed(compute, "elasticloadbalancing:CreateLoadBalancer", balancer)
    assert not allowed(compute, "ec2:AuthorizeSecurityGroupIngress", group, context={tag: "owned"})
    # The key Secrets are encrypted with: raw, locked from every node; the config made from
    # it, only where an API server runs.
    for policy in (secure, compute):
        assert not allowed(policy, "s3:GetObject", f"{obj}/pki/locked/encryption/secretbox.key")
    assert allowed(secure, "s3:GetObject", f"{obj}/pki/secure/encryption-config.yaml")
    assert not allowed(compute, "s3:GetObject", f"{obj}/pki/secure/encryption-config.yaml")
    assert not decrypts(compute, f"{obj}/pki/secure/encryption-config.yaml")
    # Each layer is kept out of the other's secrets and configuration.
    assert not allowed(compute, "s3:GetObject", f"{obj}/pki/secure/etcd/peer.key")
    assert not allowed(compute, "s3:GetObject", f"{obj}/cloudconfig/master")
    assert not allowed(secure, "s3:GetObject", f"{obj}/cloudconfig/worker")
    # Each node reports its bootstrap under its own layer's status prefix, and may mark only
    # an instance of its own group unhealthy (so that the group replaces it).
    group = "arn:aws:autoscaling:{}:123456789012:autoScalingGroup:{}:autoScalingGroupName/{}"
    for layer, policy, other in (("secure", secure, "compute"), ("compute", compute, "secure")):
        status = f"{obj}/status/{layer}/i-0123/bootstrap.json"
        assert allowed(policy, "s3:PutObject", status)
        assert not allowed(policy, "s3:PutObject", f"{obj}/status/{other}/i-0123/bootstrap.json")
        assert not allowed(policy, "s3:PutObject", f"{obj}/cloudconfig/{layer}")
        own = group.format(env.aws_region, "0c1d", f"{env.environment}-{env.platform}-{layer}")
        theirs = group.format(env.aws_region, "0c1d", f"{env.environment}-{env.platform}-{other}")
        assert allowed(policy, "autoscaling:SetInstanceHealth", own)
        assert not allowed(policy, "autoscaling:SetInstanceHealth", theirs)
        # Only a secure node completes a group's lifecycle hooks and starts a refresh: its own
        # launch hook (it has joined etcd), and as the control plane (stacked) the roll
        # controller's, for every group of the environment; never another environment's.
        for action in ("autoscaling:CompleteLifecycleAction", "autoscaling:StartInstanceRefresh"):
            assert allowed(policy, action, own) == (layer == "secure")
            assert allowed(policy, action, theirs) == (layer == "secure")
            stranger = group.format(env.aws_region, "0c1d", f"other-{env.platform}-{layer}")
            assert not allowed(policy, action, stranger)
    # `kubeplat roll`'s requests: the roll controller (API layer) lists them, reads none, writes
    # none; no other layer sees them.
    rolls = f"{env.environment}/rolls/"
    assert allowed(secure, "s3:ListBucket", bucket, prefix=rolls)
    assert not allowed(compute, "s3:ListBucket", bucket, prefix=rolls)
    assert not allowed(secure, "s3:ListBucket", bucket, prefix=f"{env.environment}/")
    assert not allowed(secure, "s3:GetObject", f"{obj}/rolls/compute.json")
    assert not allowed(secure, "s3:PutObject", f"{obj}/rolls/compute.json")
    # The etcd members' formation record: the secure layer reads and writes it, nobody else.
    record = f"{obj}/etcd/formation.json"
    assert allowed(secure, "s3:PutObject", record) and allowed(secure, "s3:GetObject", record)
    assert allowed(secure, "s3:ListBucket", bucket, prefix=f"{env.environment}/etcd/formation.json")
    assert not allowed(compute, "s3:PutObject", record)
    assert not allowed(compute, "s3:GetObject", record)
    assert not allowed(secure, "s3:PutObject", f"{obj}/etcd/other.json")
    assert not allowed(secure, "s3:ListBucket", bucket, prefix=f"{env.environment}/pki/")
    assert not allowed(secure, "s3:ListBucket", bucket, prefix=f"{env.environment}/etcd-other/")
    # `kubeplat etcd backup` and `restore`: the members read the request and the snapshot to
    # restore, and answer the request; they never write either.
    request, restore = f"{obj}/etcd/backup-request.json", f"{obj}/etcd/restore/1.db"
    assert allowed(secure, "s3:GetObject", request) and allowed(secure, "s3:GetObject", restore)
    assert not allowed(secure, "s3:PutObject", request)
    assert not allowed(secure, "s3:PutObject", restore)
    assert allowed(secure, "s3:PutObject", f"{obj}/etcd/backup-done.json")
    assert not allowed(compute, "s3:GetObject", restore)
    # etcd snapshots: the secure layer writes and prunes them, and never reads one back.
    snapshot = f"{obj}/etcd-backups/20261202T120000Z-i-0a.db"
    assert allowed(secure, "s3:PutObject", snapshot) and allowed(
        secure, "s3:DeleteObject", snapshot
    )
    assert allowed(secure, "s3:ListBucket", bucket, prefix=f"{env.environment}/etcd-backups/")
    assert not allowed(secure, "s3:GetObject", snapshot)
    assert not allowed(compute, "s3:PutObject", snapshot)
    assert not allowed(secure, "s3:DeleteObject", f"{obj}/pki/secure/etcd/peer.key")
    # …and out of other environments sharing the bucket.
    assert not allowed(secure, "s3:GetObject", f"{bucket}/prod/pki/secure/etcd/peer.key")


# Where each layer's objects are encrypted for: the key decrypts, through S3, what the layer
# reads, and for the secure layer what etcd writes (a multipart snapshot upload decrypts its
# parts); it makes data keys only for what the layer writes under its own status prefix (the
# rest is written under the bucket's S3 Bucket Key, whose context is the bucket).
def decryptable(layer: str, name: str) -> bool:
    reads = "G" in OBJECTS[name].get(layer, "")
    return reads or (layer == "secure" and name.startswith(("etcd/", "etcd-backups/")))


def check_the_key_matrix(env: config.Environment, key: str, policies: dict[str, Any]) -> None:
    """Each node role × each object's encryption context × decrypt and make a data key, by the
    evaluator; only through S3 in the environment's region, only this bucket's objects, only
    the environment's key."""
    bucket = f"arn:aws:s3:::{env.secrets_bucket_name}"
    via = f"s3.{env.aws_region}.amazonaws.com"

    def may(policy: dict[str, Any], action: str, context: str, service: str = via) -> bool:
        known = {"kms:EncryptionContext:aws:s3:arn": context, "kms:ViaService": service}
        return allowed(policy, action, key, context=known)

    found, wanted = {}, {}
    for layer in ("secure", "compute"):
        policy = policies[layer]
        for name in OBJECTS:
            arn = f"{bucket}/{env.environment}/{name}"
            found[(name, layer, "decrypt")] = may(policy, "kms:Decrypt", arn)
            wanted[(name, layer, "decrypt")] = decryptable(layer, name)
            found[(name, layer, "data key")] = may(policy, "kms:GenerateDataKey", arn)
            wanted[(name, layer, "data key")] = name.startswith(f"status/{layer}/")
            for action in ("kms:Decrypt", "kms:GenerateDataKey"):
                # Another environment's object, another bucket named like this one.
                assert not may(policy, action, f"{bucket}/prod/{name}"), (layer, action, name)
                assert not may(policy, action, f"{bucket}-copy/{env.environment}/{name}")
        for action in ("kms:Decrypt", "kms:GenerateDataKey"):
            assert may(policy, action, bucket), (layer, action)  # under the S3 Bucket Key
            for other in (f"{bucket}-copy", "arn:aws:s3:::other"):
                assert not may(policy, action, other), (layer, action, other)
            readable = f"{bucket}/{env.environment}/status/{layer}/i-0123/bootstrap.json"
            for service in ("ec2", "s3"):
                elsewhere = f"{service}.us-east-1.amazonaws.com"
                assert not may(policy, action, readable, elsewhere), (layer, action, elsewhere)
            assert not may(policy, action, readable, f"ec2.{env.aws_region}.amazonaws.com")
            # Without S3 in between: no context, no service.
            assert not allowed(policy, action, key), (layer, action)
            assert not allowed(policy, action, key, context={"kms:ViaService": via})
            assert not allowed(
                policy, action, key, context={"kms:EncryptionContext:aws:s3:arn": readable}
            )
            other_key = key.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
            context = {"kms:EncryptionContext:aws:s3:arn": readable, "kms:ViaService": via}
            assert not allowed(policy, action, other_key, context=context), (layer, action)
            for region, account in (("us-east-1", "123456789012"), ("eu-west-1", "210987654321")):
                moved = key.replace(":eu-west-1:", f":{region}:").replace(
                    ":123456789012:", f":{account}:"
                )
                assert not allowed(policy, action, moved, context=context), (layer, moved)
        # Nothing else of the key, even through S3, for what the layer reads or writes.
        for arn in (f"{bucket}/{env.environment}/pki/common/ca.crt", readable, bucket):
            context = {"kms:EncryptionContext:aws:s3:arn": arn, "kms:ViaService": via}
            for action in (
                "kms:Encrypt",
                "kms:ReEncryptFrom",
                "kms:GenerateDataKeyWithoutPlaintext",
            ):
                assert not allowed(policy, action, key, context=context), (layer, action, arn)
        assert not allowed(policy, "kms:DescribeKey", key, context={"kms:ViaService": via})
        assert not allowed(policy, "kms:ScheduleKeyDeletion", key), layer
    wrong = sorted(k for k in found if found[k] != wanted[k])
    assert not wrong, [(*k, "allowed" if found[k] else "refused") for k in wrong]


CLOUDCONFIG = {"secure": "master", "compute": "worker"}


def check_listings_and_versions(env: config.Environment, policies: dict[str, Any]) -> None:
    """What a node lists, by prefix: only LISTINGS' prefixes of its own environment in this
    bucket, never without a prefix, never below an exact one; the versions of its own
    cloud-config only (a node reads the version it booted with)."""
    bucket = f"arn:aws:s3:::{env.secrets_bucket_name}"
    name = env.environment
    for layer, policy in ((layer, policies[layer]) for layer in ("secure", "compute")):
        other = "compute" if layer == "secure" else "secure"
        assert not allowed(policy, "s3:ListBucket", bucket), layer  # no s3:prefix: everything
        for prefix, layers in LISTINGS.items():
            if layer in layers:
                for elsewhere in ("arn:aws:s3:::other", f"{bucket}-copy"):
                    assert not allowed(policy, "s3:ListBucket", elsewhere, f"{name}/{prefix}")
                assert not allowed(policy, "s3:ListBucket", bucket, prefix=f"prod/{prefix}")
                if not prefix.startswith("cloudconfig/"):  # versions: below
                    assert not allowed(policy, "s3:ListBucketVersions", bucket, f"{name}/{prefix}")
        for exact in ("rolls/", "etcd-backups/"):  # listed as a whole, never below
            below = f"{name}/{exact}x"
            assert not allowed(policy, "s3:ListBucket", bucket, prefix=below), (layer, below)
        mine, theirs = CLOUDCONFIG[layer], CLOUDCONFIG[other]
        assert not allowed(policy, "s3:ListBucket", bucket, prefix=f"{name}/cloudconfig/")
        assert not allowed(policy, "s3:ListBucket", bucket, prefix=f"{name}/cloudconfig/{mine}.x")
        versions = f"{name}/cloudconfig/{mine}"
        assert allowed(policy, "s3:ListBucketVersions", bucket, prefix=versions), layer
        for prefix in (
            f"{name}/cloudconfig/{theirs}",
            f"{name}/cloudconfig/",
            f"{versions}.x",
            f"prod/cloudconfig/{mine}",
            f"{name}/pki/{layer}/",
        ):
            assert not allowed(policy, "s3:ListBucketVersions", bucket, prefix=prefix), prefix
        assert not allowed(policy, "s3:ListBucketVersions", bucket), layer
        for elsewhere in ("arn:aws:s3:::other", f"{bucket}-copy"):
            assert not allowed(policy, "s3:ListBucketVersions", elsewhere, prefix=versions)
        obj = f"{bucket}/{name}"
        assert allowed(policy, "s3:GetObjectVersion", f"{obj}/cloudconfig/{mine}"), layer
        for arn in (
            f"{obj}/cloudconfig/{theirs}",
            f"{obj}/cloudconfig/{mine}.x",
            f"{bucket}/prod/cloudconfig/{mine}",
            f"{bucket}-copy/{name}/cloudconfig/{mine}",
            f"{obj}/pki/{layer}/x.key",
            f"{obj}/pki/common/ca.crt",
        ):
            assert not allowed(policy, "s3:GetObjectVersion", arn), (layer, arn)
        # Nothing of the bucket itself.
        for action in ("s3:PutBucketPolicy", "s3:DeleteBucket", "s3:PutBucketVersioning"):
            assert not allowed(policy, action, bucket), (layer, action)


def check_the_groups_and_discovery(env: config.Environment, policies: dict[str, Any]) -> None:
    """What a node may do to Auto Scaling: report on its own group's instances (the secure
    layer also completes hooks and starts refreshes: the roll controller); nothing that changes
    a group's size or terminates an instance; and what the secure layer reads to find etcd's
    members and the rolls."""
    arn = "arn:aws:autoscaling:{}:{}:autoScalingGroup:0c1d:autoScalingGroupName/{}"
    for layer in ("secure", "compute"):
        policy = policies[layer]
        own = f"{env.environment}-{env.platform}-{layer}"
        for region, account in (("us-east-1", "123456789012"), (env.aws_region, "210987654321")):
            for group in (f"{env.environment}-{env.platform}-{g}" for g in ("secure", "compute")):
                moved = arn.format(region, account, group)
                for action in (
                    "autoscaling:SetInstanceHealth",
                    "autoscaling:CompleteLifecycleAction",
                    "autoscaling:StartInstanceRefresh",
                ):
                    assert not allowed(policy, action, moved), (layer, action, moved)
        mine = arn.format(env.aws_region, "123456789012", own)
        for action in (
            "autoscaling:UpdateAutoScalingGroup",
            "autoscaling:SetDesiredCapacity",
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            "autoscaling:DeleteAutoScalingGroup",
            "autoscaling:CancelInstanceRefresh",
            "autoscaling:PutLifecycleHook",
        ):
            assert not allowed(policy, action, mine), (layer, action)
        for action in (
            "autoscaling:DescribeInstanceRefreshes",
            "ec2:DescribeLaunchTemplateVersions",
            "ec2:DescribeInstances",
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:DescribeLifecycleHooks",
        ):
            assert allowed(policy, action, "*") == (layer == "secure"), (layer, action)
        for action in ("ec2:TerminateInstances", "ec2:RunInstances", "ec2:StopInstances"):
            instance = f"arn:aws:ec2:{env.aws_region}:123456789012:instance/i-0123"
            assert not allowed(policy, action, instance), (layer, action)


# What the AWS cloud controller manager calls (its service and node controllers, and the
# load balancers of Services of type LoadBalancer): read anywhere; make in the environment's
# region and account; change or delete only what carries the cluster's tag.
CLOUD_CONTROLLER_READS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeTags",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceTopology",
    "ec2:DescribeRegions",
    "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeLoadBalancerAttributes",
    "elasticloadbalancing:DescribeLoadBalancerPolicies",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
)
CLOUD_CONTROLLER_MAKES = (
    "ec2:CreateSecurityGroup",
    "ec2:CreateTags",
    "elasticloadbalancing:AddTags",
    "elasticloadbalancing:AttachLoadBalancerToSubnets",
    "elasticloadbalancing:ApplySecurityGroupsToLoadBalancer",
    "elasticloadbalancing:ConfigureHealthCheck",
    "elasticloadbalancing:CreateListener",
    "elasticloadbalancing:CreateLoadBalancer",
    "elasticloadbalancing:CreateLoadBalancerListeners",
    "elasticloadbalancing:CreateLoadBalancerPolicy",
    "elasticloadbalancing:CreateTargetGroup",
    "elasticloadbalancing:DeleteListener",
    "elasticloadbalancing:DeleteLoadBalancerListeners",
    "elasticloadbalancing:DeleteTargetGroup",
    "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
    "elasticloadbalancing:DeregisterTargets",
    "elasticloadbalancing:DetachLoadBalancerFromSubnets",
    "elasticloadbalancing:ModifyListener",
    "elasticloadbalancing:ModifyLoadBalancerAttributes",
    "elasticloadbalancing:ModifyTargetGroup",
    "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    "elasticloadbalancing:RegisterTargets",
    "elasticloadbalancing:SetLoadBalancerPoliciesForBackendServer",
    "elasticloadbalancing:SetLoadBalancerPoliciesOfListener",
    "elasticloadbalancing:SetSecurityGroups",
)
CLOUD_CONTROLLER_CHANGES_TAGGED = (
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:DeleteSecurityGroup",
    "ec2:ModifyInstanceAttribute",
    "ec2:RevokeSecurityGroupIngress",
    "elasticloadbalancing:DeleteLoadBalancer",
)


def check_the_cloud_controller(env: config.Environment, policies: dict[str, Any]) -> None:
    """Issue 18: the cloud controller manager runs with the API layer's role (secure)."""
    secure, compute = policies["secure"], policies["compute"]
    tag = "aws:ResourceTag/kubernetes.io/cluster/example-kube"

    def resource(action: str, region: str = env.aws_region, account: str = "123456789012") -> str:
        if action.startswith("ec2:"):
            kind = "instance/i-0123" if "Instance" in action else "security-group/sg-1"
            return f"arn:aws:ec2:{region}:{account}:{kind}"
        kind = "loadbalancer/net/a/1"
        if action.endswith(("TargetGroup", "Targets")):
            kind = "targetgroup/a/1"
        elif action.endswith(("DeleteListener", "ModifyListener")):
            kind = "listener/net/a/1/2"
        return f"arn:aws:elasticloadbalancing:{region}:{account}:{kind}"

    for action in CLOUD_CONTROLLER_READS:
        assert allowed(secure, action, "*"), action
        assert not allowed(compute, action, "*") or action == "ec2:DescribeInstances", action
    elsewhere = (("us-east-1", "123456789012"), (env.aws_region, "210987654321"))
    for action in CLOUD_CONTROLLER_MAKES:
        assert allowed(secure, action, resource(action)), action
        assert not allowed(compute, action, resource(action)), action
        for region, account in elsewhere:
            assert not allowed(secure, action, resource(action, region, account)), action
    for action in CLOUD_CONTROLLER_CHANGES_TAGGED:
        for value in ("owned", "shared"):
            assert allowed(secure, action, resource(action), context={tag: value}), action
            for region, account in elsewhere:
                moved = resource(action, region, account)
                assert not allowed(secure, action, moved, context={tag: value}), action
        assert not allowed(secure, action, resource(action), context={tag: "x"}), action
        assert not allowed(secure, action, resource(action)), action  # untagged
    # Nothing else, even of what carries the cluster's tag.
    owned = {tag: "owned"}
    vpc = f"arn:aws:ec2:{env.aws_region}:123456789012:vpc/vpc-1"
    for action, arn in (
        ("ec2:DeleteVpc", vpc),
        ("ec2:TerminateInstances", resource("ec2:ModifyInstanceAttribute")),
        ("ec2:DeleteSubnet", f"arn:aws:ec2:{env.aws_region}:123456789012:subnet/subnet-1"),
        ("elasticloadbalancing:SetIpAddressType", resource("elasticloadbalancing:x")),
        ("elasticloadbalancing:RemoveTags", resource("elasticloadbalancing:x")),
    ):
        assert not allowed(secure, action, arn, context=owned), action
        assert not allowed(secure, action, arn), action
    assert not allowed(secure, "autoscaling:UpdateAutoScalingGroup", "*")
    assert not allowed(secure, "ec2:CreateVpc", vpc)
    linked = {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}
    role = (
        "arn:aws:iam::{}:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
        "AWSServiceRoleForElasticLoadBalancing"
    )
    create = "iam:CreateServiceLinkedRole"
    assert allowed(secure, create, role.format("123456789012"), context=linked)
    assert not allowed(secure, create, role.format("210987654321"), context=linked)
    assert not allowed(compute, create, role.format("123456789012"), context=linked)
    for action in ("iam:PassRole", "iam:DeleteServiceLinkedRole", "iam:AttachRolePolicy"):
        assert not allowed(secure, action, role.format("123456789012")), action
