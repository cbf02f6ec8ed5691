"""`terraform/variables.tf` is the one source of the variable set; everything else agrees."""

from __future__ import annotations

import re

import hcl2

from kubeplat import config
from tests.conftest import REPO


def declared() -> list[str]:
    return list(config.variables())


def test_every_variable_is_typed_described_with_an_example() -> None:
    for var in config.variables().values():
        assert var.type in ("string", "number", "bool"), var.name
        assert "Example:" in var.description, var.name


def test_spec_variable_set_is_declared() -> None:
    seed = {
        "aws_account",
        "aws_region",
        "aws_profile",
        "compute_asg_grace_period",
        "compute_asg_max",
        "compute_asg_min",
        "compute_flavor",
        "coreos_image",
        "dns_zone_name",
        "environment",
        "etcd_flavor",
        "kms_master_id",
        "kubeapi_access_list",
        "platform",
        "secrets_bucket_name",
        "secure_asg_max",
        "secure_asg_min",
        "ssh_access_list",
        "terraform_bucket_name",
    }
    extensions = {"sandbox", "kubernetes_version", "etcd_version", "topology", "customer"}
    assert seed | extensions <= set(declared())


def test_environment_fields_match_variables() -> None:
    assert config.environment_fields() == set(declared())


def test_sample_sets_every_variable_with_a_comment() -> None:
    path = REPO / "environments" / "env.tfvars.sample"
    with path.open() as handle:
        names = set(hcl2.load(handle)) - {"__comments__"}
    assert names == set(declared())
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\w+)\s*=", line)
        if match:
            assert lines[index - 1].startswith("#"), f"no comment above {match.group(1)}"


def test_sample_defaults_agree_with_module() -> None:
    with (REPO / "environments" / "env.tfvars.sample").open() as handle:
        sample = hcl2.load(
            handle, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True)
        )
    for name in (
        "sandbox",
        "kubernetes_version",
        "etcd_version",
        "topology",
        "customer",
        "platform",
    ):
        assert sample[name] == config.variables()[name].default, name


def test_readme_variable_table_matches_module() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]*) \|", section, re.MULTILINE)
    assert [name for name, _, _ in rows] == declared()
    for name, kind, default in rows:
        var = config.variables()[name]
        assert kind == var.type, name
        expected = "required" if var.required else f"`{_hcl(var.default)}`"
        assert default.strip() == expected, name


def _hcl(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
