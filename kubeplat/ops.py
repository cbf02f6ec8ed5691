"""What each command does, one function a command, between the CLI and the modules.

These functions never print to stdout and never exit: they return results or raise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeplat import config, console, terraform
from kubeplat.errors import KubeplatError, Problem

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kubeplat import pipeline, pki
    from kubeplat.pki import CertInfo
    from kubeplat.terraform import Terraform


@dataclass(frozen=True)
class ValidateReport:
    """The outcome of `kubeplat validate`."""

    environment: config.Environment
    warnings: tuple[Problem, ...]
    module_checked: bool
    terraform: tuple[str, str] | None = None  # (path, version) of the Terraform that checked it


def validate(env: str, env_dir: str | None = None) -> ValidateReport:
    """Check the environment file, then the Terraform module when Terraform is installed."""
    environment = config.load(env, env_dir)
    checked = False
    if terraform.available():
        tf = terraform.Terraform(environment.workdir, data_name="validate")
        tf.init(backend=None)
        errors = tf.validate()
        if errors:
            raise KubeplatError(
                f"the Terraform module is not valid:\n{terraform.describe(errors)}",
                "this is a bug in kubeplat's module or a local edit of terraform/",
            )
        checked = True
    found = terraform.found() if checked else None
    return ValidateReport(environment, environment.warnings, checked, found)


def init(name: str, env_dir: str | None = None) -> Path:
    """Write `NAME.tfvars` from the sample into the environments folder (`config.env_dir`)."""
    return config.write_from_sample(name, config.env_dir(env_dir))


@dataclass(frozen=True)
class CertsReport:
    """The outcome of `kubeplat certs`: the table, and what this run issued and why."""

    rows: list[CertInfo]
    issued: dict[str, str]
    directory: Path
    window: int = 90  # the environment's cert_renew_days
    announced: bool = False  # what was issued is already said (the bucket's PKI step says it)
    rotation: Any = None  # a staged rotation in progress (rotation.Status)


def certs(
    env: str,
    env_dir: str | None = None,
    *,
    rotate: str | None = None,
    check: bool = False,
    now: dt.datetime | None = None,
    sandbox: bool = False,
) -> CertsReport:
    """Load the PKI, create what is missing or near expiry (or, with `check`, only look).

    `rotate` on an environment whose secrets bucket holds its PKI rotates the bucket's set
    (nodes read it from there; `up` would otherwise put it back); before the first `up`, the
    local cache, which then seeds the bucket.
    """
    from kubeplat import pki
    from kubeplat.pkistore import LocalStore

    if rotate:
        live = _live_pki(env, env_dir, sandbox)
        if live is not None:
            return _rotate_live(*live, rotate, now)
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
        window = environment.cert_renew_days
        soon = [r for r in rows if r.days_left <= window]
        if soon:
            names = ", ".join(f"{r.name} ({r.days_left} days)" for r in soon)
            raise CertificatesExpiring(
                rows, f"certificates expire within {window} days: {names}", window
            )
        return CertsReport(rows, {}, store.root, environment.cert_renew_days)
    result = _ensure_pki(environment, now=now, rotate=rotate)
    return CertsReport(
        pki.describe(result.files, now),
        dict(result.reasons),
        store.root,
        environment.cert_renew_days,
    )


def _bucket_store(connected: Any) -> Any:
    """The environment's BucketStore, or None when its secrets bucket does not exist yet."""
    from kubeplat import state
    from kubeplat.store import BucketStore

    env, aws = connected.env, connected.aws
    if not state.bucket_exists(aws, env.secrets_bucket_name):
        return None
    return BucketStore.of(aws, env, state.kms_key(aws, env))


def _live_pki(env: str, env_dir: str | None, sandbox: bool) -> tuple[Any, Any] | None:
    """An environment whose secrets bucket holds a PKI, with its BucketStore; or None.

    A sandbox that is not running holds nothing (its data ends with it): no AWS is touched.
    """
    from kubeplat import pipeline
    from kubeplat import sandbox as sandboxes

    environment = config.load(env, env_dir)
    if (environment.sandbox or sandbox) and sandboxes.current() is None:
        return None
    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    store = _bucket_store(connected)
    return (connected.env, store) if store is not None and store.names("pki/") else None


def _bucket_pki(
    env: Any, store: Any, now: dt.datetime | None, rotate: str | None = None
) -> CertsReport:
    """The PKI step of `up` on the bucket's set (with `rotate`, one leaf reissued too)."""
    from kubeplat import pipeline, pki

    issued: dict[str, str] = {}
    files = pipeline.sync_pki(env, store, write=True, now=now, rotate=rotate, issued=issued)
    if issued:
        _refresh_kubeconfig(env, files)
    rows = pki.describe(files, now or dt.datetime.now(dt.UTC))
    where = Path(f"s3://{store.bucket}/{store.prefix}/pki/")
    return CertsReport(rows, issued, where, env.cert_renew_days, announced=True)


def _rotate_live(env: Any, store: Any, rotate: str, now: dt.datetime | None) -> CertsReport:
    """Rotate one leaf in the bucket (and the cache) at once; a CA or the service-account key
    in stages (`kubeplat.rotation`): this takes the first step."""
    from kubeplat import pki, rotation

    if not rotation.names_for(rotate):
        return _bucket_pki(env, store, now, rotate)
    status = rotation.begin(env, store, rotate, now)
    files = store.load_pki()
    _refresh_kubeconfig(env, files)
    rows = pki.describe(pki.settle(files), now or dt.datetime.now(dt.UTC))
    where = Path(f"s3://{store.bucket}/{store.prefix}/pki/")
    return CertsReport(rows, {}, where, env.cert_renew_days, announced=True, rotation=status)


@dataclass(frozen=True)
class RotationReport:
    """`kubeplat certs rotation`: where the rotation stands (None: none in progress)."""

    status: Any
    rows: list[CertInfo]
    window: int


