"""The systemd units nodes get, as rendered for every layer of both topologies: what each unit's
template says is there, line by line, and the options the node programs are started with.

A template whose block tag ends a line (`{% endif %}`) loses the newline after it (the
renderer trims blocks), which once glued `Restart=always` onto the etcd watch's `--readyz`
URL: the watch then asked `/readyzRestart=always`, a stacked member never completed its
launch hook, and AWS would have abandoned every new secure instance."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from kubeplat import config, pki, render
from tests.conftest import REPO

TEMPLATES = REPO / "templates" / "partials" / "node"


def units(env: config.Environment) -> dict[str, dict[str, str]]:
    """cloudconfig name → {unit file name: its text}."""
    files = pki.ensure(env, {}).files
    found: dict[str, dict[str, str]] = {}
    for name, data in render.bundle(env, files).items():
        if not name.startswith("cloudconfig/"):
            continue
        document = yaml.safe_load(data.split(b"\n", 1)[1])
        found[name] = {
            Path(f["path"]).name: f["content"]
            for f in document["write_files"]
            if f["path"].startswith("/etc/systemd/system/")
        }
    return found


@pytest.fixture(params=["stacked", "separate"])
def rendered(request: pytest.FixtureRequest, environments: Path) -> dict[str, dict[str, str]]:
    env = dataclasses.replace(config.load("example"), topology=request.param)
    return units(env)


def directives(text: str) -> list[str]:
    """A unit's lines, continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def test_every_static_line_of_a_unit_template_is_a_line_of_the_unit(
    rendered: dict[str, dict[str, str]],
) -> None:
    seen = set()
    for layer, found in rendered.items():
        for name, text in found.items():
            template = TEMPLATES / f"{name}.j2"
            if not template.exists():
                continue
            seen.add(name)
            lines = set(directives(text))
            source = template.read_text()
            for line in source.splitlines():
                if re.fullmatch(r"[A-Za-z]+=[^{}%]*", line) and not line.endswith("\\"):
                    assert line in lines, f"{layer}: {name} lost the line {line!r}"
    assert {"kubeplat-etcd-watch.service", "kubeplat-roller.service", "kubelet.service"} <= seen


def test_the_etcd_watch_asks_the_api_server_beside_it_at_readyz(
    rendered: dict[str, dict[str, str]],
) -> None:
    for layer, found in rendered.items():
        watch = found.get("kubeplat-etcd-watch.service")
        if watch is None:
            continue
        (start,) = [line for line in directives(watch) if line.startswith("ExecStart=")]
        words = start.split()
        stacked = "kubeplat-roller.service" in found  # this layer runs the API server
        if stacked:
            assert words[words.index("--readyz") + 1] == "https://127.0.0.1:6443/readyz", layer
        else:
            assert "--readyz" not in words, layer
        assert "Restart=always" in directives(watch), layer
