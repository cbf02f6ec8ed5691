"""The roll controller: `kubeplat-node roller`, run on the nodes that run the API server.

It keeps an environment's rolls ordered and gated from inside the cluster, so that a roll goes
on when the CI job or laptop that started it has gone:

- Order. The secure layer rolls first: Terraform starts its instance refresh when its launch
  template changes, and each new member holds the refresh (its launch hook) until it has joined
  a healthy etcd. A later layer (control plane when separate, then compute) starts its own
  refresh only when every earlier layer runs its group's launch template and no refresh of an
  earlier layer is under way, and every earlier layer's last refresh succeeded. A failed
  refresh is not started again by itself for the same template: the operator resumes it
  (`kubeplat roll`), or a new template starts a new one; until then later layers wait.
- Drain. An instance leaving a group (a refresh, a scale-in, `kubeplat roll`) waits in
  Terminating:Wait (the group's `kubeplat-drain` hook) while its node is cordoned and its pods
  evicted through the Eviction API, which honours PodDisruptionBudgets; after the drain timeout
  the instance goes anyway and the controller says which pods were left and why.
- Ready. An instance entering the compute group waits in Pending:Wait (`kubeplat-node-ready`)
  until its Node reports Ready; one that never does is abandoned by the hook's timeout, which
  fails the refresh rather than replacing a good node with a broken one. An instance entering
  a control-plane layer of its own also waits until its API server answers `/readyz`, as its
  node agent reports it (`status/control-plane/INSTANCE/manifests.json`, `ready`): a kubelet
  can be Ready beside an API server that is not. (A stacked secure member's launch hook is its
  etcd watch's, which asks its API server itself.)

Every decision is taken again from AWS and the API server on each pass; the controller keeps
nothing of its own. When a drain began is written on the Node itself (the
`kubeplat.io/drain-started` annotation, with the instance it is for), so a restarted
controller, or a second one on another control-plane node, goes on with the same timeout
rather than starting it again.
Python 3.9 compatible (node images ship 3.9 to 3.12).
"""

from __future__ import annotations

import functools
import logging
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("kubeplat-roller")

DRAIN_HOOK = "kubeplat-drain"
READY_HOOK = "kubeplat-node-ready"
ORDER = ("secure", "control-plane", "compute")
# The layers whose refresh Terraform starts itself (the first to roll needs no one to wait for).
STARTED_BY_TERRAFORM = ("secure",)
# `kubeplat roll` asks by writing ENV/rolls/LAYER.json in the secrets bucket; the object's
# LastModified (S3's clock, like the refreshes' start times) is when. Not a tag of the group:
# Terraform manages the groups' tags and would take it away on the next apply.
ROLLS = "rolls/"
MIN_HEALTHY_TAG = "kubeplat:min-healthy"  # the refresh's minimum healthy percentage
MAX_HEALTHY_TAG = "kubeplat:max-healthy"  # its maximum (above 100: launch new ones first)
WARMUP_TAG = "kubeplat:instance-warmup"  # seconds
DRAIN_TAG = "kubeplat:drain-timeout"  # seconds a leaving node is drained (node_drain_timeout)
# Layers of their own whose nodes run API servers: a new one must answer /readyz too.
API_LAYERS = frozenset(("control-plane",))
ACTIVE = frozenset(("Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"))
MIRROR = "kubernetes.io/config.mirror"
# On a Node being drained: "INSTANCE-ID RFC3339-UTC", when its drain began. The instance is in
# it because a Node's name (ip-10-0-1-5) may come back with a new instance at the same address.
DRAIN_STARTED = "kubeplat.io/drain-started"


