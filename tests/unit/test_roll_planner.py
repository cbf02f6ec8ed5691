"""The roll planner and the rehearsal of an upgrade (issue 19): order, batches, gates, skew,
quorum, etcd's health and backup, expiring certificates."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kubeplat import rehearsal
from kubeplat.etcdstatus import MemberRow
from kubeplat.node import roll
from tests.conftest import REPO

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def groups(secure: int = 3, control_plane: int = 0, compute: int = 4) -> list[roll.Group]:
    return [
        roll.Group("compute", tuple(f"i-c{n}" for n in range(compute)), 90, 240),
        roll.Group("secure", tuple(f"i-s{n}" for n in range(secure)), 100, 300),
        roll.Group("control-plane", tuple(f"i-p{n}" for n in range(control_plane)), 50, 300),
    ]


def test_layers_roll_secure_then_control_plane_then_compute() -> None:
    found = roll.steps(groups(3, 2, 4), ["compute", "control-plane", "secure"], stacked=False)
    assert [s.layer for s in found] == ["secure", "control-plane", "compute"]
    secure, control_plane, compute = found
    # etcd: one member at a time, each gated on etcd; never two members out.
    assert secure.batches == (("i-s0",), ("i-s1",), ("i-s2",))
    assert "joined and been promoted" in secure.gate and "/readyz" not in secure.gate
    assert control_plane.batches == (("i-p0",), ("i-p1",))  # 50% of 2: one at a time
    assert "Ready and its API server answers /readyz (the roll controller" in control_plane.gate
    assert compute.batches == (("i-c0",), ("i-c1",), ("i-c2",), ("i-c3",))
    assert secure.seconds == 3 * (300 + roll.TERMINATE_S)
    assert roll.duration(found, concurrent=False) == sum(s.seconds for s in found)
    assert roll.duration(found, concurrent=True) == max(s.seconds for s in found)


def test_stacked_secure_layer_also_waits_for_its_api_server() -> None:
    (secure,) = roll.steps(groups(), ["secure"], stacked=True)
    assert "/readyz" in secure.gate


def test_only_the_rolling_layers_are_planned() -> None:
    found = roll.steps(groups(), ["compute"], stacked=True)
    assert [s.layer for s in found] == ["compute"]
    assert roll.steps(groups(), [], stacked=True) == []


@pytest.mark.parametrize(
    ("count", "min_healthy", "size"),
    [(0, 90, 0), (1, 90, 1), (4, 90, 1), (20, 90, 2), (25, 90, 2), (3, 50, 1), (4, 50, 2),
     (5, 100, 1), (10, 0, 10)],
)  # fmt: skip
def test_batch_size_keeps_the_minimum_healthy(count: int, min_healthy: int, size: int) -> None:
    assert roll.batch_size(count, min_healthy) == size


@pytest.mark.parametrize(
    ("count", "min_healthy", "max_healthy", "size"),
    # 100/110: a tenth launched first; 90/110: a fifth at a time; 100/200: all launched first
    [(10, 100, 110, 1), (20, 100, 110, 2), (10, 90, 110, 2), (4, 100, 200, 4),
     (3, 100, 110, 1), (0, 90, 150, 0)],
)  # fmt: skip
def test_batch_size_with_a_surge(count: int, min_healthy: int, max_healthy: int, size: int) -> None:
    assert roll.batch_size(count, min_healthy, max_healthy) == size


def test_the_rehearsal_plans_the_compute_surge() -> None:
    """compute_roll_max_healthy reaches the rehearsal's batches (the other layers surge none)."""
    running = [("compute", f"i-c{n}") for n in range(10)] + [
        ("secure", f"i-s{n}") for n in range(3)
    ]
    kwargs: dict[str, Any] = dict(
        environment="dev", rolls=["secure", "compute"], running=running, grace=60,
        compute_min_healthy=90, stacked=True, sandbox=True, target="1.33.5", held={},
        etcd=None, files={},
    )  # fmt: skip
    plain = {s.layer: len(s.batches) for s in rehearsal.rehearse(**kwargs).steps}
    surged = {
        s.layer: len(s.batches) for s in rehearsal.rehearse(**kwargs, compute_max_healthy=110).steps
    }
    assert plain == {"secure": 3, "compute": 10}
    assert surged == {"secure": 3, "compute": 5}


