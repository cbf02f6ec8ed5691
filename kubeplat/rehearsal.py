"""The rehearsal of a roll or an upgrade (`kubeplat plan`, `kubeplat upgrade-check`, and before
`up` and `apply` ask): before anything changes, whether it will work.

It states the version skew (control plane, kubelets, the operator's kubectl: what runs, as the
API server says, when it can be asked; else what the secrets bucket gives nodes), etcd's health
and the age of its latest snapshot (from the members' reports in the secrets bucket), whether
etcd keeps its quorum while its members are replaced, the certificates that expire before the
roll could end, and the roll's order, batches, gates and estimated duration. A red item stops
`up` and `apply` unless `--force`; nothing is uploaded or applied then.

Only a change that replaces instances or moves the control plane's version is held to these
checks: without one, nothing is red.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeplat.node import roll
from kubeplat.node.roll import OK, RED, WARN, Check

# How each layer's instance refresh goes, as terraform/secure.tf and compute.tf set it.
# Each layer's instance refresh: (minimum healthy percentage, warm-up seconds); None: the
# environment's (compute_roll_min_healthy, compute_asg_grace_period, and its surge,
# compute_roll_max_healthy; the other layers launch none first).
REFRESH: dict[str, tuple[int | None, int | None]] = {
    "secure": (100, 300),
    "control-plane": (50, 300),
    "compute": (None, None),
}
# A snapshot older than this makes an etcd roll red (issue 19: backed up within the hour).
SNAPSHOT_MAX_AGE_S = 3600
# Certificates expiring within the roll's estimate plus this margin are red.
EXPIRY_MARGIN = dt.timedelta(days=1)


@dataclass
class Rehearsal:
    """What the rehearsal found: the checks, and the roll's steps (empty when nothing rolls)."""

    checks: list[Check] = field(default_factory=list)
    steps: list[roll.Step] = field(default_factory=list)
    # The layers roll one after another: the secure layer's refresh starts with the apply, each
    # later layer's once the earlier ones run their new templates (the roll controller).
    concurrent: bool = False
    seconds: int = 0
    upgrade: bool = False  # a roll or a control-plane version change is planned
    sandbox: bool = False  # the sandbox replaces no instance: the roll is what AWS would do

    @property
    def red(self) -> list[Check]:
        return [c for c in self.checks if c.level == RED]

    def as_json(self) -> dict[str, Any]:
        return {
            "upgrade": self.upgrade,
            "checks": [c.as_json() for c in self.checks],
            "roll": [s.as_json() for s in self.steps],
            "concurrent": self.concurrent,
            "estimate_seconds": self.seconds,
            "red": len(self.red),
            "sandbox": self.sandbox,
        }


def minutes(seconds: int) -> str:
    """'about 12 min', '1 h 5 min'."""
    total = max(0, round(seconds / 60))
    return f"about {total // 60} h {total % 60} min" if total >= 60 else f"about {total} min"


def rehearse(
    *,
    environment: str,
    rolls: Iterable[str],
    running: Sequence[tuple[str, str]],
    grace: int,
    compute_min_healthy: int = 90,
    compute_max_healthy: int = 100,
    stacked: bool,
    sandbox: bool,
    target: str,
    held: Mapping[str, str],
    etcd: Any,
    files: Mapping[str, bytes],
    kubectl: str = "",
    api: Any = None,
    now: dt.datetime | None = None,
) -> Rehearsal:
    """The rehearsal of a plan: `rolls` the layers whose instances it replaces, `running`
    (layer, instance id) of what runs, `held` what the secrets bucket gives nodes now
    (versions.held), `etcd` its members' reports (etcdstatus.read, or None when no secure
    instance runs), `files` the PKI the plan uses, `api` the API server (see `cluster`)."""
    now = now or dt.datetime.now(dt.UTC)
    rolling = [layer for layer in roll.ORDER if layer in set(rolls)]
    control_plane = _tag(held.get("registry.k8s.io/kube-apiserver", ""))
    kubelets = [held["kubelet"].split(" ")[0]] if held.get("kubelet") else []
    seen: list[Check] = []
    if api is not None and control_plane:
        control_plane, kubelets, seen = _running(api, control_plane, kubelets)
    moves = bool(control_plane) and roll.version(control_plane) != roll.version(target)
    found = Rehearsal(upgrade=bool(rolling) or moves, sandbox=sandbox)
    found.checks += seen + roll.skew(control_plane, kubelets, target, kubectl)

    groups = []
    for layer, (min_healthy, layer_grace) in REFRESH.items():
        ids = tuple(i for lay, i in running if lay == layer)
        groups.append(
            roll.Group(
                layer,
                ids,
                compute_min_healthy if min_healthy is None else min_healthy,
                grace if layer_grace is None else layer_grace,
                compute_max_healthy if min_healthy is None else 100,
            )
        )
    found.steps = [s for s in roll.steps(groups, rolling, stacked=stacked) if s.batches]
    found.seconds = roll.duration(found.steps, concurrent=found.concurrent)

    secure = [i for lay, i in running if lay == "secure"]
    if "secure" in rolling or moves:
        found.checks += _etcd(etcd, environment, now, sandbox=sandbox)
    if "secure" in rolling and not sandbox:
        found.checks.append(roll.quorum(len(secure)))
    if found.upgrade:
        found.checks += _expiring(files, now, found.seconds)
    if api is not None and control_plane:
        found.checks += cluster(api, rolling=bool(rolling), target=target, current=control_plane)
    if not found.upgrade:
        # Nothing is replaced and no version moves: the checks inform, they stop nothing.
        found.checks = [
            Check(c.name, WARN, c.detail) if c.level == RED else c for c in found.checks
        ]
    return found


