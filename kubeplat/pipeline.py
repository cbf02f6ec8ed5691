"""The main job, in SPEC's order: validate, session, buckets, PKI, render, plan, confirm,
upload, apply, outputs.

Nothing reaches the nodes before the operator confirms: the PKI may be created (that changes
nothing a node uses), but the rendered configuration is uploaded only after the confirmation,
right before Terraform applies exactly the plan that was shown.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeplat import config, console, render
from kubeplat.aws import Aws
from kubeplat.errors import KubeplatError
from kubeplat.process import Result
from kubeplat.store import BucketStore, Conflict, sha256
from kubeplat.terraform import Terraform

VARS_FILE = "kubeplat.auto.tfvars.json"
# How long a half-present PKI in the bucket may stay so before it is reported as damage: long
# enough for another operator's write in progress to finish.
DAMAGE_WAIT_S = 20.0


@dataclass
class Prepared:
    """Everything up to (not including) Terraform."""

    env: config.Environment
    aws: Aws
    account: str
    key_arn: str
    store: BucketStore
    files: dict[str, bytes]
    bundle: dict[str, bytes]
    changed: list[str] = field(default_factory=list)  # objects whose bytes differ in the bucket
    # Manifests and PKI objects the render no longer produces (a topology switch, say): removed
    # only once the apply that stops using them has succeeded (`prune`).
    stale: list[str] = field(default_factory=list)
    created_buckets: list[str] = field(default_factory=list)
    # Layers whose manifests the bucket holds: their nodes (running or launching) read them.
    live_layers: set[str] = field(default_factory=set)
    # Changed manifests made current before the apply: an upgrade's control plane (see `first`).
    first: list[str] = field(default_factory=list)

    @property
    def deferred(self) -> list[str]:
        """Changed manifests of layers whose nodes read them: staged before the apply and made
        current only after it succeeded (`promote`), so a failed apply changes nothing a node
        runs. A new layer's manifests are written before (no node reads them yet; the nodes
        the apply launches need them)."""
        return [
            n
            for n in self.changed
            if n.startswith("manifests/") and n.split("/")[1] in self.live_layers
            and n not in self.first
        ]  # fmt: skip

    @property
    def pending(self) -> list[str]:
        """What an upload would do, as reported: names written, `-name` removed."""
        return self.changed + [f"-{name}" for name in self.stale]

    @property
    def objects(self) -> dict[str, bytes]:
        """What the bucket holds for nodes: everything rendered but user-data and kubeconfig."""
        return {
            k: v for k, v in self.bundle.items() if not k.startswith(("userdata/", "kubeconfig/"))
        }


@dataclass
class Connected:
    """An environment and a session checked against its account."""

    env: config.Environment
    aws: Aws
    account: str


def connect(env_name: str, env_dir: str | None, force_sandbox: bool, *, start: bool) -> Connected:
    """Steps 1-2: the file, the session and the account check.

    With `start` False a sandbox environment needs a running sandbox: a read-only command on a
    fresh emulator would only show an empty world.
    """
    env, sandbox_env = _environment(env_name, env_dir, force_sandbox, start=start)
    return _session(env, sandbox_env)


def _environment(
    env_name: str, env_dir: str | None, force_sandbox: bool, *, start: bool
) -> tuple[config.Environment, dict[str, str] | None]:
    """Step 1: the file (its warnings printed), and the sandbox's variables if it is one."""
    from kubeplat import sandbox

    env = config.load(env_name, env_dir)
    for warning in env.warnings:
        console.warn(str(warning))
    if not (env.sandbox or force_sandbox):
        return env, None
    box = sandbox.ensure() if start else sandbox.current()
    if box is None:
        raise KubeplatError(
            "the sandbox is not running, so the sandbox environment has nothing to show",
            f"start it and build the environment: kubeplat up -e {env_name}",
        )
    if box.endpoint not in _announced:  # once per run: `health --all` reads several files
        _announced.add(box.endpoint)
        console.status(f"sandbox: AWS emulator at {box.endpoint}", "dim")
    return env, sandbox.environ(box, env.aws_region)


_announced: set[str] = set()  # the sandbox endpoints this process has named


def _session(env: config.Environment, sandbox_env: dict[str, str] | None) -> Connected:
    """Step 2: the session, checked against the file's account."""
    from kubeplat import aws as aws_module

    aws = aws_module.connect(env, sandbox_env)
    return Connected(env, aws, aws_module.check_account(aws, env))