@pytest.mark.parametrize(
    ("members", "level"), [(1, "red"), (2, "red"), (3, "ok"), (4, "ok"), (5, "ok"), (0, "ok")]
)
def test_the_secure_layer_never_rolls_below_quorum(members: int, level: str) -> None:
    check = roll.quorum(members)
    assert check.level == level
    if level == "red":
        assert "below quorum" in check.detail and "secure_asg_min" in check.detail


@pytest.mark.parametrize(
    ("current", "target", "level", "words"),
    [
        ("", "1.33.5", "ok", "new control plane: 1.33.5"),
        ("1.33.5", "1.33.5", "ok", "stays at 1.33.5"),
        ("1.33.5", "1.34.1", "ok", "one step"),
        ("1.33.5", "1.33.7", "ok", "one step"),
        ("1.33.5", "1.33.4", "warn", "patch downgrade"),
        ("1.34.1", "1.33.5", "red", "downgrade of a minor version"),
        ("1.32.9", "1.34.1", "red", "upgrade one minor version at a time: 1.33 first"),
        ("1.33.5", "2.0.0", "red", "a new major"),
        ("1.33.5", "x", "red", "is not one"),
    ],
)
def test_control_plane_skew(current: str, target: str, level: str, words: str) -> None:
    (check,) = [c for c in roll.skew(current, [], target) if c.name == "version skew"]
    assert check.level == level
    assert words in check.detail


def test_kubelets_may_lag_three_minors_never_lead() -> None:
    def level(kubelet: str, target: str) -> str:
        (check,) = [c for c in roll.skew("1.33.5", [kubelet], target) if c.name == "kubelet skew"]
        return check.level

    assert level("1.33.5", "1.34.1") == "ok"
    assert level("1.31.0", "1.34.1") == "ok"  # three minors: allowed
    assert level("1.30.0", "1.34.1") == "red"  # four: not
    assert level("1.35.0", "1.34.1") == "red"
    assert [
        c.detail for c in roll.skew("1.34.1", ["1.34.1"], "1.34.1") if c.name == "kubelet skew"
    ] == [
        "kubelets run 1.34.1, the target"
    ]  # said, not left out: the row is there whatever the versions


def test_kubectl_one_minor_either_way_is_fine() -> None:
    def check(kubectl: str) -> roll.Check:
        (found,) = [
            c for c in roll.skew("1.33.5", [], "1.34.1", kubectl) if c.name == "kubectl skew"
        ]
        return found

    assert check("v1.33.1").level == "ok"
    assert check("v1.35.0").level == "ok"
    assert check("v1.32.3").level == "warn" and "use a kubectl of 1.34" in check("v1.32.3").detail
    assert [c for c in roll.skew("1.33.5", [], "1.34.1", "") if c.name == "kubectl skew"] == []


def test_refresh_settings_match_the_terraform_module() -> None:
    """The rehearsal's batches come from the instance refresh's settings in terraform/."""
    text = (REPO / "terraform" / "secure.tf").read_text() + (
        REPO / "terraform" / "compute.tf"
    ).read_text()
    found = dict(re.findall(r"\n    ([a-z-]+) = \{.*?min_healthy\s+= (\d+)", text, re.DOTALL))
    assert {k: int(v) for k, v in found.items()} == {
        layer: pct for layer, (pct, _grace) in rehearsal.REFRESH.items() if pct is not None
    }
    # The compute layer's is the environment's, as the rehearsal takes it.
    assert "min_healthy  = var.compute_roll_min_healthy" in text
    assert rehearsal.REFRESH["compute"] == (None, None)


# --- the rehearsal --------------------------------------------------------------------------


def etcd_status(
    *, quorum: bool = True, roles: tuple[str, ...] = ("leader", "follower", "follower"),
    stale: tuple[str, ...] = (), snapshot_age: dt.timedelta | None = dt.timedelta(minutes=20),
) -> SimpleNamespace:  # fmt: skip
    rows = [MemberRow(f"i-s{n}", "running", f"m{n}", role) for n, role in enumerate(roles)]
    when = (NOW - snapshot_age).strftime("%Y-%m-%dT%H:%M:%SZ") if snapshot_age else ""
    return SimpleNamespace(
        rows=rows, quorum=quorum, stale=list(stale), reports=len(rows),
        latest_snapshot="dev/etcd-backups/x.db" if when else "", latest_snapshot_time=when,
    )  # fmt: skip


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    from kubeplat import config, pki

    env = config.load(str(REPO / "environments" / "example.tfvars"))
    return dict(pki.ensure(env, {}).files)


