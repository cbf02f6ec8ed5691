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
from tests import iam_evaluator
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
    check_node_roles_read_their_own_prefixes_only(env, workdir)
    check_the_bucket_matrix(env, workdir)
    check_the_ebs_drivers_own_role(env, workdir)


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


def check_policies_with_parliament(policies: dict[str, str]) -> None:
    """Every policy the module makes, through parliament: nothing but the expected findings."""
    parliament = pytest.importorskip("parliament", reason="pip install parliament (dev extra)")
    for name, document in sorted(policies.items()):
        found = parliament.analyze_policy_string(document, ignore_private_auditors=True).findings
        unexpected = [f for f in found if (name, f.issue) not in PARLIAMENT_EXPECTED]
        assert not unexpected, (name, [(f.issue, f.detail) for f in unexpected])


def check_the_ebs_drivers_own_role(env: config.Environment, workdir: Path) -> None:
    """Issue 18: only the driver's service account, with a token for STS, may assume it; it
    manages only the cluster's volumes, and uses the key only through EC2."""
    role = json.loads(tf(workdir, "output", "-json", "ebs_csi_role").stdout)
    trust, policy = json.loads(role["trust"]), json.loads(role["policy"])
    nodes = json.loads(tf(workdir, "output", "-json", "node_policies").stdout)
    check_policies_with_parliament(
        {**{f"node_{k}": v for k, v in nodes.items()}, "ebs_policy": role["policy"],
         "ebs_trust": role["trust"]}
    )  # fmt: skip
    issuer = "kubeplat-example-secrets-oidc.s3.eu-west-1.amazonaws.com/example"
    provider = f"arn:aws:iam::123456789012:oidc-provider/{issuer}"
    [statement] = trust["Statement"]
    assert statement["Principal"] == {"Federated": provider}

    def assumes(subject: str, audience: str, principal: str = provider) -> bool:
        claims = {f"{issuer}:sub": subject, f"{issuer}:aud": audience}
        web = "sts:AssumeRoleWithWebIdentity"
        return iam_evaluator.decide_trust(trust, principal, web, role["arn"], claims) == "Allowed"

    own = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
    assert assumes(own, "sts.amazonaws.com")
    assert not assumes("system:serviceaccount:default:app", "sts.amazonaws.com")
    assert not assumes("system:serviceaccount:kube-system:ebs-csi-node-sa", "sts.amazonaws.com")
    assert not assumes(own, "https://kubernetes.default.svc.cluster.local")
    # The same issuer's provider in another account: its tokens are not this cluster's.
    assert not assumes(own, "sts.amazonaws.com", provider.replace("123456789012", "210987654321"))
    assert iam_evaluator.decide_trust(trust, provider, "sts:AssumeRole", role["arn"]) != "Allowed"
    volume = "arn:aws:ec2:eu-west-1:123456789012:volume/vol-1"
    tag = "kubernetes.io/cluster/example-kube"
    assert allowed(policy, "ec2:CreateVolume", volume, context={f"aws:RequestTag/{tag}": "owned"})
    assert not allowed(policy, "ec2:CreateVolume", volume)
    mine = {f"ec2:ResourceTag/{tag}": "owned"}
    for action in ("ec2:DeleteVolume", "ec2:AttachVolume", "ec2:ModifyVolume"):
        assert allowed(policy, action, volume, context=mine), action
        assert not allowed(policy, action, volume), action  # another cluster's, or untagged
    key = boto3.client("kms").describe_key(KeyId=env.kms_master_id)["KeyMetadata"]["Arn"]
    through_ec2 = {"kms:ViaService": "ec2.eu-west-1.amazonaws.com"}
    assert allowed(policy, "kms:GenerateDataKeyWithoutPlaintext", key, context=through_ec2)
    assert not allowed(policy, "kms:Decrypt", key)  # a ciphertext handed to KMS directly
    grant = {"kms:GrantIsForAWSResource": "true"}
    assert allowed(policy, "kms:CreateGrant", key, context=grant)
    assert not allowed(
        policy, "kms:CreateGrant", key, context={"kms:GrantIsForAWSResource": "false"}
    )
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::kubeplat-example-secrets/example/x")


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


def check_the_bucket_matrix(env: config.Environment, workdir: Path) -> None:
    output = tf(workdir, "output", "-json", "node_policies")
    policies = {layer: json.loads(doc) for layer, doc in json.loads(output.stdout).items()}
    assert set(policies) == {"secure", "compute"}
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


def check_node_roles_read_their_own_prefixes_only(env: config.Environment, workdir: Path) -> None:
    output = tf(workdir, "output", "-json", "node_policies")
    policies = {layer: json.loads(doc) for layer, doc in json.loads(output.stdout).items()}
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
    key = boto3.client("kms").describe_key(KeyId=env.kms_master_id)["KeyMetadata"]["Arn"]

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
