"""How a roll goes: which layers, in which order, how many instances at a time, what must hold
before the next batch, how long it may take, and whether Kubernetes' version skew policy and
etcd's quorum allow it at all.

Pure decisions (no AWS, no clock), shared by the operator's rehearsal (`kubeplat plan`,
`kubeplat upgrade-check`) and by what runs on nodes; python3 only, like the rest of
`kubeplat.node`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# The order layers roll in: etcd (with the control plane when stacked) first, then a separate
# control plane, then the kubelets, so no kubelet is ever newer than the API server it joins.
ORDER = ("secure", "control-plane", "compute")

# Kubernetes' version skew policy (kubernetes.io/releases/version-skew-policy/).
KUBELET_OLDER = 3  # a kubelet may be up to three minor versions older than the API server
KUBECTL_SKEW = 1  # kubectl: one minor version older or newer than the API server

OK, WARN, RED = "ok", "warn", "red"

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of "1.33.5", "v1.33.5" or "v1.33.5@sha256:…"; None otherwise."""
    found = _VERSION.match(text.strip()) if text else None
    if not found:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def shown(v: tuple[int, int, int]) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"


@dataclass(frozen=True)
class Check:
    """One item of a rehearsal: what, how it stands (ok, warn, red) and why."""

    name: str
    level: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"check": self.name, "level": self.level, "detail": self.detail}


@dataclass(frozen=True)
class Group:
    """One autoscaling group as it runs: its in-service instances and how it is replaced."""

    layer: str
    instances: tuple[str, ...]
    min_healthy: int  # the instance refresh's minimum healthy percentage
    grace: int  # seconds a new instance is given to become healthy (the group's grace period)
    max_healthy: int = 100  # its maximum: above 100, new instances are launched first (surge)


@dataclass(frozen=True)
class Step:
    """One layer's part of a roll: its batches in order, and the gate between two batches."""

    layer: str
    batches: tuple[tuple[str, ...], ...]
    gate: str
    seconds: int

    def as_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "batches": [list(b) for b in self.batches],
            "gate": self.gate,
            "seconds": self.seconds,
        }


# What a new instance must have done before the next batch goes (and, on AWS, before the group
# counts it in service).
GATES = {
    "secure": "its etcd member has joined and been promoted, every member answers endpoint "
    "health{api}",
    "control-plane": "its node reports Ready and its API server answers /readyz (the roll "
    "controller admits it) and the one it replaces is drained",
    "compute": "its node reports Ready (the roll controller admits it) and the one it replaces "
    "is drained",
}
# Seconds to take an instance out of service and terminate it, beside the grace period a new
# one is given to become healthy: an estimate, said as one.
TERMINATE_S = 60


def batch_size(count: int, min_healthy: int, max_healthy: int = 100) -> int:
    """Instances an instance refresh replaces at once: as many as keep between `min_healthy`
    and `max_healthy` percent of the group running (above 100: the new ones are launched
    before the old ones go), and at least one (AWS: 100 and 100 mean one at a time)."""
    if count <= 0:
        return 0
    return max(1, math.floor(count * max_healthy / 100) - math.ceil(count * min_healthy / 100))


def steps(groups: Iterable[Group], rolling: Iterable[str], *, stacked: bool) -> list[Step]:
    """The roll of the `rolling` layers, in ORDER: each layer's instances in batches (sorted by
    instance id, as the rehearsal shows them; AWS picks its own order within a layer)."""
    wanted = set(rolling)
    found = []
    for group in sorted(groups, key=lambda g: ORDER.index(g.layer) if g.layer in ORDER else 9):
        if group.layer not in wanted:
            continue
        ids = tuple(sorted(group.instances))
        size = batch_size(len(ids), group.min_healthy, group.max_healthy)
        batches = tuple(ids[i : i + size] for i in range(0, len(ids), size)) if size else ()
        gate = GATES.get(group.layer, GATES["compute"])
        gate = gate.format(api=" and its API server answers /readyz" if stacked else "")
        seconds = len(batches) * (group.grace + TERMINATE_S)
        found.append(Step(group.layer, batches, gate, seconds))
    return found


def duration(found: Sequence[Step], *, concurrent: bool) -> int:
    """Seconds the whole roll may take: the layers one after another, or (`concurrent`) the
    slowest of them."""
    if not found:
        return 0
    return max(s.seconds for s in found) if concurrent else sum(s.seconds for s in found)


