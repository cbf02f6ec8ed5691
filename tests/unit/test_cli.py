"""The CLI's contract: exit codes, one `Error:` line with a hint, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kubeplat import __version__
from tests.conftest import DATA


def test_version(kubeplat) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("--version")
    assert result.code == 0
    assert __version__ in result.out


def test_help_lists_only_working_commands(kubeplat) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("--help")
    assert result.code == 0
    listed = [
        line.split()[0] for line in result.out.split("Commands:")[1].splitlines() if line.strip()
    ]
    assert sorted(listed) == sorted(
        ["init", "validate", "certs", "render", "plan", "up", "destroy", "output", "instances",
         "kubeconfig", "ssh", "manifests", "etcd", "completion", "sandbox", "buckets",
         "token", "apply", "unlock", "versions", "upgrade-check", "health", "roll"]
    )  # fmt: skip


def test_usage_error_exits_2(kubeplat) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("validate")
    assert result.code == 2
    assert "Missing option '-e'" in result.err
    assert kubeplat("no-such-command").code == 2


def test_init_then_validate_lists_each_placeholder(kubeplat, isolated: Path) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("init", "staging")
    assert result.code == 0, result.err
    text = (isolated / "environments" / "staging.tfvars").read_text()
    assert 'environment              = "staging"' in text
    result = kubeplat("validate", "-e", "staging")
    assert result.code == 1
    for name in (
        "aws_account",
        "aws_region",
        "dns_zone_name",
        "kms_master_id",
        "kubeapi_access_list",
        "secrets_bucket_name",
        "ssh_access_list",
        "terraform_bucket_name",
    ):
        assert f": {name}: placeholder" in result.err
    assert "Error: environments/staging.tfvars has 8 problems" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


def test_init_refuses_to_overwrite_and_bad_names(kubeplat) -> None:  # type: ignore[no-untyped-def]
    assert kubeplat("init", "qa").code == 0
    again = kubeplat("init", "qa")
    assert again.code == 1
    assert "Error: environments/qa.tfvars already exists" in again.err
    bad = kubeplat("init", "Bad Name")
    assert bad.code == 1
    assert "Error: 'Bad Name' is not a valid environment name" in bad.err
    assert "Hint:" in bad.err


def test_unknown_environment(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("validate", "-e", "prod")
    assert result.code == 1
    assert "Error: environment 'prod' not found: no file environments/prod.tfvars" in result.err
    assert "Hint: available environments: example" in result.err


def test_seed_sample_file(kubeplat, environments: Path) -> None:  # type: ignore[no-untyped-def]
    (environments / "dev.tfvars").write_text((DATA / "seed.tfvars").read_text())
    result = kubeplat("validate", "-e", "dev")
    assert result.code == 1
    placeholders = [line for line in result.err.splitlines() if ": placeholder " in line]
    assert [line.split(": ")[1] for line in placeholders] == [
        "aws_account",
        "aws_region",
        "kms_master_id",
        "kubeapi_access_list",
        "ssh_access_list",
    ]
    assert (
        "Warning: environments/dev.tfvars:16: secure_asg_max: 4 etcd members is even" in result.err
    )


def test_even_etcd_warning_still_succeeds(kubeplat, environments: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", "/nonexistent")  # no terraform: file checks only
    text = (
        (environments / "example.tfvars")
        .read_text()
        .replace("secure_asg_max           = 3", "secure_asg_max           = 4")
    )
    (environments / "example.tfvars").write_text(text)
    result = kubeplat("validate", "-e", "example")
    assert result.code == 0, result.err
    assert (
        "Warning: environments/example.tfvars:19: secure_asg_max: 4 etcd members is even"
        in result.err
    )
    assert "Terraform not found: module not checked" in result.err


def test_no_traceback_as_a_separate_process(environments: Path) -> None:
    (environments / "junk.tfvars").write_bytes(b"\x00\xff\xfe junk")
    proc = subprocess.run(
        [sys.executable, "-m", "kubeplat", "validate", "-e", "junk"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "is binary" in proc.stderr


def test_debug_shows_the_traceback(environments: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kubeplat", "--debug", "validate", "-e", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "EnvironmentNotFound" in proc.stderr