@dataclass
class Group:
    """One autoscaling group of the environment, as the controller needs it."""

    name: str
    layer: str
    template: tuple[str, str]  # (launch template ID, version) the group launches
    instances: list[dict[str, Any]]
    tags: dict[str, str]
    hooks: frozenset[str] = frozenset()
    asked: datetime | None = None  # when `kubeplat roll` last asked to replace the layer

    def outdated(self) -> list[str]:
        """Instances launched from another template or version than the group's."""
        return sorted(
            i["InstanceId"]
            for i in self.instances
            if i.get("LifecycleState") not in ("Terminating", "Terminating:Wait", "Terminated")
            and _template_of(i) != self.template
        )

    def waiting(self, state: str) -> list[str]:
        return sorted(i["InstanceId"] for i in self.instances if i.get("LifecycleState") == state)


def _template_of(instance: dict[str, Any]) -> tuple[str, str]:
    spec = instance.get("LaunchTemplate") or {}
    return (str(spec.get("LaunchTemplateId", "")), str(spec.get("Version", "")))


@dataclass
class Refresh:
    """The newest instance refresh of a group (DescribeInstanceRefreshes)."""

    status: str
    started: datetime | None
    reason: str = ""


@dataclass
class Start:
    """A refresh the controller decided to start."""

    group: str
    skip_matching: bool
    why: str


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def decide_refreshes(
    groups: list[Group],
    newest: dict[str, Refresh | None],
    template_made: Callable[[Group], datetime | None],
) -> tuple[list[Start], list[str]]:
    """Which group's refresh to start now (at most one), and why the others wait.

    `newest`: each group's newest instance refresh (None: never refreshed); `template_made`:
    when the group's launch template version was created (a failed refresh is started again
    only for a newer template, or when `kubeplat roll` asked after the failure)."""
    said: list[str] = []
    ranked = sorted(groups, key=lambda g: ORDER.index(g.layer) if g.layer in ORDER else len(ORDER))
    for index, group in enumerate(ranked):
        refresh = newest.get(group.name)
        if refresh is not None and refresh.status in ACTIVE:
            said.append(
                f"{group.name}: instance refresh {refresh.status.lower()}; later layers wait"
            )
            return [], said
        asked = group.asked
        last = refresh.started if refresh is not None else None
        if asked is not None and (last is None or asked > last):
            return [
                Start(group.name, False, f"a roll was asked for at {asked:%Y-%m-%d %H:%M} UTC")
            ], said
        stale = group.outdated()
        if not stale:
            if refresh is not None and refresh.status != "Successful" and index + 1 < len(ranked):
                # Every instance runs the group's template, yet its last refresh did not end
                # well (a `kubeplat roll` of the layer, which replaces instances on the same
                # template, failed or was cancelled): what it left is not known to be healthy.
                said.append(
                    f"{group.name}: its last instance refresh ended {refresh.status.lower()}"
                    f"{': ' + refresh.reason if refresh.reason else ''}; later layers wait until "
                    "a roll of this layer succeeds (resume with kubeplat roll)"
                )
                return [], said
            continue
        if group.layer in STARTED_BY_TERRAFORM:
            said.append(
                f"{group.name}: {len(stale)} instance(s) on an older launch template and no "
                "refresh under way (Terraform starts this layer's; `kubeplat roll` resumes it); "
                "later layers wait"
            )
            return [], said
        if refresh is not None and refresh.status not in ("Successful",):
            made = template_made(group)
            if last is not None and (made is None or made <= last):
                said.append(
                    f"{group.name}: its last instance refresh ended {refresh.status.lower()}"
                    f"{': ' + refresh.reason if refresh.reason else ''}; not started again for the "
                    "same launch template (resume with kubeplat roll); later layers wait"
                )
                return [], said
        return [
            Start(group.name, True, f"{len(stale)} instance(s) on an older launch template")
        ], said
    return [], said


# -- draining ---------------------------------------------------------------------------------


