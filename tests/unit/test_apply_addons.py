"""The control plane's `apply-addons` script, run as rendered (paths moved into a temporary
root) with a kubectl stand-in on PATH: there is no API server here. The stand-in records each
call and does what kubectl does offline (`create --dry-run=client`, `label --local`): so the
test sees the bootstrap token Secret the script gives the cluster and what it deletes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubeplat import config, pki, render

KUBECTL = r'''#!PYTHON
"""kubectl stand-in: records argv (and stdin) as JSON lines in $KUBECTL_LOG."""
import json, os, sys
import yaml

args = sys.argv[1:]
stdin = sys.stdin.read() if "-" in args else ""
with open(os.environ["KUBECTL_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "stdin": stdin}) + "\n")
if args[:4] == ["-n", "kube-system", "create", "configmap"]:
    data = dict(a.split("=", 1)[1].split("=", 1) for a in args if a.startswith("--from-literal="))
    print(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": args[4], "namespace": "kube-system"},
                          "data": data}))
elif args[:3] == ["-n", "kube-system", "create"]:
    name, data, kind = args[5], {}, ""
    for arg in args[6:]:
        if arg.startswith("--from-file="):
            path = arg.split("=", 1)[1]
            data[os.path.basename(path)] = open(path).read()
        elif arg.startswith("--type="):
            kind = arg.split("=", 1)[1]
    print(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "type": kind,
                          "metadata": {"name": name, "namespace": "kube-system"},
                          "stringData": data}))
elif args[:1] == ["label"]:
    document = yaml.safe_load(stdin)
    for arg in args:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            document["metadata"].setdefault("labels", {})[key] = value
    print(yaml.safe_dump(document))
'''


@pytest.fixture
def script(environments: Path) -> tuple[str, dict[str, bytes]]:
    env = config.load("example")
    files = pki.ensure(env, {}).files
    cloudconfig = render.bundle(env, files)["cloudconfig/master"]
    document = yaml.safe_load(cloudconfig.split(b"\n", 1)[1])
    text = next(
        f["content"]
        for f in document["write_files"]
        if f["path"] == "/opt/kubeplat/bin/apply-addons"
    )
    return text, files


def run(text: str, root: Path, files: dict[str, bytes]) -> list[dict[str, object]]:
    done = launch(text, root, files)
    assert done.returncode == 0, done.stderr
    return calls_of(root)


# A kubectl stand-in for an API server that never answers: it records each call as the Python
# one does and fails every `get` (a shell script: it starts 360 times in one test).
KUBECTL_DOWN = r"""#!/bin/sh
line='{"args": ['
sep=''
for arg in "$@"; do
  arg=$(printf '%s' "$arg" | sed 's/\\/\\\\/g; s/"/\\"/g')
  line="$line$sep\"$arg\""
  sep=', '