def rotation_step(
    env: str,
    env_dir: str | None = None,
    *,
    sandbox: bool = False,
    force: bool = False,
    now: dt.datetime | None = None,
) -> RotationReport:
    """Show the staged rotation in progress, and take its next step when every running node
    runs the current one (or with `force`)."""
    from kubeplat import pipeline, pki, rotation

    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    store = _bucket_store(connected)
    if store is None:
        raise KubeplatError(
            f"the secrets bucket {connected.env.secrets_bucket_name} does not exist yet",
            f"nothing runs to rotate; kubeplat certs -e {env} --rotate NAME replaces it at once",
        )
    status = rotation.step(connected.env, store, connected.aws, force=force, now=now)
    files = pki.settle(store.load_pki())
    if status is not None and status.taken:
        _refresh_kubeconfig(connected.env, files)
    rows = pki.describe(files, now or dt.datetime.now(dt.UTC))
    return RotationReport(status, rows, connected.env.cert_renew_days)


def _refresh_kubeconfig(env: Any, files: Any) -> None:
    """Rewrite the local admin kubeconfig (same server) after its CA or certificate changed."""
    import yaml

    from kubeplat import render as renderer

    path = env.kubeconfig_path
    try:
        server = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return  # none yet, or not ours: `up` and `kubeplat kubeconfig` write it
    if "admin.crt" in files:
        _write_private(path, renderer.admin_kubeconfig(env, files, server))


def renew(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, now: dt.datetime | None = None
) -> CertsReport:
    """`certs renew`: the PKI step of `up` alone. The bucket's set is completed and every leaf
    within `cert_renew_days` of expiry, or whose names changed, reissued and stored back; the
    nodes' agents then deliver it. No Terraform, no other object."""
    from kubeplat import pipeline

    connected = pipeline.connect(env, env_dir, sandbox, start=True)
    store = _bucket_store(connected)
    if store is None:
        raise KubeplatError(
            f"the secrets bucket {connected.env.secrets_bucket_name} does not exist yet",
            f"the first kubeplat up -e {env} creates it and the PKI",
        )
    return _bucket_pki(connected.env, store, now)


@dataclass(frozen=True)
class TokenReport:
    """`kubeplat token`: the environment's bootstrap token (its id, never its secret)."""

    token_id: str
    expires: dt.datetime | None
    where: str
    issued: str = ""  # why it was just (re)issued


def token(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, rotate: bool = False
) -> TokenReport:
    """The environment's bootstrap token; with `rotate`, a new one (in the bucket once the
    environment runs: every node's agent gets it, the control plane gives it to the cluster and
    deletes the old one)."""
    from kubeplat import pki
    from kubeplat.pkistore import LocalStore

    issued = ""
    if rotate:
        report = certs(env, env_dir, rotate=pki.BOOTSTRAP_TOKEN, sandbox=sandbox)
        issued = report.issued.get(pki.BOOTSTRAP_TOKEN, "")
    live = _live_pki(env, env_dir, sandbox)
    if live is not None:
        files = live[1].load_pki()
        where = f"s3://{live[1].bucket}/{live[1].prefix}/pki/"
    else:
        environment = config.load(env, env_dir)
        store = LocalStore(environment.workdir / "pki")
        files, where = store.load(), str(store.root)
    if pki.BOOTSTRAP_TOKEN not in files:
        raise KubeplatError(
            f"no bootstrap token in {where}", f"create the PKI: kubeplat certs -e {env}"
        )
    token_id = files[pki.BOOTSTRAP_TOKEN].decode(errors="replace").split(".", 1)[0]
    return TokenReport(token_id, pki.token_expiry(files), where, issued)


def token_create(
    env: str, env_dir: str | None, ttl: str, description: str, *, sandbox: bool = False
) -> Any:
    """An extra bootstrap token the cluster accepts for `ttl`, given through its API."""
    from kubeplat import tokens

    environment = config.load(env, env_dir)
    duration = tokens.parse_ttl(ttl)
    if environment.sandbox or sandbox:
        raise KubeplatError(
            f"{env} is a sandbox environment: the sandbox emulates AWS and runs no Kubernetes API "
            "server to give a token to",
            f"its nodes' own token: kubeplat token -e {env}",
        )
    return tokens.create(environment.kubeconfig_path, duration, description)


class CertificatesExpiring(KubeplatError):
    """`certs --check`: at least one certificate expires soon; the table is carried."""

    def __init__(self, rows: list[CertInfo], message: str, window: int) -> None:
        super().__init__(message, "reissue them: kubeplat certs renew -e ENV (or kubeplat up)")
        self.rows = rows
        self.window = window


def _ensure_pki(
    environment: config.Environment, *, now: dt.datetime | None = None, rotate: str | None = None
) -> pki.Result:
    """Load the PKI cache, complete it, store what changed."""
    from kubeplat import pki
    from kubeplat.pkistore import LocalStore

    store = LocalStore(environment.workdir / "pki")
    stored = store.load()
    path = environment.ssh_public_key_path
    given = config.read_public_key(path) if path else None
    result = pki.ensure(environment, stored, now=now, rotate=rotate, ssh_public_key=given)
    store.save(result.changed(stored), removed=set(stored) - set(result.files))
    return result


@dataclass(frozen=True)
class RenderReport:
    """The outcome of `kubeplat render`: what was written where."""

    directory: Path
    files: dict[str, int]


