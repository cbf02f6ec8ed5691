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
