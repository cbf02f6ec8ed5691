"""The command line: parse options, call one function of the core, print the result.

`main` is the one exit point: it maps kubeplat's errors to exit codes (0 success, 1 failure,
2 usage, 130 interrupted) and prints `Error: …` with a hint, never a traceback unless --debug.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from kubeplat import __version__, console

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class State:
    """Options given before the command."""

    def __init__(self, debug: bool, env_dir: str | None) -> None:
        self.debug = debug
        self.env_dir = env_dir


def env_option(func: Any) -> Any:
    """The `-e/--env` option every environment command takes."""
    return click.option(
        "-e",
        "--env",
        "env",
        required=True,
        metavar="ENV",
        help="Environment name (environments/ENV.tfvars) or a path to a .tfvars file.",
    )(func)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kubeplat")
@click.option("--debug", is_flag=True, help="Show tracebacks and Terraform's full output.")
@click.option(
    "--env-dir",
    envvar="KUBEPLAT_ENV_DIR",
    metavar="DIR",
    help="Folder of environment files (default ./environments; env KUBEPLAT_ENV_DIR).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, env_dir: str | None) -> None:
    """Build and operate a Kubernetes platform on AWS with Terraform.

    Each environment is one file, environments/ENV.tfvars. Start with
    `kubeplat init NAME` or try the sandbox: `kubeplat validate -e example`.
    """
    ctx.obj = State(debug, env_dir)
    if debug:
        console.enable_debug()


@cli.command()
@click.argument("name")
@click.pass_obj
def init(state: State, name: str) -> None:
    """Write environments/NAME.tfvars from the documented sample."""
    from kubeplat import ops

    path = ops.init(name, state.env_dir)
    console.status(f"Wrote {path}: fill in the REQUIRED values, then: kubeplat validate -e {name}")


@cli.command()
@env_option
@click.pass_obj
def validate(state: State, env: str) -> None:
    """Check an environment file and the Terraform module; no AWS calls."""
    from kubeplat import ops

    report = ops.validate(env, state.env_dir)
    for warning in report.warnings:
        console.warn(str(warning))
    module = (
        "the Terraform module is valid"
        if report.module_checked
        else ("Terraform not found: module not checked")
    )
    console.status(f"{report.environment.path}: valid; {module}", "ok")


@cli.command()
@env_option
@click.option(
    "--rotate", metavar="NAME", help="Reissue one certificate; `ca` reissues every CA and all."
)
@click.option("--check", is_flag=True, help="Change nothing; fail when one expires within 30 days.")
@click.pass_obj
def certs(state: State, env: str, rotate: str | None, check: bool) -> None:
    """Load or create the cluster's PKI and show every certificate's expiry."""
    from kubeplat import ops

    if rotate and check:
        raise click.UsageError("--rotate and --check cannot be combined")
    if rotate == "ca":
        console.warn(
            "rotating ca: every CA and every certificate is reissued; "
            "nodes need the new set (kubeplat up) before the old CA stops being trusted"
        )
    elif rotate in ("etcd/ca", "front-proxy-ca"):
        console.warn(f"rotating {rotate}: it and every certificate it signed are reissued")
    try:
        report = ops.certs(env, state.env_dir, rotate=rotate, check=check)
    except ops.CertificatesExpiring as exc:
        _certs_table(exc.rows)
        raise
    _certs_table(report.rows)
    for name, reason in report.issued.items():
        console.status(f"issued {name} ({reason})", "ok")
    if not check and not report.issued:
        console.status(f"nothing to issue; PKI in {report.directory}", "ok")


@cli.command()
@env_option
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write into.",
)
@click.pass_obj
def render(state: State, env: str, out: Path) -> None:
    """Write everything a node would get to a directory, offline."""
    from kubeplat import ops

    report = ops.render(env, out, state.env_dir)
    for name, size in report.files.items():
        console.data(f"{size:>7}  {name}")
    console.status(f"rendered {len(report.files)} files into {report.directory}", "ok")


def _certs_table(rows: list[Any]) -> None:
    from kubeplat.cluster import RENEW_WITHIN_DAYS

    console.table(
        ["name", "subject", "issuer", "expires", "days left"],
        [
            [r.name, r.subject, r.issuer, f"{r.expires:%Y-%m-%d %H:%M} UTC", str(r.days_left)]
            for r in rows
        ],
        row_styles=["warn" if r.days_left < RENEW_WITHIN_DAYS else "" for r in rows],
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code."""
    from kubeplat.errors import ConfigError, KubeplatError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="kubeplat", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        console.error("interrupted")
        sys.exit(130)
    except KubeplatError as exc:
        if debug:
            raise
        if isinstance(exc, ConfigError):
            for problem in exc.problems:
                if problem.warning:
                    console.warn(str(problem))
                else:
                    console.status(str(problem), "error")
        console.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the last line of defence: no traceback without --debug
        if debug:
            raise
        console.error(
            f"internal error: {type(exc).__name__}: {exc}",
            "run again with --debug for the traceback, and report it",
        )
        sys.exit(1)
    sys.exit(0)
