"""`kubeplat etcd backup` and `kubeplat etcd restore`, from the operator's machine.

The operator never reaches etcd (it runs in private subnets): both commands talk to the
members through the secrets bucket, as the members' own programs do (kubeplat/node/etcd.py).

- backup: write a request (`<env>/etcd/backup-request.json`); the leader's
  `kubeplat-etcd-watch` takes a snapshot to `<env>/etcd-backups/` and answers in
  `<env>/etcd/backup-done.json`; wait for that answer.
- restore: copy the chosen snapshot to `<env>/etcd/restore/G.db` (the members may read that
  copy and never the backups), then rewrite the formation record with generation G, the
  running secure instances as members and a new cluster token. Every member sets its data
  aside and restores the snapshot as that member (or joins the restored cluster as a learner
  when it is not one); wait until every running instance reports generation G with quorum.
"""

from __future__ import annotations

import getpass
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubeplat import etcdstatus
from kubeplat.aws import errors
from kubeplat.errors import KubeplatError
from kubeplat.node.etcd import (
    BACKUP_DONE,
    BACKUP_REQUEST,
    Formation,
    generation,
    list_snapshots,
    live_members,
    peer_url,
)
from kubeplat.node.steps import now_iso
from kubeplat.store import BucketStore

POLL_S = 3.0
FRESH_S = 180  # a member's report younger than this speaks for the cluster now


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this process's environment (a container, say)
        return "an operator"


def _read(store: BucketStore, name: str) -> dict[str, Any] | None:
    return Formation(store.aws.client("s3"), store.bucket, store.prefix).read(name)


def _status(store: BucketStore, running: dict[str, str]) -> etcdstatus.EtcdStatus:
    return etcdstatus.read(store.aws, store.bucket, store.prefix, dict.fromkeys(running, "running"))


def _fresh(stamp: str, now: datetime) -> bool:
    return bool(stamp) and etcdstatus.seconds_since(stamp, now) < FRESH_S


def running_members(store: BucketStore) -> dict[str, str]:
    """Instance id → private DNS name of the environment's running secure instances."""
    with errors("listing the secure layer's instances", store.aws):
        found = live_members(store.aws.client("ec2"), store.prefix)
    if not found:
        raise KubeplatError(
            f"no secure instance runs in {store.prefix}",
            f"build the environment first: kubeplat up -e {store.prefix}",
        )
    return found


