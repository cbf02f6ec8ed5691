"""The roll controller's details a node operator would notice: the order of the layers whatever
order AWS lists them in, the exact lines that say why a layer waits, the API server requests a
drain makes (its cordon stamp in UTC, each Eviction whole, pods gone or held meanwhile), the
drain timeout a group's tag sets, which waiting instances the controller lets go, the AWS
answers it tolerates, and the program's options.

Auto Scaling, EC2 and S3 are tests/unit/test_node_roller.py's RECORDING stand-ins; the API
server is a RECORDING stand-in here too (an object answering `call` as approver.Api does), so
that every request's method, path and body is asserted; the program's own test runs against
that file's TLS fake."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kubeplat.node import passes, roller
from tests.conftest import local_zone
from tests.unit import test_node_roller as base
from tests.unit.test_node_roller import (
    NOW,
    S3,
    AutoScaling,
    Ec2,
    completed,
    controller,
    node,
    pod,
    started,
)

# test_node_roller.py's fixtures, by name.
fake_api = base.fake_api
pki_dir = base.pki_dir


class RecordingApi:
    """The API server as the controller calls it (approver.Api's `call`), recording each call."""

    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.pods = list(pods)
        self.refuse: dict[str, int] = {}  # "namespace/name" → the eviction's HTTP error code
        self.calls: list[tuple[str, str, Any, str]] = []

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        self.calls.append((method, path, body, content_type))
        if method == "GET" and path == "/api/v1/nodes":
            return {"items": list(self.nodes.values())}
        if method == "GET" and path.startswith("/api/v1/nodes/"):
            return self.nodes[urllib.parse.unquote(path.rsplit("/", 1)[1])]
        if method == "GET" and path.startswith("/api/v1/pods?fieldSelector="):
            where = urllib.parse.unquote(path.split("=", 1)[1]).removeprefix("spec.nodeName=")
            return {"items": [p for p in self.pods if p["spec"]["nodeName"] == where]}
        if method == "PATCH":
            return {}
        if method == "POST" and path.endswith("/eviction"):
            parts = path.split("/")
            key = f"{parts[4]}/{parts[6]}"
            if key in self.refuse:
                raise urllib.error.HTTPError(path, self.refuse[key], "refused", {}, None)  # type: ignore[arg-type]
            return {}
        raise AssertionError(f"unexpected call {method} {path}")

    def evictions(self) -> list[tuple[str, str, Any]]:
        return [(m, p, b) for m, p, b, _ in self.calls if m == "POST"]


def instance(iid: str, version: str, state: str = "InService") -> dict[str, Any]:
    template = {"LaunchTemplateId": "lt", "Version": version}
    return {"InstanceId": iid, "LifecycleState": state, "LaunchTemplate": template}


def group(layer: str, *instances: dict[str, Any], version: str = "2") -> roller.Group:
    return roller.Group(f"dev-kube-{layer}", layer, ("lt", version), list(instances), {})


def never(_: roller.Group) -> datetime | None:
    raise AssertionError("the template's date is not needed here")


# -- times ----------------------------------------------------------------------------------------


def test_a_time_with_its_own_zone_is_kept_as_that_instant() -> None:
    paris = datetime(2026, 12, 5, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert roller._time(paris) == NOW


class Python39Datetime(datetime):
    """datetime as the node images' Python 3.9 has it: fromisoformat knows no `Z`."""

    @classmethod
    def fromisoformat(cls, text: str) -> Any:
        if "Z" in text or "z" in text:
            raise ValueError(f"Invalid isoformat string: {text!r}")
        return datetime.fromisoformat(text)


def test_a_z_time_is_read_on_python_3_9_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roller, "datetime", Python39Datetime)
    assert roller._time("2026-12-05T12:00:00Z") == NOW


def test_a_drain_start_may_separate_date_and_time_by_a_space() -> None:
    """RFC 3339 allows a space for the T: a start written so is still this instance's."""
    stamped = {"metadata": {"annotations": {roller.DRAIN_STARTED: "i-c0 2026-12-05 12:00:00Z"}}}
    assert roller.drain_began(stamped, "i-c0") == NOW.timestamp()


# -- the order of the layers ----------------------------------------------------------------------


def test_layers_roll_in_their_order_whatever_order_aws_lists_them_in() -> None:
    """AWS lists compute first, and a group of no known layer: the secure layer still goes
    first, and says why the others wait."""
    groups = [
        group("compute", instance("i-c0", "1")),
        roller.Group("dev-bastion", "", ("lt", "2"), [instance("i-b0", "2")], {}),
        group("secure", instance("i-s0", "1")),
    ]
    assert roller.decide_refreshes(groups, {}, never) == (
        [],
        [
            "dev-kube-secure: 1 instance(s) on an older launch template and no refresh under way "
            "(Terraform starts this layer's; `kubeplat roll` resumes it); later layers wait"
        ],
    )


def test_the_last_layers_failed_refresh_holds_no_one() -> None:
    groups = [group("compute", instance("i-c0", "2"))]
    newest: dict[str, roller.Refresh | None] = {
        "dev-kube-compute": roller.Refresh("Failed", NOW, "abandoned")
    }
    assert roller.decide_refreshes(groups, newest, never) == ([], [])


def test_a_failed_refresh_without_a_reason_says_so_without_a_colon() -> None:
    groups = [group("secure", instance("i-s0", "2")), group("compute", instance("i-c0", "2"))]
    newest: dict[str, roller.Refresh | None] = {"dev-kube-secure": roller.Refresh("Cancelled", NOW)}
    assert roller.decide_refreshes(groups, newest, never)[1] == [
        "dev-kube-secure: its last instance refresh ended cancelled; later layers wait until a "
        "roll of this layer succeeds (resume with kubeplat roll)"
    ]


def test_a_template_made_when_the_failed_refresh_started_is_the_same_template() -> None:
    groups = [group("compute", instance("i-c0", "1"))]
    newest: dict[str, roller.Refresh | None] = {"dev-kube-compute": roller.Refresh("Failed", NOW)}
    assert roller.decide_refreshes(groups, newest, lambda g: NOW) == (
        [],
        [
            "dev-kube-compute: its last instance refresh ended failed; not started again for "
            "the same launch template (resume with kubeplat roll); later layers wait"
        ],
    )


def test_after_a_successful_refresh_a_newer_template_starts_without_asking_its_date() -> None:
    groups = [group("compute", instance("i-c0", "1"))]
    newest: dict[str, roller.Refresh | None] = {
        "dev-kube-compute": roller.Refresh("Successful", NOW)
    }
    assert roller.decide_refreshes(groups, newest, never) == (
        [roller.Start("dev-kube-compute", True, "1 instance(s) on an older launch template")],
        [],
    )


# -- a drain's requests ---------------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[None]:
    """This machine's local time is 5:30 east of UTC."""
    with local_zone("XST-05:30"):
        yield


def test_a_drain_cordons_and_stamps_its_start_in_utc(elsewhere: None) -> None:
    api = RecordingApi([node("ip-10-0-1-5", "i-c0")])
    done = roller.drain_step(api, "ip-10-0-1-5", "i-c0", NOW.timestamp(), 600)
    assert done == roller.Drained(True, "ip-10-0-1-5 drained")
    assert api.calls == [
        ("GET", "/api/v1/nodes/ip-10-0-1-5", None, "application/json"),
        (
            "PATCH",
            "/api/v1/nodes/ip-10-0-1-5",
            {
                "spec": {"unschedulable": True},
                "metadata": {"annotations": {roller.DRAIN_STARTED: "i-c0 2026-12-05T12:00:00Z"}},
            },
            "application/strategic-merge-patch+json",
        ),
        ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dip-10-0-1-5", None, "application/json"),
    ]


def eviction(namespace: str, name: str) -> tuple[str, str, Any]:
    return (
        "POST",
        f"/api/v1/namespaces/{namespace}/pods/{name}/eviction",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        },
    )