def prepare(
    env_name: str,
    env_dir: str | None,
    force_sandbox: bool,
    *,
    write_pki: bool,
    new_pki_only: bool = False,
    connected: Connected | None = None,
) -> Prepared:
    """Steps 1-5 (and 6's comparison): nothing a node uses changes here. With `new_pki_only`
    (a plan kept for `apply`), a PKI is written only when the bucket has none yet: no rotation
    step is taken and a renewal is refused (see `sync_pki`). `connected`: steps 1-2, if done."""
    from kubeplat import rotation, state
    from kubeplat.store import BucketStore

    connected = connected or connect(env_name, env_dir, force_sandbox, start=True)
    env, aws, account = connected.env, connected.aws, connected.account
    boot = state.bootstrap(aws, env)
    for bucket in boot.created:
        console.status(f"created bucket {bucket} (versioned, SSE-KMS, public access blocked)", "ok")
    for bucket in boot.plain_http:
        console.warn(
            f"the bucket {bucket} accepts requests without TLS (no TLS-only policy; it was "
            f"created before kubeplat set one, or by someone else): kubeplat buckets -e "
            f"{env.environment} --tls-only adds one and keeps the policy's other statements"
        )
    store = BucketStore.of(aws, env, boot.key_arn)
    rotating = rotation.step(env, store, aws, write=write_pki and not new_pki_only)
    if rotating is not None:
        for line in rotation.describe(rotating):
            console.status(f"PKI: {line.strip()}", "warn" if rotating.hold else "ok")
    files = sync_pki(env, store, write=write_pki, new_only=new_pki_only)
    warn_expiring(env, files)
    bundle = render.bundle(env, files)
    prepared = Prepared(env, aws, account, boot.key_arn, store, files, bundle)
    prepared.created_buckets = boot.created
    prepared.changed = store.changed(prepared.objects)
    held = store.names("manifests/")  # one listing: stale names, live layers, upgrades
    prepared.stale = stale_objects(prepared, held)
    prepared.live_layers = {n.split("/")[1] for n in held if n.count("/") >= 2}
    prepared.first = upgrade_first(prepared, set(held))
    return prepared


def sync_pki(
    env: config.Environment,
    store: BucketStore,
    *,
    write: bool,
    now: dt.datetime | None = None,
    rotate: str | None = None,
    issued: dict[str, str] | None = None,
    wrote: list[str] | None = None,
    new_only: bool = False,
) -> dict[str, bytes]:
    """The PKI: the bucket's, completed; new files written only if nobody wrote them first.
    `wrote`, when given, gets the names of the objects this wrote or removed."""
    from kubeplat import pki
    from kubeplat.pkistore import LocalStore

    cache = LocalStore(env.workdir / "pki")
    path = env.ssh_public_key_path
    given = config.read_public_key(path) if path else None
    deadline = time.monotonic() + 60
    racing = False
    damaged_since = 0.0
    while True:
        published = _published(store)
        if published is not None and write:
            _finish_publishing(store, *published)
        stored = store.load_pki()
        if published is not None:  # what pki/ lacks of the published set is in the staged copy
            stored = {**pki_files_of(published[1]), **stored}
        # The bucket is the source of truth; a local cache seeds an empty bucket (e.g. after
        # `kubeplat certs` was run before the first `up`).
        base = stored or cache.load()
        try:
            result = pki.ensure(env, base, now=now, rotate=rotate, ssh_public_key=given)
            if write and not stored:
                written = _create_pki(env, store, result.files)
                if wrote is not None:
                    wrote += written
            elif write and result.files != stored:
                if new_only:
                    needed = [f"{n}: {r}" for n, r in sorted(result.reasons.items())]
                    raise KubeplatError(
                        "the PKI needs changes that a saved plan must not make ("
                        + (", ".join(needed) or "objects to rewrite")
                        + "); nothing was written",
                        f"make them first: kubeplat certs renew -e {env.path.stem} (running "
                        "nodes pick them up), then plan again",
                    )
                written = _write_pki(env, store, result.files)
                if wrote is not None:
                    wrote += written
            if write:
                # The local cache follows the bucket (it writes only files whose bytes differ).
                cache.save(result.files, removed=set(cache.load()) - set(result.files))
                _publish_issuer(env, store, result.files)
            for name, reason in result.reasons.items():
                if write:
                    console.status(f"PKI: issued {name} ({reason})", "ok")
            if issued is not None:  # what was issued and why, for a caller that reports it
                issued.update(result.reasons)
            return result.files
        except (Conflict, pki.PKIError) as exc:
            # A conflict means another operator is creating the PKI right now, and a half-present
            # set in the bucket may be their write in progress: wait (bounded) for theirs, never
            # make a second CA. A set that stays damaged is an error.
            racing = racing or isinstance(exc, Conflict)
            moment = time.monotonic()
            damaged_since = damaged_since or moment
            limit = deadline if racing else damaged_since + DAMAGE_WAIT_S
            if moment > limit:
                if isinstance(exc, pki.PKIError):
                    raise
                raise KubeplatError(
                    "another operator kept changing the PKI for a minute", "run again"
                ) from None
            console.status(
                "PKI: the bucket's set is incomplete or being written by another operator; waiting",
                "warn",
            )
            time.sleep(2)


# A new PKI is all or nothing: the whole set is written under STAGING/<set id>/ (no node reads
# it), then one conditional write of PUBLISHED makes it the environment's set; only then is it
# copied to pki/. An interrupt before PUBLISHED leaves nothing (the next run makes its own set;
# another operator who publishes first wins); an interrupt after it leaves a set every later
# run finishes copying, exactly as staged.
STAGING = "pki-staging/"
PUBLISHED = "pki-published.json"


def _published(store: BucketStore) -> tuple[str, dict[str, bytes]] | None:
    """The published set still to be copied to pki/ (its id and objects), or None."""
    import json as json_module

    if PUBLISHED not in store.names(PUBLISHED):
        return None
    try:
        set_id = str(json_module.loads(store.get(PUBLISHED))["set"])
    except (ValueError, KeyError, TypeError):
        return None
    folder = f"{STAGING}{set_id}/"
    names = store.names(folder)
    if not names:
        return None  # copied already
    try:
        return set_id, {n[len(folder) :]: store.get(n) for n in names}
    except KubeplatError:
        return None  # another run finished the copy and removed it meanwhile


