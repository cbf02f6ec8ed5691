"""The command line: parse options, call one function of the core, print the result.

`main` is the one exit point: it maps kubeplat's errors to exit codes (0 success, 1 failure,
2 usage, 130 interrupted) and prints `Error: …` with a hint, never a traceback unless --debug.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from kubeplat import __version__, console

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class State:
    """Options given before the command."""

    def __init__(self, debug: bool, env_dir: str | None, sandbox: bool = False) -> None:
        self.debug = debug
        self.env_dir = env_dir
        self.sandbox = sandbox


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


def _output_option(func: Any) -> Any:
    return click.option(
        "-o",
        "--output",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="json: one JSON document on stdout and nothing else there.",
    )(func)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kubeplat")
@click.option("--debug", is_flag=True, help="Show tracebacks and Terraform's full output.")
@click.option(
    "--env-dir",
    envvar="KUBEPLAT_ENV_DIR",
    metavar="DIR",
    help="Folder of environment files (default: the nearest environments/ in this folder or "
    "one above it; env KUBEPLAT_ENV_DIR).",
)
@click.option(
    "--sandbox", is_flag=True, help="Run against the local AWS emulator, whatever the file says."
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, env_dir: str | None, sandbox: bool) -> None:
    """Build and operate a Kubernetes platform on AWS with Terraform.

    Each environment is one file, environments/ENV.tfvars. Start with
    `kubeplat init NAME` or try the sandbox: `kubeplat validate -e example`.
    """
    ctx.obj = State(debug, env_dir, sandbox)
    console.enable_debug(debug)


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
@click.option(
    "-o", "--output", "output_format", type=click.Choice(["text", "json"]), default="text",
    help="json: the result as one JSON document on stdout.",
)  # fmt: skip
@click.pass_obj
def validate(state: State, env: str, output_format: str) -> None:
    """Check an environment file and the Terraform module; no AWS calls."""
    from kubeplat import ops

    report = ops.validate(env, state.env_dir)
    if output_format == "json":
        console.data_json(
            {
                "file": str(report.environment.path),
                "valid": True,
                "module_checked": report.module_checked,
                "terraform": (
                    {"path": report.terraform[0], "version": report.terraform[1]}
                    if report.terraform
                    else None
                ),
                "warnings": [str(w) for w in report.warnings],
            }
        )
        return
    for warning in report.warnings:
        console.warn(str(warning))
    module = (
        f"the Terraform module is valid (terraform {report.terraform[1]}, {report.terraform[0]})"
        if report.module_checked and report.terraform
        else "Terraform not found: module not checked"
    )
    console.status(f"{report.environment.path}: valid; {module}", "ok")


@cli.group(invoke_without_command=True)
@click.option(
    "-e",
    "--env",
    "env",
    metavar="ENV",
    help="Environment name (environments/ENV.tfvars) or a path to a .tfvars file.",
)
@click.option(
    "--rotate",
    metavar="NAME",
    help="Reissue one certificate; on an environment that runs, begin a staged rotation of a CA "
    "(`ca`: every CA), of the service-account key (`sa`), of the SSH key pair (`ssh`) or of "
    "the key Secrets are encrypted with (`encryption`).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; fail when one expires within cert_renew_days (default 90).",
)
@_output_option
@click.pass_context
def certs(
    ctx: click.Context, env: str | None, rotate: str | None, check: bool, output_format: str
) -> None:
    """Load or create the cluster's PKI (the local cache) and show every certificate's expiry.

    `kubeplat certs renew -e ENV` renews the environment's own set, in its secrets bucket.
    """
    from kubeplat import ops

    state: State = ctx.obj
    if ctx.invoked_subcommand:
        if env or rotate or check:
            raise click.UsageError(
                f"give the options after the subcommand: kubeplat certs {ctx.invoked_subcommand} "
                "-e ENV"
            )
        return
    if not env:
        raise click.UsageError("Missing option '-e' / '--env'.")
    if rotate and check:
        raise click.UsageError("--rotate and --check cannot be combined")
    json_output = output_format == "json"
    try:
        report = ops.certs(env, state.env_dir, rotate=rotate, check=check, sandbox=state.sandbox)
    except ops.CertificatesExpiring as exc:
        _certs_json(exc.rows) if json_output else _certs_table(exc.rows, exc.window)
        raise
    if report.rotation is not None:
        _certs_json(report.rows) if json_output else _certs_table(report.rows, report.window)
        _rotation_lines(report.rotation)
        console.status(
            f"the nodes' agents install it; kubeplat certs rotation -e {env} (or kubeplat up) "
            "takes the next step once every node runs this one",
            "ok",
        )
        return
    # Said only once done (before the first `up`: the local cache, no node runs).
    if rotate == "ca":
        console.warn(
            "rotating ca: every CA and every certificate is reissued; "
            "nodes need the new set (kubeplat up) before the old CA stops being trusted"
        )
    elif rotate in ("etcd/ca", "front-proxy-ca", "kubelet-ca"):
        console.warn(f"rotating {rotate}: it and every certificate it signed are reissued")
    _certs_json(report.rows) if json_output else _certs_table(report.rows, report.window)
    for name, reason in report.issued.items() if not report.announced else ():
        console.status(f"issued {name} ({reason})", "ok")
    if not check and not report.issued:
        console.status(f"nothing to issue; PKI in {report.directory}", "ok")


@certs.command("renew")
@env_option
@_output_option
@click.pass_obj
def certs_renew(state: State, env: str, output_format: str) -> None:
    """Renew the environment's certificates in its secrets bucket, without Terraform.

    Every leaf within cert_renew_days of expiry, or whose names no longer match the environment
    (a changed dns_zone_name), is reissued; the nodes' agents install it and restart what reads
    it, one node at a time on the etcd and control-plane layers. `kubeplat up` does the same.
    """
    from kubeplat import ops

    report = ops.renew(env, state.env_dir, sandbox=state.sandbox)
    if output_format == "json":
        _certs_json(report.rows)
        return
    _certs_table(report.rows, report.window)
    if not report.issued:
        console.status(
            f"nothing to renew: no certificate expires within {report.window} days", "ok"
        )
    else:
        console.status(
            f"renewed {', '.join(sorted(report.issued))}; the nodes pick it up within a minute "
            f"(kubeplat instances -e {env}: config)",
            "ok",
        )


@certs.command("rotation")
@env_option
@click.option(
    "--force",
    is_flag=True,
    help="Take the next step even though some nodes do not run the current one yet.",
)
@_output_option
@click.pass_obj
def certs_rotation(state: State, env: str, force: bool, output_format: str) -> None:
    """Show a CA, service-account key, SSH key or encryption key rotation in progress and take
    its next step.

    `kubeplat certs -e ENV --rotate NAME` begins it (NAME: ca for every CA, etcd/ca,
    front-proxy-ca, kubelet-ca, sa, ssh or encryption). Each step is taken only once every
    running node runs the one before (kubeplat instances -e ENV: config current); kubeplat up
    takes it too.
    """
    from kubeplat import ops

    report = ops.rotation_step(env, state.env_dir, sandbox=state.sandbox, force=force)
    status = report.status
    if output_format == "json":
        console.data_json(status.as_json() if status else None)
        return
    if status is None:
        console.status("no rotation in progress", "ok")
        return
    _certs_table(report.rows, report.window)
    _rotation_lines(status)


@cli.group(invoke_without_command=True)
@click.option("-e", "--env", "env", metavar="ENV", help="Environment name or .tfvars path.")
@click.pass_context
def token(ctx: click.Context, env: str | None) -> None:
    """The bootstrap token kubelets join with: its id and expiry (never its secret).

    `kubeplat token rotate -e ENV` replaces it; `kubeplat token create -e ENV --ttl 24h` gives
    the cluster an extra, short-lived one for a machine kubeplat does not launch.
    """
    from kubeplat import ops

    state: State = ctx.obj
    if ctx.invoked_subcommand:
        if env:
            raise click.UsageError(
                f"give the options after the subcommand: kubeplat token {ctx.invoked_subcommand} "
                "-e ENV"
            )
        return
    if not env:
        raise click.UsageError("Missing option '-e' / '--env'.")
    _token_lines(ops.token(env, state.env_dir, sandbox=state.sandbox))


def _token_lines(report: Any) -> None:
    expires = f"{report.expires:%Y-%m-%d %H:%M} UTC" if report.expires else "never (no date)"
    console.data(f"bootstrap token {report.token_id}, expires {expires}")
    if report.issued and not report.where.startswith("s3://"):  # the bucket's step says it
        console.status(f"issued bootstrap-token ({report.issued})", "ok")
    console.status(
        f"held in {report.where}; kubeplat up renews it within cert_renew_days of its expiry",
        "info",
    )


@token.command("rotate")
@env_option
@click.pass_obj
def token_rotate(state: State, env: str) -> None:
    """Replace the environment's bootstrap token now.

    Once the environment runs, the new one is in the secrets bucket: every node's agent installs
    it (kubelets read it when they next ask for a certificate) and the control plane gives it to
    the cluster and deletes the old one, which then stops working.
    """
    from kubeplat import ops

    _token_lines(ops.token(env, state.env_dir, sandbox=state.sandbox, rotate=True))


@token.command("create")
@env_option
@click.option("--ttl", default="24h", show_default=True, help="How long it works: 30m, 24h, 7d.")
@click.option(
    "--description", default="created by kubeplat token create", help="Kept with the token."
)
@click.pass_obj
def token_create(state: State, env: str, ttl: str, description: str) -> None:
    """Give the cluster an extra bootstrap token, for a machine kubeplat does not launch.

    Printed once on stdout; the cluster deletes it when it expires. It goes through the API
    server with the admin kubeconfig (kubeplat kubeconfig -e ENV writes it).
    """
    from kubeplat import ops

    created = ops.token_create(env, state.env_dir, ttl, description, sandbox=state.sandbox)
    console.data(created.token)
    console.status(
        f"the cluster at {created.server} accepts it until {created.expires:%Y-%m-%d %H:%M} UTC",
        "ok",
    )


def _rotation_lines(status: Any) -> None:
    from kubeplat import rotation

    for line in rotation.describe(status):
        console.status(line.strip(), "warn" if status.hold else "ok")
    for name, reason in status.issued.items():
        console.status(f"issued {name} ({reason})", "ok")


def _show_rehearsal(found: Any) -> None:
    from kubeplat import rehearsal

    console.status("upgrade check (kubeplat upgrade-check):", "info")
    for text, level in rehearsal.lines(found):
        console.status(f"  {text}", {"ok": "info", "red": "error"}.get(level, level))


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


def _interactive() -> bool:
    """Terraform's rule: ask when standard input is a terminal, wherever the output goes
    (`kubeplat up | tee up.log` still asks; the question goes to stderr)."""
    return sys.stdin.isatty()


def _require_approval(command: str, auto_approve: bool, usage: str = "-e ENV") -> None:
    """No terminal means no prompt: without --auto-approve, stop at once."""
    if not auto_approve and not _interactive():
        from kubeplat.errors import KubeplatError

        raise KubeplatError(
            f"{command} needs --auto-approve when there is no terminal to confirm on",
            f"kubeplat {command} {usage} --auto-approve (CI), or run it in a terminal",
        )


def _in_roll_order(layers: list[str]) -> list[str]:
    """The layers a plan rolls, in the order they roll (secure, control plane, compute)."""
    from kubeplat.node.roll import ORDER

    return sorted(layers, key=lambda name: (ORDER.index(name) if name in ORDER else 3, name))


def _show_plan(report: Any) -> None:
    from kubeplat.pipeline import removal_reason

    console.status(
        f"account {report.account}  region {report.region}  environment {report.environment}",
        "info",
    )
    imported = f", {len(report.imports)} to import" if report.imports else ""
    console.status(
        f"Terraform: {report.add} to add, {report.change} to change, {report.destroy} to destroy"
        + imported,
        "warn" if report.destroy else "info",
    )
    for action, heading in (
        ("delete", "to destroy"),
        ("replace", "to replace (destroyed, then created again)"),
    ):
        group = [r for r in report.removals if r["action"] == action]
        if group:
            console.status(f"{heading} ({len(group)}):", "warn")
            for removal in group:
                why = removal_reason(removal)
                console.status(f"  {removal['address']}" + (f"  ({why})" if why else ""), "warn")
    if report.imports:
        console.status(
            f"to adopt ({len(report.imports)}, left in AWS by an interrupted run; imported, "
            "not built again):",
            "info",
        )
        for address, id_ in report.imports:
            console.status(f"  {address}  ({id_})", "info")
    if report.rolls:
        console.status(f"will roll: {', '.join(_in_roll_order(report.rolls))}", "warn")
        for line in report.roll_order:
            console.status(f"  {line}", "warn")
    if report.rehearsal is not None and report.rehearsal.upgrade:
        _show_rehearsal(report.rehearsal)
    written = [n for n in report.uploads if not n.startswith("-")]
    removed = [n[1:] for n in report.uploads if n.startswith("-")]
    if written:
        console.status(f"node configuration to upload: {', '.join(written)}", "info")
    if report.after_apply:
        console.status(
            "running nodes take these only once the apply succeeds (staged until then): "
            + ", ".join(report.after_apply),
            "info",
        )
    if removed:
        console.status(
            f"no longer used, removed once the apply succeeds: {', '.join(removed)}", "warn"
        )
    if report.purge:
        console.status(
            "removed from the secrets bucket once the destroy succeeds (every version; the "
            f"PKI cannot be brought back): {', '.join(report.purge)}",
            "warn",
        )
    for other in report.unclaimed:
        console.status(
            f"the secrets bucket also holds environment {other}, which no environment file "
            f"here names (renamed or removed?): its objects stay until kubeplat destroy -e "
            f"{other} --purge (with its file back) removes them",
            "info",
        )
    if not report.changes:
        console.status("no changes", "ok")


@cli.command()
@env_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the plan for `kubeplat apply` (with FILE.kubeplat.json beside it); a new "
    "environment's PKI is created first, a renewal or rotation step is refused.",
)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 0 when nothing changes, 2 when something does."
)
@_output_option
@click.pass_obj
def plan(
    state: State, env: str, out: Path | None, detailed_exitcode: bool, output_format: str
) -> None:
    """Everything up to a saved Terraform plan, with a summary; changes nothing."""
    from kubeplat import ops

    report = ops.plan(env, state.env_dir, sandbox=state.sandbox, out=out)
    if output_format == "json":
        console.data_json(report.as_json())
    else:
        _show_plan(report)
    if detailed_exitcode and report.changes:
        sys.exit(2)


@cli.command()
@click.option(
    "-e",
    "--env",
    "envs",
    multiple=True,
    metavar="ENV",
    help="Environment name or .tfvars path (repeatable).",
)
@click.option("--all", "every", is_flag=True, help="Every environment file in the folder.")
@_output_option
@click.pass_obj
def health(state: State, envs: tuple[str, ...], every: bool, output_format: str) -> None:
    """Whether environments are well: state lock, drift, the API server's served certificate,
    nodes' convergence, etcd (quorum, stale members, snapshot age), groups against their
    desired capacity. Exits 1 when any item is red."""
    from kubeplat import config, ops
    from kubeplat.errors import KubeplatError

    if every == bool(envs):
        raise click.UsageError("give -e ENV (one or more) or --all")
    names = list(envs)
    if every:
        folder = config.env_dir(state.env_dir)
        names = sorted(p.stem for p in folder.glob("*.tfvars"))
        if not names:
            raise KubeplatError(
                f"no environment file in {folder}", "create one: kubeplat init NAME"
            )
    reports = []
    for name in names:
        try:
            reports.append(ops.health(name, state.env_dir, sandbox=state.sandbox))
        except KubeplatError as exc:
            from kubeplat.health import Health, Item

            reports.append(Health(name, [Item("environment", "red", exc.message)]))
    if output_format == "json":
        console.data_json([r.as_json() for r in reports])
    else:
        rows = [
            [r.environment, item.name, item.level.upper() if item.level == "red" else item.level,
             item.detail]
            for r in reports
            for item in r.items
        ]  # fmt: skip
        console.table(["ENVIRONMENT", "CHECK", "STATE", "DETAIL"], rows)
    unwell = [r.environment for r in reports if r.level == "red"]
    if unwell:
        raise KubeplatError(
            f"{len(unwell)} of {len(reports)} environment(s) not well: {', '.join(unwell)}",
            "the rows marked RED say what and where",
        )


_force_option = click.option(
    "--force",
    is_flag=True,
    help="Roll even when the upgrade check finds a red item (kubeplat upgrade-check).",
)


@cli.command("upgrade-check")
@env_option
@_output_option
@click.pass_obj
def upgrade_check(state: State, env: str, output_format: str) -> None:
    """The rehearsal of what `up` would roll or upgrade: version skew, etcd health and backup,
    quorum, expiring certificates, roll order and estimate; exits 1 on a red item."""
    from kubeplat import ops

    found = ops.plan(env, state.env_dir, sandbox=state.sandbox).rehearsal
    if output_format == "json":
        console.data_json(found.as_json())
    else:
        if not found.upgrade:
            console.status("nothing rolls and no version moves: nothing to rehearse", "ok")
        _show_rehearsal(found)
    if found.red:
        from kubeplat.errors import KubeplatError

        raise KubeplatError(
            f"upgrade check: {len(found.red)} red item(s): " + "; ".join(c.name for c in found.red),
            f"kubeplat up -e {env} refuses to run until they are fixed (or --force)",
        )


@cli.command()
@env_option
@click.option(
    "--layer",
    "layers",
    multiple=True,
    metavar="LAYER",
    help="Roll only this layer (secure, control-plane or compute; repeatable). Default: all.",
)
@click.pass_obj
def roll(state: State, env: str, layers: tuple[str, ...]) -> None:
    """Replace every node of the environment (or of the named layers) through the gated path:
    one layer after another, leaving nodes drained, new ones in service once Ready."""
    from kubeplat import ops

    found = ops.roll(env, layers, state.env_dir, sandbox=state.sandbox)
    for group in found.asked:
        console.status(f"roll asked of {group} at {found.when}", "ok")
    if found.sandbox:
        console.status(
            "the sandbox runs no roll controller and its emulator has no instance refresh: "
            "nothing is replaced here; on AWS the controller starts these groups' refreshes "
            "in this order within a minute",
            "warn",
        )
    else:
        console.status(
            "the roll controller on the control plane starts these groups' instance refreshes "
            "in this order; follow one with: aws autoscaling describe-instance-refreshes "
            f"--auto-scaling-group-name {found.asked[0]}",
            "ok",
        )


@cli.command()
@env_option
@click.option("--auto-approve", is_flag=True, help="Apply without asking (CI).")
@_force_option
@click.pass_obj
def up(state: State, env: str, auto_approve: bool, force: bool) -> None:
    """Build or update the environment: certs, render, plan, confirm, upload, apply."""
    from kubeplat import ops

    _require_approval("up", auto_approve)

    def confirm(report: Any) -> bool:
        _show_plan(report)
        # --auto-approve: the summary is printed, not asked (a CI log shows what was applied).
        return auto_approve or click.confirm("Apply these changes?", default=False, err=True)

    result = ops.up(
        env, state.env_dir, sandbox=state.sandbox, confirm=confirm, force=force, show=_show_plan
    )
    _show_result(result, shown=result.plan.changes)


def _show_result(result: Any, *, shown: bool) -> None:
    """What `up` or `apply` did: the plan (unless the confirmation showed it), the uploads and
    removals, the outputs and the kubeconfig."""
    if not shown:
        _show_plan(result.plan)
    for index, name in enumerate(result.uploaded):
        if name.startswith("-"):
            console.status(f"removed {name[1:]} (no longer used)", "ok")
        elif not result.applied:
            console.status(f"uploaded {name}", "ok")
        elif index < result.before_apply:
            console.status(f"uploaded {name} (before the apply)", "ok")
        else:
            console.status(f"uploaded {name} (after the apply: made current)", "ok")
    for name, value in sorted(result.outputs.items()):
        if isinstance(value, str):
            console.data(f"{name} = {value}")
    if result.kubeconfig:
        console.status(f"kubeconfig: {result.kubeconfig}", "ok")


@cli.command()
@env_option
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--auto-approve", is_flag=True, help="Apply without asking (CI).")
@_force_option
@click.pass_obj
def apply(state: State, env: str, plan_file: Path, auto_approve: bool, force: bool) -> None:
    """Apply exactly a plan saved with `kubeplat plan --out PLAN_FILE`: upload the node
    configuration it was made with, apply, prune. Refused, with nothing uploaded, when the
    configuration or the state changed since the plan was made."""
    from kubeplat import ops

    _require_approval("apply", auto_approve, f"-e {env} {plan_file}")

    def confirm(report: Any) -> bool:
        _show_plan(report)
        return auto_approve or click.confirm("Apply this saved plan?", default=False, err=True)

    result = ops.apply(
        env,
        plan_file,
        state.env_dir,
        sandbox=state.sandbox,
        confirm=confirm,
        force=force,
        show=_show_plan,
    )
    _show_result(result, shown=result.plan.changes)


@cli.command()
@env_option
@click.option("--auto-approve", is_flag=True, help="Destroy without asking (CI).")
@click.option(
    "--purge",
    is_flag=True,
    help="Once the destroy has succeeded, also remove the environment's prefix of the secrets "
    "bucket (PKI, node configuration, reports, etcd backups; every version) and its local PKI.",
)
@click.pass_obj
def destroy(state: State, env: str, auto_approve: bool, purge: bool) -> None:
    """Destroy the environment's infrastructure (the buckets, state and PKI are kept; --purge
    removes the environment's objects and PKI too, e.g. after renaming it)."""
    from kubeplat import ops

    _require_approval("destroy", auto_approve)

    def confirm(report: Any) -> bool:
        _show_plan(report)
        if auto_approve:
            return True
        typed = click.prompt(
            f"Type the environment's name ({report.environment}) to destroy it", err=True
        )
        return bool(typed == report.environment)

    report = ops.destroy(env, state.env_dir, sandbox=state.sandbox, confirm=confirm, purge=purge)
    console.status(f"destroyed {report.destroy} resources of {report.environment}", "ok")
    if purge:
        console.status(
            f"removed {', '.join(report.purge) or 'nothing (already gone)'} from the secrets "
            "bucket (every version), and the local PKI",
            "ok",
        )