def render(env: str, out: Path, env_dir: str | None = None) -> RenderReport:
    """Render everything a node would get into `out` (offline); secrets 0600."""
    from kubeplat import render as renderer

    environment = config.load(env, env_dir)
    files = _ensure_pki(environment).files
    bundle = renderer.bundle(environment, files)
    write_tree(out, bundle)
    return RenderReport(out, {name: len(data) for name, data in bundle.items()})


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write a rendered bundle; private material 0600 in 0700 directories."""
    import os

    from kubeplat.pki import is_private

    if root.exists() and not root.is_dir():
        raise KubeplatError(f"{root} exists and is not a directory", "choose another --out")
    for name, data in files.items():
        target = root / name
        secret = name.startswith("kubeconfig/") or (name.startswith("pki/") and is_private(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith(("pki/", "kubeconfig/")):
            for parent in target.relative_to(root).parents:
                if str(parent) != ".":
                    os.chmod(root / parent, 0o700)
        descriptor = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644
        )
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(target, 0o600 if secret else 0o644)


@dataclass(frozen=True)
class PlanReport:
    """The outcome of `kubeplat plan` / the plan step of `up` and `destroy`."""

    account: str
    region: str
    environment: str
    add: int
    change: int
    destroy: int
    rolls: list[str]
    uploads: list[str]
    plan_file: str | None
    roll_order: list[str]
    # Other environments' prefixes in the secrets bucket that no environment file beside this
    # one names (a renamed or removed environment).
    unclaimed: list[str] = field(default_factory=list)
    # `destroy --purge`: what goes from the secrets bucket once the destroy has succeeded.
    purge: list[str] = field(default_factory=list)
    # Changed manifests of running layers: staged, made current once the apply succeeded.
    after_apply: list[str] = field(default_factory=list)
    # What the plan destroys or replaces, each with Terraform's reason (pipeline.PlanSummary).
    removals: list[dict[str, Any]] = field(default_factory=list)
    # What the plan adopts (resources an interrupted run left in AWS): (address, AWS id).
    imports: list[tuple[str, str]] = field(default_factory=list)
    # Whether the roll or upgrade it makes will work (rehearsal.py); None for a destroy.
    rehearsal: Any = None

    @property
    def changes(self) -> bool:
        return bool(
            self.add or self.change or self.destroy or self.imports or self.uploads or self.purge
        )

    def as_json(self) -> dict[str, object]:
        return {
            "account": self.account,
            "region": self.region,
            "environment": self.environment,
            "add": self.add,
            "change": self.change,
            "destroy": self.destroy,
            "rolls": self.rolls,
            "roll_order": self.roll_order,
            "uploads": self.uploads,
            "plan_file": self.plan_file,
            "unclaimed": self.unclaimed,
            "purge": self.purge,
            "after_apply": self.after_apply,
            "destroyed": [r["address"] for r in self.removals if r["action"] == "delete"],
            "replaced": [
                {"address": r["address"], "reason": r["reason"], "attributes": r["attributes"]}
                for r in self.removals
                if r["action"] == "replace"
            ],
            "imported": [{"address": address, "id": id_} for address, id_ in self.imports],
            "changes": self.changes,
            **({"rehearsal": self.rehearsal.as_json()} if self.rehearsal is not None else {}),
        }


def _report(
    prepared: pipeline.Prepared,
    summary: pipeline.PlanSummary,
    plan_file: Path | None,
    *,
    rehearse: bool = True,
) -> PlanReport:
    from kubeplat import inventory, pipeline

    env, order = prepared.env, []
    running = [
        (i.layer, i.instance_id)
        for i in inventory.instances(prepared.aws, env.environment)
        if i.state in ("pending", "running")
    ]
    if summary.rolls:
        order = pipeline.roll_order(
            summary.rolls,
            running,
            sandbox=prepared.aws.sandbox,
            stacked=env.topology == "stacked",
            compute_min_healthy=env.compute_roll_min_healthy,
            compute_max_healthy=env.compute_roll_max_healthy,
        )
    return PlanReport(
        prepared.account,
        env.aws_region,
        env.environment,
        summary.add,
        summary.change,
        summary.destroy,
        summary.rolls,
        prepared.pending,
        str(plan_file) if plan_file else None,
        order,
        _unclaimed(prepared),
        after_apply=prepared.deferred,
        removals=summary.removals,
        imports=summary.imports,
        rehearsal=_rehearse(prepared, summary, running) if rehearse else None,
    )


def _rehearse(
    prepared: pipeline.Prepared, summary: pipeline.PlanSummary, running: list[tuple[str, str]]
) -> Any:
    """The rehearsal of what the plan rolls or upgrades (rehearsal.py)."""
    from kubeplat import etcdstatus, rehearsal, versions

    env = prepared.env
    held = versions.held(env, prepared.store)
    rolls_secure = "secure" in summary.rolls
    moves = held.get("registry.k8s.io/kube-apiserver", "").split("@")[0] not in (
        "",
        f"v{env.kubernetes_version}",
    )
    secure = {i: "running" for layer, i in running if layer == "secure"}
    etcd = None
    api: Any = None
    if secure and (rolls_secure or moves):
        etcd = etcdstatus.read(prepared.aws, env.secrets_bucket_name, env.environment, secure)
    if summary.rolls or moves:
        from kubeplat import kubeapi

        try:
            api = kubeapi.connect(env.kubeconfig_path, prepared.files, sandbox=prepared.aws.sandbox)
        except kubeapi.Unreachable as exc:
            api = exc
    return rehearsal.rehearse(
        environment=env.environment,
        rolls=summary.rolls,
        running=running,
        grace=env.compute_asg_grace_period,
        compute_min_healthy=env.compute_roll_min_healthy,
        compute_max_healthy=env.compute_roll_max_healthy,
        stacked=env.topology == "stacked",
        sandbox=prepared.aws.sandbox,
        target=env.kubernetes_version,
        held=held,
        etcd=etcd,
        files=prepared.files,
        kubectl=rehearsal.kubectl_version(),
        api=api,
    )


def _hold_on_red(
    report: PlanReport,
    force: bool,
    again: str,
    show: Callable[[PlanReport], None] | None = None,
) -> None:
    """A red item of the rehearsal stops here (nothing uploaded or applied) unless `force`;
    `show` sees the plan first."""
    found = report.rehearsal
    if found is None or not found.red or force:
        return
    if show is not None:
        show(report)
    first = found.red[0]
    more = f" (and {len(found.red) - 1} more)" if len(found.red) > 1 else ""
    raise KubeplatError(
        f"upgrade check: {first.name}: {first.detail}{more}; nothing was uploaded or applied",
        f"fix it and run again, or roll anyway: {again} --force "
        "(kubeplat upgrade-check shows every item)",
    )


def _unclaimed(prepared: pipeline.Prepared) -> list[str]:
    """Environments whose PKI the secrets bucket holds and that no environment file in this
    one's folder names (a rename makes a new environment; the old one's objects stay until it
    is destroyed with --purge)."""
    from kubeplat.store import environments_in

    env = prepared.env
    folder = env.path.parent
    named = {p.stem for p in folder.glob("*.tfvars")} | {env.environment}
    return [e for e in environments_in(prepared.aws, env.secrets_bucket_name) if e not in named]


def plan(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, out: Path | None = None
) -> PlanReport:
    """The whole pipeline up to a saved Terraform plan; nothing uploaded, nothing applied."""
    from kubeplat import savedplan

    # A plan kept for `kubeplat apply` must be applicable exactly: a PKI the bucket does not
    # hold yet is created first (no node reads it before the apply), never made up in memory;
    # a renewal or rotation step is refused (`certs renew` / `certs rotation` take them).
    plan_file = out.resolve() if out else config.load(env, env_dir).workdir / "plan.tfplan"
    try:
        prepared, _tf, summary = _prepare_and_plan(
            env, env_dir, sandbox, plan_file, write_pki=out is not None, new_pki_only=True
        )
    finally:
        if out is None:
            plan_file.unlink(missing_ok=True)
    if out is not None:
        savedplan.save(prepared, summary, plan_file)
    return _report(prepared, summary, plan_file if out else None)


def apply(
    env: str,
    plan_file: Path,
    env_dir: str | None = None,
    *,
    sandbox: bool = False,
    confirm: Callable[[PlanReport], bool] | None = None,
    force: bool = False,
    show: Callable[[PlanReport], None] | None = None,
) -> UpReport:
    """Apply exactly a plan saved by `plan --out`: refused (nothing uploaded or applied) when
    the node configuration or the state changed since, or (unless `force`) when the
    rehearsal finds a red item; then upload, apply, prune, outputs."""
    from kubeplat import pipeline, savedplan

    config.load(env, env_dir)  # the environment file's problems first
    saved = savedplan.load(plan_file.resolve(), env)
    prepared = _prepare(env, env_dir, sandbox, write_pki=False)
    tf = pipeline.terraform_for(prepared)
    savedplan.check(saved, prepared, tf, env)
    summary = pipeline.PlanSummary(
        add=int(saved.summary.get("add", 0)),
        change=int(saved.summary.get("change", 0)),
        destroy=int(saved.summary.get("destroy", 0)),
        rolls=[str(r) for r in saved.summary.get("rolls", [])],
        removals=[dict(r) for r in saved.summary.get("removals", [])],
        imports=[(str(a), str(i)) for a, i in saved.summary.get("imports", [])],
        resources=[(str(a), str(r)) for a, r in saved.summary.get("resources", [])],
    )
    report = _report(prepared, summary, saved.plan_file)
    outputs: dict[str, object] = {}
    uploaded: list[str] = []
    if report.changes:
        _hold_on_red(report, force, f"kubeplat apply -e {env} {plan_file}", show)
        if confirm is not None and not confirm(report):
            raise KubeplatError("cancelled: nothing was uploaded or applied", "")
        savedplan.check_state(saved, tf, env)  # again: someone may have applied meanwhile
        uploaded = pipeline.upload(prepared)
        if summary.changes:
            with _after_upload(uploaded, prepared.deferred, f"kubeplat up -e {env}"):
                outputs = pipeline.apply(prepared, tf, saved.plan_file)
            pipeline.wait_for_secure(prepared, summary, f"kubeplat up -e {env}")
        before = len(uploaded)
        uploaded += pipeline.promote(prepared)
        uploaded += pipeline.prune(prepared)
    else:
        before = 0
    if not summary.changes:
        outputs = pipeline.outputs(tf)
    return UpReport(
        report, uploaded, summary.changes, outputs, _kubeconfig(prepared, outputs), before
    )


def _prepare(*args: Any, **kwargs: Any) -> pipeline.Prepared:
    """`pipeline.prepare` under a spinner (a timestamped line without a terminal)."""
    from kubeplat import pipeline

    with console.Activity("preparing: account, buckets, PKI, node configuration"):
        return pipeline.prepare(*args, **kwargs)


def _prepare_and_plan(
    *args: Any, **kwargs: Any
) -> tuple[pipeline.Prepared, Terraform, pipeline.PlanSummary]:
    """`pipeline.prepare_and_plan` under a spinner (a timestamped line without a terminal)."""
    from kubeplat import pipeline

    with console.Activity(
        "preparing (account, buckets, PKI, node configuration) and planning (terraform plan "
        "reads every resource first)"
    ):
        return pipeline.prepare_and_plan(*args, **kwargs)


def _plan(*args: Any, **kwargs: Any) -> pipeline.PlanSummary:
    """`pipeline.plan` under a spinner: Terraform refreshes every resource first."""
    from kubeplat import pipeline

    with console.Activity("planning: terraform plan (reading every resource first)"):
        return pipeline.plan(*args, **kwargs)


@contextmanager
def _after_upload(uploaded: list[str], deferred: list[str], again: str) -> Iterator[None]:
    """A failed apply after the upload says what it left: what was uploaded stays (the stubs of
    the launch templates in place name their own cloud-configs), the changed manifests of
    running layers stay staged (their nodes keep what they run) and nothing was removed."""
    from kubeplat.errors import TerraformFailed

    try:
        yield
    except TerraformFailed as exc:
        if uploaded:
            exc.message += (
                f"; the new node configuration had been uploaded ({len(uploaded)} objects)"
            )
        if deferred:
            exc.message += (
                f"; the {len(deferred)} changed manifests of running layers stay staged, "
                "so running nodes keep what they run"
            )
        if uploaded or deferred:
            exc.message += "; nothing was removed"
            exc.hint = f"{exc.hint}; to converge, run: {again}" if exc.hint else f"run: {again}"
        raise


def _kubeconfig(prepared: pipeline.Prepared, outputs: Mapping[str, object]) -> Path | None:
    """The admin kubeconfig for the API endpoint the outputs name (0600), or None."""
    from kubeplat import render as renderer

    server = outputs.get("api_endpoint")
    if not isinstance(server, str):
        return None
    path = prepared.env.kubeconfig_path
    _write_private(path, renderer.admin_kubeconfig(prepared.env, prepared.files, server))
    return path


@dataclass(frozen=True)
class UpReport:
    """The outcome of `kubeplat up`."""

    plan: PlanReport
    uploaded: list[str]
    applied: bool
    outputs: dict[str, object]
    kubeconfig: Path | None
    # How many of `uploaded` (the first ones) went up before the apply; the rest, after it.
    before_apply: int = 0


def up(
    env: str,
    env_dir: str | None = None,
    *,
    sandbox: bool = False,
    confirm: Callable[[PlanReport], bool] | None = None,
    force: bool = False,
    show: Callable[[PlanReport], None] | None = None,
) -> UpReport:
    """Certs, render, plan, confirm, upload, apply; `confirm` sees the plan (None: approve).
    A red item of the rehearsal stops before the confirmation (`show` sees the plan then)
    unless `force`."""
    from kubeplat import pipeline

    plan_file = config.load(env, env_dir).workdir / "up.tfplan"
    outputs: dict[str, object] = {}
    try:
        prepared, tf, summary = _prepare_and_plan(env, env_dir, sandbox, plan_file, write_pki=True)
        report = _report(prepared, summary, None)
        before = 0
        if not report.changes:
            uploaded: list[str] = []
            applied = False
        else:
            _hold_on_red(report, force, f"kubeplat up -e {env}", show)
            if confirm is not None and not confirm(report):
                raise KubeplatError("cancelled: nothing was uploaded or applied", "")
            uploaded = pipeline.upload(prepared)
            applied = summary.changes
            if applied:
                with _after_upload(uploaded, prepared.deferred, f"kubeplat up -e {env}"):
                    outputs = pipeline.apply(prepared, tf, plan_file)
                pipeline.wait_for_secure(prepared, summary, f"kubeplat up -e {env}")
            before = len(uploaded)
            uploaded += pipeline.promote(prepared)
            uploaded += pipeline.prune(prepared)
        if not applied:
            # The outputs of the state the plan was made from (no further Terraform run).
            current = pipeline.planned_outputs(plan_file)
            outputs = current if current is not None else pipeline.outputs(tf)
    finally:
        plan_file.unlink(missing_ok=True)
    return UpReport(report, uploaded, applied, outputs, _kubeconfig(prepared, outputs), before)


def destroy(
    env: str,
    env_dir: str | None = None,
    *,
    sandbox: bool = False,
    confirm: Callable[[PlanReport], bool] | None = None,
    purge: bool = False,
) -> PlanReport:
    """Destroy what Terraform built; the buckets (state, PKI) are kept. With `purge`, once the
    destroy has succeeded, the environment's prefix of the secrets bucket goes too (every
    version): its PKI, node configuration, reports and etcd backups."""
    from kubeplat import pipeline

    prepared = _prepare(env, env_dir, sandbox, write_pki=False)
    prepared.changed, prepared.stale = [], []  # destroy uploads nothing
    tf = pipeline.terraform_for(prepared)
    plan_file = prepared.env.workdir / "destroy.tfplan"
    try:
        summary = _plan(prepared, tf, plan_file, destroy=True)
        report = _report(prepared, summary, None, rehearse=False)
        if purge:
            if not summary.changes:  # an empty destroy: are they really gone?
                _refuse_purge_while_running(prepared, before=True)
            report = dataclasses.replace(report, purge=_purge_plan(prepared.store))
        if report.changes:
            if confirm is not None and not confirm(report):
                raise KubeplatError("cancelled: nothing was destroyed", "")
            if summary.changes:
                pipeline.apply(prepared, tf, plan_file)
    finally:
        plan_file.unlink(missing_ok=True)
    if purge:
        # Only now: a failed destroy leaves running nodes that still read these objects.
        _refuse_purge_while_running(prepared, before=False)
        prepared.store.purge()
        from kubeplat.pkistore import LocalStore

        cache = LocalStore(prepared.env.workdir / "pki")
        cache.save({}, removed=set(cache.load()))
        prepared.env.kubeconfig_path.unlink(missing_ok=True)  # it holds the admin key
    return report


def _refuse_purge_while_running(prepared: pipeline.Prepared, *, before: bool) -> None:
    """No purge while an instance of the environment may still read its objects: a state
    that lost track of them (moved, deleted) plans an empty destroy, which must not be
    taken for a destroyed environment."""
    from kubeplat import inventory

    alive = [
        i.instance_id
        for i in inventory.instances(prepared.aws, prepared.env.environment)
        if i.state in ("pending", "running", "stopping", "stopped")
    ]
    if not alive:
        return
    when = "nothing was destroyed or removed" if before else "its bucket objects were kept"
    raise KubeplatError(
        f"--purge refused: {len(alive)} instance(s) of environment {prepared.env.environment} "
        f"are not terminated ({', '.join(alive[:5])}); {when}",
        "they read the objects --purge would remove: destroy them first (is the Terraform state "
        "the one that built them?), then run the same command again",
    )


def _purge_plan(store: Any) -> list[str]:
    """What `destroy --purge` removes, a line per folder of the environment's prefix."""
    counts: dict[str, int] = {}
    for name in store.names(""):
        folder = name.split("/", 1)[0] + "/" if "/" in name else name
        counts[folder] = counts.get(folder, 0) + 1
    return [f"{store.prefix}/{folder} ({n} objects)" for folder, n in sorted(counts.items())]


