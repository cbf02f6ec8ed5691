"""`kubeplat health`: whether an environment is well, in one table, for a person or a pipeline.

Each item is read where the truth is, never from kubeplat's own memory: the state lock from
the state bucket (held, by whom, for how long), drift from a Terraform plan (which
takes no lock), the API server's certificate from the API server itself (and the bucket's copy
when it cannot be reached), each node's convergence from its own report, etcd's members,
stale members and latest snapshot from the members' reports, and each autoscaling group's
instances against its desired capacity from AWS.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kubeplat.node.roll import OK, RED, WARN, Check

# A lock older than this is red: no kubeplat run holds one that long (a dead run's, likely).
LOCK_STALE = dt.timedelta(hours=1)
SNAPSHOT_MAX_AGE = dt.timedelta(hours=1)


# One line of an environment's health (what, ok/warn/red, and the facts): a rehearsal item's
# shape, shown and serialised the same way.
Item = Check


@dataclass
class Health:
    environment: str
    items: list[Item] = field(default_factory=list)

    @property
    def level(self) -> str:
        levels = {i.level for i in self.items}
        return RED if RED in levels else WARN if WARN in levels else OK

    def as_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "level": self.level,
            "checks": [i.as_json() for i in self.items],
        }


def guarded(name: str, work: Callable[[], list[Item]]) -> list[Item]:
    """One check's items; a check that cannot be made is said as such (red: not known to be
    well), never a traceback, and the other checks still run."""
    from kubeplat.errors import KubeplatError

    try:
        return work()
    except KubeplatError as exc:
        return [Item(name, RED, f"not checked: {exc.message}")]


def lock(held: dict[str, Any] | None, now: dt.datetime, env: str = "ENV") -> Item:
    """The state lock (the `.tflock` object Terraform's S3 backend writes beside the state)."""
    if not held:
        return Item("state lock", OK, "free")
    created = _time(str(held.get("Created", "")))
    age = f", {_age(now - created)}" if created else ""
    operation = str(held.get("Operation", "")).replace("OperationType", "").lower() or "a run"
    detail = (
        f"held by {held.get('Who', 'someone')} ({operation} since "
        f"{created:%Y-%m-%d %H:%M:%S} UTC{age}, lock ID {held.get('ID', '?')})"
        if created
        else f"held by {held.get('Who', 'someone')} ({operation}, lock ID {held.get('ID', '?')})"
    )
    stale = created is not None and now - created > LOCK_STALE
    return Item(
        "state lock",
        RED if stale else WARN,
        detail
        + (
            f"; a run that died? release it: kubeplat unlock -e {env} {held.get('ID', 'ID')}"
            if stale
            else ""
        ),
    )


def _time(text: str) -> dt.datetime | None:
    """Terraform's lock time ("2026-12-05 09:14:34.123456789 +0000 UTC") as UTC."""
    head = text.split(".")[0].replace("T", " ").rstrip("Z").strip()
    try:
        return dt.datetime.strptime(head[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _age(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def built(plan: dict[str, Any]) -> bool:
    """Whether the state a plan (`terraform show -json`) started from holds any resource:
    Terraform leaves `prior_state` out when the state is empty."""

    def holds(module: dict[str, Any]) -> bool:
        return bool(module.get("resources")) or any(
            holds(child) for child in module.get("child_modules") or []
        )

    prior = plan.get("prior_state") or {}
    return holds((prior.get("values") or {}).get("root_module") or {})


def drift(drifted: list[dict[str, Any]], planned: list[dict[str, Any]], *, empty: str = "") -> Item:
    """Drift as Terraform itself judges it, from one plan's `terraform show -json`: a resource
    in `resource_drift` (changed outside Terraform since the last apply) whose attributes the
    same plan's `resource_changes` would set back. What the module leaves to others
    (`ignore_changes`: a group's desired capacity) and what AWS computes (tags_all, ARNs…) shows
    in `resource_drift` but the plan does not touch it: not drift. What the environment file
    changed since the last apply is in the plan but not in `resource_drift`: not drift either.
    `empty` names the environment whose state holds nothing yet: nothing to compare."""
    if empty:
        detail = f"not built: its state holds no resource (build it: kubeplat up -e {empty})"
        return Item("drift", WARN, detail)
    undo: dict[str, dict[str, Any]] = {}
    for change in planned:
        actions = change.get("change", {}).get("actions") or []
        if actions and actions != ["no-op"] and actions != ["read"]:
            undo[str(change.get("address"))] = change.get("change", {})
    found = []
    for change in drifted:
        address = str(change.get("address", "?"))
        if address not in undo:
            continue
        before = change.get("change", {}).get("before") or {}
        after = change.get("change", {}).get("after") or {}
        if not after:
            found.append(f"{address} (deleted)")
            continue
        plan_before = undo[address].get("before") or {}
        plan_after = undo[address].get("after") or {}
        names = sorted(
            k
            for k in set(before) | set(after)
            if before.get(k) != after.get(k)
            and k in plan_after  # unknown after the plan: computed, not set back
            and plan_before.get(k) != plan_after.get(k)
        )
        if names:
            found.append(f"{address} ({', '.join(names)})")
    if found:
        return Item("drift", RED, "changed outside Terraform: " + "; ".join(sorted(found)))
    return Item("drift", OK, "none (a plan finds nothing changed outside Terraform to set back)")


def served_certificate(server: str, timeout: float = 5.0) -> dt.datetime:
    """The expiry of the certificate `server` (https://host[:port]) presents, unverified on
    purpose: an expired one must still be read."""
    from cryptography import x509

    parts = urlsplit(server)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((parts.hostname or "", parts.port or 443), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("no certificate presented")
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def expiry(name: str, expires: dt.datetime, now: dt.datetime, renew_days: int, where: str) -> Item:
    days = (expires - now).days
    level = RED if days < 7 else WARN if days <= renew_days else OK
    return Item(name, level, f"{where} expires {expires:%Y-%m-%d} ({days} days left)")


def etcd(status: Any, now: dt.datetime, renew_days: int = 90) -> list[Item]:
    """Quorum, stale members, the latest snapshot's age, and the soonest expiry of the
    certificates the members serve (each member reads its own over TLS) (etcdstatus.read)."""
    from kubeplat.etcdstatus import seconds_since

    if status is None or not status.reports:
        return [Item("etcd", WARN, "no member reports (no secure node runs, or none reports)")]
    items = []
    if status.quorum:
        items.append(Item("etcd", OK, f"{len(status.rows)} members, quorum held"))
    else:
        items.append(Item("etcd", RED, "quorum lost (kubeplat etcd status)"))
    if status.stale:
        items.append(Item("etcd members", RED, "stale (instance gone): " + ", ".join(status.stale)))
    if not status.latest_snapshot_time:
        items.append(Item("etcd snapshot", RED, "none yet"))
    else:
        age = dt.timedelta(seconds=seconds_since(status.latest_snapshot_time, now))
        level = RED if age > SNAPSHOT_MAX_AGE else OK
        items.append(Item("etcd snapshot", level, f"latest {_age(age)} ({status.latest_snapshot})"))
    served = sorted(
        (when, r.instance_id)
        for r in status.rows
        for when in [_time(getattr(r, "certificate_expires", ""))]
        if when is not None
    )
    if served:
        when, instance = served[0]
        items.append(
            expiry("etcd certificate", when, now, renew_days, f"served by {instance}'s etcd")
        )
    return items


def convergence(rows: list[Any]) -> Item:
    """Nodes whose report says they run an older configuration than the bucket's."""
    from kubeplat import inventory

    live = [r for r in rows if r.state in ("pending", "running")]
    if not live:
        return Item("nodes", WARN, "no running instance")
    behind = [f"{r.instance_id} ({r.config})" for r in live if r.config != inventory.CURRENT]
    if not behind:
        return Item("nodes", OK, f"{len(live)} running, each on its layer's current configuration")
    reported = [r for r in live if r.config != inventory.NO_REPORT]
    level = RED if any(r.config in (inventory.BEHIND, inventory.SILENT) for r in live) else WARN
    if not reported:
        level = WARN
    return Item(
        "nodes",
        level,
        f"{len(live) - len(behind)} of {len(live)} current; not: " + ", ".join(sorted(behind)),
    )


def groups(found: list[dict[str, Any]]) -> Item:
    """Autoscaling groups whose in-service instances differ from their desired capacity."""
    off = []
    for group in found:
        serving = sum(
            1 for i in group.get("Instances", []) if i.get("LifecycleState") == "InService"
        )
        if serving != group.get("DesiredCapacity"):
            off.append(f"{group['AutoScalingGroupName']} {serving} of {group['DesiredCapacity']}")
    if not found:
        return Item("groups", WARN, "no autoscaling group")
    if off:
        return Item("groups", RED, "in service / desired: " + ", ".join(sorted(off)))
    return Item("groups", OK, f"{len(found)}, each at its desired capacity")