@cli.command()
@env_option
@click.argument("lock_id")
@click.pass_obj
def unlock(state: State, env: str, lock_id: str) -> None:
    """Release the environment's Terraform state lock LOCK_ID, left by a run that died (the
    lock error names it). Refused while a run started from this checkout still goes."""
    from kubeplat import ops

    ops.unlock(env, lock_id, state.env_dir, sandbox=state.sandbox)
    console.status(f"released the state lock {lock_id}", "ok")


@cli.command()
@env_option
@_output_option
@click.pass_obj
def output(state: State, env: str, output_format: str) -> None:
    """Terraform's outputs for the environment."""
    from kubeplat import ops

    values = ops.output(env, state.env_dir, sandbox=state.sandbox)
    if output_format == "json":
        console.data_json(values)
        return
    for line in output_lines(values, env):
        console.data(line)


def output_lines(values: dict[str, Any], env: str) -> list[str]:
    """Terraform's outputs for a reader: one `name = value` line per plain value, a map as
    indented `key: value` lines, an IAM policy document as its statement count (the documents
    themselves: `-o json`); every value that can be copied is whole."""
    lines: list[str] = []

    def shown(value: Any) -> str:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                document = json.loads(value)
                if isinstance(document, dict) and "Statement" in document:
                    count = len(document["Statement"])
                    return (
                        f"IAM policy, {count} statement{'s' if count != 1 else ''} "
                        f"(kubeplat output -e {env} -o json shows it)"
                    )
            return value
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return json.dumps(value, sort_keys=True)

    for name, value in sorted(values.items()):
        if isinstance(value, dict) and value:
            lines.append(f"{name}:")
            width = max(len(str(k)) for k in value)
            for key, item in sorted(value.items()):
                if isinstance(item, list):
                    lines.append(f"  {key}:")
                    lines += [f"    {shown(entry)}" for entry in item]
                else:
                    lines.append(f"  {str(key) + ':':<{width + 1}} {shown(item)}")
        elif isinstance(value, list):
            lines.append(f"{name}:")
            lines += [f"  {shown(entry)}" for entry in value]
        else:
            lines.append(f"{name} = {shown(value)}")
    return lines


