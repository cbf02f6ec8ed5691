"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import start_emulator
from tests.integration.sandbox_user import make_user, stop_sandbox


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A user of their own: a sandbox (state dir), a checkout, Terraform's configuration."""
    env = make_user(tmp_path_factory.mktemp("user"))
    yield env
    stop_sandbox(env)


@pytest.fixture
def enforcing() -> Iterator[str]:
    """A moto server of its own, for a test that makes it enforce IAM (server-wide)."""
    server, endpoint = start_emulator()
    yield endpoint
    server.terminate()
    server.wait(timeout=10)