def backup(
    store: BucketStore,
    running: dict[str, str],
    timeout_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask the leader for a snapshot; its key once saved."""
    env = store.prefix
    status = _status(store, running)
    if status.quorum is False:
        raise KubeplatError(
            f"etcd in {env} has lost quorum: no leader takes a snapshot",
            f"see kubeplat etcd status -e {env} and the README, 'etcd: when quorum is lost'",
        )
    now = datetime.now(UTC)
    if not any(r.role == "leader" and _fresh(r.reported, now) for r in status.rows):
        raise KubeplatError(
            f"no etcd leader of {env} has reported in the last {FRESH_S // 60} minutes, so "
            "none would take the snapshot",
            f"kubeplat etcd status -e {env} shows what the members report (the sandbox "
            "boots no node: there, none runs etcd)",
        )
    request = {"id": secrets.token_hex(8), "by": _who(), "requested": now_iso()}
    store.put(f"etcd/{BACKUP_REQUEST}", json.dumps(request, indent=1).encode())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with errors(f"reading s3://{store.bucket}/{env}/etcd/{BACKUP_DONE}", store.aws):
            done = _read(store, BACKUP_DONE)
        if done and done.get("id") == request["id"]:
            if not done.get("key"):
                raise KubeplatError(
                    f"the etcd leader ({done.get('by', '?')}) could not take the snapshot: "
                    f"{done.get('message', '')}",
                    "its journal says more: journalctl -u kubeplat-etcd-watch",
                )
            return str(done["key"])
        sleep(POLL_S)
    raise KubeplatError(
        f"no etcd leader answered the backup request within {timeout_s:.0f}s",
        f"kubeplat etcd status -e {env} shows whether a member leads and reports; the request "
        "stays, and the next leader to see it takes the snapshot",
    )


def snapshot_key(store: BucketStore, name: str) -> str:
    """The bucket key of one of the environment's snapshots, given its key or its file name."""
    backups = f"{store.prefix}/etcd-backups/"
    key = name if name.startswith(backups) else backups + name.rsplit("/", 1)[-1]
    if "/" in name and not name.startswith(backups):
        raise KubeplatError(
            f"{name} is not one of {store.prefix}'s snapshots",
            f"they are under s3://{store.bucket}/{backups}; kubeplat etcd status -e "
            f"{store.prefix} names the latest",
        )
    with errors(f"listing s3://{store.bucket}/{backups}", store.aws):
        found = sorted(list_snapshots(store.aws.client("s3"), store.bucket, backups))
    if key not in {k for k, _ in found}:
        newest = f"the newest is {found[-1][0]}" if found else "there is none yet"
        raise KubeplatError(
            f"no snapshot {name} in s3://{store.bucket}/{backups}",
            f"{newest}; kubeplat etcd backup -e {store.prefix} takes one",
        )
    return key


def restore(
    store: BucketStore,
    key: str,
    running: dict[str, str],
    *,
    force: bool,
    timeout_s: float | None,
    progress: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Restore the environment's etcd from a snapshot; the new formation record."""
    env, s3 = store.prefix, store.aws.client("s3")
    status = _status(store, running)
    now = datetime.now(UTC)
    leaders = [r for r in status.rows if r.role == "leader" and _fresh(r.reported, now)]
    if status.quorum and leaders and not force:
        raise KubeplatError(
            f"etcd in {env} has quorum (leader {leaders[0].instance_id}): a restore replaces "
            f"everything written since {key.rsplit('/', 1)[-1]}",
            f"if that is what you want: kubeplat etcd restore -e {env} --snapshot {key} --force",
        )
    with errors(f"reading s3://{store.bucket}/{env}/etcd/formation.json", store.aws):
        previous = _read(store, "formation.json")
    number = generation(previous) + 1
    copy = f"{env}/etcd/restore/{number}.db"
    with errors(f"copying {key} to s3://{store.bucket}/{copy}", store.aws):
        s3.copy(
            {"Bucket": store.bucket, "Key": key},
            store.bucket,
            copy,
            ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": store.key_arn},
        )
    record = {
        "token": "kubeplat-" + secrets.token_hex(8),
        "members": {iid: peer_url(host) for iid, host in sorted(running.items())},
        "formed": now_iso(),
        "by": f"kubeplat etcd restore ({_who()})",
        "generation": number,
        "restore": {"from": key, "snapshot": copy},
        "previous": {k: v for k, v in (previous or {}).items() if k != "previous"},
    }
    store.put("etcd/formation.json", json.dumps(record, indent=1).encode())
    progress(
        f"recorded generation {number}: {len(running)} members restore {key} "
        f"({', '.join(sorted(running))})"
    )
    if timeout_s is None:
        return record
    if not status.reports:
        # No instance of this environment has ever run etcd here (the sandbox boots none).
        progress("no etcd member has ever reported here: members follow the record when they run")
        return record
    deadline, last = time.monotonic() + timeout_s, ""
    while True:
        status = _status(store, running)
        done = [
            r for r in status.rows if r.generation == number and r.role in ("leader", "follower")
        ]
        said = f"{len(done)} of {len(running)} members run the restored cluster"
        if said != last:
            progress(said)
            last = said
        if len(done) == len(running) and status.quorum:
            return record
        if time.monotonic() >= deadline:
            raise KubeplatError(
                f"the restore is recorded (generation {number}), but after {timeout_s:.0f}s {said}",
                f"kubeplat etcd status -e {env}; on a member: journalctl -u "
                "kubeplat-etcd-member -u kubeplat-etcd-watch",
            )
        sleep(POLL_S)