@cli.command()
@env_option
@click.option(
    "--tls-only",
    is_flag=True,
    help="Add a statement refusing requests without TLS to a bucket that lacks one.",
)
@_output_option
@click.pass_obj
def buckets(state: State, env: str, tls_only: bool, output_format: str) -> None:
    """The environment's state and secrets buckets, and whether they refuse plain HTTP."""
    from kubeplat import ops

    rows = ops.buckets(env, state.env_dir, sandbox=state.sandbox, tls_only=tls_only)
    if output_format == "json":
        console.data_json([row.__dict__ for row in rows])
        return
    console.table(
        ["bucket", "holds", "plain HTTP"], [[r.name, r.holds, r.plain_http] for r in rows]
    )
    for row in rows:
        if row.changed:
            console.status(f"{row.name}: added a TLS-only statement to its policy", "ok")
    if not tls_only and any(r.plain_http == "accepted" for r in rows):
        console.status(f"kubeplat buckets -e {env} --tls-only refuses it", "warn")


@cli.command()
@env_option
@click.option(
    "--layer",
    type=click.Choice(["secure", "control-plane", "compute"]),
    help="Only this layer's instances.",
)
@_output_option
@click.pass_obj
def instances(state: State, env: str, layer: str | None, output_format: str) -> None:
    """What runs: name, private and public IP, id, state, zone, layer, launch time, and whether
    each node runs its layer's current PKI and manifests (config: current, not ready, behind,
    silent, or - before its first report)."""
    from kubeplat import ops

    rows = ops.instances(env, state.env_dir, sandbox=state.sandbox, layer=layer)
    if output_format == "json":
        console.data_json([row.as_json() for row in rows])
        return
    headers = [
        "name",
        "private ip",
        "public ip",
        "instance id",
        "state",
        "zone",
        "layer",
        "launched",
        "config",
    ]
    console.table(
        headers,
        [
            [r.name, r.private_ip, r.public_ip or "-", r.instance_id, r.state, r.availability_zone,
             r.layer, _when(r.launch_time), r.config]
            for r in rows
        ],
        title="instances",
    )  # fmt: skip
    if not rows:
        console.status(f"no instances in {env}", "warn")