def evictable(pod: dict[str, Any]) -> bool:
    """Whether a drain evicts this pod (kubectl drain's rules, with --ignore-daemonsets and
    --delete-emptydir-data): not a static (mirror) pod, not a DaemonSet's, not finished."""
    meta = pod.get("metadata") or {}
    if MIRROR in (meta.get("annotations") or {}):
        return False
    if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _name(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass
class Drained:
    done: bool
    detail: str
    evicted: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def node_of(api: Any, instance_id: str) -> str | None:
    """The name of the Node whose provider ID names this instance (aws:///zone/i-…)."""
    for node in api.call("GET", "/api/v1/nodes").get("items") or []:
        provider = str((node.get("spec") or {}).get("providerID", ""))
        if provider.rstrip("/").rsplit("/", 1)[-1] == instance_id:
            return str(node["metadata"]["name"])
    return None


def drain_began(found: dict[str, Any], instance: str) -> float | None:
    """When the drain of `instance` began (seconds since the epoch), as its Node says; None
    when no drain of this instance is recorded there."""
    annotations = (found.get("metadata") or {}).get("annotations") or {}
    recorded, _, when = str(annotations.get(DRAIN_STARTED, "")).partition(" ")
    began = _time(when) if recorded == instance else None
    return began.timestamp() if began else None


def drain_step(api: Any, node: str, instance: str, now: float, timeout: float) -> Drained:
    """One pass of draining `node` (the Node of `instance`): cordon it and record when its drain
    began, evict what is left; done when nothing evictable is left, or when `timeout` seconds
    have passed since the drain began (then saying what was left and why)."""
    found = api.call("GET", f"/api/v1/nodes/{urllib.parse.quote(node)}")
    began = drain_began(found, instance)
    patch: dict[str, Any] = {}
    if not (found.get("spec") or {}).get("unschedulable"):
        patch["spec"] = {"unschedulable": True}
    if began is None:
        began = now
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch["metadata"] = {"annotations": {DRAIN_STARTED: f"{instance} {stamp}"}}
    if patch:
        api.call(
            "PATCH",
            f"/api/v1/nodes/{urllib.parse.quote(node)}",
            patch,
            content_type="application/strategic-merge-patch+json",
        )
    out_of_time = now - began >= timeout
    selector = urllib.parse.quote(f"spec.nodeName={node}")
    pods = api.call("GET", f"/api/v1/pods?fieldSelector={selector}").get("items") or []
    left = [p for p in pods if evictable(p)]
    if not left:
        return Drained(True, f"{node} drained")
    result = Drained(False, "")
    for pod in left:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            continue  # evicted already, shutting down
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/eviction"
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        }
        try:
            api.call("POST", path, body)
            result.evicted.append(_name(pod))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                continue  # gone meanwhile
            if exc.code == 429:  # a PodDisruptionBudget allows no disruption now
                result.blocked.append(_name(pod))
                continue
            raise
    if out_of_time:
        blocked = f" ({len(result.blocked)} held by a disruption budget)" if result.blocked else ""
        result.done = True
        result.detail = (
            f"{node}: drain timed out with {len(left)} pod(s) left{blocked}: "
            + ", ".join(sorted(_name(p) for p in left))
            + "; the instance goes anyway"
        )
        return result
    result.detail = f"{node}: {len(left)} pod(s) to go"
    return result


def node_ready(api: Any, instance_id: str) -> bool:
    name = node_of(api, instance_id)
    if name is None:
        return False
    node = api.call("GET", f"/api/v1/nodes/{urllib.parse.quote(name)}")
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


# -- one pass ---------------------------------------------------------------------------------


