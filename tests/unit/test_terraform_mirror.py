"""KUBEPLAT_TF_MIRROR: kubeplat itself installs the AWS provider from a filesystem mirror when a
user names one (a machine without registry access), keeping the user's own CLI settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeplat import terraform
from kubeplat.errors import ToolMissing


def mirror(root: Path) -> Path:
    (root / "registry.terraform.io" / "hashicorp" / "aws").mkdir(parents=True)
    return root


def test_no_mirror_no_config(tmp_path: Path) -> None:
    assert terraform.mirror_cli_config(tmp_path) is None
    assert "TF_CLI_CONFIG_FILE" not in terraform.Terraform(tmp_path).environ()


def test_the_mirror_is_what_terraform_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(mirror(tmp_path / "mirror")))
    theirs = tmp_path / "theirs.tfrc"
    theirs.write_text('plugin_cache_dir = "/var/cache/terraform"\n')
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(theirs))
    child = terraform.Terraform(tmp_path / "work").environ()
    config = Path(child["TF_CLI_CONFIG_FILE"])
    text = config.read_text()
    assert config.parent == tmp_path / "work"
    assert f'path    = "{tmp_path / "mirror"}"' in text
    assert 'plugin_cache_dir = "/var/cache/terraform"' in text  # the user's own setting stays
    # A user configuration that installs providers its own way gives way to the mirror's.
    theirs.write_text("provider_installation {\n  direct {}\n}\n")
    text = Path(terraform.Terraform(tmp_path / "work").environ()["TF_CLI_CONFIG_FILE"]).read_text()
    assert text.count("provider_installation") == 1 and "filesystem_mirror" in text


def test_a_mirror_that_is_not_one_is_a_one_line_error(
    kubeplat, environments: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KUBEPLAT_TF_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(ToolMissing, match="is not a provider mirror"):
        terraform.mirror_cli_config(tmp_path)
    if not terraform.available():
        pytest.skip("terraform is not installed")
    result = kubeplat("validate", "-e", "example")
    assert result.code != 0
    assert "KUBEPLAT_TF_MIRROR=" in result.err and "is not a provider mirror" in result.err
    assert "Traceback" not in result.err
