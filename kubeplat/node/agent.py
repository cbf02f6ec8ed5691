"""kubeplat node agent: keep a directory in step with a prefix of the secrets bucket.

Runs on every node as `kubeplat-node agent --bucket B --prefix ENV/manifests/LAYER/ --target
/etc/kubernetes/manifests`. Every interval it lists the prefix; an object whose ETag changed is
downloaded and, when its bytes differ from the file on disk, written to a temporary file and
renamed into place, so the kubelet never reads half a manifest. Files it wrote whose object is
gone are removed; files it did not write are never touched. Unchanged files keep their mtime.

On control-plane nodes (`--roll`) a change to manifests the node already runs restarts its API
server, so the nodes of the layer take turns: in the order of their instance ids, a node applies
a new set only when every node before it reports (in `status/LAYER/INSTANCE/manifests.json`)
that it runs that set and its API server answers `/readyz`. A node that stopped reporting for
`STALE_S` is not waited for; a node whose API server does not come back stops the roll there,
so a bad manifest takes down one API server, not all of them. A node's first set (at boot) is
applied at once: nothing runs yet that a turn would protect.

With `--ssh-user` it keeps that user's authorized_keys equal to the PKI's `ssh/authorized_keys`
(`sshkeys`), so a rotated SSH key reaches the node without replacing it.

With `--pki-prefix` (the layer's `pki/common/` and `pki/LAYER/`) it keeps the node's
certificates and keys in `--pki-dir` in step the same way (keys 0600), before the manifests,
so a node picks up a renewed or rotated certificate without being replaced. Then it tells each
component that uses a changed file: a static pod manifest names the PKI files its pod reads in
a `@PKI:name,…@` placeholder, which the agent fills with a digest of those files, so a changed
certificate is a changed manifest and the kubelet restarts exactly the pods that read it; a
systemd unit named with `--reload UNIT=FILE,…` is restarted (`--reload-command`). On a layer
that takes turns this happens in the node's turn, like a manifest change; a restart still owed
when the agent stopped is done when it starts again. Every node reports what it runs
(`status/LAYER/INSTANCE/manifests.json`: one digest of its manifests and PKI).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

STATE_NAME = ".kubeplat-agent.json"
STALE_S = 300.0  # a peer silent this long is not waited for
HEARTBEAT_S = 60.0
READY_TIMEOUT_S = 300.0
KUBELET_RETRY_S = 600.0  # between two requests of a kubelet client certificate by the agent
log = logging.getLogger("kubeplat-agent")


# Written 0600, as the user-data stub does (the encryption config holds the Secrets' keys).
PRIVATE = (".key", "bootstrap-token", "encryption-config.yaml")
PLACEHOLDER = re.compile(r"@PKI:([A-Za-z0-9._/,-]*)@")


class Agent:
    """One prefix of the bucket kept in step with one directory.

    `tree` allows names in sub-folders (the PKI's `etcd/`); `fill` (the PKI folder) makes the
    agent fill `@PKI:…@` placeholders in what it writes; `before_change(name)` is called before
    a file is written or removed.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        target: Path,
        *,
        tree: bool = False,
        fill: Path | None = None,
        before_change: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.target = target
        self.tree = tree
        self.fill = fill
        self.before_change = before_change or (lambda name: None)
        # One state file a prefix (two prefixes share the PKI folder).
        own = "" if not tree else "-" + self.prefix.rstrip("/").rpartition("/")[2]
        self.state_path = target / STATE_NAME.replace(".json", f"{own}.json")

    def _state(self) -> dict[str, str]:
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def listing(self) -> dict[str, str]:
        """Object name (relative to the prefix) → ETag, for every object under the prefix."""
        return list_prefix(self.client, self.bucket, self.prefix, tree=self.tree)

    def applied(self) -> dict[str, str]:
        """What this node runs: name → ETag of every file the agent wrote."""
        return {name: etag.split(" ")[0] for name, etag in self._state().items()}

    def pending(self) -> list[str]:
        """Restarts owed (none: a plain agent restarts nothing)."""
        return []

    def sync_once(self, listing: dict[str, str] | None = None) -> list[str]:
        """One pass; returns what changed, as `+name`, `~name` or `-name`."""
        self.target.mkdir(parents=True, exist_ok=True)
        known = self._state()
        listing = self.listing() if listing is None else listing
        # What the placeholders were filled from: a changed PKI is a changed manifest.
        context = f" {tree_digest(self.fill)}" if self.fill is not None else ""
        changes: list[str] = []
        for name, etag in sorted(listing.items()):
            path = self.target / name
            if known.get(name) == etag + context and path.exists():
                continue
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            if self.fill is not None:
                body = fill_placeholders(body, self.fill)
            existed = path.exists()
            if not existed or path.read_bytes() != body:
                self.before_change(name)
                private = name.endswith(PRIVATE)
                _atomic_write(path, body, 0o600 if private else 0o644)
                changes.append(("~" if existed else "+") + name)
            known[name] = etag + context
        for name in sorted(set(known) - set(listing)):
            if (self.target / name).exists():
                self.before_change(name)
            (self.target / name).unlink(missing_ok=True)
            del known[name]
            changes.append("-" + name)
        _atomic_write(self.state_path, json.dumps(known, sort_keys=True).encode())
        return changes


def list_prefix(client: Any, bucket: str, prefix: str, *, tree: bool = False) -> dict[str, str]:
    """name → ETag of the files an agent keeps from `prefix`: plain files directly under it
    (with `tree`, in plain sub-folders too); no hidden names."""
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :]
            parts = name.split("/")
            if len(parts) > 1 and not tree:
                continue
            if all(part and not part.startswith(".") for part in parts):
                found[name] = item["ETag"]
    return found