class Controller:
    """One environment's controller; `pass_once` does what is due and says it."""

    def __init__(
        self,
        autoscaling: Any,
        ec2: Any,
        api: Callable[[], Any],
        environment: str,
        drain_timeout: float,
        clock: Callable[[], float] = time.time,  # wall clock: drains' starts are shared
        reports: Callable[[str, str], dict[str, Any] | None] = lambda layer, instance: None,
        requests: Callable[[], dict[str, datetime]] = dict,
    ) -> None:
        self.autoscaling, self.ec2, self.api = autoscaling, ec2, api
        self.reports = reports  # (layer, instance) → its agent's manifests report, or None
        self.requests = requests  # layer → when `kubeplat roll` last asked (roll_requests)
        self.environment, self.drain_timeout, self.clock = environment, drain_timeout, clock

    def groups(self) -> list[Group]:
        found = []
        asked = self.requests()
        pages = self.autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
            Filters=[{"Name": "tag:Environment", "Values": [self.environment]}]
        )
        for page in pages:
            for item in page["AutoScalingGroups"]:
                tags = {t["Key"]: t["Value"] for t in item.get("Tags") or []}
                spec = item.get("LaunchTemplate") or {}
                instances = list(item.get("Instances") or [])
                # Hooks matter only to an instance in a lifecycle wait: asked of AWS only then,
                # not on every pass of every group.
                waits = any(str(i.get("LifecycleState", "")).endswith(":Wait") for i in instances)
                hooks = (
                    self.autoscaling.describe_lifecycle_hooks(
                        AutoScalingGroupName=item["AutoScalingGroupName"]
                    ).get("LifecycleHooks", [])
                    if waits
                    else []
                )
                found.append(
                    Group(
                        item["AutoScalingGroupName"],
                        tags.get("Layer", ""),
                        (str(spec.get("LaunchTemplateId", "")), str(spec.get("Version", ""))),
                        instances,
                        tags,
                        frozenset(h["LifecycleHookName"] for h in hooks),
                        asked.get(tags.get("Layer", "")),
                    )
                )
        return found

    def newest(self, group: Group) -> Refresh | None:
        try:
            found = self.autoscaling.describe_instance_refreshes(
                AutoScalingGroupName=group.name, MaxRecords=1
            ).get("InstanceRefreshes", [])
        except Exception as exc:  # the journal says which call of the pass failed
            raise RuntimeError(f"reading {group.name}'s instance refreshes: {exc}") from exc
        if not found:
            return None
        item = found[0]
        return Refresh(
            str(item.get("Status", "")), _time(item.get("StartTime")), item.get("StatusReason", "")
        )

    def template_made(self, group: Group) -> datetime | None:
        template, version = group.template
        versions = self.ec2.describe_launch_template_versions(
            LaunchTemplateId=template, Versions=[version]
        ).get("LaunchTemplateVersions", [])
        return _time(versions[0].get("CreateTime")) if versions else None

    def complete(self, group: Group, hook: str, instance: str, result: str) -> None:
        try:
            self.autoscaling.complete_lifecycle_action(
                LifecycleHookName=hook,
                AutoScalingGroupName=group.name,
                InstanceId=instance,
                LifecycleActionResult=result,
            )
        except Exception as exc:  # no action waits any more (another controller was first)
            if getattr(exc, "response", {}).get("Error", {}).get("Code") != "ValidationError":
                raise

    def pass_once(self) -> list[str]:
        said: list[str] = []
        groups = self.groups()
        api = None
        for group in groups:
            leaving = group.waiting("Terminating:Wait") if DRAIN_HOOK in group.hooks else []
            entering = group.waiting("Pending:Wait") if READY_HOOK in group.hooks else []
            if (leaving or entering) and api is None:
                api = self.api()
            for instance in leaving:
                timeout = float(group.tags.get(DRAIN_TAG) or self.drain_timeout)
                node = node_of(api, instance)
                if node is None:
                    outcome = Drained(True, f"{instance}: no node of its own to drain")
                else:
                    outcome = drain_step(api, node, instance, self.clock(), timeout)
                    said += [f"{node}: evicted {name}" for name in outcome.evicted]
                    said += [
                        f"{node}: eviction of {name} refused by a PodDisruptionBudget; trying again"
                        for name in outcome.blocked
                        if not outcome.done
                    ]
                said.append(outcome.detail)
                if outcome.done:
                    self.complete(group, DRAIN_HOOK, instance, "CONTINUE")
                    said.append(f"{instance}: leaves {group.name} ({DRAIN_HOOK} completed)")
            for instance in entering:
                if not node_ready(api, instance):
                    continue
                if group.layer in API_LAYERS and not self.api_ready(group.layer, instance):
                    said.append(
                        f"{instance}: its node is Ready; waiting for its API server's /readyz"
                    )
                    continue
                self.complete(group, READY_HOOK, instance, "CONTINUE")
                said.append(f"{instance}: its node is Ready; in service in {group.name}")
        starts, waits = decide_refreshes(
            groups, {g.name: self.newest(g) for g in groups}, self.template_made
        )
        said += waits
        by_name = {g.name: g for g in groups}
        for start in starts:
            self.start(by_name[start.group], start)
            said.append(f"{start.group}: instance refresh started ({start.why})")
        return said

    def api_ready(self, layer: str, instance: str) -> bool:
        """Whether the instance's own agent last reported its API server answering /readyz."""
        report = self.reports(layer, instance) or {}
        return report.get("ready") is True

    def start(self, group: Group, start: Start) -> None:
        preferences: dict[str, Any] = {
            "MinHealthyPercentage": int(group.tags.get(MIN_HEALTHY_TAG, "90")),
            "SkipMatching": start.skip_matching,
        }
        if group.tags.get(MAX_HEALTHY_TAG):
            preferences["MaxHealthyPercentage"] = int(group.tags[MAX_HEALTHY_TAG])
        if group.tags.get(WARMUP_TAG):
            preferences["InstanceWarmup"] = int(group.tags[WARMUP_TAG])
        try:
            self.autoscaling.start_instance_refresh(
                AutoScalingGroupName=group.name, Strategy="Rolling", Preferences=preferences
            )
        except Exception as exc:  # another controller started it first
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code != "InstanceRefreshInProgress":
                raise