def test_each_pod_is_evicted_whole_skipping_those_shutting_down_or_gone() -> None:
    closing = pod("shop", "old", "n1")
    closing["metadata"]["deletionTimestamp"] = "2026-12-05T11:59:00Z"
    api = RecordingApi(
        [node("n1", "i-c0")],
        [closing, pod("shop", "gone", "n1"), pod("shop", "held", "n1"), pod("shop", "web", "n1")],
    )
    api.refuse = {"shop/gone": 404, "shop/held": 429}
    result = roller.drain_step(api, "n1", "i-c0", NOW.timestamp(), 600)
    assert api.evictions() == [
        eviction("shop", "gone"),
        eviction("shop", "held"),
        eviction("shop", "web"),
    ]
    assert result == roller.Drained(False, "n1: 4 pod(s) to go", ["shop/web"], ["shop/held"])


def test_an_eviction_error_other_than_gone_or_held_ends_the_pass() -> None:
    api = RecordingApi([node("n1", "i-c0")], [pod("shop", "web", "n1")])
    api.refuse = {"shop/web": 403}
    with pytest.raises(urllib.error.HTTPError):
        roller.drain_step(api, "n1", "i-c0", NOW.timestamp(), 600)


def test_a_drain_out_of_time_names_every_pod_left() -> None:
    api = RecordingApi([node("n1", "i-c0")], [pod("shop", "b", "n1"), pod("shop", "a", "n1")])
    result = roller.drain_step(api, "n1", "i-c0", NOW.timestamp(), 0)
    assert result.done is True
    assert result.detail == (
        "n1: drain timed out with 2 pod(s) left: shop/a, shop/b; the instance goes anyway"
    )


