"""What each command does, one function a command, between the CLI and the modules.

These functions never print to stdout and never exit: they return results or raise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubeplat import config, terraform
from kubeplat.errors import KubeplatError, Problem

if TYPE_CHECKING:
    from kubeplat.pki import CertInfo


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


@dataclass(frozen=True)
class CertsReport:
    """The outcome of `kubeplat certs`: the table, and what this run issued and why."""

    rows: list[CertInfo]
    issued: dict[str, str]
    directory: Path


def certs(
    env: str,
    env_dir: str | None = None,
    *,
    rotate: str | None = None,
    check: bool = False,
    now: dt.datetime | None = None,
) -> CertsReport:
    """Load the PKI, create what is missing or near expiry (or, with `check`, only look)."""
    from kubeplat import cluster, pki
    from kubeplat.pkistore import LocalStore

    environment = config.load(env, env_dir)
    store = LocalStore(environment.workdir / "pki")
    stored = store.load()
    now = now or dt.datetime.now(dt.UTC)
    if check:
        rows = pki.describe(stored, now)
        if not rows:
            raise KubeplatError(
                f"no certificates in {store.root}", f"create them: kubeplat certs -e {env}"
            )
        soon = [r for r in rows if r.days_left < cluster.RENEW_WITHIN_DAYS]
        if soon:
            names = ", ".join(f"{r.name} ({r.days_left} days)" for r in soon)
            raise CertificatesExpiring(
                rows, f"certificates expire within {cluster.RENEW_WITHIN_DAYS} days: {names}"
            )
        return CertsReport(rows, {}, store.root)
    given = _read_public_key(environment)
    result = pki.ensure(environment, stored, now=now, rotate=rotate, ssh_public_key=given)
    store.save(result.changed(stored), removed=set(stored) - set(result.files))
    return CertsReport(pki.describe(result.files, now), dict(result.reasons), store.root)


class CertificatesExpiring(KubeplatError):
    """`certs --check`: at least one certificate expires soon; the table is carried."""

    def __init__(self, rows: list[CertInfo], message: str) -> None:
        super().__init__(message, "reissue them: kubeplat certs -e ENV (or kubeplat up)")
        self.rows = rows


def _read_public_key(environment: config.Environment) -> bytes | None:
    path = environment.ssh_public_key_path
    return path.read_bytes() if path else None
