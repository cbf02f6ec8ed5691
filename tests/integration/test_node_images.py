"""Which image each layer boots, and its root device: the real Terraform module against the
sandbox's emulator, which carries the publishers' public SSM parameters and images as every AWS
account sees them (Debian's and Canonical's added by kubeplat.sandbox_world; Amazon's are moto's
own records of the real ones)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kubeplat import config, pki, render, terraform
from kubeplat.sandbox_world import PUBLISHED
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def tf(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["terraform", f"-chdir={workdir}", *args, "-no-color", "-input=false"],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def module(aws: str, environments: Path, terraform_cli_config: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    workdir = tmp_path / "module"
    shutil.copytree(REPO / "terraform", workdir)
    (workdir / "backend_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    init = tf(workdir, "init")
    assert init.returncode == 0, init.stdout + init.stderr
    env = config.load("example")
    import boto3

    kms = boto3.client("kms")
    try:
        kms.describe_key(KeyId=env.kms_master_id)
    except kms.exceptions.NotFoundException:
        kms.create_alias(
            AliasName=env.kms_master_id, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"]
        )
    files = pki.ensure(env, {}).files
    return workdir, env, files


def planned(workdir: Path, env: config.Environment, files: dict[str, bytes]) -> list[Any]:
    """Resolve the images (a targeted apply of the image records only), then plan everything:
    the plan's resource changes."""
    inputs = terraform.variables(env, render.bundle(env, files))
    (workdir / "kubeplat.auto.tfvars.json").write_text(json.dumps(inputs))
    resolved = tf(workdir, "apply", "-auto-approve", "-target=terraform_data.image")
    assert resolved.returncode == 0, resolved.stdout[-3000:] + resolved.stderr
    # The image records depend on the instance types alone: resolving them builds nothing else.
    created = [line for line in resolved.stdout.splitlines() if line.endswith(": Creating...")]
    assert all(line.startswith("terraform_data.image[") for line in created), created
    plan = tf(workdir, "plan", "-out=plan.bin")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr
    show = subprocess.run(
        ["terraform", f"-chdir={workdir}", "show", "-json", "plan.bin"],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(show.stdout)["resource_changes"])


def planned_templates(
    workdir: Path, env: config.Environment, files: dict[str, bytes]
) -> dict[str, Any]:
    """layer → the launch template's planned image and root device."""
    found = {}
    for change in planned(workdir, env, files):
        if change["type"] == "aws_launch_template":
            after = change["change"]["after"]
            found[change["index"]] = (
                after["image_id"],
                after["block_device_mappings"][0]["device_name"],
            )
    return found


def image(parameter_suffix: str) -> str:
    return next(i["ami_id"] for name, i in PUBLISHED if name.endswith(parameter_suffix))


def test_each_operating_system_boots_its_publishers_image_with_its_own_root_device(module) -> None:  # type: ignore[no-untyped-def]
    workdir, env, files = module
    # Debian 12 (the example's), on x86_64 for both layers.
    debian = planned_templates(workdir, env, files)
    assert debian == {
        "secure": (image("debian/release/12/latest/amd64"), "/dev/xvda"),
        "compute": (image("debian/release/12/latest/amd64"), "/dev/xvda"),
    }
    # Ubuntu's root device is /dev/sda1: the encrypted root volume must name it, not /dev/xvda.
    # A Graviton instance type for the compute layer takes the arm64 image.
    ubuntu = dataclasses.replace(env, node_os="ubuntu-24.04", compute_flavor="t4g.small")
    assert planned_templates(workdir, ubuntu, files) == {
        "secure": (image("24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"), "/dev/sda1"),
        "compute": (image("24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"), "/dev/sda1"),
    }
    # Amazon Linux 2023 from Amazon's own parameter (moto carries the real ids).
    al2023 = planned_templates(workdir, dataclasses.replace(env, node_os="al2023"), files)
    assert {layer: found[1] for layer, found in al2023.items()} == {
        "secure": "/dev/xvda",
        "compute": "/dev/xvda",
    }
    assert all(found[0].startswith("ami-") for found in al2023.values())
    # An AMI id given in coreos_image (the seed's variable) is booted as it is.
    own = dataclasses.replace(
        env, node_os="debian-12", coreos_image=image("release/12/latest/arm64")
    )
    assert {layer: f[0] for layer, f in planned_templates(workdir, own, files).items()} == {
        "secure": image("release/12/latest/arm64"),
        "compute": image("release/12/latest/arm64"),
    }


def test_load_balancer_names_fit_aws_limits(module) -> None:  # type: ignore[no-untyped-def]
    """AWS allows 32 characters, not starting with "internal-"; long names are cut and hashed,
    so two environments that differ only at the end still get names of their own."""
    workdir, env, files = module
    names = {}
    for environment in ("internal-staging-e1", "internal-staging-e2"):
        long = dataclasses.replace(env, environment=environment, platform="kubernetes-platform1")
        names[environment] = sorted(
            change["change"]["after"]["name"]
            for change in planned(workdir, long, files)
            if change["type"] in ("aws_lb", "aws_lb_target_group")
        )
    first, second = names.values()
    assert len(first) == 5, first
    for name in first + second:
        assert len(name) <= 32 and not name.startswith("internal-"), name
    assert not set(first) & set(second)