def test_a_node_is_found_past_nodes_without_a_provider_id() -> None:
    bare = {"metadata": {"name": "booting"}, "spec": {}}
    api = RecordingApi([bare, node("ip-10-0-1-5", "i-c0", ready=True)])
    assert roller.node_of(api, "i-c0") == "ip-10-0-1-5"
    assert roller.node_ready(api, "i-c0") is True
    assert [(m, p) for m, p, _, _ in api.calls] == [
        ("GET", "/api/v1/nodes"),
        ("GET", "/api/v1/nodes"),
        ("GET", "/api/v1/nodes/ip-10-0-1-5"),
    ]


# -- the controller -------------------------------------------------------------------------------


def no_api() -> Any:
    raise AssertionError("the API server is asked only when an instance waits")


class Unreachable(Exception):
    """An error without an AWS error code (a connection reset, an odd answer)."""


def test_a_lifecycle_error_without_an_aws_code_is_raised_as_it_is() -> None:
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("Terminating:Wait", "5")})
    roll = controller(asg, no_api)
    target = roll.groups()[0]
    bare = Unreachable("connection reset")
    odd = Unreachable("no error in the answer")
    odd.response = {"ResponseMetadata": {"HTTPStatusCode": 500}}  # type: ignore[attr-defined]
    for error in (bare, odd):

        def fail(error: Exception = error, **kwargs: Any) -> None:
            raise error

        asg.complete_lifecycle_action = fail  # type: ignore[method-assign]
        with pytest.raises(Unreachable) as raised:
            roll.complete(target, roller.DRAIN_HOOK, "i-c0", "CONTINUE")
        assert raised.value is error


def test_a_group_launched_without_a_launch_template_of_its_own_is_not_outdated() -> None:
    """A group whose template is in a mixed instances policy (no LaunchTemplate at the top, nor
    on its instances): nothing to roll."""
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    item = asg.groups["dev-kube-compute"]
    del item["LaunchTemplate"]
    del item["Instances"][0]["LaunchTemplate"]
    assert controller(asg, no_api).pass_once() == []
    assert started(asg) == []


def test_a_hooks_answer_without_hooks_drains_nothing() -> None:
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("Terminating:Wait", "5")})
    asg.describe_lifecycle_hooks = lambda **kwargs: {}  # type: ignore[method-assign]
    assert controller(asg, no_api).pass_once() == []
    assert completed(asg) == []


def test_the_newest_refresh_alone_is_asked_for() -> None:
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    asked: list[dict[str, Any]] = []
    answer = asg.describe_instance_refreshes

    def describe(**kwargs: Any) -> dict[str, Any]:
        asked.append(kwargs)
        return answer(**kwargs)

    asg.describe_instance_refreshes = describe  # type: ignore[method-assign, assignment]
    roll = controller(asg, no_api)
    roll.newest(roll.groups()[0])
    assert asked == [{"AutoScalingGroupName": "dev-kube-compute", "MaxRecords": 1}]


