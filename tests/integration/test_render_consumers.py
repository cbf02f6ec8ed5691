"""Rendered node configuration, checked by the programs that consume it."""

from __future__ import annotations

import dataclasses
import json
import py_compile
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubeplat import config, pki, render

pytestmark = pytest.mark.integration


@pytest.fixture(params=["stacked", "separate"])
def bundle(request: pytest.FixtureRequest, environments: Path, tmp_path: Path) -> dict[str, bytes]:
    env = dataclasses.replace(config.load("example"), topology=request.param)
    return render.bundle(env, pki.ensure(env, {}).files)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / "files" / name.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def node_files(bundle: dict[str, bytes]) -> dict[str, str]:
    found = {}
    for name, data in bundle.items():
        if name.startswith("cloudconfig/"):
            for item in yaml.safe_load(data)["write_files"]:
                found[f"{name}:{item['path']}"] = item["content"]
    return found


def test_cloud_init_schema_accepts_every_cloudconfig(
    bundle: dict[str, bytes], tmp_path: Path
) -> None:
    if not shutil.which("cloud-init"):
        pytest.skip("cloud-init is not installed (apt-get install cloud-init)")
    configs = [n for n in bundle if n.startswith("cloudconfig/")]
    assert len(configs) >= 2
    for name in configs:
        path = write(tmp_path, name, bundle[name])
        result = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert "Valid cloud-config" in result.stdout


def test_kubernetes_validate_strict_on_every_manifest(
    bundle: dict[str, bytes], tmp_path: Path
) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    paths = [write(tmp_path, n, d) for n, d in bundle.items() if n.startswith("manifests/")]
    paths += [
        write(tmp_path, "addons/" + key.rsplit("/", 1)[1], text)
        for key, text in node_files(bundle).items()
        if "/etc/kubernetes/addons/" in key
    ]
    assert len(paths) >= 8
    version = config.variables()["kubernetes_version"].default
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") >= len(paths)


def test_kubectl_reads_every_kubeconfig(bundle: dict[str, bytes], tmp_path: Path) -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    kubeconfigs = {"kubeconfig/admin.conf": bundle["kubeconfig/admin.conf"]}
    kubeconfigs.update(
        {
            k: v.encode()
            for k, v in node_files(bundle).items()
            if k.endswith(".conf")
            and "/etc/kubernetes/" in k
            and "sysctl" not in k
            and "modules" not in k
        }
    )
    for name, data in kubeconfigs.items():
        path = write(tmp_path, name.replace(":", "_"), data)
        result = subprocess.run(
            ["kubectl", "config", "view", "--kubeconfig", str(path), "-o", "yaml"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (name, result.stderr)
        view = yaml.safe_load(result.stdout)
        assert view["clusters"][0]["cluster"]["server"].startswith("https://"), name


def test_every_script_parses(bundle: dict[str, bytes], tmp_path: Path) -> None:
    scripts = {n: d.decode() for n, d in bundle.items() if n.startswith("userdata/")}
    scripts.update({k: v for k, v in node_files(bundle).items() if v.startswith("#!")})
    assert len(scripts) >= 5
    for name, text in scripts.items():
        path = write(tmp_path, name.replace(":", "_"), text)
        if text.startswith("#!/bin/sh"):
            result = subprocess.run(
                ["sh", "-n", str(path)], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, (name, result.stderr)
            if shutil.which("bash"):
                posix = subprocess.run(
                    ["bash", "--posix", "-n", str(path)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                assert posix.returncode == 0, (name, posix.stderr)
        elif "python3" in text.splitlines()[0]:
            py_compile.compile(str(path), doraise=True)
        else:
            raise AssertionError(f"{name}: unknown interpreter {text.splitlines()[0]}")
    # The Python heredoc inside each user-data stub parses too.
    for name in (n for n in bundle if n.startswith("userdata/")):
        found = re.search(r"<<'PY'[^\n]*\n(.*?)\nPY\n", bundle[name].decode(), re.DOTALL)
        assert found, name
        compile(found[1], name, "exec")
    # And so does every module of the node programs each layer ships.
    modules = {k: v for k, v in node_files(bundle).items() if "/kubeplat_node/" in k}
    assert any(k.endswith("/kubeplat_node/bootstrap.py") for k in modules)
    for name, text in modules.items():
        compile(text, name, "exec")


def test_systemd_units_are_complete(bundle: dict[str, bytes]) -> None:
    import configparser

    files = node_files(bundle)
    units = {k: v for k, v in files.items() if k.endswith(".service")}
    assert len(units) >= 4
    # The units the bootstrap starts (node.json) are started by it alone, once the node is
    # ready for them: nothing enables them. Every other unit starts at boot.
    started = set()
    for key, text in files.items():
        if key.endswith(":/etc/kubeplat/node.json"):
            node = json.loads(text)
            started |= {f"{key.split(':')[0]}:{u}" for u in node["services"] + node["background"]}
    assert started
    # …and so are the units those require (etcd's membership unit, before etcd) or trigger
    # (a timer's service).
    for name, text in {
        k: v for k, v in files.items() if k.endswith((".service", ".timer"))
    }.items():
        required = re.findall(r"^(?:Requires|Unit)=(.*)$", text, re.MULTILINE)
        layer = name.partition(":")[0]
        if f"{layer}:{name.rsplit('/', 1)[1]}" in started:
            started |= {f"{layer}:{unit}" for line in required for unit in line.split()}
    for name, text in units.items():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(text.replace("\\\n", " "))
        assert parser.get("Service", "ExecStart").startswith("/"), name
        assert parser.get("Unit", "Description"), name
        layer, _, path = name.partition(":")
        if f"{layer}:{path.rsplit('/', 1)[1]}" in started:
            assert not parser.has_section("Install"), name
        else:
            assert parser.get("Install", "WantedBy") == "multi-user.target", name


# Binaries the bootstrap installs after cloud-init (and modprobe, from the image): STAND-INS in
# the verified root, so that systemd-analyze finds each unit's command (it checks they exist).
INSTALLED_LATER = ("usr/local/bin/containerd", "usr/local/bin/etcd", "usr/local/bin/kubelet",
                   "sbin/modprobe")  # fmt: skip


def test_systemd_verifies_every_unit(bundle: dict[str, bytes], tmp_path: Path) -> None:
    """systemd's own checker (`systemd-analyze verify`) reads each layer's units in a root laid
    out as cloud-init writes it, beside this machine's systemd units (sysinit.target…): an
    unknown directive, a bad value, a dependency on a unit nobody ships, a command that is not
    an absolute path or not there fail it."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    system = Path("/lib/systemd/system")
    for name, data in bundle.items():
        if not name.startswith("cloudconfig/"):
            continue
        root = tmp_path / name.replace("/", "-")
        shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
        for item in yaml.safe_load(data)["write_files"]:
            path = root / item["path"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(item["content"])
            path.chmod(int(str(item.get("permissions", "0644")), 8))
        for stand_in in INSTALLED_LATER:
            path = root / stand_in
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
        units = sorted((root / "etc/systemd/system").glob("*.*"))
        assert any(u.name == "kubeplat-bootstrap.service" for u in units), name
        done = subprocess.run(
            [analyze, "verify", f"--root={root}", *map(str, units)],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        assert done.stdout + done.stderr == "", (name, done.stdout + done.stderr)
