"""`kubeplat versions`: every pinned component of what this kubeplat installs, read back from
the rendered node configuration itself (so a component a template adds is listed), with its
pin; what an environment runs is read the same way from its bucket (test_main_job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubeplat import artifacts, config, versions


def test_every_binary_and_image_nodes_get_is_listed_with_its_pin(environments: Path) -> None:
    env = config.load("example")
    rows = {r.component: r for r in versions.table(versions.rendered(env))}
    for artifact in [*artifacts.RUNTIME, *artifacts.kubernetes(env.kubernetes_version)]:
        assert rows[artifact.name].installs.startswith(f"{artifact.version} (sha256 ")
    assert rows["etcd"].installs.startswith(env.etcd_version)
    for reference in artifacts.IMAGES.values():
        name, tag = reference.split("@")[0].rsplit(":", 1)
        assert rows[name].installs == f"{tag}@{reference.split('@')[1]}"
    # Every image is pinned by digest; every binary by sha256.
    for name, row in rows.items():
        assert "@sha256:" in row.installs or "(sha256 " in row.installs, name
    kube = artifacts.kubernetes_images(env.kubernetes_version)
    assert (
        rows["registry.k8s.io/kube-apiserver"].installs == kube["kube-apiserver"].split(":", 1)[1]
    )
    assert rows["registry.k8s.io/pause"].installs == artifacts.PAUSE_IMAGE.split(":", 1)[1]
    assert all(r.runs == "" and not r.differs for r in rows.values())


def test_every_pinned_kubernetes_version_has_its_images_pinned_too() -> None:
    assert set(artifacts.KUBERNETES_IMAGES) == set(artifacts.KUBERNETES)
    for digests in artifacts.KUBERNETES_IMAGES.values():
        assert set(digests) == {
            "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"
        }  # fmt: skip
        assert all(d.startswith("sha256:") and len(d) == 71 for d in digests.values())


def test_runs_beside_installs_and_what_differs() -> None:
    rows = versions.table(
        {"kubelet": "1.33.5", "registry.k8s.io/x": "v2@sha256:" + "a" * 64},
        {"kubelet": "1.33.4", "registry.k8s.io/x": "v2@sha256:" + "a" * 64, "old": "1"},
    )
    by = {r.component: r for r in rows}
    assert by["kubelet"].differs and not by["registry.k8s.io/x"].differs
    assert (by["old"].installs, by["old"].runs, by["old"].differs) == ("-", "1", True)
    assert versions.short("v2@sha256:" + "a" * 64) == "v2 (sha256:aaaaaaaaaaaa)"


def test_the_command_offline_as_json(environments: Path, kubeplat: Any) -> None:
    result = kubeplat("versions", "-e", "example", "--offline", "-o", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert {"component", "installs"} == set(rows[0])
    assert "registry.k8s.io/provider-aws/cloud-controller-manager" in {r["component"] for r in rows}