def test_a_template_version_aws_does_not_list_has_no_date() -> None:
    asg, ec2 = AutoScaling(), Ec2()
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    ec2.describe_launch_template_versions = lambda **kwargs: {"LaunchTemplateVersions": []}  # type: ignore[method-assign]
    roll = controller(asg, no_api, ec2)
    assert roll.template_made(roll.groups()[0]) is None


def test_an_instance_held_by_another_layers_launch_hook_is_left_to_it() -> None:
    """A secure member waits in Pending:Wait on its etcd watch's hook, not the roller's: its
    node Ready or not, the roller does not let it go."""
    asg = AutoScaling()
    asg.group("secure", "3", {"i-s0": ("Pending:Wait", "3")}, hooks=("kubeplat-etcd-ready",))
    api = RecordingApi([node("ip-10-0-0-1", "i-s0")])
    lines = controller(asg, lambda: api).pass_once()
    assert completed(asg) == [] and lines == []


def test_without_a_waiting_instance_the_api_server_is_not_asked() -> None:
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("InService", "5")})
    assert controller(asg, no_api).pass_once() == []


def test_a_groups_drain_timeout_tag_rules_over_the_controllers() -> None:
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c0": ("Terminating:Wait", "5")}, kubeplat_drain_timeout="0")
    api = RecordingApi([node("n1", "i-c0")], [pod("shop", "db", "n1")])
    api.refuse = {"shop/db": 429}
    lines = controller(asg, lambda: api, drain_timeout=600).pass_once()
    assert completed(asg) == [("i-c0", roller.DRAIN_HOOK, "CONTINUE")]
    assert lines == [
        "n1: drain timed out with 1 pod(s) left (1 held by a disruption budget): shop/db; "
        "the instance goes anyway",
        "i-c0: leaves dev-kube-compute (kubeplat-drain completed)",
    ]


def test_every_leaving_instance_says_what_it_evicted() -> None:
    asg = AutoScaling()
    asg.group(
        "compute", "5", {"i-c0": ("Terminating:Wait", "5"), "i-c1": ("Terminating:Wait", "5")}
    )
    api = RecordingApi(
        [node("n0", "i-c0"), node("n1", "i-c1")], [pod("shop", "a", "n0"), pod("shop", "b", "n1")]
    )
    lines = controller(asg, lambda: api).pass_once()
    assert lines == [
        "n0: evicted shop/a",
        "n0: 1 pod(s) to go",
        "n1: evicted shop/b",
        "n1: 1 pod(s) to go",
    ]


def test_an_entering_instance_not_ready_holds_back_no_other() -> None:
    asg = AutoScaling()
    asg.group("compute", "5", {"i-c1": ("Pending:Wait", "5"), "i-c2": ("Pending:Wait", "5")},
              hooks=(roller.READY_HOOK,))  # fmt: skip
    api = RecordingApi([node("n1", "i-c1", ready=False), node("n2", "i-c2")])
    controller(asg, lambda: api).pass_once()
    assert completed(asg) == [("i-c2", roller.READY_HOOK, "CONTINUE")]


def test_a_control_plane_instance_waiting_for_its_api_server_holds_back_no_other() -> None:
    asg = AutoScaling()
    asg.group("control-plane", "3", {"i-p1": ("Pending:Wait", "3"), "i-p2": ("Pending:Wait", "3")},
              hooks=(roller.READY_HOOK,))  # fmt: skip
    api = RecordingApi([node("n1", "i-p1"), node("n2", "i-p2")])
    reports = {"i-p1": {"ready": False}, "i-p2": {"ready": True}}
    lines = controller(asg, lambda: api, reports=lambda layer, i: reports[i]).pass_once()
    assert completed(asg) == [("i-p2", roller.READY_HOOK, "CONTINUE")]
    assert lines == [
        "i-p1: its node is Ready; waiting for its API server's /readyz",
        "i-p2: its node is Ready; in service in dev-kube-control-plane",
    ]