def pki_files_of(objects: Mapping[str, bytes]) -> dict[str, bytes]:
    """The PKI files (kubeadm names) of a set of `pki/…` objects."""
    from kubeplat.store import pki_files

    return pki_files({n: v for n, v in objects.items() if n.count("/") >= 2})


def _create_pki(
    env: config.Environment, store: BucketStore, files: Mapping[str, bytes]
) -> list[str]:
    """Write a new PKI all or nothing (see STAGING); the names written. `Conflict` when another
    operator published theirs first (the caller then follows it)."""
    import hashlib
    import json as json_module

    objects = {f"pki/{k}": v for k, v in render.pki_layout(env, files).items()}
    digest = hashlib.sha256()
    for name in sorted(objects):
        digest.update(name.encode() + b"\0" + hashlib.sha256(objects[name]).digest())
    set_id = digest.hexdigest()[:16]
    folder = f"{STAGING}{set_id}/"
    store.upload({folder + n: v for n, v in objects.items()})
    marker = {"set": set_id, "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        store.put(PUBLISHED, json_module.dumps(marker).encode(), only_if_new=True)
    except Conflict:
        store.purge(folder)  # theirs is the set now
        if _published(store) is None and not store.names("pki/"):
            raise KubeplatError(
                f"the environment's PKI was published ({PUBLISHED}) and later removed from "
                "pki/: kubeplat will not make a second CA for it",
                "bring pki/ back from the bucket's earlier object versions, or remove the "
                f"environment's objects with kubeplat destroy -e {env.path.stem} --purge",
            ) from None
        raise
    _finish_publishing(store, set_id, objects)
    return write_order(objects)


def _finish_publishing(store: BucketStore, set_id: str, objects: Mapping[str, bytes]) -> None:
    """Copy a published set to pki/ (what is there already stays), then drop every staged set."""
    present = set(store.names("pki/"))
    for name in write_order(objects):
        if name not in present:
            with suppress(Conflict):  # another run finishing the same set
                store.put(name, objects[name], only_if_new=True)
    if set(objects) - set(store.names("pki/")):
        return  # a write still in flight elsewhere: the staged copy stays for the next run
    # Every staged set goes, with all its versions: no copy of a key stays recoverable there.
    store.purge(STAGING)


def store_pki(env: config.Environment, store: BucketStore, files: Mapping[str, bytes]) -> None:
    """Write a PKI set the bucket does not hold yet (a rotation step), and the local cache."""
    from kubeplat.pkistore import LocalStore

    _write_pki(env, store, files)
    cache = LocalStore(env.workdir / "pki")
    cache.save(files, removed=set(cache.load()) - set(files))
    _publish_issuer(env, store, files)


def _publish_issuer(
    env: config.Environment, store: BucketStore, files: Mapping[str, bytes]
) -> None:
    """The service-account issuer's documents (pod roles), with the keys the API servers accept
    now: written with the PKI, so a step of a key rotation reaches STS with it."""
    from kubeplat import oidc

    for name in oidc.publish(store.aws, env, files):
        console.status(f"published {name}", "ok")


def _write_pki(
    env: config.Environment, store: BucketStore, files: Mapping[str, bytes]
) -> list[str]:
    """Write what differs, in `write_order`; the names written or removed."""
    objects = {f"pki/{k}": v for k, v in render.pki_layout(env, files).items()}
    present = set(store.names("pki/"))
    changed = set(store.changed(objects))
    # What no node can read and the set no longer has goes now (objects nodes read are removed
    # only after an apply: `prune`): an old CA's `prev` copy first, so a run stopped while
    # dropping it never puts it back; a promoted CA's `next` copy last, once it signs.
    gone = sorted(n for n in present - set(objects) if n.startswith("pki/locked/"))
    store.delete([n for n in gone if ".prev." in n])
    written = [n for n in gone if ".prev." in n]
    # Each new object written only if absent: the first writer owns the CA.
    for name in write_order(objects):
        if name not in present:
            store.put(name, objects[name], only_if_new=True)
        elif name in changed:
            store.put(name, objects[name])
        else:
            continue
        written.append(name)
    store.delete([n for n in gone if ".prev." not in n])
    return written + [n for n in gone if ".prev." not in n]


def write_order(objects: Mapping[str, bytes]) -> list[str]:
    """The order the PKI objects are written in, so that a run stopped after any write leaves
    a set `pki.settle` completes: an old CA's `prev` copy first, then what nodes trust (the CAs,
    `sa.pub`), then the locked keys (a promoted CA's key after its certificate), then each
    layer's files."""
    kept = sorted(n for n in objects if n.startswith("pki/locked/") and ".prev." in n)
    # What nodes trust: the CAs, and the service-account keys the API servers accept.
    common = sorted(n for n in objects if n.startswith("pki/common/") or n.endswith("/sa.pub"))
    locked = sorted(n for n in objects if n.startswith("pki/locked/") and n not in kept)
    return kept + common + locked + sorted(set(objects) - {*kept, *common, *locked})


def warn_expiring(env: config.Environment, files: Mapping[str, bytes]) -> None:
    """Warn about any certificate still within the renewal window (a CA: leaves are renewed)."""
    from kubeplat import pki

    for row in pki.describe(files, dt.datetime.now(dt.UTC)):
        if row.days_left <= env.cert_renew_days:
            console.warn(
                f"certificate {row.name} expires in {row.days_left} days "
                f"(rotate: kubeplat certs --rotate {row.name})"
            )


def stale_objects(prepared: Prepared, manifests: list[str]) -> list[str]:
    """Manifests (`manifests`: the bucket's) and PKI objects the bucket holds that the render
    no longer produces."""
    present = manifests + prepared.store.names("pki/")
    return sorted(n for n in present if n not in prepared.bundle)


# Two-phase manifests: a changed manifest of a layer whose nodes read it is first written under
# STAGED/<sha256> (content-addressed; no node may read the folder), and copied to its name only
# after the apply succeeded (`promote`). A run stopped between the two is completed by the next
# one, which finds the same manifests changed, Terraform with nothing to do, and promotes them.
STAGED = "staged/"
_APISERVER = re.compile(rb"image:\s*\S*/kube-apiserver:v(\d+)\.(\d+)\.(\d+)")


def staged_name(data: bytes) -> str:
    return f"{STAGED}{sha256(data)}"


def _apiserver_version(data: bytes) -> tuple[int, ...] | None:
    found = _APISERVER.search(data)
    return tuple(int(part) for part in found.groups()) if found else None


def upgrade_first(prepared: Prepared, held: set[str]) -> list[str]:
    """On an upgrade the control plane goes first: Kubernetes' version skew policy allows no
    kubelet newer than the API server, and the apply launches nodes with the new kubelet. So
    when a layer's kube-apiserver manifest names a newer version than the one its nodes run,
    that layer's changed manifests are made current before the apply (as `up` always did)."""
    first: list[str] = []
    objects = prepared.objects
    for name in prepared.changed:
        layer = name.split("/")[1] if name.startswith("manifests/") else ""
        if not name.endswith("/kube-apiserver.yaml") or layer not in prepared.live_layers:
            continue
        if name not in held:
            continue  # a new API server (`held`: the bucket's manifests): nothing runs an older one
        new = _apiserver_version(objects[name])
        old = _apiserver_version(prepared.store.get(name))
        if new and old and new > old:
            first += [n for n in prepared.changed if n.startswith(f"manifests/{layer}/")]
    return first


def upload(
    prepared: Prepared, groups: tuple[str, ...] = ("pki/", "manifests/", "cloudconfig/")
) -> list[str]:
    """Step 6: the objects `prepare` found changed — PKI, then manifests, then cloud-configs
    (what a booting node reads last) — except the `deferred` manifests, which are staged for
    `promote`. The names written; nothing is removed here (see `prune`)."""
    objects = prepared.objects
    deferred = set(prepared.deferred)
    staged = {staged_name(objects[n]): objects[n] for n in deferred}
    prepared.store.upload(staged, changed=staged)
    written: list[str] = []
    for group in groups:
        names = [n for n in prepared.changed if n.startswith(group) and n not in deferred]
        written += prepared.store.upload({n: objects[n] for n in names}, changed=names)
    return written


def promote(prepared: Prepared) -> list[str]:
    """After a successful apply (or when Terraform had nothing to change): make the deferred
    manifests current, a control-plane layer's before the others', each copied from its
    staged object in the bucket (named by its digest), or written from the render if that was
    removed. The names made current."""
    objects = prepared.objects
    deferred = sorted(prepared.deferred, key=lambda n: (not _has_apiserver(prepared, n), n))
    for name in deferred:
        prepared.store.promote(staged_name(objects[name]), name, objects[name])
    return deferred


def _has_apiserver(prepared: Prepared, name: str) -> bool:
    layer = name.split("/")[1]
    return f"manifests/{layer}/kube-apiserver.yaml" in prepared.objects


def prune(prepared: Prepared, groups: tuple[str, ...] = ("pki/", "manifests/")) -> list[str]:
    """After a successful apply (or when Terraform had nothing to change): remove what no
    launch template and no running node of the new layout reads any more, as `-name`. An
    interrupted prune is done by the next `up`, which finds the same objects stale."""
    stale = [n for n in prepared.stale if n.startswith(groups)]
    prepared.store.delete(stale)
    # Staged manifests are no longer needed once promoted (a stopped run's, or a kept plan's:
    # the next `apply` of a plan writes from its render when its staged copy is gone).
    prepared.store.purge(STAGED)
    return [f"-{name}" for name in stale]


def terraform_for(prepared: Prepared | Deployed) -> Terraform:
    """The environment's Terraform, initialised against its S3 remote state."""
    aws = prepared.aws
    tf = _terraform(prepared.env, aws.child_env, aws.sandbox)
    tf.init(_backend(prepared.env, aws.sandbox, prepared.key_arn))
    return tf


def _terraform(
    env: config.Environment, child_env: dict[str, str | None], sandbox: bool
) -> Terraform:
    # How hints name the environment: by name when `-e NAME` finds it from here.
    plainly = env.path.resolve().parent == config.env_dir().resolve()
    tf = Terraform(env.workdir, env=child_env, name=env.path.stem if plainly else str(env.path))
    if sandbox and not env.sandbox:  # put in the sandbox by --sandbox: hints say so too
        tf.program = "kubeplat --sandbox"
    return tf


def _backend(env: config.Environment, sandbox: bool, key_arn: str) -> dict[str, str]:
    backend = {
        "bucket": env.terraform_bucket_name,
        "key": f"{env.aws_region}/{env.environment}/terraform.tfstate",
        "region": env.aws_region,
        "encrypt": "true",
        "kms_key_id": key_arn,
        "use_lockfile": "true",
    }
    if sandbox:
        backend["use_path_style"] = "true"
    return backend


@dataclass
class Deployed:
    """An environment that `up` has built: session, key, and its secrets bucket (read-only)."""

    env: config.Environment
    aws: Aws
    account: str
    key_arn: str
    store: BucketStore


def deployed(env_name: str, env_dir: str | None, force_sandbox: bool) -> Deployed:
    """For commands that read what `up` built; creates nothing."""
    from botocore.exceptions import ClientError

    from kubeplat import aws as aws_module
    from kubeplat import state

    connected = connect(env_name, env_dir, force_sandbox, start=False)
    env, aws = connected.env, connected.aws
    key_arn = state.kms_key(aws, env)
    with aws_module.errors(f"checking the bucket {env.terraform_bucket_name}", aws):
        try:
            aws.client("s3").head_bucket(Bucket=env.terraform_bucket_name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                raise
            raise KubeplatError(
                f"environment {env.environment} has not been built yet "
                f"(no bucket {env.terraform_bucket_name})",
                f"build it: kubeplat up -e {env_name}",
            ) from None
    return Deployed(env, aws, connected.account, key_arn, BucketStore.of(aws, env, key_arn))


@contextmanager
def variables_file(prepared: Prepared, tf: Terraform) -> Iterator[Path]:
    """The module's inputs as `kubeplat.auto.tfvars.json`, removed afterwards whatever happens."""
    from kubeplat import terraform

    with inputs_file(tf, terraform.variables(prepared.env, prepared.bundle)) as path:
        yield path


@contextmanager
def inputs_file(tf: Terraform, inputs: Mapping[str, Any]) -> Iterator[Path]:
    path = tf.module / VARS_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(inputs, handle, sort_keys=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@dataclass
class PlanSummary:
    """What a saved plan will do."""

    add: int = 0
    change: int = 0
    destroy: int = 0
    rolls: list[str] = field(default_factory=list)
    resources: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    # Every resource the plan destroys or replaces: {"address", "action" (delete | replace),
    # "reason" (Terraform's, in words), "attributes" (those that force the replacement)}.
    removals: list[dict[str, Any]] = field(default_factory=list)
    # Every resource the plan imports (adopt.py's import blocks): (address, AWS id).
    imports: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.add or self.change or self.destroy or self.imports)


# Terraform's reasons for a deletion or a replacement (`planned_change.reason`), in words.
_REASONS = {
    "tainted": "tainted (a create that failed half-way)",
    "requested": "replacement requested (-replace)",
    "cannot_update": "forces replacement",
    "replace_by_triggers": "replace_triggered_by",
    "delete_because_no_resource_config": "no longer in the configuration",
    "delete_because_wrong_repetition": "count/for_each changed",
    "delete_because_count_index": "its count index is no longer planned",
    "delete_because_each_key": "its for_each key is no longer planned",
    "delete_because_no_module": "its module is no longer in the configuration",
    "delete_because_no_move_target": "moved to an address that does not exist",
}


def removal_reason(removal: Mapping[str, Any]) -> str:
    """Why a resource goes, as the plan summary says it."""
    code = str(removal.get("reason") or "")
    words = _REASONS.get(code, code.replace("_", " "))
    if removal.get("attributes"):
        words = f"{words or 'forces replacement'}: {', '.join(removal['attributes'])}"
    return words


def summarize(lines: Iterable[str]) -> PlanSummary:
    """Counts, and which autoscaling groups will roll, from `terraform plan -json`'s stream.

    A group rolls when its launch template changes (any change makes a new version, which the
    instance refresh rolls out).
    """
    summary = PlanSummary()
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        kind = message.get("type")
        if kind == "planned_change":
            change = message.get("change", {})
            resource = change.get("resource", {})
            action = change.get("action", "")
            summary.resources.append((action, resource.get("addr", "")))
            importing = change.get("importing")
            if isinstance(importing, dict):
                summary.imports.append(
                    (str(resource.get("addr", "")), str(importing.get("id", "")))
                )
            if action in ("delete", "replace"):
                summary.removals.append(
                    {"address": resource.get("addr", ""), "action": action,
                     "reason": change.get("reason", ""), "attributes": []}
                )  # fmt: skip
            if resource.get("resource_type") == "aws_launch_template" and action in (
                "update",
                "replace",
            ):
                summary.rolls.append(str(resource.get("resource_key", resource.get("addr"))))
        elif kind == "change_summary":
            changes = message.get("changes", {})
            summary.add = int(changes.get("add", 0))
            summary.change = int(changes.get("change", 0))
            summary.destroy = int(changes.get("remove", 0))
        elif kind == "outputs":
            summary.outputs = {
                name: item["value"]
                for name, item in message.get("outputs", {}).items()
                if "value" in item
            }
    summary.rolls.sort()
    summary.imports.sort()
    summary.removals.sort(key=lambda r: (r["action"], r["address"]))
    return summary


def explain(summary: PlanSummary, tf: Terraform, plan_file: Path) -> PlanSummary:
    """The attributes forcing each replacement (`replace_paths` of `terraform show -json`),
    read only when the plan replaces something."""
    from kubeplat import terraform

    if not any(r["action"] == "replace" for r in summary.removals):
        return summary
    result = tf.run("show", "-json", str(plan_file), on_line=lambda _line: None, check=False)
    try:
        document = terraform.json_document(result.output)
    except ValueError:
        return summary  # the summary still names every replacement, without its attributes
    paths = {
        change.get("address"): change.get("change", {}).get("replace_paths") or []
        for change in document.get("resource_changes", [])
    }
    for removal in summary.removals:
        removal["attributes"] = sorted({_path(p) for p in paths.get(removal["address"], [])})
    return summary


def _path(steps: Iterable[Any]) -> str:
    """A `replace_paths` entry as an attribute path: ["a", 0, "b"] -> a[0].b."""
    text = ""
    for step in steps:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


# How each layer's instance refresh goes (terraform/secure.tf and compute.tf: min healthy %).
_PACE = {
    "control-plane": "at least half of them in service throughout",
    "compute": "at least {pct}% of them in service throughout",
}
_SURGE = (
    "at least {pct}% of them in service and at most {surge}% running throughout "
    "(new ones launched first)"
)


def roll_order(
    rolls: Iterable[str],
    running: Iterable[tuple[str, str]],
    *,
    sandbox: bool,
    stacked: bool,
    compute_min_healthy: int = 90,
    compute_max_healthy: int = 100,
) -> list[str]:
    """In words, how each rolling group will be replaced; `running` holds (layer, instance id)
    of the instances that run now."""
    found = []
    for layer in sorted(rolls, key=lambda name: ("secure", "control-plane").index(name)
                        if name in ("secure", "control-plane") else 2):  # fmt: skip
        if sandbox:
            found.append(
                f"{layer}: the sandbox has no instance refresh: only instances launched from "
                "now on get the new template"
            )
            continue
        ids = sorted(i for lay, i in running if lay == layer)
        plural = "s" if len(ids) != 1 else ""
        which = f"{len(ids)} instance{plural} ({', '.join(ids)})" if ids else "its instances"
        if layer == "secure":
            found.append(
                f"secure (etcd{' and the control plane' if stacked else ''}): {which} replaced "
                "one at a time (AWS picks the order); each new instance goes in service only "
                "once its etcd member has joined, been promoted and every member is healthy, "
                "and only then is the next one replaced"
            )
        else:
            pace = _PACE.get(layer, "its own pace")
            if layer == "compute" and compute_max_healthy > 100:
                pace = _SURGE
            pace = pace.format(pct=compute_min_healthy, surge=compute_max_healthy)
            found.append(
                f"{layer}: {which} replaced with {pace}, each leaving node drained first and "
                "each new one in service once its node is Ready"
                + (" and its API server answers /readyz" if layer == "control-plane" else "")
            )
    if len(found) > 1 and not sandbox:
        found.append(
            "the groups roll in this order: each later group's refresh starts once every "
            "earlier group runs its new template (the roll controller on the control plane)"
        )
    return found


def plan(
    prepared: Prepared, tf: Terraform, plan_file: Path, *, destroy: bool = False
) -> PlanSummary:
    """Step 7: plan to a file; the summary comes from Terraform's machine-readable stream."""
    lines: list[str] = []
    with variables_file(prepared, tf):
        result = _run_plan(tf, plan_file, lines, destroy=destroy)
        return _planned(prepared, tf, plan_file, lines, result, destroy=destroy)


def _run_plan(tf: Terraform, plan_file: Path, lines: list[str], *, destroy: bool) -> Result:
    """`terraform plan` to `plan_file` (its inputs file in place); its stream into `lines`."""

    def keep(line: str) -> None:
        lines.append(line)
        _progress_plain(line)

    args = [f"-out={plan_file}", "-lock-timeout=0s", "-json", "-detailed-exitcode"]
    if destroy:
        args.append("-destroy")
    return tf.run("plan", *args, on_line=keep, check=False)


def _planned(
    prepared: Prepared,
    tf: Terraform,
    plan_file: Path,
    lines: list[str],
    result: Result,
    *,
    destroy: bool,
) -> PlanSummary:
    """What a finished plan (its inputs file still in place) comes to: what an interrupted run
    left adopted first (adopt.py: the plan is made again), its failure raised, its summary."""
    if result.returncode == 2 and not destroy:
        from kubeplat import adopt

        replan = lambda: _run_plan(tf, plan_file, lines, destroy=False)  # noqa: E731
        result = adopt.adopt(prepared, tf, plan_file, lines, replan) or result
    if result.returncode not in (0, 2):
        raise tf.failure("plan", result)
    check_plan_file(plan_file)
    return explain(summarize(lines), tf, plan_file)


def prepare_and_plan(
    env_name: str,
    env_dir: str | None,
    force_sandbox: bool,
    plan_file: Path,
    *,
    write_pki: bool,
    new_pki_only: bool = False,
) -> tuple[Prepared, Terraform, PlanSummary]:
    """Steps 1-7 for `up` and `plan`, with the plan started as early as it can be.

    Terraform's plan reads only the environment file and the user-data stubs, which are
    rendered from the file alone (no PKI, nothing from the bucket). So on a working copy
    already initialised for this environment's backend, `terraform plan` starts as soon as the
    file is read, and the session, the account check, the buckets, the PKI and the node
    configuration are done beside it (in a thread; the plan is most of a no-op `up`). What that
    finds wrong (the credentials are another account's, say) stops the plan, which changes
    nothing (as on Ctrl-C: it releases the state lock), and is reported as it would be without
    it; a plan whose inputs turn out not to be the prepared ones (the KMS key behind
    the alias changed) is thrown away and made again. A first run, or one that must `init`,
    goes step by step."""
    from kubeplat import aws as aws_module
    from kubeplat import terraform

    env, sandbox_env = _environment(env_name, env_dir, force_sandbox, start=True)
    sandbox = sandbox_env is not None
    tf = _terraform(env, aws_module.terraform_environ(env, sandbox_env), sandbox)
    last = tf.last_backend()
    key_arn = (last or {}).get("kms_key_id", "")

    def prepare_now() -> Prepared:
        return prepare(
            env_name, env_dir, force_sandbox, write_pki=write_pki, new_pki_only=new_pki_only,
            connected=_session(env, sandbox_env),
        )  # fmt: skip

    if not key_arn or not tf.initialised(_backend(env, sandbox, key_arn)):
        prepared = prepare_now()
        tf = terraform_for(prepared)
        return prepared, tf, plan(prepared, tf, plan_file)
    inputs = terraform.variables(env, render.stubs(env))
    worker = _Beside(prepare_now, tf)
    lines: list[str] = []
    with inputs_file(tf, inputs):
        try:
            result = _run_plan(tf, plan_file, lines, destroy=False)
        except BaseException:
            worker.join()  # an interrupt: what prepare writes is finished, not cut off
            raise
        prepared = worker.result()  # its error first: the plan was stopped for it
        if prepared.key_arn == key_arn and terraform.variables(env, prepared.bundle) == inputs:
            return prepared, tf, _planned(prepared, tf, plan_file, lines, result, destroy=False)
    console.debug("the early plan's inputs were not the prepared ones: planning again")
    tf = terraform_for(prepared)
    return prepared, tf, plan(prepared, tf, plan_file)


class _Beside:
    """`work` in a thread while the main thread runs Terraform (which must stay in the main
    thread: it forwards Ctrl-C). A failure of `work` stops `tf`'s running child."""

    def __init__(self, work: Callable[[], Prepared], tf: Terraform) -> None:
        import threading

        self.value: Prepared | None = None
        self.error: BaseException | None = None

        def run() -> None:
            # Second to Terraform for the CPU (on Linux a thread has its own nice value): the
            # plan is the longer path, and this has its whole length to finish.
            with suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            try:
                self.value = work()
            except BaseException as exc:
                self.error = exc
                tf.stop()

        self.thread = threading.Thread(target=run, name="kubeplat-prepare", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=60)

    def result(self) -> Prepared:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


def check_plan_file(plan_file: Path) -> None:
    """A saved plan is a zip archive: Terraform (1.11) reports success for a plan it could
    not write (an empty file on a full disk), which must never be taken for a plan."""
    import zipfile

    if zipfile.is_zipfile(plan_file):
        return
    size = plan_file.stat().st_size if plan_file.exists() else 0
    stats = os.statvfs(plan_file.parent)
    full = stats.f_bavail * stats.f_frsize < 1 << 20
    raise KubeplatError(
        f"{plan_file}: Terraform did not write a complete plan ({size} bytes)"
        + ("; the disk is full" if full else ""),
        "free some space there (or save the plan elsewhere), then run the same command again",
    )


def apply(prepared: Prepared, tf: Terraform, plan_file: Path) -> dict[str, Any]:
    """Apply exactly the saved plan, streaming Terraform's progress; the outputs it reports."""
    outputs: dict[str, Any] = {}
    show = ApplyProgress()

    def watch(line: str) -> None:
        show(line)
        if line.startswith("{") and '"type":"outputs"' in line:
            message = json.loads(line)
            outputs.update(
                {k: v["value"] for k, v in message.get("outputs", {}).items() if "value" in v}
            )

    with variables_file(prepared, tf), show.activity:
        tf.run("apply", "-json", str(plan_file), on_line=watch)
    return outputs


SECURE_GROUP = 'aws_autoscaling_group.node["secure"]'
SECURE_WAIT_S = 45 * 60  # the etcd cluster forming: every first member boots and joins


def wait_for_secure(
    prepared: Prepared,
    summary: PlanSummary,
    again: str,
    *,
    timeout_s: float = SECURE_WAIT_S,
    poll_s: float = 15.0,
) -> None:
    """After an apply that created or resized the secure group: wait until as many of its
    instances are in service as it wants now (read each time: a lowered maximum scales it in,
    and Terraform, which no longer owns the desired capacity, would wait for the count it read
    before). Its new instances are in service once their etcd members have joined (the launch
    hook), so this is the cluster forming. A timeout leaves everything applied and says so."""
    from kubeplat.aws import errors

    if not any(
        address == SECURE_GROUP and action in ("create", "update", "replace")
        for action, address in summary.resources
    ):
        return
    client = prepared.aws.client("autoscaling")
    name = f"{prepared.env.environment}-{prepared.env.platform}-secure"
    deadline, said = time.monotonic() + timeout_s, ""
    while True:
        with errors(f"reading the autoscaling group {name}", prepared.aws):
            found = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        groups = found.get("AutoScalingGroups", [])
        if not groups:
            return  # destroyed meanwhile, or named otherwise: nothing of ours to wait for
        want = int(groups[0].get("DesiredCapacity", 0))
        serving = sum(
            1 for i in groups[0].get("Instances", []) if i.get("LifecycleState") == "InService"
        )
        if serving >= want:
            return
        line = f"secure layer: {serving} of {want} instances in service (etcd members joining)"
        if line != said:
            console.status(line)
            said = line
        if time.monotonic() >= deadline:
            raise KubeplatError(
                f"the secure layer has {serving} of {want} instances in service after "
                f"{timeout_s / 60:.0f} minutes; everything was applied and nothing was removed",
                f"see why with kubeplat etcd status -e {prepared.env.environment} and kubeplat "
                f"instances -e {prepared.env.environment}; then run: {again}",
            )
        time.sleep(poll_s)


def outputs(tf: Terraform) -> dict[str, Any]:
    """`terraform output -json`, as plain values."""
    return parse_outputs(tf.run("output", "-json").output)


def planned_outputs(plan_file: Path) -> dict[str, Any] | None:
    """The outputs of the state a saved plan was made from (its `tfstate` member: the state
    as the plan's refresh left it), or None when they cannot be read from it."""
    import zipfile

    try:
        with zipfile.ZipFile(plan_file) as archive:
            state = json.loads(archive.read("tfstate"))
        return {name: item["value"] for name, item in state["outputs"].items()}
    except (OSError, KeyError, TypeError, ValueError, AttributeError, zipfile.BadZipFile):
        return None


def parse_outputs(text: str) -> dict[str, Any]:
    """The values of `terraform output -json`."""
    from kubeplat import terraform

    # Nothing at all (no outputs yet): none.
    raw = terraform.json_document(text) if "{" in text else {}
    return {name: item.get("value") for name, item in raw.items()}


def _progress_plain(line: str) -> None:
    if console.debug_enabled():
        console.debug(line)


_DOING = {"create": "creating", "update": "updating", "delete": "destroying", "read": "reading"}
_DONE = {"create": "created", "update": "updated", "delete": "destroyed", "read": "read"}


class ApplyProgress:
    """Terraform's `-json` apply stream for a person: one line per finished resource (with the
    time it took); on a terminal, a status line redrawn four times a second naming every
    resource still in progress and for how long; without one, timestamped lines, and a
    `still …` line for what is in progress whenever 15 s went by without one."""

    QUIET = 15.0

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_line = self.started
        self.in_flight: dict[str, tuple[str, float]] = {}  # address -> (action, since)
        self.activity = console.Activity("applying", self.flying)

    def flying(self) -> str:
        now = time.monotonic()
        return ", ".join(
            f"{_DOING.get(action, action)} {address} {now - since:.0f}s"
            for address, (action, since) in sorted(self.in_flight.items(), key=lambda i: i[1][1])
        )

    def line(self, text: str, style: str) -> None:
        self.last_line = time.monotonic()
        plain = not console.fancy(sys.stderr)
        console.status(f"{console.clock()}  {text}" if plain else text, style)

    def __call__(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            if raw.strip():
                self.line(raw, "info")
            return
        kind = message.get("type")
        hook = message.get("hook", {})
        address = hook.get("resource", {}).get("addr", "")
        action = hook.get("action", "")
        if kind == "apply_start":
            self.in_flight[address] = (action, time.monotonic())
        elif kind == "apply_complete":
            self.in_flight.pop(address, None)
            took = hook.get("elapsed_seconds")
            self.line(
                f"{_DONE.get(action, action + 'd')} {address}" + (f" ({took}s)" if took else ""),
                "ok",
            )
        elif kind == "apply_errored":
            self.in_flight.pop(address, None)
            self.line(f"failed {address}", "error")
        elif kind == "diagnostic" and message.get("@level") == "error":
            diagnostic = message.get("diagnostic", {})
            self.line(
                f"Terraform: {diagnostic.get('summary')}: {diagnostic.get('detail', '')}", "error"
            )
        elif kind == "change_summary":
            changes = message.get("changes", {})
            imported = f"{changes['import']} imported, " if changes.get("import") else ""
            self.line(
                f"{imported}{changes.get('add', 0)} added, {changes.get('change', 0)} changed, "
                f"{changes.get('remove', 0)} destroyed in {time.monotonic() - self.started:.0f}s",
                "ok",
            )
        elif console.debug_enabled():
            console.debug(raw)
        if (
            kind == "apply_progress"
            and not console.fancy(sys.stderr)
            and time.monotonic() - self.last_line >= self.QUIET
        ):
            self.line(f"still {self.flying()}", "info")
