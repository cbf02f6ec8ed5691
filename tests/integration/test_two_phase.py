"""Issue 16, item 1: a failed apply changes nothing a running node runs. In the sandbox, with the
real Terraform and provider: the nodes run manifests older than the render, the operator
confirms a plan, another operator takes the state lock before the apply (a real Terraform
failure after the upload), and the running layers' manifests are the ones they were; the next
`up` applies and only then makes the new manifests current. An upgrade's control plane is the
exception Kubernetes asks for: its manifests go first.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.integration.sandbox_user import clients, kubeplat
from tests.integration.test_faults import put_lock, released_with_the_printed_command

pytestmark = pytest.mark.integration

SECRETS = "kubeplat-example-secrets"


def current(s3: object, name: str) -> tuple[str, bytes]:
    """(version ID, bytes) of the object nodes read as `example/NAME`."""
    got = s3.get_object(Bucket=SECRETS, Key=f"example/{name}")  # type: ignore[attr-defined]
    return got["VersionId"], got["Body"].read()


def run_older(s3: object, name: str, body: bytes) -> str:
    """Make the bucket hold what the nodes run: `body`, older than the render. Its version."""
    answer = s3.put_object(  # type: ignore[attr-defined]
        Bucket=SECRETS, Key=f"example/{name}", Body=body,
        Metadata={"sha256": hashlib.sha256(body).hexdigest()},
    )  # fmt: skip
    return str(answer["VersionId"])


def staged(s3: object) -> list[str]:
    listed = s3.list_objects_v2(Bucket=SECRETS, Prefix="example/staged/")  # type: ignore[attr-defined]
    return [item["Key"].rsplit("/", 1)[1] for item in listed.get("Contents", [])]


def up_confirmed_on_a_terminal(user: dict[str, str], meanwhile: object) -> tuple[int, str]:
    """`kubeplat up -e example` on a terminal: at its question, `meanwhile()` runs (another
    operator acts), then the operator answers yes. Its exit code and what the terminal showed."""
    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))  # no wrapped lines
    up = subprocess.Popen(
        [sys.executable, "-m", "kubeplat", "up", "-e", "example"],
        cwd=user["CHECKOUT"], env=user, stdin=tty, stdout=tty, stderr=tty, close_fds=True,
    )  # fmt: skip
    os.close(tty)
    shown, answered = b"", False
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the terminal closed: kubeplat exited
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and b"Apply these changes?" in shown:
                meanwhile()  # type: ignore[operator]
                os.write(main, b"y\n")
                answered = True
            if up.poll() is not None and not ready:
                break
        else:
            up.kill()
            raise AssertionError(f"up did not end: {shown.decode(errors='replace')[-3000:]}")
        code = up.wait(timeout=60)
    finally:
        os.close(main)
    assert answered, shown.decode(errors="replace")[-3000:]
    return code, shown.decode(errors="replace").replace("\r\n", "\n")


def test_a_failed_apply_leaves_running_nodes_their_manifests_and_the_next_up_promotes(
    user: dict[str, str],
) -> None:
    aws = clients(user, "s3", "autoscaling")
    s3 = aws["s3"]
    built = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert built.returncode == 0, built.stderr[-3000:]
    rendered = {
        name: current(s3, name)[1]
        for name in ("manifests/secure/kube-apiserver.yaml", "manifests/compute/kube-proxy.yaml")
    }

    # The nodes run older manifests: the compute layer's kube-proxy with another setting, the
    # control plane an older Kubernetes (an upgrade is pending).
    proxy = "manifests/compute/kube-proxy.yaml"
    older_proxy = rendered[proxy] + b"# what the compute nodes run\n"
    proxy_version = run_older(s3, proxy, older_proxy)
    apiserver = "manifests/secure/kube-apiserver.yaml"
    older_apiserver, replaced = re.subn(
        rb"(kube-apiserver:v1\.)(\d+)",
        lambda m: m[1] + b"%d" % (int(m[2]) - 1),
        rendered[apiserver],
    )
    assert replaced == 1
    run_older(s3, apiserver, older_apiserver)
    # And a change Terraform applies: one more compute node allowed.
    tfvars = Path(user["CHECKOUT"], "environments", "example.tfvars")
    tfvars.write_text(
        tfvars.read_text().replace("compute_asg_max          = 3", "compute_asg_max = 4")
    )

    # While the operator reads the plan, another operator's apply takes the state lock.
    code, shown = up_confirmed_on_a_terminal(
        user, lambda: put_lock(s3, "7c7c7c7c-0000-4111-8222-333344445555")
    )
    assert code == 1, shown[-3000:]
    # The plan said which manifests wait for the apply.
    assert (
        "running nodes take these only once the apply succeeds (staged until then): "
        "manifests/compute/kube-proxy.yaml\n" in shown
    ), shown[-3000:]
    assert "Error: the environment's state is locked by alice@laptop" in shown, shown[-3000:]
    assert (
        "the 1 changed manifests of running layers stay staged, so running nodes keep what they "
        "run; nothing was removed" in shown
    ), shown[-3000:]
    assert "Traceback" not in shown
    # The compute nodes' kube-proxy is the very object they read (same version, same bytes);
    # the new one waits under its digest, where no node may read.
    assert current(s3, proxy) == (proxy_version, older_proxy)
    assert hashlib.sha256(rendered[proxy]).hexdigest() in staged(s3)
    # The upgrade's control plane went first, as Kubernetes' skew policy asks.
    assert current(s3, apiserver)[1] == rendered[apiserver]
    groups = aws["autoscaling"].describe_auto_scaling_groups()["AutoScalingGroups"]  # type: ignore[attr-defined]
    compute = next(g for g in groups if "compute" in g["AutoScalingGroupName"])
    assert compute["MaxSize"] == 3  # nothing was applied

    # The lock is released; the next `up` applies, then makes the staged manifest current.
    released_with_the_printed_command(user, shown)
    again = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert again.returncode == 0, again.stderr[-3000:]
    assert current(s3, proxy)[1] == rendered[proxy]
    assert staged(s3) == []
    groups = aws["autoscaling"].describe_auto_scaling_groups()["AutoScalingGroups"]  # type: ignore[attr-defined]
    compute = next(g for g in groups if "compute" in g["AutoScalingGroupName"])
    assert compute["MaxSize"] == 4
    # A run stopped after its apply, before the promotion, left the nodes on older manifests:
    # the next `up` finds Terraform with nothing to do and promotes them all the same.
    run_older(s3, proxy, older_proxy)
    resumed = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Terraform: 0 to add, 0 to change, 0 to destroy" in resumed.stderr, resumed.stderr
    assert current(s3, proxy)[1] == rendered[proxy] and staged(s3) == []
    # Converged: nothing left to upload, apply or promote.
    plan = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr[-2000:]
