"""The roll controller (`kubeplat-node roller`, kubeplat/node/roller.py): the order of the
layers' instance refreshes, the drain of a leaving node and the Ready gate of an entering one.

Two stand-ins, and why:
- The Kubernetes API server is a FAKE on loopback (no kubelet or API server runs here): it
  speaks TLS with the environment's own API server certificate, requires the controller's
  client certificate, and serves Nodes, Pods and the Eviction API with a PodDisruptionBudget's
  rule (an eviction that would take a budget's healthy pods below its minimum is refused with
  429, as the API server does). It records every eviction and cordon.
- Auto Scaling is a RECORDING stand-in: the emulator (moto) has no lifecycle waits,
  CompleteLifecycleAction or instance refreshes. It answers the calls the controller makes, with
  AWS's shapes, from the state the test sets, and records the calls that change something.
The controller's own code (kubeplat.node.approver.Api over real TLS included) runs unchanged.
"""

from __future__ import annotations

import http.server
import json
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kubeplat.node import roller
from kubeplat.node.approver import Api

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TEMPLATES = {"secure": "lt-secure", "control-plane": "lt-control-plane", "compute": "lt-compute"}


class FakeApi(http.server.ThreadingHTTPServer):
    nodes: dict[str, dict[str, Any]]
    pods: dict[str, dict[str, Any]]  # "namespace/name" → pod
    budgets: dict[str, int]  # app label → pods of it that must stay (minAvailable)
    evicted: list[str]
    refused: list[str]
    patched: list[tuple[str, Any, str]]


def pod(namespace: str, name: str, node: str, app: str = "", owner: str = "ReplicaSet",
        phase: str = "Running", mirror: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"namespace": namespace, "name": name, "labels": {"app": app},
                            "ownerReferences": [{"kind": owner, "name": "x"}]}  # fmt: skip
    if mirror:
        meta["annotations"] = {roller.MIRROR: "abc"}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


def node(name: str, instance: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"providerID": f"aws:///eu-west-1a/{instance}"},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeApi

    def answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/api/v1/nodes":
            return self.answer(200, {"items": list(self.server.nodes.values())})
        if url.path.startswith("/api/v1/nodes/"):
            found = self.server.nodes.get(url.path.rsplit("/", 1)[1])
            return self.answer(200 if found else 404, found or {})
        if url.path == "/api/v1/pods":
            (selector,) = urllib.parse.parse_qs(url.query)["fieldSelector"]
            where = selector.removeprefix("spec.nodeName=")
            items = [p for p in self.server.pods.values() if p["spec"]["nodeName"] == where]
            return self.answer(200, {"items": items})
        self.answer(404, {})

    def do_PATCH(self) -> None:
        name = self.path.rsplit("/", 1)[1]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.patched.append((name, body, self.headers["Content-Type"]))
        found = self.server.nodes[name]  # a strategic merge of the two fields the roller sets
        found["spec"].update(body.get("spec") or {})
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        found["metadata"].setdefault("annotations", {}).update(annotations)
        self.answer(200, self.server.nodes[name])

    def do_POST(self) -> None:
        parts = self.path.split("/")  # /api/v1/namespaces/NS/pods/NAME/eviction
        key = f"{parts[4]}/{parts[6]}"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["kind"] == "Eviction" and body["apiVersion"] == "policy/v1"
        target = self.server.pods.get(key)
        if target is None:
            return self.answer(404, {})
        app = target["metadata"]["labels"]["app"]
        if app in self.server.budgets:
            healthy = [p for p in self.server.pods.values()
                       if p["metadata"]["labels"]["app"] == app and p["status"]["phase"] == "Running"]  # fmt: skip
            if len(healthy) - 1 < self.server.budgets[app]:
                self.server.refused.append(key)
                return self.answer(429, {"reason": "TooManyRequests",
                                         "message": "Cannot evict pod as it would violate the pod's disruption budget."})  # fmt: skip
        self.server.evicted.append(key)
        del self.server.pods[key]
        self.answer(201, {})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubeplat import config, pki

    env = config.load(str(REPO / "environments" / "example.tfvars"))
    files = dict(pki.ensure(env, {}).files)
    folder = tmp_path_factory.mktemp("pki")
    for name in ("apiserver.crt", "apiserver.key", "ca.crt",
                 "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key"):  # fmt: skip
        (folder / name).write_bytes(files[name])
    return folder


@pytest.fixture
def fake_api(pki_dir: Path) -> Iterator[tuple[FakeApi, Any]]:
    from tests.tls_standin import serving

    server = FakeApi(("127.0.0.1", 0), Handler)
    server.nodes, server.pods, server.budgets = {}, {}, {}
    server.evicted, server.refused, server.patched = [], [], []
    with serving(server, pki_dir):
        url = f"https://127.0.0.1:{server.server_address[1]}"
        yield (
            server,
            lambda: Api(
                url,
                str(pki_dir / "ca.crt"),
                str(pki_dir / "apiserver-kubelet-client.crt"),
                str(pki_dir / "apiserver-kubelet-client.key"),
            ),
        )


class Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class Paginator:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        return self.pages