def quorum(members: int, batch: int = 1) -> Check:
    """Whether etcd keeps its quorum while `batch` of its `members` are replaced at once (an
    instance refresh takes the old instance out before the new one joins)."""
    left = members - batch
    needed = members // 2 + 1
    if members <= 0:
        return Check("etcd quorum", OK, "no etcd member runs yet: nothing to keep")
    if left >= needed:
        return Check(
            "etcd quorum",
            OK,
            f"{left} of {members} members stay while one is replaced (quorum is {needed})",
        )
    return Check(
        "etcd quorum",
        RED,
        f"{members} member{'s' if members != 1 else ''}: replacing one leaves {left}, below "
        f"quorum ({needed}); etcd stops until the new member joins, and a lost member's data "
        "survives only in the latest snapshot. Run 3 or 5 members (secure_asg_min) first",
    )


def skew(
    control_plane: str,
    kubelets: Sequence[str],
    target: str,
    kubectl: str = "",
) -> list[Check]:
    """The version skew of an upgrade from what runs (`control_plane`: the API server's version,
    "" for a new cluster; `kubelets`: the versions kubelets run) to `target`, and of the
    operator's `kubectl` against it."""
    to = version(target)
    if to is None:
        return [Check("version skew", RED, f"target Kubernetes version {target!r} is not one")]
    found = []
    now = version(control_plane)
    if now is None:
        found.append(Check("version skew", OK, f"new control plane: {shown(to)}"))
    elif now == to:
        found.append(Check("version skew", OK, f"control plane stays at {shown(to)}"))
    elif to[:2] < now[:2]:
        found.append(
            Check(
                "version skew",
                RED,
                f"control plane {shown(now)} → {shown(to)} is a downgrade of a minor version, "
                "which Kubernetes does not support (etcd holds objects the newer API server "
                f"wrote); set kubernetes_version back to {now[0]}.{now[1]}.x",
            )
        )
    elif to[:2] > (now[0], now[1] + 1) and to[0] == now[0]:
        found.append(
            Check(
                "version skew",
                RED,
                f"control plane {shown(now)} → {shown(to)} skips a minor version; upgrade one "
                f"minor version at a time: {now[0]}.{now[1] + 1} first",
            )
        )
    elif to[0] != now[0]:
        found.append(
            Check("version skew", RED, f"control plane {shown(now)} → {shown(to)}: a new major")
        )
    elif to < now:
        found.append(
            Check(
                "version skew",
                WARN,
                f"control plane {shown(now)} → {shown(to)}: a patch "
                "downgrade (allowed; is it meant?)",
            )
        )
    else:
        found.append(
            Check("version skew", OK, f"control plane {shown(now)} → {shown(to)}: one step")
        )
    for text in sorted(set(kubelets)):
        kubelet = version(text)
        if kubelet is None:
            continue
        if kubelet[:2] > to[:2]:
            found.append(
                Check(
                    "kubelet skew",
                    RED,
                    f"kubelets run {shown(kubelet)}, newer than the API "
                    f"server {shown(to)} would be (a kubelet may never be newer)",
                )
            )
        elif to[1] - kubelet[1] > KUBELET_OLDER or to[0] != kubelet[0]:
            found.append(
                Check(
                    "kubelet skew",
                    RED,
                    f"kubelets run {shown(kubelet)}, more than "
                    f"{KUBELET_OLDER} minor versions older than {shown(to)} while they roll",
                )
            )
        elif kubelet != to:
            found.append(
                Check(
                    "kubelet skew",
                    OK,
                    f"kubelets {shown(kubelet)} → {shown(to)}, after the "
                    "control plane (within the supported skew throughout)",
                )
            )
        else:
            found.append(Check("kubelet skew", OK, f"kubelets run {shown(to)}, the target"))
    mine = version(kubectl)
    if mine is not None:
        if abs(mine[1] - to[1]) > KUBECTL_SKEW or mine[0] != to[0]:
            found.append(
                Check(
                    "kubectl skew",
                    WARN,
                    f"your kubectl {shown(mine)} is more than "
                    f"{KUBECTL_SKEW} minor version from {shown(to)}: use a kubectl of "
                    f"{to[0]}.{to[1]}",
                )
            )
        else:
            found.append(Check("kubectl skew", OK, f"your kubectl {shown(mine)}"))
    return found
