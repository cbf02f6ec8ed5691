"""A user on a machine without registry access names the provider mirror and nothing else:
kubeplat's own Terraform runs install the AWS provider from it (README, Quick start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeplat import terraform
from tests.conftest import _ORIGINAL_MIRROR

pytestmark = pytest.mark.integration


def test_validate_with_only_the_mirror_named(
    kubeplat, environments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    if not _ORIGINAL_MIRROR or not terraform.available():
        pytest.skip("needs terraform and a provider mirror (KUBEPLAT_TF_MIRROR)")
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", _ORIGINAL_MIRROR)
    result = kubeplat("validate", "-e", "example")
    assert result.code == 0, result.err
    assert "the Terraform module is valid" in result.out + result.err


def _empty_mirror(tmp_path: Path) -> Path:
    """A provider mirror that holds nothing: Terraform can install no provider from it."""
    empty = tmp_path / "empty-mirror"
    (empty / "registry.terraform.io").mkdir(parents=True, exist_ok=True)
    return empty


def test_no_provider_says_why_and_what_to_set(
    kubeplat, environments: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Where the provider cannot be installed, one line says from where it was tried and the
    hint names what to set; never Terraform's whole output."""
    if not terraform.available():
        pytest.skip("needs terraform")
    # No registry (a CLI configuration that allows only an empty mirror stands for a machine
    # without registry access; no KUBEPLAT_TF_MIRROR named).
    config = tmp_path / "offline.tfrc"
    config.write_text(terraform.mirror_config(str(_empty_mirror(tmp_path))))
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    result = kubeplat("validate", "-e", "example")
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.err
    assert (
        "terraform init could not install the AWS provider from the Terraform registry"
        in (errors[0])
    )
    assert "Hint: without access to registry.terraform.io, set KUBEPLAT_TF_MIRROR" in result.err
    # A mirror named that lacks the provider: the hint says what it must hold.
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(_empty_mirror(tmp_path)))
    result = kubeplat("validate", "-e", "example")
    assert result.code == 1
    assert f"could not install the AWS provider from its filesystem mirror {tmp_path}" in result.err
    assert "Hint: the mirror must hold hashicorp/aws >= 5.60" in result.err


def test_the_users_terraformrc_is_kept_with_the_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KUBEPLAT_TF_MIRROR changes only how providers are installed: the user's own
    ~/.terraformrc (no TF_CLI_CONFIG_FILE) stays in force, e.g. its plugin cache."""
    home = Path.home()
    (home / ".terraformrc").write_text('plugin_cache_dir = "/var/cache/terraform"\n')
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(_empty_mirror(tmp_path)))
    written = terraform.mirror_cli_config(tmp_path / "work")
    assert written is not None
    text = written.read_text()
    assert 'plugin_cache_dir = "/var/cache/terraform"' in text
    assert "filesystem_mirror" in text and str(tmp_path / "empty-mirror") in text