done
printf '%s], "stdin": ""}\n' "$line" >> "$KUBECTL_LOG"
[ "$1" = get ] && exit 1
exit 0
"""


def calls_of(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / "kubectl.log").read_text().splitlines()]


def launch(
    text: str, root: Path, files: dict[str, bytes], kubectl: str = KUBECTL
) -> subprocess.CompletedProcess[str]:
    pki_dir = root / "etc/kubernetes/pki"
    pki_dir.mkdir(parents=True, exist_ok=True)
    for name in ("bootstrap-token", "bootstrap-token-expiration"):
        if name in files:
            (pki_dir / name).write_bytes(files[name])
    (root / "etc/kubernetes/addons").mkdir(exist_ok=True)
    program = root / "apply-addons"
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    # The node program that reads the instance's identity: a STAND-IN (no metadata service).
    node_program = bin_dir / "kubeplat-node"
    node_program.write_text('#!/bin/sh\n[ "$1" = account ] && echo 123456789012\n')
    node_program.chmod(0o755)
    program.write_text(
        text.replace("/etc/kubernetes", str(root / "etc/kubernetes")).replace(
            "/opt/kubeplat/bin/kubeplat-node", str(node_program)
        )
    )
    if kubectl.startswith("#!/bin/sh"):
        (bin_dir / "kubectl").write_text(kubectl)
    else:
        (root / "kubectl.py").write_text(kubectl.replace("PYTHON", sys.executable))
        # The stand-in is not kubeplat's: it runs outside the coverage CI measures.
        (bin_dir / "kubectl").write_text(
            f'#!/bin/sh\nunset COVERAGE_PROCESS_START\nexec {sys.executable} {root / "kubectl.py"} "$@"\n'
        )
    os.chmod(bin_dir / "kubectl", 0o755)
    # sleep: a RECORDING stand-in that returns at once (the script's wait is bounded in tries).
    (bin_dir / "sleep").write_text('#!/bin/sh\necho "$*" >> "$KUBECTL_LOG.sleeps"\n')
    os.chmod(bin_dir / "sleep", 0o755)
    log = root / "kubectl.log"
    log.unlink(missing_ok=True)
    environment = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "KUBECTL_LOG": str(log)}
    # Bounded, generously: the longest run starts the stand-in 360 times (a minute on a busy
    # machine).
    return subprocess.run(
        ["sh", str(program)], env=environment, capture_output=True, text=True, timeout=300
    )


def applied_secret(calls: list[dict[str, object]]) -> dict[str, object]:
    (secret,) = [
        yaml.safe_load(str(c["stdin"]))
        for c in calls
        if c["args"] == ["apply", "-f", "-"] and "Secret" in str(c["stdin"])
    ]
    return dict(secret)


def test_the_token_reaches_the_cluster_with_its_expiry_and_replaces_the_last(
    script: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    text, files = script
    calls = run(text, tmp_path, files)
    token = files["bootstrap-token"].decode().strip()
    token_id, secret_part = token.split(".")
    secret = applied_secret(calls)
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert secret["metadata"]["name"] == f"bootstrap-token-{token_id}"  # type: ignore[index]
    data = secret["stringData"]
    assert data == {  # type: ignore[comparison-overlap]
        "token-id": token_id,
        "token-secret": secret_part,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": "system:bootstrappers:kubeplat",
        "expiration": files["bootstrap-token-expiration"].decode().strip(),
    }
    assert secret["metadata"]["labels"] == {  # type: ignore[index]
        "kubeplat.io/bootstrap-token": "environment",
        "kubeplat.io/token-id": token_id,
    }
    deleted = [c["args"] for c in calls if "delete" in c["args"]]  # type: ignore[operator]
    assert deleted == [
        ["-n", "kube-system", "delete", "secret", "-l",
         f"kubeplat.io/bootstrap-token=environment,kubeplat.io/token-id!={token_id}"],
    ]  # fmt: skip
    assert token not in json.dumps([c["args"] for c in calls]), "the secret is never an argument"
    # The addons are applied after the token, and after the account the cluster runs in (for
    # the addons' role ARNs).
    assert calls[-1]["args"][:3] == ["apply", "--server-side", "--force-conflicts"]  # type: ignore[index]
    (account,) = [
        yaml.safe_load(str(c["stdin"]))
        for c in calls
        if c["args"] == ["apply", "-f", "-"] and "ConfigMap" in str(c["stdin"])
    ]
    assert account["metadata"]["name"] == "kubeplat-aws"
    assert account["data"] == {"account-id": "123456789012"}

    # A token from before tokens expired (no date on the node): applied without one.
    older = {k: v for k, v in files.items() if k != "bootstrap-token-expiration"}
    (tmp_path / "etc/kubernetes/pki/bootstrap-token-expiration").unlink()
    again = applied_secret(run(text, tmp_path, older))
    assert "expiration" not in again["stringData"]  # type: ignore[operator]


def test_the_agent_runs_it_again_when_the_token_changes(
    script: tuple[str, dict[str, bytes]], environments: Path
) -> None:
    env = config.load("example")
    units = {
        f["path"]: f["content"]
        for f in yaml.safe_load(
            render.bundle(env, script[1])["cloudconfig/master"].split(b"\n", 1)[1]
        )["write_files"]
    }
    agent = units["/etc/systemd/system/kubeplat-agent.service"]
    assert "--reload kubeplat-addons.service=bootstrap-token,bootstrap-token-expiration" in agent
    # try-restart runs a oneshot again only while it is active: it stays so once done.
    assert "RemainAfterExit=yes" in units["/etc/systemd/system/kubeplat-addons.service"]
    # The kubelet reads the token when it asks for a certificate: no restart for a new one.
    kubelet_reload = [line for line in agent.splitlines() if "kubelet.service=" in line]
    assert kubelet_reload and "bootstrap-token" not in kubelet_reload[0]
    assert (
        "tokenFile: /etc/kubernetes/pki/bootstrap-token"
        in units["/etc/kubeplat/bootstrap-kubelet.conf"]
    )


def test_an_api_that_never_answers_ends_it_with_an_error(
    script: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    """30 minutes of asking (360 tries, 5 s apart), then a clear error and a failed unit
    (systemd restarts it): nothing is applied to an API server that is not there."""
    text, files = script
    done = launch(text, tmp_path, files, kubectl=KUBECTL_DOWN)
    assert done.returncode == 1
    assert "apply-addons: the API did not become ready" in done.stderr
    asked = [c for c in calls_of(tmp_path) if c["args"] == ["get", "--raw=/readyz"]]
    assert len(asked) == 360
    assert (tmp_path / "kubectl.log.sleeps").read_text().splitlines() == ["5"] * 359
    assert all(c["args"][:1] == ["get"] for c in calls_of(tmp_path))  # type: ignore[index]
