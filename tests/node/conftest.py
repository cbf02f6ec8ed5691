"""Fixtures of the node tier: EC2 instances simulated by Debian 12 containers (harness.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node import mirror
from tests.node.harness import World, cached_rootfs, missing_prerequisites


def _unavailable(reason: str) -> None:
    """Skip, saying why; in CI (KUBEPLAT_NODE_BOOT_REQUIRED=1) a skipped tier is a failure."""
    if os.environ.get("KUBEPLAT_NODE_BOOT_REQUIRED") == "1":
        pytest.fail(f"the node-boot tier is required here but cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_rootfs() -> Path:
    """The cached test image (built by `python -m tests.node.prepare`, never by a test)."""
    reason = missing_prerequisites()
    if reason:
        _unavailable(reason)
    root = cached_rootfs()
    if root is None:
        _unavailable("no node image yet: run `python -m tests.node.prepare` (as root) first")
    assert root is not None
    return root


@pytest.fixture(scope="session")
def runtime_debs() -> Path:
    """Debian's containerd, runc and CNI plugins, unpacked by `prepare`."""
    debs = mirror.cached_sources()
    if debs is None:
        _unavailable("no runtime packages yet: run `python -m tests.node.prepare` first")
    assert debs is not None
    return debs


@pytest.fixture
def world(node_rootfs: Path) -> Iterator[World]:
    """A fresh VPC for one test, deleted afterwards whatever the test did."""
    with World(root=node_rootfs) as opened:
        yield opened
    assert opened.leftovers() == []


@pytest.fixture
def network() -> Iterator[World]:
    """A fresh VPC for instances without containers (World.attach): no image needed."""
    reason = missing_prerequisites(image=False)
    if reason:
        _unavailable(reason)
    with World() as opened:
        yield opened
    assert opened.leftovers() == []