def output(env: str, env_dir: str | None = None, *, sandbox: bool = False) -> dict[str, object]:
    """Terraform's outputs for the environment."""
    from kubeplat import pipeline

    return pipeline.outputs(pipeline.terraform_for(pipeline.deployed(env, env_dir, sandbox)))


def unlock(env: str, lock_id: str, env_dir: str | None = None, *, sandbox: bool = False) -> None:
    """Release the environment's state lock `lock_id` (`terraform force-unlock`, with the
    environment's backend), refused while a run started from this checkout still holds it."""
    import re

    from kubeplat import pipeline

    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", lock_id):
        raise KubeplatError(
            f"{lock_id[:80]!r} is not a lock ID",
            "give the ID the lock error printed (e.g. 3f2a9c1e-…)",
        )
    tf = pipeline.terraform_for(pipeline.deployed(env, env_dir, sandbox))
    tf.run("force-unlock", "-force", lock_id)


def _write_private(path: Path, data: bytes) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def instances(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, layer: str | None = None
) -> list[Any]:
    """The environment's instances, sorted by layer then zone."""
    from kubeplat import pipeline

    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    return _instances_of(connected.aws, connected.env, layer)


def _instances_of(aws: Any, environment: config.Environment, layer: str | None) -> list[Any]:
    from kubeplat import inventory

    rows = inventory.instances(aws, environment.environment, layer)
    return inventory.converged(aws, environment.secrets_bucket_name, environment.environment, rows)