class AutoScaling:
    """A RECORDING stand-in for Auto Scaling (see the module's docstring)."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.hooks: dict[str, list[str]] = {}
        self.refreshes: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def group(self, layer: str, version: str, instances: dict[str, tuple[str, str]],
              hooks: tuple[str, ...] = (roller.DRAIN_HOOK,), **tags: str) -> None:  # fmt: skip
        """instances: id → (lifecycle state, template version it launched from)."""
        name = f"dev-kube-{layer}"
        template = {"LaunchTemplateId": TEMPLATES[layer], "Version": version}
        self.groups[name] = {
            "AutoScalingGroupName": name,
            "LaunchTemplate": template,
            "Tags": [{"Key": "Layer", "Value": layer}, {"Key": "Environment", "Value": "dev"}]
            + [{"Key": k.replace("_", ":", 1).replace("_", "-"), "Value": v} for k, v in tags.items()],
            "Instances": [
                {"InstanceId": i, "LifecycleState": state,
                 "LaunchTemplate": {**template, "Version": launched}}
                for i, (state, launched) in instances.items()
            ],
        }  # fmt: skip
        self.hooks[name] = list(hooks)
        self.refreshes.setdefault(name, [])

    def get_paginator(self, name: str) -> Paginator:
        assert name == "describe_auto_scaling_groups"
        return Paginator([{"AutoScalingGroups": list(self.groups.values())}])

    def describe_lifecycle_hooks(self, AutoScalingGroupName: str) -> dict[str, Any]:
        return {
            "LifecycleHooks": [{"LifecycleHookName": h} for h in self.hooks[AutoScalingGroupName]]
        }

    def describe_instance_refreshes(
        self, AutoScalingGroupName: str, MaxRecords: int
    ) -> dict[str, Any]:
        return {"InstanceRefreshes": self.refreshes[AutoScalingGroupName][:MaxRecords]}

    def complete_lifecycle_action(self, **kwargs: Any) -> None:
        group = self.groups[kwargs["AutoScalingGroupName"]]
        waiting = [i for i in group["Instances"] if i["InstanceId"] == kwargs["InstanceId"]
                   and i["LifecycleState"].endswith(":Wait")]  # fmt: skip
        if not waiting:
            raise Refused("ValidationError")
        self.calls.append(("complete_lifecycle_action", kwargs))

    def start_instance_refresh(self, **kwargs: Any) -> None:
        name = kwargs["AutoScalingGroupName"]
        if self.refreshes[name] and self.refreshes[name][0]["Status"] in roller.ACTIVE:
            raise Refused("InstanceRefreshInProgress")
        self.calls.append(("start_instance_refresh", kwargs))
        self.refreshes[name].insert(0, {"Status": "Pending", "StartTime": NOW})


class Ec2:
    """Launch template versions' creation times (a RECORDING stand-in, like AutoScaling)."""

    def __init__(self) -> None:
        self.made: dict[tuple[str, str], datetime] = {}

    def describe_launch_template_versions(
        self, LaunchTemplateId: str, Versions: list[str]
    ) -> dict[str, Any]:
        made = self.made.get((LaunchTemplateId, Versions[0]), NOW - timedelta(days=1))
        return {"LaunchTemplateVersions": [{"CreateTime": made}]}


def controller(
    asg: AutoScaling, api: Any, ec2: Ec2 | None = None, **kwargs: Any
) -> roller.Controller:
    return roller.Controller(
        asg, ec2 or Ec2(), api, "dev", kwargs.pop("drain_timeout", 600), **kwargs
    )


def started(asg: AutoScaling) -> list[tuple[str, bool, int, int | None]]:
    return [
        (c["AutoScalingGroupName"], c["Preferences"]["SkipMatching"],
         c["Preferences"]["MinHealthyPercentage"], c["Preferences"].get("MaxHealthyPercentage"))
        for name, c in asg.calls if name == "start_instance_refresh"
    ]  # fmt: skip


def completed(asg: AutoScaling) -> list[tuple[str, str, str]]:
    return [
        (c["InstanceId"], c["LifecycleHookName"], c["LifecycleActionResult"])
        for name, c in asg.calls if name == "complete_lifecycle_action"
    ]  # fmt: skip


# -- order ------------------------------------------------------------------------------------


def test_compute_rolls_only_after_the_secure_layer_runs_its_new_template(fake_api: Any) -> None:
    _server, api = fake_api
    asg = AutoScaling()
    # Terraform changed both templates; its refresh of the secure layer is under way.
    asg.group("secure", "2", {"i-s0": ("InService", "2"), "i-s1": ("InService", "1"),
                              "i-s2": ("InService", "1")})  # fmt: skip
    asg.group("compute", "5", {"i-c0": ("InService", "4"), "i-c1": ("InService", "4")},
              kubeplat_min_healthy="50", kubeplat_max_healthy="150")  # fmt: skip
    asg.refreshes["dev-kube-secure"] = [{"Status": "InProgress", "StartTime": NOW}]
    lines = controller(asg, api).pass_once()
    assert started(asg) == []
    assert "dev-kube-secure: instance refresh inprogress; later layers wait" in lines

    # The secure refresh succeeded and every member runs version 2: compute's turn, with its
    # own minimum and maximum healthy percentages (the surge: new ones launched first),
    # replacing only instances on the older template.
    asg.refreshes["dev-kube-secure"] = [{"Status": "Successful", "StartTime": NOW}]
    for instance in asg.groups["dev-kube-secure"]["Instances"]:
        instance["LaunchTemplate"]["Version"] = "2"
    lines = controller(asg, api).pass_once()
    assert started(asg) == [("dev-kube-compute", True, 50, 150)]
    assert (
        "dev-kube-compute: instance refresh started (2 instance(s) on an older launch template)"
        in lines
    )
    # A second controller (another control-plane node) in the same pass changes nothing.
    controller(asg, api).pass_once()
    assert started(asg) == [("dev-kube-compute", True, 50, 150)]