def tree_digest(folder: Path) -> str:
    """A digest of every file the agent keeps in `folder` (their state files' contents)."""
    text = "".join(
        path.name + "\0" + path.read_text()
        for path in sorted(folder.glob(STATE_NAME.replace(".json", "*.json")))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fill_placeholders(body: bytes, folder: Path) -> bytes:
    """Each `@PKI:a,b@` becomes a digest of those files in `folder` (absent ones count)."""

    def digest_of(match: re.Match[str]) -> str:
        names = sorted(n for n in match.group(1).split(",") if n)
        summed = hashlib.sha256()
        for name in names:
            path = folder / name
            # Only a file inside the folder: never an absolute name or one that climbs out.
            inside = not Path(name).is_absolute() and ".." not in Path(name).parts
            data = path.read_bytes() if inside and path.is_file() else b"(absent)"
            summed.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return summed.hexdigest()[:16]

    if b"@PKI:" not in body:
        return body
    return PLACEHOLDER.sub(digest_of, body.decode()).encode()


class Sync:
    """Everything one node keeps in step: its PKI first, then its manifests; then it restarts
    the units that read a changed file. Offers `listing`, `applied` and `sync_once` over all
    of it (names prefixed `pki/<prefix>/` and `manifests/`), so a `Roll` takes turns over both.

    A restart owed is written down (`pending`) before the file changes, so an agent killed
    between the two still restarts the unit when it starts again.
    """

    def __init__(
        self,
        manifests: Agent,
        pki: list[Agent],
        reloads: dict[str, tuple[str, ...]],
        restart: Callable[[str], None],
        kubelet_client: Path | None = None,
        ssh_user: str = "",
        root: Path = Path("/"),
        kubelet_serving: Path | None = None,
    ) -> None:
        self.manifests = manifests
        self.kubelet_serving = kubelet_serving  # the kubelet's serving certificate (a symlink)
        self.ssh_user = ssh_user  # whose authorized_keys follows the PKI's ssh/authorized_keys
        self.root = root  # where /etc/passwd and the user's home are
        self._ssh_said = ""
        self.pki = pki
        self.reloads = reloads
        self.restart = restart
        self.kubelet_client = kubelet_client  # the kubelet's client certificate (a symlink)
        folder = pki[0].target if pki else manifests.target
        self.pending_path = folder / ".kubeplat-restarts-owed.json"  # not a state file
        for one in pki:
            one.before_change = self._owe
        manifests.fill = folder if pki else None

    def _parts(self) -> list[tuple[str, Agent]]:
        parts = [(f"pki/{a.prefix.rstrip('/').rpartition('/')[2]}/", a) for a in self.pki]
        return [*parts, ("manifests/", self.manifests)]

    def listing(self) -> dict[str, str]:
        return {tag + n: e for tag, a in self._parts() for n, e in a.listing().items()}

    def applied(self) -> dict[str, str]:
        return {tag + n: e for tag, a in self._parts() for n, e in a.applied().items()}

    def pending(self) -> list[str]:
        try:
            return sorted(str(unit) for unit in json.loads(self.pending_path.read_text()))
        except (OSError, ValueError, TypeError):
            return []

    def _owe(self, name: str) -> None:
        units = {unit for unit, files in self.reloads.items() if name in files}
        owed = set(self.pending())
        if units - owed:
            self.pending_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.pending_path, json.dumps(sorted(owed | units)).encode())

    def sync_once(self, listing: dict[str, str] | None = None) -> list[str]:
        listing = self.listing() if listing is None else listing
        changes: list[str] = []
        for tag, agent in self._parts():
            mine = {n[len(tag) :]: e for n, e in listing.items() if n.startswith(tag)}
            changes += [c[0] + tag + c[1:] for c in agent.sync_once(mine)]
        for unit in self.pending():
            log.info("restarting %s: a file it reads changed", unit)
            self.restart(unit)
            left = [u for u in self.pending() if u != unit]
            _atomic_write(self.pending_path, json.dumps(left).encode())
        self.install_ssh_keys()
        self.renew_kubelet_client()
        return changes

    def install_ssh_keys(self) -> None:
        """The node user's authorized_keys as the PKI's (a rotated key, within one pass)."""
        if not self.ssh_user or not self.pki:
            return
        from . import sshkeys

        try:
            done = sshkeys.install(self.pki[0].target, self.ssh_user, self.root)
        except (RuntimeError, OSError) as exc:
            if str(exc) != self._ssh_said:  # said once, not every pass
                log.warning("SSH keys of %s not installed: %s", self.ssh_user, exc)
            self._ssh_said = str(exc)
            return
        self._ssh_said = ""
        if done:
            log.info("installed %s", done)

    def _kubelet_certs(self) -> list[tuple[str, Path]]:
        found = [("client", self.kubelet_client), ("serving", self.kubelet_serving)]
        return [(kind, path) for kind, path in found if path is not None]

    def _kubelet_cert_state(self, path: Path) -> str:
        """`current`, `old` or "" (see kubelet_client_state) for one certificate."""
        try:
            cert = path.read_bytes()
            ca = (self.pki[0].target / "kubelet-ca.crt").read_bytes()
        except OSError:
            return ""
        issuer, signer = key_ids(cert)[1], key_ids(ca)[0]
        if issuer is None or signer is None:
            return ""
        return "current" if issuer == signer else "old"

    def kubelet_client_state(self) -> str:
        """`current` when the kubelet's certificates (client, and serving when asked) are signed
        by the kubelet CA the controller-manager signs with now (kubelet-ca.crt), `old` when one
        is by another (a rotated one), "" when there is nothing to tell (none yet, not asked)."""
        if not self.pki:
            return ""
        states = {self._kubelet_cert_state(path) for _, path in self._kubelet_certs()} - {""}
        return "old" if "old" in states else ("current" if states else "")

    def renew_kubelet_client(self) -> None:
        """A kubelet whose client or serving certificate a rotated kubelet CA signed gets a new
        one: the certificate is removed and the kubelet restarted, so it asks again (with its
        bootstrap token, or as itself for serving); a leader controller-manager that still
        signed with the old CA is retried every KUBELET_RETRY_S. The old CA is dropped only once
        every node reports `current`."""
        if not self.pki:
            return
        removed = []
        for kind, path in self._kubelet_certs():
            if self._kubelet_cert_state(path) != "old":
                continue
            try:
                age = time.time() - os.lstat(path).st_mtime
            except OSError:
                continue
            if age >= KUBELET_RETRY_S:
                path.unlink(missing_ok=True)
                removed.append(kind)
        if removed:
            log.info(
                "restarting kubelet.service: its %s certificate is signed by a kubelet CA that "
                "is being retired; it asks for a new one",
                " and ".join(removed),
            )
            self.restart("kubelet.service")


