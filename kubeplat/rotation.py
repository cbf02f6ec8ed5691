"""Staged rotation of a CA or of the service-account key, kept in the secrets bucket.

Three steps, each taken only when every running node runs the one before (its agent's report
in `status/`, as `kubeplat instances` shows it), so that no node ever trusts only one of two CAs
another node uses:

1. `trust`: the new CA (or key) is trusted beside the old one, which still signs;
2. `reissue`: the new one signs and every leaf it vouches for is reissued; the old one is still
   trusted (for the service-account key: until every token has turned over, a day);
3. the old one is dropped.

Which step a rotation is at is read from the PKI itself (`pki.staged`), so a second checkout or
a CI job continues it; `rotation.json` beside it only says who began it and since when the
current step runs.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubeplat import console, pki

if TYPE_CHECKING:
    from kubeplat.aws import Aws
    from kubeplat.config import Environment
    from kubeplat.inventory import Instance
    from kubeplat.store import BucketStore

RECORD = "rotation.json"
# The kubelet refreshes a pod's service-account token at 80% of its life and at the latest
# after 24 hours: a day after the new key signs, no token signed by the old one is in use.
TOKEN_TURNOVER = dt.timedelta(hours=24)

STEP = {
    pki.TRUST: "step 1 of 3: the new one is trusted beside the old one, which still signs",
    pki.REISSUE: "step 2 of 3: the new one signs, the old one is still trusted",
}


@dataclass
class Status:
    """Where a rotation stands, and what this run did about it."""

    phases: dict[str, str]
    since: str = ""
    by: str = ""
    waiting: list[Instance] = field(default_factory=list)
    hold: str = ""  # why the next step was not taken ("" when it was, or when none is left)
    taken: str = ""  # the step this run took
    issued: dict[str, str] = field(default_factory=dict)
    rotated: list[str] = field(default_factory=list)  # what the rotation is of

    def __post_init__(self) -> None:
        self.rotated = self.rotated or sorted(self.phases)

    def as_json(self) -> dict[str, Any]:
        return {
            "rotating": self.rotated,
            "steps": self.phases,
            "since": self.since,
            "by": self.by,
            "waiting": [{"instance": i.instance_id, "config": i.config} for i in self.waiting],
            "hold": self.hold,
            "taken": self.taken,
        }


def names_for(rotate: str) -> list[str]:
    """What `--rotate NAME` rotates in stages: `ca` means every CA, `sa` the service-account
    key; a leaf is not staged (it is reissued at once)."""
    if rotate == "ca":
        return list(pki.CAS)
    if rotate in pki.STAGED:
        return [rotate]
    return []


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(store: BucketStore) -> dict[str, str]:
    if RECORD not in store.names(RECORD):
        return {}
    try:
        found = json.loads(store.get(RECORD))
    except ValueError:
        return {}
    return {k: str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _save_record(store: BucketStore, phases: dict[str, str], moment: dt.datetime, by: str) -> None:
    document = {"rotating": phases, "since": _stamp(moment), "by": by}
    store.put(RECORD, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def begin(
    env: Environment, store: BucketStore, rotate: str, now: dt.datetime | None = None
) -> Status:
    """Step 1: the new CA (or key) into the bucket, trusted beside the old one."""
    from kubeplat import pipeline

    moment = _now(now)
    files = pipeline.sync_pki(env, store, write=True, now=moment)
    result = pki.begin(env, files, names_for(rotate), moment)
    pipeline.store_pki(env, store, result.files)
    phases = pki.staged(result.files)
    by = _who()
    _save_record(store, phases, moment, by)
    return Status(phases, _stamp(moment), by, taken=pki.TRUST, issued=dict(result.reasons))


def step(
    env: Environment,
    store: BucketStore,
    aws: Aws,
    *,
    write: bool = True,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Status | None:
    """The next step of the rotation in progress, when every running node runs this one (or
    with `force`); None when no rotation is in progress. With `write` False, only look."""
    from kubeplat import inventory, pipeline

    moment = _now(now)
    files = pki.settle(store.load_pki())
    phases = pki.staged(files)
    if not phases:
        if write and RECORD in store.names(RECORD):
            store.delete([RECORD])  # the last step was taken by a run that stopped after it
        return None
    record = _record(store)
    status = Status(phases, record.get("since", ""), record.get("by", ""))
    rows = inventory.instances(aws, env.environment)
    rows = inventory.converged(aws, env.secrets_bucket_name, env.environment, rows, now=None)
    status.waiting = [
        r for r in rows if r.state in ("pending", "running") and r.config != inventory.CURRENT
    ]
    if status.waiting:
        status.hold = f"{len(status.waiting)} node(s) do not run this step yet: " + ", ".join(
            f"{r.instance_id} ({'no report' if r.config == inventory.NO_REPORT else r.config})"
            for r in status.waiting
        )
        if any(r.config == inventory.NO_REPORT for r in status.waiting):
            status.hold += (
                "; a node that never reports (the sandbox's, or one without kubeplat's agent) "
                "is waited for too: --force takes the step without it"
            )
    elif phases.get("sa") == pki.REISSUE:
        since = _parse(status.since)
        if since is None or moment - since < TOKEN_TURNOVER:
            until = (since or moment) + TOKEN_TURNOVER
            status.hold = (
                "service-account tokens signed by the old key may be in use until "
                f"{until:%Y-%m-%d %H:%M} UTC"
            )
    if status.hold and not force:
        return status
    if not write:
        status.hold = status.hold or "kubeplat up takes it (a plan only looks)"
        return status
    if status.hold:
        console.warn(f"taking the next rotation step anyway (--force): {status.hold}")
    result = pki.advance(env, files, moment)
    pipeline.store_pki(env, store, result.files)
    status.taken = next(iter(phases.values()))
    status.issued = dict(result.reasons)
    status.phases = pki.staged(result.files)
    if status.phases:
        _save_record(store, status.phases, moment, status.by or _who())
        status.since = _stamp(moment)
    else:
        store.delete([RECORD])
    status.hold = ""
    return status


def _parse(stamp: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def describe(status: Status) -> list[str]:
    """Lines for the operator: what rotates, the step it is at or took, what the next waits for."""
    names = ", ".join(sorted(status.rotated))
    if not status.phases:
        return [f"rotation of {names} finished: the old one is trusted no more"]
    phase = sorted(status.phases.values())[-1]
    lines = [f"rotation of {names}: {'now at ' if status.taken else ''}{STEP[phase]}"]
    if status.since and not status.taken:
        lines.append(f"  since {status.since.replace('T', ' ')[:-4]} UTC ({status.by})")
    if status.hold:
        lines.append(f"  the next step waits: {status.hold}")
    return lines
