"""`kubeplat validate` with the real Terraform binary and AWS provider."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_validate_example_checks_the_module(
    kubeplat, environments: Path, terraform_cli_config: Path
) -> None:  # type: ignore[no-untyped-def]
    result = kubeplat("validate", "-e", "example")
    assert result.code == 0, result.err
    assert "environments/example.tfvars: valid; the Terraform module is valid" in result.err
    # Terraform's lock file and data stay in the environment's work dir, not in the package.
    assert (
        environments.parent / ".kubeplat" / "example" / "module" / ".terraform.lock.hcl"
    ).exists()


def test_terraform_too_old_or_missing(
    kubeplat, environments: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "bin" / "terraform"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'{"terraform_version": "1.3.9"}\'\n')
    fake.chmod(0o755)
    monkeypatch.setenv("KUBEPLAT_TERRAFORM", str(fake))
    from kubeplat import terraform

    terraform.found.cache_clear()
    result = kubeplat("validate", "-e", "example")
    terraform.found.cache_clear()
    assert result.code == 1
    assert f"Error: {fake} is terraform 1.3.9, too old (kubeplat needs >= 1.5, < 2)" in result.err
    assert "Hint: install Terraform" in result.err
    # A Terraform newer than kubeplat knows is refused too, naming the version it found.
    fake.write_text('#!/bin/sh\necho \'{"terraform_version": "2.0.1"}\'\n')
    result = kubeplat("validate", "-e", "example")
    terraform.found.cache_clear()
    assert result.code == 1
    assert f"Error: {fake} is terraform 2.0.1, newer than kubeplat knows" in result.err
    assert "Hint: install a Terraform 1.x" in result.err