def run(syncer: Agent | Sync, interval: float, roll: Roll | None = None) -> None:
    """Sync forever, every `interval` seconds; a failed pass is logged and retried."""
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        started = time.monotonic()
        try:
            if roll is None:
                for change in syncer.sync_once():
                    log.info("synced %s", change)
            else:
                roll.step(syncer)
        except Exception as exc:  # keep running: the next pass may succeed
            log.warning("sync failed: %s", exc)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def digest(listing: dict[str, str]) -> str:
    """One name for a set of manifests (names and ETags), the same on every node."""
    text = "\n".join(f"{name} {etag}" for name, etag in sorted(listing.items()))
    return hashlib.sha256(text.encode()).hexdigest()


class Roll:
    """Take turns with the other nodes of the layer before applying a changed set."""

    def __init__(
        self,
        peers: Callable[[], list[str]],
        status: Any,
        me: str,
        ready: Callable[[], bool],
        ready_timeout_s: float = READY_TIMEOUT_S,
        poll_s: float = 2.0,
        facts: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.facts = facts  # more to report (the kubelet client certificate's state)
        self.peers = peers  # instance ids of the layer's running nodes
        self.status = status  # a health.Reporter-like object: publish(), read(instance, name)
        self.me = me
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.last_report = 0.0
        self.waiting_for: tuple[str, list[str]] = ("", [])  # the set, and who it waits for

    def step(self, agent: Agent | Sync) -> None:
        if isinstance(agent, Sync):
            agent.renew_kubelet_client()  # every pass: a retry is due whatever else changed
        listing = agent.listing()
        wanted = digest(listing)
        current = agent.applied()
        if digest(current) == wanted:  # in step (an empty layer too: nothing to apply)
            if not agent.pending():
                self._heartbeat(wanted)
                return
            # Files written in this node's turn, but a restart still owed: finish the turn.
        elif current:
            blockers = self._blockers(wanted)
            if (wanted, blockers) != self.waiting_for:  # said again for a newer set too
                if blockers:
                    log.info("new manifests %s: waiting for %s", wanted[:12], ", ".join(blockers))
                self.waiting_for = (wanted, blockers)
            if blockers:
                self._heartbeat(digest(current))
                return
        for change in agent.sync_once(listing):
            log.info("synced %s", change)
        ready = self._wait_ready()
        log.info("set %s applied; this node %s", wanted[:12], "ready" if ready else "NOT ready")
        self._report(wanted, ready)

    def _blockers(self, wanted: str) -> list[str]:
        """The nodes before this one that do not run `wanted` ready yet (and still report)."""
        blockers = []
        fresh = datetime.now(timezone.utc) - timedelta(seconds=STALE_S)
        for peer in sorted(self.peers()):
            if peer >= self.me:
                break
            report = self.status.read(peer, "manifests") or {}
            if report.get("digest") == wanted and report.get("ready"):
                continue
            updated = _parse_time(report.get("updated"))
            if updated is None or updated < fresh:
                continue  # silent for too long: gone or broken, not waited for
            blockers.append(peer)
        return blockers

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(self.poll_s)
        return False

    def _heartbeat(self, running: str) -> None:
        if time.monotonic() - self.last_report >= HEARTBEAT_S:
            self._report(running, self.ready())

    def _report(self, running: str, ready: bool) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        report = {**self.facts(), "digest": running, "ready": ready, "updated": now}
        self.status.publish("manifests", report)
        self.last_report = time.monotonic()


def _parse_time(text: Any) -> datetime | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def readyz(url: str, ca_file: str) -> Callable[[], bool]:
    """A probe of an API server's `/readyz` (anonymous, verified against the cluster CA)."""

    def probe() -> bool:
        try:
            context = ssl.create_default_context(cafile=ca_file)
            with urllib.request.urlopen(url, timeout=5, context=context) as answer:
                return bool(answer.status == 200)
        except (OSError, ValueError):
            return False

    return probe


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a part."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubeplat-node agent",
        description="Keep a node's manifests (and PKI) in step with the secrets bucket.",
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True, help="the manifests' prefix")
    parser.add_argument("--target", required=True, type=Path, help="the manifests' folder")
    parser.add_argument(
        "--pki-prefix", action="append", default=[], help="a PKI prefix (common, then the layer's)"
    )
    parser.add_argument("--pki-dir", type=Path, default=Path("/etc/kubernetes/pki"))
    parser.add_argument(
        "--reload",
        action="append",
        default=[],
        metavar="UNIT=FILE,…",
        help="restart UNIT when one of these PKI files changes",
    )
    parser.add_argument("--reload-command", default="systemctl try-restart {unit}")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--roll",
        metavar="ENVIRONMENT/LAYER",
        help="take turns with the layer's other nodes (etcd, control plane) and report",
    )
    parser.add_argument(
        "--report", metavar="ENVIRONMENT/LAYER", help="report what this node runs (no turns)"
    )
    parser.add_argument("--readyz", default="", help="an API server's /readyz, when it runs one")
    parser.add_argument("--ca", default="/etc/kubernetes/pki/ca.crt")
    parser.add_argument("--etcd-health", default="", help="etcd's /health, when it runs etcd")
    parser.add_argument(
        "--kubelet-client",
        type=Path,
        help="the kubelet's client certificate: renewed when a rotated kubelet CA signed it",
    )
    parser.add_argument(
        "--kubelet-serving",
        type=Path,
        help="the kubelet's serving certificate: renewed when a rotated kubelet CA signed it",
    )
    parser.add_argument(
        "--ssh-user",
        default="",
        help="keep this user's authorized_keys equal to the PKI's ssh/authorized_keys",
    )
    parser.add_argument(
        "--root", type=Path, default=Path("/"), help="where /etc/passwd and homes are (tests)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    from . import aws

    region = args.region
    roll = None
    if args.roll or args.report:
        from . import health

        environment, _, layer = (args.roll or args.report).partition("/")
        identity = aws.Identity.read()
        region = region or identity.region
        reporter = health.Reporter(args.bucket, environment, layer, identity)
        probes = []
        if args.readyz:
            probes.append(readyz(args.readyz, args.ca))
        if args.etcd_health:
            probes.append(etcd_health(args.etcd_health, args.pki_dir))
        peers: Callable[[], list[str]] = list
        if args.roll:
            ec2 = aws.client("ec2", region)
            peers = lambda: running_instances(ec2, environment, layer)  # noqa: E731
        roll = Roll(peers, reporter, identity.instance_id, lambda: all(p() for p in probes))
    s3 = aws.client("s3", region)
    manifests = Agent(s3, args.bucket, args.prefix, args.target)
    syncer: Agent | Sync = manifests
    if args.pki_prefix:
        pki = [Agent(s3, args.bucket, p, args.pki_dir, tree=True) for p in args.pki_prefix]
        syncer = Sync(
            manifests,
            pki,
            reloads(args.reload),
            restarter(args.reload_command),
            args.kubelet_client,
            args.ssh_user,
            args.root,
            args.kubelet_serving,
        )
        if roll is not None and (args.kubelet_client or args.kubelet_serving):
            state = syncer.kubelet_client_state
            roll.facts = lambda: {"kubelet_client": state()} if state() else {}
    if args.once:
        for change in syncer.sync_once():
            log.info("synced %s", change)
        return 0
    run(syncer, args.interval, roll)
    return 0


def reloads(given: list[str]) -> dict[str, tuple[str, ...]]:
    """`UNIT=FILE,FILE` options as {unit: files}."""
    found: dict[str, tuple[str, ...]] = {}
    for item in given:
        unit, _, files = item.partition("=")
        found[unit] = found.get(unit, ()) + tuple(f for f in files.split(",") if f)
    return found


def restarter(template: str) -> Callable[[str], None]:
    """Run `template` with `{unit}` filled in; a failure is logged (the next change retries)."""

    def restart(unit: str) -> None:
        command = shlex.split(template.replace("{unit}", unit))
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            log.warning("%s failed: %s", " ".join(command), done.stderr.strip()[-300:])

    return restart


def etcd_health(url: str, pki: Path) -> Callable[[], bool]:
    """A probe of the local etcd's /health, with the health-check client certificate."""

    def probe() -> bool:
        try:
            context = ssl.create_default_context(cafile=str(pki / "etcd/ca.crt"))
            context.load_cert_chain(
                str(pki / "etcd/healthcheck-client.crt"), str(pki / "etcd/healthcheck-client.key")
            )
            with urllib.request.urlopen(url, timeout=5, context=context) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    return probe


def running_instances(ec2: Any, environment: str, layer: str) -> list[str]:
    """Instance ids of the layer's running nodes."""
    found = []
    filters = [
        {"Name": "tag:Environment", "Values": [environment]},
        {"Name": "tag:Layer", "Values": [layer]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            found += [i["InstanceId"] for i in reservation["Instances"]]
    return sorted(found)


def key_ids(pem: bytes) -> tuple[bytes | None, bytes | None]:
    """A PEM certificate's subject and authority key identifiers (None where absent), read from
    its DER: the node programs have no X.509 library beyond the standard one."""
    import base64

    try:
        body = pem.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END", 1)[0]
        der = base64.b64decode(b"".join(body.split()))
    except (IndexError, ValueError):
        return None, None
    subject = _extension(der, b"\x06\x03\x55\x1d\x0e")  # subjectKeyIdentifier
    authority = _extension(der, b"\x06\x03\x55\x1d\x23")  # authorityKeyIdentifier
    subject_id = _tlv(subject, 0) if subject and subject[0] == 0x04 else None
    authority_id = None
    if authority and authority[0] == 0x30:  # AuthorityKeyIdentifier ::= SEQUENCE { [0] keyId }
        inner = _tlv(authority, 0)
        if inner and inner[0] == 0x80:
            authority_id = _tlv(inner, 0)
    return subject_id, authority_id


def _tlv(data: bytes, at: int) -> bytes | None:
    """The contents of the DER element at `at` (None when there is none)."""
    from . import der

    try:
        return der.read(data, at)[1]
    except der.DerError:
        return None


def _extension(der: bytes, oid: bytes) -> bytes | None:
    """The extnValue (an OCTET STRING's contents, itself DER) of the extension `oid`."""
    at = der.find(oid)
    if at < 0:
        return None
    at += len(oid)
    if at < len(der) and der[at] == 0x01:  # critical BOOLEAN
        at += 3
    if at >= len(der) or der[at] != 0x04:
        return None
    return _tlv(der, at)
