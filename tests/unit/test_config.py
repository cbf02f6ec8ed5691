"""Environment files: every check of SPEC's list, fed a broken file, reports what a user needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubeplat import config
from tests.conftest import DATA, REPO

EXAMPLE = (REPO / "environments" / "example.tfvars").read_text()


def write_env(environments: Path, name: str, text: str) -> Path:
    path = environments / f"{name}.tfvars"
    path.write_text(text)
    return path


def variant(**changes: str | None) -> str:
    """The example file with some lines replaced (value text) or removed (None)."""
    text = EXAMPLE.replace('environment              = "example"', 'environment = "dev"')
    for name, value in changes.items():
        pattern = re.compile(rf"^{name}\s*=.*$", re.MULTILINE)
        if value is None:
            text = pattern.sub("", text)
        elif pattern.search(text):
            text = pattern.sub(f"{name} = {value}", text)
        else:
            text += f"\n{name} = {value}\n"
    return text


def test_example_is_valid(environments: Path) -> None:
    env = config.load("example")
    assert env.sandbox is True
    assert env.environment == "example"
    assert env.secure_asg_min == 3
    assert env.kubeapi_cidrs == ("127.0.0.1/32", "10.0.0.0/8")


def test_numbers_written_as_strings_are_accepted(environments: Path) -> None:
    write_env(environments, "dev", variant(compute_asg_max='"5"', secure_asg_min='"3"'))
    env = config.load("dev")
    assert env.compute_asg_max == 5 and env.secure_asg_min == 3


def test_defaults_fill_optional_variables(environments: Path) -> None:
    write_env(environments, "dev", variant(topology=None, sandbox=None, compute_flavor=None))
    env = config.load("dev")
    assert (env.topology, env.sandbox, env.compute_flavor) == ("stacked", False, "t3.small")


def located(environments: Path, text: str, name: str = "dev") -> list[config.Problem]:
    """The errors (not the warnings) `text` as environment `name` has, as problems."""
    write_env(environments, name, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(name)
    return [p for p in info.value.problems if not p.warning]


def problems_of(environments: Path, text: str, name: str = "dev") -> list[str]:
    return [str(p) for p in located(environments, text, name)]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # unknown variable, with a did-you-mean
        (
            {"compute_asg_maxx": "3"},
            r"compute_asg_maxx: unknown variable \(hint: did you mean 'compute_asg_max'\?\)",
        ),
        # wrong types
        ({"compute_asg_max": '"five"'}, r"compute_asg_max: expected a whole number, got 'five'"),
        ({"sandbox": '"yes"'}, r"sandbox: expected true or false, got 'yes'"),
        ({"aws_region": '["eu-west-1"]'}, r"aws_region: expected a string, got a list"),
        ({"dns_zone_name": '"${var.zone}"'}, r"dns_zone_name: expressions are not allowed"),
        # placeholders
        ({"aws_region": '"REQUIRED"'}, r"aws_region: placeholder 'REQUIRED' left in"),
        ({"kms_master_id": '"TODO"'}, r"kms_master_id: placeholder 'TODO' left in"),
        (
            {"aws_account": '"AWS_ACCOUNT|ALIAS"'},
            r"aws_account: placeholder 'AWS_ACCOUNT\|ALIAS' left in",
        ),
        ({"ssh_access_list": '"IP,IP"'}, r"ssh_access_list: placeholder 'IP,IP' left in"),
        # malformed CIDR or IP
        (
            {"ssh_access_list": '"10.0.0.300"'},
            r"ssh_access_list: '10.0.0.300' is not an IP or CIDR",
        ),
        (
            {"kubeapi_access_list": '"10.0.0.1/33"'},
            r"kubeapi_access_list: '10.0.0.1/33' is not an IP or CIDR",
        ),
        (
            {"kubeapi_access_list": '"10.0.0.1/8"'},
            r"kubeapi_access_list: '10.0.0.1/8' is not an IP or CIDR .*host bits",
        ),
        ({"ssh_access_list": '"10.0.0.1,"'}, r"ssh_access_list: has an empty entry"),
        # min above max
        (
            {"compute_asg_min": "4", "compute_asg_max": "2"},
            r"compute_asg_min: 4 is above compute_asg_max \(2\)",
        ),
        (
            {"secure_asg_min": "5", "secure_asg_max": "3"},
            r"secure_asg_min: 5 is above secure_asg_max \(3\)",
        ),
        # a roll's surge: AWS refuses percentages more than 100 apart, and a maximum under 100
        (
            {"compute_roll_min_healthy": "50", "compute_roll_max_healthy": "160"},
            r"compute_roll_max_healthy: 160 is more than 100 above compute_roll_min_healthy "
            r"\(50\) \(hint: make compute_roll_max_healthy at most 150",
        ),
        (
            {"compute_roll_max_healthy": "90"},
            r"compute_roll_max_healthy: .*90.* 100",
        ),
        # bucket names
        (
            {"secrets_bucket_name": '"My_Bucket"'},
            r"secrets_bucket_name: 'My_Bucket' is not a valid S3 bucket name",
        ),
        (
            {"terraform_bucket_name": '"ab"'},
            r"terraform_bucket_name: 'ab' is not a valid S3 bucket name: 2 characters",
        ),
        ({"terraform_bucket_name": '"192.168.1.1"'}, r"formatted as an IP address"),
        (
            {"terraform_bucket_name": '"kubeplat-example-secrets"'},
            r"terraform_bucket_name: is the same bucket as secrets_bucket_name",
        ),
        # the service-account issuer's bucket (public: never one of the others; no dots)
        (
            {
                "secrets_bucket_name": '"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"'
            },
            r"oidc_bucket_name: 'a{60}-oidc' \(<secrets_bucket_name>-oidc\) is not a valid name "
            r"for the service-account issuer's bucket: 65 characters",
        ),
        (
            {"oidc_bucket_name": '"issuer.example.com"'},
            r"oidc_bucket_name: 'issuer.example.com' is not a valid name for the service-account "
            r"issuer's bucket: dots \(TLS\) \(hint: set oidc_bucket_name",
        ),
        (
            {"oidc_bucket_name": '"kubeplat-example-secrets"'},
            r"oidc_bucket_name: is the same bucket as secrets_bucket_name",
        ),
        # region and instance type shapes
        (
            {"aws_region": '"europe"'},
            r"aws_region: 'europe' is not an AWS region \(hint: e.g. \"eu-west-1\"\)",
        ),
        ({"compute_flavor": '"small"'}, r"compute_flavor: 'small' is not an EC2 instance type"),
        ({"etcd_flavor": '"t3-small"'}, r"etcd_flavor: 't3-small' is not an EC2 instance type"),
        # other shapes
        ({"coreos_image": '"ubuntu"'}, r"coreos_image: 'ubuntu' is not an AMI id"),
        ({"aws_account": '"12345"'}, r"aws_account: '12345' is not an account id or alias"),
        (
            {"kms_master_id": '"my key"'},
            r"kms_master_id: 'my key' is not a KMS key id, ARN or alias",
        ),
        ({"topology": '"mesh"'}, r"topology: 'mesh' is not a topology"),
        # node operating system and artifact mirror
        (
            {"node_os": '"debian12"'},
            r"node_os: 'debian12' is not a supported operating system \(hint: did you mean 'debian-12'\?\)",
        ),
        (
            {"node_os": '"windows"'},
            r"node_os: 'windows' is not a supported .*use one of: debian-12, ubuntu-24.04, al2023",
        ),
        (
            {"artifact_mirror": '"ftp://mirror.example.com"'},
            r"artifact_mirror: 'ftp://mirror.example.com' is not an https://, http:// or s3:// URL",
        ),
        (
            {"kubernetes_version": '"v1.30"'},
            r"kubernetes_version: 'v1.30' is not a Kubernetes version",
        ),
        # environment different from the file's name
        (
            {"environment": '"prod"'},
            r"environment: is 'prod' but the file is dev.tfvars \(hint: set environment = \"dev\"",
        ),
        # a required variable left out
        ({"dns_zone_name": None}, r"dns_zone_name: missing"),
        # a negative size
        ({"compute_asg_min": "-1"}, r"compute_asg_min: is -1; it must be 0 or more"),
    ],
)
def test_each_check_names_file_line_variable_and_hint(
    environments: Path, changes: dict[str, str | None], expected: str
) -> None:
    problems = problems_of(environments, variant(**changes))
    assert any(re.search(expected, p) for p in problems), problems
    for problem in problems:
        assert problem.startswith("environments/dev.tfvars")
        assert "hint:" in problem


def test_problem_names_its_line(environments: Path) -> None:
    text = variant(aws_region='"europe"')
    line = next(
        i for i, text_line in enumerate(text.splitlines(), 1) if text_line.startswith("aws_region")
    )
    problems = problems_of(environments, text)
    assert any(p.startswith(f"environments/dev.tfvars:{line}: aws_region:") for p in problems)


def test_five_problems_are_all_reported(environments: Path) -> None:
    text = variant(
        aws_region='"REQUIRED"',
        compute_flavor='"small"',
        ssh_access_list='"1.2.3.999"',
        secrets_bucket_name='"Bad_Bucket"',
        compute_asg_min="9",
    )
    problems = problems_of(environments, text)
    assert len(problems) == 5, problems
    for name in (
        "aws_region",
        "compute_flavor",
        "ssh_access_list",
        "secrets_bucket_name",
        "compute_asg_min",
    ):
        assert any(f": {name}:" in p for p in problems)


def test_even_etcd_count_is_a_warning_not_a_failure(environments: Path) -> None:
    write_env(environments, "dev", variant(secure_asg_max="4"))
    env = config.load("dev")
    assert [w.variable for w in env.warnings] == ["secure_asg_max"]
    assert "quorum" in str(env.warnings[0])


def test_open_to_the_world_is_a_warning(environments: Path) -> None:
    write_env(environments, "dev", variant(ssh_access_list='"0.0.0.0/0"'))
    env = config.load("dev")
    assert "whole internet" in str(env.warnings[0])


def test_duplicate_variable(environments: Path) -> None:
    problems = problems_of(environments, variant() + '\naws_region = "eu-west-2"\n')
    assert any("aws_region: set more than once" in p for p in problems)


def test_syntax_error_names_the_line(environments: Path) -> None:
    problems = problems_of(environments, 'aws_region = "eu-west-1"\nplatform = = "kube"\n')
    assert problems == [
        "environments/dev.tfvars:2: not a valid tfvars file: unexpected input at column 12 "
        "(hint: every line is NAME = VALUE, strings in double quotes)"
    ]


def test_binary_garbage(environments: Path) -> None:
    (environments / "dev.tfvars").write_bytes(b"\x7fELF\x00\x01\x02garbage")
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    assert "is binary" in str(info.value.problems[0])


def test_directory_where_a_file_belongs(environments: Path) -> None:
    (environments / "dev.tfvars").mkdir()
    with pytest.raises(config.ConfigError) as info:
        config.load("dev")
    assert "is a directory" in str(info.value.problems[0])


def test_unknown_environment_lists_the_known_ones(environments: Path) -> None:
    with pytest.raises(config.EnvironmentNotFound) as info:
        config.load("prod")
    assert "environment 'prod' not found" in info.value.message
    assert "example" in info.value.hint


def test_env_dir_and_path(
    environments: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere"
    environments.rename(moved)
    assert config.load("example", str(moved)).environment == "example"
    monkeypatch.setenv("KUBEPLAT_ENV_DIR", str(moved))
    assert config.load("example").environment == "example"
    assert config.load(str(moved / "example.tfvars")).environment == "example"


def test_seed_sample_names_every_unfilled_variable(environments: Path) -> None:
    problems = problems_of(environments, (DATA / "seed.tfvars").read_text())
    unfilled = sorted(re.search(r": (\w+): placeholder", p).group(1) for p in problems)  # type: ignore[union-attr]
    assert unfilled == [
        "aws_account",
        "aws_region",
        "kms_master_id",
        "kubeapi_access_list",
        "ssh_access_list",
    ]
    assert len(problems) == 5


def test_workdir_is_beside_environments(environments: Path, tmp_path: Path) -> None:
    assert config.load("example").workdir == tmp_path.resolve() / ".kubeplat" / "example"


def test_node_os_and_artifact_mirror_are_read(environments: Path) -> None:
    write_env(
        environments,
        "dev",
        variant(node_os='"al2023"', artifact_mirror='"s3://my-artifacts/kubeplat"'),
    )
    env = config.load("dev")
    assert (env.node_os, env.artifact_mirror) == ("al2023", "s3://my-artifacts/kubeplat")
    write_env(environments, "dev", variant(node_os=None, coreos_image=None))
    defaults = config.load("dev")
    assert (defaults.node_os, defaults.coreos_image, defaults.artifact_mirror) == (
        "debian-12",
        "",
        "",
    )


def test_a_problem_is_located_at_its_variable_s_line(environments: Path) -> None:
    """The line a user is sent to is the one that sets the variable (an editor jumps there)."""
    text = variant(secure_asg_min="4")
    line = text.splitlines().index("secure_asg_min = 4") + 1
    (problem,) = located(environments, text)
    assert (problem.variable, problem.line) == ("secure_asg_min", line)
    assert str(problem).startswith(f"environments/dev.tfvars:{line}: secure_asg_min: 4 ")


def test_a_variable_set_twice_is_reported_at_its_second_line(environments: Path) -> None:
    text = variant() + "\nsecure_asg_min = 3\n"
    lines = text.splitlines()
    first = next(n for n, line in enumerate(lines, 1) if line.startswith("secure_asg_min "))
    second = len(lines)
    (problem,) = located(environments, text)
    assert problem.message == f"set more than once (lines {first}, {second})"
    assert (problem.variable, problem.line, problem.hint) == ("secure_asg_min", second, "keep one")


def test_a_syntax_error_names_its_line_and_column(environments: Path) -> None:
    text = variant() + "\nsandbox = = true\n"
    (problem,) = located(environments, text)
    assert problem.line == len(text.splitlines()) and problem.variable is None
    assert problem.message == "not a valid tfvars file: unexpected input at column 11"


def test_terraform_gets_every_variable_of_the_module_with_the_file_s_values(
    environments: Path,
) -> None:
    write_env(environments, "dev", variant(compute_asg_max="5", topology=None))
    env = config.load("dev")
    given = env.tfvars()
    declared = re.findall(
        r'^variable "([a-z0-9_]+)"', (REPO / "terraform" / "variables.tf").read_text(), re.MULTILINE
    )
    assert list(given) == declared  # every one, in the module's order
    assert given["compute_asg_max"] == 5 and given["environment"] == "dev"
    assert given["topology"] == "stacked"  # a default the file leaves out
