"""The main job end to end: kubeplat up / plan / destroy in the sandbox.

The real Terraform binary and AWS provider, the S3 backend with its lock file, moto's server
as the sandbox (started by kubeplat itself, as for a user). Instances are emulated: moto records
them as running but boots nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import REPO, emulator_clients
from tests.integration import irsa
from tests.integration.sandbox_user import kubeplat

pytestmark = pytest.mark.integration


def clients(user: dict[str, str]) -> dict[str, object]:
    endpoint = kubeplat(user, "sandbox", "status").stdout.strip()
    assert endpoint.startswith("http://127.0.0.1:")
    return {
        name: boto3.client(
            name,
            endpoint_url=endpoint,
            region_name="eu-west-1",
            aws_access_key_id="sandbox",
            aws_secret_access_key="sandbox",
        )
        for name in ("s3", "ec2", "autoscaling")
    }


def running(ec2: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    pages = ec2.get_paginator("describe_instances").paginate(  # type: ignore[attr-defined]
        Filters=[
            {"Name": "tag:Environment", "Values": ["example"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                layer = {t["Key"]: t["Value"] for t in instance["Tags"]}["Layer"]
                counts[layer] = counts.get(layer, 0) + 1
    return counts


def test_up_without_terminal_or_flag_stops_at_once(user: dict[str, str]) -> None:
    started = time.monotonic()
    result = kubeplat(user, "up", "-e", "example")
    assert result.returncode == 1
    assert "Error: up needs --auto-approve when there is no terminal" in result.stderr
    assert "Traceback" not in result.stderr
    # At once: before the sandbox, AWS or Terraform were touched.
    assert "sandbox" not in result.stderr
    assert time.monotonic() - started < 30  # generous: a hang would be minutes
    destroy = kubeplat(user, "destroy", "-e", "example")
    assert destroy.returncode == 1 and "--auto-approve" in destroy.stderr


def test_up_plan_roll_destroy(user: dict[str, str], tmp_path: Path) -> None:
    # 1. A fresh `up` in the sandbox builds both layers.
    up = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert up.returncode == 0, up.stderr[-4000:]
    aws = clients(user)
    assert running(aws["ec2"]) == {"secure": 3, "compute": 2}
    assert "api_endpoint = https://" in up.stdout
    kubeconfig = (
        Path(user["CHECKOUT"]) / ".kubeplat" / "example" / "pki" / "kubeconfig" / "admin.conf"
    )
    assert kubeconfig.stat().st_mode & 0o777 == 0o600

    # 2. Straight after, plan changes nothing and would upload nothing.
    s3 = aws["s3"]
    before = {
        o["Key"]: o["ETag"]
        for o in s3.list_objects_v2(Bucket="kubeplat-example-secrets")["Contents"]
    }  # type: ignore[attr-defined]
    plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode", "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    report = json.loads(plan.stdout)
    assert (report["add"], report["change"], report["destroy"], report["uploads"]) == (0, 0, 0, [])
    after = {
        o["Key"]: o["ETag"]
        for o in s3.list_objects_v2(Bucket="kubeplat-example-secrets")["Contents"]
    }  # type: ignore[attr-defined]
    assert after == before

    # 3. No private key in the state; every secrets object SSE-KMS; both buckets versioned.
    state = s3.get_object(
        Bucket="kubeplat-example-terraform", Key="eu-west-1/example/terraform.tfstate"
    )  # type: ignore[attr-defined]
    assert state["ServerSideEncryption"] == "aws:kms"
    body = state["Body"].read()
    assert b"PRIVATE KEY" not in body
    assert b'"resources"' in body
    for key in after:
        head = s3.head_object(Bucket="kubeplat-example-secrets", Key=key)  # type: ignore[attr-defined]
        assert head["ServerSideEncryption"] == "aws:kms", key
    assert any(k.startswith("example/pki/locked/") for k in after)
    for bucket in ("kubeplat-example-secrets", "kubeplat-example-terraform"):
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"  # type: ignore[attr-defined]
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]  # type: ignore[attr-defined]
        assert all(block.values())

    # Pod roles (issue 18): the account trusts the cluster's service-account issuer, whose
    # published keys verify a token signed with the cluster's service-account key.
    check_pod_identity(user, aws)

    # 5. A changed template (etcd's configuration, which only the secure layer has) rolls
    # exactly that group.
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    etcd_conf = templates / "partials" / "node" / "etcd.conf.yml.j2"
    etcd_conf.write_text(etcd_conf.read_text() + "\n# a changed template\n")
    changed = kubeplat(
        {**user, "KUBEPLAT_TEMPLATES_DIR": str(templates)},
        "plan",
        "-e",
        "example",
        "-o",
        "json",
        "--detailed-exitcode",
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    report = json.loads(changed.stdout)
    assert report["rolls"] == ["secure"]
    assert report["roll_order"] == [
        "secure: the sandbox has no instance refresh: only instances launched from now on get "
        "the new template"
    ]
    assert report["uploads"] == ["cloudconfig/master"]

    # Day two (issue 7): instances, kubeconfig, ssh, manifests push.
    check_day_two(user, tmp_path)

    # 4. destroy leaves no running instance.
    destroyed = kubeplat(user, "destroy", "-e", "example", "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    assert running(aws["ec2"]) == {}


def check_pod_identity(user: dict[str, str], aws: dict[str, object]) -> None:
    from kubeplat.pkistore import LocalStore

    endpoint = kubeplat(user, "sandbox", "status").stdout.strip()
    iam = emulator_clients(endpoint, "eu-west-1", ("iam",))["iam"]
    outputs = json.loads(kubeplat(user, "output", "-e", "example", "-o", "json").stdout)
    issuer = outputs["service_account_issuer"]
    assert issuer == "https://kubeplat-example-secrets-oidc.s3.eu-west-1.amazonaws.com/example"
    provider = iam.get_open_id_connect_provider(
        OpenIDConnectProviderArn=outputs["oidc_provider_arn"]
    )
    assert provider["Url"] == issuer.removeprefix("https://")
    assert provider["ClientIDList"] == ["sts.amazonaws.com"]
    s3 = aws["s3"]
    bucket = "kubeplat-example-secrets-oidc"
    discovery = s3.get_object(Bucket=bucket, Key="example/.well-known/openid-configuration")  # type: ignore[attr-defined]
    jwks = s3.get_object(Bucket=bucket, Key="example/keys.json")  # type: ignore[attr-defined]
    files = LocalStore(Path(user["CHECKOUT"]) / ".kubeplat" / "example" / "pki").load()
    subject = "system:serviceaccount:default:app"
    token = irsa.sign(files, issuer, subject)
    assert irsa.verify(token, discovery["Body"].read(), jwks["Body"].read())["sub"] == subject


def check_day_two(user: dict[str, str], tmp_path: Path) -> None:
    table = kubeplat(user, "instances", "-e", "example")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "PRIVATE",
        "IP",
        "PUBLIC",
        "IP",
        "INSTANCE",
        "ID",
        "STATE",
        "ZONE",
        "LAYER",
        "LAUNCHED",
        "CONFIG",
    ]
    rows = [line.split() for line in lines[1:]]
    assert [r[6] for r in rows] == ["secure"] * 3 + ["compute"] * 2  # sorted by layer
    assert all(r[4] == "running" for r in rows)
    secure = kubeplat(user, "instances", "-e", "example", "--layer", "secure", "-o", "json")
    listed = json.loads(secure.stdout)
    assert len(listed) == 3 and {i["layer"] for i in listed} == {"secure"}
    assert set(listed[0]) == {
        "name", "private_ip", "public_ip", "instance_id", "state", "availability_zone", "layer",
        "launch_time", "config", "kubelet",
    }  # fmt: skip
    # No node runs in the sandbox: none has reported what it runs.
    assert {i["config"] for i in listed} == {"-"}
    assert {i["kubelet"] for i in listed} == {"-"}

    kc = tmp_path / "kc"
    made = kubeplat(user, "kubeconfig", "-e", "example", "--out", str(kc))
    assert made.returncode == 0, made.stderr
    assert kc.stat().st_mode & 0o777 == 0o600
    if shutil.which("kubectl"):
        view = subprocess.run(
            ["kubectl", "config", "view", "--kubeconfig", str(kc), "-o", "json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        config = json.loads(view.stdout)
        assert config["clusters"][0]["cluster"]["server"].startswith("https://example-kube-api")
        assert config["users"][0]["name"] == "admin@example"

    instance = listed[0]["instance_id"]
    ssh = kubeplat(user, "ssh", "-e", "example", "--print", instance)
    assert ssh.returncode == 0, ssh.stderr
    command = ssh.stdout.strip()
    assert command.startswith("ssh ") and "IdentityFile=" in command
    assert "pki/ssh/id_ed25519" in command
    assert f"core@{listed[0]['private_ip']}" in command
    unknown = kubeplat(user, "ssh", "-e", "example", "--print", "i-doesnotexist")
    assert unknown.returncode == 1
    assert "Error: no running instance 'i-doesnotexist' in environment example" in unknown.stderr

    templates = tmp_path / "templates-manifests"
    shutil.copytree(REPO / "templates", templates)
    proxy = templates / "manifests" / "node" / "kube-proxy.yaml.j2"  # every layer runs it
    proxy.write_text(
        proxy.read_text().replace("- --cluster-cidr", "- --v=2\n        - --cluster-cidr")
    )
    pushed = kubeplat(
        {**user, "KUBEPLAT_TEMPLATES_DIR": str(templates)}, "manifests", "push", "-e", "example"
    )
    assert pushed.returncode == 0, pushed.stderr
    # Made current in turn, the control plane's layer first.
    proxies = ["manifests/secure/kube-proxy.yaml", "manifests/compute/kube-proxy.yaml"]
    assert pushed.stdout.split() == proxies
    assert "nodes pick them up within 10 s (control-plane nodes one at a time)" in pushed.stderr
    again = kubeplat(
        {**user, "KUBEPLAT_TEMPLATES_DIR": str(templates)}, "manifests", "push", "-e", "example"
    )
    assert again.returncode == 0 and again.stdout == ""
    assert "nothing uploaded" in again.stderr
    # Back to the shipped templates, so the environment is as `up` left it.
    assert kubeplat(user, "manifests", "push", "-e", "example").stdout.split() == proxies

    # `kubeplat versions` (issue 18): what the bucket gives the nodes against what this
    # kubeplat installs: the same after up; an older kube-proxy pushed shows as differing.
    def versions() -> dict[str, dict[str, str]]:
        shown = kubeplat(user, "versions", "-e", "example", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        return {row["component"]: row for row in json.loads(shown.stdout)}

    rows = versions()
    assert {"kubelet", "etcd", "registry.k8s.io/kube-apiserver"} <= set(rows)
    assert all(row["runs"] == row["installs"] for row in rows.values()), rows
    older = templates / "manifests" / "node" / "kube-proxy.yaml.j2"
    older.write_text(
        (REPO / "templates/manifests/node/kube-proxy.yaml.j2")
        .read_text()
        .replace('{{ images["kube-proxy"] }}', "registry.k8s.io/kube-proxy:v1.33.4")
    )
    kubeplat(
        {**user, "KUBEPLAT_TEMPLATES_DIR": str(templates)}, "manifests", "push", "-e", "example"
    )
    proxy_row = versions()["registry.k8s.io/kube-proxy"]
    assert proxy_row["installs"].startswith("v1.33.5@sha256:")
    assert proxy_row["runs"] == "v1.33.4"
    table = kubeplat(user, "versions", "-e", "example")
    assert "v1.33.4 (differs)" in table.stdout
    assert "1 component(s) differ: kubeplat up -e example installs this kubeplat's" in table.stderr
    assert kubeplat(user, "manifests", "push", "-e", "example").stdout.split() == proxies


@pytest.mark.parametrize(
    "args",
    [
        ("instances", "-e", "nope"),
        ("versions", "-e", "nope"),
        ("kubeconfig", "-e", "nope"),
        ("ssh", "-e", "nope", "--print", "i-1"),
        ("manifests", "push", "-e", "nope"),
        ("output", "-e", "nope"),
        ("plan", "-e", "nope"),
    ],
)
def test_unknown_environment_everywhere(user: dict[str, str], args: tuple[str, ...]) -> None:
    result = kubeplat(user, *args)
    assert result.returncode == 1
    assert "Error: environment 'nope' not found" in result.stderr
    assert "Hint: available environments: example" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("instances", "-e", "example"),
        ("kubeconfig", "-e", "example"),
        ("ssh", "-e", "example", "--print", "i-1"),
        ("output", "-e", "example"),
    ],
)
def test_sandbox_down(user: dict[str, str], tmp_path: Path, args: tuple[str, ...]) -> None:
    nobody = {**user, "KUBEPLAT_STATE_DIR": str(tmp_path / "no-sandbox")}
    result = kubeplat(nobody, *args)
    assert result.returncode == 1
    assert "Error: the sandbox is not running" in result.stderr
    assert "Hint: start it and build the environment: kubeplat up -e example" in result.stderr