def test_a_secure_layer_left_behind_holds_compute(fake_api: Any) -> None:
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("secure", "2", {"i-s0": ("InService", "1")})
    asg.group("compute", "5", {"i-c0": ("InService", "4")})
    asg.refreshes["dev-kube-secure"] = [{"Status": "Failed", "StartTime": NOW,
                                         "StatusReason": "launch hook abandoned"}]  # fmt: skip
    lines = controller(asg, api).pass_once()
    assert started(asg) == []  # the secure layer is Terraform's and the operator's to resume
    assert any(
        line.startswith("dev-kube-secure: 1 instance(s) on an older launch template")
        for line in lines
    )


def test_a_failed_roll_of_the_secure_layer_holds_compute(fake_api: Any) -> None:
    """`kubeplat roll` asked for every layer; the secure layer's refresh (every instance
    replaced on the same template) failed. Its members all run the group's template, yet what
    the failure left is not known to be healthy: compute waits until a roll of the secure
    layer succeeds."""
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("secure", "2", {"i-s0": ("InService", "2"), "i-s1": ("InService", "2")},
              kubeplat_min_healthy="100")  # fmt: skip
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    asked = {"secure": NOW - timedelta(minutes=30), "compute": NOW - timedelta(minutes=30)}
    asg.refreshes["dev-kube-secure"] = [{"Status": "Failed", "StartTime": NOW - timedelta(minutes=29),
                                         "StatusReason": "i-s9 was abandoned"}]  # fmt: skip
    lines = controller(asg, api, requests=lambda: asked).pass_once()
    assert started(asg) == []
    assert (
        "dev-kube-secure: its last instance refresh ended failed: i-s9 was abandoned; later "
        "layers wait until a roll of this layer succeeds (resume with kubeplat roll)"
    ) in lines
    # Resumed (asked again after the failure): the secure layer rolls again; compute waits.
    asked["secure"] = NOW + timedelta(minutes=5)
    controller(asg, api, requests=lambda: asked).pass_once()
    assert started(asg) == [("dev-kube-secure", False, 100, None)]
    # That roll succeeded: compute's turn.
    asg.refreshes["dev-kube-secure"][0].update(Status="Successful", StartTime=asked["secure"])
    controller(asg, api, requests=lambda: asked).pass_once()
    assert [s[0] for s in started(asg)] == ["dev-kube-secure", "dev-kube-compute"]


def test_a_failed_refresh_is_not_retried_for_the_same_template_but_resumed_on_request(
    fake_api: Any,
) -> None:
    _server, api = fake_api
    asg, ec2 = AutoScaling(), Ec2()
    asg.group("secure", "2", {"i-s0": ("InService", "2")})
    asg.group("compute", "5", {"i-c0": ("InService", "4"), "i-c1": ("InService", "5")})
    asg.refreshes["dev-kube-compute"] = [{"Status": "Failed", "StartTime": NOW,
                                          "StatusReason": "i-c9 was abandoned"}]  # fmt: skip
    lines = controller(asg, api, ec2).pass_once()
    assert started(asg) == []
    assert (
        "dev-kube-compute: its last instance refresh ended failed: i-c9 was abandoned; not started "
        "again for the same launch template (resume with kubeplat roll); later layers wait"
    ) in lines
    # `kubeplat roll -e dev --layer compute` asks (a request newer than the failure): started,
    # and every instance replaced (a roll on demand: a kernel update, say).
    asked = {"compute": NOW + timedelta(minutes=5)}
    controller(asg, api, ec2, requests=lambda: asked).pass_once()
    assert started(asg) == [("dev-kube-compute", False, 90, None)]


def test_a_new_template_after_a_failed_refresh_starts_again(fake_api: Any) -> None:
    _server, api = fake_api
    asg, ec2 = AutoScaling(), Ec2()
    asg.group("compute", "6", {"i-c0": ("InService", "4")})
    asg.refreshes["dev-kube-compute"] = [{"Status": "Failed", "StartTime": NOW}]
    ec2.made[("lt-compute", "6")] = NOW + timedelta(minutes=10)  # the fix, applied after
    controller(asg, api, ec2).pass_once()
    assert started(asg) == [("dev-kube-compute", True, 90, None)]


def test_an_old_roll_request_is_not_repeated(fake_api: Any) -> None:
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    asg.refreshes["dev-kube-compute"] = [{"Status": "Successful", "StartTime": NOW}]
    asked = {"compute": NOW - timedelta(hours=1)}
    assert controller(asg, api, requests=lambda: asked).pass_once() == [] and started(asg) == []


# -- drain ------------------------------------------------------------------------------------


def leaving(asg: AutoScaling) -> None:
    asg.group("compute", "5", {"i-c0": ("Terminating:Wait", "5"), "i-c1": ("InService", "5")})


