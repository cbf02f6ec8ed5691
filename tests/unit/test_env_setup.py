"""A new environment, from anywhere in the repository: `init` leaves the user's own choices as
placeholders `validate` rejects line by line, and `environments/` is found walking up from the
current directory, as git finds `.git` (issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubeplat import config
from tests.conftest import REPO

# What only the user can choose: each stays a placeholder in what `init` writes.
OWN_CHOICES = {
    "aws_account": '"123456789012"',
    "aws_region": '"eu-west-1"',
    "dns_zone_name": '"staging.example.com"',
    "kms_master_id": '"alias/kubeplat-staging"',
    "kubeapi_access_list": '"203.0.113.7,198.51.100.0/24"',
    "secrets_bucket_name": '"staging-example-com-secrets-eu-west-1"',
    "ssh_access_list": '"203.0.113.7"',
    "terraform_bucket_name": '"staging-example-terraform-eu-west-1"',
}


@pytest.fixture
def no_terraform(monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate` checks the file only (the unit tier runs no binaries)."""
    monkeypatch.setenv("PATH", "/nonexistent")


@pytest.fixture
def repo(isolated: Path) -> Path:
    """A repository with environments/x.tfvars (the example, renamed) and a subfolder a/b."""
    root = isolated / "repo"
    (root / "environments").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    text = (REPO / "environments" / "example.tfvars").read_text()
    text = text.replace('environment              = "example"', 'environment = "x"')
    (root / "environments" / "x.tfvars").write_text(text)
    return root


def line_of(text: str, name: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if re.match(rf"{name}\s*=", line))


def test_init_leaves_no_one_elses_values(kubeplat, isolated: Path, no_terraform) -> None:  # type: ignore[no-untyped-def]
    assert kubeplat("init", "staging").code == 0
    path = isolated / "environments" / "staging.tfvars"
    text = path.read_text()
    assert "dsp" not in text  # the seed's zone and bucket names
    # Otherwise the documented sample, with the environment's name.
    sample = (REPO / "environments" / "env.tfvars.sample").read_text()
    assert text == sample.replace(
        'environment              = "dev"', 'environment              = "staging"'
    )

    result = kubeplat("validate", "-e", "staging")
    assert result.code == 1
    named = sorted(
        line.split(": ")[1] for line in result.err.splitlines() if ": placeholder " in line
    )
    assert named == sorted(OWN_CHOICES)
    for name in OWN_CHOICES:
        where = f"environments/staging.tfvars:{line_of(text, name)}: {name}: placeholder"
        assert any(
            line.startswith(where) and "(hint: fill it in: " in line
            for line in result.err.splitlines()
        ), name
    assert f"has {len(OWN_CHOICES)} problems" in result.err

    for name, value in OWN_CHOICES.items():
        text = re.sub(rf"^{name}\s*=.*$", f"{name} = {value}", text, flags=re.MULTILINE)
    path.write_text(text)
    result = kubeplat("validate", "-e", "staging")
    assert result.code == 0, result.err
    assert "environments/staging.tfvars: valid" in result.err


def test_example_still_valid_as_shipped(kubeplat, environments: Path, no_terraform) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("validate", "-e", "example")
    assert result.code == 0, result.err


@pytest.mark.parametrize("below", ["a/b", "environments"])
def test_validate_from_a_subfolder_finds_the_repository_s_file(  # type: ignore[no-untyped-def]
    kubeplat, repo: Path, monkeypatch: pytest.MonkeyPatch, no_terraform, below: str
) -> None:
    monkeypatch.chdir(repo / below)
    found = config.find_env_file("x")
    assert found.resolve() == repo / "environments" / "x.tfvars"
    assert not found.is_absolute()  # named as typed from here: ../../environments/x.tfvars
    # The work folder is the repository's, never the subfolder's.
    assert config.load("x").workdir == repo / ".kubeplat" / "x"
    result = kubeplat("validate", "-e", "x")
    assert result.code == 0, result.err
    assert f"{found}: valid" in result.err


@pytest.mark.parametrize("below", ["a/b", "environments"])
def test_init_from_a_subfolder_writes_to_the_repository_s_folder(  # type: ignore[no-untyped-def]
    kubeplat, repo: Path, monkeypatch: pytest.MonkeyPatch, below: str
) -> None:
    monkeypatch.chdir(repo / below)
    result = kubeplat("init", "y")
    assert result.code == 0, result.err
    assert (repo / "environments" / "y.tfvars").is_file()
    assert not (repo / below / "environments").exists()
    assert sorted(p.name for p in (repo / "environments").iterdir()) == ["x.tfvars", "y.tfvars"]


def test_a_missing_environment_from_a_subfolder_lists_the_found_folder(  # type: ignore[no-untyped-def]
    kubeplat, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo / "a" / "b")
    result = kubeplat("validate", "-e", "prod")
    assert result.code == 1
    assert "no file ../../environments/prod.tfvars" in result.err
    assert "Hint: available environments: x" in result.err


def test_paths_and_explicit_folders_stay_as_given(  # type: ignore[no-untyped-def]
    kubeplat, repo: Path, monkeypatch: pytest.MonkeyPatch, no_terraform
) -> None:
    monkeypatch.chdir(repo / "a" / "b")
    # -e with a path is relative to the current directory, not to the found folder.
    assert kubeplat("validate", "-e", "../../environments/x.tfvars").code == 0
    missing = kubeplat("validate", "-e", "environments/x.tfvars")
    assert missing.code == 1
    assert "no file environments/x.tfvars" in missing.err
    # --env-dir and KUBEPLAT_ENV_DIR come before the walk.
    (repo / "a" / "b" / "mine").mkdir()
    assert kubeplat("--env-dir", "mine", "init", "z").code == 0
    assert (repo / "a" / "b" / "mine" / "z.tfvars").is_file()
    monkeypatch.setenv("KUBEPLAT_ENV_DIR", "mine")
    assert config.env_dir() == Path("mine")


def test_no_environments_folder_anywhere_up_is_as_before(  # type: ignore[no-untyped-def]
    kubeplat, isolated: Path
) -> None:
    above = [p for p in isolated.parents if (p / "environments").is_dir()]
    if above:
        pytest.skip(f"{above[0]}/environments exists above the test's folder")
    assert config.env_dir() == Path("environments")
    result = kubeplat("validate", "-e", "x")
    assert result.code == 1
    assert "Error: environment 'x' not found: no file environments/x.tfvars" in result.err
    assert "Hint: create one with: kubeplat init x" in result.err
    assert kubeplat("init", "x").code == 0
    assert (isolated / "environments" / "x.tfvars").is_file()
