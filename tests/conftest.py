"""Shared fixtures: every test runs in its own directory with a clean environment."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeplat.cli import main

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Clear AWS_*, KUBEPLAT_* and TF_* variables and work in a fresh directory.

    KUBEPLAT_TF_MIRROR (an offline provider mirror for the integration tier) is kept aside
    for the `terraform_cli_config` fixture.
    """
    for name in list(os.environ):
        if name.startswith(("AWS_", "KUBEPLAT_", "TF_")) or name == "NO_COLOR":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def environments(isolated: Path) -> Path:
    """A copy of the repository's environments/ folder in the test's directory."""
    target = isolated / "environments"
    shutil.copytree(REPO / "environments", target)
    return target


@dataclass
class Outcome:
    """What a kubeplat run left: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


@pytest.fixture
def kubeplat(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run the CLI in-process through its real exit point."""

    def run(*args: str) -> Outcome:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


_ORIGINAL_MIRROR = os.environ.get("KUBEPLAT_TF_MIRROR")


@pytest.fixture
def terraform_cli_config(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point Terraform at the offline provider mirror when KUBEPLAT_TF_MIRROR names one.

    Without it, Terraform installs providers from the registry as it does for users.
    """
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed")
    config = isolated / "terraform.rc"
    mirror = _ORIGINAL_MIRROR
    if mirror:
        config.write_text(
            "provider_installation {\n"
            f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
            '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n'
            '  direct {\n    exclude = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
        )
    else:
        config.write_text("")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    yield config