def test_a_leaving_node_is_cordoned_and_drained_then_let_go(fake_api: Any) -> None:
    server, api = fake_api
    server.nodes = {
        "ip-10-0-1-5": node("ip-10-0-1-5", "i-c0"),
        "ip-10-0-1-6": node("ip-10-0-1-6", "i-c1"),
    }
    server.pods = {
        "shop/web-1": pod("shop", "web-1", "ip-10-0-1-5", app="web"),
        "shop/web-2": pod("shop", "web-2", "ip-10-0-1-6", app="web"),
        "kube-system/flannel-a": pod("kube-system", "flannel-a", "ip-10-0-1-5", owner="DaemonSet"),
        "kube-system/static": pod("kube-system", "static", "ip-10-0-1-5", mirror=True),
        "batch/done": pod("batch", "done", "ip-10-0-1-5", phase="Succeeded"),
    }
    asg = AutoScaling()
    leaving(asg)
    lines = controller(asg, api).pass_once()
    ((name, patch, kind),) = server.patched
    assert (name, patch["spec"], kind) == (
        "ip-10-0-1-5", {"unschedulable": True}, "application/strategic-merge-patch+json"
    )  # fmt: skip
    assert patch["metadata"]["annotations"][roller.DRAIN_STARTED].startswith("i-c0 ")
    assert server.evicted == ["shop/web-1"]  # not the DaemonSet's, static or finished pods
    assert "ip-10-0-1-5: evicted shop/web-1" in lines
    assert completed(asg) == []  # evicted this pass: let go once nothing is left
    lines = controller(asg, api).pass_once()
    assert completed(asg) == [("i-c0", roller.DRAIN_HOOK, "CONTINUE")]
    assert "ip-10-0-1-5 drained" in lines
    assert server.nodes["ip-10-0-1-6"]["spec"].get("unschedulable") is None  # the other stays


def test_a_disruption_budget_holds_the_drain_until_the_timeout(fake_api: Any) -> None:
    server, api = fake_api
    server.nodes = {"ip-10-0-1-5": node("ip-10-0-1-5", "i-c0")}
    server.pods = {"shop/db-0": pod("shop", "db-0", "ip-10-0-1-5", app="db")}
    server.budgets = {"db": 1}  # minAvailable 1 of 1: no eviction allowed
    asg = AutoScaling()
    leaving(asg)
    clock = [0.0]
    roll = controller(asg, api, drain_timeout=600, clock=lambda: clock[0])
    lines = roll.pass_once()
    assert server.refused == ["shop/db-0"] and server.evicted == []
    assert (
        "ip-10-0-1-5: eviction of shop/db-0 refused by a PodDisruptionBudget; trying again" in lines
    )
    assert completed(asg) == []
    clock[0] = 300.0
    roll.pass_once()
    assert completed(asg) == [] and server.refused == ["shop/db-0"] * 2
    clock[0] = 600.0
    lines = roll.pass_once()
    assert completed(asg) == [("i-c0", roller.DRAIN_HOOK, "CONTINUE")]
    assert (
        "ip-10-0-1-5: drain timed out with 1 pod(s) left (1 held by a disruption budget): "
        "shop/db-0; the instance goes anyway"
    ) in lines
    assert server.evicted == []  # the budget was never broken


def test_a_scale_in_goes_through_the_same_drain(fake_api: Any) -> None:
    """A scale-in (the desired capacity lowered by hand or by a cluster autoscaler; no refresh,
    every instance on the group's template) holds its leaving instance in the drain hook as a
    roll does: cordoned, drained, then let go, and no refresh is started for it."""
    server, api = fake_api
    server.nodes = {
        "ip-10-0-1-5": node("ip-10-0-1-5", "i-c0"),
        "ip-10-0-1-6": node("ip-10-0-1-6", "i-c1"),
        "ip-10-0-1-7": node("ip-10-0-1-7", "i-c2"),
    }
    server.pods = {"shop/web-1": pod("shop", "web-1", "ip-10-0-1-6", app="web")}
    asg = AutoScaling()
    asg.group("secure", "3", {"i-s0": ("InService", "3")})
    asg.group("compute", "5", {"i-c0": ("InService", "5"), "i-c1": ("Terminating:Wait", "5"),
                               "i-c2": ("InService", "5")})  # fmt: skip
    lines = controller(asg, api).pass_once()
    assert server.evicted == ["shop/web-1"] and completed(asg) == []
    assert [name for name, _, _ in server.patched] == ["ip-10-0-1-6"]  # only the leaving one
    lines = controller(asg, api).pass_once()
    assert completed(asg) == [("i-c1", roller.DRAIN_HOOK, "CONTINUE")]
    assert "i-c1: leaves dev-kube-compute (kubeplat-drain completed)" in lines
    assert started(asg) == []  # a scale-in is not a roll