def rehearse(files: dict[str, bytes], **overrides: object) -> rehearsal.Rehearsal:
    running = [("secure", f"i-s{n}") for n in range(3)] + [("compute", "i-c0"), ("compute", "i-c1")]
    kwargs: dict[str, object] = dict(
        environment="dev", rolls=["secure", "compute"], running=running, grace=240,
        stacked=True, sandbox=False, target="1.33.5",
        held={"registry.k8s.io/kube-apiserver": "v1.33.5@sha256:ab", "kubelet": "1.33.5 (sha256 x)"},
        etcd=etcd_status(), files=files, now=NOW,
    )  # fmt: skip
    kwargs.update(overrides)
    return rehearsal.rehearse(**kwargs)  # type: ignore[arg-type]


def levels(found: rehearsal.Rehearsal) -> dict[str, str]:
    return {c.name: c.level for c in found.checks}


def test_a_healthy_roll_is_green_and_ordered(files: dict[str, bytes]) -> None:
    found = rehearse(files)
    assert found.upgrade and found.red == []
    assert levels(found) == {
        "version skew": "ok", "kubelet skew": "ok", "etcd health": "ok", "etcd backup": "ok",
        "etcd quorum": "ok", "certificates": "ok",
    }  # fmt: skip
    assert [s.layer for s in found.steps] == ["secure", "compute"]
    assert found.seconds == sum(s.seconds for s in found.steps)  # one layer after another
    shown = [text for text, _level in rehearsal.lines(found)]
    assert any(t.startswith("roll, one layer after another, about ") for t in shown)
    assert (
        "  secure: 3 batch(es): i-s0 → i-s1 → i-s2; next batch once its etcd member"
        in "\n".join(shown)
    )


@pytest.mark.parametrize(
    ("etcd", "check", "words"),
    [
        (etcd_status(snapshot_age=dt.timedelta(hours=2)), "etcd backup", "older than an hour"),
        (etcd_status(snapshot_age=None), "etcd backup", "no snapshot yet"),
        (etcd_status(roles=("leader", "follower", "down")), "etcd health", "i-s2"),
        (etcd_status(stale=("i-gone",)), "etcd health", "instance is gone: i-gone"),
        (etcd_status(quorum=False, roles=("no leader",) * 3), "etcd health", "no quorum"),
        (None, "etcd health", "no member reports"),
    ],
)
def test_etcd_not_ready_for_a_roll_is_red(
    files: dict[str, bytes], etcd: object, check: str, words: str
) -> None:
    found = rehearse(files, etcd=etcd)
    assert levels(found)[check] == "red"
    assert words in {c.name: c.detail for c in found.checks}[check]


def test_in_the_sandbox_unknown_etcd_is_a_warning_and_quorum_is_not_judged(
    files: dict[str, bytes],
) -> None:
    found = rehearse(files, etcd=None, sandbox=True)
    assert levels(found)["etcd health"] == "warn"
    assert "etcd quorum" not in levels(found)
    assert found.red == []


def test_a_one_member_etcd_roll_is_red(files: dict[str, bytes]) -> None:
    found = rehearse(files, running=[("secure", "i-s0"), ("compute", "i-c0")])
    assert levels(found)["etcd quorum"] == "red"


def test_a_certificate_expiring_during_the_roll_is_red(files: dict[str, bytes]) -> None:
    from kubeplat import pki

    apiserver = next(r for r in pki.describe(files) if r.name == "apiserver")
    # The day before the apiserver certificate expires, a roll of about an hour cannot end in
    # time (plus a day's margin).
    found = rehearse(files, now=apiserver.expires - dt.timedelta(hours=12))
    assert levels(found)["certificates"] == "red"
    assert "apiserver (" in {c.name: c.detail for c in found.checks}["certificates"]


def test_a_skipped_minor_is_red_and_nothing_rolling_is_never_red(files: dict[str, bytes]) -> None:
    found = rehearse(files, target="1.35.0")
    assert levels(found)["version skew"] == "red"
    # The same facts with nothing to roll and no version moving stop nothing.
    quiet = rehearse(files, rolls=[], etcd=etcd_status(snapshot_age=None))
    assert not quiet.upgrade and quiet.red == [] and quiet.steps == []


def test_a_version_change_alone_is_an_upgrade(files: dict[str, bytes]) -> None:
    found = rehearse(files, rolls=[], target="1.34.1")
    assert found.upgrade
    assert "etcd backup" in levels(found)  # the control plane moves: etcd must be backed up


