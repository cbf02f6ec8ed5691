"""What an environment runs, against what this kubeplat would install (`kubeplat versions`).

Both sides are read the same way, from node configuration: each layer's cloud-config (the
binaries its bootstrap installs, from `/etc/kubeplat/node.json`; the addons the control plane
applies) and its static pods' manifests. This kubeplat's side is rendered from the environment
file, offline; the environment's is what its secrets bucket holds, which its nodes run once
`kubeplat instances` says `current`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubeplat.config import Environment
    from kubeplat.store import BucketStore

_IMAGE = re.compile(r"^\s*-?\s*image:\s*[\"']?([^\s\"']+)", re.MULTILINE)
# containerd's pod sandbox (pause) image, in its configuration.
_SANDBOX = re.compile(r"^\s*sandbox(?:_image)?\s*=\s*[\"']([^\"']+)", re.MULTILINE)


@dataclass(frozen=True)
class Row:
    """One component: what this kubeplat installs, and what the environment runs ("" when
    not asked, "-" when it has none)."""

    component: str
    installs: str
    runs: str = ""

    @property
    def differs(self) -> bool:
        return bool(self.runs) and self.runs != self.installs


def _image_parts(reference: str) -> tuple[str, str]:
    """An image reference as (repository, tag[@digest])."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    repository, tag = (name[:colon], name[colon + 1 :]) if colon > slash else (name, "latest")
    return repository, tag + (f"@{digest}" if digest else "")


def components(cloudconfigs: Mapping[str, bytes], manifests: Mapping[str, bytes]) -> dict[str, str]:
    """component → version (with its pin) named by the layers' cloud-configs and manifests."""
    import yaml

    found: dict[str, str] = {}
    texts = [data.decode(errors="replace") for data in manifests.values()]
    for data in cloudconfigs.values():
        text = data.decode(errors="replace")
        document = yaml.safe_load(text.split("\n", 1)[1] if text.startswith("#") else text)
        for item in (document or {}).get("write_files", []):
            path, content = str(item.get("path", "")), str(item.get("content", ""))
            if path == "/etc/kubeplat/node.json":
                for artifact in json.loads(content).get("artifacts", []):
                    sha = artifact.get("sha256", {}).get("amd64", "")
                    found[artifact["name"]] = f"{artifact['version']} (sha256 {sha[:12]})"
            elif path.startswith("/etc/kubernetes/addons/"):
                texts.append(content)
            elif path == "/etc/containerd/config.toml":
                texts += [f"image: {m}" for m in _SANDBOX.findall(content)]
    for text in texts:
        for reference in _IMAGE.findall(text):
            repository, tag = _image_parts(reference)
            found[repository] = tag
    return found


def short(tag: str) -> str:
    """A version for a table: a digest cut to its first 12 hex digits."""
    version, _, digest = tag.partition("@")
    return f"{version} ({digest[:19]})" if digest else version


def rendered(env: Environment) -> dict[str, str]:
    """What this kubeplat installs for the environment."""
    from kubeplat import render

    cloudconfigs = {layer.name: render.cloudconfig(env, layer) for layer in render.layers(env)}
    manifests: dict[str, bytes] = {}
    for layer in render.layers(env):
        manifests.update(render.manifests(env, layer))
    return components(cloudconfigs, manifests)


def held(env: Environment, store: BucketStore) -> dict[str, str]:
    """What the environment's secrets bucket gives its nodes (nothing before its first up)."""
    from kubeplat import render

    cloudconfigs = {}
    for layer in render.layers(env):
        name = f"cloudconfig/{layer.cloudconfig}"
        if name in store.names(name):
            cloudconfigs[layer.name] = store.get(name)
    manifests = {n: store.get(n) for n in store.names("manifests/") if n.endswith(".yaml")}
    return components(cloudconfigs, manifests)


def table(installs: Mapping[str, str], runs: Mapping[str, str] | None = None) -> list[Row]:
    """The rows, by component; with `runs`, what the environment runs beside each."""
    names = sorted(set(installs) | set(runs or {}))
    rows = []
    for name in names:
        theirs = "" if runs is None else runs.get(name, "-")
        rows.append(Row(name, installs.get(name, "-"), theirs))
    return rows


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {"component": r.component, "installs": r.installs, **({"runs": r.runs} if r.runs else {})}
        for r in rows
    ]