def test_a_drain_keeps_its_timeout_across_controllers(fake_api: Any) -> None:
    """A drain begun by one controller is timed from when it began, by a restarted controller
    or the one on another control-plane node: its start is on the Node, not in a process."""
    server, api = fake_api
    server.nodes = {"ip-10-0-1-5": node("ip-10-0-1-5", "i-c0")}
    server.pods = {"shop/db-0": pod("shop", "db-0", "ip-10-0-1-5", app="db")}
    server.budgets = {"db": 1}
    asg = AutoScaling()
    leaving(asg)
    began = NOW.timestamp()
    controller(asg, api, clock=lambda: began).pass_once()
    assert server.nodes["ip-10-0-1-5"]["metadata"]["annotations"] == {
        roller.DRAIN_STARTED: "i-c0 2026-12-05T12:00:00Z"
    }
    controller(asg, api, clock=lambda: began + 599).pass_once()  # restarted: 599 s in
    assert completed(asg) == []
    lines = controller(asg, api, clock=lambda: began + 600).pass_once()  # another node's
    assert completed(asg) == [("i-c0", roller.DRAIN_HOOK, "CONTINUE")]
    assert any("drain timed out" in line for line in lines)
    assert len(server.patched) == 1  # cordoned and stamped once, not again by the others


def test_a_drain_recorded_for_another_instance_starts_afresh(fake_api: Any) -> None:
    """A Node name (the private address) reused by a new instance carries the old instance's
    drain start: the new instance's drain gets its own full timeout."""
    server, api = fake_api
    server.nodes = {"ip-10-0-1-5": node("ip-10-0-1-5", "i-c0")}
    server.nodes["ip-10-0-1-5"]["metadata"]["annotations"] = {
        roller.DRAIN_STARTED: "i-old 2026-12-01T12:00:00Z"
    }
    server.pods = {"shop/db-0": pod("shop", "db-0", "ip-10-0-1-5", app="db")}
    server.budgets = {"db": 1}
    asg = AutoScaling()
    leaving(asg)
    controller(asg, api, clock=lambda: NOW.timestamp()).pass_once()
    assert completed(asg) == []  # four days after the old instance's: not out of time
    assert server.nodes["ip-10-0-1-5"]["metadata"]["annotations"] == {
        roller.DRAIN_STARTED: "i-c0 2026-12-05T12:00:00Z"
    }


def test_an_instance_without_a_node_leaves_at_once(fake_api: Any) -> None:
    _server, api = fake_api
    asg = AutoScaling()
    leaving(asg)
    lines = controller(asg, api).pass_once()
    assert completed(asg) == [("i-c0", roller.DRAIN_HOOK, "CONTINUE")]
    assert "i-c0: no node of its own to drain" in lines


def test_a_group_without_the_hook_is_not_drained(fake_api: Any) -> None:
    server, api = fake_api
    server.nodes = {"ip-10-0-1-5": node("ip-10-0-1-5", "i-c0")}
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("Terminating:Wait", "5")}, hooks=())
    controller(asg, api).pass_once()
    assert completed(asg) == [] and server.patched == []


# -- ready ------------------------------------------------------------------------------------


def test_an_entering_instance_goes_in_service_once_its_node_is_ready(fake_api: Any) -> None:
    server, api = fake_api
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c2": ("Pending:Wait", "5")}, hooks=(roller.READY_HOOK,))
    roll = controller(asg, api)
    roll.pass_once()
    assert completed(asg) == []  # no Node yet
    server.nodes = {"ip-10-0-1-7": node("ip-10-0-1-7", "i-c2", ready=False)}
    roll.pass_once()
    assert completed(asg) == []  # registered, not Ready
    server.nodes["ip-10-0-1-7"]["status"]["conditions"][0]["status"] = "True"
    lines = roll.pass_once()
    assert completed(asg) == [("i-c2", roller.READY_HOOK, "CONTINUE")]
    assert "i-c2: its node is Ready; in service in dev-kube-compute" in lines


def test_a_new_control_plane_node_waits_for_its_api_server(fake_api: Any) -> None:
    """A control-plane layer of its own: Node Ready is not enough; the instance's agent must
    report its API server answering /readyz (its manifests report's `ready`)."""
    server, api = fake_api
    asg = AutoScaling()
    asg.group("control-plane", "3", {"i-p4": ("Pending:Wait", "3")}, hooks=(roller.READY_HOOK,))
    server.nodes = {"ip-10-0-2-4": node("ip-10-0-2-4", "i-p4")}
    reports: dict[tuple[str, str], dict[str, Any]] = {}
    roll = controller(asg, api, reports=lambda layer, i: reports.get((layer, i)))
    lines = roll.pass_once()
    assert completed(asg) == []  # no report yet
    assert "i-p4: its node is Ready; waiting for its API server's /readyz" in lines
    reports[("control-plane", "i-p4")] = {"digest": "abc", "ready": False}
    roll.pass_once()
    assert completed(asg) == []  # its agent says the API server is not ready
    reports[("control-plane", "i-p4")]["ready"] = True
    lines = roll.pass_once()
    assert completed(asg) == [("i-p4", roller.READY_HOOK, "CONTINUE")]
    assert "i-p4: its node is Ready; in service in dev-kube-control-plane" in lines


def test_the_roller_is_a_node_command() -> None:
    from kubeplat.node import cli

    assert cli.COMMANDS["roller"][0] == "roller"


# -- the program ------------------------------------------------------------------------------