# --- what only the API server knows ---------------------------------------------------------
# A stand-in API server (no kube-apiserver can run here: it needs etcd and a control plane
# this tier does not build): TLS with the cluster's own apiserver certificate, the admin client
# certificate required, and the answers the real one gives to these two reads.

METRICS = b"""# HELP apiserver_requested_deprecated_apis Gauge of deprecated APIs that have been requested
# TYPE apiserver_requested_deprecated_apis gauge
apiserver_requested_deprecated_apis{group="flowcontrol.apiserver.k8s.io",removed_release="1.32",resource="flowschemas",subresource="",version="v1beta3"} 1
apiserver_requested_deprecated_apis{group="",removed_release="",resource="componentstatuses",subresource="",version="v1"} 1
apiserver_requested_deprecated_apis{group="storage.k8s.io",removed_release="1.40",resource="csistoragecapacities",subresource="",version="v1beta1"} 1
"""


def budget(name: str, allowed: int, expected: int = 2) -> dict[str, object]:
    return {
        "metadata": {"namespace": "shop", "name": name},
        "status": {"disruptionsAllowed": allowed, "expectedPods": expected,
                   "currentHealthy": expected, "desiredHealthy": expected - allowed},
    }  # fmt: skip


PODS = "/api/v1/namespaces/kube-system/pods?labelSelector=component%3Dkube-apiserver"


def apiserver_pod(image: str) -> dict[str, object]:
    return {"spec": {"containers": [{"name": "kube-apiserver", "image": image}]}}


def kubelet_node(version: str) -> dict[str, object]:
    return {"status": {"nodeInfo": {"kubeletVersion": version}}}


@pytest.fixture
def answers() -> dict[str, bytes]:
    """What the stand-in API server answers, by path (a test may change it)."""
    import json

    return {
        "/apis/policy/v1/poddisruptionbudgets": json.dumps(
            {"items": [budget("web", 1), budget("db", 0), budget("idle", 0, expected=0)]}
        ).encode(),
        "/metrics": METRICS,
        "/version": json.dumps({"gitVersion": "v1.33.5"}).encode(),
        PODS: json.dumps({"items": [apiserver_pod("registry.k8s.io/kube-apiserver:v1.33.5")]}).encode(),
        "/api/v1/nodes": json.dumps({"items": [kubelet_node("v1.33.5")]}).encode(),
    }  # fmt: skip


@pytest.fixture
def api_server(
    files: dict[str, bytes], tmp_path: Path, answers: dict[str, bytes]
) -> Iterator[tuple[object, list[str]]]:
    """A stand-in API server on loopback; yields a kubeapi client of it and the paths asked."""
    import http.server

    from kubeplat import kubeapi
    from tests.tls_standin import serving

    for name in ("apiserver.crt", "apiserver.key", "ca.crt"):
        (tmp_path / name).write_bytes(files[name])
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = answers.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server, tmp_path):
        kubeconfig = tmp_path / "admin.conf"
        kubeconfig.write_text(
            f"clusters:\n- cluster:\n    server: https://127.0.0.1:{server.server_address[1]}\n"
        )
        yield kubeapi.connect(kubeconfig, files, sandbox=True), asked


def test_a_budget_allowing_no_disruption_is_red(api_server: tuple[object, list[str]]) -> None:
    api, asked = api_server
    found = rehearsal.cluster(api, rolling=True, target="1.33.5", current="1.33.5")
    (check,) = found  # the version does not move: no question about removed APIs
    assert check.name == "disruption budgets" and check.level == "red"
    assert check.detail.endswith("shop/db (healthy 2, needs 2)")  # not web (1 allowed), not idle
    assert asked == ["/apis/policy/v1/poddisruptionbudgets"]


def test_clients_of_an_api_the_target_removes_are_red(api_server: tuple[object, list[str]]) -> None:
    api, _asked = api_server
    checks = {
        c.name: c for c in rehearsal.cluster(api, rolling=False, target="1.34.2", current="1.33.5")
    }
    assert set(checks) == {"removed APIs"}
    assert checks["removed APIs"].level == "red"
    # Removed in 1.32 (before 1.34): named. Removed in 1.40 or never: not.
    assert "flowschemas flowcontrol.apiserver.k8s.io/v1beta3 (removed in 1.32)" in (
        checks["removed APIs"].detail
    )
    assert "csistoragecapacities" not in checks["removed APIs"].detail
    assert "componentstatuses" not in checks["removed APIs"].detail