def running_versions(api: Any) -> tuple[list[str], list[str]]:
    """What runs, as the API server says: the versions of the API servers (the one answering
    /version, and each kube-apiserver static pod's image, so that one left behind by a roll
    is seen behind the load balancer) and of each Node's kubelet. Raises kubeapi.Unreachable."""
    servers = [str(api.json("/version").get("gitVersion", ""))]
    selector = urllib.parse.quote("component=kube-apiserver")
    pods = api.json(f"/api/v1/namespaces/kube-system/pods?labelSelector={selector}")
    for pod in pods.get("items") or []:
        for container in (pod.get("spec") or {}).get("containers") or []:
            if container.get("name") == "kube-apiserver":
                image = str(container.get("image", "")).split("@")[0]
                servers.append(image.rsplit(":", 1)[-1] if ":" in image else "")
    kubelets = [
        str(((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""))
        for node in api.json("/api/v1/nodes").get("items") or []
    ]
    return (
        [s for s in servers if roll.version(s)],
        [k for k in kubelets if roll.version(k)],
    )


def _running(
    api: Any, control_plane: str, kubelets: list[str]
) -> tuple[str, list[str], list[Check]]:
    """The control plane's and kubelets' versions the skew is judged from: the running ones
    (the oldest API server; every kubelet, and the version the bucket gives new nodes), or,
    when the API server cannot be asked, the bucket's, and a warning saying so."""
    from kubeplat.kubeapi import Unreachable

    try:
        if isinstance(api, Unreachable):
            raise api
        servers, nodes = running_versions(api)
    except Unreachable as exc:
        why = f"not read: {exc}; the skew is judged from the versions the bucket gives nodes"
        return control_plane, kubelets, [Check("running versions", WARN, why)]
    parsed = sorted({v for v in map(roll.version, servers) if v})
    oldest = roll.shown(parsed[0]) if parsed else control_plane
    seen = sorted({v for v in map(roll.version, nodes) if v})
    detail = (
        "API server(s) " + (", ".join(map(roll.shown, parsed)) or "not said")
        + f"; kubelets of {len(nodes)} node(s) "
        + (", ".join(map(roll.shown, seen)) or "none yet")
    )  # fmt: skip
    return (
        oldest,
        sorted(set(kubelets) | set(map(roll.shown, seen))),
        [Check("running versions", OK, detail)],
    )


def cluster(api: Any, *, rolling: bool, target: str, current: str) -> list[Check]:
    """What only the API server knows: PodDisruptionBudgets that would block a drain (when
    instances roll) and APIs removed by the target version that clients still use (when the
    version moves up). `api` is a kubeapi.ApiServer, or the kubeapi.Unreachable saying why
    there is none."""
    from kubeplat.kubeapi import Unreachable

    to, now = roll.version(target), roll.version(current)
    upgrading = to is not None and now is not None and to[:2] > now[:2]
    wanted = [name for name, on in (("disruption budgets", rolling),
                                    ("removed APIs", upgrading)) if on]  # fmt: skip
    if isinstance(api, Unreachable):
        return [Check(name, WARN, f"not checked: {api}") for name in wanted]
    found = []
    for name in wanted:
        try:
            found.append(
                _budgets(api) if name == "disruption budgets" else _removed(api, to or (0, 0, 0))
            )
        except Unreachable as exc:
            found.append(Check(name, WARN, f"not checked: {exc}"))
    return found


def _budgets(api: Any) -> Check:
    items = api.json("/apis/policy/v1/poddisruptionbudgets").get("items") or []
    blocked = []
    for item in items:
        meta, status = item.get("metadata", {}), item.get("status", {})
        if int(status.get("expectedPods", 0)) > 0 and int(status.get("disruptionsAllowed", 0)) < 1:
            blocked.append(
                f"{meta.get('namespace')}/{meta.get('name')} (healthy "
                f"{status.get('currentHealthy', 0)}, needs {status.get('desiredHealthy', 0)})"
            )
    if blocked:
        return Check(
            "disruption budgets",
            RED,
            "allowing no disruption now, so a drain of their pods' nodes waits for them: "
            + ", ".join(sorted(blocked)),
        )
    return Check("disruption budgets", OK, f"{len(items)}, each allows a disruption now")


# One sample of the API server's deprecated-API metric: the labels of a request it served.
_DEPRECATED = re.compile(r"^apiserver_requested_deprecated_apis\{([^}]*)\}\s+(\S+)", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _removed(api: Any, target: tuple[int, int, int]) -> Check:
    text = api.get("/metrics").decode(errors="replace")
    used = set()
    for labels, value in _DEPRECATED.findall(text):
        found = dict(_LABEL.findall(labels))
        removed = roll.version(found.get("removed_release", ""))
        if removed is None or removed[:2] > target[:2] or float(value) <= 0:
            continue
        group = found.get("group") or "core"
        used.add(
            f"{found.get('resource')} {group}/{found.get('version')} "
            f"(removed in {removed[0]}.{removed[1]})"
        )
    if used:
        return Check(
            "removed APIs",
            RED,
            f"clients still call APIs {target[0]}.{target[1]} no longer serves, since the API "
            "server started: " + ", ".join(sorted(used)) + "; move them to the current version",
        )
    return Check(
        "removed APIs",
        OK,
        f"no request to an API removed by {target[0]}.{target[1]} since the API server started",
    )


def _tag(reference: str) -> str:
    """ "v1.33.5@sha256:…" → "1.33.5"."""
    version = roll.version(reference)
    return roll.shown(version) if version else ""


def _etcd(status: Any, environment: str, now: dt.datetime, *, sandbox: bool) -> list[Check]:
    """etcd healthy with all its members, and a snapshot within the hour."""
    from kubeplat.etcdstatus import seconds_since

    backup = f"kubeplat etcd backup -e {environment}"
    if status is None or not status.reports:
        level = WARN if sandbox else RED
        why = (
            "the sandbox's instances run nothing"
            if sandbox
            else f"no member reports to the secrets bucket (kubeplat etcd status -e {environment})"
        )
        return [
            Check("etcd health", level, f"not known: {why}"),
            Check("etcd backup", level, f"not known: {why}"),
        ]
    found = []
    down = [r.instance_id for r in status.rows if r.role not in ("leader", "follower")]
    if status.quorum and not down and not status.stale:
        found.append(Check("etcd health", OK, f"{len(status.rows)} members healthy, quorum held"))
    else:
        problems = []
        if not status.quorum:
            problems.append("no quorum")
        if down:
            problems.append("not a healthy voting member: " + ", ".join(sorted(down)))
        if status.stale:
            problems.append("members whose instance is gone: " + ", ".join(status.stale))
        found.append(
            Check(
                "etcd health",
                RED,
                "; ".join(problems) + f" (kubeplat etcd status -e "
                f"{environment}); a roll would take another member out",
            )
        )
    if not status.latest_snapshot_time:
        found.append(Check("etcd backup", RED, f"no snapshot yet; take one: {backup}"))
    else:
        age = int(seconds_since(status.latest_snapshot_time, now))
        when = f"latest snapshot {age // 60} min old ({status.latest_snapshot})"
        if age > SNAPSHOT_MAX_AGE_S:
            found.append(
                Check("etcd backup", RED, f"{when}, older than an hour; take one: {backup}")
            )
        else:
            found.append(Check("etcd backup", OK, when))
    return found


def _expiring(files: Mapping[str, bytes], now: dt.datetime, seconds: int) -> list[Check]:
    """Certificates (and the bootstrap token) that expire before the roll could end."""
    from kubeplat import pki

    horizon = now + dt.timedelta(seconds=seconds) + EXPIRY_MARGIN
    soon = [r for r in pki.describe(files, now) if r.expires <= horizon]
    if not soon:
        return [Check("certificates", OK, "none expires during the roll (or the day after)")]
    names = ", ".join(f"{r.name} ({r.expires:%Y-%m-%d %H:%M} UTC)" for r in soon)
    return [
        Check(
            "certificates",
            RED,
            f"expiring before the roll could end: {names}; renew first (kubeplat certs renew)",
        )
    ]


def kubectl_version() -> str:
    """The operator's kubectl client version ("" without one)."""
    binary = shutil.which("kubectl")
    if not binary:
        return ""
    try:
        result = subprocess.run(
            [binary, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return str(json.loads(result.stdout)["clientVersion"]["gitVersion"])
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return ""


def lines(found: Rehearsal) -> list[tuple[str, str]]:
    """The rehearsal as (text, level) lines for the terminal."""
    shown = []
    for check in found.checks:
        mark = {OK: "ok", WARN: "warn", RED: "RED"}[check.level]
        shown.append((f"[{mark}] {check.name}: {check.detail}", check.level))
    if found.steps:
        how = "each layer at its own pace" if found.concurrent else "one layer after another"
        where = " as AWS would run it (the sandbox replaces no instance)" if found.sandbox else ""
        shown.append((f"roll{where}, {how}, {minutes(found.seconds)}:", WARN))
        for step in found.steps:
            batches = " → ".join("+".join(b) for b in step.batches)
            shown.append(
                (
                    f"  {step.layer}: {len(step.batches)} batch(es): {batches}; "
                    f"next batch once {step.gate}",
                    WARN,
                )
            )
    return shown