class S3:
    """A RECORDING stand-in for the secrets bucket as the roller reads it: a listing of
    ENV/rolls/ and other nodes' reports (moto runs in the integration tier, not here)."""

    def __init__(self, objects: dict[str, tuple[datetime, bytes]]) -> None:
        self.objects = objects
        self.asked: list[tuple[str, str]] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        s3 = self

        class Pages:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                s3.asked.append((Bucket, Prefix))
                return [{"Contents": [{"Key": k, "LastModified": when}
                                      for k, (when, _) in s3.objects.items() if k.startswith(Prefix)]}]  # fmt: skip

        return Pages()

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        import io

        self.asked.append((Bucket, Key))
        return {"Body": io.BytesIO(self.objects[Key][1])}


def test_the_program_wires_its_options_to_the_controller(
    fake_api: Any, pki_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`kubeplat-node roller --once` as its unit runs it: the drain timeout, the bucket's roll
    requests and control-plane reports, the API server and its certificate all reach the pass
    (AWS clients are the stand-ins above, handed out by service name)."""
    import logging

    from kubeplat.node import aws

    server, _api = fake_api
    server.nodes = {"ip-10-0-1-5": node("ip-10-0-1-5", "i-c0"),
                    "ip-10-0-2-4": node("ip-10-0-2-4", "i-p4")}  # fmt: skip
    server.pods = {"shop/db-0": pod("shop", "db-0", "ip-10-0-1-5", app="db")}
    server.budgets = {"db": 1}
    asg = AutoScaling()
    asg.group("secure", "3", {"i-s0": ("InService", "3")})
    asg.group("control-plane", "3", {"i-p4": ("Pending:Wait", "3")}, hooks=(roller.READY_HOOK,))
    leaving(asg)
    ready = json.dumps({"ready": True}).encode()
    s3 = S3({"dev/rolls/secure.json": (NOW, b"{}"),
             "dev/status/control-plane/i-p4/manifests.json": (NOW, ready)})  # fmt: skip
    clients = {"autoscaling": asg, "ec2": Ec2(), "s3": s3}
    monkeypatch.setattr(aws, "client", lambda service, region: clients[service])
    url = f"https://127.0.0.1:{server.server_address[1]}"
    caplog.set_level(logging.INFO, logger="kubeplat-roller")
    code = roller.main([
        "--environment", "dev", "--region", "eu-west-1", "--once", "--drain-timeout", "0",
        "--bucket", "kubeplat-dev-secrets", "--api", url, "--ca", str(pki_dir / "ca.crt"),
        "--cert", str(pki_dir / "apiserver-kubelet-client.crt"),
        "--key", str(pki_dir / "apiserver-kubelet-client.key"),
    ])  # fmt: skip
    assert code == 0
    assert sorted(completed(asg)) == [
        ("i-c0", roller.DRAIN_HOOK, "CONTINUE"),  # --drain-timeout 0: out of time at once
        ("i-p4", roller.READY_HOOK, "CONTINUE"),  # its report, read from the bucket: ready
    ]
    assert started(asg) == [("dev-kube-secure", False, 90, None)]  # asked for in ENV/rolls/
    assert ("kubeplat-dev-secrets", "dev/rolls/") in s3.asked
    assert (
        "kubeplat-dev-secrets", "dev/status/control-plane/i-p4/manifests.json"
    ) in s3.asked  # fmt: skip
    said = [r.getMessage() for r in caplog.records]
    assert (
        "dev-kube-secure: instance refresh started (a roll was asked for at 2026-12-05 12:00 UTC)"
        in said
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_program_without_a_bucket_reads_no_requests_or_reports(
    fake_api: Any, pki_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeplat.node import aws

    server, _api = fake_api
    server.nodes = {"ip-10-0-2-4": node("ip-10-0-2-4", "i-p4")}
    asg = AutoScaling()
    asg.group("control-plane", "3", {"i-p4": ("Pending:Wait", "3")}, hooks=(roller.READY_HOOK,))
    s3 = S3({"dev/rolls/control-plane.json": (NOW, b"{}")})
    clients = {"autoscaling": asg, "ec2": Ec2(), "s3": s3}
    monkeypatch.setattr(aws, "client", lambda service, region: clients[service])
    url = f"https://127.0.0.1:{server.server_address[1]}"
    code = roller.main([
        "--environment", "dev", "--region", "eu-west-1", "--once", "--api", url,
        "--ca", str(pki_dir / "ca.crt"), "--cert", str(pki_dir / "apiserver-kubelet-client.crt"),
        "--key", str(pki_dir / "apiserver-kubelet-client.key"),
    ])  # fmt: skip
    assert code == 0
    assert s3.asked == [] and started(asg) == [] and completed(asg) == []  # no report: waits


# -- the AWS calls, exactly -------------------------------------------------------------------


def test_a_refresh_is_started_with_the_groups_own_settings(fake_api: Any) -> None:
    """What StartInstanceRefresh is given, whole: a rolling refresh, the group's minimum and
    maximum healthy percentages and warm-up from its tags (90 when it has none), and whether
    instances already on the template are kept (a new template) or replaced (a roll asked)."""
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "4")}, kubeplat_min_healthy="66",
              kubeplat_max_healthy="133", kubeplat_instance_warmup="240")  # fmt: skip
    controller(asg, api).pass_once()
    assert asg.calls == [("start_instance_refresh", {
        "AutoScalingGroupName": "dev-kube-compute", "Strategy": "Rolling",
        "Preferences": {"MinHealthyPercentage": 66, "SkipMatching": True,
                        "MaxHealthyPercentage": 133, "InstanceWarmup": 240},
    })]  # fmt: skip
    plain = AutoScaling()
    plain.group("compute", "5", {"i-c0": ("InService", "5")})
    controller(plain, api, requests=lambda: {"compute": NOW}).pass_once()
    assert plain.calls == [("start_instance_refresh", {
        "AutoScalingGroupName": "dev-kube-compute", "Strategy": "Rolling",
        "Preferences": {"MinHealthyPercentage": 90, "SkipMatching": False},
    })]  # fmt: skip


def test_another_controllers_refresh_is_no_error_any_other_is(fake_api: Any) -> None:
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "4")})
    roll = controller(asg, api)

    def refused(code: str) -> Any:
        def start(**kwargs: Any) -> None:
            raise Refused(code)

        return start

    asg.start_instance_refresh = refused("InstanceRefreshInProgress")  # type: ignore[method-assign]
    assert roll.pass_once()[-1].startswith("dev-kube-compute: instance refresh started")
    asg.start_instance_refresh = refused("AccessDenied")  # type: ignore[method-assign]
    with pytest.raises(Refused, match="AccessDenied"):
        roll.pass_once()
    asg.start_instance_refresh = lambda **kwargs: (_ for _ in ()).throw(RuntimeError("no code"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="no code"):
        roll.pass_once()


def test_a_lifecycle_action_already_completed_is_no_error_any_other_is(fake_api: Any) -> None:
    """Two controllers (one per control-plane node) may both let the same instance go: AWS
    answers the second with ValidationError (no action waits), which is not an error."""
    _server, api = fake_api
    asg = AutoScaling()
    leaving(asg)
    roll = controller(asg, api)
    group = roll.groups()[0]
    roll.complete(group, roller.DRAIN_HOOK, "i-c0", "CONTINUE")
    assert asg.calls == [("complete_lifecycle_action", {
        "LifecycleHookName": roller.DRAIN_HOOK, "AutoScalingGroupName": "dev-kube-compute",
        "InstanceId": "i-c0", "LifecycleActionResult": "CONTINUE",
    })]  # fmt: skip
    roll.complete(group, roller.DRAIN_HOOK, "i-c1", "CONTINUE")  # not waiting: ValidationError
    assert len(asg.calls) == 1

    def denied(**kwargs: Any) -> None:
        raise Refused("AccessDenied")

    asg.complete_lifecycle_action = denied  # type: ignore[method-assign]
    with pytest.raises(Refused, match="AccessDenied"):
        roll.complete(group, roller.DRAIN_HOOK, "i-c0", "CONTINUE")


def test_the_groups_are_read_as_the_controller_needs_them(fake_api: Any) -> None:
    """The environment's groups by their Environment tag; each one's layer, template, tags
    and roll request; its lifecycle hooks asked of AWS only when an instance waits."""
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("secure", "3", {"i-s0": ("InService", "3")})
    asg.group("compute", "5", {"i-c0": ("Pending:Wait", "5")}, hooks=(roller.READY_HOOK,),
              kubeplat_drain_timeout="120")  # fmt: skip
    asked: list[dict[str, Any]] = []
    pages = asg.get_paginator

    def paginator(name: str) -> Any:
        found = pages(name)
        return SimpleNamespace(paginate=lambda **kw: asked.append(kw) or found.paginate(**kw))

    hooks_asked: list[str] = []
    hooks = asg.describe_lifecycle_hooks

    def describe_hooks(AutoScalingGroupName: str) -> dict[str, Any]:
        hooks_asked.append(AutoScalingGroupName)
        return hooks(AutoScalingGroupName)

    asg.get_paginator = paginator  # type: ignore[method-assign]
    asg.describe_lifecycle_hooks = describe_hooks  # type: ignore[method-assign]
    when = NOW - timedelta(minutes=1)
    found = {g.layer: g for g in controller(asg, api, requests=lambda: {"compute": when}).groups()}
    assert asked == [{"Filters": [{"Name": "tag:Environment", "Values": ["dev"]}]}]
    assert hooks_asked == ["dev-kube-compute"]  # the secure group has no instance waiting
    secure, compute = found["secure"], found["compute"]
    assert (secure.name, secure.template, secure.hooks, secure.asked) == (
        "dev-kube-secure", ("lt-secure", "3"), frozenset(), None
    )  # fmt: skip
    assert (compute.template, compute.hooks, compute.asked) == (
        ("lt-compute", "5"), frozenset({roller.READY_HOOK}), when
    )  # fmt: skip
    assert compute.tags["kubeplat:drain-timeout"] == "120"
    assert compute.waiting("Pending:Wait") == ["i-c0"] and compute.waiting("InService") == []


def test_an_instance_leaving_or_gone_is_not_outdated() -> None:
    group = roller.Group("g", "compute", ("lt-1", "5"), [
        {"InstanceId": "i-b", "LifecycleState": "InService",
         "LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "4"}},
        {"InstanceId": "i-a", "LifecycleState": "Pending",
         "LaunchTemplate": {"LaunchTemplateId": "lt-0", "Version": "5"}},
        {"InstanceId": "i-c", "LifecycleState": "InService",
         "LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "5"}},
        {"InstanceId": "i-d", "LifecycleState": "Terminating", "LaunchTemplate": {}},
        {"InstanceId": "i-e", "LifecycleState": "Terminating:Wait"},
        {"InstanceId": "i-f", "LifecycleState": "Terminated"},
        {"InstanceId": "i-g", "LifecycleState": "InService"},  # no template: another one
    ], {})  # fmt: skip
    assert group.outdated() == ["i-a", "i-b", "i-g"]  # another template or version, sorted


def test_the_newest_refresh_is_read_whole_and_a_failure_to_read_it_named(fake_api: Any) -> None:
    _server, api = fake_api
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    roll = controller(asg, api)
    group = roll.groups()[0]
    assert roll.newest(group) is None
    asg.refreshes["dev-kube-compute"] = [
        {"Status": "Failed", "StartTime": "2026-12-05T11:00:00Z", "StatusReason": "abandoned"},
        {"Status": "Successful", "StartTime": NOW - timedelta(days=1)},
    ]
    assert roll.newest(group) == roller.Refresh(
        "Failed", datetime(2026, 12, 5, 11, 0, tzinfo=UTC), "abandoned"
    )
    asg.refreshes["dev-kube-compute"] = [{"Status": "Pending"}]
    assert roll.newest(group) == roller.Refresh("Pending", None, "")

    def throttled(**kwargs: Any) -> dict[str, Any]:
        raise Refused("Throttling")

    asg.describe_instance_refreshes = throttled  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match=r"^reading dev-kube-compute's instance refreshes: "):
        roll.newest(group)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-05T12:00:00Z", NOW),
        ("2026-12-05T13:00:00+01:00", NOW),
        ("2026-12-05T12:00:00", NOW),  # no zone: UTC
        (datetime(2026, 12, 5, 12, 0), NOW),
        (NOW, NOW),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_times_as_aws_and_the_api_server_give_them(value: object, expected: object) -> None:
    assert roller._time(value) == expected


def test_a_node_is_found_by_its_provider_id_whatever_its_name(fake_api: Any) -> None:
    server, api = fake_api
    server.nodes = {
        "ip-10-0-1-5": node("ip-10-0-1-5", "i-c05"),
        "worker-x": node("worker-x", "i-c0"),
        "odd": {"metadata": {"name": "odd"}, "spec": {"providerID": "aws:///eu-west-1a/i-c0/"}},
    }
    assert roller.node_of(api(), "i-c0") == "worker-x"  # not i-c05; the first that names it
    assert roller.node_of(api(), "i-c9") is None
    server.nodes = {"odd": server.nodes["odd"]}
    assert roller.node_of(api(), "i-c0") == "odd"  # a trailing slash is still its id
    assert roller._name({"metadata": {"namespace": "shop", "name": "web-1"}}) == "shop/web-1"
    assert roller._name({}) == "/"
    assert roller._template_of({"LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": 7}}) == (
        "lt-1", "7"
    )  # fmt: skip
    assert roller._template_of({}) == ("", "")


def test_roll_requests_are_the_layers_under_rolls_by_their_time() -> None:
    objects = {
        "dev/rolls/compute.json": (NOW, b"{}"),
        "dev/rolls/secure.json": (NOW - timedelta(hours=1), b"{}"),
        "dev/rolls/nested/x.json": (NOW, b"{}"),  # not a layer
        "dev/rolls/.json": (NOW, b"{}"),  # no name
        "dev/rollsx/compute.json": (NOW, b"{}"),  # another prefix
    }
    s3 = S3(objects)
    found = roller.roll_requests(s3, "kubeplat-dev-secrets", "dev")
    assert found == {"compute": NOW, "secure": NOW - timedelta(hours=1)}
    assert s3.asked == [("kubeplat-dev-secrets", "dev/rolls/")]


def test_what_a_drain_leaves_and_what_it_evicts() -> None:
    assert roller.evictable(pod("shop", "web", "n", app="web"))
    assert not roller.evictable(pod("kube-system", "flannel", "n", owner="DaemonSet"))
    assert not roller.evictable(pod("kube-system", "etcd", "n", mirror=True))
    assert not roller.evictable(pod("batch", "done", "n", phase="Succeeded"))
    assert not roller.evictable(pod("batch", "broke", "n", phase="Failed"))
    assert roller.evictable(pod("batch", "waiting", "n", phase="Pending"))
    assert roller.evictable({})  # nothing known of it: evicted, as kubectl drain would


def test_a_drain_start_names_its_instance_and_time() -> None:
    stamped = {"metadata": {"annotations": {roller.DRAIN_STARTED: "i-c0 2026-12-05T12:00:00Z"}}}
    assert roller.drain_began(stamped, "i-c0") == NOW.timestamp()
    assert roller.drain_began(stamped, "i-c1") is None
    assert roller.drain_began({"metadata": {"annotations": {roller.DRAIN_STARTED: "i-c0"}}},
                              "i-c0") is None  # fmt: skip
    assert roller.drain_began({"metadata": {"annotations": {roller.DRAIN_STARTED: "i-c0 soon"}}},
                              "i-c0") is None  # fmt: skip
    assert roller.drain_began({}, "i-c0") is None
