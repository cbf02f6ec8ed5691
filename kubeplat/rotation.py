"""Staged rotation of a CA, of the service-account key or of the SSH key pair, kept in the
secrets bucket.

Three steps, each taken only when every running node runs the one before (its agent's report
in `status/`, as `kubeplat instances` shows it), so that no node ever trusts only one of two CAs
another node uses:

1. `trust`: the new CA (or key) is trusted beside the old one, which still signs;
2. `reissue`: the new one signs and every leaf it vouches for is reissued; the old one is still
   trusted (for the service-account key: until every token has turned over, a day; for the SSH
   key: `kubeplat ssh` uses the new key, the old one is still authorized);
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
SSH_STEP = {
    pki.TRUST: "step 1 of 3: the new key is authorized beside the old one, which kubeplat ssh "
    "still uses",
    pki.REISSUE: "step 2 of 3: kubeplat ssh uses the new key, the old one is still authorized",
}

ENCRYPTION_STEP = {
    pki.TRUST: "step 1 of 3: the new key decrypts Secrets beside the old one, which still "
    "encrypts them",
    pki.REISSUE: "step 2 of 3: the new key encrypts Secrets, the old one still decrypts those "
    "written before",
}
# Secrets the API server wrote with the old key stay so until they are written again.
REWRITE = "kubectl get secrets -A -o json | kubectl replace -f -"


def _step_text(names: list[str], phase: str) -> str:
    texts = {"ssh": SSH_STEP, "encryption": ENCRYPTION_STEP}
    return texts.get(names[0], STEP)[phase] if len(names) == 1 else STEP[phase]


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


def _record(store: BucketStore) -> dict[str, Any]:
    if RECORD not in store.names(RECORD):
        return {}
    try:
        found = json.loads(store.get(RECORD))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _save_record(
    store: BucketStore,
    rotated: list[str],
    phases: dict[str, str],
    moment: dt.datetime,
    by: str,
) -> None:
    document = {"rotating": sorted(rotated), "steps": phases, "since": _stamp(moment), "by": by}
    store.put(RECORD, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())


def who() -> str:
    """Who runs this: user@host, for the records an operator leaves in the bucket."""
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
    phases = pki.staged(result.files)
    by = who()
    # The record first: a run stopped before the PKI is written leaves a record that does not
    # match the bucket, which the next run replaces (`step`).
    _save_record(store, list(phases), phases, moment, by)
    pipeline.store_pki(env, store, result.files)
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
    from kubeplat import pipeline

    moment = _now(now)
    locked = store.names("pki/locked/")
    if not any(".next." in n or ".prev." in n for n in locked):  # one listing when none runs
        _forget(store, write)
        return None
    # What a run that stopped half-way through a step left is completed first (and that
    # completed step must reach the nodes before the next one is taken).
    wrote: list[str] = []
    files = pipeline.sync_pki(env, store, write=write, now=moment, wrote=wrote)
    phases = pki.staged(files)
    if not phases:
        _forget(store, write)
        return None
    record = _record(store)
    by = str(record.get("by") or who())
    rotated = [str(n) for n in record.get("rotating") or []] or sorted(phases)
    since = str(record.get("since", ""))
    if record.get("steps") != phases:
        # No record of this step (a run stopped between writing the record and the PKI, or
        # the record is gone): the step counts from now.
        since = _stamp(moment)
        if write:
            _save_record(store, rotated, phases, moment, by)
    status = Status(phases, since, by, rotated=rotated)
    status.hold = _hold(env, aws, status, phases, moment, bool(wrote))
    if status.hold and (not force or wrote):
        return status
    if not write:
        status.hold = status.hold or "kubeplat up takes it (a plan only looks)"
        return status
    if status.hold:
        console.warn(f"taking the next rotation step anyway (--force): {status.hold}")
    result = pki.advance(env, files, moment)
    status.taken = min(phases.values(), key=lambda p: p != pki.TRUST)  # the step it was at
    status.issued = dict(result.reasons)
    status.phases = pki.staged(result.files)
    if status.phases:
        _save_record(store, rotated, status.phases, moment, by)  # before the PKI: see above
    pipeline.store_pki(env, store, result.files)
    if status.phases:
        status.since = _stamp(moment)
    else:
        store.delete([RECORD])
    status.hold = ""
    return status


def _forget(store: BucketStore, write: bool) -> None:
    """No rotation runs: a record left by a run that stopped after the last step goes."""
    if write and RECORD in store.names(RECORD):
        store.delete([RECORD])


def _hold(
    env: Environment,
    aws: Aws,
    status: Status,
    phases: dict[str, str],
    moment: dt.datetime,
    completed: bool,
) -> str:
    """Why the next step may not be taken yet ("" when it may)."""
    from kubeplat import inventory

    if completed:
        return (
            "this step was completed just now (a run had stopped half-way through it); "
            "the nodes must run it first"
        )
    rows = inventory.instances(aws, env.environment)
    rows = inventory.converged(aws, env.secrets_bucket_name, env.environment, rows)
    running = [r for r in rows if r.state in ("pending", "running")]
    status.waiting = [r for r in running if r.config != inventory.CURRENT]
    kubelets = phases.get("kubelet-ca") == pki.REISSUE
    if kubelets:
        # Before the old kubelet CA goes, every kubelet must use a certificate of the new one.
        status.waiting += [
            r for r in running if r.config == inventory.CURRENT and r.kubelet != "current"
        ]
    if status.waiting:

        def why(row: Instance) -> str:
            if row.config == inventory.NO_REPORT:
                return "no report"
            if row.config != inventory.CURRENT:
                return row.config
            return "its kubelet's certificate is not the new kubelet CA's yet"

        hold = f"{len(status.waiting)} node(s) do not run this step yet: " + ", ".join(
            f"{r.instance_id} ({why(r)})" for r in status.waiting
        )
        if any(r.config == inventory.NO_REPORT for r in status.waiting):
            hold += (
                "; a node that never reports (the sandbox's, or one without kubeplat's agent) "
                "is waited for too: --force takes the step without it"
            )
        return hold
    if phases.get("encryption") == pki.REISSUE:
        # Which Secrets etcd still holds under the old key only the cluster knows: the operator
        # rewrites them, then takes the step that drops the key.
        return (
            "Secrets written before this step are still encrypted with the old key: rewrite "
            f"them ({REWRITE}), then take the last step with --force"
        )
    if phases.get("sa") == pki.REISSUE:
        since = _parse(status.since)
        if since is None or moment - since < TOKEN_TURNOVER:
            until = (since or moment) + TOKEN_TURNOVER
            return (
                "service-account tokens signed by the old key may be in use until "
                f"{until:%Y-%m-%d %H:%M} UTC"
            )
    return ""


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
    at = "now at " if status.taken else ""
    steps = set(status.phases.values())
    if len(steps) == 1:
        lines = [f"rotation of {names}: {at}{_step_text(sorted(status.phases), steps.pop())}"]
    else:  # a run stopped half-way through a step: the names behind catch up first
        lines = [
            f"rotation of {name}: {at}{_step_text([name], phase)}"
            for name, phase in sorted(status.phases.items())
        ]
    if status.since and not status.taken:
        lines.append(f"  since {status.since.replace('T', ' ')[:-4]} UTC ({status.by})")
    if status.hold:
        lines.append(f"  the next step waits: {status.hold}")
    return lines