def roll_requests(s3: Any, bucket: str, environment: str) -> dict[str, datetime]:
    """Layer → when `kubeplat roll` last asked for it: the objects under ENV/rolls/, by their
    LastModified (a listing: the node role reads none of them, and needs no key to decrypt)."""
    found: dict[str, datetime] = {}
    prefix = f"{environment}/{ROLLS}"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents") or []:
            layer = item["Key"][len(prefix) :].rsplit(".json", 1)[0]
            when = _time(item.get("LastModified"))
            if layer and "/" not in layer and when is not None:
                found[layer] = when
    return found


def main(argv: list[str] | None = None) -> int:
    from . import aws
    from .approver import Api
    from .passes import arguments, forever, parse

    parser = arguments(
        "kubeplat-node roller",
        "Order an environment's instance refreshes and drain leaving nodes.",
        interval=15.0,
    )
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument(
        "--bucket",
        default="",
        help="the secrets bucket: roll requests, and control-plane nodes' /readyz reports",
    )
    args = parse(parser, argv)

    made: list[Controller] = []

    def do_pass() -> list[str]:
        if not made:  # the instance role's credentials may take a while at boot
            from .health import Reporter

            region = args.region or aws.Identity.read().region
            reader = aws.Identity("", region, "", "")  # reads other nodes' reports, writes none
            readers: dict[str, Reporter] = {}
            s3 = aws.client("s3", region)

            def reports(layer: str, instance: str) -> dict[str, Any] | None:
                if not args.bucket:
                    return None
                if layer not in readers:
                    readers[layer] = Reporter(args.bucket, args.environment, layer, reader)
                return readers[layer].read(instance, "manifests")

            made.append(
                Controller(
                    aws.client("autoscaling", region),
                    aws.client("ec2", region),
                    # Certificates are read each pass: the agent renews them in place.
                    functools.partial(Api, args.api, args.ca, args.cert, args.key),
                    args.environment,
                    args.drain_timeout,
                    reports=reports,
                    requests=lambda: (
                        roll_requests(s3, args.bucket, args.environment) if args.bucket else {}
                    ),
                )
            )
        return made[0].pass_once()

    return forever(do_pass, log, args.interval, args.once)