def versions(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, running: bool = True
) -> list[Any]:
    """`kubeplat versions`: what this kubeplat installs for the environment, and (`running`)
    what its secrets bucket gives its nodes."""
    from kubeplat import pipeline
    from kubeplat import versions as table

    environment = config.load(env, env_dir)
    installs = table.rendered(environment)
    if not running:
        return table.table(installs)
    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    store = _bucket_store(connected)
    runs = table.held(connected.env, store) if store is not None else {}
    return table.table(installs, runs)


@dataclass(frozen=True)
class BucketRow:
    """One row of `kubeplat buckets`."""

    name: str
    holds: str
    plain_http: str  # refused, accepted, missing, or not checked (an endpoint without TLS)
    changed: bool = False


def buckets(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, tls_only: bool = False
) -> list[BucketRow]:
    """The environment's buckets and whether they refuse plain HTTP; with `tls_only`, make
    every existing one refuse it (its policy's other statements kept)."""
    from kubeplat import pipeline, state

    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    aws, environment = connected.aws, connected.env
    rows = []
    for name, holds in (
        (environment.terraform_bucket_name, "Terraform state"),
        (environment.secrets_bucket_name, "PKI and node configuration"),
    ):
        if not state.bucket_exists(aws, name):
            rows.append(BucketRow(name, holds, "missing (kubeplat up creates it, TLS-only)"))
        elif (aws.endpoint or "").startswith("http://"):
            rows.append(BucketRow(name, holds, "not checked (kubeplat talks plain HTTP here)"))
        else:
            changed = tls_only and state.add_tls_only(aws, name)
            accepted = state.accepts_plain_http(aws, name) if not changed else False
            rows.append(BucketRow(name, holds, "accepted" if accepted else "refused", changed))
    return rows


