"""What each command does, one function a command, between the CLI and the modules.

These functions never print to stdout and never exit: they return results or raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeplat import config, terraform
from kubeplat.errors import KubeplatError, Problem


@dataclass(frozen=True)
class ValidateReport:
    """The outcome of `kubeplat validate`."""

    environment: config.Environment
    warnings: tuple[Problem, ...]
    module_checked: bool


def validate(env: str, env_dir: str | None = None) -> ValidateReport:
    """Check the environment file, then the Terraform module when Terraform is installed."""
    environment = config.load(env, env_dir)
    checked = False
    if terraform.available():
        tf = terraform.Terraform(environment.workdir)
        tf.init(backend=None)
        errors = tf.validate()
        if errors:
            raise KubeplatError(
                f"the Terraform module is not valid:\n{terraform.describe(errors)}",
                "this is a bug in kubeplat's module or a local edit of terraform/",
            )
        checked = True
    return ValidateReport(environment, environment.warnings, checked)


def init(name: str, env_dir: str | None = None) -> Path:
    """Write `environments/NAME.tfvars` from the sample."""
    return config.write_from_sample(name, config.env_dir(env_dir))