# -- the program ----------------------------------------------------------------------------------


def test_the_program_names_itself_and_its_options_in_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        roller.main(["--help"])
    out = capsys.readouterr().out
    assert "\n\nOrder an environment's instance refreshes and drain leaving nodes.\n" in out
    text = " ".join(out.split())
    assert text.startswith("usage: kubeplat-node roller [-h] --environment ENVIRONMENT")
    assert (
        "--bucket BUCKET the secrets bucket: roll requests, and control-plane nodes' /readyz "
        "reports" in text
    )


def test_a_drain_timeout_that_is_no_number_is_refused_at_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeplat.node import aws

    def no_aws(*args: Any) -> Any:
        raise AssertionError("refused before any pass")

    monkeypatch.setattr(aws, "client", no_aws)
    monkeypatch.setattr(aws.Identity, "read", no_aws)
    with pytest.raises(SystemExit) as raised:
        roller.main(["--environment", "dev", "--once", "--drain-timeout", "soon"])
    assert raised.value.code == 2
    assert "argument --drain-timeout: invalid float value: 'soon'" in capsys.readouterr().err


class Stop(BaseException):
    """Ends the program's loop at its first pause (not an Exception: the loop would hold it)."""


def test_the_program_by_default_waits_15_s_between_passes_and_drains_600_s(
    fake_api: Any, pki_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As its unit runs it without --region, --drain-timeout or --interval: the region is the
    instance's, every AWS client is made in it, the controller's drain timeout is 600 s, and
    the next pass comes 15 s after one."""
    from kubeplat.node import aws

    server, _api = fake_api
    server.nodes = {"ip-10-0-2-4": node("ip-10-0-2-4", "i-p4")}
    asg = AutoScaling()
    asg.group("control-plane", "3", {"i-p4": ("Pending:Wait", "3")}, hooks=(roller.READY_HOOK,))
    filters: list[Any] = []
    listing = asg.get_paginator

    def paginator(name: str) -> Any:
        found = listing(name)

        class Recorded:
            def paginate(self, **kwargs: Any) -> Any:
                filters.append(kwargs)
                return found.paginate(**kwargs)

        return Recorded()

    asg.get_paginator = paginator  # type: ignore[method-assign]
    ready = json.dumps({"ready": True}).encode()
    s3 = S3({"dev/status/control-plane/i-p4/manifests.json": (NOW, ready)})
    clients = {"autoscaling": asg, "ec2": Ec2(), "s3": s3}
    made: list[tuple[str, str]] = []

    def client(service: str, region: str) -> Any:
        made.append((service, region))
        return clients[service]

    monkeypatch.setattr(aws, "client", client)
    monkeypatch.setattr(aws.Identity, "read", lambda: aws.Identity("i-me", "eu-west-3", "", ""))
    timeouts: list[float] = []
    real = roller.Controller

    class Recorded(real):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            timeouts.append(args[4])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(roller, "Controller", Recorded)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise Stop

    monkeypatch.setattr(passes, "time", SimpleNamespace(sleep=sleep))
    logging.getLogger("kubeplat-roller").setLevel(logging.INFO)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    with pytest.raises(Stop):
        roller.main([
            "--environment", "dev", "--bucket", "kubeplat-dev-secrets", "--api", url,
            "--ca", str(pki_dir / "ca.crt"),
            "--cert", str(pki_dir / "apiserver-kubelet-client.crt"),
            "--key", str(pki_dir / "apiserver-kubelet-client.key"),
        ])  # fmt: skip
    assert slept == [15.0]
    assert timeouts == [600.0]
    assert filters == [{"Filters": [{"Name": "tag:Environment", "Values": ["dev"]}]}]
    assert sorted(set(made)) == [
        ("autoscaling", "eu-west-3"),
        ("ec2", "eu-west-3"),
        ("s3", "eu-west-3"),
    ]
    assert made.count(("s3", "eu-west-3")) == 2  # roll requests, and the reports' reader
    assert completed(asg) == [("i-p4", roller.READY_HOOK, "CONTINUE")]