def etcd_status(env: str, env_dir: str | None = None, *, sandbox: bool = False) -> Any:
    """The secure layer's etcd, from its members' reports in the bucket (etcdstatus)."""
    from kubeplat import etcdstatus, inventory, pipeline

    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    running = {
        i.instance_id: i.state
        for i in inventory.instances(connected.aws, connected.env.environment, "secure")
        if i.state in ("pending", "running")
    }
    return etcdstatus.read(
        connected.aws, connected.env.secrets_bucket_name, connected.env.environment, running
    )


def etcd_backup(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, timeout_s: float = 300
) -> str:
    """Ask the etcd leader for a snapshot (through the bucket); its key once saved."""
    from kubeplat import etcdrecovery, pipeline

    store = pipeline.deployed(env, env_dir, sandbox).store
    return etcdrecovery.backup(store, etcdrecovery.running_members(store), timeout_s)


def etcd_restore(
    env: str,
    snapshot: str,
    env_dir: str | None = None,
    *,
    sandbox: bool = False,
    force: bool = False,
    timeout_s: float | None = 900,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Restore the secure layer's etcd from one of its snapshots; the new formation record."""
    from kubeplat import etcdrecovery, pipeline

    store = pipeline.deployed(env, env_dir, sandbox).store
    key = etcdrecovery.snapshot_key(store, snapshot)
    running = etcdrecovery.running_members(store)
    return etcdrecovery.restore(
        store, key, running, force=force, timeout_s=timeout_s, progress=progress
    )


def kubeconfig(
    env: str, env_dir: str | None = None, *, sandbox: bool = False, out: Path | None = None
) -> Path:
    """The admin kubeconfig: the admin client certificate and the API load balancer's name."""
    from kubeplat import pipeline
    from kubeplat import render as renderer

    built = pipeline.deployed(env, env_dir, sandbox)
    files = built.store.load_pki()
    if "admin.crt" not in files:
        raise KubeplatError(
            f"no admin certificate in s3://{built.store.bucket}/{built.env.environment}/pki/",
            f"build the environment first: kubeplat up -e {env}",
        )
    server = pipeline.outputs(pipeline.terraform_for(built)).get("api_endpoint")
    if not isinstance(server, str):
        raise KubeplatError("Terraform has no api_endpoint output", f"run: kubeplat up -e {env}")
    target = out or built.env.kubeconfig_path
    _write_private(target, renderer.admin_kubeconfig(built.env, files, server))
    return target


def merge_kubeconfig(source: Path, target: Path) -> None:
    """Merge a kubeconfig's cluster, user and context into `target` (by name), 0600."""
    import yaml

    new = yaml.safe_load(source.read_text())
    try:
        current = yaml.safe_load(target.read_text()) if target.exists() else None
    except yaml.YAMLError:
        raise KubeplatError(
            f"{target} is not valid YAML", "fix or move it, then merge again"
        ) from None
    current = current or {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    for section in ("clusters", "users", "contexts"):
        names = {item["name"] for item in new.get(section, [])}
        kept = [item for item in current.get(section) or [] if item.get("name") not in names]
        current[section] = kept + new.get(section, [])
    current.setdefault("current-context", new.get("current-context"))
    _write_private(target, yaml.safe_dump(current, sort_keys=False).encode())


@dataclass(frozen=True)
class SshPlan:
    """The ssh command for one instance."""

    instance: Any
    argv: list[str]


def ssh(
    env: str,
    target: str | None,
    env_dir: str | None = None,
    *,
    sandbox: bool = False,
    choose: Callable[[list[Any]], Any] | None = None,
) -> SshPlan:
    """Find the instance (id, name or IP; or pick one) and build the ssh command line."""
    from kubeplat import inventory, pipeline
    from kubeplat.pki import SSH_KEY
    from kubeplat.render import NODE_USER

    connected = pipeline.connect(env, env_dir, sandbox, start=False)
    found = inventory.instances(connected.aws, connected.env.environment)
    running = [i for i in found if i.state == "running"]
    if not running:
        raise KubeplatError(
            f"environment {connected.env.environment} has no running instance",
            f"build it: kubeplat up -e {env}",
        )
    if target is None:
        if choose is None:
            raise KubeplatError(
                "which instance? give an instance id, name or IP",
                f"list them: kubeplat instances -e {env}",
            )
        instance = choose(running)
    else:
        matches = [
            i
            for i in running
            if target in (i.instance_id, i.private_ip, i.public_ip) or i.name == target
        ]
        if not matches:
            raise KubeplatError(
                f"no running instance {target!r} in environment {connected.env.environment}",
                f"give an instance id, name or IP from: kubeplat instances -e {env}",
            )
        if len(matches) > 1:
            ids = ", ".join(m.instance_id for m in matches)
            raise KubeplatError(
                f"{target!r} names {len(matches)} instances ({ids})", "give an instance id or IP"
            )
        instance = matches[0]
    key = connected.env.workdir / "pki" / SSH_KEY
    _refresh_ssh_key(connected, key)
    user = NODE_USER
    if instance.public_ip:
        argv = ssh_argv(key, connected.env.workdir / "known_hosts", f"{user}@{instance.public_ip}")
    else:
        # Private layers are reached through a compute node (the only layer with public addresses).
        jump = next((i for i in running if i.layer == "compute" and i.public_ip), None)
        argv = ssh_argv(
            key,
            connected.env.workdir / "known_hosts",
            f"{user}@{instance.private_ip}",
            jump=f"{user}@{jump.public_ip}" if jump else None,
        )
    return SshPlan(instance, argv)


def ssh_argv(key: Path, known_hosts: Path, target: str, *, jump: str | None = None) -> list[str]:
    """The ssh command line for `target` (through `jump` when given), with the environment's
    key and known_hosts file. Paths may hold spaces, quotes, `$(…)` or `%`: each reaches ssh
    as one argument, is quoted for ssh's own option parser (`-o NAME="…"`), and the
    ProxyCommand that ssh hands to a shell quotes every word (`shlex`), so no path runs as
    shell code."""
    key, known_hosts = key.absolute(), known_hosts.absolute()
    for path in (key, known_hosts):
        if '"' in str(path) or "\n" in str(path):
            raise KubeplatError(
                f"ssh cannot be given the path {str(path)[:80]!r} (it holds a double quote or "
                "a line break)",
                "move the checkout to a plainer path",
            )

    def option(name: str, path: Path) -> str:
        # ssh expands %-tokens in these paths and splits unquoted values at spaces.
        return f'{name}="{str(path).replace("%", "%%")}"'

    # Not `-i`: ssh drops an -i path it cannot stat before expanding its %-tokens.
    identity = (
        ["-o", option("IdentityFile", key), "-o", "IdentitiesOnly=yes"] if key.exists() else []
    )
    options = [
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        option("UserKnownHostsFile", known_hosts),
    ]
    argv = ["ssh", *identity, *options]
    if jump is None:
        return [*argv, target]
    # ssh runs the ProxyCommand with `sh -c` after expanding its %-tokens: every word quoted
    # for the shell, a literal % doubled, and only our own %h:%p left for ssh to fill.
    words = [shlex.quote(w).replace("%", "%%") for w in [*argv, "-W"]]
    proxy = " ".join([*words, "%h:%p", shlex.quote(jump).replace("%", "%%")])
    return [*argv, "-o", f"ProxyCommand={proxy}", target]


def _refresh_ssh_key(connected: Any, key: Path) -> None:
    """The key the nodes authorize now: the bucket's (another checkout or a CI job may have
    taken a step of an SSH key rotation since this cache was written), into the local PKI
    cache (0600 in 0700 folders, .kubeplat/ ignored by git). When the bucket cannot be read,
    the cached key is used, with a warning."""
    from kubeplat.pki import SSH_KEY
    from kubeplat.pkistore import LocalStore

    name = f"pki/locked/{SSH_KEY}"
    try:
        store = _bucket_store(connected)
        if store is None or name not in store.names(name):
            return
        data = store.get(name)
    except KubeplatError as exc:
        console.warn(f"using the cached SSH key: the bucket's could not be read ({exc})")
        return
    if not key.exists() or key.read_bytes() != data:
        LocalStore(key.parents[1]).save({SSH_KEY: data})


def run_ssh(plan: SshPlan) -> None:
    """Replace this process with ssh (so the terminal is ssh's)."""
    import os
    import shutil

    if shutil.which("ssh") is None:
        raise KubeplatError("ssh is not installed", "install OpenSSH's client")
    os.execvp("ssh", plan.argv)


def manifests_push(env: str, env_dir: str | None = None, *, sandbox: bool = False) -> list[str]:
    """Re-render and upload the node manifests only; the names written (and `-removed`)."""
    from kubeplat import pipeline

    prepared = _prepare(env, env_dir, sandbox, write_pki=True)
    # The same layers read the new set: a manifest the render dropped goes with the push.
    written = pipeline.upload(prepared, groups=("manifests/",))  # no apply: promoted at once
    written += pipeline.promote(prepared)
    return written + pipeline.prune(prepared, groups=("manifests/",))


def health(env: str, env_dir: str | None = None, *, sandbox: bool = False) -> Any:
    """`kubeplat health`: the environment's state lock, drift, served API certificate, nodes'
    convergence, etcd, and groups against their desired capacity (kubeplat/health.py)."""
    from kubeplat import health as checks
    from kubeplat import pipeline

    deployed = pipeline.deployed(env, env_dir, sandbox)
    environment = deployed.env
    found = checks.Health(environment.environment)
    now = dt.datetime.now(dt.UTC)
    found.items += checks.guarded("state lock", lambda: [_lock(deployed, now)])
    found.items += checks.guarded("drift", lambda: [_drift(deployed)])
    found.items += checks.guarded("API certificate", lambda: [_served(deployed, now)])
    rows: list[Any] = []

    def nodes() -> list[Any]:
        rows.extend(_instances_of(deployed.aws, environment, None))  # the same session
        return [checks.convergence(rows)]

    found.items += checks.guarded("nodes", nodes)
    found.items += checks.guarded(
        "etcd", lambda: checks.etcd(_etcd_of(deployed, rows), now, environment.cert_renew_days)
    )
    found.items += checks.guarded("groups", lambda: [checks.groups(_groups(deployed))])
    return found


@dataclasses.dataclass
class RollReport:
    environment: str
    asked: list[str]  # the groups a roll was asked of, in the order they roll
    when: str  # the time recorded on each (ISO 8601, UTC)
    sandbox: bool


def roll(
    env: str, layers: Sequence[str] = (), env_dir: str | None = None, *, sandbox: bool = False
) -> RollReport:
    """`kubeplat roll`: ask the roll controller to replace every instance of the named layers
    (all when none is named) through the gated path: an object per layer in the secrets
    bucket (ENV/rolls/LAYER.json), whose time the controller (kubeplat/node/roller.py) compares
    with the group's last instance refresh, starting one layer's refresh after another. Not a
    tag of the group: Terraform owns those and the next apply would take it away (and `health`
    call it drift). Nothing else changes; asking again while a roll runs asks for one more
    afterwards."""
    import json

    from kubeplat import pipeline, rotation
    from kubeplat.node import roller

    deployed = pipeline.deployed(env, env_dir, sandbox)
    found = {}
    for group in _groups(deployed):
        tags = {t["Key"]: t["Value"] for t in group.get("Tags") or []}
        found[tags.get("Layer", "")] = group["AutoScalingGroupName"]
    found.pop("", None)
    name = deployed.env.environment
    if not found:
        raise KubeplatError(
            f"environment {name} has no node groups to roll",
            f"build it first: kubeplat up -e {name}",
        )
    unknown = [layer for layer in layers if layer not in found]
    if unknown:
        raise KubeplatError(
            f"--layer {unknown[0]}: environment {name} has no such layer",
            "its layers: " + ", ".join(sorted(found, key=_layer_rank)),
        )
    chosen = sorted(set(layers) or set(found), key=_layer_rank)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for layer in chosen:
        asked = {"layer": layer, "group": found[layer], "requested": when, "by": rotation.who()}
        body = json.dumps(asked, indent=1, sort_keys=True).encode() + b"\n"
        deployed.store.put(f"{roller.ROLLS}{layer}.json", body)
    return RollReport(name, [found[layer] for layer in chosen], when, deployed.aws.sandbox)


def _layer_rank(layer: str) -> int:
    from kubeplat.node import roller

    return roller.ORDER.index(layer) if layer in roller.ORDER else len(roller.ORDER)


def _lock(deployed: Any, now: dt.datetime) -> Any:
    """The state lock Terraform's S3 backend holds (`use_lockfile`): the `.tflock` object."""
    import json

    from kubeplat import health as checks
    from kubeplat.aws import errors

    env = deployed.env
    key = f"{env.aws_region}/{env.environment}/terraform.tfstate.tflock"
    s3 = deployed.aws.client("s3")
    with errors(f"reading s3://{env.terraform_bucket_name}/{key}", deployed.aws):
        try:
            body = s3.get_object(Bucket=env.terraform_bucket_name, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return checks.lock(None, now)
    try:
        held = json.loads(body)
    except ValueError:
        held = {"Who": "an unreadable lock file"}
    return checks.lock(held if isinstance(held, dict) else {}, now, env.environment)


def _drift(deployed: Any) -> Any:
    """A plan (no lock taken, its plan file thrown away) judges what changed outside Terraform:
    what it refreshed differently and would set back (`health.drift`)."""
    from kubeplat import health as checks
    from kubeplat import pipeline, render, terraform

    tf = pipeline.terraform_for(deployed)
    inputs = terraform.variables(deployed.env, render.stubs(deployed.env))
    plan_file = deployed.env.workdir / "drift.tfplan"
    try:
        with pipeline.inputs_file(tf, inputs):
            result = tf.run(
                "plan", "-lock=false", "-input=false", f"-out={plan_file}",
                on_line=lambda _line: None, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise terraform.failure("plan", result.output, env=deployed.env.environment)
        shown = tf.run("show", "-json", str(plan_file), on_line=lambda _line: None)
    finally:
        plan_file.unlink(missing_ok=True)
    document = terraform.json_document(shown.output)
    return checks.drift(
        document.get("resource_drift") or [],
        document.get("resource_changes") or [],
        empty="" if checks.built(document) else deployed.env.environment,
    )


def _served(deployed: Any, now: dt.datetime) -> Any:
    """The API server's certificate as the API endpoint serves it; the bucket's copy when the
    endpoint cannot be reached from here (and the sandbox runs no API server)."""
    from cryptography import x509

    from kubeplat import health as checks
    from kubeplat import kubeapi

    env = deployed.env
    server = kubeapi.server_of(env.kubeconfig_path)
    why = "no kubeconfig yet"
    if server and (not deployed.aws.sandbox or kubeapi.loopback(server)):
        try:
            expires = checks.served_certificate(server)
            return checks.expiry("API certificate", expires, now, env.cert_renew_days,
                                 f"served by {server}")  # fmt: skip
        except OSError as exc:  # ssl.SSLError is one too
            why = f"{server} did not answer ({exc})"
    elif server:
        why = "the sandbox runs no API server"
    names = [n for n in deployed.store.names("pki/") if n.endswith("/apiserver.crt")]
    if not names:
        return checks.Item("API certificate", "red", f"not served ({why}) and not in the bucket")
    cert = x509.load_pem_x509_certificate(deployed.store.get(names[0]))
    return checks.expiry("API certificate", cert.not_valid_after_utc, now, env.cert_renew_days,
                         f"the bucket's copy ({why})")  # fmt: skip


def _etcd_of(deployed: Any, rows: list[Any]) -> Any:
    from kubeplat import etcdstatus

    env = deployed.env
    secure = {r.instance_id: r.state for r in rows if r.layer == "secure" and r.state in (
        "pending", "running")}  # fmt: skip
    return etcdstatus.read(deployed.aws, env.secrets_bucket_name, env.environment, secure)


def _groups(deployed: Any) -> list[dict[str, Any]]:
    from kubeplat.aws import errors

    env = deployed.env
    found = []
    with errors("listing the autoscaling groups", deployed.aws):
        pages = deployed.aws.client("autoscaling").get_paginator("describe_auto_scaling_groups")
        for page in pages.paginate(
            Filters=[{"Name": "tag:Environment", "Values": [env.environment]}]
        ):
            found += page["AutoScalingGroups"]
    return found