def test_an_api_server_not_reached_is_said_not_hidden(
    files: dict[str, bytes], tmp_path: Path
) -> None:
    from kubeplat import kubeapi

    kubeconfig = tmp_path / "admin.conf"
    kubeconfig.write_text(
        "clusters:\n- cluster:\n    server: https://example-kube-api.elb.amazonaws.com\n"
    )
    with pytest.raises(kubeapi.Unreachable, match="the sandbox runs no API server"):
        kubeapi.connect(kubeconfig, files, sandbox=True)
    with pytest.raises(kubeapi.Unreachable, match="no kubeconfig at"):
        kubeapi.connect(tmp_path / "none", files, sandbox=False)
    # Nothing listens on this loopback port (bound, never listening): "did not answer".
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        kubeconfig.write_text(
            f"clusters:\n- cluster:\n    server: https://127.0.0.1:{taken.getsockname()[1]}\n"
        )
        api = kubeapi.connect(kubeconfig, files, sandbox=True)
        found = rehearsal.cluster(api, rolling=True, target="1.34.2", current="1.33.5")
    assert [(c.name, c.level) for c in found] == [
        ("disruption budgets", "warn"),
        ("removed APIs", "warn"),
    ]
    assert all("did not answer" in c.detail for c in found)
    gone = kubeapi.Unreachable("the sandbox runs no API server")
    assert [
        c.detail for c in rehearsal.cluster(gone, rolling=True, target="1.33.5", current="1.33.5")
    ] == ["not checked: the sandbox runs no API server"]


def test_the_skew_is_judged_from_what_runs(
    files: dict[str, bytes], api_server: tuple[object, list[str]], answers: dict[str, bytes]
) -> None:
    """The bucket gives every node 1.33.5, but a roll that stopped half-way left one API server
    at 1.32.9 and one kubelet at 1.30.4: going to 1.34.2 skips a minor for that API server, and
    that kubelet would be four minors behind. Judged from the bucket alone, both were green."""
    import json

    api, asked = api_server
    answers[PODS] = json.dumps({"items": [
        apiserver_pod("registry.k8s.io/kube-apiserver:v1.33.5@sha256:" + "a" * 64),
        apiserver_pod("registry.k8s.io/kube-apiserver:v1.32.9"),
    ]}).encode()  # fmt: skip
    answers["/api/v1/nodes"] = json.dumps(
        {"items": [kubelet_node("v1.33.5"), kubelet_node("v1.30.4"), kubelet_node("v1.33.5")]}
    ).encode()
    bucket_only = rehearse(files, target="1.34.2", api=None)
    assert bucket_only.red == []
    found = rehearse(files, target="1.34.2", api=api)
    details = {c.name: (c.level, c.detail) for c in found.checks}
    assert details["running versions"] == (
        "ok", "API server(s) 1.32.9, 1.33.5; kubelets of 3 node(s) 1.30.4, 1.33.5"
    )  # fmt: skip
    assert details["version skew"][0] == "red"
    assert "control plane 1.32.9 → 1.34.2 skips a minor version" in details["version skew"][1]
    assert [(c.level, c.detail) for c in found.checks if c.name == "kubelet skew"] == [
        ("red", "kubelets run 1.30.4, more than 3 minor versions older than 1.34.2 while they roll"),
        ("ok", "kubelets 1.33.5 → 1.34.2, after the control plane (within the supported skew throughout)"),
    ]  # fmt: skip
    assert {"/version", PODS, "/api/v1/nodes"} <= set(asked)


def test_running_versions_not_read_are_said(
    files: dict[str, bytes], api_server: tuple[object, list[str]], answers: dict[str, bytes]
) -> None:
    from kubeplat import kubeapi

    api, _asked = api_server
    del answers["/api/v1/nodes"]  # e.g. an identity that may not list nodes: 404 here
    found = {c.name: c for c in rehearse(files, target="1.34.2", api=api).checks}
    assert found["running versions"].level == "warn"
    assert found["running versions"].detail.startswith("not read: ")
    assert found["running versions"].detail.endswith(
        "; the skew is judged from the versions the bucket gives nodes"
    )
    assert found["version skew"].detail == "control plane 1.33.5 → 1.34.2: one step"
    gone = kubeapi.Unreachable("the sandbox runs no API server")
    found = {c.name: c for c in rehearse(files, target="1.34.2", api=gone).checks}
    assert found["running versions"].detail.startswith("not read: the sandbox runs no API server; ")
