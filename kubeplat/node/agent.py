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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import ssl
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
log = logging.getLogger("kubeplat-agent")


class Agent:
    """One sync loop over one prefix and one target directory."""

    def __init__(self, client: Any, bucket: str, prefix: str, target: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.target = target
        self.state_path = target / STATE_NAME

    def _state(self) -> dict[str, str]:
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, ValueError):
            return {}

    def listing(self) -> dict[str, str]:
        """Object name (relative to the prefix) → ETag, for every object under the prefix."""
        found: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                # Only plain files directly under the prefix: no sub-folders, no hidden files.
                if name and "/" not in name and not name.startswith("."):
                    found[name] = item["ETag"]
        return found

    def applied(self) -> dict[str, str]:
        """What this node runs: name → ETag of every file the agent wrote."""
        return self._state()

    def sync_once(self, listing: dict[str, str] | None = None) -> list[str]:
        """One pass; returns what changed, as `+name`, `~name` or `-name`."""
        self.target.mkdir(parents=True, exist_ok=True)
        known = self._state()
        listing = self.listing() if listing is None else listing
        changes: list[str] = []
        for name, etag in sorted(listing.items()):
            path = self.target / name
            if known.get(name) == etag and path.exists():
                continue
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            existed = path.exists()
            if not existed or path.read_bytes() != body:
                _atomic_write(path, body)
                changes.append(("~" if existed else "+") + name)
            known[name] = etag
        for name in sorted(set(known) - set(listing)):
            (self.target / name).unlink(missing_ok=True)
            del known[name]
            changes.append("-" + name)
        _atomic_write(self.state_path, json.dumps(known, sort_keys=True).encode())
        return changes

    def run(self, interval: float, roll: Roll | None = None) -> None:
        """Sync forever, every `interval` seconds; a failed pass is logged and retried."""
        stopping: list[bool] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        while not stopping:
            started = time.monotonic()
            try:
                if roll is None:
                    for change in self.sync_once():
                        log.info("synced %s", change)
                else:
                    roll.step(self)
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
    ) -> None:
        self.peers = peers  # instance ids of the layer's running nodes
        self.status = status  # a health.Reporter-like object: publish(), read(instance, name)
        self.me = me
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.last_report = 0.0
        self.waiting_for: list[str] = []

    def step(self, agent: Agent) -> None:
        listing = agent.listing()
        wanted = digest(listing)
        current = agent.applied()
        if current and digest(current) == wanted:
            self._heartbeat(wanted)
            return
        if current:
            blockers = self._blockers(wanted)
            if blockers != self.waiting_for:
                if blockers:
                    log.info("new manifests %s: waiting for %s", wanted[:12], ", ".join(blockers))
                self.waiting_for = blockers
            if blockers:
                self._heartbeat(digest(current))
                return
        for change in agent.sync_once(listing):
            log.info("synced %s", change)
        ready = self._wait_ready()
        log.info(
            "manifests %s applied; API server %s", wanted[:12], "ready" if ready else "NOT ready"
        )
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
        self.status.publish("manifests", {"digest": running, "ready": ready, "updated": now})
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


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a part."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubeplat-node agent", description="Sync a bucket prefix to a directory."
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--target", required=True, type=Path)
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--roll",
        metavar="ENVIRONMENT/LAYER",
        help="take turns with the layer's other nodes (control plane)",
    )
    parser.add_argument("--readyz", default="https://127.0.0.1:6443/readyz")
    parser.add_argument("--ca", default="/etc/kubernetes/pki/ca.crt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    from . import aws

    region = args.region
    roll = None
    if args.roll:
        from . import health

        environment, _, layer = args.roll.partition("/")
        identity = aws.Identity.read()
        region = region or identity.region
        reporter = health.Reporter(args.bucket, environment, layer, identity)
        ec2 = aws.client("ec2", region)
        roll = Roll(
            lambda: running_instances(ec2, environment, layer),
            reporter,
            identity.instance_id,
            readyz(args.readyz, args.ca),
        )
    agent = Agent(aws.client("s3", region), args.bucket, args.prefix, args.target)
    if args.once:
        for change in agent.sync_once():
            log.info("synced %s", change)
        return 0
    agent.run(args.interval, roll)
    return 0


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