def _when(iso: str) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS UTC` (whole: seconds and zone kept)."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso or "-"
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


@cli.group()
def etcd() -> None:
    """The secure layer's etcd: its members, health and snapshots."""


@etcd.command("status")
@env_option
@_output_option
@click.pass_obj
def etcd_status(state: State, env: str, output_format: str) -> None:
    """Members, leader, health, database size, which instance each member is, stale members,
    and the latest snapshot, as the secure nodes report them to the bucket."""
    from kubeplat import etcdstatus, ops

    found = ops.etcd_status(env, state.env_dir, sandbox=state.sandbox)
    if output_format == "json":
        console.data_json(found.as_json())
        return
    console.table(
        ["instance", "state", "member", "role", "db size", "reported"],
        [
            [r.instance_id, r.state, r.member or "-", r.role,
             f"{r.db_size / 1048576:.1f} MiB" if r.db_size else "-", etcdstatus.age(r.reported)]
            for r in found.rows
        ],
        title="etcd members",
    )  # fmt: skip
    quorum = {True: "yes", False: "NO (see README 'etcd: when quorum is lost')", None: "unknown"}
    console.status(f"cluster {found.cluster or '?'}: quorum {quorum[found.quorum]}", "info")
    if found.formed:
        console.status(f"formed {found.formed.get('formed', '?')} by {found.formed.get('by', '?')}")
    else:
        console.status("no formation record: the cluster has not been formed yet", "warn")
    if found.stale:
        console.status(f"members whose instance is gone: {', '.join(found.stale)}", "warn")
    snapshot = (
        f"{found.latest_snapshot} ({etcdstatus.age(found.latest_snapshot_time)}), "
        f"{found.snapshots} kept"
        if found.snapshots
        else "none yet"
    )
    console.status(f"latest snapshot: {snapshot}")


def _timeout_option(
    least: int, default: int, help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--timeout",
        "timeout_s",
        type=click.IntRange(min=least),
        default=default,
        show_default=True,
        help=help,
    )


@etcd.command("backup")
@env_option
@_timeout_option(10, 300, "Seconds to wait for the leader's snapshot.")
@click.pass_obj
def etcd_backup(state: State, env: str, timeout_s: int) -> None:
    """A snapshot now: the leader saves it to ENV/etcd-backups/ in the secrets bucket."""
    from kubeplat import ops

    key = ops.etcd_backup(env, state.env_dir, sandbox=state.sandbox, timeout_s=timeout_s)
    console.status(f"snapshot saved: {key}", "ok")
    console.data(key)


@etcd.command("restore")
@env_option
@click.option(
    "--snapshot",
    required=True,
    help="The snapshot's key (ENV/etcd-backups/NAME.db) or file name, as `etcd status` shows.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Restore even though etcd has quorum (what was written since the snapshot is lost).",
)
@_timeout_option(
    0, 900, "Seconds to wait for every member to run the restored cluster; 0: no wait."
)
@click.pass_obj
def etcd_restore(state: State, env: str, snapshot: str, force: bool, timeout_s: int) -> None:
    """Disaster recovery: every running secure instance restores the snapshot, and they form
    the cluster again with its data. Each member's previous data is kept on its disk."""
    from kubeplat import ops

    record = ops.etcd_restore(
        env,
        snapshot,
        state.env_dir,
        sandbox=state.sandbox,
        force=force,
        timeout_s=timeout_s or None,
        progress=lambda line: console.status(line, "info"),
    )
    done = "restored" if timeout_s else "restore recorded (the members restore it now)"
    console.status(f"{done}: {record['restore']['from']} (generation {record['generation']})", "ok")


@cli.command()
@env_option
@click.option(
    "--offline",
    is_flag=True,
    help="Only what this kubeplat installs; do not read what the environment runs.",
)
@_output_option
@click.pass_obj
def versions(state: State, env: str, offline: bool, output_format: str) -> None:
    """Every pinned component: the version (and digest) this kubeplat installs for the
    environment, and the one its secrets bucket gives its nodes now (they run it once kubeplat
    instances says current); kubeplat up moves them from one to the other."""
    from kubeplat import ops
    from kubeplat import versions as pinned

    rows = ops.versions(env, state.env_dir, sandbox=state.sandbox, running=not offline)
    if output_format == "json":
        console.data_json(pinned.as_json(rows))
        return
    headers = ["component", "this kubeplat installs"] + (
        [] if offline else ["the environment runs"]
    )
    body = []
    for row in rows:
        line = [row.component, pinned.short(row.installs)]
        if not offline:
            line.append(pinned.short(row.runs) + (" (differs)" if row.differs else ""))
        body.append(line)
    console.table(headers, body, title="versions")
    changed = [r.component for r in rows if r.differs]
    if changed:
        console.status(
            f"{len(changed)} component(s) differ: kubeplat up -e {env} installs this kubeplat's",
            "warn",
        )


@cli.command()
@env_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
@click.option("--merge", is_flag=True, help="Also merge it into ~/.kube/config (or $KUBECONFIG).")
@click.pass_obj
def kubeconfig(state: State, env: str, out: Path | None, merge: bool) -> None:
    """The admin kubeconfig (x509 client certificate, the API load balancer's name), 0600."""
    import os

    from kubeplat import ops

    path = ops.kubeconfig(env, state.env_dir, sandbox=state.sandbox, out=out)
    console.status(f"wrote {path} (0600)", "ok")
    if merge:
        target = Path(os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config")
        target = target.expanduser()
        ops.merge_kubeconfig(path, target)
        console.status(f"merged into {target}", "ok")
    console.data(str(path))


@cli.command()
@env_option
@click.argument("target", required=False)
@click.option("--print", "print_only", is_flag=True, help="Print the ssh command; do not run it.")
@click.pass_obj
def ssh(state: State, env: str, target: str | None, print_only: bool) -> None:
    """SSH to an instance (id, name or IP) as the node user with the environment's key."""
    import shlex

    from kubeplat import ops

    def choose(rows: list[Any]) -> Any:
        if not _interactive():
            from kubeplat.errors import KubeplatError

            raise KubeplatError("which instance? give an instance id, name or IP", "")
        for number, row in enumerate(rows, 1):
            console.status(f"{number:>3}  {row.name:<20} {row.private_ip:<15} {row.instance_id}")
        picked = click.prompt("instance", type=click.IntRange(1, len(rows)), err=True)
        return rows[picked - 1]

    plan = ops.ssh(env, target, state.env_dir, sandbox=state.sandbox, choose=choose)
    if print_only:
        console.data(shlex.join(plan.argv))
        return
    ops.run_ssh(plan)


@cli.group()
def manifests() -> None:
    """The node manifests the agents sync every 10 s."""


@manifests.command(name="push")
@env_option
@click.pass_obj
def manifests_push(state: State, env: str) -> None:
    """Re-render and upload only the manifests; nodes pick them up within 10 s (control-plane
    nodes one at a time, each after the one before it answers again)."""
    from kubeplat import ops

    changed = ops.manifests_push(env, state.env_dir, sandbox=state.sandbox)
    for name in changed:
        console.data(name)
    if changed:
        console.status(
            f"{len(changed)} manifests changed; nodes pick them up within 10 s "
            "(control-plane nodes one at a time)",
            "ok",
        )
    else:
        console.status("manifests unchanged; nothing uploaded", "ok")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script (eval "$(kubeplat completion bash)")."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    console.data(completer(cli, {}, "kubeplat", "_KUBEPLAT_COMPLETE").source())


@cli.group(name="sandbox")
def sandbox_group() -> None:
    """The local AWS emulator: one per user, shared by every checkout."""


@sandbox_group.command(name="start")
def sandbox_start() -> None:
    """Start the sandbox (or find it running) and print its endpoint."""
    from kubeplat import sandbox

    console.data(sandbox.ensure().endpoint)


@sandbox_group.command(name="status")
def sandbox_status() -> None:
    """Print the sandbox's endpoint; when it is not running, say so and exit 3 (as
    `systemctl status` does for a stopped unit: a state, not an error)."""
    from kubeplat import sandbox

    running = sandbox.current()
    if running is None:
        console.status("the sandbox is not running; start it: kubeplat sandbox start", "warn")
        sys.exit(3)
    console.data(running.endpoint)
    console.status(
        f"the sandbox is running (pid {running.pid}; log in {sandbox.state_dir()})", "ok"
    )


@sandbox_group.command(name="stop")
def sandbox_stop() -> None:
    """Stop the sandbox; its data (every sandbox environment) is gone."""
    from kubeplat import sandbox

    stopped = sandbox.stop()
    console.status("sandbox stopped" if stopped else "the sandbox was not running", "ok")


def _certs_json(rows: list[Any]) -> None:
    console.data_json(
        [
            {
                "name": r.name,
                "subject": r.subject,
                "issuer": r.issuer,
                "expires": r.expires.isoformat(),
                "days_left": r.days_left,
                "sha256_fingerprint": r.fingerprint,
            }
            for r in rows
        ]
    )


def _certs_table(rows: list[Any], window: int) -> None:
    console.table(
        ["name", "subject", "issuer", "expires", "days left"],
        [
            [r.name, r.subject, r.issuer, f"{r.expires:%Y-%m-%d %H:%M} UTC", str(r.days_left)]
            for r in rows
        ],
        row_styles=["warn" if r.days_left <= window else "" for r in rows],
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every outcome into an exit code."""
    from kubeplat.errors import ConfigError, KubeplatError

    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    _survive_hangup()
    try:
        cli.main(args=args, prog_name="kubeplat", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        if debug:
            traceback.print_exc()
        console.error("interrupted")
        sys.exit(130)
    except KubeplatError as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, ConfigError):
            for problem in exc.problems:
                if problem.warning:
                    console.warn(str(problem))
                else:
                    console.status(str(problem), "error")
        console.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        console.error(*_os_error(exc))
        sys.exit(1)
    except Exception as exc:  # the last line of defence: no traceback without --debug
        if debug:
            raise
        console.error(
            f"internal error: {type(exc).__name__}: {exc}",
            "run again with --debug for the traceback, and report it",
        )
        sys.exit(1)
    sys.exit(0)


def entry() -> None:
    """The `kubeplat` command (and `python -m kubeplat`): `main`, then a quick exit.

    Python's own exit tears down every module and frees every object one by one (boto3's
    service models, jinja's templates): about 0.1 s of each command, spent after its work is
    done. With the output flushed, the exit handlers run and no other thread left working,
    nothing else remains to be done, so the process ends there; otherwise (and under a
    profiler or tracer, which write their results after the program returns) it exits as
    usual."""
    import atexit
    import threading

    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if (
        not isinstance(code, int)
        or sys.getprofile()
        or sys.gettrace()
        or any(
            t.is_alive() and not t.daemon
            for t in threading.enumerate()
            if t is not threading.main_thread()
        )
    ):
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)  # a closed pipe: Python's exit reports it as it always has
    atexit._run_exitfuncs()
    os._exit(code)


# Options of the `kubeplat` group itself, accepted anywhere on the line (with their values).
GLOBAL_FLAGS = ("--debug", "--sandbox")
GLOBAL_VALUED = ("--env-dir",)


def hoist_global_options(args: list[str]) -> list[str]:
    """`kubeplat up -e dev --debug` as `kubeplat --debug up -e dev`: the group's own options are
    moved before the subcommand wherever they are given (our hints say "run again with --debug"
    after the command), up to a `--`."""
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            rest += args[index:]
            break
        if word in GLOBAL_FLAGS or word.startswith(tuple(f"{v}=" for v in GLOBAL_VALUED)):
            front.append(word)
        elif word in GLOBAL_VALUED and index + 1 < len(args):
            front += [word, args[index + 1]]
            index += 1
        else:
            rest.append(word)
        index += 1
    return front + rest


def _os_error(exc: OSError) -> tuple[str, str]:
    """A file-system error as one line naming the path and the cause, and a hint."""
    from kubeplat.errors import os_hint

    cause = exc.strerror or type(exc).__name__
    path = exc.filename if exc.filename is not None else exc.filename2
    shown = str(path) if path is not None else ""
    if len(shown) > 120:
        shown = shown[:60] + "…" + shown[-40:]
    where = f"{shown}: " if shown else ""
    return f"{where}{cause}", os_hint(exc)


def _survive_hangup() -> None:
    """A closed terminal (SIGHUP) does not stop kubeplat half-way: what went to the terminal
    goes to /dev/null from then on (what went to a file still goes there) and the command runs
    to its end (Terraform's own output stays in `.kubeplat/ENV/logs/`). `nohup` is kept."""
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return
    # Known now: once hung up, a terminal may no longer answer isatty().
    terminals = [fd for fd in (0, 1, 2) if os.isatty(fd)]

    def detach(_signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in terminals:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        os.close(null)

    signal.signal(signal.SIGHUP, detach)
